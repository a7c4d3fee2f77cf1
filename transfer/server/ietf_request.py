"""An IETF resumable-upload request read into values before any lock is taken.

`parse_append` reads what creation and append share (`Upload-Complete`, `Upload-Offset`,
`Upload-Length`, `Content-Length`, `Content-Digest`); `creation_spec` what only a
creation says about the file (`Content-Disposition` filename, `Content-Type`,
`Repr-Digest`, honoured as by the native `POST /uploads`: verified when the last byte
arrives); `ietf_base_path` validates `--ietf-path`.

Invariant: nothing here reads the body or touches the store; every refusal is a coded
`ProtocolError` (or, for the flag, a `ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from transfer.core import ietf, integrity, tus
from transfer.core.errors import BadRequest, Code, ConfigError
from transfer.core.ietf import PROTOCOL
from transfer.core.integrity import Digests
from transfer.core.protocol import MAX_NAME
from transfer.core.records import UploadSpec
from transfer.server.intake import body_length

_PATH = re.compile(r"/([A-Za-z0-9._~-]+/)+")
_TAKEN = ("/uploads/", "/files/", "/healthz/", "/metrics/")


@dataclass(frozen=True, slots=True)
class Append:
    """What a creation or append request carries, as the engine needs it."""

    complete: bool  # Upload-Complete
    offset: int  # Upload-Offset (0 for a creation)
    length: int  # Content-Length (0: no content)
    told: int | None  # the representation's length, if the request tells it
    digest: Digests  # Content-Digest of this request's content ({}: none)


def parse_append(request: web.Request, *, offset: int | None) -> Append:
    """The request's append; `offset` None means "read `Upload-Offset`" (a PATCH).

    Raises:
        ProtocolError: `upload_complete_required`, `invalid_upload_offset`,
            `length_required`, `inconsistent_upload_length`, `invalid_digest`.
    """
    headers = request.headers
    complete = ietf.require_complete(headers.get("Upload-Complete"))
    at = ietf.require_offset(headers.get("Upload-Offset")) if offset is None else offset
    length = body_length(request)
    told = ietf.length_indicator(headers.get("Upload-Length"), complete, at, length)
    return Append(complete, at, length, told, _digests(request, "Content-Digest"))


def creation_spec(request: web.Request, upload_id: str, append: Append) -> UploadSpec:
    """The upload a creation request describes.

    Raises:
        BadRequest: `invalid_metadata` for a filename over `MAX_NAME` characters or a
            malformed `Upload-Metadata`;
            `invalid_digest` for a malformed `Repr-Digest`.
    """
    # tus's `Upload-Metadata`, accepted here too as an extension (the draft has no
    # metadata header): our sender carries a watched file's path and version in it.
    metadata = tus.parse_metadata(request.headers.get("Upload-Metadata"))
    content_type = request.headers.get("Content-Type")
    if content_type and request.content_type != ietf.PARTIAL_UPLOAD:
        metadata.setdefault("filetype", content_type)
    filename = _filename(request.headers.get("Content-Disposition"))
    return UploadSpec(
        upload_id,
        filename or tus.name_of(metadata),
        append.told,
        metadata,
        _digests(request, "Repr-Digest"),
        protocol=PROTOCOL,
    )


def _filename(value: str | None) -> str | None:
    if value is None:
        return None
    _, params = parse_content_disposition(value)
    name = content_disposition_filename(params) or None
    if name is not None and len(name) > MAX_NAME:
        raise BadRequest(Code.INVALID_METADATA, f"filename must be 1-{MAX_NAME} characters")
    return name


def _digests(request: web.Request, header: str) -> Digests:
    value = request.headers.get(header)
    return integrity.parse_digest_field(value) if value is not None else {}


def ietf_base_path(value: str, *, tus_path: str | None) -> str:
    """`--ietf-path`, normalized to end with `/`.

    Raises:
        ConfigError: not an absolute path of plain segments, or one the native or tus
            endpoints use.
    """
    path = value if value.endswith("/") else value + "/"
    if not _PATH.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise ConfigError(f"--ietf-path {value!r} must be a path such as /resumable/")
    taken = (*_TAKEN, tus_path) if tus_path else _TAKEN
    if any(path.startswith(t) or t.startswith(path) for t in taken):
        raise ConfigError(f"--ietf-path {value!r} overlaps the native or tus endpoints")
    return path
