"""Reading a spool's journal back: its checkpoint, then its log from where the checkpoint
leaves off (the generation rule in checkpoint.py). Bytes and files only: the caller
passes `decode`, which gives a payload its meaning (`journal.decode_record`).

Invariants:
- `replay` changes nothing (`transfer status` and `verify` read beside a running sender).
- `replay_beside` retries, at most `READ_ATTEMPTS` times and logging each one, only when
  the checkpoint was replaced while it read (a compaction raced it); a `JournalError`
  with the checkpoint unchanged throughout is damage, raised at once. With the
  checkpoint unchanged from before the log was read to after it was, the two belong
  together: a compaction writes its checkpoint before it swaps the log.
- `recover` (the journal's open, under its lock) truncates a torn tail and finishes a
  compaction interrupted between its checkpoint and its log swap, before any append.
- Damage before the torn tail, a damaged checkpoint, or a log and checkpoint that do not
  belong together are `JournalError`: acknowledged records are never dropped silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from transfer.common.fsutil import fsync_dir
from transfer.core.errors import JournalError
from transfer.core.events import Event
from transfer.sender import checkpoint
from transfer.sender.checkpoint import CKPT_NAME, Folded, Loaded, no_crash
from transfer.sender.logfile import scan_frames

LOG_NAME = "journal.log"
READ_ATTEMPTS = 10  # reads of a journal a compaction keeps replacing under the reader
log = structlog.get_logger("transfer.journal")
R = TypeVar("R")
Decode = Callable[[Path, int, bytes], R]  # (file, byte offset, payload) -> record


@dataclass(frozen=True, slots=True)
class Replay(Generic[R]):
    """A spool's journal as read: the records to apply in order (the checkpoint's
    unfolded state, then the log's), what is folded, and where the log stands."""

    records: list[R]
    folded: Folded
    loaded: Loaded | None
    generation: int  # of the log
    log_records: int
    log_end: int  # end of the log's valid prefix
    log_size: int
    behind: bool  # the log is still the checkpoint's source: the swap is unfinished


def replay(directory: Path, data: bytes, decode: Decode[R]) -> Replay[R]:
    """Read-only: the checkpoint in `directory` (if any) with `data`, its log's bytes.

    Raises:
        JournalError: damage before the log's torn tail, a damaged checkpoint, or a log
            and checkpoint that do not belong together.
    """
    loaded = checkpoint.read(directory)
    path = directory / LOG_NAME
    frames, end = scan_frames(data, source=str(path))
    generation, tail, behind = _continuation(loaded, frames, end, path)
    ckpt = directory / CKPT_NAME
    records = [decode(ckpt, 0, payload) for payload in (loaded.live if loaded else [])]
    records += [decode(path, offset, payload) for offset, payload in tail]
    folded = loaded.folded if loaded else Folded()
    return Replay(records, folded, loaded, generation, len(tail), end, len(data), behind)


def replay_beside(directory: Path, read_log: Callable[[], bytes], decode: Decode[R]) -> Replay[R]:
    """`replay` of `read_log()` for a reader beside a running sender (no lock): read
    again when a compaction replaced the checkpoint meanwhile (see the invariants).

    Raises:
        JournalError: as `replay`, with the checkpoint unchanged while reading, or still
            after `READ_ATTEMPTS` reads.
    """
    ckpt = directory / CKPT_NAME
    for attempt in range(1, READ_ATTEMPTS + 1):
        before = _identity(ckpt)
        try:
            return replay(directory, read_log(), decode)
        except JournalError as exc:
            if attempt == READ_ATTEMPTS or _identity(ckpt) == before:
                raise
            log.warning(Event.JOURNAL_READ_RETRY, attempt=attempt, error=str(exc),
                        spool=str(directory))  # fmt: skip
    raise AssertionError("unreachable: the last attempt returns or raises")


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when `path` is replaced (a new inode, or a reused one written anew)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _continuation(
    loaded: Loaded | None, frames: list[tuple[int, bytes]], end: int, path: Path
) -> tuple[int, list[tuple[int, bytes]], bool]:
    """The log's generation, the frames to replay after the checkpoint, and whether the
    log is still the checkpoint's source (checkpoint.py's generation rule)."""
    try:
        first = checkpoint.log_generation(frames[0][1]) if frames else None
    except ValueError as exc:
        raise JournalError(f"{path}: unreadable header frame: {exc}") from exc
    body = frames[1:] if first is not None else frames
    generation = first or 0
    if (loaded.generation if loaded else 0) == generation:
        return generation, body, False
    if loaded is not None and loaded.source[0] == generation:
        cut = loaded.source[1]
        if cut == end or any(offset == cut for offset, _ in frames):
            return generation, [f for f in body if f[0] >= cut], True
    held = f"generation {loaded.generation}" if loaded else "no checkpoint"
    raise JournalError(
        f"{path} (generation {generation}) does not continue {CKPT_NAME} ({held});"
        " refusing to guess which records are acknowledged"
    )


def recover(directory: Path, decode: Decode[R]) -> tuple[int, Replay[R]]:
    """Open the log for appending; its replay; a torn tail is truncated and an
    interrupted compaction finished first."""
    path = directory / LOG_NAME
    created = not path.exists()
    if created and (directory / CKPT_NAME).exists():
        raise JournalError(f"{path} is missing beside its {CKPT_NAME}; refusing to guess")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if created:
            fsync_dir(path.parent)
        data = path.read_bytes()
        state = replay(directory, data, decode)
        if state.log_end < len(data):
            os.ftruncate(fd, state.log_end)
            os.fsync(fd)
        return _catch_up(path, fd, state)
    except BaseException:
        os.close(fd)
        raise


def _catch_up(path: Path, fd: int, state: Replay[R]) -> tuple[int, Replay[R]]:
    """Finish a compaction that wrote its checkpoint but not its log (a crash between)."""
    if not state.behind or state.loaded is None:
        return fd, state
    cut, generation = state.loaded.source[1], state.loaded.generation
    length = checkpoint.swap_log(path, fd, cut, state.log_end, generation, crash=no_crash)
    os.close(fd)
    new = dataclasses.replace(state, generation=generation, log_end=length, behind=False)
    return os.open(path, os.O_RDWR | os.O_APPEND), new
