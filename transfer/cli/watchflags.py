"""The flags of `transfer send --watch DIR` and the `WatchConfig` they make.

Wiring only: what the flags mean is docs/operations.md ("Watching a folder"); the
watching itself is `transfer.sender.watch`, `watcher` and `intake`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from transfer.core.errors import ConfigError
from transfer.sender.afterconfirm import AfterConfirm
from transfer.sender.watch import TEMPORARY, OnChange, Rules, WatchConfig


def add_watch_flags(p: argparse.ArgumentParser, duration: Callable[[str], float]) -> None:
    """The flags of `send --watch DIR` (docs/operations.md, "Watching a folder")."""
    p.add_argument(
        "--watch",
        type=Path,
        metavar="DIR",
        help="deliver every file that appears under DIR, until stopped (default: off)",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="watch only matching paths, e.g. '*.dat' (repeatable; default: all)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="never take matching paths (repeatable; default: dotfiles, "
        + ", ".join(TEMPORARY)
        + ")",
    )
    p.add_argument(
        "--settle",
        type=duration,
        default="2s",
        metavar="DURATION",
        help="a file written in place is taken once closed and unchanged this long"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--rescan",
        type=duration,
        default="30s",
        metavar="DURATION",
        help="full rescan this often, the safety net for missed events (default: %(default)s)",
    )
    p.add_argument(
        "--on-change",
        choices=[c.value for c in OnChange],
        default="version",
        help="a file changed after it was journaled: send it again as a new version,"
        " or log and refuse it (default: %(default)s)",
    )
    p.add_argument(
        "--after-confirm",
        default="keep",
        metavar="keep|delete|move:DIR",
        help="what to do with a source file once the server confirmed it (default: %(default)s)",
    )
    p.add_argument(
        "--watch-queue",
        type=int,
        default=4096,
        metavar="N",
        help="file-system events buffered before falling back to a rescan (default: %(default)s)",
    )


def watch_config(args: argparse.Namespace) -> WatchConfig | None:
    """The watch settings, checked; None without `--watch`.

    Raises:
        ConfigError: a flag without `--watch`, paths with it, a missing folder, a bad
            duration or `--after-confirm`, or a `move:` folder inside the watched one.
    """
    if args.watch is None:
        if args.include or args.exclude or args.after_confirm != "keep":
            raise ConfigError("--include, --exclude and --after-confirm need --watch DIR")
        return None
    if args.paths:
        raise ConfigError("give either --watch DIR or PATHs, not both")
    if not args.watch.is_dir():
        raise ConfigError(f"--watch {args.watch}: not a directory")
    if not args.settle >= 0 or not args.rescan > 0 or args.watch_queue < 1:
        raise ConfigError("--settle must be >= 0, --rescan > 0 and --watch-queue >= 1")
    after = AfterConfirm.parse(args.after_confirm)
    root = args.watch.resolve()
    if after.target is not None and after.target.resolve().is_relative_to(root):
        raise ConfigError(f"--after-confirm move: {after.target} is inside --watch {root}")
    return WatchConfig(
        root=root,
        rules=Rules(tuple(args.include), tuple(args.exclude)),
        settle=args.settle,
        rescan=args.rescan,
        on_change=OnChange(args.on_change),
        queue_limit=args.watch_queue,
        after_confirm=after,
    )
