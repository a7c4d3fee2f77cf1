"""One chunk's trip to disk: skip the stored prefix, hash everything, write the rest.

Invariants:
- Every body byte feeds the chunk's `Content-Digest` check; only bytes past the stored
  offset are written (an overlap is never written twice) and fed to the whole-file hash.
  That part is `shared.ChunkIntake`, the same for every store.
- The `.part`'s length is always a count of body bytes: nothing is ever written past
  the last received byte (no padding), so after a kill at any instant the length is an
  offset of real bytes, and a failure cuts the file back to the old offset.
- Small chunks: blocking `os.write` into the page cache, on the event loop (cheaper than
  a thread hop per piece); once `FLUSH_EVERY` bytes are written their writeback starts
  in a thread (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, `fdatasync` where it is
  missing), so the fsync before the acknowledgement finds little left to write. Only a
  head start: durability is the fsync's. At most one runs at a time.
- Large chunks (`DIRECT_FROM` bytes to write, the pool's only writer): direct
  I/O (`store/directio.py`, which says why). The bytes up to the next `BLOCK` boundary
  go through the page cache on the loop; the rest is copied into the pool's aligned
  buffers, each full one written with `O_DIRECT` in a thread while the body keeps
  arriving, the writes chained in file order (the body waits once `DEPTH` are
  pending); the last, partly filled buffer follows in `sync`, its partial block
  through the page cache. A failed write is kept and raised at the next piece or in
  `sync`, and no write after it begins.
- The fsync before the acknowledgement stays the only durability: it covers the direct
  writes' metadata (size, extents), the buffered head and tail, and the device's cache.
- After a failure, `settle` either keeps what arrived (fsynced) or cuts the file back to
  the old offset; it never leaves unsynced bytes counted as stored. It runs only once
  every write has ended; the descriptor closes only after the last one ended, and a
  buffer returns to its pool only after the write from it ended.
- The writer decides nothing about the protocol: whether the body fits its range is
  `protocol.check_body_length`, whether it matches its digest `integrity.verify`.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
from collections.abc import AsyncGenerator, AsyncIterable, Callable

from transfer.common.fsutil import write_all
from transfer.core.errors import Code, InsufficientStorage, ProtocolError, StorageFailure
from transfer.core.integrity import Digests
from transfer.core.protocol import ChunkPlan
from transfer.store.directio import BLOCK, DEPTH, O_DIRECT, STAGE, DirectFile, StagingPool
from transfer.store.shared import ChunkIntake

FLUSH_EVERY = 4 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE}
DIRECT_FROM = 4 * 1024 * 1024  # a chunk writing at least this much goes direct


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's `sync_file_range` (Linux; Python's `os` has no wrapper), or None."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _load_sync_file_range()  # resolved once; a constant, never changed


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Queue `length` bytes at `offset` for writing to disk without waiting for them
    (blocking only while the device's queue is full: run it in a thread).

    Raises:
        OSError: from the call (EIO, ...).
    """
    if _SYNC_FILE_RANGE is None:
        os.fdatasync(fd)
        return
    if _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0:
        code = ctypes.get_errno()
        if code not in UNSUPPORTED:
            raise OSError(code, os.strerror(code))
        os.fdatasync(fd)  # a file system without it: the head start of old


def _storage_error(exc: OSError, what: str) -> StorageFailure | InsufficientStorage:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(Code.INSUFFICIENT_STORAGE, "the disk is full")
    return StorageFailure(Code.STORAGE_ERROR, f"{what} failed: {exc.strerror}")


class ChunkWriter(ChunkIntake):
    """Writes one chunk to an open `.part` file; build it with `await ChunkWriter.open`.
    With a `pool`, a chunk of `DIRECT_FROM` bytes or more is written direct."""

    def __init__(
        self,
        fd: int,
        offset: int,
        plan: ChunkPlan,
        digest: Digests,
        *,
        durable: bool,
        pool: StagingPool | None = None,
    ) -> None:
        super().__init__(plan, digest)
        self.fd = fd
        self.offset = offset
        self.durable = durable
        self._unflushed = 0
        self._flushing: asyncio.Task[None] | None = None
        self._counted = pool  # this writer is counted in: `leave` at close
        large = O_DIRECT != 0 and plan.write >= DIRECT_FROM
        self._pool = pool if pool is not None and pool.enter(large=large) else None
        self._head = -offset % BLOCK  # bytes to the next block boundary: buffered
        self._stage: mmap.mmap | None = None  # the buffer being filled
        self._filled = 0
        self._writes: list[asyncio.Task[None]] = []  # direct writes, in file order
        self._failure: ProtocolError | None = None  # the first failed direct write's
        self._direct = DirectFile(fd)  # used by one write at a time: they are chained
        self._stopped = False  # set when the bytes are not wanted: no write begins

    @classmethod
    async def open(
        cls,
        path: str,
        offset: int,
        plan: ChunkPlan,
        digest: Digests,
        *,
        durable: bool,
        pool: StagingPool | None = None,
    ) -> ChunkWriter:
        """A writer for `path`, positioned at `offset` (opened in a thread)."""
        fd = await asyncio.to_thread(_open_at, path, offset)
        return cls(fd, offset, plan, digest, durable=durable, pool=pool)

    @property
    def direct(self) -> bool:
        """Whether this chunk's bytes past its first block go direct (so far)."""
        return self._pool is not None and not self._direct.refused

    async def consume(
        self, body: AsyncIterable[bytes], feed: Callable[[bytes], None] | None
    ) -> None:
        """As `ChunkIntake.consume`; a direct chunk waits for the disk between pieces
        once `DEPTH` full buffers are waiting for it."""
        if self._pool is None:
            await super().consume(body, feed)
            return
        paced = self._paced(body)
        try:
            await super().consume(paced, feed)
        finally:
            await paced.aclose()

    async def _paced(self, body: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        async for data in body:
            yield data
            while len(self._writes) > DEPTH and self._failure is None:
                await asyncio.wait({self._writes[0]})  # never raises the write's error
                self._writes = [task for task in self._writes if not task.done()]

    def _write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        if self._pool is None:
            self._write_now(data)
            return
        view = memoryview(data)
        if self._head:
            head, view = view[: self._head], view[self._head :]
            self._write_now(head)
            self._head -= len(head)
        self._stage_all(view)
        self.written += len(view)

    def _write_now(self, data: bytes | memoryview) -> None:
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise _storage_error(exc, "write") from exc
        self.written += len(data)
        self._unflushed += len(data)
        if self.durable and self._unflushed >= FLUSH_EVERY and not self._busy():
            end = self.offset + self.written
            flush = asyncio.to_thread(
                start_writeback, self.fd, end - self._unflushed, self._unflushed
            )
            self._unflushed = 0
            self._flushing = asyncio.create_task(flush)

    def _stage_all(self, view: memoryview) -> None:
        """Copy `view` into buffers; each full one goes to the disk behind the others."""
        assert self._pool is not None
        while view:
            if self._stage is None:
                self._stage, self._filled = self._pool.take(), 0
            room = min(STAGE - self._filled, len(view))
            self._stage[self._filled : self._filled + room] = view[:room]
            self._filled += room
            view = view[room:]
            if self._filled == STAGE:
                self._submit(self._stage, STAGE)
                self._stage = None

    def _submit(self, buffer: mmap.mmap, length: int) -> None:
        before = self._writes[-1] if self._writes else None
        self._writes = [task for task in self._writes if not task.done()]
        write = self._write_staged(before, buffer, length)
        self._writes.append(asyncio.create_task(write))

    async def _write_staged(
        self, before: asyncio.Task[None] | None, buffer: mmap.mmap, length: int
    ) -> None:
        """Write `buffer[:length]` once the write before it ended; a failure is kept for
        the body's next piece or `sync`, and stops the writes after it."""
        if before is not None:
            await asyncio.wait({before})
        if self._failure is None and not self._stopped:
            try:
                await asyncio.to_thread(self._direct.put, buffer, length)
            except OSError as exc:
                self._failure = _storage_error(exc, "write")
        self._give(buffer)  # not reached if cancelled: a thread may still read it

    def _give(self, buffer: mmap.mmap) -> None:
        if self._pool is not None:
            self._pool.give(buffer)
        else:
            buffer.close()

    def _busy(self) -> bool:
        return self._flushing is not None and not self._flushing.done()

    async def sync(self) -> None:
        """Make every written byte durable (only written, when not durable)."""
        await self._drain()
        self._submit_rest()
        await self._settle_writes()
        if self._failure is not None:
            raise self._failure
        if self.durable:
            await asyncio.to_thread(self._fsync)

    def _submit_rest(self) -> None:
        """Send the partly filled buffer to the disk, behind the full ones."""
        if self._stage is not None:
            self._submit(self._stage, self._filled)
            self._stage = None

    async def _settle_writes(self) -> None:
        """Wait until every direct write ended (cancelling this wait cancels none)."""
        if self._writes:
            await asyncio.wait(self._writes)
            self._writes = []

    async def _drain(self) -> None:
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            try:
                await flushing
            except OSError as exc:
                raise StorageFailure(Code.STORAGE_ERROR, f"fsync failed: {exc.strerror}") from exc

    def _fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise StorageFailure(Code.STORAGE_ERROR, f"fsync failed: {exc.strerror}") from exc

    async def settle(self, *, keep: bool) -> int:
        """After a failure: keep what arrived (durably) or cut back; returns the offset."""
        try:
            await self._drain()
        except StorageFailure:
            keep = False
        if keep:
            self._submit_rest()
        else:
            self._stopped = True
        await self._settle_writes()
        if keep and self.written and self._failure is None:
            try:
                await asyncio.to_thread(self._fsync)
                return self.offset + self.written
            except StorageFailure:
                pass  # an unsynced tail cannot be trusted: cut it off below
        self._drop_stage()
        await asyncio.to_thread(os.ftruncate, self.fd, self.offset)
        self.written = 0
        return self.offset

    def _drop_stage(self) -> None:
        if self._stage is not None:
            self._give(self._stage)
            self._stage = None

    async def close(self) -> None:
        """Close the descriptor, once the last direct write (if any is left) ended."""
        try:
            await self._drain()
        except StorageFailure:
            pass  # already reported by sync() or settle(); the fd must still close
        finally:
            self._stopped = True
            self._drop_stage()
            if self._counted is not None:
                self._counted.leave()
                self._counted = None
            pending = [task for task in self._writes if not task.done()]
            if pending:
                pending[-1].add_done_callback(lambda _: os.close(self.fd))
            else:
                os.close(self.fd)


def _open_at(path: str, offset: int) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = ["DIRECT_FROM", "FLUSH_EVERY", "ChunkWriter", "StagingPool", "start_writeback"]
