"""structlog set-up: one JSON object per line (or a console view for people).

`configure` is called once, by the CLI, never at import time. Standard-library loggers
(aiohttp's among them) are routed through the same processors, so every line a process
writes has the same shape: `event`, `level`, `timestamp` (ISO 8601, UTC), context.

Invariants: the stderr handler looks `sys.stderr` up at every write, so a progress
display that redirects stderr (rich's `Live`) prints log lines above itself instead of
through it; a log file's directory is created at the first line, not before, so a
command that fails its flag checks leaves nothing behind.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]


def redactor(secrets: Sequence[str]) -> structlog.types.Processor:
    """Replace every secret (a bearer token) in any string value of an event, tracebacks
    included: aiohttp quotes bad header lines in its own error messages."""
    hidden = [s for s in secrets if s]

    def redact(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = _scrub(value, hidden)
        return event

    return redact


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def configure(
    fmt: LogFormat = "json",
    *,
    log_file: Path | None = None,
    level: str = "info",
    secrets: Sequence[str] = (),
) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty() and log_file is None)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor(secrets),
            renderer,
        ],
    )
    handler: logging.Handler = (
        _FileHandler(log_file) if log_file else logging.StreamHandler(_Stderr())
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())


class _Stderr:
    """`sys.stderr` as it is at each write (see the module's invariants)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _FileHandler(logging.FileHandler):
    """Appends to `path`, creating its directory when the first line is written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True)

    def _open(self) -> io.TextIOWrapper:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()
