"""Tests for `transfer.protocol`: header parsers and the upload state machine.

The state machine is driven directly, as h11's tests do: every illegal transition must
raise a `ProtocolError` with a stable code and leave the state as it was. A stateful
Hypothesis test checks the module's invariants over random sequences of chunks, against
an independent model that stores real bytes.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from transfer.core.errors import BadRequest, Conflict, ProtocolError, RangeNotSatisfiable
from transfer.core.protocol import (
    MAX_POSITION,
    ChunkPlan,
    ChunkRange,
    ContentRange,
    Phase,
    TotalOnly,
    UploadState,
    check_total,
    format_content_range,
    format_range,
    parse_content_range,
    parse_range_reply,
    plan_chunk,
    validate_id,
)

# --- Content-Range -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 0-9/10", ChunkRange(0, 9, 10)),
        ("bytes 0-0/1", ChunkRange(0, 0, 1)),
        ("bytes 5-9/*", ChunkRange(5, 9, None)),
        ("bytes 0-0/*", ChunkRange(0, 0, None)),
        ("bytes 262144-524287/1000000", ChunkRange(262144, 524287, 1000000)),
        ("bytes */10", TotalOnly(10)),
        ("bytes */0", TotalOnly(0)),
        ("bytes */*", TotalOnly(None)),
        # Outer whitespace is optional whitespace around a header value, not content.
        ("  bytes 0-9/10\t", ChunkRange(0, 9, 10)),
        # The largest numbers accepted: a total of 2**53, so an end of 2**53 - 1.
        (f"bytes */{2**53}", TotalOnly(2**53)),
        (f"bytes 0-{2**53 - 1}/{2**53}", ChunkRange(0, 2**53 - 1, 2**53)),
        (f"bytes {2**53 - 1}-{2**53 - 1}/*", ChunkRange(2**53 - 1, 2**53 - 1, None)),
    ],
)
def test_parse_content_range_accepts_every_form(header: str, expected: ContentRange) -> None:
    assert parse_content_range(header) == expected


def test_chunk_range_length_is_inclusive() -> None:
    assert ChunkRange(0, 0, None).length == 1
    assert ChunkRange(0, 9, 10).length == 10
    assert ChunkRange(5, 9, None).length == 5


@pytest.mark.parametrize(
    "header",
    [
        "",
        " ",
        "bytes",
        "bytes ",
        "0-9/10",  # missing unit
        "bytes0-9/10",
        "bytes=0-9/10",
        "items 0-9/10",  # other units
        "bits 0-9/10",
        "bytes 0-9",  # no total
        "bytes 0-9/",
        "bytes */",
        "bytes 0-/10",
        "bytes -9/10",
        "bytes 9-0/10",  # end < start
        "bytes 1-0/*",
        "bytes 0-10/10",  # end >= total
        "bytes 5-9/5",
        "bytes 0-0/0",
        "bytes +0-9/10",  # signs
        "bytes -1-9/10",
        "bytes 0-+9/10",
        "bytes 0-9/+10",
        "bytes 0-9/-10",
        "bytes */-1",
        "bytes */+1",
        "bytes  0-9/10",  # spaces inside
        "bytes 0 -9/10",
        "bytes 0- 9/10",
        "bytes 0-9 /10",
        "bytes 0-9/ 10",
        "bytes * /10",
        "bytes\t0-9/10",
        "bytes 00-9/10",  # leading zeros
        "bytes 0-09/10",
        "bytes 0-9/010",
        "bytes */010",
        "bytes */00",
        "bytes 0x0-0x9/10",
        "bytes 0-9/10, bytes 10-19/20",
        "bytes 0-9/1e3",
        "bytes 0.0-9/10",
        "bytes 0-9/*/*",
        "bytes */*/10",
        "bytes 0-9/10\x00",
        "bytes 0-9/10\nX",
        # absurd lengths: more than 16 digits, or beyond 2**53
        "bytes 0-9/10000000000000000000",
        "bytes 0-10000000000000000/*",
        "bytes */99999999999999999",
        f"bytes */{2**53 + 1}",
        f"bytes 0-{2**53}/*",
        f"bytes {2**53}-{2**53}/*",
        f"bytes 0-9/{2**53 + 1}",
        # non-ASCII digits and lookalikes
        "bytes \N{ARABIC-INDIC DIGIT THREE}-5/10",  # Arabic-Indic three
        "bytes 0-\N{ARABIC-INDIC DIGIT FIVE}/10",
        "bytes */\N{ARABIC-INDIC DIGIT ONE}\N{ARABIC-INDIC DIGIT ZERO}",
        "bytes \N{FULLWIDTH DIGIT THREE}-5/10",  # fullwidth three
        "bytes 0-9/\N{FULLWIDTH DIGIT ONE}\N{FULLWIDTH DIGIT ZERO}",
        "bytes 0-9/10\N{SUPERSCRIPT TWO}",  # superscript two
        "bytes \N{SUPERSCRIPT TWO}-9/10",
        "bytes 0-9/\N{SUPERSCRIPT ONE}\N{SUPERSCRIPT ZERO}",
        "bytes 0\N{EN DASH}9/10",
        "bytes\N{NO-BREAK SPACE}0-9/10",
        "bytes 0-9/10\N{NO-BREAK SPACE}",
        "bytes \N{MATHEMATICAL BOLD DIGIT ZERO}-9/10",  # mathematical bold zero
    ],
)
def test_parse_content_range_rejects(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_content_range(header)
    assert info.value.code == "invalid_content_range"
    assert info.value.status == 400


def _positions(max_value: int = MAX_POSITION) -> st.SearchStrategy[int]:
    # Mix small numbers with ones near the limits so both regions are exercised.
    return st.one_of(
        st.integers(0, 1000),
        st.integers(0, max_value),
        st.integers(max(0, max_value - 1000), max_value),
    )


@st.composite
def content_ranges(draw: st.DrawFn) -> ContentRange:
    """Any valid Content-Range value, within the parser's limits."""
    if draw(st.booleans()):
        return TotalOnly(draw(st.none() | _positions()))
    end = draw(_positions(MAX_POSITION - 1))
    start = draw(st.integers(0, end) | st.integers(max(0, end - 1000), end))
    total = draw(st.none() | st.integers(end + 1, MAX_POSITION) | st.just(end + 1))
    return ChunkRange(start, end, total)


@given(content_ranges())
def test_format_then_parse_round_trips(rng: ContentRange) -> None:
    text = format_content_range(rng)
    assert text.isascii()
    assert parse_content_range(text) == rng


@given(content_ranges())
def test_parse_then_format_is_identity(rng: ContentRange) -> None:
    # Canonical text (written here by hand, not by the formatter) survives parse + format.
    total = "*" if rng.total is None else str(rng.total)
    if isinstance(rng, TotalOnly):
        text = f"bytes */{total}"
    else:
        text = f"bytes {rng.start}-{rng.end}/{total}"
    assert format_content_range(parse_content_range(text)) == text


@given(st.text(alphabet="bytes 0123456789-/*+,=\t", max_size=30) | st.text(max_size=30))
def test_parse_content_range_fails_only_with_bad_request(text: str) -> None:
    try:
        rng = parse_content_range(text)
    except BadRequest as exc:
        assert exc.code == "invalid_content_range"
    else:
        # Whatever parses is well formed and prints back to the same (stripped) text.
        assert format_content_range(rng) == text.strip()
        if isinstance(rng, ChunkRange):
            assert 0 <= rng.start <= rng.end < MAX_POSITION
            assert rng.total is None or rng.end < rng.total <= MAX_POSITION


def test_format_content_range_examples() -> None:
    assert format_content_range(ChunkRange(0, 9, 10)) == "bytes 0-9/10"
    assert format_content_range(ChunkRange(10, 19, None)) == "bytes 10-19/*"
    assert format_content_range(TotalOnly(20)) == "bytes */20"
    assert format_content_range(TotalOnly(None)) == "bytes */*"


# --- Range replies -------------------------------------------------------------------------


def test_format_range() -> None:
    assert format_range(0) is None
    assert format_range(1) == "bytes=0-0"
    assert format_range(10) == "bytes=0-9"
    assert format_range(262144) == "bytes=0-262143"


@pytest.mark.parametrize(
    ("header", "offset"),
    [
        (None, 0),
        ("bytes=0-0", 1),
        ("bytes=0-9", 10),
        ("bytes=0-262143", 262144),
        (f"bytes=0-{2**53 - 1}", 2**53),
        (" bytes=0-9 ", 10),
    ],
)
def test_parse_range_reply(header: str | None, offset: int) -> None:
    assert parse_range_reply(header) == offset


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes=",
        "bytes=0-",
        "bytes=1-9",  # must start at 0
        "bytes=0-9/10",
        "bytes 0-9",
        "bytes=0-09",
        "bytes=0--9",
        "bytes=0-+9",
        "bytes=0-9,20-29",
        "items=0-9",
        "bytes=0-\N{ARABIC-INDIC DIGIT NINE}",
        "bytes=0-\N{FULLWIDTH DIGIT NINE}",
        "bytes=0-9\N{SUPERSCRIPT TWO}",
        "bytes=0-10000000000000000",
        f"bytes=0-{2**53}",  # would acknowledge more than MAX_POSITION bytes
        "garbage",
    ],
)
def test_parse_range_reply_rejects(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_range_reply(header)
    assert info.value.code == "invalid_range"


@given(st.integers(0, MAX_POSITION))
def test_range_reply_round_trips(offset: int) -> None:
    assert parse_range_reply(format_range(offset)) == offset


# --- Upload ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upload_id",
    ["a", "Z", "0", "_", "-", "abc-DEF_123", "a" * 64, "-" * 64, "upload_2024-01-01"],
)
def test_validate_id_accepts(upload_id: str) -> None:
    assert validate_id(upload_id) == upload_id


@pytest.mark.parametrize(
    "upload_id",
    [
        "",
        "a" * 65,
        "../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "%2F",
        "a%2Fb",
        "a\n",  # `$` would let a trailing newline through; fullmatch must not
        "\na",
        "a\r",
        "a\x00",
        " ",
        "a b",
        " a",
        "\N{LATIN SMALL LETTER E WITH ACUTE}",
        "\N{LATIN SMALL LETTER U WITH DIAERESIS}nicode",
        "\N{FULLWIDTH LATIN SMALL LETTER A}",  # fullwidth a
        "\N{ARABIC-INDIC DIGIT THREE}",  # Arabic-Indic digit
        "a.b",
        "a:b",
        "\N{KELVIN SIGN}",  # Kelvin sign, folds to 'k' under IGNORECASE
    ],
)
def test_validate_id_rejects(upload_id: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_id(upload_id)
    assert info.value.code == "invalid_id"


@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
def test_validate_id_accepts_the_whole_alphabet(upload_id: str) -> None:
    assert validate_id(upload_id) == upload_id


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@given(st.text(max_size=70))
def test_validate_id_matches_its_definition(upload_id: str) -> None:
    valid = 1 <= len(upload_id) <= 64 and set(upload_id) <= _ID_CHARS
    try:
        validate_id(upload_id)
    except BadRequest:
        assert not valid
    else:
        assert valid


# --- UploadState ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (UploadState(), Phase.EMPTY),
        (UploadState(0, None), Phase.EMPTY),
        (UploadState(0, 10), Phase.EMPTY),
        (UploadState(5, None), Phase.PARTIAL),
        (UploadState(5, 10), Phase.PARTIAL),
        (UploadState(9, 10), Phase.PARTIAL),
        (UploadState(10, 10), Phase.COMPLETE),
        (UploadState(0, 0), Phase.COMPLETE),  # an empty file, declared empty
    ],
)
def test_upload_state_phase(state: UploadState, phase: Phase) -> None:
    assert state.phase is phase
    assert state.complete is (phase is Phase.COMPLETE)


@pytest.mark.parametrize(
    ("offset", "total"),
    [(-1, None), (-1, 10), (11, 10), (1, 0), (0, -1), (-5, -5)],
)
def test_upload_state_rejects_impossible_states(offset: int, total: int | None) -> None:
    with pytest.raises(ValueError, match="impossible upload state"):
        UploadState(offset, total)


def test_upload_state_is_frozen() -> None:
    state = UploadState(1, 2)
    with pytest.raises(AttributeError):
        state.offset = 2  # type: ignore[misc]


# --- check_total ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "total", "expected"),
    [
        (UploadState(), None, None),  # nothing declared, nothing known
        (UploadState(5, 10), None, 10),  # None keeps what is known
        (UploadState(5, None), None, None),
        (UploadState(), 10, 10),  # first declaration
        (UploadState(5, None), 5, 5),  # declared exactly at the offset
        (UploadState(5, None), 10, 10),
        (UploadState(5, 10), 10, 10),  # repeating the known total is fine
        (UploadState(), 0, 0),
    ],
)
def test_check_total_accepts(state: UploadState, total: int | None, expected: int | None) -> None:
    assert check_total(state, total) == expected


@pytest.mark.parametrize(
    ("state", "total"),
    [
        (UploadState(5, 10), 11),  # a known total never changes...
        (UploadState(5, 10), 9),
        (UploadState(10, 10), 20),  # ...not even once complete
        (UploadState(0, 0), 1),
        (UploadState(5, None), 4),  # below what is already stored
        (UploadState(1, None), 0),
    ],
)
def test_check_total_rejects(state: UploadState, total: int) -> None:
    with pytest.raises(Conflict) as info:
        check_total(state, total)
    assert info.value.code == "total_mismatch"
    assert info.value.status == 409


# --- plan_chunk ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "rng", "plan", "after"),
    [
        # exactly at the offset: write it all
        (UploadState(), ChunkRange(0, 9, None), ChunkPlan(0, 10, None), UploadState(10, None)),
        (UploadState(10), ChunkRange(10, 19, None), ChunkPlan(0, 10, None), UploadState(20)),
        (UploadState(10), ChunkRange(10, 19, 20), ChunkPlan(0, 10, 20), UploadState(20, 20)),
        (UploadState(10, 30), ChunkRange(10, 19, None), ChunkPlan(0, 10, 30), UploadState(20, 30)),
        (UploadState(10, 30), ChunkRange(10, 19, 30), ChunkPlan(0, 10, 30), UploadState(20, 30)),
        # an overlapping retry: skip the stored prefix, write the rest
        (UploadState(10), ChunkRange(5, 14, None), ChunkPlan(5, 5, None), UploadState(15)),
        (UploadState(10), ChunkRange(0, 19, 20), ChunkPlan(10, 10, 20), UploadState(20, 20)),
        (UploadState(10, 20), ChunkRange(9, 10, None), ChunkPlan(1, 1, 20), UploadState(11, 20)),
        # a chunk already fully stored: write nothing
        (UploadState(10), ChunkRange(0, 9, None), ChunkPlan(10, 0, None), UploadState(10)),
        (UploadState(10), ChunkRange(3, 4, None), ChunkPlan(2, 0, None), UploadState(10)),
        (UploadState(10, 10), ChunkRange(0, 9, 10), ChunkPlan(10, 0, 10), UploadState(10, 10)),
        (UploadState(10, 10), ChunkRange(9, 9, None), ChunkPlan(1, 0, 10), UploadState(10, 10)),
        # a stale retry can still declare the total, which completes the upload
        (UploadState(10), ChunkRange(0, 4, 10), ChunkPlan(5, 0, 10), UploadState(10, 10)),
    ],
)
def test_plan_chunk(
    state: UploadState, rng: ChunkRange, plan: ChunkPlan, after: UploadState
) -> None:
    assert plan_chunk(state, rng) == plan
    assert plan.after(state) == after


@pytest.mark.parametrize(
    ("state", "rng", "error", "code"),
    [
        (UploadState(), ChunkRange(1, 9, None), Conflict, "offset_gap"),
        (UploadState(10), ChunkRange(11, 19, None), Conflict, "offset_gap"),
        (UploadState(10, 30), ChunkRange(11, 19, 30), Conflict, "offset_gap"),
        (UploadState(10, 30), ChunkRange(11, 19, None), Conflict, "offset_gap"),
        (UploadState(10, 30), ChunkRange(10, 19, 31), Conflict, "total_mismatch"),
        (UploadState(10, 30), ChunkRange(10, 19, 29), Conflict, "total_mismatch"),
        (UploadState(20), ChunkRange(0, 9, 10), Conflict, "total_mismatch"),  # below offset
        (UploadState(10, 15), ChunkRange(10, 19, None), RangeNotSatisfiable, "range_past_total"),
        (UploadState(10, 15), ChunkRange(10, 15, None), RangeNotSatisfiable, "range_past_total"),
        (UploadState(10, 10), ChunkRange(10, 10, None), RangeNotSatisfiable, "range_past_total"),
        (UploadState(0, 0), ChunkRange(0, 0, None), RangeNotSatisfiable, "range_past_total"),
        # Not produced by the parser, but the planner must not trust its input.
        (UploadState(), ChunkRange(0, 10, 10), RangeNotSatisfiable, "range_past_total"),
    ],
)
def test_plan_chunk_refuses(
    state: UploadState, rng: ChunkRange, error: type[ProtocolError], code: str
) -> None:
    before = UploadState(state.offset, state.total)
    with pytest.raises(error) as info:
        plan_chunk(state, rng)
    assert info.value.code == code
    assert state == before


def test_error_statuses() -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        plan_chunk(UploadState(0, 5), ChunkRange(0, 5, None))
    assert info.value.status == 416
    with pytest.raises(Conflict) as gap:
        plan_chunk(UploadState(), ChunkRange(3, 5, None))
    assert gap.value.status == 409


def test_whole_file_in_fixed_chunks_completes() -> None:
    total, size = 1000, 64
    state = UploadState()
    written = 0
    for start in range(0, total, size):
        end = min(start + size, total) - 1
        last = end == total - 1
        rng = parse_content_range(f"bytes {start}-{end}/{total if last else '*'}")
        assert isinstance(rng, ChunkRange)
        plan = plan_chunk(state, rng)
        assert plan.skip == 0
        written += plan.write
        state = plan.after(state)
        assert state.complete is last
    assert state == UploadState(total, total)
    assert written == total


# --- random sequences: a stateful model ------------------------------------------------------

SOURCE = bytes((i * 7 + 3) % 251 for i in range(400))
"""The file a simulated client uploads; chunks are slices of it."""


class UploadMachine(RuleBasedStateMachine):
    """Applies random chunks and declarations; checks the protocol against a byte model.

    The model is the simplest possible: `stored` is the bytes a server would have written.
    A chunk is acceptable iff it starts at or before the end of `stored`, agrees with any
    known total, and ends before it; then `stored` grows to `max(len, end + 1)`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = UploadState()
        self.stored = bytearray()
        self.written = 0
        self.history: list[UploadState] = [self.state]

    def _apply_refusal_check(self, before: UploadState, exc: ProtocolError, code: str) -> None:
        assert exc.code == code, (exc.code, code)
        assert self.state == before

    @rule(
        delta=st.integers(-40, 8),
        length=st.integers(1, 60),
        total=st.none() | st.integers(0, len(SOURCE)) | st.just(len(SOURCE)),
    )
    def send_chunk(self, delta: int, length: int, total: int | None) -> None:
        start = max(0, self.state.offset + delta)
        end = min(start + length, len(SOURCE)) - 1
        if end < start:
            return
        rng = ChunkRange(start, end, total)
        before = self.state
        expected_total = self.state.total if total is None else total
        expected: str | None = None
        if total is not None and (
            (self.state.total is not None and total != self.state.total) or len(self.stored) > total
        ):
            expected = "total_mismatch"
        elif expected_total is not None and end >= expected_total:
            expected = "range_past_total"
        elif start > len(self.stored):
            expected = "offset_gap"
        try:
            plan = plan_chunk(self.state, rng)
        except ProtocolError as exc:
            self._apply_refusal_check(before, exc, expected or "<accepted>")
            return
        assert expected is None, expected
        assert plan.total == expected_total
        body = SOURCE[start : end + 1]
        assert 0 <= plan.skip <= len(body)
        assert plan.skip + plan.write == len(body)
        self.stored += body[plan.skip : plan.skip + plan.write]
        self.written += plan.write
        self.state = plan.after(self.state)
        assert len(self.stored) == max(before.offset, end + 1)
        self.history.append(self.state)

    @rule(total=st.none() | st.integers(0, len(SOURCE)))
    def declare_total(self, total: int | None) -> None:
        before = self.state
        expected_ok = total is None or (
            (self.state.total is None or self.state.total == total) and len(self.stored) <= total
        )
        try:
            known = check_total(self.state, total)
        except Conflict as exc:
            assert not expected_ok
            self._apply_refusal_check(before, exc, "total_mismatch")
            return
        assert expected_ok
        assert known == (self.state.total if total is None else total)
        self.state = UploadState(self.state.offset, known)
        self.history.append(self.state)

    @rule(header=st.sampled_from(["bytes */*", "bytes 0-0/*"]))
    def round_trip_through_headers(self, header: str) -> None:
        # Going through the parser changes nothing about what the planner decides.
        rng = parse_content_range(header)
        if isinstance(rng, ChunkRange) and self.state.total != 0:
            assert plan_chunk(self.state, rng).skip == (1 if self.state.offset else 0)

    @invariant()
    def stored_bytes_are_the_source_prefix(self) -> None:
        assert self.stored == SOURCE[: len(self.stored)]
        assert self.written == self.state.offset == len(self.stored)

    @invariant()
    def offset_never_decreases_nor_passes_the_total(self) -> None:
        for earlier, later in itertools.pairwise(self.history):
            assert later.offset >= earlier.offset
            if earlier.total is not None:
                assert later.total == earlier.total
        if self.state.total is not None:
            assert self.state.offset <= self.state.total

    @invariant()
    def phase_matches_offset(self) -> None:
        if self.state.total is not None and self.state.offset == self.state.total:
            assert self.state.phase is Phase.COMPLETE
        elif self.state.offset == 0:
            assert self.state.phase is Phase.EMPTY
        else:
            assert self.state.phase is Phase.PARTIAL


TestUploadMachine = UploadMachine.TestCase
