"""`Retrying`: the first attempt runs without tenacity, which takes over after a
transient failure as if it had run that attempt itself; never a real sleep."""

from __future__ import annotations

import asyncio
import time

import pytest
from tenacity import AsyncRetrying, RetryCallState

from transfer.core.errors import RemoteError, TransientError
from transfer.sender.retry import Retrying, RetryPolicy

pytestmark = pytest.mark.timeout(10)


def never_built() -> AsyncRetrying:
    raise AssertionError("tenacity was built for a first attempt that needed no retry")


async def attempts(retrying: Retrying, outcomes: list[BaseException | None]) -> int:
    """The uploader's loop: each attempt raises the next outcome or returns its number."""
    number = 0
    async for attempt in retrying:
        with attempt:
            number += 1
            outcome = outcomes[number - 1]
            if outcome is not None:
                raise outcome
            return number
    raise AssertionError("unreachable: the last attempt returns or raises")


async def no_sleep(seconds: float) -> None:
    return None


async def test_a_first_attempt_that_succeeds_builds_no_tenacity() -> None:
    assert await attempts(Retrying(never_built), [None]) == 1


@pytest.mark.parametrize(
    "error",
    [RemoteError(409, "offset_gap", "gap"), ValueError("a bug"), asyncio.CancelledError()],
    ids=lambda e: type(e).__name__,
)
async def test_a_first_failure_that_is_not_transient_is_raised_unchanged(
    error: BaseException,
) -> None:
    with pytest.raises(type(error)) as raised:
        await attempts(Retrying(never_built), [error])
    assert raised.value is error


async def test_a_transient_first_failure_is_tenacitys_attempt_one() -> None:
    """Logged as attempt 1 with its error; the retry budget began before it ran, not
    when tenacity took over."""
    seen: list[tuple[int, str, float]] = []

    def on_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        seen.append((state.attempt_number, str(error), state.start_time))

    errors = [TransientError("flaky 1"), TransientError("flaky 2")]
    began, ran = time.monotonic(), []
    async for attempt in RetryPolicy(sleep=no_sleep, max_attempts=5).retrying(on_retry):
        with attempt:
            ran.append(time.monotonic())
            if errors:
                raise errors.pop(0)
            break
    assert [(number, error) for number, error, _ in seen] == [(1, "flaky 1"), (2, "flaky 2")]
    assert len(ran) == 3
    assert all(began <= start <= ran[0] for _, _, start in seen)


async def test_the_attempt_limit_counts_the_first_attempt() -> None:
    errors: list[BaseException | None] = [TransientError(f"flaky {i}") for i in range(5)]
    with pytest.raises(TransientError) as raised:
        await attempts(RetryPolicy(sleep=no_sleep, max_attempts=2).retrying(lambda s: None), errors)
    assert raised.value is errors[1]


async def test_cancellation_after_a_transient_first_failure_is_raised() -> None:
    cancel = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError) as raised:
        retrying = RetryPolicy(sleep=no_sleep, max_attempts=5).retrying(lambda s: None)
        await attempts(retrying, [TransientError("flaky"), cancel])
    assert raised.value is cancel
