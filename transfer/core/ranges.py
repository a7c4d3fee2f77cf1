"""`Range` requests on a published file (RFC 9110 section 14), as pure values: no I/O.

`GET /files/{id}` answers one byte range. The rules are the ones aiohttp's
`FileResponse` applied before downloads went through the store seam, kept exactly:

- `bytes=A-B`, `bytes=A-` and `bytes=-N` (the last N bytes); the unit is matched without
  regard to case, numbers are ASCII digits. Anything else (several ranges, another unit,
  B before A, `bytes=-`) is unsatisfiable: 416.
- B at or past the end is read as the end; a suffix longer than the file is the file.
- A range starting at or past the end is unsatisfiable, so is every range of an empty
  file. `bytes=-0` reads as `bytes=0-` (aiohttp's reading, kept for compatibility).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transfer.core.errors import BadRequest, Code

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """`bytes=first-last` (`last` inclusive, None: to the end)."""

    first: int
    last: int | None


@dataclass(frozen=True, slots=True)
class SuffixRange:
    """`bytes=-length`: the file's last `length` bytes."""

    length: int


RangeRequest = ByteRange | SuffixRange


@dataclass(frozen=True, slots=True)
class Span:
    """The bytes a range selects in a file: `count` bytes from `start`."""

    start: int
    count: int

    def content_range(self, size: int) -> str:
        """The `Content-Range` of a 206 carrying this span."""
        return f"bytes {self.start}-{self.start + self.count - 1}/{size}"


def unsatisfied_range(size: int) -> str:
    """The `Content-Range` of a 416: `bytes */size`."""
    return f"bytes */{size}"


def parse_range_header(value: str) -> RangeRequest:
    """Parse a request's `Range` header (one range only).

    Raises:
        BadRequest: `invalid_range` for any other form, several ranges or unit; B < A.
    """
    match = _RANGE.fullmatch(value)
    if match is None:
        raise BadRequest(Code.INVALID_RANGE, f"Range {value!r} is not one 'bytes=' range")
    first, last = match.group(1), match.group(2)
    if not first and not last:
        raise BadRequest(Code.INVALID_RANGE, "Range names neither a start nor an end")
    if not first:
        return SuffixRange(int(last))
    rng = ByteRange(int(first), int(last) if last else None)
    if rng.last is not None and rng.last < rng.first:
        raise BadRequest(Code.INVALID_RANGE, f"Range end {rng.last} is before {rng.first}")
    return rng


def select_span(rng: RangeRequest, size: int) -> Span | None:
    """The bytes `rng` selects in a file of `size` bytes; None when unsatisfiable."""
    if isinstance(rng, SuffixRange):
        start = max(size - rng.length, 0) if rng.length else 0
        end = size
    else:
        start = rng.first
        end = size if rng.last is None else min(rng.last + 1, size)
    if start >= size:
        return None
    return Span(start, end - start)
