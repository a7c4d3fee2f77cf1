"""The aiohttp shell over the protocol core and the upload store.

Handlers translate HTTP to and from `transfer.protocol` values and `UploadStore` calls;
they never touch the disk themselves. `docs/protocol.md` is the contract.

Invariants:
- Every request on one upload id runs under that id's lock, so two PUTs never
  interleave bytes and the cached state is never read half-updated.
- A 308 or 200 is sent only after the store returned, i.e. after the bytes are fsynced.
- Every refusal is `application/problem+json` with a stable `code`; errors on
  `PUT /uploads/{id}` also carry the upload's current `Range`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from transfer import integrity, protocol
from transfer.auth import bearer_middleware
from transfer.errors import (
    BadRequest,
    Conflict,
    DigestMismatch,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    ServiceUnavailable,
)
from transfer.expiry import sweep_forever
from transfer.locks import KeyedLocks
from transfer.metrics import Metrics
from transfer.middleware import BYTES, UPLOAD_ID, problems_middleware
from transfer.storage import UploadInfo, UploadSpec, UploadStore

log = structlog.get_logger("transfer.server")

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits, each a `transfer serve` flag."""

    max_chunk: int = 64 * MiB
    max_upload: int = 64 * 1024 * MiB
    idle_timeout: float = 30.0
    min_rate: int = 1024  # bytes/s a body must average once idle_timeout has passed
    max_active: int = 64
    max_partial: int = 256 * 1024 * MiB  # all partial uploads together
    reserve: int = 256 * MiB  # disk space never handed to uploads
    partial_ttl: float = 24 * 3600.0  # a partial upload idle this long is removed
    retry_after: int = 1
    token: str | None = None  # bearer token; None: no authentication (loopback use)
    protect_metrics: bool = False
    clock: Callable[[], float] = time.time  # wall clock, for expiry


@dataclass(slots=True)
class ServerState:
    store: UploadStore
    config: ServerConfig
    metrics: Metrics = field(default_factory=Metrics)
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    active: int = 0
    # Bytes of the chunks being received now, counted against the quota and the reserve
    # until the chunk ends: otherwise concurrent chunks each pass the check against the
    # same free space (overdrawn by up to max_active * max_chunk). Conservative: bytes of
    # a chunk already on disk count twice against the reserve until it ends.
    claimed: int = 0


STATE = web.AppKey("state", ServerState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(store: UploadStore, config: ServerConfig | None = None) -> web.Application:
    state = ServerState(store, config or ServerConfig())
    _describe_metrics(state.metrics)
    middlewares: list[Middleware] = [problems_middleware(state.metrics)]
    if state.config.token is not None:
        middlewares.append(
            bearer_middleware(state.config.token, protect_metrics=state.config.protect_metrics)
        )
    app = web.Application(middlewares=middlewares, client_max_size=MiB)
    app[STATE] = state
    app.cleanup_ctx.append(_sweeper)
    app.router.add_post("/uploads", create_upload)
    app.router.add_put("/uploads/{upload_id}", put_chunk)
    app.router.add_route("HEAD", "/uploads/{upload_id}", head_upload)
    app.router.add_get("/uploads/{upload_id}", get_upload, allow_head=False)
    app.router.add_delete("/uploads/{upload_id}", delete_upload)
    app.router.add_get("/files/{upload_id}", get_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Run the expiry sweep for the app's lifetime."""
    state = app[STATE]
    task = asyncio.create_task(
        sweep_forever(
            state.store,
            state.locks,
            state.metrics,
            ttl=state.config.partial_ttl,
            now=state.config.clock,
        )
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _describe_metrics(m: Metrics) -> None:
    m.describe("transfer_uploads_active", "gauge", "PUT requests receiving a body now")
    m.describe("transfer_bytes_received_total", "counter", "Chunk bytes written and fsynced")
    m.describe("transfer_uploads_completed_total", "counter", "Uploads verified and published")
    m.describe("transfer_digest_mismatches_total", "counter", "Chunks or files refused")
    m.describe("transfer_request_duration_seconds", "histogram", "Request durations")
    m.describe("transfer_uploads_expired_total", "counter", "Idle partial uploads removed")


def _upload_id(request: web.Request) -> str:
    upload_id = protocol.validate_id(request.match_info["upload_id"])
    request[UPLOAD_ID] = upload_id
    return upload_id


def _location(request: web.Request, upload_id: str) -> str:
    return str(request.url.with_path(f"/uploads/{upload_id}").with_query(None))


async def create_upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    creation = protocol.parse_creation(
        await _json_body(request), request.headers.get("X-Upload-Content-Length")
    )
    if creation.size is not None and creation.size > state.config.max_upload:
        raise PayloadTooLarge(
            "upload_too_large", f"uploads are limited to {state.config.max_upload} bytes"
        )
    upload_id = creation.upload_id or secrets.token_urlsafe(16)
    request[UPLOAD_ID] = upload_id
    spec = UploadSpec(
        upload_id, creation.name, creation.size, creation.metadata, _repr_digest(request)
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
        log.info("upload.created", upload_id=upload_id, size=creation.size, name=creation.name)
    headers = {"Location": _location(request, upload_id), **_expiry(state, info)}
    return web.json_response(_describe(info), headers=headers)


async def _json_body(request: web.Request) -> object:
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise BadRequest("invalid_body", "the body must be JSON (application/json)")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("invalid_body", f"the body is not valid JSON: {exc}") from exc


def _repr_digest(request: web.Request) -> dict[str, bytes]:
    value = request.headers.get("Repr-Digest")
    return integrity.parse_digest_field(value) if value is not None else {}


def _content_digest(request: web.Request) -> dict[str, bytes]:
    value = request.headers.get("Content-Digest")
    return integrity.parse_digest_field(value) if value is not None else {}


def _content_range(request: web.Request) -> protocol.ContentRange:
    value = request.headers.get("Content-Range")
    if value is not None:
        return protocol.parse_content_range(value)
    # A plain `curl -T file` PUT: the body is the whole file.
    length = request.content_length
    if length is None:
        raise BadRequest("missing_content_range", "PUT needs Content-Range or Content-Length")
    if length == 0:
        return protocol.TotalOnly(0)
    return protocol.ChunkRange(0, length - 1, length)


async def put_chunk(request: web.Request) -> web.Response:
    state = request.app[STATE]
    upload_id = _upload_id(request)
    rng = _content_range(request)
    content_digest, repr_digest = _content_digest(request), _repr_digest(request)
    _check_limits(state.config, request, rng)
    async with state.locks.hold(upload_id):
        info = await state.store.get(upload_id)
        if info is None:
            if isinstance(rng, protocol.TotalOnly) and rng.total is None:
                # A status query never creates: a client whose POST was lost in a crash
                # must see 404 and POST again, not resume a bare upload (no name, no
                # Repr-Digest) that every later POST would refuse as a conflict.
                raise NotFound("upload_not_found", f"no upload {upload_id}")
            info = await _create_from_put(state, request, upload_id, rng, repr_digest)
        if info.record is not None:
            return _completed(info)
        try:
            if repr_digest:
                info = await state.store.declare(upload_id, size=None, repr_digest=repr_digest)
            info = await _apply(state, request, info, rng, content_digest)
        except ProtocolError as exc:
            current = await state.store.get(upload_id)
            exc.headers.update(_range_headers(current.state.offset if current else 0))
            raise
    return _completed(info) if info.record is not None else _incomplete(state, info)


def _check_limits(config: ServerConfig, request: web.Request, rng: protocol.ContentRange) -> None:
    # An unknown total must not let an upload grow past the limit chunk by chunk.
    past_limit = isinstance(rng, protocol.ChunkRange) and rng.end >= config.max_upload
    if past_limit or (rng.total is not None and rng.total > config.max_upload):
        raise PayloadTooLarge(
            "upload_too_large", f"uploads are limited to {config.max_upload} bytes"
        )
    if isinstance(rng, protocol.TotalOnly):
        if request.content_length not in (None, 0):
            raise BadRequest(
                "unexpected_body", f"'{protocol.format_content_range(rng)}' takes no body"
            )
        return
    if rng.length > config.max_chunk:
        raise PayloadTooLarge("chunk_too_large", f"chunks are limited to {config.max_chunk} bytes")
    if request.content_length is not None and request.content_length != rng.length:
        raise BadRequest(
            "length_mismatch",
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
    log.info("upload.created", upload_id=upload_id, size=rng.total, name=name, via="put")
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
            "too_many_uploads",
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
    raise NotFound("upload_not_found", f"no upload {upload_id}")


def _check_space(state: ServerState, incoming: int) -> None:
    """507 before a byte is written when the quota or the disk's reserve would be hit."""
    store, config = state.store, state.config
    incoming += state.claimed
    if store.partial_bytes + incoming > config.max_partial:
        raise InsufficientStorage(
            "partial_quota_exceeded", f"partial uploads are limited to {config.max_partial} bytes"
        )
    if store.free_bytes() - incoming < config.reserve:
        raise InsufficientStorage("insufficient_storage", "not enough disk space")


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
            log.warning("upload.stalled", upload_id=request.get(UPLOAD_ID), idle=idle)
            raise RequestTimeout("body_stalled", f"no body bytes for {idle} s") from exc
        except (ConnectionError, aiohttp.ClientPayloadError) as exc:
            # The client went away mid-body: nobody hears the answer, but the log should
            # say what happened, not report a crash.
            log.info("upload.disconnected", upload_id=request.get(UPLOAD_ID), received=received)
            raise BadRequest("body_incomplete", "the connection closed mid-body") from exc
        if not data:
            return
        received += len(data)
        elapsed = time.monotonic() - started
        if elapsed > idle and received < min_rate * elapsed:
            log.warning("upload.too_slow", upload_id=request.get(UPLOAD_ID), received=received)
            raise RequestTimeout("body_too_slow", f"the body is slower than {min_rate} B/s")
        yield data


async def _finalize(state: ServerState, upload_id: str) -> UploadInfo:
    try:
        info = await state.store.finalize(upload_id)
    except DigestMismatch:
        log.warning("upload.reset", upload_id=upload_id, reason="repr_digest_mismatch")
        raise
    state.metrics.inc("transfer_uploads_completed_total")
    record = info.record
    assert record is not None  # finalize returns a record or raises
    log.info(
        "upload.completed",
        upload_id=upload_id,
        size=record.size,
        digest=integrity.to_hex(record.digests).get(integrity.PREFERRED),
    )
    return info


def _range_headers(offset: int) -> dict[str, str]:
    value = protocol.format_range(offset)
    return {"Range": value} if value else {}


def _incomplete(state: ServerState, info: UploadInfo) -> web.Response:
    headers = {**_range_headers(info.state.offset), **_expiry(state, info)}
    headers["Cache-Control"] = "no-store"
    return web.json_response(_describe(info), status=308, headers=headers)


def _expiry(state: ServerState, info: UploadInfo) -> dict[str, str]:
    """`Upload-Expires` (an HTTP date) for a partial upload: idle past it, it is removed."""
    modified = None if info.record else state.store.modified(info.spec.upload_id)
    if modified is None:
        return {}
    return {"Upload-Expires": formatdate(modified + state.config.partial_ttl, usegmt=True)}


def _completed(info: UploadInfo) -> web.Response:
    record = info.record
    assert record is not None
    return web.json_response(
        _describe(info),
        headers={"Repr-Digest": integrity.format_digest_field(record.digests)},
    )


def _describe(info: UploadInfo) -> dict[str, object]:
    if info.record is not None:
        return {**info.record.to_json(), "complete": True}
    return {
        "id": info.spec.upload_id,
        "name": info.spec.name,
        "size": info.spec.size,
        "metadata": dict(info.spec.metadata),
        "offset": info.state.offset,
        "complete": False,
    }


async def _known(request: web.Request) -> UploadInfo:
    upload_id = _upload_id(request)
    info = await request.app[STATE].store.get(upload_id)
    if info is None:
        raise NotFound("upload_not_found", f"no upload {upload_id}")
    return info


async def head_upload(request: web.Request) -> web.Response:
    info = await _known(request)
    headers = {
        "Upload-Offset": str(info.state.offset),
        "Upload-Complete": "?1" if info.record else "?0",
        "Cache-Control": "no-store",
    }
    if info.state.total is not None:
        headers["Upload-Length"] = str(info.state.total)
    if info.record is not None:
        headers["Repr-Digest"] = integrity.format_digest_field(info.record.digests)
    headers.update(_expiry(request.app[STATE], info))
    return web.Response(status=200, headers=headers)


async def get_upload(request: web.Request) -> web.Response:
    info = await _known(request)
    if info.record is not None:
        return _completed(info)
    return web.json_response(_describe(info), headers={"Cache-Control": "no-store"})


async def delete_upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    upload_id = _upload_id(request)
    async with state.locks.hold(upload_id):
        info = await _known(request)
        if info.record is not None:
            raise Conflict("upload_complete", "a completed upload cannot be aborted")
        await state.store.delete(upload_id)
    log.info("upload.deleted", upload_id=upload_id, offset=info.state.offset)
    return web.Response(status=204)


async def get_file(request: web.Request) -> web.StreamResponse:
    upload_id = _upload_id(request)
    path = request.app[STATE].store.file_path(upload_id)
    if not path.is_file():
        raise NotFound("file_not_found", f"no completed file {upload_id}")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[STATE].metrics.render()
    return web.Response(
        body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
