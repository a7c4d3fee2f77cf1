"""Removing what no record owns: multipart uploads and tail objects left behind.

A chunk that failed, a replica killed between an S3 write and its commit, or a clean-up
that failed leaves a multipart upload or a tail object that no row names. They are
invisible (no row, so no offset and no published file) but cost storage, so the sweep
aborts and deletes them.

Invariant: only what is older than `grace` is touched, and ownership is read *after*
listing: a writer creates its multipart upload or tail object before its row names it,
so anything young may be about to be owned; anything the row named at listing time is
kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from transfer.core.errors import StorageFailure
from transfer.core.events import Event
from transfer.store.s3.store import S3Backend

log = structlog.get_logger("transfer.store.s3")
GRACE = 3600.0  # longer than any chunk can take to arrive and commit


async def sweep_orphans(
    backend: S3Backend, *, grace: float = GRACE, now: Callable[[], float] | None = None
) -> tuple[int, int]:
    """Abort orphan multipart uploads and delete orphan tails; returns (aborted, deleted)."""
    objects = backend.objects
    cutoff = (now or datetime.now(UTC).timestamp)() - grace
    uploads = [u for u in await objects.multipart_uploads() if u.since.timestamp() < cutoff]
    tails = [t for t in await objects.tails() if t.since.timestamp() < cutoff]
    owned_uploads, owned_tails = await backend.records.owned()
    aborted = [u for u in uploads if u.upload_id not in owned_uploads]
    deleted = [t for t in tails if t.key not in owned_tails]
    prefix = objects.where.key("files", "")
    for upload in aborted:
        await objects.discard_upload(upload.key.removeprefix(prefix), upload.upload_id)
    for tail in deleted:
        await objects.discard(tail.key)
    if aborted or deleted:
        log.info(Event.STORE_ORPHANS_REMOVED, multipart=len(aborted), tails=len(deleted))
    return len(aborted), len(deleted)


async def sweep_forever(
    backend: S3Backend,
    *,
    interval: float,
    sleep: Callable[[float], object] = asyncio.sleep,
) -> None:
    """`sweep_orphans` every `interval` seconds; a storage failure waits for the next."""
    while True:
        await sleep(interval)  # type: ignore[misc]
        try:
            await sweep_orphans(backend)
        except StorageFailure as exc:
            log.warning(Event.STORE_CLEANUP_FAILED, error=exc.detail)


__all__ = ["GRACE", "sweep_forever", "sweep_orphans"]
