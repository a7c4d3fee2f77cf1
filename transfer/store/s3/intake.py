"""One chunk into the S3 store: whole parts uploaded as they fill, the rest a tail.

S3 refuses parts below 5 MiB (except the last), and our protocols allow chunks of any
size. So a chunk's bytes join the upload's *tail* (the bytes after the last committed
part, kept in one small object): once tail + chunk reach `threshold` they go up as a
part, and what is left below it is written as a new tail object. Nothing is committed
here: `S3Chunk.layout` is what the store then compares-and-sets in PostgreSQL.

Invariants: the chunk's digest covers the whole body (`ChunkIntake`); a part or tail
written here is invisible until the record names it, so a chunk that fails leaves
orphans at most (the next part of the same number overwrites them, the sweep removes
the rest), never a changed upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable

from transfer.core.errors import StorageFailure
from transfer.core.integrity import Digests
from transfer.core.protocol import ChunkPlan
from transfer.store.s3.objects import Objects
from transfer.store.s3.records import Layout, Part
from transfer.store.shared import ChunkIntake

PART_MIN = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PARTS = 10_000  # S3's most parts in one multipart upload


def threshold(total: int | None, part_min: int = PART_MIN) -> int:
    """The smallest part for an upload of `total` bytes: S3's minimum, or larger when
    the total needs it to fit in 10,000 parts (an unknown total: the minimum)."""
    if total is None:
        return part_min
    return max(part_min, -(-total // (MAX_PARTS - 1)))


class S3Chunk(ChunkIntake):
    """A chunk's fresh bytes after the old tail's, flushed as parts when they fill."""

    def __init__(
        self,
        objects: Objects,
        upload_id: str,
        *,
        old: Layout,
        tail: bytes,
        plan: ChunkPlan,
        digest: Digests,
        part_min: int,
    ) -> None:
        super().__init__(plan, digest)
        self.objects = objects
        self.upload_id = upload_id
        self.old = old
        self.buffer = bytearray(tail)
        self.threshold = threshold(plan.total, part_min)
        self.mpu = old.mpu
        self.parts = list(old.parts)
        self.new_tail: str | None = None
        self.storage_failed = False

    def _write(self, data: bytes) -> None:
        self.buffer += data
        self.written += len(data)

    async def pumped(self, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """`body`, flushing a part whenever the buffer fills, between two pieces."""
        async for piece in body:
            yield piece
            if len(self.buffer) >= self.threshold:
                await self._storing(self._flush_part())

    async def _storing(self, step: Awaitable[None]) -> None:
        """Await a storage step, remembering a failure was the store's, not the body's."""
        try:
            await step
        except StorageFailure:
            self.storage_failed = True
            raise

    async def _flush_part(self) -> None:
        if self.mpu is None:
            self.mpu = await self.objects.start_multipart(self.upload_id)
        number = len(self.parts) + 1
        data = bytes(self.buffer)
        etag = await self.objects.put_part(self.upload_id, self.mpu, number, data)
        self.parts.append(Part(number, etag, len(data)))
        del self.buffer[:]

    async def settle(self, offset_after: int) -> Layout:
        """Store what is left (a part if big enough, else a new tail object) and return
        the layout to commit. Raises: StorageFailure."""
        if self.written == 0:
            return self.old  # all overlap: nothing new to store
        if len(self.buffer) >= self.threshold:
            await self._flush_part()
        if self.buffer:
            self.new_tail = self.objects.new_tail_key(self.upload_id, offset_after)
            await self.objects.put(self.new_tail, bytes(self.buffer))
        return Layout(self.mpu, tuple(self.parts), self.new_tail, len(self.buffer))

    async def discard(self) -> None:
        """After a failed commit or a dropped chunk: remove what only this chunk made."""
        await self.objects.discard(self.new_tail)
        if self.mpu is not None and self.old.mpu is None:
            await self.objects.discard_upload(self.upload_id, self.mpu)


__all__ = ["MAX_PARTS", "PART_MIN", "S3Chunk", "threshold"]
