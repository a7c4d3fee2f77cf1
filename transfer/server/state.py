"""The server's configuration and per-app state, shared by its handlers.

Invariant: one `ServerState` per application, stored under `STATE` (no globals); the
handlers reach the store, admission (locks, slots, space) and the metrics only through
it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from transfer.common.metrics import Metrics
from transfer.server.admission import Admission, Limits
from transfer.server.hooks import HookConfig, Hooks
from transfer.server.tenants import Keyring
from transfer.store.base import DeferringStore, ServerStore
from transfer.store.outbox import Outbox

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
    tokens_file: Path | None = None  # named credentials with tenants (exclusive with token)
    tenant_max_active: int | None = None  # one tenant's bodies at once; None: max_active/2
    tenant_max_partial: int | None = None  # one tenant's partial bytes; None: max_partial/2
    stall_grace: float = 2.0  # under min_rate this long, a body may be cut for a waiting one
    protect_metrics: bool = False
    tus_path: str | None = "/tus/"  # the tus 1.0 front-end's base path; None: no tus
    # the IETF resumable-upload front-end's base path; None: switched off
    ietf_path: str | None = "/resumable/"
    cors_origins: tuple[str, ...] = ()  # origins browsers may upload from ("*": any)
    # --hook-url, --hook-command, --pre-create-hook-url
    hooks: HookConfig = field(default_factory=HookConfig)
    clock: Callable[[], float] = time.time  # wall clock, for expiry
    monotonic: Callable[[], float] = time.monotonic  # for a body's average rate

    @property
    def limits(self) -> Limits:
        share = self.tenant_max_active or max(1, self.max_active // 2)
        space = self.tenant_max_partial or self.max_partial // 2
        return Limits(
            self.max_active,
            self.max_partial,
            self.reserve,
            self.retry_after,
            tenant_max_active=share,
            tenant_max_partial=space,
            min_rate=self.min_rate,
            stall_grace=self.stall_grace,
        )


@dataclass(slots=True)
class ServerState:
    store: ServerStore
    config: ServerConfig
    metrics: Metrics = field(default_factory=Metrics)
    outbox: Outbox | None = None  # where hook events wait (needed with --hook-url/-command)
    admission: Admission = field(init=False)
    keyring: Keyring | None = field(init=False)  # --tokens-file's live table
    hooks: Hooks = field(init=False)
    # The store as a `DeferringStore`, or None: asked once, not per request (an
    # isinstance() of a runtime protocol walks its members: ~15 us, issue 13).
    deferring: DeferringStore | None = field(init=False)

    def __post_init__(self) -> None:
        self.deferring = self.store if isinstance(self.store, DeferringStore) else None
        self.admission = Admission(
            self.store, self.config.limits, self.metrics, monotonic=self.config.monotonic
        )
        tokens_file = self.config.tokens_file
        self.keyring = None if tokens_file is None else Keyring(tokens_file)
        self.hooks = Hooks(
            self.config.hooks, self.outbox, self.store, self.metrics, self.config.clock
        )


STATE = web.AppKey("state", ServerState)
