"""RetryPolicy: what is retried, how long, how it waits; never a real sleep.

Every test runs the policy's own `AsyncRetrying` (tenacity) around a scripted operation,
with `sleep` replaced by a recorder, so a backoff of minutes costs nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from tenacity import RetryCallState, wait_fixed

from transfer.core.errors import RemoteError, TransferError, TransientError
from transfer.sender.retry import RetryPolicy, wait_retry_after

pytestmark = pytest.mark.timeout(10)


@dataclass(frozen=True, slots=True)
class Retry:
    """What `on_retry` saw (tenacity reuses one mutable RetryCallState, so copy it)."""

    attempt: int
    upcoming_sleep: float
    error: BaseException | None


@dataclass
class Recorder:
    """A fake `sleep` and `on_retry` pair: records instead of waiting."""

    delays: list[float] = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def on_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self.retries.append(Retry(state.attempt_number, state.upcoming_sleep, error))


@dataclass
class Script:
    """An operation that raises the scripted errors in turn, then returns "done"."""

    errors: list[BaseException]
    calls: int = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


async def run(policy: RetryPolicy, operation: Script, on_retry: Recorder) -> str:
    """The same loop the uploader runs: `async for attempt in policy.retrying(...)`."""
    async for attempt in policy.retrying(on_retry.on_retry):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity reraises")


def policy_for(
    recorder: Recorder,
    *,
    timeout: float = 300.0,
    initial: float = 0.05,
    maximum: float = 5.0,
    max_attempts: int | None = None,
) -> RetryPolicy:
    return RetryPolicy(timeout, initial, maximum, max_attempts, sleep=recorder.sleep)


def transient(n: int, retry_after: float | None = None) -> list[BaseException]:
    return [TransientError(f"flaky {i}", retry_after=retry_after) for i in range(n)]


async def test_transient_errors_are_retried_until_success() -> None:
    rec = Recorder()
    op = Script(transient(3))
    assert await run(policy_for(rec, max_attempts=10), op, rec) == "done"
    assert op.calls == 4
    assert len(rec.delays) == 3


async def test_on_retry_is_called_once_per_retry_with_the_upcoming_sleep() -> None:
    rec = Recorder()
    await run(policy_for(rec, max_attempts=10), Script(transient(2)), rec)
    assert [r.attempt for r in rec.retries] == [1, 2]
    assert [r.upcoming_sleep for r in rec.retries] == rec.delays
    assert [str(r.error) for r in rec.retries] == ["flaky 0", "flaky 1"]


async def test_success_on_first_try_neither_sleeps_nor_reports() -> None:
    rec = Recorder()
    assert await run(policy_for(rec), Script([]), rec) == "done"
    assert rec.delays == []
    assert rec.retries == []


@pytest.mark.parametrize(
    "error",
    [
        RemoteError(400, "invalid_range", "nope"),
        RemoteError(409, "offset_gap", "gap"),
        TransferError("not transient"),
        ValueError("a bug"),
        KeyError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_anything_but_transient_error_is_raised_at_once(error: Exception) -> None:
    rec = Recorder()
    op = Script([error])
    with pytest.raises(type(error)) as raised:
        await run(policy_for(rec, max_attempts=10), op, rec)
    assert raised.value is error
    assert op.calls == 1
    assert rec.delays == []
    assert rec.retries == []


async def test_a_remote_error_after_retries_stops_the_loop() -> None:
    rec = Recorder()
    op = Script([*transient(2), RemoteError(413, "upload_too_large", "big")])
    with pytest.raises(RemoteError):
        await run(policy_for(rec, max_attempts=10), op, rec)
    assert op.calls == 3
    assert len(rec.retries) == 2


@pytest.mark.parametrize("before", [0, 2])
async def test_cancellation_is_never_swallowed_nor_retried(before: int) -> None:
    rec = Recorder()
    op = Script([*transient(before), asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await run(policy_for(rec, max_attempts=10), op, rec)
    assert op.calls == before + 1
    assert len(rec.delays) == before


async def test_cancelling_the_task_during_a_backoff_ends_the_loop() -> None:
    """A real cancel() arriving while the policy sleeps propagates; no further attempt."""
    asleep = asyncio.Event()
    op = Script(transient(5))

    async def blocking_sleep(seconds: float) -> None:
        asleep.set()
        await asyncio.Event().wait()  # until cancelled

    policy = RetryPolicy(sleep=blocking_sleep, max_attempts=10)
    task = asyncio.create_task(run(policy, op, Recorder()))
    await asyncio.wait_for(asleep.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert op.calls == 1


async def test_max_attempts_reraises_the_last_transient_error() -> None:
    rec = Recorder()
    errors = transient(10)
    op = Script(list(errors))
    with pytest.raises(TransientError) as raised:
        await run(policy_for(rec, max_attempts=4), op, rec)
    assert raised.value is errors[3]
    assert op.calls == 4
    assert len(rec.delays) == 3
    assert len(rec.retries) == 3


async def test_timeout_stops_retrying_once_exceeded() -> None:
    """stop_after_delay: with no time allowed, the first failure is final."""
    rec = Recorder()
    op = Script(transient(3))
    with pytest.raises(TransientError):
        await run(policy_for(rec, timeout=0.0), op, rec)
    assert op.calls == 1
    assert rec.delays == []


async def test_backoff_grows_exponentially_within_its_caps() -> None:
    rec = Recorder()
    initial, maximum = 0.05, 0.3
    await run(
        policy_for(rec, initial=initial, maximum=maximum, max_attempts=20),
        Script(transient(8)),
        rec,
    )
    assert len(rec.delays) == 8
    for attempt, delay in enumerate(rec.delays, start=1):
        assert 0 <= delay <= min(maximum, initial * 2**attempt)


async def test_retry_after_is_a_floor_under_the_backoff() -> None:
    rec = Recorder()
    op = Script(transient(2, retry_after=7.0))
    await run(policy_for(rec, initial=0.01, maximum=0.1, max_attempts=5), op, rec)
    assert rec.delays == [7.0, 7.0]
    assert [r.upcoming_sleep for r in rec.retries] == [7.0, 7.0]


async def test_retry_after_is_capped_at_a_minute() -> None:
    rec = Recorder()
    await run(policy_for(rec, max_attempts=5), Script(transient(1, retry_after=3600.0)), rec)
    assert rec.delays == [60.0]


class _Flaky:
    """The callable tenacity records on a RetryCallState (its identity is all it needs)."""

    def __call__(self) -> None:
        return None


def state_after(error: BaseException | None, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=_Flaky(), args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    if error is None:
        state.set_result("fine")
    else:
        state.set_exception((type(error), error, None))
    return state


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, 1.0),  # no outcome error: the inner wait
        (TransientError("no header"), 1.0),
        (TransientError("short", retry_after=0.5), 1.0),  # a floor, never a shortening
        (TransientError("longer", retry_after=4.0), 4.0),
        (TransientError("huge", retry_after=100.0), 10.0),  # bounded by the ceiling
        (RemoteError(429, "x", "y"), 1.0),  # only TransientError carries Retry-After
    ],
)
def test_wait_retry_after(error: BaseException | None, expected: float) -> None:
    wait = wait_retry_after(wait_fixed(1.0), ceiling=10.0)
    assert wait(state_after(error)) == expected


def test_wait_retry_after_without_an_outcome_uses_the_inner_wait() -> None:
    state = RetryCallState(retry_object=None, fn=_Flaky(), args=(), kwargs={})  # type: ignore[arg-type]
    assert wait_retry_after(wait_fixed(2.5), ceiling=10.0)(state) == 2.5


def test_the_default_policy_is_bounded_by_time_not_attempts() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts is None
    assert policy.timeout == 300.0
    assert policy.sleep is asyncio.sleep


async def test_each_retrying_call_starts_a_fresh_budget() -> None:
    """The uploader builds one AsyncRetrying per step: spent attempts do not carry over."""
    rec = Recorder()
    policy = policy_for(rec, max_attempts=3)
    for _ in range(3):
        assert await run(policy, Script(transient(2)), rec) == "done"
    assert len(rec.delays) == 6
