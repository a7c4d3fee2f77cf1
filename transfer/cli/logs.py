"""structlog set-up: one JSON object per line (or a console view for people).

`configure` is called once, by the CLI, never at import time. Every line a process
writes has the same shape: `event`, `level`, `timestamp` (ISO 8601, UTC), context.

Two routes reach the one `_Sink`:
- structlog's own loggers (every line of ours) go straight to it: a filtering bound
  logger drops lines below the level at the call, the processors render the line and
  the sink writes it with one `os.write` (issue 13: the stdlib detour through
  `logging.LogRecord` and `ProcessorFormatter` cost more than the line itself);
- standard-library loggers (aiohttp's among them) go through a root handler whose
  `ProcessorFormatter` runs the same processors, so their lines look the same.
Any other handler on the root logger (the progress display's) still receives each of
our events as a `LogRecord` whose `msg` is the event dict, as when every line went
through the stdlib.

What a line costs (issue 13: 3 lines per small upload on the server, ~14 us each): the
processors are structlog's in behaviour and output, some in a cheaper form. The context
merge reads structlog's own variables only; the UTC timestamp formats date and time
once per second (`UtcStamp`); the JSON encoder is built once, not per line; the
redactor is left out when there is nothing to redact; `_Tee` looks further only when
the root logger has another handler than ours.

Invariants: a line is written whole by one write call (an `O_APPEND` file, so lines of
several threads or processes never interleave); the stderr sink looks `sys.stderr` up
at every write, so a progress display that redirects stderr (rich's `Live`) prints log
lines above itself instead of through it; a log file's directory is created and the
file opened at the first line, not before, so a command that fails its flag checks
leaves nothing behind.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def redactor(secrets: Sequence[str]) -> structlog.types.Processor:
    """Replace every secret (a bearer token) in any string value of an event, tracebacks
    included: aiohttp quotes bad header lines in its own error messages."""
    hidden = [s for s in secrets if s]

    def redact(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        if hidden:
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = _scrub(value, hidden)
        return event

    return redact


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


_PREFIX_LEN = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)
# structlog's own table of the variables `bind_contextvars` made (prefixed name -> var,
# each defaulting to Ellipsis): private, so absent it the public processor is used
# (tests/test_request_costs.py compares the two).
_BOUND: dict[str, contextvars.ContextVar[object]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)


def merge_context(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """`structlog.contextvars.merge_contextvars`: the same keys and values, read from
    structlog's few variables instead of a pass over every variable of the context (in
    the order they were first bound, where that pass's order was hash order)."""
    if _BOUND is None:
        return structlog.contextvars.merge_contextvars(logger, method, event)
    for name, var in list(_BOUND.items()):  # a copy: another thread may bind a new key
        value = var.get(Ellipsis)
        if value is not Ellipsis:
            event.setdefault(name[_PREFIX_LEN:], value)
    return event


class UtcStamp:
    """`TimeStamper(fmt="iso", utc=True)`'s `timestamp` to the character
    (`2026-11-30T15:47:40.014022Z`; no fraction when it is zero, as `isoformat`), with
    the date and time formatted once per second instead of a `datetime` per line."""

    def __init__(self) -> None:
        self._cached = (-1, "")  # (second, its text): one tuple, so threads never mix them

    def __call__(
        self, _: object, __: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)  # floored, as datetime's
        cached_second, text = self._cached
        if second != cached_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, text)
        event["timestamp"] = f"{text}.{micro:06d}Z" if micro else f"{text}Z"
        return event


def _json_fallback(value: object) -> object:
    """What structlog's JSONRenderer does with a value JSON has no type for."""
    method = getattr(value, "__structlog__", None)
    return method() if callable(method) else repr(value)


def json_renderer() -> structlog.types.Processor:
    """`structlog.processors.JSONRenderer()`, with its encoder built once: `json.dumps`
    builds a new one per call whenever it is given `default`."""
    encode = json.JSONEncoder(default=_json_fallback).encode

    def render(_: object, __: str, event: structlog.types.EventDict) -> str:
        return encode(event)

    return render


def configure(
    fmt: LogFormat = "json",
    *,
    log_file: Path | None = None,
    level: str = "info",
    secrets: Sequence[str] = (),
) -> None:
    sink = _Sink(_FileLines(log_file) if log_file else _stderr_line)
    renderer: structlog.types.Processor = (
        json_renderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty() and log_file is None)
    )
    shared: list[structlog.types.Processor] = [
        merge_context,
        structlog.stdlib.add_log_level,
        UtcStamp(),
    ]
    final: list[structlog.types.Processor] = [
        structlog.processors.format_exc_info,
        *([redactor(secrets)] if any(secrets) else []),
        renderer,
    ]
    handler = _SinkHandler(sink)
    structlog.configure(
        processors=[*shared, _Tee(handler), *final],
        logger_factory=lambda *_: sink,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(_LEVELS[level])


class _Sink:
    """Where rendered lines go: every method name structlog may call writes one line."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def msg(self, line: str) -> None:
        self.write(line)

    debug = info = warning = warn = error = err = critical = fatal = exception = msg


def _stderr_line(line: str) -> None:
    """To `sys.stderr` as it is at each write (see the module's invariants)."""
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


class _FileLines:
    """Appends lines to `path`, creating its directory and opening it at the first."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._opening = threading.Lock()

    def __call__(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "backslashreplace")
        fd = self._fd if self._fd is not None else self._open()
        while data:  # a short write (a full disk) is retried with the rest, never dropped
            data = data[os.write(fd, data) :]

    def _open(self) -> int:
        with self._opening:
            if self._fd is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                self._fd = os.open(self._path, flags, 0o644)
            return self._fd


class _SinkHandler(logging.Handler):
    """The root logger's handler: standard-library records, formatted by structlog."""

    def __init__(self, sink: _Sink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.msg(self.format(record))
        except Exception:  # logging's own rule: report, never raise
            self.handleError(record)


class _Tee:
    """A processor that shows each event dict to the root logger's other handlers (the
    progress display's), as a record whose `msg` is the dict; free when there are none."""

    def __init__(self, ours: logging.Handler) -> None:
        self._ours = ours
        self._root = logging.getLogger()

    def __call__(
        self, _: object, method: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        handlers = self._root.handlers
        if len(handlers) == 1 and handlers[0] is self._ours:
            return event  # the usual case: nobody else to show it to
        others = [h for h in handlers if h is not self._ours]
        if others:
            level = logging.getLevelName(str(event.get("level", method)).upper())
            levelno = level if isinstance(level, int) else logging.INFO
            record = logging.LogRecord("transfer", levelno, "", 0, dict(event), None, None)
            for handler in others:
                if levelno >= handler.level:
                    handler.handle(record)
        return event
