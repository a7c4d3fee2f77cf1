"""Waiting for what another process does: one poll loop with a deadline, sync and async.

Tests, the chaos runner and the benchmarks never sleep to synchronize with a child: they
look (`probe()`), and look again `interval` seconds later, until the probe returns
something truthy, the deadline passes, or the process they wait on has exited.

Invariants: `poll` takes one last look after the watched process has exited (its final
log lines count), and never waits past its deadline by more than one interval. The
async variant exists for probes that are coroutines or that run on the test's own event
loop (an in-process server), where a blocking sleep would stop the very thing awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")
INTERVAL = 0.005  # seconds between two looks
DEADLINE = 20.0  # the default bound on any wait


class NotReached(AssertionError):
    """A waited-for condition did not come: the deadline passed or the process exited.

    An `AssertionError`, so pytest reports it as a failed expectation, with `context`.
    """


def poll(
    probe: Callable[[], T | None],
    *,
    deadline: float = DEADLINE,
    alive: Callable[[], bool] | None = None,
    interval: float = INTERVAL,
) -> T | None:
    """`probe()`'s first truthy value; None once `deadline` seconds have passed or
    `alive()` has turned false (after one last look)."""
    end = time.monotonic() + deadline
    while True:
        running = alive is None or alive()
        value = probe()
        if value:
            return value
        if not running or time.monotonic() > end:
            return None
        time.sleep(interval)


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    *,
    deadline: float = DEADLINE,
    alive: Callable[[], bool] | None = None,
    context: Callable[[], str] = lambda: "",
    interval: float = INTERVAL,
) -> T:
    """`poll`, but a probe that never turns truthy raises `NotReached` naming `what`."""
    value = poll(probe, deadline=deadline, alive=alive, interval=interval)
    if value:
        return value
    if alive is not None and not alive():
        raise NotReached(f"the process exited before {what}\n{context()}")
    raise NotReached(f"timed out after {deadline} s waiting for {what}\n{context()}")


@overload
async def wait_until_async(
    probe: Callable[[], Awaitable[T]],
    what: str,
    *,
    deadline: float = DEADLINE,
    interval: float = INTERVAL,
) -> T: ...
@overload
async def wait_until_async(
    probe: Callable[[], T],
    what: str,
    *,
    deadline: float = DEADLINE,
    interval: float = INTERVAL,
) -> T: ...
async def wait_until_async(
    probe: Callable[[], Any],
    what: str,
    *,
    deadline: float = DEADLINE,
    interval: float = INTERVAL,
) -> Any:
    """`wait_until` on the running event loop; `probe` may be a plain or async function."""
    end = time.monotonic() + deadline
    while True:
        value = await _look(probe)
        if value:
            return value
        if time.monotonic() > end:
            raise NotReached(f"timed out after {deadline} s waiting for {what}")
        await asyncio.sleep(interval)


async def _look(probe: Callable[[], Any]) -> Any:
    found = probe()
    if inspect.isawaitable(found):
        return await found
    return found
