"""A few Prometheus metrics rendered in the text exposition format, no dependency.

Invariants: counters only go up; label sets are small and fixed by the code (never
derived from client input such as ids), so cardinality stays bounded. A described
counter or gauge always exports a sample: until it has a series of its own it renders
as one unlabelled `name 0`, so a scraper sees 0 rather than "absent" (which alerts and
`rate()` treat differently).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters, gauges and histograms, each with a help text."""

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._collectors: list[Callable[[], None]] = []

    def collect(self, refresh: Callable[[], None]) -> None:
        """Call `refresh` before every render: for gauges read off live state (open
        connections by state), cheaper to compute when scraped than on every change."""
        self._collectors.append(refresh)

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = _key(labels)
        series = self._values[name]
        series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][_key(labels)] = value

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(_key(labels), 0.0)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Count `value` in its one bucket (`counts[i]`: those above `_BUCKETS[i-1]` and
        at most `_BUCKETS[i]`; `counts[-2]`: above them all) and add it to the sum
        (`counts[-1]`); `render` accumulates the buckets as Prometheus wants them."""
        counts = self._hist[name].setdefault(_key(labels), [0.0] * (len(_BUCKETS) + 2))
        counts[bisect.bisect_left(_BUCKETS, value)] += 1
        counts[-1] += value

    def render(self) -> str:
        for refresh in self._collectors:
            refresh()
        lines: list[str] = []
        for name in sorted(self._help.keys() | self._values.keys() | self._hist.keys()):
            kind, text = self._help.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            series = self._values.get(name) or _zero(kind)
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_fmt(labels)} {_num(value)}")
            for labels, counts in sorted(self._hist.get(name, {}).items()):
                lines += _histogram_lines(name, labels, counts)
        return "\n".join(lines) + "\n"


def _zero(kind: str) -> dict[Labels, float]:
    """The sample of a counter or gauge nothing has touched yet."""
    return {(): 0.0} if kind in ("counter", "gauge") else {}


def _histogram_lines(name: str, labels: Labels, counts: list[float]) -> list[str]:
    lines, total = [], 0.0
    for bound, count in zip(_BUCKETS, counts, strict=False):
        total += count
        lines.append(f"{name}_bucket{_fmt((*labels, ('le', str(bound))))} {_num(total)}")
    total += counts[-2]
    lines.append(f"{name}_bucket{_fmt((*labels, ('le', '+Inf')))} {_num(total)}")
    lines.append(f"{name}_count{_fmt(labels)} {_num(total)}")
    lines.append(f"{name}_sum{_fmt(labels)} {counts[-1]!r}")
    return lines


def _key(labels: dict[str, str]) -> Labels:
    if len(labels) < 2:  # most calls: nothing to sort
        return tuple(labels.items())
    return tuple(sorted(labels.items()))


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
