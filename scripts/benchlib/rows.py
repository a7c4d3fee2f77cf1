"""The report's rows: a figure's runs, its median, the reference it is compared with and
the target it is held against, rendered as one Markdown table.

Invariants: nothing is asserted; a target is reported met, missed or (no figure) blank.
Medians are of the rounds; a ratio is a ratio of medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from benchlib.plan import GiB, KiB, MiB, Sample

Op = Literal["<=", ">="]


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    on: Literal["value", "ratio"]
    op: Op
    limit: float

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None:
            return None
        return subject <= self.limit if self.op == "<=" else subject >= self.limit


@dataclass(frozen=True, slots=True)
class Row:
    rid: str
    what: str
    unit: str
    values: tuple[float, ...]
    reference: str = ""
    ref_median: float | None = None
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ratio(self) -> float | None:
        if self.median is None or not self.ref_median:
            return None
        return self.median / self.ref_median

    def cells(self) -> list[str]:
        met = self.target.met(self.median, self.ratio) if self.target else None
        runs = " / ".join(num(v) for v in self.values) or "skipped"
        ratio = f"{self.ratio:.2f}" if self.ratio is not None else ""
        verdict = {True: "**met**", False: "**missed**", None: ""}[met]
        return [
            self.rid,
            self.what,
            num(self.median) if self.median is not None else "n/a",
            self.unit,
            runs,
            f"{ratio} {self.reference}".strip(),
            self.target.text if self.target else "",
            verdict,
            self.note,
        ]


def num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


HEADER = ["id", "what", "median", "unit", "runs", "ratio (vs)", "target", "met", "notes"]


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def label(size: int) -> str:
    if size >= GiB and size % GiB == 0:
        return f"{size // GiB}GiB"
    return f"{size // MiB}MiB" if size % MiB == 0 else f"{size // KiB}KiB"


@dataclass(slots=True)
class Figures:
    """Sample lookups by measurement key and figure name."""

    samples: dict[str, list[Sample]]

    def values(self, key: str, name: str) -> tuple[float, ...]:
        return tuple(s[name] for s in self.samples.get(key, []) if name in s)

    def median(self, key: str, name: str) -> float | None:
        found = self.values(key, name)
        return statistics.median(found) if found else None
