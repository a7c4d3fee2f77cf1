"""What happens to a watched source file once the server confirmed it
(`--after-confirm keep|delete|move:DIR`).

Invariants:
- Only a CONFIRMED journal entry is ever acted on, and only after its confirmation is
  durable in the journal (the pipeline records it before calling here).
- Only the file that was confirmed is touched: right before acting, the source must
  still have the journaled size, mtime and digest (read again from disk). A file that
  changed is left alone and logged (`source.changed`); watch mode then sees new content.
- `delete` unlinks the file and fsyncs its folder. `move:DIR` puts it at DIR/<relative
  path> (folders created as needed): a rename on the same file system, else a copy
  written to a temporary name, fsynced and renamed; the destination is durable before
  the source is removed. A crash anywhere leaves the source (confirmed, unchanged), so
  the next run acts again; nothing unconfirmed is ever deleted or moved.
- Failures (permissions, a full destination) are logged, never fatal: the file stays.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from transfer.common.fsutil import fsync_dir
from transfer.core.errors import ConfigError
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender.journal import JournalEntry
from transfer.sender.uploader import hash_file

log = structlog.get_logger("transfer.sender")


class Action(enum.Enum):
    KEEP = "keep"
    DELETE = "delete"
    MOVE = "move"


@dataclass(frozen=True, slots=True)
class AfterConfirm:
    action: Action = Action.KEEP
    target: Path | None = None  # the folder of `move:DIR`

    @classmethod
    def parse(cls, text: str) -> AfterConfirm:
        """`keep`, `delete` or `move:DIR`.

        Raises:
            ConfigError: anything else, or `move:` without a folder.
        """
        if text in ("keep", "delete"):
            return cls(Action(text))
        if text.startswith("move:") and text[len("move:") :]:
            return cls(Action.MOVE, Path(text[len("move:") :]).absolute())
        raise ConfigError(f"--after-confirm must be keep, delete or move:DIR, not {text!r}")


async def apply(policy: AfterConfirm, entry: JournalEntry) -> bool:
    """Delete or move `entry`'s source if it is confirmed and unchanged; True if done."""
    if policy.action is Action.KEEP or entry.state is not FileState.CONFIRMED:
        return False
    try:
        return await asyncio.to_thread(_apply, policy, entry)
    except OSError as exc:
        log.warning(Event.WATCH_ERROR, path=entry.path, error=str(exc), action=policy.action.value)
        return False


def _apply(policy: AfterConfirm, entry: JournalEntry) -> bool:
    source = Path(entry.path)
    if not still_confirmed(source, entry):
        log.warning(Event.SOURCE_CHANGED, path=entry.path, file_id=entry.file_id)
        return False
    if policy.action is Action.DELETE:
        source.unlink()
        fsync_dir(source.parent)
        log.info(Event.SOURCE_DELETED, path=entry.path, file_id=entry.file_id)
        return True
    assert policy.target is not None
    destination = policy.target / (entry.rel or source.name)
    _move(source, destination)
    log.info(Event.SOURCE_MOVED, path=entry.path, to=str(destination), file_id=entry.file_id)
    return True


def still_confirmed(source: Path, entry: JournalEntry) -> bool:
    """Whether `source` still holds exactly the confirmed bytes (size, mtime, digest)."""
    try:
        now = source.stat()
        if now.st_size != entry.size or (entry.mtime_ns and now.st_mtime_ns != entry.mtime_ns):
            return False
        size, digest = hash_file(source)
    except FileNotFoundError:
        return False
    return size == entry.size and digest == entry.digest


def _move(source: Path, destination: Path) -> None:
    """`source` to `destination`, durable there before it is gone here."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_durably(source, destination)
        source.unlink()
    fsync_dir(destination.parent)
    fsync_dir(source.parent)


def _copy_durably(source: Path, destination: Path) -> None:
    temporary = destination.with_name(f".{destination.name}.transfer-tmp")
    shutil.copy2(source, temporary)
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, destination)
    fsync_dir(destination.parent)
