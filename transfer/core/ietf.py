"""IETF "Resumable Uploads for HTTP" headers as pure values and parsers: no I/O.

draft-ietf-httpbis-resumable-upload, in the three interop versions this server speaks
(`Upload-Draft-Interop-Version`, an sf-integer the client sends on every request):

    5   draft -03           what tus-js-client 4 sends as `protocol: 'ietf-draft-03'`
    6   drafts -04 and -05  tus-js-client 4's `ietf-draft-05`; PATCH must carry
                            `Content-Type: application/partial-upload`; `Upload-Limit`
    8   drafts -09 to -12   the latest text read whole; `Upload-Limit` uses `max-age`
                            where 6 used `expires`
    (absent)                a final-RFC client: the latest rules, never a 104 (the draft
                            forbids 104 on a missing or mismatching interop version)

The fields (RFC 9651 structured fields):

    Upload-Complete: ?1 | ?0   Boolean: this request carries the end of the data
    Upload-Offset: N           Integer: where the request's content starts
    Upload-Length: N           Integer: the whole representation's length
    Upload-Limit: max-size=N, max-append-size=N, max-age=S   (a Dictionary; answered)

Invariants:
- The draft says a field whose value is not of its type "MUST cause the entire header
  field to be ignored": `parse_boolean` and `parse_integer` return None for it, exactly
  as for an absent field; what a request then lacks is refused where it is required
  (`upload_complete_required`, `invalid_upload_offset`).
- `length_indicator` is the one place the two ways of telling the length meet
  (`Upload-Length`, or `Upload-Complete: ?1` with `Content-Length`): when both are
  given they must agree, else `inconsistent_upload_length`, before a byte is read.
- `check_append` refuses, before a byte is read, every append the stored state rules
  out: a wrong offset (409, answered with the real offset and the draft's
  `mismatching-upload-offset` problem type) and data past a known length.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

from transfer.core.errors import BadRequest, Code, Conflict, PayloadTooLarge
from transfer.core.protocol import MAX_POSITION, UploadState

PROTOCOL = "ietf"  # UploadSpec.protocol and the metrics' `protocol` label
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"


class Interop(enum.IntEnum):
    """An `Upload-Draft-Interop-Version` this server implements."""

    DRAFT_03 = 5
    DRAFT_05 = 6
    DRAFT_09 = 8  # drafts -09 to -12

    @property
    def needs_media_type(self) -> bool:
        """PATCH must say `application/partial-upload` (draft -04 on)."""
        return self >= Interop.DRAFT_05

    @property
    def has_limits(self) -> bool:
        """`Upload-Limit` exists (draft -04 on)."""
        return self >= Interop.DRAFT_05


LATEST = Interop.DRAFT_09

_PARAMS = r"(?:;\s*[a-z*][a-z0-9_.*-]*(?:=[^;]*)?)*"
_BOOLEAN = re.compile(rf"\?([01]){_PARAMS}")
_INTEGER = re.compile(rf"(-?[0-9]{{1,15}}){_PARAMS}")


def parse_boolean(value: str | None) -> bool | None:
    """An sf-boolean (`?1`, `?0`, parameters ignored); None when absent or not one."""
    if value is None:
        return None
    match = _BOOLEAN.fullmatch(value.strip(" \t"))
    return None if match is None else match.group(1) == "1"


def parse_integer(value: str | None) -> int | None:
    """A non-negative sf-integer up to 2^53 (the engine's positions); None when absent
    or anything else (a negative number included)."""
    if value is None:
        return None
    match = _INTEGER.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    number = int(match.group(1))
    return number if 0 <= number <= MAX_POSITION else None


def parse_interop(value: str | None) -> Interop | None:
    """`Upload-Draft-Interop-Version`: None when absent.

    Raises:
        BadRequest: `interop_version_unsupported` for any version but 5, 6 and 8.
    """
    if value is None:
        return None
    number = parse_integer(value)
    if number is None or number not in Interop._value2member_map_:
        supported = ", ".join(str(v.value) for v in Interop)
        raise BadRequest(
            Code.INTEROP_VERSION_UNSUPPORTED,
            f"Upload-Draft-Interop-Version {value!r} is not one of {supported}",
        )
    return Interop(number)


def require_complete(value: str | None) -> bool:
    """`Upload-Complete`, which creation and append requests must carry.

    Raises:
        BadRequest: `upload_complete_required` when absent or not `?0`/`?1`.
    """
    complete = parse_boolean(value)
    if complete is None:
        shown = "absent" if value is None else repr(value)
        raise BadRequest(
            Code.UPLOAD_COMPLETE_REQUIRED, f"Upload-Complete must be ?0 or ?1 (it is {shown})"
        )
    return complete


def require_offset(value: str | None) -> int:
    """`Upload-Offset`, which an append must carry.

    Raises:
        BadRequest: `invalid_upload_offset` when absent or not a non-negative integer.
    """
    offset = parse_integer(value)
    if offset is None:
        raise BadRequest(
            Code.INVALID_UPLOAD_OFFSET, "an append needs Upload-Offset: a non-negative integer"
        )
    return offset


def length_indicator(
    upload_length: str | None, complete: bool, offset: int, content_length: int
) -> int | None:
    """The representation's length a request tells, or None when it tells none.

    Raises:
        BadRequest: `inconsistent_upload_length` when `Upload-Length` and
            `Upload-Complete: ?1` plus `Content-Length` disagree.
    """
    declared = parse_integer(upload_length)
    implied = offset + content_length if complete else None
    if declared is not None and implied is not None and declared != implied:
        raise InconsistentLength(
            f"Upload-Length {declared} but Upload-Complete: ?1 ends the data at {implied}"
        )
    return declared if declared is not None else implied


def check_append(state: UploadState, offset: int, length: int, told: int | None) -> None:
    """Whether `length` bytes at `offset`, with length indicator `told`, may be appended.

    Raises:
        Conflict: `offset_mismatch` (with the real `Upload-Offset`).
        BadRequest: `inconsistent_upload_length` when `told` differs from the known length
            or lies below the stored offset.
        PayloadTooLarge: `upload_length_exceeded` when the data runs past the length.
    """
    if offset != state.offset:
        raise OffsetMismatch(state.offset, offset)
    known = state.total
    if told is not None and ((known is not None and told != known) or told < state.offset):
        raise InconsistentLength(
            f"length {told} disagrees with the upload's ({known}, offset {state.offset})"
        )
    total = told if told is not None else known
    if total is not None and offset + length > total:
        raise PayloadTooLarge(
            Code.UPLOAD_LENGTH_EXCEEDED, f"{length} bytes at {offset} run past the length {total}"
        )


def format_limits(
    interop: Interop, *, max_size: int, max_append: int, remaining: float | None
) -> str | None:
    """The `Upload-Limit` value for `interop` (None where the draft has none); the
    lifetime key is `max-age` from interop 7 on, `expires` before."""
    if not interop.has_limits:
        return None
    parts = [f"max-size={max_size}", f"max-append-size={max_append}"]
    if remaining is not None:
        key = "expires" if interop == Interop.DRAFT_05 else "max-age"
        parts.append(f"{key}={max(0, int(remaining))}")
    return ", ".join(parts)


def format_boolean(value: bool) -> str:
    return "?1" if value else "?0"


class OffsetMismatch(Conflict):
    """409 `offset_mismatch` in the draft's `mismatching-upload-offset` problem type."""

    def __init__(self, expected: int, provided: int) -> None:
        super().__init__(
            Code.OFFSET_MISMATCH,
            f"Upload-Offset is {provided} but {expected} bytes are stored",
            headers={"Upload-Offset": str(expected)},
        )
        self.expected, self.provided = expected, provided

    def problem(self) -> dict[str, object]:
        extra: Mapping[str, object] = {
            "type": PROBLEM_TYPES + "mismatching-upload-offset",
            "expected-offset": self.expected,
            "provided-offset": self.provided,
        }
        return {**super().problem(), **extra}


class InconsistentLength(BadRequest):
    """400 `inconsistent_upload_length` in the draft's problem type."""

    def __init__(self, detail: str) -> None:
        super().__init__(Code.INCONSISTENT_UPLOAD_LENGTH, detail)

    def problem(self) -> dict[str, object]:
        return {**super().problem(), "type": PROBLEM_TYPES + "inconsistent-upload-length"}
