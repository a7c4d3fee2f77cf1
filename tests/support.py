"""Shared helpers for the sender's end-to-end and kill -9 tests.

- `run_transfer(...)`: `python -m transfer ...` run to completion, bounded by a timeout.
- `Launcher`: starts `transfer serve` (`ServerProcess`) and `transfer send`
  (`SenderProcess`) children that log JSON lines to files; `wait_for` polls a log until
  an event shows up or a deadline passes. Every child a launcher started is SIGKILLed
  and reaped when it closes.
- `ProxyThread`: a `FaultProxy` on its own event loop in a thread, so synchronous tests
  can slow a connection down (bandwidth) or hold answers back (latency).
- Readers of the sender's journal and the server's `/metrics`, and `assert_delivered`:
  every journaled file confirmed and byte-identical on the server.

Nothing here sleeps to synchronize: waits are short polls inside a deadline loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

from transfer.sender.journal import FileJournal, FileState, JournalEntry
from transfer.testing.faultproxy import Fault, FaultProxy

HOST = "127.0.0.1"
POLL = 0.005  # seconds between two looks at a log file
DEADLINE = 20.0  # default bound on any wait for a child process
START_DEADLINE = 15.0  # for a server child to announce its URL
T = TypeVar("T")
Event = dict[str, Any]


def transfer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "transfer", *args]


def run_transfer(
    *args: str, cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `transfer ARGS...` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        transfer_command(*args),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    *,
    deadline: float = DEADLINE,
    alive: Callable[[], bool] | None = None,
    context: Callable[[], str] = lambda: "",
) -> T:
    """Poll `probe` until it returns something truthy; fail after `deadline` seconds, or
    as soon as `alive()` turns false (the process we wait on is gone)."""
    end = time.monotonic() + deadline
    while True:
        running = alive() if alive is not None else True
        value = probe()
        if value:
            return value
        if not running:
            raise AssertionError(f"the process exited before {what}\n{context()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}\n{context()}")
        time.sleep(POLL)


# --- JSON-lines logs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogFile:
    """A structlog JSON-lines file that another process appends to."""

    path: Path

    def events(self) -> list[Event]:
        """Every complete line parsed; a line still being written is left for later."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        found: list[Event] = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def named(self, event: str) -> list[Event]:
        return [e for e in self.events() if e.get("event") == event]

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return f"({self.path} does not exist)"


def named(events: Iterable[Event], event: str) -> list[Event]:
    return [e for e in events if e.get("event") == event]


def completions(events: Iterable[Event]) -> Counter[str]:
    """How often the server logged `upload.completed`, per upload id."""
    return Counter(str(e["upload_id"]) for e in named(events, "upload.completed"))


# --- children ------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it, close): nobody listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A `transfer` child process; its log, stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    log: LogFile
    out: Path
    err: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no shutdown; exactly a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5.0)

    def events(self) -> list[Event]:
        return self.log.events()

    def report(self) -> str:
        return (
            f"exit={self.proc.poll()}\nstderr: {self.err.read_text()[-2000:]}\n"
            f"log tail:\n{self.log.tail()}"
        )


@dataclass
class ServerProcess(Child):
    """One `transfer serve` child, started and announced (`url`)."""

    data_dir: Path = Path()
    url: str = ""

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port


@dataclass
class SenderProcess(Child):
    """One `transfer send` child."""

    def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for the child to exit by itself; its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(
                f"sender still running after {timeout} s\n{self.report()}"
            ) from exc

    def wait_for(
        self, probe: Callable[[list[Event]], T | None], what: str, deadline: float = DEADLINE
    ) -> T:
        """Poll the child's log until `probe(events)` is truthy."""
        return wait_until(
            lambda: probe(self.log.events()),
            what,
            deadline=deadline,
            alive=self.alive,
            context=self.report,
        )

    def summary(self) -> Event:
        """The `send.summary` line of a run that ended by itself."""
        found = self.log.named("send.summary")
        assert found, f"no send.summary\n{self.report()}"
        return found[-1]


class Launcher:
    """Starts `transfer` children under `workdir`; kills all of them on close."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Child] = []

    def serve(self, data_dir: Path, *, port: int = 0, extra: Iterable[str] = ()) -> ServerProcess:
        """`transfer serve` on 127.0.0.1, once it has logged `server.started`."""
        name, log = self._names("serve")
        proc = self._spawn(
            name, "serve", "--host", HOST, "--port", str(port), "--data-dir", str(data_dir),
            "--log-file", str(log.path), *extra,
        )  # fmt: skip
        server = ServerProcess(proc, log, *self._outputs(name), data_dir=data_dir)
        self.started.append(server)
        started = wait_until(
            lambda: log.named("server.started"),
            "server.started",
            deadline=START_DEADLINE,
            alive=server.alive,
            context=server.report,
        )
        server.url = str(started[0]["url"])
        return server

    def send(self, server: str, spool: Path, *args: str, log_level: str = "info") -> SenderProcess:
        """`transfer send` to `server`, logging to its own file; not waited for."""
        name, log = self._names("send")
        proc = self._spawn(
            name, "send", "--server", server, "--spool-dir", str(spool),
            "--log-file", str(log.path), "--log-level", log_level, "--progress", "never", *args,
        )  # fmt: skip
        child = SenderProcess(proc, log, *self._outputs(name))
        self.started.append(child)
        return child

    def _names(self, kind: str) -> tuple[str, LogFile]:
        name = f"{kind}{len(self.started)}"
        return name, LogFile(self.workdir / f"{name}.log")

    def _outputs(self, name: str) -> tuple[Path, Path]:
        return self.workdir / f"{name}.out", self.workdir / f"{name}.err"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out, err = self._outputs(name)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            return subprocess.Popen(
                transfer_command(*args), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )

    def close(self) -> None:
        for child in self.started:
            child.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- journal, server state -----------------------------------------------------------


def read_journal(spool: Path) -> list[JournalEntry]:
    """The journal's entries (takes the journal's lock: no sender may be running)."""
    with FileJournal.open(spool) as journal:
        return journal.entries()


def read_meta(spool: Path) -> dict[str, str]:
    with FileJournal.open(spool) as journal:
        return journal.meta()


def metric(url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample from a server's `/metrics`; 0 when the series does not exist yet."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    wanted = name
    if labels:
        wanted += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def assert_delivered(spool: Path, data_dir: Path, count: int) -> list[JournalEntry]:
    """Exactly `count` journaled files, all confirmed, each byte-identical on the server."""
    entries = read_journal(spool)
    assert len(entries) == count, [e.file_id for e in entries]
    unconfirmed = [(e.file_id, e.state.value, e.reason) for e in entries]
    unconfirmed = [u for u in unconfirmed if u[1] != FileState.CONFIRMED.value]
    assert not unconfirmed
    for entry in entries:
        stored = data_dir / "files" / entry.file_id
        assert stored.is_file(), f"{entry.file_id} is not published on the server"
        assert stored.read_bytes() == Path(entry.path).read_bytes(), entry.file_id
        assert entry.server_digest == entry.digest
    return entries


# --- a fault proxy for synchronous tests ---------------------------------------------


@dataclass
class ProxyThread:
    """`FaultProxy(HOST, target_port, plan=fault)` served by a thread's own event loop."""

    target_port: int
    fault: Fault
    port: int = 0
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(DEADLINE) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(DEADLINE)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FaultProxy(HOST, self.target_port, plan=self.fault) as proxy:
            self.port = proxy.port
            self._ready.set()
            await self._stop.wait()
