"""One chunk's trip to disk: skip the stored prefix, hash everything, write the rest.

Invariants:
- Every body byte feeds the chunk's `Content-Digest` check; only bytes past the stored
  offset are written (an overlap is never written twice) and fed to the whole-file hash.
  That part is `shared.ChunkIntake`, the same for every store.
- Writes are blocking `os.write` into the page cache, on the event loop: they are cheap,
  and cheaper than a thread hop per piece. Every fsync runs in a thread.
- Overlapped writeback: once `FLUSH_EVERY` bytes are written, their writeback starts in a
  thread while the body keeps arriving (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: it
  queues the pages for the disk and returns, with no wait for them and no cache flush of
  the device; `fdatasync` where the call is missing), so the fsync before the
  acknowledgement finds little left to write and flushes the device once per chunk. It
  is only a head start: durability is the fsync's, whose error reports a failed
  writeback too. At most one runs at a time; all are awaited before the fd closes.
- After a failure, `settle` either keeps what arrived (fsynced) or cuts the file back to
  the old offset; it never leaves unsynced bytes counted as stored. Its fsync and
  truncate run in a thread, as does opening the file.
- The writer decides nothing about the protocol: whether the body fits its range is
  `protocol.check_body_length`, whether it matches its digest `integrity.verify`.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
from collections.abc import Callable

from transfer.common.fsutil import write_all
from transfer.core.errors import Code, InsufficientStorage, StorageFailure
from transfer.core.integrity import Digests
from transfer.core.protocol import ChunkPlan
from transfer.store.shared import ChunkIntake

FLUSH_EVERY = 4 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE}


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


class ChunkWriter(ChunkIntake):
    """Writes one chunk to an open `.part` file; build it with `await ChunkWriter.open`."""

    def __init__(
        self, fd: int, offset: int, plan: ChunkPlan, digest: Digests, *, durable: bool
    ) -> None:
        super().__init__(plan, digest)
        self.fd = fd
        self.offset = offset
        self.durable = durable
        self._unflushed = 0
        self._flushing: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, path: str, offset: int, plan: ChunkPlan, digest: Digests, *, durable: bool
    ) -> ChunkWriter:
        """A writer for `path`, positioned at `offset` (opened in a thread)."""
        fd = await asyncio.to_thread(_open_at, path, offset)
        return cls(fd, offset, plan, digest, durable=durable)

    def _write(self, data: bytes) -> None:
        try:
            write_all(self.fd, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(Code.INSUFFICIENT_STORAGE, "the disk is full") from exc
            raise StorageFailure(Code.STORAGE_ERROR, f"write failed: {exc.strerror}") from exc
        self.written += len(data)
        self._unflushed += len(data)
        if self.durable and self._unflushed >= FLUSH_EVERY and not self._busy():
            end = self.offset + self.written
            flush = asyncio.to_thread(
                start_writeback, self.fd, end - self._unflushed, self._unflushed
            )
            self._unflushed = 0
            self._flushing = asyncio.create_task(flush)

    def _busy(self) -> bool:
        return self._flushing is not None and not self._flushing.done()

    async def sync(self) -> None:
        """Make every written byte durable (no-op when not durable)."""
        await self._drain()
        if self.durable:
            await asyncio.to_thread(self._fsync)

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
        if keep and self.written:
            try:
                await asyncio.to_thread(self._fsync)
                return self.offset + self.written
            except StorageFailure:
                pass  # an unsynced tail cannot be trusted: cut it off below
        await asyncio.to_thread(os.ftruncate, self.fd, self.offset)
        self.written = 0
        return self.offset

    async def close(self) -> None:
        try:
            await self._drain()
        except StorageFailure:
            pass  # already reported by sync() or settle(); the fd must still close
        finally:
            os.close(self.fd)


def _open_at(path: str, offset: int) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
