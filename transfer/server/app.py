"""The aiohttp application of `transfer serve`: routes, middlewares, background sweep.

The handlers are thin shells that translate HTTP to and from `transfer.core` values
and `UploadStore` calls and never touch the disk themselves: `native.py` (POST, PUT),
`views.py` (HEAD, GET, DELETE, files, health, metrics), `tus.py` (tus 1.0 under
`--tus-path`), `ietf.py` (the IETF resumable-upload draft under `--ietf-path`);
they ask `admission.py` for locks, slots and space; `cors.py` lets browsers on
`--cors-origin` origins use the upload endpoints. `docs/protocol.md` is the contract.
Invariants: every refusal is `application/problem+json` with a stable `code`
(`middleware.py`); every request is logged with its `request_id`; with `token` set
nothing but `/healthz` (and `/metrics` unless protected) and CORS preflights answer
without it (`auth.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from transfer.common.metrics import Metrics
from transfer.server.auth import auth_middleware
from transfer.server.body import tune_allocator
from transfer.server.cors import cors_middleware
from transfer.server.expiry import sweep_forever, sweep_records_forever
from transfer.server.ietf import add_ietf_routes
from transfer.server.listing import list_uploads
from transfer.server.middleware import context_middleware, problems_middleware
from transfer.server.native import create_upload, put_chunk
from transfer.server.state import STATE, MiB, ServerConfig, ServerState
from transfer.server.storemetrics import describe_store_metrics
from transfer.server.tus import add_tus_routes
from transfer.server.views import delete_upload, get_file, get_upload, head_upload, healthz, metrics
from transfer.store.base import RetainingStore, ServerStore
from transfer.store.outbox import Outbox

log = structlog.get_logger("transfer.server")

__all__ = ["STATE", "ServerConfig", "ServerState", "make_app"]


def make_app(
    store: ServerStore, config: ServerConfig | None = None, *, outbox: Outbox | None = None
) -> web.Application:
    state = ServerState(store, config or ServerConfig(), outbox=outbox)
    _describe_metrics(state.metrics)
    state.hooks.describe_metrics()
    describe_store_metrics(state.metrics, store)
    middlewares: list[Middleware] = [context_middleware]
    if state.config.cors_origins:
        # Outside problems_middleware, so refusals carry CORS headers too; outside the
        # bearer check, so a preflight (never credentialed) is answered.
        middlewares.append(cors_middleware(state.config.cors_origins, _upload_paths(state)))
    middlewares.append(problems_middleware(state.metrics))
    auth = auth_middleware(
        state.config.token, state.keyring, protect_metrics=state.config.protect_metrics
    )
    if auth is not None:  # --token, or --tokens-file with tenants and scopes
        middlewares.append(auth)
    app = web.Application(middlewares=middlewares, client_max_size=MiB)
    app[STATE] = state
    app.on_startup.append(tune_allocator)  # large bodies: see server/body.py
    app.cleanup_ctx.append(_sweeper)
    app.cleanup_ctx.append(_record_sweeper)
    app.cleanup_ctx.append(state.hooks.running)
    app.router.add_post("/uploads", create_upload)
    app.router.add_get("/uploads", list_uploads)  # admin: unfinished uploads, all tenants
    app.router.add_put("/uploads/{upload_id}", put_chunk)
    app.router.add_route("HEAD", "/uploads/{upload_id}", head_upload)
    app.router.add_get("/uploads/{upload_id}", get_upload, allow_head=False)
    app.router.add_delete("/uploads/{upload_id}", delete_upload)
    app.router.add_get("/files/{upload_id}", get_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if state.config.tus_path is not None:
        add_tus_routes(app, state.config.tus_path)
    if state.config.ietf_path is not None:
        add_ietf_routes(app, state.config.ietf_path)
    return app


def _upload_paths(state: ServerState) -> list[str]:
    """Path prefixes of the upload endpoints (every front-end's), for CORS."""
    prefixes = ["/uploads", "/files/"]
    if state.config.tus_path is not None:
        prefixes.append(state.config.tus_path.rstrip("/"))
    if state.config.ietf_path is not None:
        prefixes.append(state.config.ietf_path.rstrip("/"))
    return prefixes


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Run the expiry sweep for the app's lifetime."""
    state = app[STATE]
    task = asyncio.create_task(
        sweep_forever(
            state.store,
            state.admission.locks,
            state.metrics,
            ttl=state.config.partial_ttl,
            now=state.config.clock,
            on_expired=state.hooks.expired,
        )
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _record_sweeper(app: web.Application) -> AsyncIterator[None]:
    """With `--record-ttl`, remove old completed records for the app's lifetime."""
    state = app[STATE]
    ttl, store = state.config.record_ttl, state.store
    if ttl is None or not isinstance(store, RetainingStore):
        yield
        return
    locks, now = state.admission.locks, state.config.clock
    task = asyncio.create_task(sweep_records_forever(store, locks, state.metrics, ttl=ttl, now=now))
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
