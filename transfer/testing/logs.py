"""Following the JSON-lines logs that `transfer` children write (`--log-file`).

`LogFile` reads a file other processes append to, incrementally: each look parses only
the bytes added since the last one, so a chaos run can poll a log of tens of thousands
of lines every few milliseconds.

Invariants: only complete lines (ending in a newline) are parsed; a line still being
written is read on a later look. A line torn by a SIGKILLed writer and glued to the next
run's first line is skipped up to that next line's start, so no event of the new run is
lost. A file that shrank (rewritten from scratch) is read again from its start.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transfer.core.events import Event

LogLine = dict[str, Any]


class LogFile:
    """A structlog JSON-lines file that other processes append to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._events: list[LogLine] = []
        self._lines: list[str] = []  # every complete line as written, newline included
        self._offset = 0

    def events(self) -> list[LogLine]:
        """Every complete line so far, parsed (a new list: the caller may keep it)."""
        self._refresh()
        return list(self._events)

    def count(self) -> int:
        """How many events the file holds now: a mark for `named(..., since=)`."""
        self._refresh()
        return len(self._events)

    def lines(self) -> list[str]:
        """Every complete line as written (newline included), JSON or not."""
        self._refresh()
        return list(self._lines)

    def named(self, event: str, *, since: int = 0) -> list[LogLine]:
        """The `event` lines, from the `since`-th line on."""
        self._refresh()
        return named(self._events[since:], event)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"({self.path} does not exist)"

    def _refresh(self) -> None:
        try:
            with self.path.open("rb") as stream:
                if stream.seek(0, 2) < self._offset:  # rewritten: start again
                    self._events, self._lines, self._offset = [], [], 0
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines(keepends=True):
            self._lines.append(line)
            found = parse_line(line)
            if found is not None:
                self._events.append(found)


def parse_line(line: str) -> LogLine | None:
    """A log line as an object; a torn line glued to the next is skipped up to the next
    line's start; None for anything that is not a JSON object."""
    start = line.find("{")
    while start != -1:
        try:
            doc = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find("{", start + 1)
            continue
        return doc if isinstance(doc, dict) else None
    return None


def named(events: Iterable[LogLine], event: str) -> list[LogLine]:
    return [e for e in events if e.get("event") == event]


def completions(events: Iterable[LogLine]) -> Counter[str]:
    """How often the server logged `upload.completed`, per upload id."""
    return Counter(str(e["upload_id"]) for e in named(events, Event.UPLOAD_COMPLETED))
