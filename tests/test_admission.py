"""Admission on its own, pure asyncio (no HTTP): the active-upload cap, claims released
however a block ends, the quota and reserve refusals with their codes, and the
per-upload locks (one id serialized, others not, no entries left behind)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest

from transfer.common.metrics import Metrics
from transfer.core.errors import Code, InsufficientStorage, ServiceUnavailable
from transfer.server.admission import ACTIVE_GAUGE, Admission, Limits

MiB = 1024 * 1024
RESERVE = MiB


@dataclass
class FakeStore:
    """Exactly the quota protocol: what partial uploads hold, and the disk's free space."""

    partial_bytes: int = 0
    free: int = 100 * MiB

    def free_bytes(self) -> int:
        return self.free


def _admission(
    store: FakeStore | None = None, *, max_active: int = 4, max_partial: int = 10 * MiB
) -> Admission:
    limits = Limits(max_active=max_active, max_partial=max_partial, reserve=RESERVE, retry_after=3)
    return Admission(store or FakeStore(), limits, Metrics())


def _assert_idle(admission: Admission) -> None:
    assert (admission.active, admission.claimed, len(admission.locks)) == (0, 0, 0)


async def _yield_a_few_times() -> None:
    """Let every ready task run (no real time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- the cap ---------------------------------------------------------------------------


async def test_past_max_active_a_body_is_refused_with_retry_after() -> None:
    metrics = Metrics()
    limits = Limits(max_active=2, max_partial=10 * MiB, reserve=RESERVE, retry_after=3)
    admission = Admission(FakeStore(), limits, metrics)
    async with AsyncExitStack() as held:
        await held.enter_async_context(admission.receiving(10))
        await held.enter_async_context(admission.receiving(20))
        assert (admission.active, admission.claimed) == (2, 30)
        assert metrics.get(ACTIVE_GAUGE) == 2

        with pytest.raises(ServiceUnavailable) as refused:
            await held.enter_async_context(admission.receiving(1))
        assert refused.value.code == Code.TOO_MANY_UPLOADS
        assert refused.value.status == 503
        assert refused.value.headers == {"Retry-After": "3"}
        assert (admission.active, admission.claimed) == (2, 30)  # a refusal takes nothing
    assert metrics.get(ACTIVE_GAUGE) == 0
    _assert_idle(admission)

    async with admission.receiving(1):  # a slot is free again
        assert admission.active == 1


# --- claims released however the block ends ------------------------------------------


async def test_a_failing_body_releases_its_slot_and_claim() -> None:
    admission = _admission()
    with pytest.raises(RuntimeError):
        async with admission.receiving(500):
            assert (admission.active, admission.claimed) == (1, 500)
            raise RuntimeError("the store broke")
    _assert_idle(admission)


async def test_a_cancelled_body_releases_its_slot_and_claim() -> None:
    admission = _admission()
    entered, never = asyncio.Event(), asyncio.Event()

    async def receive() -> None:
        async with admission.receiving(500):
            entered.set()
            await never.wait()

    task = asyncio.create_task(receive())
    await entered.wait()
    assert (admission.active, admission.claimed) == (1, 500)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_idle(admission)


# --- the quota and the reserve -------------------------------------------------------


async def test_the_partial_quota_counts_stored_and_claimed_bytes() -> None:
    store = FakeStore(partial_bytes=400)
    admission = _admission(store, max_partial=1000)
    admission.check_new(600)  # exactly at the quota
    with pytest.raises(InsufficientStorage) as refused:
        admission.check_new(601)
    assert refused.value.code == Code.PARTIAL_QUOTA_EXCEEDED
    assert refused.value.status == 507

    async with admission.receiving(500):
        with pytest.raises(InsufficientStorage) as refused:
            admission.check_new(101)  # 400 stored + 500 claimed + 101 > 1000
        assert refused.value.code == Code.PARTIAL_QUOTA_EXCEEDED
        with pytest.raises(InsufficientStorage):
            async with admission.receiving(101):
                pytest.fail("a chunk over the quota was admitted")
        assert (admission.active, admission.claimed) == (1, 500)
        admission.check_new(100)
    admission.check_new(600)  # the claim ended with its chunk
    _assert_idle(admission)


async def test_the_disk_reserve_counts_claimed_bytes() -> None:
    store = FakeStore(free=RESERVE + 1000)
    admission = _admission(store)
    admission.check_new(1000)
    with pytest.raises(InsufficientStorage) as refused:
        admission.check_new(1001)
    assert refused.value.code == Code.INSUFFICIENT_STORAGE

    async with admission.receiving(600):
        with pytest.raises(InsufficientStorage) as refused:
            async with admission.receiving(401):
                pytest.fail("a chunk eating into the reserve was admitted")
        assert refused.value.code == Code.INSUFFICIENT_STORAGE
        assert (admission.active, admission.claimed) == (1, 600)
    _assert_idle(admission)


async def test_the_quota_is_read_from_the_store_each_time() -> None:
    store = FakeStore(partial_bytes=0)
    admission = _admission(store, max_partial=1000)
    store.partial_bytes = 1000  # another upload's chunk landed
    with pytest.raises(InsufficientStorage):
        admission.check_new(1)
    store.partial_bytes = 0  # and it completed
    admission.check_new(1000)


# --- per-upload locks ----------------------------------------------------------------


async def test_one_id_is_serialized_and_other_ids_are_not() -> None:
    admission = _admission()
    order: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with admission.upload("a"):
            order.append("first in")
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with admission.upload("a"):
            order.append("second in")

    tasks = [asyncio.create_task(first())]
    await _yield_a_few_times()
    tasks.append(asyncio.create_task(second()))
    await _yield_a_few_times()
    assert order == ["first in"]  # the second waits for the first

    async with asyncio.timeout(5), admission.upload("b"):  # another id does not wait
        order.append("b")

    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "b", "first out", "second in"]
    _assert_idle(admission)


async def test_no_lock_entry_outlives_its_users_even_when_a_waiter_is_cancelled() -> None:
    admission = _admission()
    release = asyncio.Event()

    async def hold(upload_id: str) -> None:
        async with admission.upload(upload_id):
            await release.wait()

    holders = [asyncio.create_task(hold(f"id{i}")) for i in range(10)]
    waiter = asyncio.create_task(hold("id0"))
    await _yield_a_few_times()
    assert len(admission.locks) == 10
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await asyncio.gather(*holders)
    _assert_idle(admission)
