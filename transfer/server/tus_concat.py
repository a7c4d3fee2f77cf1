"""tus concatenation: a final upload built from partial uploads, through the engine.

`POST {base}` with `Upload-Concat: final;URL URL ...` (what tus-js-client sends after
`parallelUploads`) creates a new upload whose bytes are the partials' bytes in the
order listed. How:

1. Each listed id must be a tus upload created with `Upload-Concat: partial` (400
   `concat_not_partial`; unknown: 404 `upload_not_found`) whose bytes are all stored
   (400 `concat_partial_incomplete`: we do not offer `concatenation-unfinished`). A
   partial is published like any completed upload, so its bytes are verified and
   immutable; one whose publication a crash interrupted is finished here.
2. The final upload is created with the sum of their lengths (413 past `--max-upload`,
   507 when it would not fit), then each partial's published bytes are streamed into
   it as one chunk through `write_chunk`, with the partial's recorded xxh3-128 and
   sha-256 as that chunk's content digest: a byte that changed on the way fails the
   chunk, so the final file is provably the concatenation of verified partials.
3. It is finalized like any other upload (whole-file digests computed, atomic publish),
   before the 201 is sent. A crash midway leaves an incomplete final upload that no
   client knows of; the expiry sweep removes it.

Partials are kept after concatenation (tus allows reusing them; the store never
removes a published file), so a parallel upload holds its bytes twice on disk.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import web

from transfer.core import integrity, tus
from transfer.core.errors import BadRequest, Code, NotFound, PayloadTooLarge
from transfer.core.events import Event
from transfer.core.integrity import Digests
from transfer.core.lifecycle import Trigger, allows, stage_of
from transfer.core.protocol import ChunkRange, plan_chunk
from transfer.core.records import FileRecord, UploadInfo, UploadSpec
from transfer.server.middleware import bind_upload_id
from transfer.server.state import ServerState
from transfer.server.tenants import scoped_key
from transfer.server.tus_chunk import PROTOCOL, finalize
from transfer.store.base import PublishedFile

log = structlog.get_logger("transfer.server")

PIECE = 1024 * 1024  # bytes read from a partial at a time


async def concatenate(
    state: ServerState,
    request: web.Request,
    final: tus.Final,
    metadata: Mapping[str, str],
    repr_digest: Digests,
) -> UploadInfo:
    """Create, fill and publish the final upload (see the module docstring).

    Raises:
        ProtocolError: the refusals of the module docstring, and the store's.
    """
    base = state.config.tus_path
    assert base is not None  # the routes exist only when tus is on
    ids = [scoped_key(request, upload_id) for upload_id in tus.partial_ids(final, base)]
    records = [await _partial(state, key) for key in ids]
    total = sum(record.size for record in records)
    if total > state.config.max_upload:
        raise PayloadTooLarge(
            Code.UPLOAD_TOO_LARGE, f"uploads are limited to {state.config.max_upload} bytes"
        )
    concat = "final;" + " ".join(final.urls)
    spec = UploadSpec(
        bind_upload_id(request, secrets.token_urlsafe(16)),
        tus.name_of(metadata),
        total,
        metadata,
        repr_digest,
        protocol=PROTOCOL,
        extra={tus.CONCAT_KEY: concat},
    )
    async with state.admission.upload(spec.upload_id):
        state.admission.check_new(total, spec.upload_id)
        info = await state.hooks.create(state.store, spec)
        log.info(Event.UPLOAD_CREATED, size=total, name=spec.name, protocol=PROTOCOL)
        for record in records:
            info = await _append(state, info, record)
        info = await finalize(state, spec.upload_id)
    log.info(Event.UPLOAD_CONCATENATED, partials=len(records), size=total, protocol=PROTOCOL)
    return info


async def _partial(state: ServerState, upload_id: str) -> FileRecord:
    """The record of a complete partial upload, under its lock."""
    async with state.admission.upload(upload_id):
        info = await state.store.get(upload_id)
        if info is None:
            raise NotFound(Code.UPLOAD_NOT_FOUND, f"no upload {upload_id}")
        if info.spec.extra.get(tus.CONCAT_KEY) != "partial":
            raise BadRequest(Code.CONCAT_NOT_PARTIAL, f"upload {upload_id} is not a partial upload")
        if allows(stage_of(info), Trigger.FINALIZE):
            info = await finalize(state, upload_id)  # a crash came before its publication
    if info.record is None:
        raise BadRequest(
            Code.CONCAT_PARTIAL_INCOMPLETE, f"partial upload {upload_id} is not complete"
        )
    return info.record


async def _append(state: ServerState, info: UploadInfo, record: FileRecord) -> UploadInfo:
    """Stream one partial's published bytes into the final upload as one chunk."""
    if record.size == 0:
        return info
    start = info.state.offset
    plan = plan_chunk(info.state, ChunkRange(start, start + record.size - 1, None))
    published = await state.store.open_file(record.upload_id)
    if published is None:
        raise BadRequest(Code.CONCAT_PARTIAL_INCOMPLETE, f"{record.upload_id} is not published")
    strong = {k: v for k, v in record.digests.items() if k in integrity.ALGORITHMS}
    async with published, state.admission.receiving(plan.write, info.spec.upload_id):
        return await state.store.write_chunk(
            info.spec.upload_id, plan, _pieces(published, record.size), strong
        )


async def _pieces(published: PublishedFile, size: int) -> AsyncIterator[bytes]:
    offset = 0
    while offset < size:
        data = await published.read(offset, min(PIECE, size - offset))
        if not data:
            return  # shorter than its record: the chunk's length check refuses it
        offset += len(data)
        yield data
