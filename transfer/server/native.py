"""`POST /uploads` and `PUT /uploads/{id}`: the native (GCS-style) front-end.

Invariants:
- Every request on one upload id runs under that id's lock (`Admission.upload`), so two
  PUTs never interleave bytes and the cached state is never read half-updated.
- A 308 or 200 is sent only after the store returned, i.e. after the bytes are fsynced.
- Errors on `PUT /uploads/{id}` carry the upload's current `Range` once it is known.
- Space is claimed before a byte is written (`Admission.receiving`, `check_new`).
- What may happen to an upload is `core.lifecycle`'s table: a published upload takes
  nothing more, a complete one is finalized.
"""

from __future__ import annotations

import json
import secrets
from contextlib import AbstractAsyncContextManager

import structlog
from aiohttp import web

from transfer.core import integrity, lifecycle, protocol
from transfer.core.errors import (
    BadRequest,
    Code,
    DigestMismatch,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
)
from transfer.core.events import Event
from transfer.core.lifecycle import Trigger, stage_of
from transfer.core.records import UploadInfo, UploadSpec
from transfer.server import intake
from transfer.server.middleware import bind_upload_id
from transfer.server.state import STATE, ServerConfig, ServerState
from transfer.server.views import (
    completed,
    describe,
    expiry_headers,
    incomplete,
    location,
    range_headers,
    upload_id_of,
)

log = structlog.get_logger("transfer.server")


async def create_upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    creation = protocol.parse_creation(
        await _json_body(request), request.headers.get("X-Upload-Content-Length")
    )
    if creation.size is not None and creation.size > state.config.max_upload:
        raise _too_large(state.config)
    upload_id = bind_upload_id(request, creation.upload_id or secrets.token_urlsafe(16))
    spec = UploadSpec(
        upload_id, creation.name, creation.size, creation.metadata, _digests(request, "Repr-Digest")
    )
    async with state.admission.upload(upload_id):
        existed, info = await _open(state, spec)
    if not existed:
        log.info(Event.UPLOAD_CREATED, size=creation.size, name=creation.name)
    headers = {"Location": location(request, upload_id), **(await expiry_headers(state, info))}
    return web.json_response(describe(info), headers=headers)


async def _open(state: ServerState, spec: UploadSpec) -> tuple[bool, UploadInfo]:
    """Create the upload or re-open it (and whether it existed); under its lock."""
    existed = await state.store.get(spec.upload_id) is not None
    if not existed and spec.size is not None:
        state.admission.check_new(spec.size, spec.upload_id)
    info = await (state.store.create(spec) if existed else state.hooks.create(state.store, spec))
    if _may_finalize(info) and info.state.offset > 0:
        # A crash after the last byte but before publication: finish it now, as a status
        # query would, or a client resuming at offset == size has nothing to send.
        info = await _finalize(state, spec.upload_id)
    return existed, info


async def _json_body(request: web.Request) -> object:
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise BadRequest(Code.INVALID_BODY, "the body must be JSON (application/json)")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(Code.INVALID_BODY, f"the body is not valid JSON: {exc}") from exc


def _digests(request: web.Request, header: str) -> dict[str, bytes]:
    """A `Repr-Digest` or `Content-Digest` header parsed ({} when absent)."""
    value = request.headers.get(header)
    return integrity.parse_digest_field(value) if value is not None else {}


def _content_range(request: web.Request) -> protocol.ContentRange:
    value = request.headers.get("Content-Range")
    if value is not None:
        return protocol.parse_content_range(value)
    # A plain `curl -T file` PUT: the body is the whole file.
    length = request.content_length
    if length is None:
        raise BadRequest(Code.MISSING_CONTENT_RANGE, "PUT needs Content-Range or Content-Length")
    if length == 0:
        return protocol.TotalOnly(0)
    return protocol.ChunkRange(0, length - 1, length)


async def put_chunk(request: web.Request) -> web.Response:
    state = request.app[STATE]
    upload_id = upload_id_of(request)
    rng = _content_range(request)
    content_digest = _digests(request, "Content-Digest")
    repr_digest = _digests(request, "Repr-Digest")
    _check_limits(state.config, request, rng)
    async with state.admission.upload(upload_id), _deferring(state, upload_id, rng):
        found = await state.store.get(upload_id)
        info = found or await _create_from_put(state, request, upload_id, rng, repr_digest)
        if not lifecycle.allows(stage_of(info), Trigger.WRITE):
            return completed(info)  # published: it takes nothing more, whatever was sent
        try:
            if repr_digest and found is not None:  # a creation took it into its spec
                info = await state.store.declare(upload_id, size=None, repr_digest=repr_digest)
            info = await _apply(state, request, info, rng, content_digest)
        except ProtocolError as exc:
            current = await state.store.get(upload_id)
            exc.headers.update(range_headers(current.state.offset if current else 0))
            raise
    return completed(info) if info.record is not None else await incomplete(state, info)


def _deferring(
    state: ServerState, upload_id: str, rng: protocol.ContentRange
) -> AbstractAsyncContextManager[None]:
    """`intake.deferring` for a body that is the whole file."""
    whole = isinstance(rng, protocol.ChunkRange) and rng.start == 0 and rng.total == rng.end + 1
    return intake.deferring(state, upload_id, whole=whole)


def _too_large(config: ServerConfig) -> PayloadTooLarge:
    return PayloadTooLarge(
        Code.UPLOAD_TOO_LARGE, f"uploads are limited to {config.max_upload} bytes"
    )


def _check_limits(config: ServerConfig, request: web.Request, rng: protocol.ContentRange) -> None:
    # An unknown total must not let an upload grow past the limit chunk by chunk.
    past_limit = isinstance(rng, protocol.ChunkRange) and rng.end >= config.max_upload
    if past_limit or (rng.total is not None and rng.total > config.max_upload):
        raise _too_large(config)
    if isinstance(rng, protocol.TotalOnly):
        if request.content_length not in (None, 0):
            raise BadRequest(
                Code.UNEXPECTED_BODY, f"'{protocol.format_content_range(rng)}' takes no body"
            )
        return
    if rng.length > config.max_chunk:
        raise PayloadTooLarge(
            Code.CHUNK_TOO_LARGE, f"chunks are limited to {config.max_chunk} bytes"
        )
    if request.content_length is not None and request.content_length != rng.length:
        raise BadRequest(
            Code.LENGTH_MISMATCH,
            f"Content-Length {request.content_length} differs from the range's {rng.length}",
        )


async def _create_from_put(
    state: ServerState,
    request: web.Request,
    upload_id: str,
    rng: protocol.ContentRange,
    repr_digest: dict[str, bytes],
) -> UploadInfo:
    """The first PUT of an unknown id creates it, with `Upload-Metadata` (name and
    metadata) and `Repr-Digest` if given, so a client needs no POST round trip."""
    if isinstance(rng, protocol.TotalOnly) and rng.total is None:
        # A status query never creates: a client whose POST was lost in a crash must see
        # 404 and POST again, not resume a bare upload (no name, no Repr-Digest) that
        # every later POST would refuse as a conflict.
        raise NotFound(Code.UPLOAD_NOT_FOUND, f"no upload {upload_id}")
    name, metadata = protocol.parse_upload_metadata(request.headers.get("Upload-Metadata", ""))
    if rng.total is not None:
        state.admission.check_new(rng.total, upload_id)
    spec = UploadSpec(upload_id, name, rng.total, metadata, repr_digest)
    info = await state.hooks.create(state.store, spec)
    log.info(Event.UPLOAD_CREATED, size=rng.total, name=name, via="put")
    return info


async def _apply(
    state: ServerState,
    request: web.Request,
    info: UploadInfo,
    rng: protocol.ContentRange,
    content_digest: dict[str, bytes],
) -> UploadInfo:
    upload_id = info.spec.upload_id
    if isinstance(rng, protocol.TotalOnly):
        total = protocol.check_total(info.state, rng.total)
        info = await state.store.declare(upload_id, size=total, repr_digest={})
    else:
        plan = protocol.plan_chunk(info.state, rng)
        info = await intake.receive(state, request, info, plan, content_digest, protocol=None)
    if _may_finalize(info):
        info = await _finalize(state, upload_id)
    return info


def _may_finalize(info: UploadInfo) -> bool:
    """All bytes are stored and nothing is published yet."""
    return lifecycle.allows(stage_of(info), Trigger.FINALIZE)


async def _finalize(state: ServerState, upload_id: str) -> UploadInfo:
    try:
        info = await state.hooks.finalize(state.store, upload_id)
    except DigestMismatch:
        log.warning(Event.UPLOAD_RESET, reason="repr_digest_mismatch")
        raise
    return _published(state, info)


def _published(state: ServerState, info: UploadInfo) -> UploadInfo:
    state.metrics.inc("transfer_uploads_completed_total")
    record = info.record
    assert record is not None  # finalize returns a record or raises
    log.info(
        Event.UPLOAD_COMPLETED,
        size=record.size,
        digest=integrity.to_hex(record.digests).get(integrity.PREFERRED),
    )
    return info
