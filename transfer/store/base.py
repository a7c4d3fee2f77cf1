"""The store seam: small protocols between the HTTP layer and wherever bytes live.

    UploadStore      the core: uploads and their bytes, published files through `open_file`
    PublishedFile    one published file, open for reading ranges
    QuotaStore       how much the store holds for partial uploads and how much room is left
    ExpiringStore    when partial uploads last changed, for expiry and `Upload-Expires`
    ServerStore      all of the above: what `transfer serve` needs
  optional, asked with isinstance():
    CountedStore     records read and what is held in memory (`StoreCounts`), for /metrics
                     and for the conformance test that start-up does not read history
    RetainingStore   completed uploads' records by age, for `--record-ttl`
    DeferringStore   an upload's parameters durable only at the end of the request that
                     creates it (unless it published it): one creating, whole-body PUT

No path, file descriptor or other storage detail crosses the seam; a handler that
needs one is a handler that cannot run on another store. Every store passes the
conformance suite in tests/store_conformance.py, which checks the invariants below.

Invariants every `UploadStore` keeps:
- The offset is the number of bytes durably stored, nothing remembered beside them. A
  store reopened after a crash reports every acknowledged byte; bytes of a chunk that
  was never acknowledged may be counted too (they are valid bytes at their offsets and
  the whole-file digest still guards them).
- `write_chunk` returns only once the chunk's bytes are durable (fsynced, or the
  store's equivalent). A chunk that fails (digest mismatch, full disk, I/O error, body
  of the wrong length) is cut back to the old offset before any caller can see a larger
  one. The one exception: when the *body* broke off (it raised: idle timeout,
  disconnect, cancellation) and the chunk carried no `Content-Digest`, the bytes that
  arrived are kept, durably.
- A chunk that overlaps stored bytes has its stored prefix skipped (`ChunkPlan.skip`),
  never written twice; the plan comes from `transfer.core.protocol.plan_chunk`, so gaps
  never reach a store.
- `finalize` verifies the whole file against the declared `Repr-Digest`; on a mismatch
  the upload is reset to offset 0 and nothing is published. Publication is atomic:
  `open_file` answers None until `finalize` has succeeded, and afterwards the file's
  bytes are exactly the upload's. A completed upload is never changed again.
- The record's digests always include xxh3-128 and every declared algorithm; when the
  client declared none, also md5 (GCS clients read it back as `md5Hash`).
- Callers serialize the operations on one upload id (the server's per-id lock). A store
  still refuses, rather than interleaves, a `write_chunk`, `declare`, `finalize` or
  `delete` on an id while a `write_chunk` on that id is in flight: it raises
  `Conflict(Code.UPLOAD_CONFLICT)` and changes nothing.
- Nothing here blocks the event loop: file-system calls run in threads.
- Opening a store reads what is unfinished (partial uploads, interrupted publications),
  never the records of completed uploads: those are read when asked for, and whatever a
  store keeps of them in memory is bounded. `CountedStore.counts().records_read` is how
  the conformance suite checks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from transfer.core.integrity import Digests
from transfer.core.protocol import ChunkPlan
from transfer.core.records import UploadInfo, UploadSpec


class PublishedFile(Protocol):
    """A published file, open for reading. Close it (or use `async with`) when done.

    `size` and `modified_ns` are read once, when the file is opened, and describe the
    bytes `read` returns; they are the validators of `ETag` and `Last-Modified`.
    """

    @property
    def size(self) -> int: ...

    @property
    def modified_ns(self) -> int:
        """When the file was published, in nanoseconds since the epoch."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`; fewer only at the end of the file."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class UploadStore(Protocol):
    """Uploads, their bytes and their publication (see the module docstring)."""

    async def get(self, upload_id: str) -> UploadInfo | None:
        """The upload's state, or None if the store does not know the id."""
        ...

    async def create(self, spec: UploadSpec) -> UploadInfo:
        """Create an upload, or re-open an existing one with compatible parameters.

        Raises:
            Conflict: `upload_conflict` when the id exists with different parameters;
                `total_mismatch` (see `declare`).
        """
        ...

    async def declare(
        self, upload_id: str, *, size: int | None, repr_digest: Digests
    ) -> UploadInfo:
        """Record a total or a whole-file digest learned after creation.

        Raises:
            KeyError: unknown id.
            Conflict: `total_mismatch` (a different total, or one below the offset);
                nothing is saved.
        """
        ...

    async def write_chunk(
        self,
        upload_id: str,
        plan: ChunkPlan,
        body: AsyncIterable[bytes],
        content_digest: Digests,
    ) -> UploadInfo:
        """Write a chunk's body per `plan`, make it durable, and return the new state.

        Raises:
            KeyError: unknown id.
            DigestMismatch: `chunk_digest_mismatch`; nothing of the chunk is kept.
            BadRequest: `body_too_long` / `body_too_short`; nothing is kept.
            InsufficientStorage / StorageFailure: the storage refused; nothing is kept.
            Whatever `body` raises, after keeping or dropping the bytes received as the
            module docstring says.
        """
        ...

    async def finalize(self, upload_id: str) -> UploadInfo:
        """Verify the whole file against its declared digest, then publish it.

        Raises:
            KeyError: unknown id.
            DigestMismatch: `repr_digest_mismatch`; the upload is reset to offset 0.
        """
        ...

    async def delete(self, upload_id: str) -> None:
        """Abort a partial upload: its bytes and parameters are removed, and the id is
        unknown afterwards (a later `create` starts from 0). Callers delete only partial
        uploads; a published file is never removed."""
        ...

    async def open_file(self, upload_id: str) -> PublishedFile | None:
        """The published file of a completed upload, or None."""
        ...


class QuotaStore(Protocol):
    """Space accounting, for the server's quota and disk reserve checks."""

    @property
    def partial_bytes(self) -> int:
        """Bytes held by all partial uploads (completed and deleted ones count 0)."""
        ...

    def free_bytes(self) -> int:
        """Bytes the store can still take. Called on the event loop for every chunk, so
        it must be cheap (`FileStore`: one statvfs)."""
        ...


class ExpiringStore(Protocol):
    """When partial uploads last changed, so idle ones can be removed."""

    async def partials(self) -> list[tuple[str, float]]:
        """(id, last modification as a Unix timestamp) of every partial upload."""
        ...

    async def modified(self, upload_id: str) -> float | None:
        """When the upload last received bytes (or was created); None if not partial."""
        ...


class ServerStore(UploadStore, QuotaStore, ExpiringStore, Protocol):
    """Everything `transfer serve` needs from a store."""


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Sizes a store reports for /metrics; none of them is per id."""

    records_read: int  # upload records read from storage since this instance was made
    partials: int  # unfinished uploads it tracks
    cached: int  # completed uploads' records held in memory
    cache_capacity: int  # the bound on `cached` (0: no cache)


@runtime_checkable
class CountedStore(Protocol):
    def counts(self) -> StoreCounts: ...


@runtime_checkable
class RetainingStore(Protocol):
    """Completed uploads' records by age, so `--record-ttl` can remove old ones."""

    async def completed_before(self, cutoff: float) -> list[str]:
        """Ids of completed uploads published before `cutoff` (a Unix timestamp)."""
        ...

    async def completed_at(self, upload_id: str) -> float | None:
        """When the upload was published; None unless it is a completed upload."""
        ...

    async def forget_record(self, upload_id: str) -> None:
        """Remove a completed upload's record: `get` answers None afterwards, and
        `create` refuses the id (`upload_complete`: ids are never reused). The published
        file stays, and `open_file` still opens it."""
        ...


@runtime_checkable
class DeferringStore(Protocol):
    """A store that may leave an upload's parameters not durable while the request that
    creates it is running, for a request that also carries the whole body and publishes
    (the record holds every parameter; nothing was acknowledged before it)."""

    def deferred(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        """A scope in which `create` of `upload_id` may leave its parameters not durable.
        When the scope ends, the upload is published or its parameters are durable; the
        caller holds the id's lock throughout and answers nothing about the upload
        before the scope has ended."""
        ...


__all__ = [
    "CountedStore",
    "DeferringStore",
    "ExpiringStore",
    "PublishedFile",
    "QuotaStore",
    "RetainingStore",
    "ServerStore",
    "StoreCounts",
    "UploadStore",
]
