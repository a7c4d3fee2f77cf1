"""Hooks, the front-ends' side: what every front-end calls when an upload is created,
published, deleted or expires, and the pre-create question.

    Hooks.create(store, spec)      pre-create hook, store.create, `created` event
    Hooks.finalize(store, key)     `completed` entry, store.finalize, entry resolved
    Hooks.emit(kind, info)         any other event (deleted, expired)
    Hooks.running()                the app's cleanup context: the outbox opened, the
                                   deliverer (server/hookdelivery.py) running

Invariants:
- The `completed` entry is durable in the outbox *before* `store.finalize` starts, and
  resolved with the record after it returns, all before the front-end answers: a kill at
  any instant leaves either no publication, or a publication and its entry (an
  unresolved one is resolved from the store's record by the deliverer). A whole-file
  mismatch removes the entry and appends `digest_mismatch` instead.
- An entry whose finalize is still running is `held`: the deliverer skips it until it is
  resolved, so it never reads a half-published upload as "never completed".
- A completed upload's event id is derived from its store key (an id completes once and
  is never reused), so even an entry written twice (a finalize retried after an I/O
  error, resolved again after a restart) reaches the receiver under one id.
- Without `--hook-url`/`--hook-command` nothing is written; the front-ends' calls are
  the store's calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web

from transfer.common.http import new_session
from transfer.common.metrics import Metrics
from transfer.core import cloudevents
from transfer.core.cloudevents import EventType
from transfer.core.errors import (
    ConfigError,
    DigestMismatch,
    ProtocolError,
    ServiceUnavailable,
    StorageFailure,
)
from transfer.core.records import UploadInfo, UploadSpec
from transfer.server.hookdelivery import Deliverer
from transfer.server.precreate import ask_pre_create
from transfer.store.base import UploadStore
from transfer.store.outbox import Outbox

log = structlog.get_logger("transfer.hooks")
_COMPLETED_NS = uuid.UUID("5b0e7a52-6f1d-4a4e-9d7e-2f3c1b8a9e10")


@dataclass(frozen=True, slots=True)
class HookConfig:
    """The hook flags of `transfer serve`; the secret is never shown (repr=False)."""

    url: str | None = None  # --hook-url
    command: tuple[str, ...] = ()  # --hook-command, split like a shell would
    secret: bytes | None = field(default=None, repr=False)  # $TRANSFER_HOOK_SECRET
    timeout: float = 10.0  # --hook-timeout: one POST or one command run
    first_backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_backoff: float = 60.0  # --hook-max-backoff
    pre_create_url: str | None = None  # --pre-create-hook-url
    pre_create_timeout: float = 5.0  # --pre-create-hook-timeout
    retry_after: int = 5  # Retry-After of the 503 when the pre-create hook is down
    source: str = "urn:transfer"  # CloudEvents `source`

    @property
    def delivers(self) -> bool:
        return self.url is not None or bool(self.command)


def completed_event_id(key: str) -> str:
    """The `completed` event's id: one per store key, whoever writes it."""
    return str(uuid.uuid5(_COMPLETED_NS, key))


class Hooks:
    """The events of one app (see the module docstring)."""

    def __init__(
        self,
        config: HookConfig,
        outbox: Outbox | None,
        store: UploadStore,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        if config.delivers and outbox is None:
            raise ValueError("hooks that deliver need an outbox")
        self.config, self._store, self._metrics, self._clock = config, store, metrics, clock
        self._outbox = outbox if config.delivers else None
        self.held: set[int] = set()
        self.wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    async def create(self, store: UploadStore, spec: UploadSpec) -> UploadInfo:
        """A new upload: asked first (pre-create hook), then created, then announced.

        Raises:
            ProtocolError: `rejected_by_hook` (403), `hook_unavailable` (503), the store's.
        """
        if self.config.pre_create_url is not None:
            await self._ask(spec)
        info = await store.create(spec)
        await self.emit(EventType.CREATED, info)
        return info

    async def _ask(self, spec: UploadSpec) -> None:
        assert self._session is not None, "Hooks.running() is not active"
        try:
            await ask_pre_create(self._session, self.config, spec, self._clock)
        except ServiceUnavailable:
            self._metrics.inc("transfer_hook_pre_create_total", outcome="unavailable")
            raise
        except ProtocolError:
            self._metrics.inc("transfer_hook_pre_create_total", outcome="rejected")
            raise
        self._metrics.inc("transfer_hook_pre_create_total", outcome="accepted")

    async def finalize(self, store: UploadStore, key: str) -> UploadInfo:
        """`store.finalize(key)` with its `completed` event written first.

        Raises:
            DigestMismatch: as the store's; a `digest_mismatch` event is queued.
        """
        if self._outbox is None:
            return await store.finalize(key)
        entry = await self._outbox.append(
            completed_event_id(key), EventType.COMPLETED, key, self._clock(), None
        )
        self.held.add(entry.seq)
        try:
            info = await store.finalize(key)
        except DigestMismatch:
            await self._outbox.remove(entry.seq)
            self.held.discard(entry.seq)
            await self._emit_current(EventType.DIGEST_MISMATCH, store, key)
            raise
        except asyncio.CancelledError:
            raise  # still held: the store may yet publish; the next start resolves it
        except BaseException:
            self.held.discard(entry.seq)  # the deliverer resolves it from the store
            self.wake.set()
            raise
        try:
            await self._outbox.resolve(entry, cloudevents.upload_data(info))
        finally:  # resolved, or left for the deliverer to resolve from the store
            self.held.discard(entry.seq)
            self.wake.set()
        return info

    async def _emit_current(self, kind: EventType, store: UploadStore, key: str) -> None:
        info = await store.get(key)
        if info is not None:
            await self.emit(kind, info)

    async def emit(self, kind: EventType, info: UploadInfo) -> None:
        """Queue an event about `info`, durably; nothing without delivering hooks."""
        if self._outbox is None:
            return
        data = cloudevents.upload_data(info)
        await self._outbox.append(str(uuid.uuid4()), kind, info.spec.upload_id, self._clock(), data)
        self.wake.set()

    async def expired(self, info: UploadInfo) -> None:
        await self.emit(EventType.EXPIRED, info)

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """The app's cleanup context: outbox opened, session made, deliverer running."""
        if self._outbox is None and self.config.pre_create_url is None:
            yield
            return
        task = None
        if self._outbox is not None:
            try:
                await self._outbox.open()
            except OSError as exc:  # start-up: one line, like any unusable --data-dir
                raise ConfigError(f"the hooks' outbox: {exc.strerror}: {exc.filename}") from exc
            except StorageFailure as exc:  # the S3 store's database refused it
                raise ConfigError(f"the hooks' outbox: {exc.detail}") from exc
        self._session = new_session(timeout=aiohttp.ClientTimeout(total=None))
        if self._outbox is not None:
            deliverer = Deliverer(
                self.config,
                self._outbox,
                self._store,
                self._metrics,
                held=self.held,
                wake=self.wake,
            )
            task = asyncio.create_task(deliverer.run(self._session))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._session.close()
            if self._outbox is not None:
                await self._outbox.close()

    def describe_metrics(self) -> None:
        m = self._metrics
        m.describe("transfer_hook_backlog", "gauge", "Hook events in the outbox, not delivered")
        m.describe("transfer_hook_delivered_total", "counter", "Hook events delivered")
        m.describe("transfer_hook_failures_total", "counter", "Failed hook delivery attempts")
        m.describe(
            "transfer_hook_pre_create_total", "counter", "Pre-create hook answers, by outcome"
        )
        outbox = self._outbox
        if outbox is not None:
            m.collect(lambda: m.set("transfer_hook_backlog", len(outbox.pending())))


__all__ = ["HookConfig", "Hooks", "completed_event_id"]
