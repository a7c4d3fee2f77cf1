"""What every PATCH-style front-end (tus, IETF) does with a planned chunk and a whole
upload, labelled by its protocol: one copy, so the fronts cannot drift.

- `body_length`: these fronts need `Content-Length` (411 `length_required` otherwise).
- `receive`: the body is read through `request_body` (the one timed reader) inside an
  `Admission.receiving` slot and handed to `store.write_chunk`, which returns only
  after the bytes are fsynced; the bytes the store kept (a broken-off body may keep
  some) are counted in `transfer_bytes_received_total{protocol=...}` however it ended.
- `finalize`: verify (against a declared `Repr-Digest`, if any) and publish, then count
  `transfer_uploads_completed_total{protocol=...}` and log `upload.completed`; a
  whole-file mismatch logs `upload.reset` (the store reset the upload to offset 0).
- `deferring`: the scope in which a request that creates an upload and carries its
  whole body (a native whole PUT, a tus creation-with-upload, an IETF `?1` creation)
  may leave the upload's parameters not durable until it ends (`DeferringStore`).

Invariant: the caller holds the upload's lock (`Admission.upload`).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager

import structlog
from aiohttp import web

from transfer.core import integrity
from transfer.core.errors import Code, DigestMismatch, ProtocolError
from transfer.core.events import Event
from transfer.core.integrity import Digests
from transfer.core.protocol import ChunkPlan
from transfer.core.records import UploadInfo
from transfer.server.body import request_body
from transfer.server.middleware import BYTES
from transfer.server.state import ServerState

log = structlog.get_logger("transfer.server")


def body_length(request: web.Request) -> int:
    """The body's length: `Content-Length`, or 0 when there is no body.

    Raises:
        ProtocolError: `length_required` (411) for a chunked body, whose end could not
            be checked against the upload's length before it is read.
    """
    if request.content_length is not None:
        return request.content_length
    if request.body_exists:
        raise ProtocolError(Code.LENGTH_REQUIRED, "this body needs Content-Length")
    return 0


def deferring(
    state: ServerState, upload_id: str, *, whole: bool
) -> AbstractAsyncContextManager[None]:
    """For a creating request whose body is the whole file, a scope in which the store
    may create the upload without making its parameters durable: it is published (the
    record holds them) or they are made durable before the scope ends. The caller holds
    the id's lock throughout and answers nothing about the upload (no 104 either)
    before the scope has ended. Not with delivering hooks: their `created` event would
    announce the upload durably before."""
    store = state.deferring
    if whole and store is not None and not state.hooks.config.delivers:
        return store.deferred(upload_id)
    return contextlib.nullcontext()


async def receive(
    state: ServerState,
    request: web.Request,
    info: UploadInfo,
    plan: ChunkPlan,
    digest: Digests,
    *,
    protocol: str | None,
) -> UploadInfo:
    """Write the request's body as `plan` says; `digest` is the body's own (or {}).
    The bytes kept are counted however the chunk ended (a broken-off body's may be
    kept), labelled by `protocol` (None: the native protocol, unlabelled).

    Raises:
        ProtocolError: the store's and admission's refusals (digest, 507, 503, 408, ...).
    """
    upload_id = info.spec.upload_id
    try:
        async with (
            state.admission.receiving(plan.write, upload_id) as slot,
            contextlib.aclosing(request_body(request, state.config, slot)) as body,
        ):
            return await state.store.write_chunk(upload_id, plan, body, digest)
    finally:
        after = await state.store.get(upload_id)
        written = (after.state.offset if after else info.state.offset) - info.state.offset
        request[BYTES] = written
        labels = {"protocol": protocol} if protocol else {}
        state.metrics.inc("transfer_bytes_received_total", written, **labels)


async def finalize(state: ServerState, upload_id: str, protocol: str) -> UploadInfo:
    """Verify and publish; count and log it.

    Raises:
        DigestMismatch: `repr_digest_mismatch`; the upload was reset to offset 0.
    """
    try:
        info = await state.hooks.finalize(state.store, upload_id)
    except DigestMismatch:
        log.warning(Event.UPLOAD_RESET, reason="repr_digest_mismatch", protocol=protocol)
        raise
    record = info.record
    assert record is not None  # finalize returns a record or raises
    state.metrics.inc("transfer_uploads_completed_total", protocol=protocol)
    log.info(
        Event.UPLOAD_COMPLETED,
        size=record.size,
        digest=integrity.to_hex(record.digests).get(integrity.PREFERRED),
        protocol=protocol,
    )
    return info
