"""`KeyedLocks`: one holder per key at a time, and a table that holds only keys in use,
however a holder's or a waiter's block ends (an exception, a cancellation while
waiting). Real asyncio tasks; waits are on events, never on time."""

from __future__ import annotations

import asyncio

import pytest

from transfer.server.locks import KeyedLocks

pytestmark = pytest.mark.timeout(10)


async def test_one_holder_per_key_and_an_empty_table_after() -> None:
    locks, order = KeyedLocks(), []
    entered, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("first in")
            entered.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await entered.wait()
        async with locks.hold("a"):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await entered.wait()
    async with locks.hold("b"):  # another key is not held up
        assert len(locks) == 2
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]
    assert len(locks) == 0


async def test_an_exception_inside_releases_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(ValueError, match="boom"):
        async with locks.hold("a"):
            raise ValueError("boom")
    assert len(locks) == 0
    async with locks.hold("a"):
        assert len(locks) == 1


async def test_a_waiter_cancelled_leaves_the_table_and_the_holder_alone() -> None:
    locks = KeyedLocks()
    waiting = asyncio.Event()

    async def waiter() -> None:
        waiting.set()
        async with locks.hold("a"):
            raise AssertionError("never entered: the key is held")

    async with locks.hold("a"):
        task = asyncio.create_task(waiter())
        await waiting.wait()
        await asyncio.sleep(0)  # let it reach the lock's queue
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(locks) == 1  # only the holder
    assert len(locks) == 0
    async with locks.hold("a"):  # and the key is free
        pass
