"""Delivering one journaled file: chunked, resumable, verified.

Invariants:
- Before any (re)upload the file's bytes are hashed and compared with the journaled
  digest: a locally damaged file is never sent as truth (`LocalFileDamaged`). Each
  attempt reads the file through `localfile.open_checked`, which checks it; a file sent
  in one request is checked and read in the same pass (see localfile's invariants); the
  first attempt of a file this process just hashed for the journal may use that pass
  instead (`deliver(hashed=...)`, `server_checks_chunks`: localfile's "One pass").
- The server's offset is the only resume point: after any failure or 409 the next step
  asks (`bytes */*`) before it sends. A 308 that acknowledges less than was sent moves
  the next chunk back to what the server holds.
- A file is confirmed only when the server's returned digest equals the journaled one.
- A whole-file mismatch (`repr_digest_mismatch`, server reset to 0) is re-sent from zero
  at most `mismatch_retries` times; other refusals fail the file with the server's code.
- Only `TransientError` is retried (see `retry.RetryPolicy`); each retry is logged.
- Every state change goes through `JournalEntry.after` and so through the one table,
  `core.filestate.TRANSITIONS`: confirmed on a matching digest; failed on a refusal, a
  damaged spool file, an exhausted retry budget or a different digest.
- The uploader speaks only the `client.Client` seam, whatever the protocol. Where the
  server names the upload (tus: `Progress.created` with its `location`), the URL is
  journaled (`remember`, fsynced) before a byte is sent, and a restart `adopt`s it from
  the journal, so a file never gets a second upload on the server by a crash after its
  creation was acknowledged.
- A file confirmed without a whole-file digest (a tus server that offers none) is
  confirmed by `FileEvent.PROTOCOL_CHECKED` and journaled with what was checked
  (`verified`: per-chunk-checksum or length-only); `upload.confirmed` always says it.
- Log lines of one delivery carry its `file_id` from structlog's context (bound in
  `deliver`, never passed by hand). Natively the upload id is the file id; where the
  server names the upload, its id is bound as `upload_id` as soon as it is known. The
  binding lives in the delivering task's context, copied into the chunk tasks it
  spawns; each delivery runs in its own task (a pipeline worker, or a task of
  `gather`), and one task delivers one file at a time, so ids never mix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import structlog
from tenacity import RetryCallState

from transfer.core.errors import (
    Code,
    Interrupted,
    LocalFileDamaged,
    RemoteError,
    TransientError,
)
from transfer.core.events import Event
from transfer.core.filestate import FileEvent
from transfer.sender.client import Announce, Body, Client, Progress, Verified
from transfer.sender.journal import JournalEntry
from transfer.sender.localfile import Hashed, LocalFile, auto_chunk_size, open_checked
from transfer.sender.localfile import hash_file as hash_file  # noqa: PLC0414
from transfer.sender.reasons import Reason
from transfer.sender.retry import RetryPolicy
from transfer.sender.stall import Stall

log = structlog.get_logger("transfer.uploader")

_InFlight = deque[tuple[int, asyncio.Task[Progress]]]  # (end offset, its PUT), in order
_MAX_RESYNCS = 20


@dataclass(slots=True)
class UploadStats:
    """Counters the sender reports; shared by every worker."""

    bytes_sent: int = 0
    retries: int = 0
    resumes: int = 0
    chunks: int = 0
    unreachable: bool = False  # in an outage: `server.unreachable` logged, no success since


@dataclass(slots=True)
class Uploader:
    client: Client
    chunk_size: int | None  # None: `auto_chunk_size` per file
    policy: RetryPolicy
    stats: UploadStats = field(default_factory=UploadStats)
    mismatch_retries: int = 3
    window: int = 2  # chunks of one file in flight at once (see _pipeline)
    stopping: Callable[[], bool] = lambda: False
    # Journals an entry durably (the pipeline sets `journal.record`): a new upload URL.
    remember: Callable[[JournalEntry], Awaitable[None]] | None = None

    @property
    def server_checks_chunks(self) -> bool:
        """The server checks each chunk's Content-Digest and the Repr-Digest before it
        publishes (`Client.checks_chunks`): the journaling pass may stand in for the
        first attempt's check."""
        return self.client.checks_chunks

    def journal_chunk(self, size: int) -> int | None:
        """The chunk size at which to take chunk digests while journaling a `size`-byte
        file; None when unused (sent in one request, or the server checks no chunk)."""
        chunk = self.chunk_size or auto_chunk_size(size)
        return chunk if self.server_checks_chunks and size > chunk else None

    async def deliver(
        self, entry: JournalEntry, *, fresh: bool = False, hashed: Hashed | None = None
    ) -> JournalEntry:
        """Upload `entry` until confirmed or failed; returns the entry's new state.

        `fresh`: this process journaled the entry itself, under an id the server cannot
        know yet, so the first attempt skips the POST: its first PUT creates the upload.
        Every attempt, fresh or not, first checks the file against the journal (`hashed`:
        this process's journaling pass, for the first one). Every log line until it
        returns carries `file_id` (see the module's invariants).
        """
        with structlog.contextvars.bound_contextvars(file_id=entry.file_id):
            self.client.adopt(entry.file_id, entry.upload_url)
            _bind_upload(entry.upload_url)
            try:
                return await self._deliver(entry, fresh=fresh, hashed=hashed)
            finally:
                self.client.forget(entry.file_id)
                structlog.contextvars.unbind_contextvars("upload_id")

    async def _deliver(
        self, entry: JournalEntry, *, fresh: bool, hashed: Hashed | None
    ) -> JournalEntry:
        inline = fresh and self.client.inline_create
        hashed = hashed if fresh and self.server_checks_chunks else None
        for attempt in range(self.mismatch_retries + 1):
            known, hashed = hashed, None  # it stands in for the first attempt's check only
            try:
                progress = await self._push(entry, inline=inline and attempt == 0, hashed=known)
            except RemoteError as exc:
                if exc.code == Code.REPR_DIGEST_MISMATCH and attempt < self.mismatch_retries:
                    log.warning(Event.UPLOAD_MISMATCH, attempt=attempt + 1)
                    continue
                return _failed(entry, FileEvent.REFUSED, f"{exc.status} {exc.code}: {exc.detail}")
            except LocalFileDamaged as exc:
                return _failed(entry, FileEvent.SPOOL_DAMAGED, str(exc))
            except TransientError as exc:
                return _failed(entry, FileEvent.GAVE_UP, str(exc))
            return self._confirm(entry, progress)
        raise AssertionError("unreachable: the last attempt returns")

    def _confirm(self, entry: JournalEntry, progress: Progress) -> JournalEntry:
        """Confirmed by the whole-file digest where the server offers one, else by what
        the protocol allows (`progress.verified`), which the journal then records."""
        entry = dataclasses.replace(entry, upload_url=progress.location or entry.upload_url)
        verified = progress.verified
        if verified is Verified.WHOLE_FILE_DIGEST and progress.digest != entry.digest:
            reason = f"server holds digest {progress.digest}, journal has {entry.digest}"
            return _failed(entry, FileEvent.DIGEST_DIFFERS, reason)
        if progress.offset != entry.size:
            reason = f"server holds {progress.offset} bytes, journal has {entry.size}"
            return _failed(entry, FileEvent.DIGEST_DIFFERS, reason)
        log.info(Event.UPLOAD_CONFIRMED, size=entry.size, verified=verified.value)
        if verified is Verified.WHOLE_FILE_DIGEST:
            return entry.after(FileEvent.DIGEST_MATCHED, server_digest=progress.digest)
        confirmed = entry.after(FileEvent.PROTOCOL_CHECKED)
        return dataclasses.replace(confirmed, verified=verified.value)

    async def _push(self, entry: JournalEntry, *, inline: bool, hashed: Hashed | None) -> Progress:
        """One attempt: check the file (before any request), find or create the upload,
        send what the server lacks."""
        chunk = self.chunk_size or auto_chunk_size(entry.size)
        async with open_checked(entry, chunk, hashed) as source:
            if inline:
                progress = Progress(offset=0)
            else:
                progress = await self._retry(entry, lambda: self._create(entry))
            if progress.offset and progress.record is None:
                self.stats.resumes += 1
                log.info(Event.UPLOAD_RESUMED, offset=progress.offset)
            return await self._send_all(entry, source, progress)

    async def _send_all(
        self,
        entry: JournalEntry,
        source: LocalFile,
        progress: Progress,
    ) -> Progress:
        """Send until the server returns the record: pipelined while nothing surprises,
        then one chunk at a time. A 409 re-asks the offset (at most `_MAX_RESYNCS`
        times); too many steps without progress end in a `TransientError`."""
        known: Progress | None = await self._pipeline(entry, source, progress)
        stall = Stall(best=progress.offset)
        resyncs = 0
        while known is None or known.record is None:
            self._check_stopping(entry)
            try:
                known = await self._retry(entry, _bind(self._step, entry, source, known))
            except RemoteError as exc:
                if exc.status != 409 or resyncs >= _MAX_RESYNCS:
                    raise
                resyncs += 1
                log.info(Event.UPLOAD_RESYNC, code=exc.code)
                known = None
                continue
            stall.observe(known.offset)
        return known

    def _check_stopping(self, entry: JournalEntry) -> None:
        if self.stopping():
            raise Interrupted(f"stopped before {entry.file_id} was complete")

    async def _pipeline(
        self, entry: JournalEntry, source: LocalFile, progress: Progress
    ) -> Progress | None:
        """The happy path of a multi-chunk file: keep `window` chunks in flight, so the
        next chunk travels while the server fsyncs the previous one (the server's per-id
        lock keeps them in order). Any surprise (an error, a short acknowledgement, a
        gap) ends it: None, and the careful one-chunk-at-a-time loop takes over."""
        sequential = not self.client.overlapping_chunks or self.window < 2
        if sequential or progress.record is not None or entry.size <= source.chunk:
            return progress
        pending: _InFlight = deque()
        try:
            return await self._stream(entry, source, progress, pending)
        except TransientError as exc:
            # The careful path retries this chunk after asking for the offset: a retry.
            self.stats.retries += 1
            log.warning(Event.UPLOAD_RETRY, attempt=1, error=str(exc), wait=0)
            return None
        except RemoteError as exc:
            log.info(Event.UPLOAD_RESYNC, code=exc.code)
            return None
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    async def _stream(
        self, entry: JournalEntry, source: LocalFile, known: Progress, pending: _InFlight
    ) -> Progress | None:
        """Await the chunks of `pending` in order, topping it up to `window`; None as soon
        as one is acknowledged short of its end (the server held other bytes)."""
        offset = known.offset
        while known.record is None:
            self._check_stopping(entry)
            while len(pending) < self.window and offset < entry.size:
                data = await source.read(offset)
                pending.append((offset + len(data), self._spawn(entry, offset, data)))
                offset += len(data)
            end, task = pending.popleft()
            known = await task
            if known.record is None and known.offset != end:
                log.info(Event.UPLOAD_RESYNC, code=Reason.SHORT_ACKNOWLEDGEMENT)
                return None
        return known

    def _spawn(self, entry: JournalEntry, offset: int, data: Body) -> asyncio.Task[Progress]:
        return asyncio.create_task(self._put(entry, offset, data))

    async def _put(self, entry: JournalEntry, offset: int, data: Body) -> Progress:
        """One chunk PUT, counted and logged."""
        started = time.perf_counter()
        progress = await self.client.put_chunk(
            entry.file_id, offset, data, entry.size, announce=_announce(entry)
        )
        self.stats.bytes_sent += len(data)
        self.stats.chunks += 1
        self._reachable()
        log.info(
            Event.CHUNK_SENT,
            offset=offset,
            bytes=len(data),
            acknowledged=progress.offset,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return progress

    async def _step(
        self,
        entry: JournalEntry,
        source: LocalFile,
        known: Progress | None,
    ) -> Progress:
        if known is None:
            known = await self._resync(entry)
            if known.record is not None:
                return known
        if entry.size == 0:
            return await self.client.finish_empty(entry.file_id, announce=_announce(entry))
        return await self._put(entry, known.offset, await source.read(known.offset))

    async def _create(self, entry: JournalEntry) -> Progress:
        """Create (or find) the upload; a URL the server just assigned is journaled
        durably before this returns, so before any byte of the file is sent."""
        announce = _announce(entry)
        progress = await self.client.create(
            entry.file_id,
            name=announce.name,
            size=entry.size,
            metadata=announce.metadata,
            digest=announce.digest,
        )
        if progress.created and progress.location is not None:
            if self.remember is not None:
                await self.remember(dataclasses.replace(entry, upload_url=progress.location))
            _bind_upload(progress.location)
        return progress

    async def _retry(
        self, entry: JournalEntry, step: Callable[[], Awaitable[Progress]]
    ) -> Progress:
        """Run `step`; on a TransientError, back off and only ask where the server stands
        (`_resync`): the caller's loop then sends from that offset."""
        first = True
        async for attempt in self.policy.retrying(self._log_retry):
            with attempt:
                progress = await (step() if first else self._resync(entry))
                self._reachable()
                return progress
            first = False
        raise AssertionError("unreachable: tenacity reraises")

    async def _resync(self, entry: JournalEntry) -> Progress:
        """Ask the server where the upload stands (creating it if the server lost it)."""
        known = await self.client.query(entry.file_id)
        return await self._create(entry) if known.missing else known

    def _log_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            Event.UPLOAD_RETRY,
            attempt=state.attempt_number,
            error=str(error),
            wait=round(state.upcoming_sleep, 3),
            elapsed=round(state.seconds_since_start or 0.0, 3),
        )
        self._note_outage(error, state)

    def _note_outage(self, error: BaseException | None, state: RetryCallState) -> None:
        """`server.unreachable` once per outage, whichever worker meets it first (the
        stats are shared); `_reachable` ends the outage at the next success."""
        if not self.stats.unreachable and _unreachable(error):
            self.stats.unreachable = True
            left = max(self.policy.timeout - (state.seconds_since_start or 0.0), 0.0)
            reason = str(error.__cause__ if error and error.__cause__ else error)
            log.warning(Event.SERVER_UNREACHABLE, reason=reason, retry_for=round(left, 3))

    def _reachable(self) -> None:
        if self.stats.unreachable:
            self.stats.unreachable = False
            log.info(Event.SERVER_REACHABLE)


def _unreachable(error: BaseException | None) -> bool:
    """A retry because no connection could be made at all (refused, no route, DNS,
    connect timeout), as opposed to a server that answered with an error."""
    cause = error.__cause__ if isinstance(error, TransientError) else None
    return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def _announce(entry: JournalEntry) -> Announce:
    """The upload's parameters, the same in a POST and in a creating PUT. A watched
    file's metadata also carries its path relative to the watched folder and version."""
    metadata = {"dtype": entry.dtype}
    if entry.rel is not None:
        metadata |= {"path": entry.rel, "version": str(entry.version or 1)}
    return Announce(entry.name, metadata, bytes.fromhex(entry.digest))


def _bind(
    step: Callable[[JournalEntry, LocalFile, Progress | None], Awaitable[Progress]],
    entry: JournalEntry,
    source: LocalFile,
    known: Progress | None,
) -> Callable[[], Awaitable[Progress]]:
    return lambda: step(entry, source, known)


def _bind_upload(location: str | None) -> None:
    """Bind the server-assigned upload id (the URL's last segment) to the log context."""
    if location is not None:
        upload_id = location.rstrip("/").rsplit("/", 1)[-1]
        structlog.contextvars.bind_contextvars(upload_id=upload_id)


def _failed(entry: JournalEntry, event: FileEvent, reason: str) -> JournalEntry:
    log.error(Event.UPLOAD_FAILED, reason=reason)
    return entry.after(event, reason=reason)
