"""`MemoryStore`: the whole `ServerStore` in memory, for fast handler and seam tests.

Same semantics as `FileStore`, shared by construction where it matters: the chunk's
body goes through `shared.ChunkIntake` (overlap skipped, length rule, chunk digest), the
record's algorithms come from `shared.whole_algorithms`, and concurrent writers meet
the same `shared.InFlight` refusal.

What a disk would hold lives in a `MemoryBacking`; a `MemoryStore` holds only what a
process would (the running whole-file hashes, the in-flight set). So a restart is a new
`MemoryStore` over the same backing: acknowledged bytes are all there, a chunk that
was being received when the "crash" came keeps what it had written (as on a disk), and
whole-file digests are recomputed from the stored bytes.

Invariant: an upload's offset is `len(backing.parts[id])`, nothing remembered beside it.
Nothing here blocks; there is no durability to wait for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field, replace

from transfer.core import integrity
from transfer.core.errors import DigestMismatch
from transfer.core.integrity import Digests, MultiHasher
from transfer.core.protocol import ChunkPlan, UploadState
from transfer.core.records import FileRecord, UploadInfo, UploadSpec, check_same, declared
from transfer.core.tenancy import SEPARATOR
from transfer.store.base import PublishedFile, StoreCounts
from transfer.store.shared import (
    ChunkIntake,
    ClosingReader,
    InFlight,
    RunningHash,
    whole_algorithms,
)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A published file's bytes and when it was published."""

    data: bytes
    modified_ns: int


@dataclass(slots=True)
class MemoryBacking:
    """What survives a simulated restart: everything a disk would hold."""

    specs: dict[str, UploadSpec] = field(default_factory=dict)  # every known upload
    parts: dict[str, bytearray] = field(default_factory=dict)  # partial uploads' bytes
    touched: dict[str, float] = field(default_factory=dict)  # their last modification
    records: dict[str, FileRecord] = field(default_factory=dict)  # completed uploads
    files: dict[str, StoredFile] = field(default_factory=dict)  # published files


class _MemoryChunk(ChunkIntake):
    """A chunk appended to a bytearray; `mark` runs after every stored piece."""

    def __init__(
        self, part: bytearray, plan: ChunkPlan, digest: Digests, mark: Callable[[], None]
    ) -> None:
        super().__init__(plan, digest)
        self.part = part
        self.offset = len(part)
        self.mark = mark

    def _write(self, data: bytes) -> None:
        self.part += data
        self.written += len(data)
        self.mark()

    def settle(self, *, keep: bool) -> None:
        if not keep:
            del self.part[self.offset :]
            self.written = 0


class MemoryFile(ClosingReader):
    """A `PublishedFile` over bytes in memory."""

    def __init__(self, stored: StoredFile) -> None:
        self._data = stored.data
        self.size = len(stored.data)
        self.modified_ns = stored.modified_ns

    async def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    async def close(self) -> None:
        pass


class MemoryStore:
    """`ServerStore` in memory; `MemoryStore(store.backing)` is the same data "restarted"."""

    def __init__(
        self,
        backing: MemoryBacking | None = None,
        *,
        capacity: int = 2**40,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backing = backing if backing is not None else MemoryBacking()
        self.capacity = capacity
        self._clock = clock
        self._running: dict[str, RunningHash] = {}
        self._writing = InFlight()
        self._reads = 0  # records looked up in the backing (its "storage"), for `counts`

    def counts(self) -> StoreCounts:
        """Nothing is read at start-up and nothing is cached: every `get` reads."""
        return StoreCounts(
            records_read=self._reads, partials=len(self.backing.parts), cached=0, cache_capacity=0
        )

    # --- QuotaStore and ExpiringStore -------------------------------------------------

    @property
    def partial_bytes(self) -> int:
        return sum(len(part) for part in self.backing.parts.values())

    def partial_bytes_of(self, tenant: str) -> int:
        prefix = tenant + SEPARATOR
        return sum(len(part) for key, part in self.backing.parts.items() if key.startswith(prefix))

    def free_bytes(self) -> int:
        published = sum(len(f.data) for f in self.backing.files.values())
        return self.capacity - self.partial_bytes - published

    async def partials(self) -> list[tuple[str, float]]:
        return [(upload_id, self.backing.touched[upload_id]) for upload_id in self.backing.parts]

    async def modified(self, upload_id: str) -> float | None:
        return self.backing.touched.get(upload_id) if upload_id in self.backing.parts else None

    # --- UploadStore --------------------------------------------------------------------

    async def get(self, upload_id: str) -> UploadInfo | None:
        spec = self.backing.specs.get(upload_id)
        if spec is None:
            return None
        self._reads += 1
        record = self.backing.records.get(upload_id)
        if record is not None:
            return UploadInfo(spec, UploadState(record.size, record.size), record)
        return UploadInfo(spec, UploadState(len(self.backing.parts[upload_id]), spec.size))

    async def create(self, spec: UploadSpec) -> UploadInfo:
        existing = await self.get(spec.upload_id)
        if existing is not None:
            check_same(existing.spec, spec)
            return await self.declare(spec.upload_id, size=spec.size, repr_digest=spec.repr_digest)
        self.backing.specs[spec.upload_id] = spec
        self.backing.parts[spec.upload_id] = bytearray()
        self._touch(spec.upload_id)
        self._running[spec.upload_id] = RunningHash(whole_algorithms(spec))
        return UploadInfo(spec, UploadState(0, spec.size))

    async def declare(
        self, upload_id: str, *, size: int | None, repr_digest: Digests
    ) -> UploadInfo:
        self._writing.check(upload_id)
        info = await self._require(upload_id)
        new = declared(info, size, repr_digest)
        if new is None:
            return info
        self.backing.specs[upload_id] = new.spec
        return new

    async def _require(self, upload_id: str) -> UploadInfo:
        info = await self.get(upload_id)
        if info is None:
            raise KeyError(upload_id)
        return info

    def _touch(self, upload_id: str) -> None:
        self.backing.touched[upload_id] = self._clock()

    async def write_chunk(
        self,
        upload_id: str,
        plan: ChunkPlan,
        body: AsyncIterable[bytes],
        content_digest: Digests,
    ) -> UploadInfo:
        """Raises: as `UploadStore.write_chunk`."""
        self._writing.check(upload_id)
        info = await self._require(upload_id)
        self._writing.begin(upload_id)
        try:
            await self._take(info, plan, body, content_digest)
        finally:
            self._writing.end(upload_id)
        spec = info.spec if info.spec.size == plan.total else replace(info.spec, size=plan.total)
        self.backing.specs[upload_id] = spec
        return await self._require(upload_id)

    async def _take(
        self, info: UploadInfo, plan: ChunkPlan, body: AsyncIterable[bytes], digest: Digests
    ) -> None:
        upload_id = info.spec.upload_id
        chunk = _MemoryChunk(
            self.backing.parts[upload_id], plan, digest, lambda: self._touch(upload_id)
        )
        running = self._running.get(upload_id)
        if running is not None and running.position != info.state.offset:
            running = None
        try:
            await chunk.consume(body, running.feed if running else None)
            chunk.check()
        except BaseException:
            if chunk.written:
                self._running.pop(upload_id, None)
            chunk.settle(keep=chunk.body_failed and not digest)
            raise

    async def finalize(self, upload_id: str) -> UploadInfo:
        """Raises: as `UploadStore.finalize`."""
        self._writing.check(upload_id)
        info = await self._require(upload_id)
        if info.record is not None:
            return info
        digests = self._whole_digests(info)
        try:
            integrity.verify(info.spec.repr_digest, digests, what="repr")
        except DigestMismatch:
            self.backing.parts[upload_id].clear()
            self._running[upload_id] = RunningHash(whole_algorithms(info.spec))
            raise
        record = FileRecord(
            upload_id, info.spec.name, info.state.offset, info.spec.metadata, digests
        )
        self._publish(upload_id, record)
        return UploadInfo(info.spec, info.state, record)

    def _whole_digests(self, info: UploadInfo) -> dict[str, bytes]:
        running = self._running.get(info.spec.upload_id)
        if running is not None and running.covers(info.spec, info.state.offset):
            return running.hasher.digests()
        hasher = MultiHasher(whole_algorithms(info.spec))
        hasher.update(bytes(self.backing.parts[info.spec.upload_id]))
        return hasher.digests()

    def _publish(self, upload_id: str, record: FileRecord) -> None:
        """All at once (no await in between): publication is atomic."""
        data = bytes(self.backing.parts.pop(upload_id))
        self.backing.touched.pop(upload_id, None)
        self.backing.records[upload_id] = record
        self.backing.files[upload_id] = StoredFile(data, time.time_ns())
        self._running.pop(upload_id, None)

    async def delete(self, upload_id: str) -> None:
        self._writing.check(upload_id)
        if upload_id in self.backing.records:
            return  # completed uploads are never removed (callers refuse first)
        for table in (self.backing.specs, self.backing.parts, self.backing.touched):
            table.pop(upload_id, None)
        self._running.pop(upload_id, None)

    async def open_file(self, upload_id: str) -> PublishedFile | None:
        stored = self.backing.files.get(upload_id)
        return MemoryFile(stored) if stored is not None else None


__all__ = ["MemoryBacking", "MemoryFile", "MemoryStore", "StoredFile"]
