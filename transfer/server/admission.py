"""Admission: who may hold an upload, receive a body, or take disk space, right now.

Handlers ask; they never edit a counter:
- `async with admission.upload(key)`: the upload's lock. Every request on one store
  key runs under it, so two PUTs never interleave bytes.
- `async with admission.receiving(n, key) as slot`: one of `max_active` slots for a chunk
  body plus a claim on `n` bytes of space, both released when the block ends, however it
  ends (refusal, error, cancellation). The body reader reports its progress to the
  `Slot` and says how to cut it (`body.request_body`).
- `admission.check_new(size, key)`: may an upload of `size` bytes be created?

Invariants:
- At most `max_active` bodies are received at once, and at most `tenant_max_active` of
  one tenant's (its share, `--tenant-max-active`); past that, 503 `too_many_uploads` or
  429 `tenant_too_many_uploads`, both with `Retry-After`. The `transfer_uploads_active`
  gauge always equals the count.
- Stalled bodies give way: when a body finds no slot, the slowest body that has stayed
  below `min_rate` for longer than `stall_grace` (of the same tenant when the tenant's
  share is what is full; else of the tenant holding most slots) is cut (408
  `body_preempted`, its acknowledged bytes kept) and its slot handed over at once. A cut
  body stops counting as it is cut: its request is only finishing. Bodies that have
  ended, or whose reader cannot be cut, are never chosen.
- Space is claimed before a byte is written. The quota (`max_partial`, and a tenant's
  `tenant_max_partial`) and the disk reserve are checked against the bytes partial
  uploads hold plus the bytes of every chunk being received (`claimed`): otherwise
  concurrent chunks would each pass the check against the same free space, overdrawn by
  up to max_active * max_chunk. Conservative: a chunk's bytes already on disk count
  twice until it ends. A store without per-tenant accounting (`TenantQuotaStore`) is
  held to the global quota only.
- A refusal takes nothing: no slot, no claim.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from transfer.common.metrics import Metrics
from transfer.core.errors import Code, InsufficientStorage, ProtocolError, ServiceUnavailable
from transfer.core.tenancy import tenant_of
from transfer.server.locks import KeyedLocks
from transfer.store.base import QuotaStore

ACTIVE_GAUGE = "transfer_uploads_active"
PREEMPTED = "transfer_uploads_preempted_total"


@dataclass(frozen=True, slots=True)
class Limits:
    max_active: int  # chunk bodies received at once
    max_partial: int  # bytes of all partial uploads together
    reserve: int  # free disk space never handed to uploads
    retry_after: int  # seconds, for a 503 or 429
    tenant_max_active: int | None = None  # one tenant's bodies at once; None: no share
    tenant_max_partial: int | None = None  # one tenant's partial bytes; None: no cap
    min_rate: int = 1024  # bytes/s under which a body may be cut when slots are short
    stall_grace: float = 2.0  # seconds a body may stay under min_rate before that


@runtime_checkable
class TenantQuotaStore(Protocol):
    """A store that can tell one tenant's partial bytes (`FileStore`, `MemoryStore`, `S3Store`)."""

    def partial_bytes_of(self, tenant: str) -> int: ...


class Slot:
    """One body being received: whose, how far it got, and how to cut it."""

    def __init__(self, tenant: str | None, started: float) -> None:
        self.tenant, self.started = tenant, started
        self.received = 0
        self.ended = False  # the whole body is in: nothing left to cut
        self.cut = False  # preempted: it no longer holds a slot
        self._cutter: Callable[[], None] | None = None

    def progress(self, n_bytes: int) -> None:
        self.received += n_bytes

    def cut_by(self, cutter: Callable[[], None]) -> None:
        """How to cut this body (the reader makes its next read fail)."""
        self._cutter = cutter

    def rate(self, now: float) -> float:
        return self.received / max(now - self.started, 1e-9)

    def stalled(self, now: float, limits: Limits) -> bool:
        """Under `min_rate` for longer than `stall_grace`, and cuttable."""
        if self._cutter is None or self.ended or self.cut:
            return False
        elapsed = now - self.started
        return elapsed > limits.stall_grace and self.received < limits.min_rate * elapsed

    def preempt(self) -> None:
        self.cut = True
        assert self._cutter is not None
        self._cutter()


class Admission:
    def __init__(
        self,
        store: QuotaStore,
        limits: Limits,
        metrics: Metrics,
        *,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._store, self._limits, self._metrics = store, limits, metrics
        self._clock = monotonic or time.monotonic
        self.locks = KeyedLocks()  # also held by the expiry sweep
        self._slots: set[Slot] = set()
        self._per_tenant: Counter[str | None] = Counter()
        self._claimed = 0
        self._claimed_by: Counter[str | None] = Counter()
        metrics.describe(PREEMPTED, "counter", "Slow bodies cut to give their slot away")

    @property
    def active(self) -> int:
        """Chunk bodies being received now."""
        return len(self._slots)

    @property
    def claimed(self) -> int:
        """Bytes claimed by the chunks being received now."""
        return self._claimed

    def active_of(self, tenant: str | None) -> int:
        return self._per_tenant[tenant]

    def upload(self, key: str) -> AbstractAsyncContextManager[None]:
        """The upload's lock: requests on one key run one at a time, in arrival order."""
        return self.locks.hold(key)

    def check_new(self, size: int, key: str | None = None) -> None:
        """Raises `InsufficientStorage` (507) if an upload of `size` would not fit."""
        self._check_space(size, None if key is None else tenant_of(key))

    @asynccontextmanager
    async def receiving(self, n_bytes: int, key: str | None = None) -> AsyncIterator[Slot]:
        """A slot and a claim on `n_bytes` for the block.

        Raises:
            ServiceUnavailable: `too_many_uploads` (with `Retry-After`), all slots taken.
            ProtocolError: `tenant_too_many_uploads` (429), the tenant's share taken.
            InsufficientStorage: `partial_quota_exceeded`, `tenant_quota_exceeded` or
                `insufficient_storage`.
        """
        tenant = None if key is None else tenant_of(key)
        self._check_space(n_bytes, tenant)
        slot = self._take_slot(tenant)
        self._claim(tenant, n_bytes)
        try:
            yield slot
        finally:
            self._claim(tenant, -n_bytes)
            self._release(slot)

    def _claim(self, tenant: str | None, n_bytes: int) -> None:
        self._claimed += n_bytes
        self._claimed_by[tenant] += n_bytes

    def _take_slot(self, tenant: str | None) -> Slot:
        limits, now = self._limits, self._clock()
        share = limits.tenant_max_active
        if tenant is not None and share is not None and self._per_tenant[tenant] >= share:
            self._make_room(now, tenant, self._tenant_full(tenant, share))
        if len(self._slots) >= limits.max_active:
            self._make_room(now, None, self._server_full())
        slot = Slot(tenant, now)
        self._slots.add(slot)
        self._per_tenant[tenant] += 1
        self._metrics.set(ACTIVE_GAUGE, len(self._slots))
        return slot

    def _make_room(self, now: float, tenant: str | None, refusal: ProtocolError) -> None:
        """Cut the stalled body most in the way (see the invariants), or refuse."""
        stalled = [s for s in self._slots if s.stalled(now, self._limits)]
        if tenant is not None:
            stalled = [s for s in stalled if s.tenant == tenant]
        if not stalled:
            raise refusal
        victim = max(stalled, key=lambda s: (self._per_tenant[s.tenant], -s.rate(now)))
        self._release(victim)
        victim.preempt()
        self._metrics.inc(PREEMPTED)

    def _release(self, slot: Slot) -> None:
        if slot in self._slots:
            self._slots.discard(slot)
            self._per_tenant[slot.tenant] -= 1
            self._metrics.set(ACTIVE_GAUGE, len(self._slots))

    def _server_full(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            Code.TOO_MANY_UPLOADS,
            f"{len(self._slots)} uploads are in progress; try again shortly",
            headers={"Retry-After": str(self._limits.retry_after)},
        )

    def _tenant_full(self, tenant: str, share: int) -> ProtocolError:
        return ProtocolError(
            Code.TENANT_TOO_MANY_UPLOADS,
            f"tenant {tenant!r} has {share} uploads in progress, its share; try again shortly",
            headers={"Retry-After": str(self._limits.retry_after)},
        )

    def _check_space(self, incoming: int, tenant: str | None) -> None:
        """507 before a byte is written when a quota or the disk's reserve would be hit."""
        limits = self._limits
        total = incoming + self._claimed
        if self._store.partial_bytes + total > limits.max_partial:
            raise InsufficientStorage(
                Code.PARTIAL_QUOTA_EXCEEDED,
                f"partial uploads are limited to {limits.max_partial} bytes",
            )
        if self._store.free_bytes() - total < limits.reserve:
            raise InsufficientStorage(Code.INSUFFICIENT_STORAGE, "not enough disk space")
        cap = limits.tenant_max_partial
        if tenant is None or cap is None or not isinstance(self._store, TenantQuotaStore):
            return
        held = self._store.partial_bytes_of(tenant) + self._claimed_by[tenant]
        if held + incoming > cap:
            raise InsufficientStorage(
                Code.TENANT_QUOTA_EXCEEDED, f"a tenant's partial uploads are limited to {cap} bytes"
            )
