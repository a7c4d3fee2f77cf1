"""tus 1.0.0 headers as pure values and parsers: no I/O, no aiohttp.

What a tus request may carry (https://tus.io/protocols/resumable-upload):

    Tus-Resumable: 1.0.0                 on every request but OPTIONS; else 412
    Upload-Offset: N                     PATCH: where the body starts (must be the offset)
    Upload-Length: N                     creation, or a PATCH of a deferred-length upload
    Upload-Defer-Length: 1               creation: the length comes later
    Upload-Metadata: key b64,key2 b64    creation: the upload's metadata
    Upload-Checksum: sha1 b64            PATCH: the body's checksum
    Upload-Concat: partial | final;URL URL
    X-HTTP-Method-Override: PATCH        a POST that means another method

Invariants:
- Every parser either returns a value or raises a `ProtocolError` with a stable `Code`;
  numbers are ASCII digits without sign or leading zeros, below `MAX_POSITION`.
- Checksum algorithms map onto `core.integrity`'s names (`sha256` -> `sha-256`); the
  weak ones (`sha1`, `md5`) are `integrity.CHUNK_ONLY`: they guard one PATCH body and
  are never accepted as a whole-file digest.
- Metadata values are kept as decoded UTF-8 text (a key without a value is ""), so
  `format_metadata(parse_metadata(v))` answers the pairs the client sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from transfer.core import integrity
from transfer.core.errors import BadRequest, Code, ProtocolError
from transfer.core.protocol import MAX_NAME, MAX_POSITION, validate_id

VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
)
# tus checksum name -> core.integrity algorithm, in the order OPTIONS announces them.
CHECKSUMS: Mapping[str, str] = {
    "sha1": "sha1",
    "md5": "md5",
    "sha256": "sha-256",
    "xxh3-128": "xxh3-128",
}
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
# Methods X-HTTP-Method-Override may name (the methods tus routes answer).
METHODS = frozenset({"HEAD", "PATCH", "DELETE", "OPTIONS", "POST"})
MAX_METADATA = 64
CONCAT_KEY = "concat"  # UploadSpec.extra key for Upload-Concat as received

_NUMBER = re.compile(r"0|[1-9][0-9]{0,15}")
_META_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,64}")  # printable ASCII, no space or comma


def check_version(value: str | None) -> None:
    """Raises:
    ProtocolError: `tus_version_unsupported` (412, with `Tus-Version`) unless `value`
        is exactly 1.0.0, absent included.
    """
    if value != VERSION:
        raise ProtocolError(
            Code.TUS_VERSION_UNSUPPORTED,
            f"Tus-Resumable {value!r} is not supported; this server speaks {VERSION}",
            headers={"Tus-Version": VERSION},
        )


def _number(value: str, header: str, code: Code) -> int:
    text = value.strip()
    if not (text.isascii() and _NUMBER.fullmatch(text)) or int(text) > MAX_POSITION:
        raise BadRequest(code, f"{header} must be a non-negative integer below 2^53")
    return int(text)


def parse_offset(value: str | None) -> int:
    """`Upload-Offset`.

    Raises:
        BadRequest: `invalid_upload_offset` when absent or not a number.
    """
    if value is None:
        raise BadRequest(Code.INVALID_UPLOAD_OFFSET, "PATCH needs Upload-Offset")
    return _number(value, "Upload-Offset", Code.INVALID_UPLOAD_OFFSET)


def parse_length(value: str | None) -> int | None:
    """`Upload-Length` (None when absent).

    Raises:
        BadRequest: `invalid_upload_length` when not a number.
    """
    return None if value is None else _number(value, "Upload-Length", Code.INVALID_UPLOAD_LENGTH)


def creation_length(length: str | None, defer: str | None) -> int | None:
    """The total a creation declares: `Upload-Length`, or None for `Upload-Defer-Length: 1`.

    Raises:
        BadRequest: `invalid_upload_length` unless exactly one of the two is given, and
            `Upload-Defer-Length` is `1`.
    """
    if defer is not None and (length is not None or defer.strip() != "1"):
        raise BadRequest(
            Code.INVALID_UPLOAD_LENGTH, "give Upload-Length or Upload-Defer-Length: 1, not both"
        )
    if defer is None and length is None:
        raise BadRequest(
            Code.INVALID_UPLOAD_LENGTH, "creation needs Upload-Length or Upload-Defer-Length: 1"
        )
    return parse_length(length)


def parse_metadata(value: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64value` pairs (the value optional).

    Raises:
        BadRequest: `invalid_metadata` for a bad or repeated key, a value that is not
            base64 of UTF-8 text, or more than `MAX_METADATA` pairs.
    """
    metadata: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in (value or "").split(","))):
        key, _, encoded = pair.partition(" ")
        if not _META_KEY.fullmatch(key) or key in metadata:
            raise BadRequest(Code.INVALID_METADATA, f"bad or repeated Upload-Metadata key {key!r}")
        metadata[key] = _decode_text(key, encoded.strip())
    if len(metadata) > MAX_METADATA:
        raise BadRequest(Code.INVALID_METADATA, f"at most {MAX_METADATA} metadata entries")
    return metadata


def _decode_text(key: str, encoded: str) -> str:
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError, non-ASCII input
        raise BadRequest(Code.INVALID_METADATA, f"{key}: value is not base64 UTF-8") from exc


def format_metadata(metadata: Mapping[str, str]) -> str:
    """The `Upload-Metadata` value `parse_metadata` reads back."""
    return ",".join(
        f"{key} {base64.b64encode(text.encode()).decode()}" if text else key
        for key, text in metadata.items()
    )


def name_of(metadata: Mapping[str, str]) -> str | None:
    """The record's name: the `filename` metadata, if it is a usable name.

    Raises:
        BadRequest: `invalid_metadata` when `filename` is longer than `MAX_NAME`.
    """
    name = metadata.get("filename") or None
    if name is not None and len(name) > MAX_NAME:
        raise BadRequest(Code.INVALID_METADATA, f"filename must be 1-{MAX_NAME} characters")
    return name


@dataclass(frozen=True, slots=True)
class Checksum:
    """A PATCH body's `Upload-Checksum`, under `core.integrity`'s algorithm name."""

    algorithm: str
    digest: bytes


def parse_checksum(value: str | None) -> Checksum | None:
    """`Upload-Checksum: <algorithm> <base64>` (None when absent).

    Raises:
        BadRequest: `checksum_algorithm_unsupported` for an algorithm not in
            `CHECKSUMS`; `invalid_checksum` for bad syntax, base64 or length.
    """
    if value is None:
        return None
    name, _, encoded = value.strip().partition(" ")
    algorithm = CHECKSUMS.get(name)
    if algorithm is None:
        supported = ",".join(CHECKSUMS)
        raise BadRequest(
            Code.CHECKSUM_ALGORITHM_UNSUPPORTED, f"checksum {name!r} is not one of {supported}"
        )
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(Code.INVALID_CHECKSUM, f"{name} checksum is not base64") from exc
    if len(raw) != integrity.digest_size(algorithm):
        raise BadRequest(Code.INVALID_CHECKSUM, f"{name} checksum has the wrong length")
    return Checksum(algorithm, raw)


@dataclass(frozen=True, slots=True)
class Partial:
    """`Upload-Concat: partial`."""


@dataclass(frozen=True, slots=True)
class Final:
    """`Upload-Concat: final;URL URL ...`: the partial uploads, in order."""

    urls: tuple[str, ...]


Concat = Partial | Final


def parse_concat(value: str | None) -> Concat | None:
    """`Upload-Concat` (None when absent).

    Raises:
        BadRequest: `invalid_upload_concat` unless `partial` or `final;` with at least
            one URL.
    """
    if value is None:
        return None
    text = value.strip()
    if text == "partial":
        return Partial()
    kind, sep, rest = text.partition(";")
    urls = tuple(rest.split())
    if kind != "final" or not sep or not urls:
        raise BadRequest(
            Code.INVALID_UPLOAD_CONCAT, "Upload-Concat must be 'partial' or 'final;URL URL ...'"
        )
    return Final(urls)


def partial_ids(final: Final, base_path: str) -> list[str]:
    """The upload ids of a final upload's partial URLs (absolute or relative to the
    host), which must lie directly under `base_path` (ending with `/`).

    Raises:
        BadRequest: `invalid_upload_concat` for a URL outside `base_path`;
            `invalid_id` for a bad id.
    """
    ids = []
    for url in final.urls:
        path = urlsplit(url).path
        if not path.startswith(base_path):
            raise BadRequest(
                Code.INVALID_UPLOAD_CONCAT, f"{url!r} is not an upload under {base_path}"
            )
        ids.append(validate_id(path[len(base_path) :]))
    return ids


def parse_override(value: str | None, method: str) -> str:
    """The method a request means: `X-HTTP-Method-Override` if given, else `method`.

    Raises:
        BadRequest: `invalid_method_override` for a method tus routes do not answer.
    """
    if value is None:
        return method
    wanted = value.strip().upper()
    if wanted not in METHODS:
        raise BadRequest(
            Code.INVALID_METHOD_OVERRIDE, f"X-HTTP-Method-Override {value!r} is not a tus method"
        )
    return wanted
