"""Pure rules behind downloads and chunk bodies: `transfer.core.ranges` (the `Range` of
`GET /files/{id}`) and `protocol.check_body_length` (a chunk body against its range)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import BadRequest, Code
from transfer.core.protocol import ChunkPlan, check_body_length
from transfer.core.ranges import (
    ByteRange,
    Span,
    SuffixRange,
    parse_range_header,
    select_span,
    unsatisfied_range,
)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=5-", ByteRange(5, None)),
        ("bytes=-5", SuffixRange(5)),
        ("BYTES=1-1", ByteRange(1, 1)),
        ("bytes=007-8", ByteRange(7, 8)),
    ],
)
def test_one_range_parses(value: str, parsed: object) -> None:
    assert parse_range_header(value) == parsed


@pytest.mark.parametrize(
    "value",
    ["", "bytes=", "bytes=-", "bytes=9-0", "bytes=0-1,3-4", "items=0-1", "bytes=٣-4", " bytes=0-1"],
)
def test_anything_else_is_refused(value: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_range_header(value)
    assert refused.value.code == Code.INVALID_RANGE


@pytest.mark.parametrize(
    ("rng", "size", "span"),
    [
        (ByteRange(0, 9), 100, Span(0, 10)),
        (ByteRange(90, 500), 100, Span(90, 10)),
        (ByteRange(99, None), 100, Span(99, 1)),
        (ByteRange(100, None), 100, None),
        (SuffixRange(5), 100, Span(95, 5)),
        (SuffixRange(500), 100, Span(0, 100)),
        (SuffixRange(0), 100, Span(0, 100)),  # aiohttp's reading of `bytes=-0`
        (SuffixRange(5), 0, None),
        (ByteRange(0, None), 0, None),
    ],
)
def test_select_span(rng: ByteRange | SuffixRange, size: int, span: Span | None) -> None:
    assert select_span(rng, size) == span


def test_content_ranges() -> None:
    assert Span(10, 10).content_range(1000) == "bytes 10-19/1000"
    assert unsatisfied_range(1000) == "bytes */1000"


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_a_selected_span_lies_inside_the_file(first: int, length: int, size: int) -> None:
    for rng in (ByteRange(first, first + length), ByteRange(first, None), SuffixRange(length)):
        span = select_span(rng, size)
        if span is not None:
            assert 0 <= span.start < span.start + span.count <= size
            assert span.count >= 1


def test_body_length_against_the_range() -> None:
    plan = ChunkPlan(skip=10, write=90, total=None)
    assert plan.length == 100
    check_body_length(plan, 50, ended=False)
    check_body_length(plan, 100, ended=True)
    with pytest.raises(BadRequest) as refused:
        check_body_length(plan, 101, ended=False)
    assert refused.value.code == Code.BODY_TOO_LONG
    with pytest.raises(BadRequest) as refused:
        check_body_length(plan, 99, ended=True)
    assert refused.value.code == Code.BODY_TOO_SHORT
