"""The children a `Harness` starts: any process, a `transfer` process with its JSON log,
`transfer serve` (announced URL) and `transfer send` (exit status, summary).

Invariants: `kill` is SIGKILL and reaps, exactly a crash; `stop` is SIGTERM, then SIGKILL
after `stop_deadline`; a child in its own session (`group`) is SIGKILLed with its whole
process group, so nothing it forked survives it. A `transfer` child's `events()` are
only its own run's log lines (those from `mark` on), even when earlier runs under the
same name wrote to the same file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from transfer.core.events import Event
from transfer.testing.logs import LogFile, LogLine
from transfer.testing.polling import DEADLINE, INTERVAL, NotReached, wait_until

START_DEADLINE = 15.0  # seconds for a child to announce itself
STOP_DEADLINE = 5.0  # seconds for a signalled child to exit
T = TypeVar("T")


@dataclass(eq=False, kw_only=True)
class Child:
    """One child process; its stdout and stderr go to files (or nowhere)."""

    proc: subprocess.Popen[bytes]
    err: Path
    out: Path | None = None
    stop_deadline: float = STOP_DEADLINE
    group: bool = False  # in its own session: signals go to its process group
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no shutdown; exactly a crash. Then reap."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        self.proc.wait(self.stop_deadline)

    def stop(self) -> bool:
        """SIGTERM; True if it exited by itself within the deadline (else SIGKILL)."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_deadline)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.group and sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def report(self) -> str:
        """Exit status and the end of stderr, for a failure message."""
        try:
            err = self.err.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            err = ""
        return f"exit={self.proc.poll()}\nstderr: {err}"


@dataclass(eq=False, kw_only=True)
class TransferChild(Child):
    """A `transfer` child; `log` may hold earlier runs' lines before `mark`."""

    log: LogFile
    mark: int = 0  # this run's first event in `log`
    line_mark: int = 0  # this run's first raw line in `log`

    def events(self) -> list[LogLine]:
        """This run's log lines, parsed."""
        return self.log.events()[self.mark :]

    @property
    def lines(self) -> list[str]:
        """This run's log lines as written (newline included)."""
        return self.log.lines()[self.line_mark :]

    def named(self, event: str) -> list[LogLine]:
        return self.log.named(event, since=self.mark)

    def report(self) -> str:
        return f"{super().report()}\nlog tail:\n{self.log.tail()}"

    def wait_for(
        self,
        probe: Callable[[list[LogLine]], T | None],
        what: str,
        deadline: float = DEADLINE,
        interval: float = INTERVAL,
    ) -> T:
        """Poll this run's log until `probe(events)` is truthy, while the child runs."""
        return wait_until(
            lambda: probe(self.events()),
            what,
            deadline=deadline,
            alive=self.alive,
            context=self.report,
            interval=interval,
        )

    def announced(self, event: Event, key: str, deadline: float = START_DEADLINE) -> str:
        """`key` of this run's first `event` line (a URL), once it is logged."""
        found = wait_until(
            lambda: self.named(event), event, deadline=deadline, alive=self.alive,
            context=self.report,
        )  # fmt: skip
        return str(found[0][key])


@dataclass(eq=False, kw_only=True)
class ServerProcess(TransferChild):
    """One `transfer serve` child, started and announced (`url`)."""

    data_dir: Path
    url: str = ""

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port


@dataclass(eq=False, kw_only=True)
class SenderProcess(TransferChild):
    """One `transfer send` child."""

    def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for the child to exit by itself; its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise NotReached(f"sender still running after {timeout} s\n{self.report()}") from exc

    def summary(self) -> LogLine:
        """The `send.summary` line of a run that ended by itself."""
        found = self.named(Event.SEND_SUMMARY)
        assert found, f"no send.summary\n{self.report()}"
        return found[-1]

    def status_url(self, deadline: float = START_DEADLINE) -> str:
        """The status server's URL from `sender.started` (with `--status-port`)."""
        return self.announced(Event.SENDER_STARTED, "status_url", deadline)
