"""A delivery's outcome is journaled while its worker waits for the next file, but is
durable before that worker sends another byte; `run` returns only once every outcome is
durable. Against a real in-process server, real spool files and a real `FileJournal`,
watched through a thin wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Served
from support import JournalWrapper

from transfer.common.http import new_session
from transfer.core.filestate import FileState
from transfer.sender.client import UploadClient
from transfer.sender.generator import GeneratorConfig
from transfer.sender.journal import FileJournal, Journal, JournalEntry
from transfer.sender.pipeline import Sender, SenderConfig, prepare_journal
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader, UploadStats

pytestmark = pytest.mark.timeout(30)
KiB = 1024
CONFIG = GeneratorConfig(count=6, min_size=KiB, max_size=96 * KiB, min_interval=0, max_interval=0)


class Watched(JournalWrapper):
    """A `Journal` that notes, for every outcome it journals, the bytes the uploader had
    sent when the record was asked for and when it was durable."""

    def __init__(self, inner: Journal, stats: UploadStats) -> None:
        super().__init__(inner)
        self.stats = stats
        self.outcomes: list[tuple[str, int, int]] = []  # (file_id, bytes before, bytes after)

    async def record(self, entry: JournalEntry) -> None:
        before = self.stats.bytes_sent
        await self.inner.record(entry)
        if entry.state is not FileState.GENERATED:
            self.outcomes.append((entry.file_id, before, self.stats.bytes_sent))


async def no_wait(seconds: float) -> None:
    return None


async def test_an_outcome_is_durable_before_the_worker_sends_again(
    served: Served, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with new_session() as session:
        with FileJournal.open(spool) as journal:
            await prepare_journal(journal, 3)
            client = UploadClient(session, str(served.client.make_url("/")))
            uploader = Uploader(client, 32 * KiB, RetryPolicy(timeout=10.0))
            watched = Watched(journal, uploader.stats)
            config = SenderConfig(spool, CONFIG, concurrency=1)
            sender = Sender(config, watched, uploader, sleep=no_wait)
            assert await sender.run() is True
            assert sender.tally.confirmed == CONFIG.count
            assert len(sender.tally.latencies) == CONFIG.count

    assert len(watched.outcomes) == CONFIG.count  # every outcome durable when run returned
    for file_id, before, after in watched.outcomes:
        assert before == after, f"bytes were sent while {file_id}'s outcome was in flight"
    with FileJournal.open(spool) as reopened:  # and on disk, not only in memory
        assert {e.state for e in reopened.entries()} == {FileState.CONFIRMED}
