"""The read-only and administrative endpoints, and the shapes of upload answers.

`HEAD/GET/DELETE /uploads/{id}`, `GET /files/{id}`, `/healthz`, `/metrics`; plus how an
upload is described (JSON, `Range`, `Upload-Expires`, `Repr-Digest`) for every handler.
Invariant: nothing here touches the file system; everything goes through the store's
protocols (`transfer.store.base`), so these handlers run on any store.
"""

from __future__ import annotations

from email.utils import formatdate

import structlog
from aiohttp import web

from transfer.core import integrity, protocol
from transfer.core.cloudevents import EventType
from transfer.core.errors import (
    Code,
    Conflict,
    NotFound,
)
from transfer.core.events import Event
from transfer.core.lifecycle import Trigger, allows, stage_of
from transfer.core.records import UploadInfo
from transfer.core.tenancy import public_id
from transfer.server.download import FileDownload
from transfer.server.middleware import bind_upload_id
from transfer.server.state import STATE, ServerState

log = structlog.get_logger("transfer.server")


def upload_id_of(request: web.Request) -> str:
    """The route's upload id, validated and bound to the request's log context, as
    the store key of the caller's namespace (`tenants.scoped_key`)."""
    return bind_upload_id(request, protocol.validate_id(request.match_info["upload_id"]))


def location(request: web.Request, upload_id: str) -> str:
    return str(request.url.with_path(f"/uploads/{public_id(upload_id)}").with_query(None))


def range_headers(offset: int) -> dict[str, str]:
    value = protocol.format_range(offset)
    return {"Range": value} if value else {}


async def incomplete(state: ServerState, info: UploadInfo) -> web.Response:
    headers = {**range_headers(info.state.offset), **(await expiry_headers(state, info))}
    headers["Cache-Control"] = "no-store"
    return web.json_response(describe(info), status=308, headers=headers)


async def expiry_headers(state: ServerState, info: UploadInfo) -> dict[str, str]:
    """`Upload-Expires` (an HTTP date) for a partial upload: idle past it, it is removed."""
    modified = None if info.record else await state.store.modified(info.spec.upload_id)
    if modified is None:
        return {}
    return {"Upload-Expires": formatdate(modified + state.config.partial_ttl, usegmt=True)}


def completed(info: UploadInfo) -> web.Response:
    record = info.record
    assert record is not None
    return web.json_response(
        describe(info),
        headers={"Repr-Digest": integrity.format_digest_field(record.digests)},
    )


def describe(info: UploadInfo) -> dict[str, object]:
    if info.record is not None:
        return {**info.record.to_json(), "id": public_id(info.spec.upload_id), "complete": True}
    return {
        "id": public_id(info.spec.upload_id),
        "name": info.spec.name,
        "size": info.spec.size,
        "metadata": dict(info.spec.metadata),
        "offset": info.state.offset,
        "complete": False,
    }


async def known_upload(request: web.Request) -> UploadInfo:
    upload_id = upload_id_of(request)
    info = await request.app[STATE].store.get(upload_id)
    if info is None:
        raise NotFound(Code.UPLOAD_NOT_FOUND, f"no upload {public_id(upload_id)}")
    return info


async def head_upload(request: web.Request) -> web.Response:
    info = await known_upload(request)
    headers = {
        "Upload-Offset": str(info.state.offset),
        "Upload-Complete": "?1" if info.record else "?0",
        "Cache-Control": "no-store",
    }
    if info.state.total is not None:
        headers["Upload-Length"] = str(info.state.total)
    if info.record is not None:
        headers["Repr-Digest"] = integrity.format_digest_field(info.record.digests)
    headers.update(await expiry_headers(request.app[STATE], info))
    return web.Response(status=200, headers=headers)


async def get_upload(request: web.Request) -> web.Response:
    info = await known_upload(request)
    if info.record is not None:
        return completed(info)
    return web.json_response(describe(info), headers={"Cache-Control": "no-store"})


async def delete_upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    upload_id = upload_id_of(request)
    async with state.admission.upload(upload_id):
        info = await known_upload(request)
        if not allows(stage_of(info), Trigger.DELETE):
            raise Conflict(Code.UPLOAD_COMPLETE, "a completed upload cannot be aborted")
        await state.store.delete(upload_id)
        await state.hooks.emit(EventType.DELETED, info)
    log.info(Event.UPLOAD_DELETED, offset=info.state.offset)
    return web.Response(status=204)


async def get_file(request: web.Request) -> web.StreamResponse:
    """The published file; `FileDownload` answers ranges and conditions, and closes it."""
    upload_id = upload_id_of(request)
    published = await request.app[STATE].store.open_file(upload_id)
    if published is None:
        raise NotFound(Code.FILE_NOT_FOUND, f"no completed file {public_id(upload_id)}")
    return FileDownload(published)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[STATE].metrics.render()
    return web.Response(
        body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
