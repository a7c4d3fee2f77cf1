"""The generate-and-send pipeline: spool, journal, then upload, while generation goes on.

    generator ──> spool file (fsync) ──> journal `generated` (fsync) ──> queue ──> N uploaders
                                                                                    │
                                        journal `confirmed` / `failed` (fsync) <────┘

Invariants:
- A file is journaled only once its bytes are durable in the spool, and uploaded only
  once its journal record is durable: a crash at any instant loses nothing.
- A given file (`send PATH`) is read once before its first byte: the pass that hashes
  it for the journal also takes its chunks' digests for the first attempt (kept in
  memory until that attempt, see `localfile` for why this keeps every check).
- Generated ids are `{run}-{index:05d}`: the run id and the seed live in the journal, so a
  restarted sender regenerates exactly the missing indices, byte-identical, and never
  more than `count` files in total.
- A restart first re-queues every file the lifecycle table lets re-queue (every state
  but CONFIRMED, see `core.filestate`; the server's offset says where to resume); a
  confirmed file is never uploaded again.
- A delivery's outcome (`confirmed`, `failed`) is journaled while its worker waits for
  the next file, and is durable before the worker starts another upload. A file's
  latency (generated -> confirmed) ends when the server's confirmation was checked, not
  when the sender's own record of it is fsynced: a confirmation the journal lost is
  found again on the server by the next run (docs/reliability.md).
- Stopping (`request_stop`, which the CLI calls on SIGINT/SIGTERM) logs
  `sender.stopping` once and returns from `run` within `drain_timeout` (1 s) plus a
  few milliseconds, whatever the sender was doing: generation is cancelled at once (an
  interval's wait, or a spool write after its current piece: the `.tmp` is swept next
  start); a retry's backoff wait ends at once (`RetryPolicy.until`); no new chunk or
  file starts. What we chose for the chunks already on the wire: they may finish
  within `drain_timeout`, then they are cancelled. Finishing saves resending up to
  8 MiB after a stop on a good network, and cancelling keeps a slow path or a server
  that never answers from holding the stop past the CLI's 2 s promise. Either way
  nothing is lost: the journal records only confirmations, and the server keeps or
  cuts back a broken-off chunk correctly, so the next run resumes from its offset.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from transfer.common.fsutil import remove_tmp_files
from transfer.core.errors import ConfigError, Interrupted
from transfer.core.events import Event
from transfer.core.filestate import FileEvent, FileState, allows
from transfer.sender import generator
from transfer.sender.generator import FileSpec, GeneratorConfig, generate, spec_for, write_file
from transfer.sender.given import path_entry, walk
from transfer.sender.journal import Journal, JournalEntry
from transfer.sender.journalview import count_states, folded_indices, live_entries
from transfer.sender.localfile import Hashed, hash_for_journal
from transfer.sender.retry import Sleep
from transfer.sender.tasklimit import TaskLimit
from transfer.sender.uploader import Uploader
from transfer.sender.watch import WatchConfig

if TYPE_CHECKING:  # imported when watching: it pulls in inotify (ctypes, an ldconfig run)
    from transfer.sender.intake import WatchSource

log = structlog.get_logger("transfer.sender")
SPOOL_AHEAD = 8  # spool writes in flight while generation goes on
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SenderConfig:
    spool_dir: Path
    generator: GeneratorConfig | None = None  # None: send `paths` (or watch) instead
    paths: tuple[Path, ...] = ()
    watch: WatchConfig | None = None  # `--watch DIR`: run until stopped (see intake.py)
    concurrency: int = 4
    drain_timeout: float = 1.0  # after a stop request, for chunks already on the wire
    dtype: str = "int16"


@dataclass(frozen=True, slots=True)
class Seeded:
    """What makes a spool's files: its seed and its generator version (journal meta)."""

    seed: int
    version: int


@dataclass(slots=True)
class Tally:
    """What happened in this run, for the summary, /status and the progress bar."""

    started: float
    generated: int = 0
    confirmed: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    born: dict[str, float] = field(default_factory=dict)


class Sender:
    def __init__(
        self,
        config: SenderConfig,
        journal: Journal,
        uploader: Uploader,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.journal = journal
        self.uploader = uploader
        self.sleep = sleep
        self.clock = clock
        self.tally = Tally(started=clock())
        self.stop = asyncio.Event()  # set only by `request_stop`
        self.stop_reason: str | None = None
        self._generating = False
        self._busy = 0  # workers delivering a file right now
        self._queue: asyncio.Queue[JournalEntry | None] = asyncio.Queue()
        self._fresh: set[str] = set()  # ids first journaled by this run (see Uploader.deliver)
        self._hashed: dict[str, Hashed] = {}  # their journaling pass, for the first attempt
        uploader.stopping = self.stop.is_set
        uploader.remember = journal.record  # a server-assigned upload URL, before its bytes
        self.watching = self._watch_source(config.watch) if config.watch else None
        uploader.policy = uploader.policy.until(self.stop)  # a stop ends any backoff wait

    def counts(self) -> dict[str, int]:
        """Journal entries by state (folded ones counted, not decoded)."""
        return count_states(self.journal)

    def request_stop(self, reason: str, **context: object) -> None:
        """Stop soon (see the module's invariants); the first request is logged, with
        what was going on, and later ones change nothing."""
        if self.stop.is_set():
            return
        self.stop_reason = reason
        log.info(
            Event.SENDER_STOPPING,
            reason=reason,
            generating=self._generating,
            uploading=self._busy,
            **context,
        )
        self.stop.set()

    async def run(self) -> bool:
        """Deliver everything; True when every journaled file is confirmed. Returns
        early, False, after `request_stop`."""
        spool = self.config.spool_dir / "files"
        spool.mkdir(parents=True, exist_ok=True)
        remove_tmp_files(spool)  # an interrupted spool write; its index is regenerated
        await self._resume()
        workers = [asyncio.create_task(self._work()) for _ in range(self.config.concurrency)]
        producer = asyncio.create_task(self._produce())
        try:
            await self._until_done({producer})
            self._close_queue()
            await self._until_done(set(workers))
        finally:
            await self._wind_down(producer, workers)
        counts = self.counts()
        return counts[FileState.CONFIRMED.value] == sum(counts.values()) and not self.stop.is_set()

    async def _until_done(self, tasks: set[asyncio.Task[None]]) -> None:
        """Until every task is done or a stop is requested; a task's failure is raised."""
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        pending: set[asyncio.Future[Any]] = set(tasks)
        try:
            while pending and not self.stop.is_set():
                done, pending = await asyncio.wait(
                    pending | {stopped}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stopped)
                for task in done - {stopped}:
                    if not task.cancelled() and (error := task.exception()) is not None:
                        raise error
        finally:
            stopped.cancel()

    async def _wind_down(
        self, producer: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        """Cancel generation; after a stop request give the deliveries in flight
        `drain_timeout` to end by themselves, then cancel what is left (at once when
        ending on an error). A worker's failure meanwhile is raised, never dropped."""
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)  # its failure was raised
        self._close_queue()
        busy = {task for task in workers if not task.done()}
        if busy and self.stop.is_set():
            _, busy = await asyncio.wait(busy, timeout=self.config.drain_timeout)
        for task in busy:
            task.cancel()
        results = await asyncio.gather(*workers, return_exceptions=True)
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise failures[0]

    def _close_queue(self) -> None:
        for _ in range(self.config.concurrency):
            self._queue.put_nowait(None)  # one end marker per worker

    async def _resume(self) -> None:
        for entry in live_entries(self.journal):  # folded entries are confirmed: never re-sent
            if self.watching is not None and not self.watching.resumes(entry):
                continue  # a superseded version of a watched file: its bytes are gone
            if allows(entry.state, FileEvent.REQUEUED):  # every state but CONFIRMED
                log.info(Event.FILE_REQUEUED, file_id=entry.file_id, state=entry.state.value)
                self._queue.put_nowait(entry)

    async def _produce(self) -> None:
        if self.watching is not None:
            await self.watching.run()
        elif self.config.generator is None:
            await self._enqueue_paths()
        else:
            await self._generate(self.config.generator)

    async def _work(self) -> None:
        """Deliver queued files one after another. A delivery's outcome is journaled
        while the worker waits for its next file, and is durable before that file's
        delivery starts, so a journal failure stops the worker before another upload."""
        settling: asyncio.Task[None] | None = None
        try:
            while (entry := await self._queue.get()) is not None and not self.stop.is_set():
                if settling is not None:
                    await settling  # its failure is raised here
                self._busy += 1
                try:
                    done = await self.uploader.deliver(
                        entry,
                        fresh=entry.file_id in self._fresh,
                        hashed=self._hashed.pop(entry.file_id, None),
                    )
                except Interrupted:
                    continue  # stopping: the file stays as journaled, for the next run
                finally:
                    self._busy -= 1
                settling = asyncio.create_task(self._settle(done, self.clock()))
        finally:
            if settling is not None:
                await settling  # a journal failure is raised, never lost

    async def _settle(self, done: JournalEntry, ended: float) -> None:
        """Journal a delivery's outcome (fsynced), then count it and, in watch mode,
        act on it (`--after-confirm` only ever sees a durably confirmed file). Cancelled
        with its worker, the record is written all the same (`FileJournal` shields it)."""
        await self.journal.record(done)
        self._count(done, ended)
        if self.watching is not None:
            await self.watching.delivered(done)

    def _watch_source(self, config: WatchConfig) -> WatchSource:
        from transfer.sender.intake import WatchSource  # noqa: PLC0415 (see the import above)

        run = self.journal.meta().get("run")
        if run is None:
            raise ConfigError("the journal has no run id: call prepare_journal first")
        return WatchSource(config, self.journal, run, self._queue_watched)

    def _queue_watched(self, entry: JournalEntry) -> None:
        self._fresh.add(entry.file_id)
        self.tally.born[entry.file_id] = self.clock()
        self._queue.put_nowait(entry)

    def _count(self, entry: JournalEntry, ended: float) -> None:
        if entry.state is FileState.CONFIRMED:
            self.tally.confirmed += 1
            born = self.tally.born.pop(entry.file_id, None)
            if born is not None:
                self.tally.latencies.append(ended - born)
        else:
            self.tally.failed += 1

    async def _generate(self, config: GeneratorConfig) -> None:
        """Generate every index not yet journaled: first the gaps a crash left among
        spool writes that ran side by side (at once: their time has passed), then the
        rest on the seeded schedule. Up to `SPOOL_AHEAD` spool writes run at once, so
        the next file is generated while the previous one is being fsynced."""
        meta = self.journal.meta()
        run, seed, version = meta["run"], int(meta["seed"]), generator.version_of(meta)
        done = generated_indices(live_entries(self.journal), run)
        done |= folded_indices(self.journal, run)
        start = min(max(done, default=-1) + 1, config.count)
        gaps = [i for i in range(start) if i not in done]
        if start < config.count or gaps:
            log.info(
                Event.GENERATION_STARTED, first=start, gaps=gaps, count=config.count, seed=seed
            )
        writers = TaskLimit(SPOOL_AHEAD)
        self._generating = True
        try:
            for index in gaps:
                spec = spec_for(config, seed, index)
                await writers.start(self._spool_and_queue(run, Seeded(seed, version), spec))
            await self._generate_from(writers, config, run, Seeded(seed, version), start)
        finally:
            self._generating = False
            await writers.cancel()
        log.info(Event.GENERATION_FINISHED, files=self.tally.generated)

    async def _generate_from(
        self, writers: TaskLimit, config: GeneratorConfig, run: str, seeded: Seeded, start: int
    ) -> None:
        """Files `start..` on the seeded schedule, then wait for every spool write."""
        clock, sleep = self.clock, self.sleep
        async for spec in generate(config, seeded.seed, start=start, sleep=sleep, clock=clock):
            await writers.start(self._spool_and_queue(run, seeded, spec))
        await writers.wait()

    async def _spool_and_queue(self, run: str, seeded: Seeded, spec: FileSpec) -> None:
        entry = await self._spool(f"{run}-{spec.index:05d}", seeded, spec)
        self._fresh.add(entry.file_id)
        self._queue.put_nowait(entry)

    async def _spool(self, file_id: str, seeded: Seeded, spec: FileSpec) -> JournalEntry:
        # Absolute: the journal outlives this cwd (a restart may run from elsewhere).
        path = (self.config.spool_dir / "files" / f"{file_id}.bin").absolute()
        digest = await write_file(path, seeded.seed, spec.index, spec.size, seeded.version)
        entry = JournalEntry(
            file_id=file_id,
            name=path.name,
            path=str(path),
            size=spec.size,
            dtype=self.config.dtype,
            digest=digest,
            state=FileState.GENERATED,
        )
        await self.journal.record(entry)
        self.tally.generated += 1
        self.tally.born[file_id] = self.clock()
        log.info(Event.FILE_GENERATED, file_id=file_id, size=entry.size, index=spec.index)
        return entry

    async def _enqueue_paths(self) -> None:
        """Journal each given file not journaled yet (by path and digest) and queue it,
        with what its one read took for the first attempt (see the module's invariants)."""
        run = self.journal.meta()["run"]
        known = {(e.path, e.digest) for e in self.journal.entries()}
        number = len(self.journal.entries())
        chunk_for = self.uploader.journal_chunk
        async for path, name in walk(self.config.paths):
            hashed = await asyncio.to_thread(hash_for_journal, path, chunk_for)
            if (str(path), hashed.digest) in known:
                continue
            entry = path_entry(f"{run}-p{number:05d}", path, name, hashed.size, hashed.digest)
            number += 1
            await self.journal.record(entry)
            self.tally.born[entry.file_id] = self.clock()
            self._fresh.add(entry.file_id)
            if hashed.reusable:
                self._hashed[entry.file_id] = hashed
            self._queue.put_nowait(entry)


def generated_indices(entries: Iterable[JournalEntry], run: str) -> set[int]:
    """The generated indices journaled for `run` (ids `{run}-{index:05d}`; the run id has
    no "-", so a watched file's `{run}-w{hash}-{version}` is not one)."""
    return {
        int(e.file_id.rpartition("-")[2])
        for e in entries
        if e.file_id.rpartition("-")[0] == run and e.file_id.rpartition("-")[2].isdigit()
    }


async def prepare_journal(journal: Journal, seed: int | None) -> int:
    """Fix the run id, generator version and seed on first use; refuse a different seed
    later. The version is journaled before the seed, so no file is generated before it
    is fixed; a journal that has a seed but no version predates versions (version 1)."""
    meta = journal.meta()
    if "run" not in meta:
        await journal.set_meta("run", secrets.token_hex(4))
    if "seed" not in meta and generator.META_KEY not in meta:
        await journal.set_meta(generator.META_KEY, str(generator.GENERATOR_VERSION))
    generator.version_of(journal.meta())  # refuse a newer sender's spool before any work
    if "seed" not in meta:
        chosen = seed if seed is not None else secrets.randbits(32)
        await journal.set_meta("seed", str(chosen))
        return chosen
    if seed is not None and int(meta["seed"]) != seed:
        raise ConfigError(f"this spool dir was started with --seed {meta['seed']}, not {seed}")
    return int(meta["seed"])
