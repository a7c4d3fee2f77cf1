"""`POST /uploads` and `PUT /uploads/{id}`: creating uploads and receiving chunks.

Invariants:
- Every request on one upload id runs under that id's lock, so two PUTs never
  interleave bytes and the cached state is never read half-updated.
- A 308 or 200 is sent only after the store returned, i.e. after the bytes are fsynced.
- Errors on `PUT /uploads/{id}` carry the upload's current `Range` once it is known.
- Space is claimed before a byte is written: the quota and the disk reserve are checked
  against bytes on disk plus bytes being received.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from transfer.core import integrity, protocol
from transfer.core.errors import (
    BadRequest,
    Code,
    DigestMismatch,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    ServiceUnavailable,
)
from transfer.core.events import Event
from transfer.server.middleware import BYTES, UPLOAD_ID
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
from transfer.store.filestore import UploadInfo, UploadSpec

log = structlog.get_logger("transfer.server")


async def create_upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    creation = protocol.parse_creation(
        await _json_body(request), request.headers.get("X-Upload-Content-Length")
    )
    if creation.size is not None and creation.size > state.config.max_upload:
        raise PayloadTooLarge(
            Code.UPLOAD_TOO_LARGE, f"uploads are limited to {state.config.max_upload} bytes"
        )
    upload_id = creation.upload_id or secrets.token_urlsafe(16)
    request[UPLOAD_ID] = upload_id
    spec = UploadSpec(
        upload_id, creation.name, creation.size, creation.metadata, _digests(request, "Repr-Digest")
    )
    async with state.locks.hold(upload_id):
        existing = await state.store.get(upload_id)
        existed = existing is not None
        if existing is None and creation.size is not None:
            _check_space(state, creation.size)
        info = await state.store.create(spec)
        if info.record is None and info.state.complete and info.state.offset > 0:
            # A crash after the last byte but before publication: finish it now, as a
            # status query would, or a client resuming at offset == size has nothing to send.
            info = await _finalize(state, upload_id)
    if not existed:
        log.info(Event.UPLOAD_CREATED, upload_id=upload_id, size=creation.size, name=creation.name)
    headers = {"Location": location(request, upload_id), **expiry_headers(state, info)}
    return web.json_response(describe(info), headers=headers)


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
    async with state.locks.hold(upload_id):
        info = await state.store.get(upload_id)
        if info is None:
            if isinstance(rng, protocol.TotalOnly) and rng.total is None:
                # A status query never creates: a client whose POST was lost in a crash
                # must see 404 and POST again, not resume a bare upload (no name, no
                # Repr-Digest) that every later POST would refuse as a conflict.
                raise NotFound(Code.UPLOAD_NOT_FOUND, f"no upload {upload_id}")
            info = await _create_from_put(state, request, upload_id, rng, repr_digest)
        if info.record is not None:
            return completed(info)
        try:
            if repr_digest:
                info = await state.store.declare(upload_id, size=None, repr_digest=repr_digest)
            info = await _apply(state, request, info, rng, content_digest)
        except ProtocolError as exc:
            current = await state.store.get(upload_id)
            exc.headers.update(range_headers(current.state.offset if current else 0))
            raise
    return completed(info) if info.record is not None else incomplete(state, info)


def _check_limits(config: ServerConfig, request: web.Request, rng: protocol.ContentRange) -> None:
    # An unknown total must not let an upload grow past the limit chunk by chunk.
    past_limit = isinstance(rng, protocol.ChunkRange) and rng.end >= config.max_upload
    if past_limit or (rng.total is not None and rng.total > config.max_upload):
        raise PayloadTooLarge(
            Code.UPLOAD_TOO_LARGE, f"uploads are limited to {config.max_upload} bytes"
        )
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
    name, metadata = protocol.parse_upload_metadata(request.headers.get("Upload-Metadata", ""))
    if rng.total is not None:
        _check_space(state, rng.total)
    spec = UploadSpec(upload_id, name, rng.total, metadata, repr_digest)
    info = await state.store.create(spec)
    log.info(Event.UPLOAD_CREATED, upload_id=upload_id, size=rng.total, name=name, via="put")
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
        info = await _receive(state, request, upload_id, plan, content_digest)
    if info.state.complete:
        info = await _finalize(state, upload_id)
    return info


async def _receive(
    state: ServerState,
    request: web.Request,
    upload_id: str,
    plan: protocol.ChunkPlan,
    content_digest: dict[str, bytes],
) -> UploadInfo:
    if state.active >= state.config.max_active:
        raise ServiceUnavailable(
            Code.TOO_MANY_UPLOADS,
            f"{state.active} uploads are in progress; try again shortly",
            headers={"Retry-After": str(state.config.retry_after)},
        )
    state.active += 1
    state.metrics.set("transfer_uploads_active", state.active)
    before = (await state.store.get(upload_id) or _missing(upload_id)).state.offset
    claimed = 0
    try:
        _check_space(state, plan.write)
        claimed = plan.write
        state.claimed += claimed
        body = _body(request, state.config.idle_timeout, state.config.min_rate)
        info = await state.store.write_chunk(upload_id, plan, body, content_digest)
    finally:
        state.claimed -= claimed
        state.active -= 1
        state.metrics.set("transfer_uploads_active", state.active)
        after = await state.store.get(upload_id)
        written = (after.state.offset if after else before) - before
        request[BYTES] = written
        state.metrics.inc("transfer_bytes_received_total", written)
    return info


def _missing(upload_id: str) -> UploadInfo:
    raise NotFound(Code.UPLOAD_NOT_FOUND, f"no upload {upload_id}")


def _check_space(state: ServerState, incoming: int) -> None:
    """507 before a byte is written when the quota or the disk's reserve would be hit."""
    store, config = state.store, state.config
    incoming += state.claimed
    if store.partial_bytes + incoming > config.max_partial:
        raise InsufficientStorage(
            Code.PARTIAL_QUOTA_EXCEEDED,
            f"partial uploads are limited to {config.max_partial} bytes",
        )
    if store.free_bytes() - incoming < config.reserve:
        raise InsufficientStorage(Code.INSUFFICIENT_STORAGE, "not enough disk space")


async def _body(request: web.Request, idle: float, min_rate: int) -> AsyncIterator[bytes]:
    """The request body. Each read is bounded by the idle timeout, and once that much
    time has passed the body must average `min_rate` bytes/s: a client trickling a byte
    at a time cannot hold an upload slot for ever."""
    started, received = time.monotonic(), 0
    while True:
        try:
            async with asyncio.timeout(idle):
                data = await request.content.readany()
        except TimeoutError as exc:
            log.warning(Event.UPLOAD_STALLED, upload_id=request.get(UPLOAD_ID), idle=idle)
            raise RequestTimeout(Code.BODY_STALLED, f"no body bytes for {idle} s") from exc
        except (ConnectionError, aiohttp.ClientPayloadError) as exc:
            # The client went away mid-body: nobody hears the answer, but the log should
            # say what happened, not report a crash.
            log.info(Event.UPLOAD_DISCONNECTED, upload_id=request.get(UPLOAD_ID), received=received)
            raise BadRequest(Code.BODY_INCOMPLETE, "the connection closed mid-body") from exc
        if not data:
            return
        received += len(data)
        elapsed = time.monotonic() - started
        if elapsed > idle and received < min_rate * elapsed:
            log.warning(Event.UPLOAD_TOO_SLOW, upload_id=request.get(UPLOAD_ID), received=received)
            raise RequestTimeout(Code.BODY_TOO_SLOW, f"the body is slower than {min_rate} B/s")
        yield data


async def _finalize(state: ServerState, upload_id: str) -> UploadInfo:
    try:
        info = await state.store.finalize(upload_id)
    except DigestMismatch:
        log.warning(Event.UPLOAD_RESET, upload_id=upload_id, reason="repr_digest_mismatch")
        raise
    state.metrics.inc("transfer_uploads_completed_total")
    record = info.record
    assert record is not None  # finalize returns a record or raises
    log.info(
        Event.UPLOAD_COMPLETED,
        upload_id=upload_id,
        size=record.size,
        digest=integrity.to_hex(record.digests).get(integrity.PREFERRED),
    )
    return info
