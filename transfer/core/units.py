"""Human units for flags: sizes such as `1KiB`, `256KiB`, `1MiB` and durations such as
`1ms`, `20ms`, `1s`, `5m`. Pure functions; errors are `ConfigError` with one line.

Sizes: a bare number is bytes; `K/KiB/M/MiB/G/GiB` are powers of 1024, `kB/MB/GB` powers
of 1000 (the brief's "1kb to 1Mb" is read as KiB/MiB; see the README).
Durations: a bare number is seconds; `us ms s m h` suffixes.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from transfer.core.errors import ConfigError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_DURATION_UNITS = {"": 1.0, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")


def parse_size(text: str) -> int:
    """`"1MiB"` -> 1048576. Raises ConfigError for anything else."""
    number, unit = _split(text, "size")
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ConfigError(f"unknown size unit in {text!r} (use B, KiB, MiB, GiB, kB, MB, GB)")
    try:
        # Exact decimal arithmetic: as floats, 1.001kB was "not whole" and big sizes rounded.
        value = Fraction(number) * factor
    except ValueError as exc:  # more digits than int() will convert
        raise ConfigError(f"size {text!r} is absurdly large") from exc
    if value.denominator != 1:
        raise ConfigError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def parse_duration(text: str) -> float:
    """`"20ms"` -> 0.02 seconds. Raises ConfigError for anything else."""
    number, unit = _split(text, "duration")
    factor = _DURATION_UNITS.get(unit)
    if factor is None:
        raise ConfigError(f"unknown duration unit in {text!r} (use us, ms, s, m, h)")
    seconds = float(number) * factor
    if not math.isfinite(seconds):
        raise ConfigError(f"duration {text!r} is absurdly large")
    return seconds


def _split(text: str, what: str) -> tuple[str, str]:
    match = _NUMBER.fullmatch(text.strip()) if text.isascii() else None
    if match is None:
        raise ConfigError(f"{what} {text!r} is not a number with an optional unit")
    return match.group(1), match.group(2)


def format_size(size: float) -> str:
    """Bytes for people: `1.5 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
