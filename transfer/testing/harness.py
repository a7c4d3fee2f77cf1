"""The one way tests, the chaos runner and the benchmarks start `transfer` as a process.

`Harness(workdir)` starts children: `serve` (`python -m transfer serve ...`, returned once
its JSON `server.started` line has announced the URL), `send` (not waited for) and
`spawn` (any command: dd, curl, nginx). A child named N writes `N.out`, `N.err` and, for
`transfer`, its JSON log `N.log` into the work dir, all appended: a child restarted
under the same name (the chaos runner) continues the same files, and its `mark` says
where its own lines begin. `close` (or leaving the `with` block) kills every child.

Invariants:
- No pipe is ever read: output goes to files, so a child never blocks on a full pipe
  and nothing here needs a reader thread.
- Every wait is a poll with a deadline (`transfer.testing.polling`); nothing sleeps to
  synchronize.
- Every child started is in `children` and gone (SIGKILL, or SIGTERM first if
  `close(gracefully=True)`) and reaped after `close`. A child in its own session
  (`new_session=True`) is killed with its whole process group.
- This module never imports `transfer.cli`: the children are separate processes.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self, TypedDict, TypeVar

from transfer.core.events import Event
from transfer.testing.children import (
    START_DEADLINE,
    STOP_DEADLINE,
    Child,
    SenderProcess,
    ServerProcess,
    TransferChild,
)
from transfer.testing.logs import LogFile

__all__ = [
    "HOST",
    "START_DEADLINE",
    "STOP_DEADLINE",
    "Child",
    "Harness",
    "SenderProcess",
    "ServerProcess",
    "TransferChild",
    "free_port",
    "run_transfer",
    "transfer_command",
]

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind to 0, read it, close): nobody listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def transfer_command(*args: str) -> list[str]:
    """`python -m transfer ARGS...` with this interpreter."""
    return [sys.executable, "-m", "transfer", *args]


def run_transfer(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `transfer ARGS...` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        transfer_command(*args),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- the harness ---------------------------------------------------------------------


class _Common(TypedDict):
    """What every child of one harness is built with."""

    proc: subprocess.Popen[bytes]
    err: Path
    out: Path | None
    stop_deadline: float
    group: bool


class _Marks(TypedDict):
    mark: int
    line_mark: int


C = TypeVar("C", bound=Child)


class Harness:
    """Starts children whose files live in `workdir`; `close` leaves none running.

    `cwd` and `env` apply to every child (None: this process's). Children run in their
    own session when `new_session` is set, so a kill reaches their grandchildren too.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        new_session: bool = False,
        start_deadline: float = START_DEADLINE,
        stop_deadline: float = STOP_DEADLINE,
    ) -> None:
        self.workdir, self.cwd, self.env = workdir, cwd, env
        self.new_session = new_session
        self.start_deadline, self.stop_deadline = start_deadline, stop_deadline
        self.children: list[Child] = []
        self._logs: dict[Path, LogFile] = {}

    def log_file(self, name: str) -> LogFile:
        """The log of children named `name` (one reader, shared across restarts)."""
        path = self.workdir / f"{name}.log"
        return self._logs.setdefault(path, LogFile(path))

    def spawn(self, argv: Sequence[str], *, err: Path, out: Path | None = None) -> Child:
        """Any command; stdout and stderr appended to `out` (None: discarded) and `err`."""
        return self._track(Child(**self._popen(argv, err, out)))

    def serve(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        extra: Iterable[str] = (),
        name: str | None = None,
        deadline: float | None = None,
        store: str | None = None,
    ) -> ServerProcess:
        """`transfer serve` on 127.0.0.1, returned once it has logged `server.started`.

        With `store` (`--store URL`, e.g. s3://BUCKET/PREFIX) `--data-dir` is not passed
        and `data_dir` only names a directory of this server's own (unused by it)."""
        name = name or f"serve{len(self.children)}"
        log = self.log_file(name)
        where = ["--data-dir", str(data_dir)] if store is None else ["--store", store]
        args = ["serve", "--host", HOST, "--port", str(port), *where]
        marks, common = self._marks(log), self._start(name, [*args, *extra])
        server = self._track(ServerProcess(**common, **marks, log=log, data_dir=data_dir))
        try:
            wait = self.start_deadline if deadline is None else deadline
            server.url = server.announced(Event.SERVER_STARTED, "url", wait)
        except BaseException:
            server.kill()
            raise
        return server

    def send(
        self, server: str, spool: Path, *args: str, log_level: str = "info", name: str | None = None
    ) -> SenderProcess:
        """`transfer send` to `server`, logging to its own file; not waited for."""
        name = name or f"send{len(self.children)}"
        log = self.log_file(name)
        argv = ["send", "--server", server, "--spool-dir", str(spool), "--log-level", log_level,
                "--progress", "never", *args]  # fmt: skip
        marks, common = self._marks(log), self._start(name, argv)
        return self._track(SenderProcess(**common, **marks, log=log))

    def close(self, *, gracefully: bool = False) -> None:
        """Kill (or, `gracefully`, SIGTERM first) and reap every child."""
        for child in self.children:
            if gracefully:
                child.stop()
            else:
                child.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _marks(log: LogFile) -> _Marks:
        """Where a child starting now begins in `log` (earlier runs wrote the rest)."""
        return _Marks(mark=log.count(), line_mark=len(log.lines()))

    def _start(self, name: str, args: list[str]) -> _Common:
        """`transfer ARGS... --log-file NAME.log`, output into NAME.out and NAME.err."""
        argv = transfer_command(*args, "--log-file", str(self.log_file(name).path))
        return self._popen(argv, self.workdir / f"{name}.err", self.workdir / f"{name}.out")

    def _popen(self, argv: Sequence[str], err: Path, out: Path | None) -> _Common:
        with contextlib.ExitStack() as files:
            stderr = files.enter_context(err.open("ab"))
            stdout = files.enter_context(out.open("ab")) if out else subprocess.DEVNULL
            proc = subprocess.Popen(
                list(argv), cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, start_new_session=self.new_session,
            )  # fmt: skip
        return _Common(proc=proc, err=err, out=out, stop_deadline=self.stop_deadline,
                       group=self.new_session)  # fmt: skip

    def _track(self, child: C) -> C:
        self.children.append(child)
        return child
