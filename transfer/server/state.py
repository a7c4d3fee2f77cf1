"""The server's configuration and per-app state, shared by its handlers.

Invariant: one `ServerState` per application, stored under `STATE` (no globals); the
handlers reach the store, the locks and the metrics only through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from transfer.common.metrics import Metrics
from transfer.server.locks import KeyedLocks
from transfer.store.filestore import UploadStore

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
