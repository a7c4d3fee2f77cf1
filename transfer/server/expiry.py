"""Removing abandoned partial uploads, and (with `--record-ttl`) old records.

A partial upload that has not changed for `partial_ttl` seconds (by the store's
`ExpiringStore.modified`: for `FileStore`, its `.part` file's mtime) is deleted by a
background sweep (every `min(ttl / 4, 60 s)`), under the upload's lock and after a
second look, so an upload that is receiving bytes is never removed. Its id then answers
404, like one that never existed. Completed files are never touched.

With a `record_ttl`, a second sweep (every `min(ttl / 4, 10 min)`; each pass walks the
retained records, so it runs less often than the partials' one) removes the records of
uploads published longer ago than that, the same way: under the upload's lock, after a
second look (`RetainingStore.completed_at`). Only the record goes: `HEAD/GET
/uploads/{id}` answer 404 afterwards and the id cannot be created again (409
`upload_complete`), while the published file stays in `files/{id}` and `GET /files/{id}`
still serves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from transfer.common.metrics import Metrics
from transfer.core.errors import StorageFailure
from transfer.core.events import Event
from transfer.core.lifecycle import Trigger, allows, stage_of
from transfer.core.records import UploadInfo
from transfer.server.locks import KeyedLocks
from transfer.store.base import ExpiringStore, RetainingStore, UploadStore

log = structlog.get_logger("transfer.expiry")


class SweptStore(UploadStore, ExpiringStore, Protocol):
    """What the sweep needs: the expiry listing, and `get` and `delete`."""


async def sweep_once(
    store: SweptStore,
    locks: KeyedLocks,
    metrics: Metrics,
    *,
    ttl: float,
    now: Callable[[], float],
    on_expired: Callable[[UploadInfo], Awaitable[None]] | None = None,
) -> list[str]:
    """Delete every partial upload idle longer than `ttl`; returns their ids.
    `on_expired` (the hooks' `expired` event) is told of each, under its lock."""
    removed = []
    for upload_id, modified in await store.partials():
        if now() - modified <= ttl:
            continue
        async with locks.hold(upload_id):
            modified_now = await store.modified(upload_id)
            if modified_now is None or now() - modified_now <= ttl:
                continue  # completed, deleted or written to meanwhile
            info = await store.get(upload_id)
            if info is None or not allows(stage_of(info), Trigger.EXPIRE):
                continue
            await store.delete(upload_id)
            if on_expired is not None:
                await on_expired(info)
        removed.append(upload_id)
        metrics.inc("transfer_uploads_expired_total")
        log.info(Event.UPLOAD_EXPIRED, upload_id=upload_id, offset=info.state.offset, idle_s=ttl)
    return removed


async def sweep_forever(
    store: SweptStore,
    locks: KeyedLocks,
    metrics: Metrics,
    *,
    ttl: float,
    now: Callable[[], float],
    on_expired: Callable[[UploadInfo], Awaitable[None]] | None = None,
) -> None:
    await _every(
        min(ttl / 4, 60.0),
        lambda: sweep_once(store, locks, metrics, ttl=ttl, now=now, on_expired=on_expired),
    )


async def sweep_records_once(
    store: RetainingStore,
    locks: KeyedLocks,
    metrics: Metrics,
    *,
    ttl: float,
    now: Callable[[], float],
) -> list[str]:
    """Remove the record of every upload published longer than `ttl` ago; returns ids."""
    removed = []
    for upload_id in await store.completed_before(now() - ttl):
        async with locks.hold(upload_id):
            published = await store.completed_at(upload_id)
            if published is None or now() - published <= ttl:
                continue  # removed, or published again meanwhile
            await store.forget_record(upload_id)
        removed.append(upload_id)
        metrics.inc("transfer_records_expired_total")
        log.info(Event.RECORD_EXPIRED, upload_id=upload_id, age_s=round(now() - published))
    return removed


async def sweep_records_forever(
    store: RetainingStore,
    locks: KeyedLocks,
    metrics: Metrics,
    *,
    ttl: float,
    now: Callable[[], float],
) -> None:
    await _every(
        min(ttl / 4, 600.0), lambda: sweep_records_once(store, locks, metrics, ttl=ttl, now=now)
    )


async def _every(interval: float, sweep: Callable[[], Awaitable[object]]) -> None:
    """Run `sweep` every `interval` seconds, for ever (until cancelled); a pass that
    meets a storage failure (the S3 store's services away) is logged, and the next pass
    tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep()
        except StorageFailure as exc:
            log.warning(Event.SWEEP_FAILED, error=exc.detail)
