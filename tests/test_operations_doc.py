"""docs/operations.md's event table and the code's event registry never drift.

`transfer.core.events.Event` is the registry. The side of each member is where the code
logs it (server: transfer/server, transfer/store, transfer/cli/serve.py; sender:
transfer/sender, transfer/cli/send.py), found by reading the sources for
`log.<level>(Event.NAME` calls, which also gives the level a row may mention.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from transfer.core.events import Event

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
_CALL = re.compile(r"\.(debug|info|warning|error|exception|critical)\(\s*Event\.([A-Z_]+)\b")
_NAME = re.compile(r"[a-z_]+(?:\.[a-z_]+)*")
_SIDES = {
    "server": ("transfer/server/", "transfer/store/", "transfer/cli/serve.py"),
    "sender": ("transfer/sender/", "transfer/cli/send.py"),
}


def emitted() -> dict[Event, set[tuple[str, str]]]:
    """Each member -> the (side, level) pairs of the calls that log it."""
    found: dict[Event, set[tuple[str, str]]] = defaultdict(set)
    for path in sorted((ROOT / "transfer").rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        side = next((s for s, roots in _SIDES.items() if where.startswith(roots)), None)
        for level, name in _CALL.findall(path.read_text()):
            if side is not None:
                found[Event[name]].add((side, level))
    return found


def documented() -> list[tuple[str, str, str]]:
    """(side, event name, the row's whole events cell) for each event of the table."""
    rows: list[tuple[str, str, str]] = []
    for line in DOC.read_text().split("## Logs", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in _SIDES:
            names = [t for t in re.findall(r"`([^`]+)`", cells[1]) if _NAME.fullmatch(t)]
            rows += [(cells[0], name, cells[1]) for name in names]
    return rows


def test_the_table_parses() -> None:
    rows = documented()
    assert len(rows) >= 20
    assert ("sender", "chunk.sent") in {(side, name) for side, name, _ in rows}


def test_every_name_in_the_table_is_a_member() -> None:
    members = {e.value for e in Event}
    strangers = sorted({name for _, name, _ in documented() if name not in members})
    assert not strangers, f"docs/operations.md lists events the code does not have: {strangers}"


def test_every_member_is_logged_somewhere() -> None:
    silent = sorted(e.value for e in Event if e not in emitted())
    assert not silent, f"members no code logs (remove them or log them): {silent}"


def test_every_member_is_in_the_table_on_its_side() -> None:
    sides = emitted()
    listed: dict[str, set[str]] = defaultdict(set)
    for side, name, _ in documented():
        listed[name].add(side)
    for member in Event:
        want = {side for side, _ in sides[member]}
        assert listed[member.value], f"{member.value} is missing from docs/operations.md"
        assert listed[member.value] == want, (member.value, listed[member.value], want)


def test_a_level_the_table_names_is_the_level_logged() -> None:
    levels = {e.value: {level for _, level in pairs} for e, pairs in emitted().items()}
    for _, name, cell in documented():
        for level in ("debug", "info", "warning", "error"):
            if re.search(rf"\({level}\b", cell):
                assert levels.get(name) == {level}, (name, cell, levels.get(name))
