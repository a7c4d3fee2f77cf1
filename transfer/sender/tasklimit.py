"""A bounded set of background tasks: the spool writes that run ahead of generation.

Invariants: at most `limit` tasks run at once; the first failure is kept and re-raised
by the next `start` or by `wait`, never lost; `cancel` ends them all and waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class TaskLimit:
    """At most `limit` spool writes at once; the first failure is re-raised by `wait`."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` once a slot is free; raise the first earlier failure instead."""
        try:
            await self._slots.acquire()
            self._raise_failure()
        except BaseException:
            work.close()  # never started: no "coroutine was never awaited" warning
            raise
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        self._raise_failure()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
