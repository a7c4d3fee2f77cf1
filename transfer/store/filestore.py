"""`FileStore`: the `ServerStore` on a local file system (layout in `layout.py`).

Invariants (beyond the seam's, in `base.py`):
- Memory does not grow with history. Unfinished uploads are tracked (their offsets, for
  the quota, from start-up on; their state once touched): they are what is unfinished.
  Completed uploads' records sit in an LRU of `cache_size` entries (`--cache-size`),
  read from `records/` on a miss. A record never changes once written, so a cached one
  is never stale; the two ways an id stops existing (`delete` of a partial upload,
  `forget_record` for `--record-ttl`) drop it from every table first.
- The offset is the `.part` file's length on disk, read at first use; afterwards this
  process is its only writer, so the cached number always equals the disk. A load that
  raced with a change (another request cached the id, or a delete happened meanwhile)
  yields to what the change left.
- Bytes are fsynced before `write_chunk` returns. A failed chunk is cut back to the old
  offset before anyone sees a larger one, except when the body broke off and the chunk
  carried no `Content-Digest`: then the received bytes are kept, fsynced. That clean-up
  runs shielded, so a second cancellation cannot leave the cache and the disk apart.
- Blocking writes go to the page cache on the event loop (cheap); every other file-system
  call (reads of `.json`, stat, open, fsync, truncate, rename, unlink, hashing) runs in a
  thread so it never stalls other requests. `open` (start-up) is the exception. Steps
  that always follow each other share a thread hop (read and create; publish).
- Deferred parameters (`deferred`, a `DeferringStore`): an upload created inside the
  scope is provisional: no `.json` yet (its parameters are in memory), its `.part` open
  for the first chunk. When the scope ends its `.json` is written durably, unless the
  upload was published (its record holds every parameter); outside a scope `get`
  (every other method reads through it) does that first, so no other path can hand
  out a provisional state.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from transfer.core import integrity
from transfer.core.errors import DigestMismatch
from transfer.core.integrity import Digests
from transfer.core.protocol import ChunkPlan, UploadState
from transfer.core.records import FileRecord, UploadInfo, UploadSpec, check_same, declared
from transfer.core.tenancy import SEPARATOR
from transfer.store.base import PublishedFile, StoreCounts
from transfer.store.chunkwriter import ChunkWriter, StagingPool
from transfer.store.layout import DiskLayout
from transfer.store.lru import LRU
from transfer.store.provisional import Provisional, close_created
from transfer.store.shared import InFlight, RunningHash, whole_algorithms

DEFAULT_CACHE_SIZE = 10_000  # completed records kept in memory: about 10 MiB


class FileStore:
    """`ServerStore` on a local file system (see `layout.py` for the files); also a
    `CountedStore` and a `RetainingStore`."""

    def __init__(
        self, data_dir: Path, *, durable: bool = True, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self._disk = DiskLayout(data_dir, durable=durable)
        self.uploads_dir = self._disk.uploads_dir
        self.files_dir = self._disk.files_dir
        self.records_dir = self._disk.records.root
        self._durable = durable
        self._open: dict[str, UploadInfo] = {}  # unfinished uploads touched since start
        self._done: LRU[str, UploadInfo] = LRU(cache_size)  # completed ones, bounded
        self._partial: dict[str, int] = {}  # offsets of unfinished uploads, for the quota
        self.migrated = 0  # flat-layout records moved into records/ by `open`
        self.discarded = 0  # uploads never acknowledged that `open` removed
        self.partial_bytes = 0
        self._running: dict[str, RunningHash] = {}
        self._deletions = 0  # bumped by every delete, so a racing load knows to re-read
        self._writing = InFlight()
        self._cleanups: set[asyncio.Future[None]] = set()
        self._scopes: set[str] = set()  # ids inside `deferred`
        self._provisional: dict[str, Provisional] = {}
        self._absent: set[str] = set()  # ids of a scope that `get` found nowhere on disk
        self._pool = StagingPool()  # large chunks' direct-write buffers, reused

    def open(self) -> list[str]:
        """Create the layout, finish interrupted publications and migrate a flat layout
        (`migrated` counts it); returns the ids whose publication was finished. Reads
        `uploads/` only: the unfinished set, never the records of history."""
        found = self._disk.recover()
        self._partial = found.sizes
        self.partial_bytes = sum(found.sizes.values())
        self.migrated = found.migrated
        self.discarded = len(found.discarded)
        return found.recovered

    def counts(self) -> StoreCounts:
        return StoreCounts(
            records_read=self._disk.reads,
            partials=len(self._partial),
            cached=len(self._done),
            cache_capacity=self._done.capacity,
        )

    def _cached(self, upload_id: str) -> UploadInfo | None:
        return self._open.get(upload_id) or self._done.get(upload_id)

    def _remember(self, info: UploadInfo) -> None:
        """Cache `info` and keep the partial-bytes total in step with it."""
        upload_id = info.spec.upload_id
        if info.record is not None:
            self._open.pop(upload_id, None)
            self.partial_bytes -= self._partial.pop(upload_id, 0)
            self._done.put(upload_id, info)
            return
        self._open[upload_id] = info
        self.partial_bytes += info.state.offset - self._partial.get(upload_id, 0)
        self._partial[upload_id] = info.state.offset

    # --- QuotaStore and ExpiringStore -------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.uploads_dir).free

    def partial_bytes_of(self, tenant: str) -> int:
        """One tenant's share of `partial_bytes` (a pass over the unfinished uploads)."""
        prefix = tenant + SEPARATOR
        return sum(n for key, n in self._partial.items() if key.startswith(prefix))

    async def partials(self) -> list[tuple[str, float]]:
        return await asyncio.to_thread(self._disk.partials)

    async def modified(self, upload_id: str) -> float | None:
        return await asyncio.to_thread(self._disk.modified, upload_id)

    # --- UploadStore --------------------------------------------------------------------

    async def get(self, upload_id: str) -> UploadInfo | None:
        if upload_id in self._provisional and upload_id not in self._scopes:
            await self._shielded(self._settle(upload_id))  # a scope that could not
        while (cached := self._cached(upload_id)) is None:
            deletions = self._deletions
            info = await asyncio.to_thread(self._disk.read, upload_id)
            if self._cached(upload_id) is not None:
                continue  # cached meanwhile, by a load or a change: that is newer
            if deletions != self._deletions:
                continue  # a delete ran meanwhile: what we read may be gone
            if info is not None:
                self._remember(info)
            elif upload_id in self._scopes:
                self._absent.add(upload_id)  # under the caller's lock: `create` need not look
            return info  # not `cached`: with --cache-size 0 a record is never cached
        return cached

    async def create(self, spec: UploadSpec) -> UploadInfo:
        """Inside `deferred(spec.upload_id)`, a new upload is provisional."""
        upload_id = spec.upload_id
        cached = self._cached(upload_id) is not None
        existing = await (self.get(upload_id) if cached else self._read_or_create(spec))
        if existing is not None:
            check_same(existing.spec, spec)
            return await self.declare(upload_id, size=spec.size, repr_digest=spec.repr_digest)
        info = UploadInfo(spec, UploadState(0, spec.size))
        self._remember(info)
        self._running[upload_id] = RunningHash(whole_algorithms(spec))
        return info

    async def _read_or_create(self, spec: UploadSpec) -> UploadInfo | None:
        """The upload the disk has (cached), or None once it is created: one hop."""
        upload_id, deletions = spec.upload_id, self._deletions
        provisional, absent = upload_id in self._scopes, upload_id in self._absent
        self._absent.discard(upload_id)
        step = self._disk.read_or_create
        call = asyncio.ensure_future(
            asyncio.to_thread(step, spec, provisional=provisional, known_absent=absent)
        )
        try:
            found, fd = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(close_created)  # an orphan `.part`: removed at start
            raise
        if fd is not None:
            self._provisional[upload_id] = Provisional(spec, fd)
        if found is not None and self._cached(upload_id) is None and deletions == self._deletions:
            self._remember(found)
        return found

    @contextlib.asynccontextmanager
    async def deferred(self, upload_id: str) -> AsyncIterator[None]:
        """`create` of `upload_id` is provisional inside (module docstring); the caller
        holds the id's lock throughout and answers nothing about it before the end."""
        self._scopes.add(upload_id)
        try:
            yield
        finally:
            self._scopes.discard(upload_id)
            self._absent.discard(upload_id)
            if upload_id in self._provisional:
                await self._shielded(self._settle(upload_id))

    async def _settle(self, upload_id: str) -> None:
        """Write a provisional upload's `.json` durably (if that fails, it stays so)."""
        if (entry := self._provisional.get(upload_id)) is None:
            return  # settled meanwhile
        entry.close()
        await asyncio.to_thread(self._disk.save_spec, entry.spec)
        self._provisional.pop(upload_id, None)

    def _drop_provisional(self, upload_id: str) -> None:
        if (entry := self._provisional.pop(upload_id, None)) is not None:
            entry.close()

    async def declare(
        self, upload_id: str, *, size: int | None, repr_digest: Digests
    ) -> UploadInfo:
        """Record a total or a whole-file digest learned after creation."""
        self._writing.check(upload_id)
        info = await self._require(upload_id)
        new = declared(info, size, repr_digest)
        if new is None:
            return info
        if info.record is None:
            await asyncio.to_thread(self._disk.save_spec, new.spec)
            self._drop_provisional(upload_id)  # durable now, and newer than its spec
        info = new
        self._remember(info)
        return info

    async def _require(self, upload_id: str) -> UploadInfo:
        info = await self.get(upload_id)
        if info is None:
            raise KeyError(upload_id)
        return info

    async def write_chunk(
        self,
        upload_id: str,
        plan: ChunkPlan,
        body: AsyncIterable[bytes],
        content_digest: Digests,
    ) -> UploadInfo:
        """Write a chunk's body per `plan`, fsync it, and return the new state.

        Raises: as `UploadStore.write_chunk`.
        """
        self._writing.check(upload_id)
        info = await self._require(upload_id)
        writer = await self._open_writer(info, plan, content_digest)
        try:
            await self._fill(writer, info, body)
        except BaseException:
            keep = writer.body_failed and not content_digest
            await self._shielded(self._abandon(writer, info, keep))
            raise
        await self._release(writer, upload_id)
        return self._advanced(info, plan, writer.written)

    async def _open_writer(
        self, info: UploadInfo, plan: ChunkPlan, content_digest: Digests
    ) -> ChunkWriter:
        """A writer at the upload's offset; the id is in flight until `_release`."""
        upload_id = info.spec.upload_id
        self._writing.begin(upload_id)
        entry = self._provisional.get(upload_id)
        if entry is not None and entry.fd is not None and info.state.offset == 0:
            fd, entry.fd = entry.fd, None  # the creation's descriptor, at 0: no second open
            return ChunkWriter(fd, 0, plan, content_digest, durable=self._durable, pool=self._pool)
        try:
            return await ChunkWriter.open(
                self._disk.part(upload_id),
                info.state.offset,
                plan,
                content_digest,
                durable=self._durable,
                pool=self._pool,
            )
        except BaseException:
            self._writing.end(upload_id)
            raise

    async def _release(self, writer: ChunkWriter, upload_id: str) -> None:
        try:
            await writer.close()
        finally:
            self._writing.end(upload_id)

    async def _shielded(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run `cleanup` to its end even if the caller is cancelled meanwhile (the
        cancellation still propagates); the task is kept referenced until it ends."""
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def _fill(
        self, writer: ChunkWriter, info: UploadInfo, body: AsyncIterable[bytes]
    ) -> None:
        """Write the body, check it, make it durable; the writer stays open."""
        running = self._running.get(info.spec.upload_id)
        if running is not None and running.position != info.state.offset:
            running = None
        await writer.consume(body, running.feed if running else None)
        writer.check()
        await writer.sync()

    async def _abandon(self, writer: ChunkWriter, info: UploadInfo, keep: bool) -> None:
        """After a failed chunk: settle the bytes, close, and cache what the disk holds;
        only then may the next write begin."""
        upload_id = info.spec.upload_id
        if writer.written:
            self._running.pop(upload_id, None)
        try:
            kept = await writer.settle(keep=keep)
            self._remember(replace(info, state=UploadState(kept, writer.plan.total)))
        finally:
            await self._release(writer, upload_id)

    def _advanced(self, info: UploadInfo, plan: ChunkPlan, written: int) -> UploadInfo:
        state = UploadState(info.state.offset + written, plan.total)
        spec = info.spec if info.spec.size == plan.total else replace(info.spec, size=plan.total)
        new = replace(info, spec=spec, state=state)
        self._remember(new)
        return new

    async def finalize(self, upload_id: str) -> UploadInfo:
        """Verify the whole file against its declared digest, then publish it.

        Raises:
            DigestMismatch: `repr_digest_mismatch`; the upload is reset to offset 0.
        """
        self._writing.check(upload_id)
        info = await self._require(upload_id)
        if info.record is not None:
            return info
        digests = await self._whole_digests(info)
        try:
            integrity.verify(info.spec.repr_digest, digests, what="repr")
        except DigestMismatch:
            await asyncio.to_thread(self._disk.reset, upload_id)
            self._remember(replace(info, state=UploadState(0, info.spec.size)))
            self._running[upload_id] = RunningHash(whole_algorithms(info.spec))
            raise
        record = FileRecord(
            upload_id, info.spec.name, info.state.offset, info.spec.metadata, digests
        )
        await asyncio.to_thread(self._disk.publish, info.spec, record)
        self._drop_provisional(upload_id)  # the record holds every parameter
        self._running.pop(upload_id, None)
        done = UploadInfo(info.spec, info.state, record)
        self._remember(done)
        return done

    async def _whole_digests(self, info: UploadInfo) -> dict[str, bytes]:
        running = self._running.get(info.spec.upload_id)
        if running is not None and running.covers(info.spec, info.state.offset):
            return running.hasher.digests()
        algorithms = whole_algorithms(info.spec)
        return await asyncio.to_thread(self._disk.hash_part, info.spec.upload_id, algorithms)

    async def delete(self, upload_id: str) -> None:
        """Abort a partial upload: its bytes and parameters are removed."""
        self._writing.check(upload_id)
        self._forget(upload_id)
        await asyncio.to_thread(self._disk.remove, upload_id)
        self._forget(upload_id)  # in case a racing load cached it before the unlink

    def _forget(self, upload_id: str) -> None:
        self._deletions += 1
        self._absent.discard(upload_id)
        self._drop_provisional(upload_id)
        self._open.pop(upload_id, None)
        self._done.pop(upload_id)
        self.partial_bytes -= self._partial.pop(upload_id, 0)
        self._running.pop(upload_id, None)

    # --- RetainingStore (--record-ttl) ----------------------------------------------------

    async def completed_before(self, cutoff: float) -> list[str]:
        return await asyncio.to_thread(self._disk.records.older_than, cutoff)

    async def completed_at(self, upload_id: str) -> float | None:
        return await asyncio.to_thread(self._disk.records.modified, upload_id)

    async def forget_record(self, upload_id: str) -> None:
        """Remove the record only; `files/{id}` stays (that path is a contract)."""
        self._forget(upload_id)
        await asyncio.to_thread(self._disk.records.remove, upload_id)
        self._forget(upload_id)  # in case a racing load cached it before the unlink

    async def open_file(self, upload_id: str) -> PublishedFile | None:
        return await asyncio.to_thread(self._disk.open_published, upload_id)


__all__ = ["FileRecord", "FileStore", "UploadInfo", "UploadSpec"]
