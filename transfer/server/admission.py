"""Admission: who may hold an upload, receive a body, or take disk space, right now.

Handlers ask; they never edit a counter:
- `async with admission.upload(upload_id)`: the upload's lock. Every request on one id
  runs under it, so two PUTs never interleave bytes.
- `async with admission.receiving(n)`: one of `max_active` slots for a chunk body plus a
  claim on `n` bytes of space, both released when the block ends, however it ends
  (refusal, error, cancellation).
- `admission.check_new(size)`: may an upload of `size` bytes be created?

Invariants:
- At most `max_active` bodies are received at once; past that, 503 `too_many_uploads`
  with `Retry-After`. The `transfer_uploads_active` gauge always equals the count.
- Space is claimed before a byte is written. The quota (`max_partial`) and the disk
  reserve are checked against the bytes partial uploads hold plus the bytes of every
  chunk being received (`claimed`): otherwise concurrent chunks would each pass the
  check against the same free space, overdrawn by up to max_active * max_chunk.
  Conservative: a chunk's bytes already on disk count twice against the reserve until
  it ends.
- A refusal takes nothing: no slot, no claim.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from transfer.common.metrics import Metrics
from transfer.core.errors import Code, InsufficientStorage, ServiceUnavailable
from transfer.server.locks import KeyedLocks
from transfer.store.base import QuotaStore

ACTIVE_GAUGE = "transfer_uploads_active"


@dataclass(frozen=True, slots=True)
class Limits:
    max_active: int  # chunk bodies received at once
    max_partial: int  # bytes of all partial uploads together
    reserve: int  # free disk space never handed to uploads
    retry_after: int  # seconds, for a 503


class Admission:
    def __init__(self, store: QuotaStore, limits: Limits, metrics: Metrics) -> None:
        self._store, self._limits, self._metrics = store, limits, metrics
        self.locks = KeyedLocks()  # also held by the expiry sweep
        self._active = 0
        self._claimed = 0

    @property
    def active(self) -> int:
        """Chunk bodies being received now."""
        return self._active

    @property
    def claimed(self) -> int:
        """Bytes claimed by the chunks being received now."""
        return self._claimed

    def upload(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        """The upload's lock: requests on one id run one at a time, in arrival order."""
        return self.locks.hold(upload_id)

    def check_new(self, size: int) -> None:
        """Raises `InsufficientStorage` (507) if an upload of `size` would not fit."""
        self._check_space(size)

    @asynccontextmanager
    async def receiving(self, n_bytes: int) -> AsyncIterator[None]:
        """A slot and a claim on `n_bytes` for the block.

        Raises:
            ServiceUnavailable: `too_many_uploads` (with `Retry-After`), all slots taken.
            InsufficientStorage: `partial_quota_exceeded` or `insufficient_storage`.
        """
        self._take_slot()
        try:
            self._check_space(n_bytes)
            self._claimed += n_bytes
            try:
                yield
            finally:
                self._claimed -= n_bytes
        finally:
            self._set_active(self._active - 1)

    def _take_slot(self) -> None:
        if self._active >= self._limits.max_active:
            raise ServiceUnavailable(
                Code.TOO_MANY_UPLOADS,
                f"{self._active} uploads are in progress; try again shortly",
                headers={"Retry-After": str(self._limits.retry_after)},
            )
        self._set_active(self._active + 1)

    def _set_active(self, active: int) -> None:
        self._active = active
        self._metrics.set(ACTIVE_GAUGE, active)

    def _check_space(self, incoming: int) -> None:
        """507 before a byte is written when the quota or the disk's reserve would be hit."""
        incoming += self._claimed
        limits = self._limits
        if self._store.partial_bytes + incoming > limits.max_partial:
            raise InsufficientStorage(
                Code.PARTIAL_QUOTA_EXCEEDED,
                f"partial uploads are limited to {limits.max_partial} bytes",
            )
        if self._store.free_bytes() - incoming < limits.reserve:
            raise InsufficientStorage(Code.INSUFFICIENT_STORAGE, "not enough disk space")
