"""The IETF "Resumable Uploads for HTTP" front-end under `--ietf-path` (`/resumable/`).

    OPTIONS {base}, {base}{id}   `Upload-Limit` (interop 6 and 8)
    POST {base}                  creation, `Upload-Complete: ?0|?1`, with or without
                                 content; a 104 first (`ietf_104.py`); 201
    HEAD, GET {base}{id}         offset retrieval: 204 with `Upload-Offset`,
                                 `Upload-Complete`, `Upload-Length`, `Upload-Limit`
    PATCH {base}{id}             append at `Upload-Offset` (`application/partial-upload`
                                 from interop 6 on): 204, or 200 with the record once
                                 `Upload-Complete: ?1` completed it
    DELETE {base}{id}            cancellation (views.delete_upload); 204

One engine: an upload created here is an upload of the same store under the same id
(`HEAD /uploads/{id}`, `GET /files/{id}`), locked, admitted, expired and counted like
any other, with `protocol="ietf"`; chunks go through `intake` (fsynced before any
answer acknowledges them). Header parsing is `core/ietf.py`.

Invariants:
- `Upload-Draft-Interop-Version` is read before anything else (400 for one we do not
  speak) and echoed on every answer; every refusal carries `Upload-Complete: ?0` (it
  comes from the upload protocol, not from processing the file) unless it says `?1`
  because the whole representation arrived and failed verification.
- Every header is parsed before the upload's lock is taken, so a malformed request
  changes nothing; a refused PATCH still says the upload's `Upload-Offset`.
- The offset never decreases, as the draft requires: a completed upload whose bytes
  do not match its `Repr-Digest` (which the engine resets to offset 0) is removed, so
  its URL answers 404 instead of a smaller offset.
- An upload is finalized (verified, published) only by a request with
  `Upload-Complete: ?1`; bytes that reach the length under `?0` wait for it.
- A creation under `?1` that sends no 104 runs in `intake.deferring`: nothing is
  answered before it is published or its parameters are durable. One that may send a
  104 (which announces the upload's URL) makes them durable first.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

import structlog
from aiohttp import web

from transfer.core import ietf, integrity
from transfer.core.cloudevents import EventType
from transfer.core.errors import (
    BadRequest,
    Code,
    Conflict,
    DigestMismatch,
    PayloadTooLarge,
    ProtocolError,
)
from transfer.core.events import Event
from transfer.core.ietf import PROTOCOL, Interop
from transfer.core.lifecycle import Trigger, allows, stage_of
from transfer.core.protocol import ChunkRange, plan_chunk
from transfer.core.records import UploadInfo
from transfer.core.tenancy import public_id
from transfer.server import intake
from transfer.server.ietf_104 import may_offer, offer_resumption
from transfer.server.ietf_request import Append, creation_spec, parse_append
from transfer.server.middleware import bind_upload_id
from transfer.server.state import STATE, ServerState
from transfer.server.views import delete_upload, describe, known_upload, upload_id_of

log = structlog.get_logger("transfer.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INTEROP_HEADER = "Upload-Draft-Interop-Version"


def add_ietf_routes(app: web.Application, base: str) -> None:
    """The routes under `base` (from `ietf_request.ietf_base_path`)."""
    collection: Mapping[str, Handler] = {"POST": create, "OPTIONS": options}
    member: Mapping[str, Handler] = {
        "HEAD": retrieve,
        "GET": retrieve,
        "PATCH": patch,
        "DELETE": delete_upload,
        "OPTIONS": options,
    }
    app.router.add_route("*", base, _dispatch(collection))
    app.router.add_route("*", base + "{upload_id}", _dispatch(member))


def _dispatch(table: Mapping[str, Handler]) -> Handler:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        interop = None
        try:
            interop = ietf.parse_interop(request.headers.get(INTEROP_HEADER))
            response = await _handler(table, request.method)(request)
        except ProtocolError as exc:
            exc.headers.setdefault("Upload-Complete", "?0")
            _echo(exc.headers, interop)
            raise
        _echo(response.headers, interop)
        return response

    return dispatch


def _handler(table: Mapping[str, Handler], method: str) -> Handler:
    """Raises: `method_not_allowed` (405, with `Allow`)."""
    handler = table.get(method)
    if handler is None:
        allow = ", ".join(table)
        raise ProtocolError(
            Code.METHOD_NOT_ALLOWED, f"{method} is not allowed", headers={"Allow": allow}
        )
    return handler


def _echo(headers: MutableMapping[str, str], interop: Interop | None) -> None:
    if interop is not None:
        headers[INTEROP_HEADER] = str(interop.value)


def interop_of(request: web.Request) -> Interop:
    """The request's rules (the latest for a client that sent no interop version)."""
    return ietf.parse_interop(request.headers.get(INTEROP_HEADER)) or ietf.LATEST


async def options(request: web.Request) -> web.Response:
    member = "upload_id" in request.match_info
    headers = {"Allow": "OPTIONS, HEAD, GET, PATCH, DELETE" if member else "OPTIONS, POST"}
    limits = await _limits(request.app[STATE], interop_of(request), None)
    if limits:
        headers["Upload-Limit"] = limits
    return web.Response(status=204, headers=headers)


async def retrieve(request: web.Request) -> web.Response:
    """Offset retrieval (HEAD, or GET: the same answer, no content)."""
    state = request.app[STATE]
    info = await known_upload(request)
    headers = {
        "Upload-Offset": str(info.state.offset),
        "Upload-Complete": ietf.format_boolean(info.record is not None),
        "Cache-Control": "no-store",
    }
    if info.state.total is not None:
        headers["Upload-Length"] = str(info.state.total)
    if info.record is not None:
        headers["Repr-Digest"] = integrity.format_digest_field(info.record.digests)
    limits = await _limits(state, interop_of(request), info)
    if limits:
        headers["Upload-Limit"] = limits
    return web.Response(status=204, headers=headers)


async def create(request: web.Request) -> web.Response:
    """Creation, with or without content, completing the upload under `?1`."""
    state = request.app[STATE]
    if "Upload-Concat" in request.headers:
        raise BadRequest(
            Code.UPLOAD_CONCAT_UNSUPPORTED,
            "the resumable-upload draft has no concatenation: upload as one resource",
        )
    append = parse_append(request, offset=0)
    spec = creation_spec(request, bind_upload_id(request, secrets.token_urlsafe(16)), append)
    _check_limits(state, append)
    # The whole file, completed by this request and announced by no 104: published
    # before the 201, like a native whole PUT (`intake.deferring`).
    whole = append.complete and not may_offer(request)
    async with (
        state.admission.upload(spec.upload_id),
        intake.deferring(state, spec.upload_id, whole=whole),
    ):
        if spec.size is not None:
            state.admission.check_new(spec.size, spec.upload_id)
        info = await state.hooks.create(state.store, spec)
        log.info(Event.UPLOAD_CREATED, size=spec.size, name=spec.name, protocol=PROTOCOL)
        if may_offer(request):
            limits = await _limits(state, interop_of(request), info)
            await offer_resumption(request, _location(state, request, spec.upload_id), limits)
        info = await _append(state, request, info, append)
    return await _answer(state, request, info, created=True)


async def patch(request: web.Request) -> web.Response:
    """Append at `Upload-Offset`; complete under `Upload-Complete: ?1`."""
    state = request.app[STATE]
    upload_id = upload_id_of(request)
    _check_media_type(request)
    append = parse_append(request, offset=None)
    _check_limits(state, append)
    async with state.admission.upload(upload_id):
        info = await known_upload(request)
        if info.record is not None:
            return _replay(info, append)
        try:
            info = await _append(state, request, info, append)
        except ProtocolError as exc:
            current = await state.store.get(upload_id)
            if current is not None:
                exc.headers.setdefault("Upload-Offset", str(current.state.offset))
            raise
    return await _answer(state, request, info, created=False)


def _check_media_type(request: web.Request) -> None:
    """From interop 6 on, an append is `application/partial-upload` (415 otherwise)."""
    if interop_of(request).needs_media_type and request.content_type != ietf.PARTIAL_UPLOAD:
        raise ProtocolError(Code.UNSUPPORTED_MEDIA_TYPE, f"an append must be {ietf.PARTIAL_UPLOAD}")


def _replay(info: UploadInfo, append: Append) -> web.Response:
    """A completed upload: the final answer again for an empty `?1` append at its end
    (its answer was lost), else 409 `upload_complete`."""
    record = info.record
    assert record is not None
    if append.complete and append.length == 0 and append.offset == record.size:
        return _completed(info, status=200)
    raise Conflict(
        Code.UPLOAD_COMPLETE,
        "the upload is complete and published",
        headers={"Upload-Offset": str(info.state.offset)},
    )


async def _append(
    state: ServerState, request: web.Request, info: UploadInfo, append: Append
) -> UploadInfo:
    """Append the request's content; finalize under `?1` once every byte is stored."""
    ietf.check_append(info.state, append.offset, append.length, append.told)
    upload_id = info.spec.upload_id
    if append.told is not None and append.told != info.state.total:
        info = await state.store.declare(upload_id, size=append.told, repr_digest={})
    if append.length == 0:
        _check_empty(append.digest)
    elif allows(stage_of(info), Trigger.WRITE):
        end = append.offset + append.length - 1
        plan = plan_chunk(info.state, ChunkRange(append.offset, end, None))
        info = await intake.receive(state, request, info, plan, append.digest, protocol=PROTOCOL)
    if append.complete and allows(stage_of(info), Trigger.FINALIZE):
        info = await _finalize(state, upload_id)
    return info


def _check_empty(digest: integrity.Digests) -> None:
    for algorithm, expected in digest.items():
        if integrity.digest_of(b"", algorithm) != expected:
            raise DigestMismatch(
                Code.CHUNK_DIGEST_MISMATCH, "the empty content's Content-Digest does not match"
            )


async def _finalize(state: ServerState, upload_id: str) -> UploadInfo:
    """Publish; on a whole-file mismatch remove the upload (its offset may not go back)."""
    try:
        return await intake.finalize(state, upload_id, PROTOCOL)
    except DigestMismatch as exc:
        info = await state.store.get(upload_id)
        await state.store.delete(upload_id)
        if info is not None:
            await state.hooks.emit(EventType.DELETED, info)
        log.info(Event.UPLOAD_DELETED, reason=exc.code, protocol=PROTOCOL)
        exc.headers["Upload-Complete"] = "?1"  # the data all arrived; resuming cannot help
        raise


def _check_limits(state: ServerState, append: Append) -> None:
    """`Upload-Limit`'s `max-size` (`--max-upload`) and `max-append-size` (`--max-chunk`).

    Raises: `upload_too_large`, `chunk_too_large` (413).
    """
    config = state.config
    end = max(append.told or 0, append.offset + append.length)
    if end > config.max_upload:
        raise PayloadTooLarge(
            Code.UPLOAD_TOO_LARGE, f"uploads are limited to {config.max_upload} bytes"
        )
    if append.length > config.max_chunk:
        raise PayloadTooLarge(
            Code.CHUNK_TOO_LARGE, f"one request may carry {config.max_chunk} bytes at most"
        )


def _location(state: ServerState, request: web.Request, upload_id: str) -> str:
    base = state.config.ietf_path
    assert base is not None  # the routes exist only when the front-end is on
    return str(request.url.with_path(base + public_id(upload_id)).with_query(None))


async def _limits(state: ServerState, interop: Interop, info: UploadInfo | None) -> str | None:
    """`Upload-Limit`: `--max-upload`, `--max-chunk`, and a partial upload's lifetime."""
    remaining = None
    if info is not None and info.record is None:
        modified = await state.store.modified(info.spec.upload_id)
        if modified is not None:
            remaining = modified + state.config.partial_ttl - state.config.clock()
    return ietf.format_limits(
        interop,
        max_size=state.config.max_upload,
        max_append=state.config.max_chunk,
        remaining=remaining,
    )


async def _answer(
    state: ServerState, request: web.Request, info: UploadInfo, *, created: bool
) -> web.Response:
    if info.record is not None:
        response = _completed(info, status=201 if created else 200)
    else:
        response = web.Response(status=201 if created else 204)
        response.headers["Upload-Complete"] = "?0"
        limits = await _limits(state, interop_of(request), info)
        if limits:
            response.headers["Upload-Limit"] = limits
    response.headers["Upload-Offset"] = str(info.state.offset)
    if created:
        response.headers["Location"] = _location(state, request, info.spec.upload_id)
    return response


def _completed(info: UploadInfo, *, status: int) -> web.Response:
    """What the targeted resource answers for a whole, verified file: its record."""
    record = info.record
    assert record is not None
    headers = {
        "Upload-Complete": "?1",
        "Upload-Offset": str(record.size),
        "Repr-Digest": integrity.format_digest_field(record.digests),
    }
    return web.json_response(describe(info), status=status, headers=headers)
