"""The sender's durable journal: an append-only log of framed records.

    frame = MAGIC (b"TJ1") | payload length (u32 BE) | crc32(payload) (u32 BE) | payload

A payload is compact ASCII JSON (valid UTF-8): `{"kind": "file", ...}` for a file's
latest state, `{"kind": "meta", "key": ..., "value": ...}` for a small setting.

Invariants:
- One writer: `FileJournal.open` holds an exclusive `flock` on `journal.lock` until closed.
- Append-only: every frame is written with `os.write` and fsynced before the `record` or
  `set_meta` that produced it returns, and before the in-memory view shows it. So only
  the frames of the last, unacknowledged write can be torn.
- Recovery drops a torn tail only: damaged bytes with no valid frame anywhere after them.
  The file is truncated to the end of the last good frame and fsynced. Damage followed
  by a valid frame is corruption of acknowledged records: `JournalError` naming the byte
  offset, and the file is left untouched. A frame cannot hide inside a payload, since
  payload bytes are printable ASCII: a length read from them is at least 0x20202020,
  above `MAX_PAYLOAD`. A false "valid frame" would only make recovery refuse, never drop.
- Backward compatible: the watched-file fields (`rel`, `mtime_ns`, `version`) are left
  out of a frame when unset, so the frames of other files are byte-identical to those
  written before these fields existed, and frames without them read back unset.
- Later records supersede earlier ones (per `file_id`, per meta key); first-seen order.
  A state changes only through `JournalEntry.after` (the table in `core/filestate.py`);
  records read back are taken as written, whatever the move between them.

Why not SQLite in WAL mode: a record costs one sequential write and one fsync (fewer with
group commit: appends that arrive while a write is in flight share the next one), a torn
tail is detectable to the byte by length and checksum, and there is no extra dependency.
The whole file is read on open; a sender's journal stays small (one record per change).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from transfer.common.fsutil import fsync_dir, write_all
from transfer.core.errors import JournalError
from transfer.core.filestate import FileEvent, next_state

# Re-exported (the alias is how mypy --strict spells it): the journal stores its values.
from transfer.core.filestate import FileState as FileState  # noqa: PLC0414

MAGIC = b"TJ1"
MAX_PAYLOAD = 1 << 20
LOG_NAME = "journal.log"
LOCK_NAME = "journal.lock"
_HEADER = struct.Struct(">3sII")
_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OPTIONAL = ("rel", "mtime_ns", "version")  # fields written only when set


@dataclass(frozen=True, slots=True)
class JournalEntry:
    file_id: str  # client-chosen upload id, [A-Za-z0-9_-]{1,64}
    name: str
    path: str  # absolute path of the file on the sender's disk
    size: int
    dtype: str  # e.g. "int16"
    digest: str  # hex xxh3-128 of the file's bytes
    state: FileState
    server_digest: str | None = None  # hex digest the server returned when confirmed
    reason: str | None = None  # why it failed
    # A watched file (`send --watch`) also carries what recognises it: its path relative
    # to the watched folder, its mtime when journaled and its version (1, 2, ... per path).
    rel: str | None = None
    mtime_ns: int | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.file_id, str) or not _FILE_ID.fullmatch(self.file_id):
            raise ValueError(f"invalid file_id {self.file_id!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"invalid size {self.size!r}")

    def after(
        self, event: FileEvent, *, server_digest: str | None = None, reason: str | None = None
    ) -> JournalEntry:
        """This entry once `event` happened: the next state comes from the one table,
        `filestate.TRANSITIONS`; `server_digest` and `reason` replace the old ones.

        Raises:
            IllegalTransition: `event` is no legal move from this state (self is unchanged).
        """
        state = next_state(self.state, event)
        return dataclasses.replace(self, state=state, server_digest=server_digest, reason=reason)


@dataclass(frozen=True, slots=True)
class MetaRecord:
    key: str
    value: str


Record = JournalEntry | MetaRecord
_Pending = tuple[Record, bytes, asyncio.Future[None]]  # a queued record, its frame, its waiter


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    records: int  # valid records read
    dropped_bytes: int  # torn tail truncated away


class Journal(Protocol):
    def entries(self) -> list[JournalEntry]: ...
    def get(self, file_id: str) -> JournalEntry | None: ...
    async def record(self, entry: JournalEntry) -> None: ...
    def meta(self) -> dict[str, str]: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...


def encode_frame(payload: bytes) -> bytes:
    """One frame around `payload`. Raises ValueError if it exceeds `MAX_PAYLOAD`."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"journal payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_frame(data: bytes, offset: int = 0) -> tuple[bytes, int] | None:
    """The payload of the valid frame at `offset` and the offset just past it; None if no
    complete frame with the right magic, length and checksum starts there."""
    if len(data) - offset < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    end = start + length
    if magic != MAGIC or length > MAX_PAYLOAD or end > len(data):
        return None
    payload = data[start:end]
    return (payload, end) if zlib.crc32(payload) == crc else None


def scan_frames(data: bytes, *, source: str = "journal") -> tuple[list[tuple[int, bytes]], int]:
    """(offset, payload) of each frame of the valid prefix, and where that prefix ends.

    Raises JournalError if a valid frame follows a damaged one (not a torn tail).
    """
    frames: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        frame = decode_frame(data, offset)
        if frame is None:
            _refuse_middle_damage(data, offset, source)
            break
        frames.append((offset, frame[0]))
        offset = frame[1]
    return frames, offset


def _refuse_middle_damage(data: bytes, damaged: int, source: str) -> None:
    later = data.find(MAGIC, damaged + 1)
    while later != -1:
        if decode_frame(data, later) is not None:
            raise JournalError(
                f"{source} is damaged at byte {damaged} and a valid record follows at byte"
                f" {later}; refusing to drop acknowledged records"
            )
        later = data.find(MAGIC, later + 1)


def encode_record(record: Record) -> bytes:
    """The payload of `record`: compact JSON, ASCII only (non-ASCII text is escaped)."""
    if isinstance(record, MetaRecord):
        fields: dict[str, object] = {"kind": "meta", "key": record.key, "value": record.value}
    else:
        fields = {"kind": "file", **dataclasses.asdict(record), "state": record.state.value}
        for name in _OPTIONAL:  # absent unless set: older frames stay byte-identical
            if fields[name] is None:
                del fields[name]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_record(payload: bytes) -> Record:
    """Raises ValueError or TypeError if `payload` is not a record this module wrote."""
    fields = json.loads(payload)
    if not isinstance(fields, dict):
        raise TypeError("a record must be a JSON object")
    kind = fields.pop("kind", None)
    if kind == "meta":
        return MetaRecord(**fields)
    if kind == "file":
        return JournalEntry(**{**fields, "state": FileState(fields.get("state"))})
    raise ValueError(f"unknown record kind {kind!r}")


class FileJournal:
    """`Journal` on `DIR/journal.log`; appends are durable, batched by one flush task."""

    def __init__(
        self, path: Path, fd: int, lock_fd: int, records: list[Record], recovery: RecoveryReport
    ) -> None:
        self.path = path
        self.recovery = recovery
        self._fd, self._lock_fd = fd, lock_fd
        self._entries: dict[str, JournalEntry] = {}
        self._meta: dict[str, str] = {}
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self._closed = False
        for record in records:
            self._apply(record)

    @classmethod
    def open(cls, directory: Path) -> FileJournal:
        """Lock `directory`, recover its log (dropping a torn tail) and load it."""
        if not directory.is_dir():
            directory.mkdir(parents=True)
            fsync_dir(directory.parent)
        lock_fd = _lock(directory)
        try:
            fd, records, dropped = _recover(directory / LOG_NAME)
        except BaseException:
            os.close(lock_fd)
            raise
        recovery = RecoveryReport(records=len(records), dropped_bytes=dropped)
        return cls(directory / LOG_NAME, fd, lock_fd, records, recovery)

    def entries(self) -> list[JournalEntry]:
        return list(self._entries.values())

    def get(self, file_id: str) -> JournalEntry | None:
        return self._entries.get(file_id)

    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    async def record(self, entry: JournalEntry) -> None:
        await self._append(entry)

    async def set_meta(self, key: str, value: str) -> None:
        await self._append(MetaRecord(key, value))

    def close(self) -> None:
        """Release the lock; a flush in flight finishes first, then releases it."""
        if not self._closed:
            self._closed = True
            if self._writer is None:
                self._release()

    def __enter__(self) -> FileJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _append(self, record: Record) -> None:
        if self._closed or self._failure:
            raise JournalError(self._failure or f"{self.path} is closed")
        frame = encode_frame(encode_record(record))
        done = asyncio.get_running_loop().create_future()
        self._pending.append((record, frame, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._flush())
        # Shielded: a cancelled caller must not cancel the write it shares with others.
        await asyncio.shield(done)

    async def _flush(self) -> None:
        try:
            while self._pending and not self._failure:
                batch, self._pending = self._pending, []
                await self._commit(batch)
        finally:
            self._writer = None
            if self._closed:
                self._release()

    async def _commit(self, batch: list[_Pending]) -> None:
        data = b"".join(frame for _, frame, _ in batch)
        write = asyncio.ensure_future(asyncio.to_thread(_write_durably, self._fd, data))
        try:
            await _wait_through_cancellation(write)
        finally:
            self._settle(batch, write.exception())

    def _settle(self, batch: list[_Pending], error: BaseException | None) -> None:
        if error is not None:
            # A partial frame may be on disk now: appending after it would turn a torn tail
            # into damage in the middle. Refuse until reopened (recovery drops the tail).
            self._failure = f"{self.path}: write failed ({error}); reopen the journal"
            _fail(batch + self._pending, self._failure)
            self._pending = []
            return
        for record, _, done in batch:
            self._apply(record)
            done.set_result(None)

    def _apply(self, record: Record) -> None:
        if isinstance(record, MetaRecord):
            self._meta[record.key] = record.value
        else:
            self._entries[record.file_id] = record

    def _release(self) -> None:
        _fail(self._pending, f"{self.path} was closed before this write")
        self._pending = []
        os.close(self._fd)
        os.close(self._lock_fd)  # closing the descriptor drops the flock


def _fail(pending: list[_Pending], message: str) -> None:
    for _, _, done in pending:
        if not done.done():
            done.set_exception(JournalError(message))


async def _wait_through_cancellation(future: asyncio.Future[None]) -> None:
    """Wait for `future` even if cancelled meanwhile, then re-raise the cancellation: the
    write runs in a thread that cannot be stopped, and the file must not close under it."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _write_durably(fd: int, data: bytes) -> None:
    write_all(fd, data)
    os.fsync(fd)


def _lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"another sender is using {directory}") from None
    return fd


def _recover(path: Path) -> tuple[int, list[Record], int]:
    """Open `path` for appending; its records; how many torn-tail bytes were dropped."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if created:
            fsync_dir(path.parent)
        data = path.read_bytes()
        frames, end = scan_frames(data, source=str(path))
        records = [_decode_at(path, offset, payload) for offset, payload in frames]
        if end < len(data):
            os.ftruncate(fd, end)
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, records, len(data) - end


def _decode_at(path: Path, offset: int, payload: bytes) -> Record:
    try:
        return decode_record(payload)
    except (ValueError, TypeError) as exc:
        raise JournalError(f"{path}: unreadable record at byte {offset}: {exc}") from exc
