"""core/ietf.py: the draft's structured fields, interop versions, length and offset rules."""

from __future__ import annotations

import pytest

from transfer.core import ietf
from transfer.core.errors import Code, ProtocolError
from transfer.core.ietf import Interop
from transfer.core.protocol import UploadState


@pytest.mark.parametrize(
    ("value", "expected"),
    [("?1", True), ("?0", False), (" ?1 ", True), ("?1;a=b", True), (None, None)],
)
def test_booleans(value: str | None, expected: bool | None) -> None:
    assert ietf.parse_boolean(value) is expected


@pytest.mark.parametrize("value", ["1", "true", "?2", "?", "?1 ?0", "yes"])
def test_a_field_that_is_not_a_boolean_is_ignored(value: str) -> None:
    # The draft: "Other values MUST cause the entire header field to be ignored."
    assert ietf.parse_boolean(value) is None


@pytest.mark.parametrize(("value", "expected"), [("0", 0), (" 42 ", 42), ("7;x", 7)])
def test_integers(value: str, expected: int) -> None:
    assert ietf.parse_integer(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "", "1" * 16, "9007199254740993"])
def test_a_field_that_is_not_a_non_negative_integer_is_ignored(value: str) -> None:
    assert ietf.parse_integer(value) is None


def test_interop_versions() -> None:
    assert ietf.parse_interop(None) is None
    assert [ietf.parse_interop(v) for v in ("5", "6", "8")] == list(Interop)
    for bad in ("3", "7", "9", "x"):
        with pytest.raises(ProtocolError) as excinfo:
            ietf.parse_interop(bad)
        assert excinfo.value.code == Code.INTEROP_VERSION_UNSUPPORTED
        assert excinfo.value.status == 400


def test_upload_complete_is_required_and_must_be_a_boolean() -> None:
    assert ietf.require_complete("?1") is True
    for bad in (None, "1", "?yes"):
        with pytest.raises(ProtocolError) as excinfo:
            ietf.require_complete(bad)
        assert excinfo.value.code == Code.UPLOAD_COMPLETE_REQUIRED


def test_upload_offset_is_required() -> None:
    assert ietf.require_offset("12") == 12
    for bad in (None, "-1", "x"):
        with pytest.raises(ProtocolError) as excinfo:
            ietf.require_offset(bad)
        assert excinfo.value.code == Code.INVALID_UPLOAD_OFFSET


def test_the_length_indicators() -> None:
    assert ietf.length_indicator(None, False, 5, 10) is None
    assert ietf.length_indicator("100", False, 5, 10) == 100
    assert ietf.length_indicator(None, True, 5, 10) == 15  # offset + Content-Length
    assert ietf.length_indicator("15", True, 5, 10) == 15
    assert ietf.length_indicator("junk", True, 5, 10) == 15  # ignored, as the draft says
    with pytest.raises(ProtocolError) as excinfo:
        ietf.length_indicator("16", True, 5, 10)  # both given: they MUST match
    assert excinfo.value.code == Code.INCONSISTENT_UPLOAD_LENGTH
    assert excinfo.value.problem()["type"] == ietf.PROBLEM_TYPES + "inconsistent-upload-length"


def test_an_append_at_another_offset_is_409_with_the_draft_problem_type() -> None:
    with pytest.raises(ProtocolError) as excinfo:
        ietf.check_append(UploadState(6, 11), 0, 5, None)
    exc = excinfo.value
    assert (exc.status, exc.code, exc.headers) == (
        409,
        Code.OFFSET_MISMATCH,
        {"Upload-Offset": "6"},
    )
    problem = exc.problem()
    assert problem["type"] == ietf.PROBLEM_TYPES + "mismatching-upload-offset"
    assert (problem["expected-offset"], problem["provided-offset"]) == (6, 0)


def test_an_append_may_not_pass_or_change_the_length() -> None:
    ietf.check_append(UploadState(6, 11), 6, 5, 11)
    with pytest.raises(ProtocolError) as excinfo:
        ietf.check_append(UploadState(6, 11), 6, 6, None)
    assert excinfo.value.code == Code.UPLOAD_LENGTH_EXCEEDED
    for told in (12, 5):  # another length than recorded; one below the stored offset
        with pytest.raises(ProtocolError) as excinfo:
            ietf.check_append(UploadState(6, 11 if told == 12 else None), 6, 0, told)
        assert excinfo.value.code == Code.INCONSISTENT_UPLOAD_LENGTH


def test_upload_limit_by_interop_version() -> None:
    def limits(interop: Interop) -> str | None:
        return ietf.format_limits(interop, max_size=100, max_append=10, remaining=59.5)

    assert limits(Interop.DRAFT_03) is None  # no Upload-Limit in -03
    assert limits(Interop.DRAFT_05) == ("max-size=100, max-append-size=10, expires=59")
    assert limits(Interop.DRAFT_09) == ("max-size=100, max-append-size=10, max-age=59")
    assert ietf.format_limits(Interop.DRAFT_09, max_size=1, max_append=1, remaining=None) == (
        "max-size=1, max-append-size=1"
    )
