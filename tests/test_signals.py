"""SIGINT and SIGTERM stop `transfer send` in every phase, with the journal intact.

Real signals to a real `python -m transfer send` child, in each phase a sender can be in:
generating (a long interval between files), uploading (a big file through a throttled
fault proxy, so a chunk is on the wire), backing off (retrying a closed port) and
waiting on a server that accepts a connection and never answers. Each run must exit
130 (SIGINT) or 143 (SIGTERM), log `sender.stopping` with its reason, print one human
line, leave a journal that reopens with the files confirmed before still confirmed, and
let the next run finish the job.

The CLI promises 2 s; the deadline here (15 s) is only a hang guard, and the measured
stop times are printed (`pytest -s`), not asserted: a loaded machine must not fail them.
The backoff wait's interruption is also tested in process, without any real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import assert_delivered, read_journal

from transfer.core.errors import Interrupted
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender.reasons import Reason
from transfer.sender.retry import RetryPolicy, interruptible
from transfer.testing.faultproxy import Fault
from transfer.testing.harness import HOST, Harness, SenderProcess, ServerProcess, free_port
from transfer.testing.logs import LogLine, named
from transfer.testing.polling import wait_until
from transfer.testing.proxythread import ProxyThread

KiB, MiB = 1024, 1024 * 1024
SEED = "5"
FAST = ("--min-interval", "0s", "--max-interval", "0s")
TINY = ("--min-size", "1KiB", "--max-size", "4KiB", *FAST)
HANG_GUARD = 15.0  # seconds; the contract is 2 s, measured and printed


@dataclass
class Scene:
    """A live server and a spool whose first files are already confirmed."""

    launch: Harness
    server: ServerProcess
    spool: Path
    confirmed: list[str]


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    with Harness(tmp_path) as launch:
        server = launch.serve(tmp_path / "data")
        spool = tmp_path / "spool"
        first = launch.send(server.url, spool, "--count", "2", "--seed", SEED, *TINY)
        assert first.finish() == 0, first.report()
        confirmed = [e.file_id for e in read_journal(spool)]
        assert len(confirmed) == 2
        yield Scene(launch, server, spool, confirmed)


# --- the phases: each starts a sender and returns once it is in that phase -------------


@dataclass(frozen=True)
class Phase:
    args: tuple[str, ...]  # count and sizes; the resuming run uses them too
    start: Callable[[Scene, contextlib.ExitStack, tuple[str, ...]], SenderProcess]


def has(*events: Event) -> Callable[[list[LogLine]], bool]:
    return lambda lines: all(named(lines, event) for event in events)


def generating(scene: Scene, stack: contextlib.ExitStack, args: tuple[str, ...]) -> SenderProcess:
    slow = ("--min-interval", "60s", "--max-interval", "60s")
    run = scene.launch.send(scene.server.url, scene.spool, *args, *slow)
    run.wait_for(has(Event.GENERATION_STARTED), "generation waiting for its next file")
    return run


def uploading(scene: Scene, stack: contextlib.ExitStack, args: tuple[str, ...]) -> SenderProcess:
    proxy = stack.enter_context(ProxyThread(scene.server.port, Fault(bandwidth=256 * KiB)))
    run = scene.launch.send(proxy.url, scene.spool, *args, "--concurrency", "1")
    wait_until(
        lambda: proxy.stats.bytes_up > MiB,
        "an 8 MiB chunk on a 256 KiB/s wire",
        alive=run.alive,
        context=run.report,
    )
    return run


def backing_off(scene: Scene, stack: contextlib.ExitStack, args: tuple[str, ...]) -> SenderProcess:
    run = scene.launch.send(f"http://{HOST}:{free_port()}", scene.spool, *args)
    run.wait_for(has(Event.GENERATION_FINISHED, Event.UPLOAD_RETRY), "retries, generation done")
    return run


def unanswered(scene: Scene, stack: contextlib.ExitStack, args: tuple[str, ...]) -> SenderProcess:
    listener = stack.enter_context(socket.create_server((HOST, 0)))
    listener.setblocking(False)
    run = scene.launch.send(f"http://{HOST}:{listener.getsockname()[1]}", scene.spool, *args)
    held = wait_until(lambda: _accept(listener), "a request", alive=run.alive, context=run.report)
    stack.enter_context(held)  # accepted, read by nobody, never answered
    run.wait_for(has(Event.GENERATION_FINISHED), "generation done")
    return run


def _accept(listener: socket.socket) -> socket.socket | None:
    try:
        return listener.accept()[0]
    except BlockingIOError:
        return None


PHASES = {
    "generating": Phase(("--count", "4", "--seed", SEED, *TINY), generating),
    "uploading": Phase(
        ("--count", "3", "--seed", SEED, "--min-size", "16MiB", "--max-size", "16MiB", *FAST),
        uploading,
    ),
    "backing-off": Phase(("--count", "4", "--seed", SEED, *TINY), backing_off),
    "unanswered": Phase(("--count", "4", "--seed", SEED, *TINY), unanswered),
}


# --- the checks ----------------------------------------------------------------------


def human_line(sig: signal.Signals, spool: Path) -> str:
    return (
        f"transfer send: {sig.name}, stopping; unconfirmed files stay journaled in {spool} "
        "for the next run (Ctrl-C again to quit at once)"
    )


def signal_and_time(run: SenderProcess, sig: signal.Signals) -> tuple[int, float]:
    """Send `sig`; the exit status and how long the child took to exit."""
    started = time.monotonic()
    run.proc.send_signal(sig)
    status = run.finish(HANG_GUARD)
    return status, time.monotonic() - started


def assert_journal_intact(scene: Scene) -> None:
    """The journal reopens; what was confirmed stays confirmed; nothing failed."""
    entries = {e.file_id: e for e in read_journal(scene.spool)}
    assert {entries[i].state for i in scene.confirmed} == {FileState.CONFIRMED}
    assert FileState.FAILED not in {e.state for e in entries.values()}


def assert_resumes(scene: Scene, phase: Phase) -> None:
    """The next run, to the live server, delivers every file."""
    again = scene.launch.send(scene.server.url, scene.spool, *phase.args, *FAST)
    assert again.finish() == 0, again.report()
    count = int(phase.args[phase.args.index("--count") + 1])
    assert_delivered(scene.spool, scene.server.data_dir, count)


# --- the tests -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("phase", "sig"),
    [
        ("generating", signal.SIGINT),
        ("generating", signal.SIGTERM),
        ("uploading", signal.SIGTERM),
        ("uploading", signal.SIGINT),
        ("backing-off", signal.SIGINT),
        ("unanswered", signal.SIGTERM),
    ],
)
def test_a_signal_stops_the_sender_in_every_phase(
    scene: Scene, phase: str, sig: signal.Signals
) -> None:
    with contextlib.ExitStack() as stack:
        run = PHASES[phase].start(scene, stack, PHASES[phase].args)
        status, took = signal_and_time(run, sig)
    print(f"\n{phase} {sig.name}: exited {status} {took:.3f} s after the signal")

    assert status == 128 + sig, run.report()
    [stopping] = run.named(Event.SENDER_STOPPING)
    assert (stopping["reason"], stopping["signal"]) == (Reason.SIGNAL, sig.name)
    assert stopping["generating"] is (phase == "generating")
    err = run.err.read_text()
    assert human_line(sig, scene.spool) in err.splitlines(), err
    assert "Traceback" not in err
    assert_journal_intact(scene)
    assert_resumes(scene, PHASES[phase])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_second_ctrl_c_quits_at_once(scene: Scene) -> None:
    # Waiting on a silent server: the first signal alone would wait out the drain budget.
    phase = PHASES["unanswered"]
    with contextlib.ExitStack() as stack:
        run = phase.start(scene, stack, phase.args)
        run.proc.send_signal(signal.SIGINT)
        line = human_line(signal.SIGINT, scene.spool)
        wait_until(lambda: line in run.err.read_text(), "the first line", alive=run.alive)
        status, took = signal_and_time(run, signal.SIGINT)
    print(f"\nsecond SIGINT: exited {status} {took:.3f} s after it")

    assert status == 130, run.report()
    first, second = run.named(Event.SENDER_STOPPING)
    assert "immediate" not in first
    assert second["immediate"] is True
    err = run.err.read_text().splitlines()
    assert err[-1] == "transfer send: SIGINT again, quitting now", err
    assert not any("Traceback" in line for line in err)
    assert_journal_intact(scene)
    assert_resumes(scene, phase)


# --- the backoff wait, in process ----------------------------------------------------


async def test_a_stop_ends_a_backoff_wait_at_once() -> None:
    stop = asyncio.Event()
    never = asyncio.Event()

    async def forever(_: float) -> None:
        await never.wait()

    waiting = asyncio.ensure_future(interruptible(forever, stop)(3600.0))
    await asyncio.sleep(0)  # the wait has begun
    assert not waiting.done()
    stop.set()
    with pytest.raises(Interrupted):
        await asyncio.wait_for(waiting, HANG_GUARD)


async def test_no_backoff_wait_begins_once_stopping() -> None:
    stop = asyncio.Event()
    stop.set()
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    with pytest.raises(Interrupted):
        await interruptible(record, stop)(1.0)
    assert slept == []


async def test_an_uninterrupted_backoff_sleeps_its_delay() -> None:
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    policy = RetryPolicy(sleep=record).until(asyncio.Event())
    await policy.sleep(0.25)
    assert slept == [0.25]
