"""The sender's retry policy, as a value: what is retried, how long, how it waits.

Invariants: only `TransientError` is retried (never `asyncio.CancelledError`, never a
`RemoteError`); a server's `Retry-After` is a floor under the backoff; every retry is
logged by the caller's `on_retry`; `sleep` is injectable so tests never sleep. A policy
made `until(stop)` ends any backoff wait the moment `stop` is set, with `Interrupted`
(never retried), so a stopping sender never sits out a backoff of up to `maximum`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
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

    def retrying(self, on_retry: OnRetry) -> AsyncRetrying:
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
