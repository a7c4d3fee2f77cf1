"""The generate-and-send pipeline: spool, journal, then upload, while generation goes on.

    generator ──> spool file (fsync) ──> journal `generated` (fsync) ──> queue ──> N uploaders
                                                                                    │
                                        journal `confirmed` / `failed` (fsync) <────┘

Invariants:
- A file is journaled only once its bytes are durable in the spool, and uploaded only
  once its journal record is durable: a crash at any instant loses nothing.
- Generated ids are `{run}-{index:05d}`: the run id and the seed live in the journal, so a
  restarted sender regenerates exactly the missing indices, byte-identical, and never
  more than `count` files in total.
- A restart first re-queues every file the lifecycle table lets re-queue (every state
  but CONFIRMED, see `core.filestate`; the server's offset says where to resume); a
  confirmed file is never uploaded again.
- Stopping (SIGINT/SIGTERM) ends generation at once, lets in-flight chunks finish (at
  most `drain_timeout`), and leaves unfinished files journaled for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import xxhash

from transfer.common.fsutil import remove_tmp_files, write_atomic
from transfer.core.errors import ConfigError, Interrupted
from transfer.core.events import Event
from transfer.core.filestate import FileEvent, FileState, allows
from transfer.sender.generator import FileSpec, GeneratorConfig, content_for, generate, spec_for
from transfer.sender.journal import Journal, JournalEntry
from transfer.sender.reasons import Reason
from transfer.sender.retry import Sleep
from transfer.sender.uploader import Uploader, hash_file

log = structlog.get_logger("transfer.sender")
SPOOL_AHEAD = 8  # spool writes in flight while generation goes on
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SenderConfig:
    spool_dir: Path
    generator: GeneratorConfig | None = None  # None: send `paths` instead
    paths: tuple[Path, ...] = ()
    concurrency: int = 4
    drain_timeout: float = 10.0
    dtype: str = "int16"


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
        self.stop = asyncio.Event()
        self._queue: asyncio.Queue[JournalEntry | None] = asyncio.Queue()
        self._fresh: set[str] = set()  # ids first journaled by this run (see Uploader.deliver)
        uploader.stopping = self.stop.is_set

    def counts(self) -> dict[str, int]:
        """Journal entries by state."""
        result = {state.value: 0 for state in FileState}
        for entry in self.journal.entries():
            result[entry.state.value] += 1
        return result

    async def run(self) -> bool:
        """Deliver everything; True when every journaled file is confirmed."""
        spool = self.config.spool_dir / "files"
        spool.mkdir(parents=True, exist_ok=True)
        remove_tmp_files(spool)  # an interrupted spool write; its index is regenerated
        await self._resume()
        workers = [asyncio.create_task(self._work()) for _ in range(self.config.concurrency)]
        producer = asyncio.create_task(self._produce())
        try:
            await self._until_produced(producer)
        finally:
            for _ in workers:
                self._queue.put_nowait(None)
            await self._drain(workers)
        counts = self.counts()
        return counts[FileState.CONFIRMED.value] == sum(counts.values()) and not self.stop.is_set()

    async def _until_produced(self, producer: asyncio.Task[None]) -> None:
        stopped = asyncio.create_task(self.stop.wait())
        await asyncio.wait({producer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not producer.done():
            producer.cancel()
            log.info(Event.SENDER_STOPPING, reason=Reason.SIGNAL)
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        if not producer.cancelled() and producer.exception() is not None:
            raise producer.exception()  # type: ignore[misc]

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        if not self.stop.is_set():
            await asyncio.gather(*workers)
            return
        _, pending = await asyncio.wait(workers, timeout=self.config.drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _resume(self) -> None:
        for entry in self.journal.entries():
            if allows(entry.state, FileEvent.REQUEUED):  # every state but CONFIRMED
                log.info(Event.FILE_REQUEUED, file_id=entry.file_id, state=entry.state.value)
                self._queue.put_nowait(entry)

    async def _produce(self) -> None:
        if self.config.generator is None:
            await self._enqueue_paths()
        else:
            await self._generate(self.config.generator)

    async def _work(self) -> None:
        while (entry := await self._queue.get()) is not None and not self.stop.is_set():
            try:
                done = await self.uploader.deliver(entry, fresh=entry.file_id in self._fresh)
            except Interrupted:
                continue
            await self.journal.record(done)
            self._count(done)

    def _count(self, entry: JournalEntry) -> None:
        if entry.state is FileState.CONFIRMED:
            self.tally.confirmed += 1
            born = self.tally.born.pop(entry.file_id, None)
            if born is not None:
                self.tally.latencies.append(self.clock() - born)
        else:
            self.tally.failed += 1

    async def _generate(self, config: GeneratorConfig) -> None:
        """Generate every index not yet journaled: first the gaps a crash left among
        spool writes that ran side by side (at once: their time has passed), then the
        rest on the seeded schedule. Up to `SPOOL_AHEAD` spool writes run at once, so
        the next file is generated while the previous one is being fsynced."""
        run, seed = self.journal.meta()["run"], int(self.journal.meta()["seed"])
        done = generated_indices(self.journal.entries(), run)
        start = min(max(done, default=-1) + 1, config.count)
        gaps = [i for i in range(start) if i not in done]
        if start < config.count or gaps:
            log.info(
                Event.GENERATION_STARTED, first=start, gaps=gaps, count=config.count, seed=seed
            )
        writers = _Writers(SPOOL_AHEAD)
        try:
            for index in gaps:
                spec = spec_for(config, seed, index)
                await writers.start(
                    self._spool_and_queue(run, spec, content_for(seed, index, spec.size))
                )
            await self._generate_from(writers, config, run, seed, start)
        finally:
            await writers.cancel()
        log.info(Event.GENERATION_FINISHED, files=self.tally.generated)

    async def _generate_from(
        self, writers: _Writers, config: GeneratorConfig, run: str, seed: int, start: int
    ) -> None:
        """Files `start..` on the seeded schedule, then wait for every spool write."""
        clock, sleep = self.clock, self.sleep
        async for spec, data in generate(config, seed, start=start, sleep=sleep, clock=clock):
            await writers.start(self._spool_and_queue(run, spec, data))
        await writers.wait()

    async def _spool_and_queue(self, run: str, spec: FileSpec, data: bytes) -> None:
        entry = await self._spool(f"{run}-{spec.index:05d}", spec, data)
        self._fresh.add(entry.file_id)
        self._queue.put_nowait(entry)

    async def _spool(self, file_id: str, spec: FileSpec, data: bytes) -> JournalEntry:
        # Absolute: the journal outlives this cwd (a restart may run from elsewhere).
        path = (self.config.spool_dir / "files" / f"{file_id}.bin").absolute()
        await asyncio.to_thread(write_atomic, path, data)
        entry = JournalEntry(
            file_id=file_id,
            name=path.name,
            path=str(path),
            size=len(data),
            dtype=self.config.dtype,
            digest=xxhash.xxh3_128_hexdigest(data),
            state=FileState.GENERATED,
        )
        await self.journal.record(entry)
        self.tally.generated += 1
        self.tally.born[file_id] = self.clock()
        log.info(Event.FILE_GENERATED, file_id=file_id, size=entry.size, index=spec.index)
        return entry

    async def _enqueue_paths(self) -> None:
        run = self.journal.meta()["run"]
        known = {(e.path, e.digest) for e in self.journal.entries()}
        number = len(self.journal.entries())
        async for path, name in _walk(self.config.paths):
            size, digest = await asyncio.to_thread(hash_file, path)
            if (str(path), digest) in known:
                continue
            entry = _path_entry(f"{run}-p{number:05d}", path, name, size, digest)
            number += 1
            await self.journal.record(entry)
            self.tally.born[entry.file_id] = self.clock()
            self._fresh.add(entry.file_id)
            self._queue.put_nowait(entry)


def _path_entry(file_id: str, path: Path, name: str, size: int, digest: str) -> JournalEntry:
    """A given file as journaled: its own path (no spool copy), dtype `bytes`."""
    return JournalEntry(
        file_id=file_id,
        name=name,
        path=str(path),
        size=size,
        dtype="bytes",
        digest=digest,
        state=FileState.GENERATED,
    )


def generated_indices(entries: Iterable[JournalEntry], run: str) -> set[int]:
    """The generated indices journaled for `run` (ids `{run}-{index:05d}`)."""
    return {
        int(e.file_id.rsplit("-", 1)[1])
        for e in entries
        if e.file_id.startswith(f"{run}-") and e.file_id.rsplit("-", 1)[1].isdigit()
    }


class _Writers:
    """At most `limit` spool writes at once; the first failure is re-raised by `wait`."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` once a slot is free; raise the first earlier failure instead."""
        try:
            await self._slots.acquire()
            self._raise_failure()
        except BaseException:
            work.close()  # never started: no "coroutine was never awaited" warning
            raise
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        self._raise_failure()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def prepare_journal(journal: Journal, seed: int | None) -> int:
    """Fix the run id and seed on first use; refuse a different seed later."""
    meta = journal.meta()
    if "run" not in meta:
        await journal.set_meta("run", secrets.token_hex(4))
    if "seed" not in meta:
        chosen = seed if seed is not None else secrets.randbits(32)
        await journal.set_meta("seed", str(chosen))
        return chosen
    if seed is not None and int(meta["seed"]) != seed:
        raise ConfigError(f"this spool dir was started with --seed {meta['seed']}, not {seed}")
    return int(meta["seed"])


async def _walk(paths: Iterable[Path]) -> AsyncIterator[tuple[Path, str]]:
    for root in paths:
        if root.is_file():
            yield root.resolve(), root.name
        elif root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                yield path.resolve(), str(path.relative_to(root))
        else:
            raise ConfigError(f"{root} is not a file or directory")
