"""Journal compaction: checkpoint plus tail replay, a crash at every step, a torn or
damaged checkpoint, and appends that go on while a compaction runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from transfer.core.errors import JournalError
from transfer.core.filestate import FileEvent, FileState
from transfer.sender.checkpoint import CKPT_NAME
from transfer.sender.journal import LOG_NAME, FileJournal, JournalEntry
from transfer.sender.journalview import count_states, folded_indices, live_entries

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
