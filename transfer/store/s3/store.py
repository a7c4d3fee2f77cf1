"""`S3Store`: the `ServerStore` with bytes in S3 and records in PostgreSQL (docs/scaling.md).

Invariants (beyond the seam's, in `base.py`):
- The offset is the row's `stored`, which always equals the bytes of the committed parts
  and the tail object the row names; both were acknowledged by S3 before the row named
  them, and `write_chunk` returns after the row's commit. So an acknowledgement means
  durable in S3 and committed in PostgreSQL.
- Every mutation holds the upload's PostgreSQL lock (any replica) and, within this
  process, `InFlight`; a second writer is refused (`upload_conflict`). A chunk planned
  against an offset that another replica has moved since (`get` here said N, the row now
  says M) is refused with `offset_mismatch` naming M, and nothing is written. The commit
  itself is a compare-and-set on the old offset.
- The whole-file digest comes from the running hash when this process fed every byte;
  otherwise (a fail-over, a restart) it is recomputed by reading the bytes back from S3.
  With no part, the tail is read and verified before `files/{id}` is written; with parts,
  the multipart upload is completed first (S3 cannot read parts back) and read back, and
  on a mismatch the object is deleted before the offset is reset. Publication, for
  `open_file`, is the row's record: the API never serves an object without one.
- `partial_bytes` (and `partial_bytes_of(tenant)`, the same sum over the tenant's
  `{tenant}~{id}` rows) is the cluster-wide sum of partial offsets as of this process's
  last change or listing (it is synchronous and cannot ask the database), so
  `--max-partial` and `--tenant-max-partial` hold across replicas up to what the others
  wrote since.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import structlog

from transfer.core import integrity
from transfer.core.errors import Code, Conflict, DigestMismatch
from transfer.core.events import Event
from transfer.core.integrity import Digests, MultiHasher
from transfer.core.protocol import ChunkPlan, UploadState
from transfer.core.records import FileRecord, UploadInfo, UploadSpec, check_same, declared
from transfer.store.base import PublishedFile, StoreCounts
from transfer.store.s3.failures import run_to_end
from transfer.store.s3.intake import PART_MIN, S3Chunk
from transfer.store.s3.objects import Objects, S3File, error_code
from transfer.store.s3.records import Layout, Records, Row
from transfer.store.shared import InFlight, RunningHash, whole_algorithms

log = structlog.get_logger("transfer.store.s3")
T = TypeVar("T")
READ_BACK = 8 * 1024 * 1024  # bytes per ranged GET when a file is hashed from S3
UNBOUNDED = 2**62  # object stores report no free space: the quota is --max-partial


@dataclass(slots=True)
class S3Backend:
    """The open connections a process shares among its stores, and what it last knew of
    the cluster's partial bytes. `close` ends both clients."""

    objects: Objects
    records: Records
    exits: AsyncExitStack
    partial_bytes: int = 0
    partials: int = 0
    tenant_bytes: dict[str, int] = field(default_factory=dict)  # partial bytes by tenant

    async def refresh(self) -> None:
        self.partials, self.partial_bytes, self.tenant_bytes = await self.records.partial_totals()

    async def close(self) -> None:
        await self.exits.aclose()


class S3Store:
    """`ServerStore` over an `S3Backend`; a new `S3Store` on a backend is a restart."""

    def __init__(
        self,
        backend: S3Backend,
        *,
        part_min: int = PART_MIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._objects = backend.objects
        self._db = backend.records
        self._part_min = part_min
        self._clock = clock
        self._running: dict[str, RunningHash] = {}
        self._seen: dict[str, int] = {}  # the offset `get` last answered: what callers plan on
        self._writing = InFlight()
        self._rows_read = 0

    # --- QuotaStore and ExpiringStore -------------------------------------------------

    @property
    def partial_bytes(self) -> int:
        return self._backend.partial_bytes

    def partial_bytes_of(self, tenant: str) -> int:
        """`TenantQuotaStore`: one tenant's share of `partial_bytes`, as fresh as it."""
        return self._backend.tenant_bytes.get(tenant, 0)

    def counts(self) -> StoreCounts:
        """`CountedStore`: nothing is read at start-up and no record is cached (every
        `get` is one row from PostgreSQL, which has the cache)."""
        return StoreCounts(self._rows_read, self._backend.partials, 0, 0)

    def free_bytes(self) -> int:
        return UNBOUNDED - self._backend.partial_bytes

    async def partials(self) -> list[tuple[str, float]]:
        await self._backend.refresh()  # the sweep's listing also refreshes the cluster view
        return await self._db.partials()

    async def modified(self, upload_id: str) -> float | None:
        row = await self._db.get(upload_id)
        return row.modified if row is not None and row.record is None else None

    # --- UploadStore --------------------------------------------------------------------

    def _info(self, row: Row) -> UploadInfo:
        if row.record is not None:
            size = row.record.size
            return UploadInfo(row.spec, UploadState(size, size), row.record)
        self._seen[row.spec.upload_id] = row.stored
        return UploadInfo(row.spec, UploadState(row.stored, row.spec.size))

    async def get(self, upload_id: str) -> UploadInfo | None:
        row = await self._read(upload_id)
        return None if row is None else self._info(row)

    async def _read(self, upload_id: str) -> Row | None:
        """The upload's row; None for an unknown id or a forgotten record."""
        self._rows_read += 1
        row = await self._db.get(upload_id)
        return None if row is None or row.forgotten else row

    async def _row(self, upload_id: str) -> Row:
        row = await self._read(upload_id)
        if row is None:
            raise KeyError(upload_id)
        return row

    async def create(self, spec: UploadSpec) -> UploadInfo:
        if await self._db.insert(spec, self._clock()):
            await self._backend.refresh()
            self._running[spec.upload_id] = RunningHash(whole_algorithms(spec))
            self._seen[spec.upload_id] = 0
            return UploadInfo(spec, UploadState(0, spec.size))
        row = await self._db.get(spec.upload_id)
        if row is not None and row.forgotten:  # ids are never reused
            raise Conflict(Code.UPLOAD_COMPLETE, f"upload {spec.upload_id} is complete")
        existing = self._info(await self._row(spec.upload_id))
        check_same(existing.spec, spec)
        return await self.declare(spec.upload_id, size=spec.size, repr_digest=spec.repr_digest)

    async def declare(
        self, upload_id: str, *, size: int | None, repr_digest: Digests
    ) -> UploadInfo:
        self._writing.check(upload_id)
        async with self._db.hold(upload_id) as conn:
            info = self._info(await self._row(upload_id))
            new = declared(info, size, repr_digest)
            if new is None:
                return info
            if info.record is None:
                await self._db.save_spec(conn, new.spec)
            return new

    async def write_chunk(
        self,
        upload_id: str,
        plan: ChunkPlan,
        body: AsyncIterable[bytes],
        content_digest: Digests,
    ) -> UploadInfo:
        """Raises: as `UploadStore.write_chunk`; `Conflict(offset_mismatch)` when another
        replica moved the offset since `get` answered."""
        self._writing.check(upload_id)
        planned_on = self._seen.get(upload_id)
        self._writing.begin(upload_id)
        try:
            async with self._db.hold(upload_id) as conn:
                row = await self._row(upload_id)
                self._check_current(row, planned_on)
                await self._take(conn, row, plan, body, content_digest)
        except BaseException:
            self._seen.pop(upload_id, None)
            raise
        finally:
            self._writing.end(upload_id)
            await self._backend.refresh()
        return self._info(await self._row(upload_id))

    def _check_current(self, row: Row, planned_on: int | None) -> None:
        """Raises: Conflict when the row is published, or moved since the caller planned."""
        if row.record is not None:
            raise Conflict(Code.UPLOAD_COMPLETE, f"upload {row.spec.upload_id} is complete")
        if planned_on is not None and planned_on != row.stored:
            raise Conflict(
                Code.OFFSET_MISMATCH,
                f"the chunk was planned at offset {planned_on}, but another request has "
                f"moved upload {row.spec.upload_id} to offset {row.stored}",
            )

    async def _take(
        self, conn: Any, row: Row, plan: ChunkPlan, body: AsyncIterable[bytes], digest: Digests
    ) -> None:
        upload_id = row.spec.upload_id
        tail = await self._objects.get(row.layout.tail) if row.layout.tail else b""
        chunk = S3Chunk(
            self._objects,
            upload_id,
            old=row.layout,
            tail=tail,
            plan=plan,
            digest=digest,
            part_min=self._part_min,
        )
        running = self._running.get(upload_id)
        if running is not None and running.position != row.stored:
            running = None
        try:
            await chunk.consume(chunk.pumped(body), running.feed if running else None)
            chunk.check()
        except BaseException:
            self._running.pop(upload_id, None)
            if chunk.body_failed and not chunk.storage_failed and not digest and chunk.written:
                await run_to_end(self._commit(conn, row, chunk))  # keep what arrived
            else:
                await run_to_end(chunk.discard())
            raise
        try:
            await self._commit(conn, row, chunk)
        except BaseException:
            self._running.pop(upload_id, None)
            raise

    async def _commit(self, conn: Any, row: Row, chunk: S3Chunk) -> None:
        """Store the rest of the chunk, then compare-and-set the row.

        Raises: StorageFailure; Conflict (`offset_mismatch`) if the row moved meanwhile.
        """
        offset = row.stored + chunk.written
        try:
            layout = await chunk.settle(offset)
            spec = row.spec
            if chunk.plan.total != spec.size:
                spec = replace(spec, size=chunk.plan.total)
            moved = not await self._db.advance(conn, spec, row.stored, layout, self._clock())
        except BaseException:
            await chunk.discard()
            raise
        if moved:  # only if a lock was lost: the row is someone else's now
            await chunk.discard()
            raise Conflict(Code.OFFSET_MISMATCH, f"upload {spec.upload_id} moved meanwhile")
        if layout.tail != row.layout.tail:
            await self._objects.discard(row.layout.tail)

    async def finalize(self, upload_id: str) -> UploadInfo:
        """Raises: as `UploadStore.finalize`."""
        self._writing.check(upload_id)
        async with self._db.hold(upload_id) as conn:
            row = await self._row(upload_id)
            if row.record is not None:
                return self._info(row)
            digests = await self._publish_verified(conn, row)
            record = FileRecord(upload_id, row.spec.name, row.stored, row.spec.metadata, digests)
            if not await self._db.publish(conn, record, row.stored, time.time_ns()):
                raise Conflict(Code.OFFSET_MISMATCH, f"upload {upload_id} moved meanwhile")
        self._running.pop(upload_id, None)
        await self._objects.discard(row.layout.tail)
        await self._backend.refresh()
        return UploadInfo(row.spec, UploadState(row.stored, row.stored), record)

    async def _publish_verified(self, conn: Any, row: Row) -> dict[str, bytes]:
        """Write `files/{id}` and return the verified digests; on a mismatch, nothing
        stays at `files/{id}` and the upload is reset to offset 0.

        Raises: DigestMismatch (`repr_digest_mismatch`), StorageFailure.
        """
        running = self._running.get(row.spec.upload_id)
        digests = None
        if running is not None and running.covers(row.spec, row.stored):
            digests = running.hasher.digests()
            await self._verify(conn, row, digests, completed=False)
        if not row.layout.parts:
            tail = await self._objects.get(row.layout.tail) if row.layout.tail else b""
            if digests is None:
                digests = self._hashed(row.spec, tail)
                await self._verify(conn, row, digests, completed=False)
            await self._objects.put(self._objects.file_key(row.spec.upload_id), tail)
            return digests
        await self._complete(row)
        if digests is None:
            digests = await self._read_back(row)
            await self._verify(conn, row, digests, completed=True)
        return digests

    async def _complete(self, row: Row) -> None:
        """Complete the multipart upload with the tail as its last part (the last part
        may be small). One completed before a crash is taken as it is."""
        layout, upload_id = row.layout, row.spec.upload_id
        assert layout.mpu is not None  # parts exist only in a multipart upload
        parts = [(p.number, p.etag) for p in layout.parts]
        if layout.tail:
            data = await self._objects.get(layout.tail)
            number = len(parts) + 1
            etag = await self._objects.put_part(upload_id, layout.mpu, number, data)
            parts.append((number, etag))
        try:
            await self._objects.complete(upload_id, layout.mpu, parts)
        except Exception as exc:
            gone = error_code(exc.__cause__ or exc) == "NoSuchUpload"
            head = await self._objects.head(self._objects.file_key(upload_id)) if gone else None
            if head is None or head[0] != row.stored:
                raise

    def _hashed(self, spec: UploadSpec, data: bytes) -> dict[str, bytes]:
        hasher = MultiHasher(whole_algorithms(spec))
        hasher.update(data)
        return hasher.digests()

    async def _read_back(self, row: Row) -> dict[str, bytes]:
        """The whole-file digests of `files/{id}`, read back from S3 (after a fail-over)."""
        hasher = MultiHasher(whole_algorithms(row.spec))
        key = self._objects.file_key(row.spec.upload_id)
        for start in range(0, row.stored, READ_BACK):
            hasher.update(await self._objects.get(key, start, min(READ_BACK, row.stored - start)))
        log.info(Event.STORE_REHASHED, upload_id=row.spec.upload_id, size=row.stored)
        return hasher.digests()

    async def _verify(self, conn: Any, row: Row, digests: Digests, *, completed: bool) -> None:
        """Raises: DigestMismatch after resetting the upload (and removing the object)."""
        try:
            integrity.verify(row.spec.repr_digest, digests, what="repr")
        except DigestMismatch:
            await run_to_end(self._reset(conn, row, completed=completed))
            raise

    async def _reset(self, conn: Any, row: Row, *, completed: bool) -> None:
        upload_id = row.spec.upload_id
        if completed:
            await self._objects.delete(self._objects.file_key(upload_id))
        await self._db.advance(conn, row.spec, row.stored, Layout(), self._clock())
        self._running[upload_id] = RunningHash(whole_algorithms(row.spec))
        self._seen[upload_id] = 0
        await self._backend.refresh()
        if not completed:
            await self._objects.discard_upload(upload_id, row.layout.mpu)
        await self._objects.discard(row.layout.tail)

    async def delete(self, upload_id: str) -> None:
        self._writing.check(upload_id)
        async with self._db.hold(upload_id) as conn:
            row = await self._db.get(upload_id)
            if row is None or row.record is not None:
                return  # completed uploads are never removed (callers refuse first)
            await self._db.remove(conn, upload_id)
        self._running.pop(upload_id, None)
        self._seen.pop(upload_id, None)
        await self._backend.refresh()
        await self._objects.discard_upload(upload_id, row.layout.mpu)
        await self._objects.discard(row.layout.tail)

    # --- RetainingStore (--record-ttl) ----------------------------------------------------

    async def completed_before(self, cutoff: float) -> list[str]:
        return await self._db.completed_before(int(cutoff * 1e9))

    async def completed_at(self, upload_id: str) -> float | None:
        row = await self._read(upload_id)
        if row is None or row.record is None or row.published_ns is None:
            return None
        return row.published_ns / 1e9

    async def forget_record(self, upload_id: str) -> None:
        """The row stays, marked: `get` answers None, `create` refuses the id, and
        `files/{id}` is still served."""
        await self._db.forget(upload_id)

    async def open_file(self, upload_id: str) -> PublishedFile | None:
        row = await self._db.get(upload_id)
        if row is None or row.record is None:
            return None
        key = self._objects.file_key(upload_id)
        if await self._objects.head(key) is None:  # before any header: S3 away is a 503
            return None
        return S3File(self._objects, key, row.record.size, row.published_ns or 0)


__all__ = ["S3Backend", "S3Store"]
