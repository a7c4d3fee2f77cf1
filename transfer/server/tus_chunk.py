"""The tus front-end's writes: a PATCH body (or a creation's) appended through the engine.

A tus PATCH is a chunk like any other: `core.protocol.plan_chunk` plans it, space and
a receiving slot are claimed from `Admission`, the store writes and fsyncs it, and when
the last byte of a known length is stored the upload is finalized (verified, then
published atomically). Only the tus rules differ, and they are checked before a byte is
read:

- `Upload-Offset` must equal the stored offset exactly (tus allows no overlap):
  409 `offset_mismatch`, answered with the real `Upload-Offset`.
- The body must not run past `Upload-Length`: 413 `upload_length_exceeded`.
- The body's length must be known (`Content-Length`): 411 `length_required`.
- `Upload-Checksum` is handed to the store as the chunk's content digest, so a
  mismatch cuts the chunk back (nothing appended, offset unchanged) and answers 460
  `checksum_mismatch`; a body that breaks off under a checksum keeps nothing either.

Invariants: the caller holds the upload's lock; every answer that acknowledges bytes
comes after `write_chunk` returned, i.e. after the fsync; the bytes counter and the
completion counter carry `protocol="tus"`.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from transfer.core import integrity, lifecycle, tus
from transfer.core.errors import (
    Code,
    Conflict,
    DigestMismatch,
    PayloadTooLarge,
    ProtocolError,
)
from transfer.core.lifecycle import Trigger, stage_of
from transfer.core.protocol import ChunkPlan, ChunkRange, plan_chunk
from transfer.core.records import UploadInfo
from transfer.server import intake
from transfer.server.intake import body_length
from transfer.server.state import ServerState

log = structlog.get_logger("transfer.server")

PROTOCOL = "tus"


def check_content_type(request: web.Request) -> None:
    """Raises `ProtocolError` `unsupported_media_type` (415) unless the body is
    `application/offset+octet-stream`."""
    if request.content_type != tus.OFFSET_OCTET_STREAM:
        raise ProtocolError(
            Code.UNSUPPORTED_MEDIA_TYPE, f"the body must be {tus.OFFSET_OCTET_STREAM}"
        )


async def append(
    state: ServerState,
    request: web.Request,
    info: UploadInfo,
    offset: int,
    checksum: tus.Checksum | None,
) -> UploadInfo:
    """Append the request's body at `offset`; finalize the upload if it is then whole.

    Raises:
        ProtocolError: the tus refusals of the module docstring; the store's and
            admission's refusals (507, 503, 408, ...).
    """
    length = body_length(request)
    _check_position(state, info, offset, length)
    if length == 0:
        _check_empty(checksum)
    elif lifecycle.allows(stage_of(info), Trigger.WRITE):
        rng = ChunkRange(offset, offset + length - 1, None)
        info = await _receive(state, request, info, plan_chunk(info.state, rng), checksum)
    if lifecycle.allows(stage_of(info), Trigger.FINALIZE):
        info = await finalize(state, info.spec.upload_id)
    return info


def _check_position(state: ServerState, info: UploadInfo, offset: int, length: int) -> None:
    stored = info.state.offset
    if offset != stored:
        raise Conflict(
            Code.OFFSET_MISMATCH,
            f"Upload-Offset is {offset} but {stored} bytes are stored",
            headers={"Upload-Offset": str(stored)},
        )
    total = info.state.total
    if total is not None and offset + length > total:
        raise PayloadTooLarge(
            Code.UPLOAD_LENGTH_EXCEEDED,
            f"{length} bytes at {offset} run past Upload-Length {total}",
        )
    if offset + length > state.config.max_upload:
        raise PayloadTooLarge(
            Code.UPLOAD_TOO_LARGE, f"uploads are limited to {state.config.max_upload} bytes"
        )


def _check_empty(checksum: tus.Checksum | None) -> None:
    """An empty body still has a checksum, and a client that sent a wrong one hears so."""
    if checksum is not None and integrity.digest_of(b"", checksum.algorithm) != checksum.digest:
        raise DigestMismatch(Code.CHECKSUM_MISMATCH, "the empty body's checksum does not match")


async def _receive(
    state: ServerState,
    request: web.Request,
    info: UploadInfo,
    plan: ChunkPlan,
    checksum: tus.Checksum | None,
) -> UploadInfo:
    digest = {checksum.algorithm: checksum.digest} if checksum else {}
    try:
        return await intake.receive(state, request, info, plan, digest, protocol=PROTOCOL)
    except DigestMismatch as exc:
        # tus names this refusal 460; the store already cut the chunk back.
        raise DigestMismatch(Code.CHECKSUM_MISMATCH, exc.detail) from exc


async def finalize(state: ServerState, upload_id: str) -> UploadInfo:
    """Verify and publish (`intake.finalize` under the tus label).

    Raises:
        DigestMismatch: `repr_digest_mismatch`; the upload was reset to offset 0.
    """
    return await intake.finalize(state, upload_id, PROTOCOL)
