"""The sender's retry policy, as a value: what is retried, how long, how it waits.

Invariants: only `TransientError` is retried (never `asyncio.CancelledError`, never a
`RemoteError`); a server's `Retry-After` is a floor under the backoff; every retry is
logged by the caller's `on_retry`; `sleep` is injectable so tests never sleep. A policy
made `until(stop)` ends any backoff wait the moment `stop` is set, with `Interrupted`
(never retried), so a stopping sender never sits out a backoff of up to `maximum`.

Fast path (issue 13): `retrying` returns a `Retrying`, which runs the first attempt with
no tenacity objects at all and builds tenacity's `AsyncRetrying` only once that attempt
raised a `TransientError`; tenacity then takes the failure as its attempt 1 (logged
through `on_retry`, counted, timed from the first attempt's start) and runs every later
attempt. An attempt that succeeds costs ~1 us instead of tenacity's ~16 us (its
retrying object, strategies, call state and future), and nearly every request of a
healthy run succeeds at once. Any other error of the first attempt (cancellation
included) is raised as it is, as tenacity would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from transfer.core.errors import Interrupted, TransientError

Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[RetryCallState], None]


class wait_retry_after(wait_base):
    """The inner backoff, but never less than the server's Retry-After."""

    def __init__(self, inner: wait_base, ceiling: float) -> None:
        self.inner = inner
        self.ceiling = ceiling

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self.inner(retry_state)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, TransientError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.ceiling))
        return delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    timeout: float = 300.0  # keep trying this long after the last progress
    initial: float = 0.05
    maximum: float = 5.0
    max_attempts: int | None = None
    sleep: Sleep = asyncio.sleep

    def until(self, stop: asyncio.Event) -> RetryPolicy:
        """This policy, but its backoff waits end with `Interrupted` once `stop` is set."""
        return dataclasses.replace(self, sleep=interruptible(self.sleep, stop))

    def retrying(self, on_retry: OnRetry) -> Retrying:
        """The retry loop (`async for attempt in ...: with attempt: ...`), its tenacity
        machinery built only after a first attempt that failed (see the module)."""
        return Retrying(lambda: self.tenacity(on_retry))

    def tenacity(self, on_retry: OnRetry) -> AsyncRetrying:
        """This policy as tenacity's `AsyncRetrying`: what `Retrying` hands over to."""
        stop: stop_base = stop_after_delay(self.timeout)
        if self.max_attempts is not None:
            stop = stop | stop_after_attempt(self.max_attempts)
        return AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop,
            wait=wait_retry_after(
                wait_random_exponential(multiplier=self.initial, max=self.maximum), 60.0
            ),
            sleep=self.sleep,
            before_sleep=on_retry,
            reraise=True,
        )


class FirstAttempt:
    """The first attempt's context: records what it raised and swallows it, as
    tenacity's `AttemptManager` does, so that the loop's next step decides."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.error = exc_value
        return exc_value is not None


class Retrying:
    """An async iterator of attempts, like tenacity's `AsyncRetrying` (see the module).

    Invariants: the first attempt needs no tenacity object; after a successful one the
    loop ends; a first failure other than `TransientError` is raised unchanged, never
    retried (cancellation included); a `TransientError` is handed to tenacity as its
    attempt 1, with the retry budget counted from when this loop began, so the retry is
    logged and paced exactly as if tenacity had run the first attempt itself.
    """

    __slots__ = ("_build", "_first", "_rest", "_started")

    def __init__(self, build: Callable[[], AsyncRetrying]) -> None:
        self._build = build
        self._first: FirstAttempt | None = None
        self._rest: AsyncRetrying | None = None
        self._started = 0.0

    def __aiter__(self) -> Retrying:
        self._started = time.monotonic()
        return self

    async def __anext__(self) -> FirstAttempt | AttemptManager:
        if self._rest is not None:
            return await self._rest.__anext__()
        if self._first is None:
            self._first = FirstAttempt()
            return self._first
        error = self._first.error
        if error is None:
            raise StopAsyncIteration  # the first attempt succeeded
        if not isinstance(error, TransientError):
            raise error  # never retried: tenacity would re-raise it too
        return await self._hand_over(error)

    async def _hand_over(self, error: TransientError) -> AttemptManager:
        """Tenacity's loop, told that its first attempt (begun at `_started`) failed with
        `error`: it logs the retry (`before_sleep`), sleeps and yields attempt 2, or
        re-raises when the policy stops."""
        self._rest = self._build().__aiter__()
        attempt = await self._rest.__anext__()  # tenacity's attempt 1, already run
        attempt.retry_state.start_time = self._started  # the budget counts from it
        attempt.__exit__(type(error), error, error.__traceback__)
        return await self._rest.__anext__()


def interruptible(sleep: Sleep, stop: asyncio.Event) -> Sleep:
    """`sleep`, but raising `Interrupted` as soon as `stop` is set (or if it already is)."""

    async def wait(delay: float) -> None:
        if stop.is_set():
            raise Interrupted("stopping: no more retries")
        sleeper = asyncio.ensure_future(sleep(delay))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # cancelled or not, neither waiter outlives this wait
            sleeper.cancel()
            stopper.cancel()
        if stop.is_set():
            raise Interrupted("stopping: no more retries")
        sleeper.result()  # the sleep's own failure, if any

    return wait
