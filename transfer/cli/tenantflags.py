"""`transfer serve`'s flags for named credentials and fair limits (docs/operations.md).

`--tokens-file` and `--token` are exclusive; with `--tokens-file`, `$TRANSFER_TOKEN` is
ignored (it is the sender's variable, and may well be set in the same shell). The file is
read once here, so a missing or corrupt one stops the start with one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transfer.common import tokenfile
from transfer.core.errors import ConfigError


def add_tenant_flags(
    p: argparse.ArgumentParser, size: Callable[[str], int], duration: Callable[[str], float]
) -> None:
    p.add_argument(
        "--tokens-file",
        type=Path,
        metavar="PATH",
        help="named credentials, each with a tenant and scopes (`transfer token add`); "
        "re-read on SIGHUP; exclusive with --token",
    )
    p.add_argument(
        "--tenant-max-active",
        type=int,
        default=None,
        metavar="N",
        help="one tenant's bodies received at once (429 past it; default: half of --max-active)",
    )
    p.add_argument(
        "--tenant-max-partial",
        type=size,
        default=None,
        metavar="SIZE",
        help="bytes one tenant's partial uploads may hold (default: half of --max-partial)",
    )
    p.add_argument(
        "--stall-grace",
        type=duration,
        default="2s",
        help="a body under --min-rate this long is cut when another upload needs its slot",
    )


def tenant_config(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig's fields for these flags.

    Raises:
        ConfigError: `--token` with `--tokens-file`, a bad limit, or an unusable file.
    """
    if args.tokens_file is not None:
        if args.token is not None:
            raise ConfigError("--token and --tokens-file are exclusive")
        tokenfile.load(args.tokens_file)  # fail now, with one line, not at the first request
    if args.tenant_max_active is not None and args.tenant_max_active < 1:
        raise ConfigError("--tenant-max-active must be at least 1")
    if args.stall_grace <= 0:
        raise ConfigError("--stall-grace must be positive")
    return {
        "tokens_file": args.tokens_file,
        "tenant_max_active": args.tenant_max_active,
        "tenant_max_partial": args.tenant_max_partial,
        "stall_grace": args.stall_grace,
    }
