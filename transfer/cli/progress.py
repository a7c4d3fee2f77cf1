"""What a person sees while `transfer send` runs, and where the logs go meanwhile.

Invariants:
- The display is on with `--progress always`, or with `auto` when stderr is a terminal;
  off it, nothing changes: JSON lines (or `--log-format console`) on stderr.
- While the display is on it owns the terminal: logs never glue to it. They go to
  `--log-file`, or, when neither `--log-file` nor `--log-format` was given, to
  `SPOOL/sender.log`, whose path is printed before the display starts. An explicit
  `--log-format` without `--log-file` keeps the lines on stderr, printed above the
  display (rich redirects stderr while it draws; `logs` looks stderr up at each write).
- The display speaks the sender's events to people: `server.unreachable` becomes one
  line, "server unreachable at URL, retrying for up to 4m58s: REASON", once per outage
  (the uploader logs it once); `server.reachable`, `server.switched` (`--server` given
  more than once: the sender moved on to the next) and `upload.failed` one line each.
- Units a person reads are binary: MiB and MiB/s, here and in the summary line.
- Nothing here changes the sender: it reads counts and stats, it never writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from transfer.cli.logs import LogFormat
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.core.units import format_size
from transfer.sender import status
from transfer.sender.pipeline import Sender

LOG_NAME = "sender.log"  # in the spool dir, when the display takes the terminal
REFRESH = 0.2  # seconds between two redraws
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Output:
    """Where a command's output goes: the display (on or off) and the log lines."""

    display: bool
    log_format: LogFormat
    log_file: Path | None
    chosen: bool = False  # `log_file` was picked here, not given: say where it is


def choose_output(args: argparse.Namespace, *, isatty: Callable[[], bool]) -> Output:
    """Apply the module's rules to parsed flags (`isatty`: is stderr a terminal)."""
    fmt: LogFormat = args.log_format or "json"
    mode = getattr(args, "progress", "never")
    display = mode == "always" or (mode == "auto" and isatty())
    if display and args.log_file is None and args.log_format is None:
        return Output(True, fmt, Path(args.spool_dir).absolute() / LOG_NAME, chosen=True)
    return Output(display, fmt, args.log_file)


def header(args: argparse.Namespace, log_file: Path | None, status_port: int) -> str:
    """The lines printed before the display: what will happen, and where things are."""
    logs = f"logs: {log_file}" if log_file is not None else "logs: stderr"
    return (
        f"sending {plan(args)} to {servers_text(args.server)}\n"
        f"spool: {Path(args.spool_dir).absolute()}\n"
        f"{logs}\nstatus: http://{args.status_host}:{status_port}/status"
    )


def servers_text(server: str | list[str]) -> str:
    """`--server` as a person reads it: one URL, or several (fail-over) joined by "or"."""
    return server if isinstance(server, str) else " or ".join(server)


def plan(args: argparse.Namespace) -> str:
    """What `transfer send` with these parsed flags will send, in words (the demo's
    banner too, so it states the real parameters, defaults included)."""
    if args.paths:
        return "the files in " + ", ".join(str(p) for p in args.paths)
    mean = (args.min_interval + args.max_interval) / 2
    about = args.count * mean
    bound = ""
    if args.max_duration is not None and args.max_duration < about:
        about, bound = args.max_duration, f", --max-duration {_span(args.max_duration)}"
    return (
        f"{args.count} files of int16 samples, {format_size(args.min_size)} to "
        f"{format_size(args.max_size)}, one every {_span(args.min_interval)} to "
        f"{_span(args.max_interval)} (about {_span(about)} of generation{bound})"
    )


def _span(seconds: float) -> str:
    """`0.001` -> `1ms`, `0.5` -> `500ms`, `50.05` -> `50s`, `298` -> `4m58s`."""
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    return clock_text(round(seconds))


def clock_text(seconds: float) -> str:
    """`298.4` -> `4m58s`; `45` -> `45s`; `3725` -> `1h2m5s` (nearest whole second)."""
    whole = max(round(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def human_line(event: Mapping[str, object], server: str) -> str | None:
    """The line a person should read for a log event, or None for most events."""
    name = event.get("event")
    if name == Event.SERVER_UNREACHABLE:
        wait = clock_text(float(str(event.get("retry_for", 0))))
        return f"server unreachable at {server}, retrying for up to {wait}: {event.get('reason')}"
    if name == Event.SERVER_REACHABLE:
        return f"server reachable again at {server}"
    if name == Event.SERVER_SWITCHED:
        return f"moving on from {event.get('previous')} to {event.get('server')}"
    if name == Event.UPLOAD_FAILED:
        return f"{event.get('file_id', 'a file')} failed: {event.get('reason')}"
    return None


class _Lines(logging.Handler):
    """Turns the log records `human_line` knows into printed lines."""

    def __init__(self, say: Callable[[str], None], server: Callable[[], str]) -> None:
        super().__init__(logging.INFO)
        self._say, self._server = say, server

    def emit(self, record: logging.LogRecord) -> None:
        # structlog hands the stdlib its event dict as the record's msg.
        if isinstance(record.msg, dict):
            line = human_line(record.msg, self._server())
            if line is not None:
                self._say(line)


class Display:
    """A rich progress bar for one `Sender`, with the human lines printed above it."""

    def __init__(
        self,
        sender: Sender,
        target: int | None,
        server: Callable[[], str],  # the current server (it changes on a fail-over)
        *,
        console: Console | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._sender, self._target, self._sleep = sender, target, sleep
        self.console = console or Console(stderr=True, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            auto_refresh=False,
        )
        self._task: TaskID = self._progress.add_task("sending", total=None, detail="")
        self._server = server
        self._lines = _Lines(self._say, server)

    def _say(self, line: str) -> None:
        # soft_wrap: a long line is wrapped by the terminal, not broken by rich, so it
        # stays one line for a person copying it and for a test reading it.
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def refresh(self) -> None:
        files = self._sender.counts()
        total = self._target or sum(files.values()) or 1
        stats = self._sender.uploader.stats
        detail = (
            f"{files[FileState.CONFIRMED.value]}/{total} files  "
            f"{format_size(stats.bytes_sent)}  {status.mib_per_s(self._sender):.2f} MiB/s  "
            f"{files[FileState.FAILED.value]} failed  {stats.retries} retries  "
            f"to {self._server()}"
        )
        waiting = "[yellow]server unreachable[/]" if stats.unreachable else "sending"
        done = files[FileState.CONFIRMED.value] + files[FileState.FAILED.value]
        self._progress.update(
            self._task, description=waiting, total=total, completed=done, detail=detail
        )
        self._progress.refresh()

    @contextlib.asynccontextmanager
    async def shown(self, header: str) -> AsyncIterator[None]:
        """Print `header`, then draw until the block ends (the last state stays)."""
        self._say(header)
        root = logging.getLogger()
        root.addHandler(self._lines)
        try:
            with self._progress:
                follower = asyncio.create_task(self._follow())
                yield
                self.refresh()
        finally:
            # Not awaited: it stops at its next sleep, and awaiting it here could turn
            # our own cancellation into its.
            follower.cancel()
            root.removeHandler(self._lines)

    async def _follow(self) -> None:
        while True:
            self.refresh()
            await self._sleep(REFRESH)
