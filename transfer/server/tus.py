"""The tus 1.0.0 front-end: `OPTIONS`, `POST`, `HEAD`, `PATCH`, `DELETE` under `--tus-path`.

    OPTIONS {base}, {base}{id}   discovery: Tus-Version, Tus-Extension, Tus-Max-Size,
                                 Tus-Checksum-Algorithm (no Tus-Resumable needed)
    POST {base}                  creation (+ creation-with-upload, defer-length,
                                 Upload-Concat partial / final: `tus_concat.py`)
    HEAD {base}{id}              Upload-Offset, Upload-Length or Upload-Defer-Length,
                                 Upload-Metadata, Upload-Concat, Upload-Expires
    PATCH {base}{id}             append at Upload-Offset (`tus_chunk.py`); 204, with
                                 `Repr-Digest` once the upload is published (so the 201)
    DELETE {base}{id}            termination (views.delete_upload); 204

One engine: a tus upload is an upload of the same store, under the same id everywhere
(`HEAD /uploads/{id}`, `GET /files/{id}`), locked, admitted, expired and counted like
a native one; only header parsing (`core/tus.py`) and the answers' shapes are tus's.

Invariants:
- Every answer on a tus route carries `Tus-Resumable: 1.0.0`, refusals included.
- Every request but OPTIONS must carry `Tus-Resumable: 1.0.0`, else 412 with
  `Tus-Version`, before anything is looked up or read.
- `X-HTTP-Method-Override` replaces the request's method wherever it is given.
- Every header is parsed before the upload's lock is taken, so a malformed request
  changes nothing; a PATCH on a final (concatenated) upload is 403 `upload_is_final`.
- A creation whose body is the whole file runs in `intake.deferring`: nothing is
  answered before it is published or its parameters are durable.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from transfer.core import integrity, tus
from transfer.core.errors import BadRequest, Code, ConfigError, PayloadTooLarge, ProtocolError
from transfer.core.events import Event
from transfer.core.records import UploadInfo, UploadSpec
from transfer.core.tenancy import public_id
from transfer.server import intake
from transfer.server.intake import body_length
from transfer.server.middleware import bind_upload_id
from transfer.server.state import STATE, ServerState
from transfer.server.tus_chunk import PROTOCOL, append, check_content_type
from transfer.server.tus_concat import concatenate
from transfer.server.views import delete_upload, expiry_headers, known_upload, upload_id_of

log = structlog.get_logger("transfer.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PATH = re.compile(r"/([A-Za-z0-9._~-]+/)+")
_TAKEN = ("/uploads/", "/files/", "/healthz/", "/metrics/")


def tus_base_path(value: str) -> str:
    """`--tus-path`, normalized to end with `/`.

    Raises:
        ConfigError: not an absolute path of plain segments, or one the native
            endpoints use.
    """
    path = value if value.endswith("/") else value + "/"
    if not _PATH.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise ConfigError(f"--tus-path {value!r} must be a path such as /tus/")
    if path.startswith(_TAKEN) or any(taken.startswith(path) for taken in _TAKEN):
        raise ConfigError(f"--tus-path {value!r} overlaps the native endpoints")
    return path


def add_tus_routes(app: web.Application, base: str) -> None:
    """The tus routes under `base` (from `tus_base_path`)."""
    collection: Mapping[str, Handler] = {"POST": create, "OPTIONS": options}
    member: Mapping[str, Handler] = {
        "HEAD": head,
        "PATCH": patch,
        "DELETE": delete_upload,
        "OPTIONS": options,
    }
    app.router.add_route("*", base, _dispatch(collection))
    app.router.add_route("*", base + "{upload_id}", _dispatch(member))


def _dispatch(table: Mapping[str, Handler]) -> Handler:
    """One handler per route: the method (or its override) picks the table's entry."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            response = await _route(table, request)
        except ProtocolError as exc:
            exc.headers["Tus-Resumable"] = tus.VERSION
            raise
        response.headers["Tus-Resumable"] = tus.VERSION
        return response

    return dispatch


async def _route(table: Mapping[str, Handler], request: web.Request) -> web.StreamResponse:
    """Raises: `invalid_method_override`, `method_not_allowed`, `tus_version_unsupported`."""
    method = tus.parse_override(request.headers.get("X-HTTP-Method-Override"), request.method)
    handler = table.get(method)
    if handler is None:
        allow = ", ".join(table)
        raise ProtocolError(
            Code.METHOD_NOT_ALLOWED, f"{method} is not allowed", headers={"Allow": allow}
        )
    if method != "OPTIONS":
        tus.check_version(request.headers.get("Tus-Resumable"))
    return await handler(request)


async def options(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    headers = {
        "Tus-Version": tus.VERSION,
        "Tus-Extension": ",".join(tus.EXTENSIONS),
        "Tus-Max-Size": str(config.max_upload),
        "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUMS),
    }
    return web.Response(status=204, headers=headers)


async def head(request: web.Request) -> web.Response:
    info = await known_upload(request)
    return web.Response(status=200, headers=await _describe(request.app[STATE], info))


async def _describe(state: ServerState, info: UploadInfo) -> dict[str, str]:
    """What HEAD answers about an upload, as tus names it."""
    headers = {"Upload-Offset": str(info.state.offset), "Cache-Control": "no-store"}
    if info.state.total is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(info.state.total)
    if info.spec.metadata:
        headers["Upload-Metadata"] = tus.format_metadata(info.spec.metadata)
    if concat := info.spec.extra.get(tus.CONCAT_KEY):
        headers["Upload-Concat"] = concat
    if info.record is not None:
        headers["Repr-Digest"] = integrity.format_digest_field(info.record.digests)
    headers.update(await expiry_headers(state, info))
    return headers


async def create(request: web.Request) -> web.Response:
    """Creation, with an optional first body; or a final upload of partials."""
    state = request.app[STATE]
    headers = request.headers
    concat = tus.parse_concat(headers.get("Upload-Concat"))
    metadata = tus.parse_metadata(headers.get("Upload-Metadata"))
    repr_digest = _repr_digest(request)
    if isinstance(concat, tus.Final):
        if "Upload-Length" in headers:
            raise BadRequest(Code.INVALID_UPLOAD_LENGTH, "a final upload takes no Upload-Length")
        info = await concatenate(state, request, concat, metadata, repr_digest)
        return await _created(state, request, info)
    total = tus.creation_length(headers.get("Upload-Length"), headers.get("Upload-Defer-Length"))
    _check_size(state, total)
    checksum = tus.parse_checksum(headers.get("Upload-Checksum"))
    if request.body_exists:
        check_content_type(request)
    spec = UploadSpec(
        bind_upload_id(request, secrets.token_urlsafe(16)),
        tus.name_of(metadata),
        total,
        metadata,
        repr_digest,
        protocol=PROTOCOL,
        extra={tus.CONCAT_KEY: "partial"} if concat else {},
    )
    # The whole file in the creation request: published before the 201, like a native
    # whole PUT, so its parameters need not be durable before then (`intake.deferring`).
    whole = total is not None and body_length(request) == total
    async with (
        state.admission.upload(spec.upload_id),
        intake.deferring(state, spec.upload_id, whole=whole),
    ):
        if total is not None:
            state.admission.check_new(total, spec.upload_id)
        info = await state.hooks.create(state.store, spec)
        log.info(Event.UPLOAD_CREATED, size=total, name=spec.name, protocol=PROTOCOL)
        info = await append(state, request, info, 0, checksum)
    return await _created(state, request, info)


def _repr_digest(request: web.Request) -> dict[str, bytes]:
    """Our addition to tus: a whole-file `Repr-Digest` at creation, verified at the end."""
    value = request.headers.get("Repr-Digest")
    return integrity.parse_digest_field(value) if value is not None else {}


def _check_size(state: ServerState, total: int | None) -> None:
    if total is not None and total > state.config.max_upload:
        raise PayloadTooLarge(
            Code.UPLOAD_TOO_LARGE, f"uploads are limited to {state.config.max_upload} bytes"
        )


async def _created(state: ServerState, request: web.Request, info: UploadInfo) -> web.Response:
    base = state.config.tus_path
    assert base is not None
    url = request.url.with_path(base + public_id(info.spec.upload_id)).with_query(None)
    headers = {"Location": str(url), "Upload-Offset": str(info.state.offset)}
    headers.update(await _state_headers(state, info))
    return web.Response(status=201, headers=headers)


async def _state_headers(state: ServerState, info: UploadInfo) -> dict[str, str]:
    """After a creation or PATCH: `Repr-Digest` once the upload is published (as HEAD
    shows it, so a client confirms without a HEAD), else `Upload-Expires`."""
    if info.record is not None:
        return {"Repr-Digest": integrity.format_digest_field(info.record.digests)}
    return await expiry_headers(state, info)


async def patch(request: web.Request) -> web.Response:
    state = request.app[STATE]
    upload_id = upload_id_of(request)
    check_content_type(request)
    offset = tus.parse_offset(request.headers.get("Upload-Offset"))
    length = tus.parse_length(request.headers.get("Upload-Length"))
    _check_size(state, length)
    checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
    async with state.admission.upload(upload_id):
        info = await known_upload(request)
        if info.spec.extra.get(tus.CONCAT_KEY, "").startswith("final"):
            raise ProtocolError(Code.UPLOAD_IS_FINAL, "a final upload takes no PATCH")
        try:
            if length is not None:
                info = await state.store.declare(upload_id, size=length, repr_digest={})
            info = await append(state, request, info, offset, checksum)
        except ProtocolError as exc:
            await _with_offset(state, upload_id, exc)
            raise
    headers = {"Upload-Offset": str(info.state.offset), **(await _state_headers(state, info))}
    return web.Response(status=204, headers=headers)


async def _with_offset(state: ServerState, upload_id: str, exc: ProtocolError) -> None:
    """A refused PATCH still says where the upload stands."""
    current = await state.store.get(upload_id)
    if current is not None:
        exc.headers.setdefault("Upload-Offset", str(current.state.offset))
