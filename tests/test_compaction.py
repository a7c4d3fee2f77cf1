"""Journal compaction: checkpoint plus tail replay, a crash at every step, a torn or
damaged checkpoint, and appends that go on while a compaction runs."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Protocol

import pytest
from structlog.testing import capture_logs

from transfer.cli.common import view_spool
from transfer.core.errors import JournalError
from transfer.core.events import Event
from transfer.core.filestate import FileEvent, FileState
from transfer.sender.checkpoint import CKPT_NAME
from transfer.sender.folding import decode_at
from transfer.sender.journal import LOG_NAME, FileJournal, JournalEntry
from transfer.sender.journalview import count_states, folded_indices, live_entries
from transfer.sender.recovery import READ_ATTEMPTS, replay_beside
from transfer.testing.harness import run_transfer


class EventLike(Protocol):
    def is_set(self) -> bool: ...


STEPS = [
    f"{what}.{step}"
    for what in ("checkpoint", "log")
    for step in ("written", "synced", "renamed", "durable")
]


class Crash(Exception):
    """Stands for the process dying at one step of a compaction."""


def entry(n: int, state: FileState = FileState.GENERATED) -> JournalEntry:
    return JournalEntry(
        file_id=f"run1-{n:05d}", name=f"{n}.bin", path=f"/spool/{n}.bin", size=n,
        dtype="int16", digest=f"{n:032x}", state=state,
    )  # fmt: skip


async def fill(journal: FileJournal, count: int, confirmed: int) -> None:
    await journal.set_meta("run", "run1")
    for n in range(count):
        await journal.record(entry(n))
    for n in range(confirmed):
        await journal.record(entry(n).after(FileEvent.DIGEST_MATCHED, server_digest=f"{n:032x}"))


def state_of(spool: Path) -> tuple[list[JournalEntry], dict[str, str]]:
    with FileJournal.open(spool) as journal:
        return sorted(journal.entries(), key=lambda e: e.file_id), journal.meta()


async def test_replay_of_checkpoint_plus_tail_equals_the_whole_log(tmp_path: Path) -> None:
    with FileJournal.open(tmp_path) as journal:
        await fill(journal, 30, 20)
        before = sorted(journal.entries(), key=lambda e: e.file_id)
        await journal.compact()
        await journal.record(entry(30))  # the tail
        await journal.set_meta("k", "v")
        stats = journal.stats()
    assert (stats.checkpoint_entries, stats.log_records, stats.compactions) == (20, 2, 1)
    entries, meta = state_of(tmp_path)
    assert entries == [*before, entry(30)]
    assert meta == {"run": "run1", "k": "v"}
    with FileJournal.open(tmp_path) as journal:
        assert count_states(journal) == {"generated": 11, "confirmed": 20, "failed": 0}
        assert folded_indices(journal, "run1") == set(range(20))
        assert {e.file_id for e in live_entries(journal)} == {
            f"run1-{n:05d}" for n in range(20, 31)
        }
        assert journal.get("run1-00003") == before[3]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("rename_lost", [False, True])
async def test_a_crash_at_any_step_of_a_compaction_loses_nothing(
    tmp_path: Path, step: str, rename_lost: bool
) -> None:
    spool = tmp_path / "spool"
    old: dict[str, bytes] = {}  # what a renamed-over file held, for a lost rename

    def crash(at: str) -> None:
        name = CKPT_NAME if at.startswith("checkpoint") else LOG_NAME
        if at.endswith(".synced") and (spool / name).exists():
            old[name] = (spool / name).read_bytes()
        if at != step:
            return
        if rename_lost and at.endswith(".renamed") and name in old:
            (spool / name).write_bytes(old[name])  # power lost before the dir fsync
        raise Crash(at)

    with FileJournal.open(spool) as journal:
        await fill(journal, 12, 6)
        await journal.compact()  # a first checkpoint, so the next one builds on it
        await fill(journal, 24, 15)
    expected = state_of(spool)
    journal = FileJournal.open(spool, crash=crash)
    await journal.record(entry(24))  # and one more during the compaction
    outcome = await asyncio.gather(
        journal.compact(), journal.record(entry(25)), return_exceptions=True
    )
    journal.close()  # a crash at a log step fails the journal instead of raising
    assert any(isinstance(o, Crash) for o in outcome) or journal._failure is not None
    acknowledged = [entry(24)] + ([entry(25)] if outcome[1] is None else [])
    entries, meta = state_of(spool)
    assert meta == expected[1]
    assert [e for e in entries if e.file_id != entry(25).file_id or outcome[1] is None] == sorted(
        [*expected[0], *acknowledged], key=lambda e: e.file_id
    )
    assert not list(spool.glob("*.tmp"))  # swept by the reopen


async def test_a_damaged_checkpoint_is_refused_not_dropped(tmp_path: Path) -> None:
    with FileJournal.open(tmp_path) as journal:
        await fill(journal, 10, 10)
        await journal.compact()
    ckpt = tmp_path / CKPT_NAME
    good = ckpt.read_bytes()
    for cut in (len(good) - 1, len(good) // 2, 3):
        ckpt.write_bytes(good[:cut])  # torn
        with pytest.raises(JournalError, match="damaged"):
            FileJournal.open(tmp_path)
    for index in (5, 40, len(good) - 5):
        flipped = bytearray(good)
        flipped[index] ^= 0x01
        ckpt.write_bytes(bytes(flipped))
        with pytest.raises(JournalError):
            FileJournal.open(tmp_path)
    ckpt.unlink()
    with pytest.raises(JournalError, match="does not continue"):
        FileJournal.open(tmp_path)


async def test_compaction_runs_by_itself_past_the_threshold(tmp_path: Path) -> None:
    with FileJournal.open(tmp_path, compact_at=2000) as journal:
        await fill(journal, 40, 40)
        if journal._compaction is not None:
            await journal._compaction
        stats = journal.stats()
        assert stats.compactions >= 1
        assert stats.log_bytes < 2000 + 1000
    entries, _ = state_of(tmp_path)
    assert [e.state for e in entries] == [FileState.CONFIRMED] * 40


# --- readers beside a compacting sender (`transfer status`, `transfer verify`) ---------


def confirmed(n: int) -> JournalEntry:
    return entry(n).after(FileEvent.DIGEST_MATCHED, server_digest=f"{n:032x}")


def totals(spool: Path) -> dict[str, int]:
    """What `transfer status` counts: the live entries by state plus the folded ones."""
    view = view_spool(spool)
    counts = {s.value: sum(e.state is s for e in view.live) for s in FileState}
    counts[FileState.CONFIRMED.value] += view.folded
    return counts


async def test_a_reader_raced_by_two_compactions_reads_again(tmp_path: Path) -> None:
    """The log is read, then two compactions replace the checkpoint before it is read:
    the pair does not belong together, and the reader reads both again (logged)."""
    with FileJournal.open(tmp_path) as journal:
        await fill(journal, 20, 10)
        await journal.compact()

    async def two_compactions() -> None:
        with FileJournal.open(tmp_path) as journal:  # the reader takes no lock
            for n in range(10, 20):
                await journal.record(confirmed(n))
                if n in (14, 19):
                    await journal.compact()

    reads: list[int] = []

    def read_log() -> bytes:
        data = (tmp_path / LOG_NAME).read_bytes()
        if not reads:
            asyncio.run(two_compactions())  # runs in a thread: the test's loop is busy
        reads.append(len(data))
        return data

    with capture_logs() as logs:
        state = await asyncio.to_thread(replay_beside, tmp_path, read_log, decode_at)
    assert len(reads) == 2
    assert [e["attempt"] for e in logs if e["event"] == Event.JOURNAL_READ_RETRY] == [1]
    assert len(state.folded.ids) == 20 and state.generation == 3


async def test_damage_is_refused_at_once_not_read_again(tmp_path: Path) -> None:
    with FileJournal.open(tmp_path) as journal:
        await fill(journal, 10, 5)
        await journal.compact()
        await fill(journal, 12, 0)
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01  # damage before valid records
    log.write_bytes(bytes(data))
    reads: list[int] = []

    def read_log() -> bytes:
        reads.append(1)
        return log.read_bytes()

    with capture_logs() as logs, pytest.raises(JournalError, match="damaged"):
        replay_beside(tmp_path, read_log, decode_at)
    assert reads == [1] and not logs
    assert READ_ATTEMPTS > 1


COUNT = 300  # confirmed files in the raced spool
COMPACTIONS = 150  # the raced reads go on until the writer has done this many


def compact_continuously(spool: Path, stop: EventLike) -> None:
    """A sender's journal that keeps compacting (re-recording a confirmed file, so the
    totals never change) until `stop`, at most 5000 times. Runs in its own process."""

    async def run() -> None:
        with FileJournal.open(spool) as journal:
            for n in range(5000):
                if stop.is_set():
                    break
                await journal.set_meta("tick", str(n))
                await journal.record(confirmed(n % COUNT))
                await journal.compact()

    asyncio.run(run())


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_status_totals_stay_right_while_compactions_replace_the_checkpoint(
    tmp_path: Path,
) -> None:
    """Real races, no sleeps: another process compacts a spool of confirmed files over
    and over while `transfer status` reads it (in-process until the writer has compacted
    `COMPACTIONS` times, or 20 000 reads; then three times as a process)."""
    with FileJournal.open(tmp_path) as journal:
        await fill(journal, COUNT, COUNT)
        await journal.compact()
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    writer = spawn.Process(target=compact_continuously, args=(tmp_path, stop))
    writer.start()
    expected = {"generated": 0, "confirmed": COUNT, "failed": 0}
    first = view_spool(tmp_path).state.generation
    generations: set[int] = set()
    try:
        with capture_logs() as logs:
            for _ in range(20_000):
                assert totals(tmp_path) == expected
                generations.add(view_spool(tmp_path).state.generation)
                if max(generations) >= first + COMPACTIONS:
                    break
            for _ in range(3):
                result = await asyncio.to_thread(
                    run_transfer, "status", "--spool-dir", str(tmp_path)
                )
                assert result.returncode == 0, result.stderr
                assert result.stdout.splitlines()[-1] == f"0 generated, {COUNT} confirmed, 0 failed"
    finally:
        stop.set()
        writer.join(60)
    assert writer.exitcode == 0
    assert len(generations) > 10, generations  # the reads really ran beside compactions
    retries = [e for e in logs if e["event"] == Event.JOURNAL_READ_RETRY]
    assert all(e["attempt"] < READ_ATTEMPTS for e in retries)
