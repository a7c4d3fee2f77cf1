"""Spool writes run side by side, so a crash can leave a gap in the journaled indices
(file 2 journaled, file 1 not). The next run must fill every gap, with the bytes of the
generator version the journal names, and stop at --count."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import xxhash
from support import Launcher, assert_delivered, named, read_journal

from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender.generator import VERSIONS, GeneratorConfig, content_for, spec_for
from transfer.sender.journal import FileJournal, JournalEntry

SEED, RUN = 7, "gaprun1"
CONFIG = GeneratorConfig(count=5, min_size=1024, max_size=8192, min_interval=0, max_interval=0)


async def _journal_with_gaps(spool: Path, indices: list[int], version: int) -> None:
    (spool / "files").mkdir(parents=True)
    with FileJournal.open(spool) as journal:
        await journal.set_meta("run", RUN)
        if version > 1:  # version 1: no "generator" meta, as a journal older than versions
            await journal.set_meta("generator", str(version))
        await journal.set_meta("seed", str(SEED))
        for index in indices:
            data = content_for(SEED, index, spec_for(CONFIG, SEED, index).size, version)
            path = spool / "files" / f"{RUN}-{index:05d}.bin"
            path.write_bytes(data)
            await journal.record(
                JournalEntry(
                    f"{RUN}-{index:05d}",
                    path.name,
                    str(path),
                    len(data),
                    "int16",
                    xxhash.xxh3_128_hexdigest(data),
                    FileState.GENERATED,
                )
            )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_restart_fills_the_gaps_a_crash_left(tmp_path: Path, version: int) -> None:
    spool = tmp_path / "spool"
    asyncio.run(_journal_with_gaps(spool, [0, 2], version))
    with Launcher(tmp_path) as launch:
        server = launch.serve(tmp_path / "data")
        sender = launch.send(
            server.url, spool, "--count", "5", "--seed", str(SEED),
            "--min-size", "1KiB", "--max-size", "8KiB", "--min-interval", "0",
            "--max-interval", "0",
        )  # fmt: skip
        assert sender.finish() == 0, sender.report()
        generated = sorted(e["index"] for e in named(sender.log.events(), Event.FILE_GENERATED))

    assert generated == [1, 3, 4]
    entries = assert_delivered(spool, tmp_path / "data", 5)
    assert sorted(e.file_id for e in entries) == [f"{RUN}-{i:05d}" for i in range(5)]
    for entry in read_journal(spool):  # every file is the seeded one for its index
        index = int(entry.file_id.rsplit("-", 1)[1])
        expected = content_for(SEED, index, spec_for(CONFIG, SEED, index).size, version)
        assert Path(entry.path).read_bytes() == expected
