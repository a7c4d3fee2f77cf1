"""One chunk's trip to disk: skip the stored prefix, hash everything, write the rest.

Invariants:
- Every body byte feeds the chunk's `Content-Digest` check; only bytes past the stored
  offset are written (an overlap is never written twice) and fed to the whole-file hash.
- Writes are blocking `os.write` into the page cache, on the event loop: they are cheap,
  and cheaper than a thread hop per piece. Every fsync runs in a thread.
- Overlapped writeback: once `FLUSH_EVERY` bytes are written, an `fdatasync` starts in a
  thread while the body keeps arriving, so the fsync before the acknowledgement finds
  little left to flush. At most one runs at a time; all are awaited before the fd closes.
- After a failure, `settle` either keeps what arrived (fsynced) or cuts the file back to
  the old offset; it never leaves unsynced bytes counted as stored.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterable, Callable
from pathlib import Path

from transfer.common.fsutil import write_all
from transfer.core import integrity
from transfer.core.errors import BadRequest, Code, InsufficientStorage, StorageFailure
from transfer.core.integrity import Digests, MultiHasher
from transfer.core.protocol import ChunkPlan

FLUSH_EVERY = 4 * 1024 * 1024


class ChunkWriter:
    def __init__(
        self, path: Path, offset: int, plan: ChunkPlan, digest: Digests, *, durable: bool
    ) -> None:
        self.offset = offset
        self.plan = plan
        self.expected = digest
        self.durable = durable
        self.hasher = MultiHasher(digest)
        self.received = 0
        self.written = 0
        self.body_failed = False
        self._unflushed = 0
        self._flushing: asyncio.Task[None] | None = None
        self.fd = os.open(path, os.O_WRONLY)
        os.lseek(self.fd, offset, os.SEEK_SET)

    async def consume(
        self, body: AsyncIterable[bytes], feed: Callable[[bytes], None] | None
    ) -> None:
        """Take the whole body; `feed` gets the bytes that were written."""
        length = self.plan.skip + self.plan.write
        chunks = aiter(body)
        while True:
            try:
                data = await anext(chunks)
            except StopAsyncIteration:
                return
            except BaseException:
                self.body_failed = True
                raise
            if self.received + len(data) > length:
                raise BadRequest(Code.BODY_TOO_LONG, f"body is longer than the range's {length}")
            self.hasher.update(data)
            fresh = data[max(0, self.plan.skip - self.received) :]
            self.received += len(data)
            if fresh:
                self._write(fresh)
                if feed is not None:
                    feed(fresh)

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
            self._unflushed = 0
            self._flushing = asyncio.create_task(asyncio.to_thread(os.fdatasync, self.fd))

    def _busy(self) -> bool:
        return self._flushing is not None and not self._flushing.done()

    def check(self) -> None:
        """Raise unless the body had the range's length and its declared digest."""
        length = self.plan.skip + self.plan.write
        if self.received != length:
            raise BadRequest(Code.BODY_TOO_SHORT, f"body has {self.received} of {length} bytes")
        integrity.verify(self.expected, self.hasher.digests(), what="chunk")

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
                self._fsync()
                return self.offset + self.written
            except StorageFailure:
                pass  # an unsynced tail cannot be trusted: cut it off below
        os.ftruncate(self.fd, self.offset)
        self.written = 0
        return self.offset

    async def close(self) -> None:
        try:
            await self._drain()
        except StorageFailure:
            pass  # already reported by sync() or settle(); the fd must still close
        finally:
            os.close(self.fd)
