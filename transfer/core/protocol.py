"""The resumable-upload protocol as pure values and functions: no I/O, no asyncio.

Content-Range forms a `PUT /uploads/{id}` may carry (GCS resumable-upload semantics):

    bytes S-E/T   a chunk of a file whose total T is known
    bytes S-E/*   a chunk, total not yet known
    bytes */T     no body: declares the total (and finalizes if every byte is there)
    bytes */*     no body: asks how far the upload is

Invariants kept by `plan_chunk` and `check_total` (and checked by property tests):
- the offset only ever moves forward, and never past a known total;
- once a total is known it never changes;
- a chunk that starts past the offset is refused (a gap), one that starts before it is
  accepted and its already-stored prefix is skipped, never written twice.
Parsers accept ASCII digits only and raise `BadRequest` with a stable code.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass

from transfer.core.errors import BadRequest, Code, Conflict, RangeNotSatisfiable

# No file we accept comes near this; it keeps absurd numbers out of arithmetic.
MAX_POSITION = 2**53
_DIGITS = r"(0|[1-9][0-9]{0,15})"
_CHUNK = re.compile(rf"bytes {_DIGITS}-{_DIGITS}/({_DIGITS}|\*)")
_TOTAL_ONLY = re.compile(rf"bytes \*/({_DIGITS}|\*)")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """`bytes start-end/total`: `end` is inclusive, `total` None for `*`."""

    start: int
    end: int
    total: int | None

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class TotalOnly:
    """`bytes */total`, or `bytes */*` (total None): a body-less declaration or query."""

    total: int | None


ContentRange = ChunkRange | TotalOnly


def parse_content_range(value: str) -> ContentRange:
    """Parse a request's Content-Range header.

    Raises:
        BadRequest: `invalid_content_range` when the syntax is wrong or not ASCII,
            or when end < start or end >= total.
    """
    if not value.isascii():
        raise BadRequest(Code.INVALID_CONTENT_RANGE, "Content-Range must be ASCII")
    text = value.strip()
    if match := _TOTAL_ONLY.fullmatch(text):
        return TotalOnly(_total(match.group(1)))
    match = _CHUNK.fullmatch(text)
    if match is None:
        raise BadRequest(
            Code.INVALID_CONTENT_RANGE,
            f"Content-Range {value!r} is not one of 'bytes S-E/T', 'bytes S-E/*', "
            "'bytes */T', 'bytes */*'",
        )
    start, end, total = int(match.group(1)), int(match.group(2)), _total(match.group(3))
    if end < start:
        raise BadRequest(Code.INVALID_CONTENT_RANGE, f"range end {end} is before start {start}")
    if total is not None and end >= total:
        raise BadRequest(Code.INVALID_CONTENT_RANGE, f"range end {end} is not below total {total}")
    if end >= MAX_POSITION:
        raise BadRequest(Code.INVALID_CONTENT_RANGE, f"range end {end} is absurdly large")
    return ChunkRange(start, end, total)


def _total(text: str) -> int | None:
    if text == "*":
        return None
    total = int(text)
    if total > MAX_POSITION:
        raise BadRequest(Code.INVALID_CONTENT_RANGE, f"total {total} is absurdly large")
    return total


def format_content_range(rng: ContentRange) -> str:
    """The header value for `rng`; `parse_content_range` inverts it."""
    total = "*" if rng.total is None else str(rng.total)
    if isinstance(rng, TotalOnly):
        return f"bytes */{total}"
    return f"bytes {rng.start}-{rng.end}/{total}"


def format_range(offset: int) -> str | None:
    """The `Range` header of a 308: `bytes=0-N`, or None when nothing is stored."""
    return None if offset == 0 else f"bytes=0-{offset - 1}"


def parse_range_reply(value: str | None) -> int:
    """The offset a server's `Range: bytes=0-N` reply acknowledges (0 when absent).

    Raises:
        BadRequest: `invalid_range` when the header is not `bytes=0-N`.
    """
    if value is None:
        return 0
    match = re.fullmatch(rf"bytes=0-{_DIGITS}", value.strip()) if value.isascii() else None
    if match is None:
        raise BadRequest(Code.INVALID_RANGE, f"Range {value!r} is not 'bytes=0-N'")
    offset = int(match.group(1)) + 1
    if offset > MAX_POSITION:
        raise BadRequest(Code.INVALID_RANGE, f"Range {value!r} acknowledges absurdly many bytes")
    return offset


def validate_id(upload_id: str) -> str:
    """Return `upload_id` if it is 1-64 of `[A-Za-z0-9_-]`.

    Raises:
        BadRequest: `invalid_id` otherwise (this also stops path traversal).
    """
    if not _ID.fullmatch(upload_id):
        raise BadRequest(Code.INVALID_ID, "upload id must be 1-64 characters of [A-Za-z0-9_-]")
    return upload_id


class Phase(enum.Enum):
    EMPTY = "empty"
    PARTIAL = "partial"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class UploadState:
    """How far an upload is: `offset` bytes stored, `total` when known."""

    offset: int = 0
    total: int | None = None

    def __post_init__(self) -> None:
        if self.offset < 0 or (self.total is not None and not 0 <= self.offset <= self.total):
            raise ValueError(f"impossible upload state {self.offset}/{self.total}")

    @property
    def phase(self) -> Phase:
        if self.total is not None and self.offset == self.total:
            return Phase.COMPLETE
        return Phase.PARTIAL if self.offset else Phase.EMPTY

    @property
    def complete(self) -> bool:
        return self.phase is Phase.COMPLETE


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """What to do with a chunk's body: skip `skip` bytes already stored, write the rest."""

    skip: int
    write: int
    total: int | None

    @property
    def length(self) -> int:
        """The body's length: the range's, overlap included."""
        return self.skip + self.write

    def after(self, state: UploadState) -> UploadState:
        """The state once the planned bytes are durably written."""
        return UploadState(state.offset + self.write, self.total)


def check_total(state: UploadState, total: int | None) -> int | None:
    """The upload's total once `total` is declared (None keeps what is known).

    Raises:
        Conflict: `total_mismatch` if it differs from a known total, or is below the offset.
    """
    if total is None:
        return state.total
    if state.total is not None and state.total != total:
        raise Conflict(Code.TOTAL_MISMATCH, f"upload total is {state.total}, not {total}")
    if state.offset > total:
        raise Conflict(Code.TOTAL_MISMATCH, f"{state.offset} bytes are stored, more than {total}")
    return total


def plan_chunk(state: UploadState, rng: ChunkRange) -> ChunkPlan:
    """Decide how a chunk applies to an upload in `state`.

    Raises:
        Conflict: `total_mismatch` (see `check_total`), `offset_gap` when the chunk starts
            past the stored offset.
        RangeNotSatisfiable: `range_past_total` when the chunk ends past a known total.
    """
    total = check_total(state, rng.total)
    if total is not None and rng.end >= total:
        raise RangeNotSatisfiable(Code.RANGE_PAST_TOTAL, f"range end {rng.end} >= total {total}")
    if rng.start > state.offset:
        raise Conflict(
            Code.OFFSET_GAP, f"chunk starts at {rng.start} but only {state.offset} bytes are stored"
        )
    skip = min(state.offset - rng.start, rng.length)
    return ChunkPlan(skip=skip, write=rng.length - skip, total=total)


def check_body_length(plan: ChunkPlan, received: int, *, ended: bool) -> None:
    """Check a chunk's body against its range after `received` bytes arrived.

    While the body is still arriving (`ended` False) only too many bytes are an error;
    once it ended it must have had exactly the range's length.

    Raises:
        BadRequest: `body_too_long` past the range's length, `body_too_short` when an
            ended body fell short of it.
    """
    if received > plan.length:
        raise BadRequest(Code.BODY_TOO_LONG, f"body is longer than the range's {plan.length}")
    if ended and received != plan.length:
        raise BadRequest(Code.BODY_TOO_SHORT, f"body has {received} of {plan.length} bytes")


@dataclass(frozen=True, slots=True)
class Creation:
    """A validated `POST /uploads` body (plus `X-Upload-Content-Length`)."""

    upload_id: str | None
    name: str | None
    size: int | None
    metadata: dict[str, str]


MAX_NAME = 1024
MAX_METADATA = 64


def parse_creation(doc: object, header_length: str | None) -> Creation:
    """Validate a creation request. Unknown top-level keys (GCS object fields such as
    `contentType`) are ignored; known ones must have the right type.

    Raises:
        BadRequest: `invalid_body` for a wrong shape, `invalid_id`, `size_mismatch`.
    """
    if not isinstance(doc, dict):
        raise BadRequest(Code.INVALID_BODY, "the body must be a JSON object")
    upload_id = doc.get("id")
    if upload_id is not None:
        validate_id(_typed(upload_id, str, "id"))
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME):
        raise BadRequest(Code.INVALID_BODY, f"name must be a string of 1-{MAX_NAME} characters")
    size = _size(doc.get("size"), header_length)
    return Creation(upload_id, name, size, _metadata(doc.get("metadata")))


def _typed(value: object, kind: type[str], what: str) -> str:
    if not isinstance(value, kind):
        raise BadRequest(Code.INVALID_BODY, f"{what} must be a string")
    return value


def _size(value: object, header: str | None) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POSITION
    ):
        raise BadRequest(Code.INVALID_BODY, "size must be a non-negative integer")
    if header is None:
        return value
    if not (header.isascii() and header.isdigit()) or int(header) > MAX_POSITION:
        raise BadRequest(
            Code.INVALID_BODY, "X-Upload-Content-Length must be a non-negative integer"
        )
    if value is not None and value != int(header):
        raise BadRequest(Code.SIZE_MISMATCH, "size and X-Upload-Content-Length differ")
    return int(header)


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise BadRequest(
            Code.INVALID_BODY, f"metadata must be an object of at most {MAX_METADATA} strings"
        )
    return dict(value)


_META_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_upload_metadata(value: str) -> tuple[str | None, dict[str, str]]:
    """Parse `Upload-Metadata` (tus syntax: `key base64value, key2 base64value2`) into
    the upload's name (key `name`) and its other metadata. It lets a client create an
    upload with its very first PUT, skipping the POST round trip.

    Raises:
        BadRequest: `invalid_metadata` for a malformed pair, key or value.
    """
    name: str | None = None
    metadata: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        key, _, encoded = pair.partition(" ")
        if not _META_KEY.fullmatch(key) or key in metadata or (key == "name" and name):
            raise BadRequest(Code.INVALID_METADATA, f"bad or repeated Upload-Metadata key {key!r}")
        try:
            text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError as exc:  # binascii.Error, UnicodeDecodeError, non-ASCII input
            raise BadRequest(Code.INVALID_METADATA, f"{key}: value is not base64 UTF-8") from exc
        if key == "name":
            name = text
        else:
            metadata[key] = text
    if name is not None and not 0 < len(name) <= MAX_NAME:
        raise BadRequest(Code.INVALID_METADATA, f"name must be 1-{MAX_NAME} characters")
    if len(metadata) > MAX_METADATA:
        raise BadRequest(Code.INVALID_METADATA, f"at most {MAX_METADATA} metadata entries")
    return name, metadata


def format_upload_metadata(name: str | None, metadata: dict[str, str]) -> str:
    """The `Upload-Metadata` value `parse_upload_metadata` reads back."""
    pairs = {"name": name, **metadata} if name is not None else dict(metadata)
    return ",".join(
        f"{key} {base64.b64encode(text.encode()).decode()}" for key, text in pairs.items()
    )
