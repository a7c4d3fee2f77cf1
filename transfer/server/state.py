"""The server's configuration and per-app state, shared by its handlers.

Invariant: one `ServerState` per application, stored under `STATE` (no globals); the
handlers reach the store, admission (locks, slots, space) and the metrics only through
it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from transfer.common.metrics import Metrics
from transfer.server.admission import Admission, Limits
from transfer.store.base import ServerStore

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits, each a `transfer serve` flag; and the clocks, injectable for tests."""

    max_chunk: int = 64 * MiB
    max_upload: int = 64 * 1024 * MiB
    idle_timeout: float = 30.0
    min_rate: int = 1024  # bytes/s a body must average once idle_timeout has passed
    max_active: int = 64
    max_partial: int = 256 * 1024 * MiB  # all partial uploads together
    reserve: int = 256 * MiB  # disk space never handed to uploads
    partial_ttl: float = 24 * 3600.0  # a partial upload idle this long is removed
    record_ttl: float | None = None  # a completed record this old is removed; None: kept
    retry_after: int = 1
    token: str | None = None  # bearer token; None: no authentication (loopback use)
    protect_metrics: bool = False
    tus_path: str | None = "/tus/"  # the tus 1.0 front-end's base path; None: no tus
    # the IETF resumable-upload front-end's base path; None: switched off
    ietf_path: str | None = "/resumable/"
    cors_origins: tuple[str, ...] = ()  # origins browsers may upload from ("*": any)
    clock: Callable[[], float] = time.time  # wall clock, for expiry
    monotonic: Callable[[], float] = time.monotonic  # for a body's average rate

    @property
    def limits(self) -> Limits:
        return Limits(self.max_active, self.max_partial, self.reserve, self.retry_after)


@dataclass(slots=True)
class ServerState:
    store: ServerStore
    config: ServerConfig
    metrics: Metrics = field(default_factory=Metrics)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.store, self.config.limits, self.metrics)


STATE = web.AppKey("state", ServerState)
