"""What the subcommands share: the bearer token flag, how `send` takes SIGINT/SIGTERM,
and the checks of the paths a user gives, so every mistake is one line naming its flag.

Invariants:
- A check never creates or changes anything: it runs before the command touches the
  disk, so a refused command leaves the file system as it found it.
- `--server` is a base URL (the client appends `/uploads/...`); a path prefix is allowed
  (a reverse proxy), but one that runs into our own endpoints is refused with the base
  URL to use instead.
- `read_spool` / `view_spool` read a journal (checkpoint and log) without its lock and
  without writing (no lock file, no torn-tail truncation, no finishing of a compaction),
  so `status` and `verify` work beside a running sender and never make a spool; a
  missing spool or journal is a `ConfigError`. `view_spool` decodes no folded record.
- `Signals`: the first SIGINT or SIGTERM prints one line on stderr and asks the sender
  to stop (it returns within its drain budget); a second one ends the process at once
  with `os._exit`, which is no worse than a kill -9: every acknowledged journal record
  is already fsynced, and recovery drops a torn tail. The exit status is 128 + the
  signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a death by it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from transfer.core.errors import ConfigError
from transfer.core.events import Event
from transfer.sender.folding import decode_at, folded_entries
from transfer.sender.journal import LOG_NAME, JournalEntry, Record
from transfer.sender.reasons import Reason
from transfer.sender.recovery import Replay, replay_beside

TOKEN_ENV = "TRANSFER_TOKEN"
ENDPOINTS = frozenset({"uploads", "files", "metrics"})  # paths under the server's base URL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
log = structlog.get_logger("transfer.cli")


def add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", default=None, help=f"bearer token (prefer ${TOKEN_ENV}: flags show in ps)"
    )


def token_of(args: argparse.Namespace) -> str | None:
    """`--token`, else `$TRANSFER_TOKEN`, else None; an empty value means none."""
    token = getattr(args, "token", None)
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    return token or None


# --- signals -------------------------------------------------------------------------


def exit_status(sig: signal.Signals) -> int:
    """What a shell reports for a process that died of `sig`: 130 SIGINT, 143 SIGTERM."""
    return 128 + int(sig)


class Signals:
    """SIGINT and SIGTERM for a running `transfer send` (see the module's invariants).

    `install` on the running loop first, `attach` the stop callback once it exists: a
    signal that came in between is passed on then.
    """

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.received: signal.Signals | None = None
        self._stop: Callable[[signal.Signals], None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def attach(self, stop: Callable[[signal.Signals], None]) -> None:
        self._stop = stop
        if self.received is not None:
            stop(self.received)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is not None:
            self._now(sig)
        self.received = sig
        _say(
            f"transfer send: {sig.name}, stopping; unconfirmed files stay journaled in "
            f"{self.spool} for the next run (Ctrl-C again to quit at once)"
        )
        if self._stop is not None:
            self._stop(sig)

    def _now(self, sig: signal.Signals) -> None:
        """The second signal: log it, flush the logs, and leave without cleaning up."""
        log.warning(Event.SENDER_STOPPING, reason=Reason.SIGNAL, signal=sig.name, immediate=True)
        _say(f"transfer send: {sig.name} again, quitting now")
        logging.shutdown()  # flush the log file: os._exit skips every handler
        os._exit(exit_status(sig))


def _say(line: str) -> None:
    # sys.stderr as it is now: a progress display may have redirected it.
    print(line, file=sys.stderr, flush=True)


# --- user-given paths ----------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_file(flag: str, path: Path) -> None:
    """`path` can be appended to, or created (with its missing directories).

    Raises:
        ConfigError: naming `flag` and what is in the way.
    """
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory, not a file")
    found = _nearest_existing(path)
    if found != path.absolute() and not found.is_dir():
        raise ConfigError(f"{flag} {path}: {found} is not a directory")
    mode = os.W_OK if found == path.absolute() else os.W_OK | os.X_OK
    if not os.access(found, mode):
        raise ConfigError(f"{flag} {path}: {found} is not writable")


def check_dir(flag: str, path: Path, inside: Iterable[str] = ()) -> None:
    """`path` is a directory this process may write in, or can be made one; so is each
    of its subdirectories `inside` that exists already.

    Raises:
        ConfigError: naming `flag` and what is in the way.
    """
    found = _nearest_existing(path)
    if not found.is_dir():
        where = "" if found == path.absolute() else f": {found}"
        raise ConfigError(f"{flag} {path}{where} is not a directory")
    if not os.access(found, os.R_OK | os.W_OK | os.X_OK):
        what = (
            "is not writable"
            if found == path.absolute()
            else f"cannot be created: {found} is not writable"
        )
        raise ConfigError(f"{flag} {path} {what}")
    for name in inside:
        if (path / name).exists():
            check_dir(flag, path / name)


def check_readable(paths: Iterable[Path]) -> None:
    """Every PATH argument exists and can be read (a directory: listed).

    Raises:
        ConfigError: naming the first path that cannot.
    """
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path} is not a file or directory")
        try:
            if path.is_dir():
                os.scandir(path).close()
            else:
                path.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def check_server_url(url: str) -> None:
    """`url` is an http(s) base URL (see the module's invariants).

    Raises:
        ConfigError: naming --server, with the base URL when a path was given.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--server must be an http:// or https:// URL, not {url!r}")
    segments = parts.path.split("/")
    endpoint = next((i for i, name in enumerate(segments) if name in ENDPOINTS), None)
    if endpoint is not None or parts.query or parts.fragment:
        prefix = "/".join(segments[:endpoint]).rstrip("/")
        base = f"{parts.scheme}://{parts.netloc}{prefix}"
        raise ConfigError(f"--server takes the server's base URL, not {url!r}: try --server {base}")


@dataclass(frozen=True, slots=True)
class SpoolView:
    """A spool's journal as read: the entries not folded into its checkpoint (every
    unconfirmed one), the meta settings, and how many confirmed files are folded."""

    spool: Path
    state: Replay[Record]
    live: list[JournalEntry]
    meta: dict[str, str]

    @property
    def folded(self) -> int:
        ids = self.state.folded.ids
        return len(ids) - sum(e.file_id in ids for e in self.live)  # re-recorded since

    def entries(self) -> list[JournalEntry]:
        """Every entry (decodes the folded ones: as costly as the journal is long)."""
        if not self.state.folded.ids:
            return self.live
        folded = folded_entries(self.spool, self.state.folded)
        live = {e.file_id: e for e in self.live}
        return [live.get(i, e) for i, e in folded.items()] + [
            e for i, e in live.items() if i not in folded
        ]


def read_spool(spool: Path) -> tuple[list[JournalEntry], dict[str, str]]:
    """Every entry and the meta settings of the journal in `spool` (see `view_spool`)."""
    view = view_spool(spool)
    return view.entries(), view.meta


def view_spool(spool: Path) -> SpoolView:
    """The journal in `spool` (checkpoint and log), read as it is, changing nothing.

    A torn last record (a sender writing right now) is left out, as recovery would; a
    compaction that replaces the checkpoint meanwhile makes it read again (logged).

    Raises:
        ConfigError: `spool` is no directory or holds no journal.
        JournalError: the journal is damaged before its end, or holds an unknown record.
    """
    if not spool.is_dir():
        why = "does not exist" if not spool.exists() else "is not a directory"
        raise ConfigError(f"--spool-dir {spool} {why}: no spool there")
    state = replay_beside(spool, lambda: _read_log(spool), decode_at)
    entries: dict[str, JournalEntry] = {}
    meta: dict[str, str] = {}
    for record in state.records:  # later records supersede earlier ones (as `FileJournal`)
        if isinstance(record, JournalEntry):
            entries[record.file_id] = record
        else:
            meta[record.key] = record.value
    return SpoolView(spool, state, list(entries.values()), meta)


def _read_log(spool: Path) -> bytes:
    path = spool / LOG_NAME
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--spool-dir {spool} holds no sender journal ({LOG_NAME})") from None
    except OSError as exc:
        raise ConfigError(f"--spool-dir {spool}: cannot read {LOG_NAME}: {exc.strerror}") from exc


def freeze_heap() -> None:
    """Take what start-up allocated (modules, parsers, the app, the journal's replay) out
    of the cyclic collector's sight: it lives as long as the process, and every full
    collection of a long run would otherwise walk it again. Call once, when set up. (No
    `gc.collect()` first: it found nothing to free at this point and cost 20 ms of CPU.)"""
    gc.freeze()
