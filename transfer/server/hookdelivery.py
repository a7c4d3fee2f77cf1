"""Delivering the outbox: one event at a time, in seq order, retried until it lands.

Each pending entry becomes a CloudEvents document (core/cloudevents.py) sent to every
target: `--hook-url` (a signed POST; any 2xx is success) and `--hook-command` (the
document on stdin; exit 0 is success). A failed attempt (connection refused, timeout,
non-2xx, non-zero exit) is retried with jittered exponential back-off (tenacity, sleep
injectable) for as long as it takes, every retry logged (`hook.retry`) and counted;
only then is the entry removed from the outbox. A target that already took the event
is not sent it again by the retries of that entry.

Invariants:
- At least once: an entry leaves the outbox only after every target took it; a kill
  before the removal means one more delivery after the restart, under the same id.
- In order per upload: entries go out in seq order, the next only after the previous
  one was delivered (one at a time: a receiver that is down holds everything up, which
  is what "in order" costs).
- An unresolved `completed` entry (a crash between its write and the publication, or a
  finalize that failed) is resolved from the store's record; if the store has no record
  for it, the upload never completed and the entry is dropped (`hook.dropped`). Entries
  whose finalize is running now (`held`) are skipped until it ends.
- A shared outbox (replicas on one PostgreSQL table): only the process holding
  `outbox.leading()` delivers; it polls for the others' appends (`SHARED_POLL`), and an
  unresolved entry it does not hold is dropped only once older than `UNRESOLVED_GRACE`
  (before that it may be another replica's finalize in progress), else looked at again.
  A storage failure while leading ends the lead (a PostgreSQL restart took the lock
  with the connection): it leads again, with a new lock, before delivering more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from transfer.common.metrics import Metrics
from transfer.core import cloudevents, tenancy
from transfer.core.cloudevents import EventType
from transfer.core.errors import StorageFailure
from transfer.core.events import Event
from transfer.store.base import UploadStore
from transfer.store.outbox import Outbox, OutboxEntry

if TYPE_CHECKING:
    from transfer.server.hooks import HookConfig

log = structlog.get_logger("transfer.hooks")
SECRET_ENV = "TRANSFER_HOOK_SECRET"
SHARED_POLL = 1.0  # seconds between two looks at a shared outbox when idle
# An unresolved entry of a shared outbox younger than this may be another replica's
# finalize in progress (a whole-file rehash after a fail-over can take minutes).
UNRESOLVED_GRACE = 900.0
_STDERR_TAIL = 300  # characters of a failed command's stderr kept for the log


class HookFailed(Exception):
    """One attempt at one target failed; retried."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target, self.reason = target, reason


def post_headers(secret: bytes | None, body: bytes, now: float) -> dict[str, str]:
    """Content type, and the signature when a secret is set."""
    headers = {"Content-Type": cloudevents.CONTENT_TYPE}
    if secret:
        headers[cloudevents.SIGNATURE_HEADER] = cloudevents.sign(secret, body, int(now))
    return headers


class Deliverer:
    """The outbox's one consumer (see the module docstring)."""

    def __init__(
        self,
        config: HookConfig,
        outbox: Outbox,
        store: UploadStore,
        metrics: Metrics,
        *,
        held: set[int],
        wake: asyncio.Event,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self._outbox, self._store, self._metrics = config, outbox, store, metrics
        self._held, self._wake, self._sleep, self._clock = held, wake, sleep, clock
        self._deferred: set[int] = set()  # a shared outbox's young unresolved entries

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Deliver for ever (until cancelled), once this process leads."""
        while True:
            try:
                async with self._outbox.leading():
                    await self._outbox.refresh()
                    await self._loop(session)
            except Exception as exc:  # the outbox's database away: lead again later
                log.warning(Event.HOOK_RETRY, error=f"{type(exc).__name__}: {exc}")
                await self._sleep(self.config.max_backoff)

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            seq = self._next()
            if seq is None:
                await self._idle()
                continue
            try:
                await self._deliver(seq, session)
            except Exception as exc:  # an unreadable entry, a store error
                if self._outbox.shared and isinstance(exc, StorageFailure):
                    raise  # its database may have restarted, and our lead gone with it
                # Never let the one consumer die: log, wait, look again (same entry first).
                log.warning(Event.HOOK_RETRY, seq=seq, error=f"{type(exc).__name__}: {exc}")
                await self._sleep(self.config.max_backoff)

    def _next(self) -> int | None:
        skip = self._held
        if self._deferred:
            skip = skip | self._deferred
        return next((seq for seq in self._outbox.pending() if seq not in skip), None)

    async def _idle(self) -> None:
        """Wait for an append here; a shared outbox is also polled for the others'."""
        self._wake.clear()
        if self._next() is not None:  # appended between the look and the clear
            return
        if not self._outbox.shared:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), SHARED_POLL)
        self._deferred.clear()  # look at them again
        await self._outbox.refresh()

    async def _deliver(self, seq: int, session: aiohttp.ClientSession) -> None:
        entry = await self._outbox.read(seq)
        if entry is not None and entry.data is None:
            entry = await self._resolve(entry)
            if entry is None:
                return  # dropped (removed), or left for later
        if entry is not None:
            assert entry.data is not None
            doc = cloudevents.document(
                EventType(entry.kind), entry.event_id, self.config.source, entry.at, entry.data
            )
            attempts = await self._send(entry, cloudevents.encode(doc), session)
            log.info(Event.HOOK_DELIVERED, **_fields(entry), attempts=attempts)
        await self._outbox.remove(seq)

    async def _resolve(self, entry: OutboxEntry) -> OutboxEntry | None:
        """An unresolved completion, from the store's record. None if there is none: it
        is then dropped, unless another process may still be finishing it (a shared
        outbox, younger than `UNRESOLVED_GRACE`): deferred to a later look."""
        info = await self._store.get(entry.key)
        if info is not None and info.record is not None:
            return await self._outbox.resolve(entry, cloudevents.upload_data(info))
        if self._outbox.shared and self._clock() - entry.at < UNRESOLVED_GRACE:
            self._deferred.add(entry.seq)
            return None
        log.info(Event.HOOK_DROPPED, **_fields(entry), reason="upload_not_completed")
        await self._outbox.remove(entry.seq)
        return None

    async def _send(self, entry: OutboxEntry, body: bytes, session: aiohttp.ClientSession) -> int:
        """Every target takes `body`, retried until they have; returns the attempts."""
        done: set[str] = set()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(HookFailed),
            # wait_exponential + wait_random, not wait_exponential_jitter: its `initial`
            # is deprecated in tenacity 9 and `multiplier` is missing before it.
            wait=wait_exponential(multiplier=self.config.first_backoff, max=self.config.max_backoff)
            + wait_random(0, self.config.first_backoff),
            sleep=self._sleep,
            before_sleep=lambda state: self._on_retry(entry, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._attempt(entry, body, session, done)
        return int(retrying.statistics.get("attempt_number", 1))

    async def _attempt(
        self, entry: OutboxEntry, body: bytes, session: aiohttp.ClientSession, done: set[str]
    ) -> None:
        if self.config.url is not None and "url" not in done:
            await self._counted("url", self._post(self.config.url, body, session))
            done.add("url")
        if self.config.command and "command" not in done:
            await self._counted("command", self._run(self.config.command, body, entry))
            done.add("command")

    async def _counted(self, target: str, sending: Awaitable[None]) -> None:
        try:
            await sending
        except HookFailed:
            self._metrics.inc("transfer_hook_failures_total", target=target)
            raise
        self._metrics.inc("transfer_hook_delivered_total", target=target)

    async def _post(self, url: str, body: bytes, session: aiohttp.ClientSession) -> None:
        headers = post_headers(self.config.secret, body, self._clock())
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                if not 200 <= resp.status < 300:
                    raise HookFailed("url", f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HookFailed("url", f"{type(exc).__name__}: {exc}") from exc

    async def _run(self, command: tuple[str, ...], body: bytes, entry: OutboxEntry) -> None:
        env = _command_env(entry)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env,
            )  # fmt: skip
        except OSError as exc:
            raise HookFailed("command", f"cannot run: {exc.strerror}") from exc
        try:
            _, err = await asyncio.wait_for(proc.communicate(body), self.config.timeout)
        except BaseException as exc:  # a timeout, or cancellation: never leave it running
            proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise HookFailed("command", f"timed out after {self.config.timeout}s") from exc
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-_STDERR_TAIL:].strip()
            raise HookFailed("command", f"exit status {proc.returncode}: {tail}")

    def _on_retry(self, entry: OutboxEntry, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else None
        log.warning(
            Event.HOOK_RETRY,
            **_fields(entry),
            attempt=state.attempt_number,
            error=str(error),
            retry_in_s=round(wait, 3) if wait is not None else None,
        )


def _command_env(entry: OutboxEntry) -> dict[str, str]:
    """The server's environment without the secret, plus the event's id and type."""
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    env.update(TRANSFER_EVENT_ID=entry.event_id, TRANSFER_EVENT_TYPE=entry.kind)
    return env


def _fields(entry: OutboxEntry) -> Mapping[str, object]:
    return {
        "event_id": entry.event_id,
        "type": entry.kind,
        "upload_id": tenancy.public_id(entry.key),
        "seq": entry.seq,
    }


__all__ = ["Deliverer", "HookFailed", "post_headers"]
