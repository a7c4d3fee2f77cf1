"""The sender's durable journal: an append-only log of framed records, compacted into a
checkpoint (`checkpoint.py`) as it grows.

    frame = MAGIC (b"TJ1") | payload length (u32 BE) | crc32(payload) (u32 BE) | payload

A payload is compact ASCII JSON (valid UTF-8): `{"kind": "file", ...}` for a file's
latest state, `{"kind": "meta", "key": ..., "value": ...}` for a small setting, and, first
in a compacted log only, `{"kind": "log", "generation": k}` (see checkpoint.py).

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
- Backward compatible: the watched-file fields (`rel`, `mtime_ns`, `version`) and the
  protocol fields (`upload_url`, `verified`) are left out of a frame when unset, so
  the frames of other files are byte-identical to those written before these fields
  existed, and frames without them read back unset.
- Later records supersede earlier ones (per `file_id`, per meta key); first-seen order.
  A state changes only through `JournalEntry.after` (the table in `core/filestate.py`);
  records read back are taken as written, whatever the move between them.

- Compaction (past `compact_at` log bytes, or an eighth of the checkpoint's size, so its
  cost stays proportional to what was appended): a snapshot at a durable log offset
  `cut` is written, in a thread, as checkpoint k+1 (confirmed entries folded, everything
  else as records); then, with appends held back for the few milliseconds it takes, the
  log is replaced by generation k+1's: its header frame and the bytes after `cut`.
  Appends meanwhile go on into the old log and are carried over. Every instant of it
  replays to the same entries (checkpoint.py's generation rule); a failed checkpoint
  write is logged and retried later, a failed log swap fails the journal until reopened.
- Order: folded entries first (in folding order), then the others in first-seen order.

Why not SQLite in WAL mode: a record costs one sequential write and one fsync (fewer with
group commit: appends that arrive while a write is in flight share the next one), a torn
tail is detectable to the byte by length and checksum, and there is no extra dependency.
On open the checkpoint is read whole (and checked) but no folded record is decoded
until a caller asks for every entry; the log since the last compaction stays short.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from transfer.common.fsutil import fsync_dir
from transfer.core.errors import JournalError
from transfer.core.events import Event

# Re-exported (the alias is how mypy --strict spells it): the journal stores its values.
from transfer.core.filestate import FileState as FileState  # noqa: PLC0414
from transfer.sender import checkpoint
from transfer.sender.checkpoint import Crash, Folded, no_crash
from transfer.sender.entries import JournalEntry as JournalEntry  # noqa: PLC0414
from transfer.sender.entries import MetaRecord as MetaRecord  # noqa: PLC0414
from transfer.sender.entries import Record as Record  # noqa: PLC0414
from transfer.sender.entries import decode_record as decode_record  # noqa: PLC0414
from transfer.sender.entries import encode_record as encode_record  # noqa: PLC0414
from transfer.sender.folding import JournalStats as JournalStats  # noqa: PLC0414
from transfer.sender.folding import Snapshot, decode_at, folded_entries, write_checkpoint
from transfer.sender.logfile import MAGIC as MAGIC  # noqa: PLC0414 (re-exported)
from transfer.sender.logfile import MAX_PAYLOAD as MAX_PAYLOAD  # noqa: PLC0414
from transfer.sender.logfile import decode_frame as decode_frame  # noqa: PLC0414
from transfer.sender.logfile import encode_frame as encode_frame  # noqa: PLC0414
from transfer.sender.logfile import lock, wait_through, write_durably
from transfer.sender.logfile import scan_frames as scan_frames  # noqa: PLC0414
from transfer.sender.recovery import LOG_NAME as LOG_NAME  # noqa: PLC0414
from transfer.sender.recovery import Replay, recover

COMPACT_AT = 4 * 1024 * 1024  # log bytes that start a compaction (`--journal-compact-at`)
log = structlog.get_logger("transfer.journal")
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


class FileJournal:
    """`Journal` on `DIR/journal.log` and `DIR/journal.ckpt`; appends are durable, batched
    by one flush task; compactions run in the background (see the module's invariants)."""

    def __init__(
        self,
        directory: Path,
        fd: int,
        lock_fd: int,
        state: Replay[Record],
        *,
        compact_at: int,
        crash: Crash,
    ) -> None:
        self.path = directory / LOG_NAME
        self.recovery = RecoveryReport(len(state.records), state.log_size - state.log_end)
        self._dir, self._fd, self._lock_fd = directory, fd, lock_fd
        self._entries: dict[str, JournalEntry] = {}  # every entry not folded (or re-recorded)
        self._meta: dict[str, str] = {}
        self._folded = state.folded
        self._cache: dict[str, JournalEntry] | None = None  # folded records, decoded on demand
        self._generation, self._end, self._log_records = state.generation, state.log_end, 0
        self._ckpt_size = state.loaded.size if state.loaded else 0
        self._compact_at, self._crash, self._retry_at, self._compactions = compact_at, crash, 0, 0
        self._compaction: asyncio.Task[None] | None = None
        self._io = asyncio.Lock()  # held by a write, and by the log swap
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self._closed = self._released = False
        for record in state.records:
            self._apply(record)
        self._log_records = state.log_records

    @classmethod
    def open(
        cls, directory: Path, *, compact_at: int = COMPACT_AT, crash: Crash = no_crash
    ) -> FileJournal:
        """Lock `directory`, recover its checkpoint and log (dropping a torn tail,
        finishing an interrupted compaction) and load them."""
        if not directory.is_dir():
            directory.mkdir(parents=True)
            fsync_dir(directory.parent)
        lock_fd = lock(directory)
        try:
            checkpoint.sweep(directory)
            fd, state = recover(directory, decode_at)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(directory, fd, lock_fd, state, compact_at=compact_at, crash=crash)

    def entries(self) -> list[JournalEntry]:
        if not self._folded.ids:
            return list(self._entries.values())
        folded, live = self._folded_entries(), self._entries
        return [live.get(i, e) for i, e in folded.items()] + [
            e for i, e in live.items() if i not in folded
        ]

    def get(self, file_id: str) -> JournalEntry | None:
        found = self._entries.get(file_id)
        if found is None and file_id in self._folded.ids:
            return self._folded_entries().get(file_id)
        return found

    def live(self) -> list[JournalEntry]:
        """The entries not folded into the checkpoint, which hold every unconfirmed one:
        what a restart re-queues, without decoding a folded record."""
        return list(self._entries.values())

    def counts(self) -> dict[str, int]:
        """Entries by state, without decoding a folded record (all of them are confirmed)."""
        result = {state.value: 0 for state in FileState}
        overridden = 0
        for file_id, entry in self._entries.items():
            result[entry.state.value] += 1
            overridden += file_id in self._folded.ids
        result[FileState.CONFIRMED.value] += len(self._folded.ids) - overridden
        return result

    def folded_indices(self, run: str) -> set[int]:
        """The generated indices of `run` among the folded files (ids `{run}-{digits}`)."""
        return self._folded.indices_for(run)

    def stats(self) -> JournalStats:
        return JournalStats(
            self._log_records, self._end, len(self._folded.ids), self._ckpt_size, self._compactions
        )

    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    async def record(self, entry: JournalEntry) -> None:
        await self._append(entry)

    async def set_meta(self, key: str, value: str) -> None:
        await self._append(MetaRecord(key, value))

    def close(self) -> None:
        """Release the lock; a flush or compaction in flight finishes first."""
        if not self._closed:
            self._closed = True
            if self._writer is None and self._compaction is None:
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
            if self._closed and self._compaction is None:
                self._release()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._io.acquire()  # a log swap in progress holds it for a few ms
        except asyncio.CancelledError:
            _fail(batch, f"{self.path} was closed before this write")
            raise
        try:
            if self._failure:
                _fail(batch, self._failure)
                return
            data = b"".join(frame for _, frame, _ in batch)
            # The executor's future itself: `to_thread` would add a task and a context
            # copy per write (~10 us), and the write logs nothing that needs the context.
            loop = asyncio.get_running_loop()
            write = loop.run_in_executor(None, write_durably, self._fd, data)
            try:
                await wait_through(write)
            finally:
                self._settle(batch, write.exception(), len(data))
        finally:
            self._io.release()

    def _settle(self, batch: list[_Pending], error: BaseException | None, size: int) -> None:
        if error is not None:
            # A partial frame may be on disk now: appending after it would turn a torn tail
            # into damage in the middle. Refuse until reopened (recovery drops the tail).
            self._fail_all(f"{self.path}: write failed ({error}); reopen the journal", batch)
            return
        self._end += size
        self._log_records += len(batch)
        for record, _, done in batch:
            self._apply(record)
            done.set_result(None)
        self._maybe_compact()

    def _fail_all(self, message: str, batch: list[_Pending]) -> None:
        self._failure = message
        _fail(batch + self._pending, message)
        self._pending = []

    def _apply(self, record: Record) -> None:
        if isinstance(record, MetaRecord):
            self._meta[record.key] = record.value
        else:
            self._entries[record.file_id] = record

    def _folded_entries(self) -> dict[str, JournalEntry]:
        if self._cache is None:
            self._cache = folded_entries(self._dir, self._folded)
        return self._cache

    # --- compaction (see the module's invariants) --------------------------------------

    async def compact(self) -> None:
        """Compact now, whatever the log's size, and wait for it (or for the one running)."""
        if self._compaction is None and not self._closed and not self._failure:
            self._compaction = asyncio.create_task(self._compact())
        if self._compaction is not None:
            await asyncio.shield(self._compaction)

    def _maybe_compact(self) -> None:
        due = max(self._compact_at, self._ckpt_size // 8, self._retry_at)
        if self._end >= due and self._compaction is None and not self._closed:
            self._compaction = asyncio.create_task(self._compact())

    async def _compact(self) -> None:
        snap = Snapshot(
            self._end, self._log_records, list(self._entries.values()), dict(self._meta),
            self._folded, self._generation, time.monotonic(),
        )  # fmt: skip
        try:
            build = asyncio.to_thread(write_checkpoint, self._dir, snap, self._crash)
            work = asyncio.ensure_future(build)
            await wait_through(work)
            await self._swap(snap, *work.result())
        except (OSError, JournalError, ValueError) as exc:
            self._retry_at = self._end + self._compact_at  # not again at every append
            log.warning(Event.JOURNAL_COMPACTION_FAILED, error=str(exc), spool=str(self._dir))
        finally:
            self._compaction = None
            if self._closed and self._writer is None:
                self._release()

    async def _swap(
        self, snap: Snapshot, folded: Folded, size: int, confirmed: list[JournalEntry]
    ) -> None:
        async with self._io:
            if self._closed or self._failure:
                return  # on disk: the new checkpoint and the old log; the next open finishes
            held = time.monotonic()
            swap = asyncio.ensure_future(asyncio.to_thread(
                checkpoint.swap_log, self.path, self._fd, snap.cut, self._end,
                snap.generation + 1, crash=self._crash,
            ))  # fmt: skip
            cancelled = False
            try:
                await wait_through(swap)
            except asyncio.CancelledError:
                cancelled = True  # the swap happened or failed all the same: record which
            self._swapped(snap, swap, folded, size, confirmed)
            if cancelled:
                raise asyncio.CancelledError
            log.info(
                Event.JOURNAL_COMPACTED, folded=len(confirmed), checkpoint_entries=len(folded.ids),
                checkpoint_bytes=size, log_bytes=self._end, log_bytes_before=snap.cut,
                seconds=round(time.monotonic() - snap.started, 3),
                appends_held_ms=round((time.monotonic() - held) * 1000, 1),
            )  # fmt: skip

    def _swapped(
        self,
        snap: Snapshot,
        swap: asyncio.Future[int],
        folded: Folded,
        size: int,
        confirmed: list[JournalEntry],
    ) -> None:
        if (error := swap.exception()) is not None:
            self._fail_all(f"{self.path}: compaction failed ({error}); reopen the journal", [])
            return
        old, self._fd = self._fd, os.open(self.path, os.O_RDWR | os.O_APPEND)
        os.close(old)
        self._end, self._generation = swap.result(), snap.generation + 1
        self._log_records -= snap.records
        self._folded, self._ckpt_size, self._compactions = folded, size, self._compactions + 1
        for entry in confirmed:
            if self._entries.get(entry.file_id) is entry:
                del self._entries[entry.file_id]  # re-recorded since: the newer one stays
            if self._cache is not None:
                self._cache[entry.file_id] = entry

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        _fail(self._pending, f"{self.path} was closed before this write")
        self._pending = []
        os.close(self._fd)
        os.close(self._lock_fd)  # closing the descriptor drops the flock


def _fail(pending: list[_Pending], message: str) -> None:
    for _, _, done in pending:
        if not done.done():
            done.set_exception(JournalError(message))
