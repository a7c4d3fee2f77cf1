"""A spool keeps the generator version its journal names: a new spool journals the current
one before its seed, a journal older than versions (no `generator` meta) goes on making
version 1's bytes, a version 2 spool version 2's, and a version this sender does not know
is refused before any work. Against a real in-process server and real spool files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Served

from transfer.common.http import new_session
from transfer.core.errors import ConfigError
from transfer.core.filestate import FileState
from transfer.sender.client import UploadClient
from transfer.sender.generator import GENERATOR_VERSION, GeneratorConfig, content_for, spec_for
from transfer.sender.journal import LOG_NAME, FileJournal, JournalEntry, scan_frames
from transfer.sender.pipeline import Sender, SenderConfig, prepare_journal
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader

pytestmark = pytest.mark.timeout(30)
KiB = 1024
SEED = 13
CONFIG = GeneratorConfig(count=4, min_size=KiB, max_size=64 * KiB, min_interval=0, max_interval=0)


async def no_wait(seconds: float) -> None:
    return None


async def send(served: Served, spool: Path) -> list[tuple[int, bytes]]:
    """Run a sender on `spool` to the end; (index, spool bytes) of every file, each
    checked confirmed."""
    async with new_session() as session:
        with FileJournal.open(spool) as journal:
            await prepare_journal(journal, SEED)
            client = UploadClient(session, str(served.client.make_url("/")))
            uploader = Uploader(client, 256 * KiB, RetryPolicy(timeout=10.0))
            sender = Sender(SenderConfig(spool, CONFIG), journal, uploader, sleep=no_wait)
            assert await sender.run() is True
            entries = journal.entries()
    assert {e.state for e in entries} == {FileState.CONFIRMED}
    return spooled_bytes(entries)


def spooled_bytes(entries: list[JournalEntry]) -> list[tuple[int, bytes]]:
    return sorted((int(e.file_id.rsplit("-", 1)[1]), Path(e.path).read_bytes()) for e in entries)


def meta_keys_in_order(spool: Path) -> list[str]:
    frames, _ = scan_frames((spool / LOG_NAME).read_bytes())
    records = [json.loads(payload) for _, payload in frames]
    return [r["key"] for r in records if r["kind"] == "meta"]


async def test_a_new_spool_journals_the_current_version_before_its_seed(
    served: Served, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    files = await send(served, spool)
    assert meta_keys_in_order(spool) == ["run", "generator", "seed"]
    with FileJournal.open(spool) as journal:
        assert journal.meta()["generator"] == str(GENERATOR_VERSION)
    assert [index for index, _ in files] == list(range(CONFIG.count))
    for index, data in files:
        size = spec_for(CONFIG, SEED, index).size
        assert data == content_for(SEED, index, size, version=GENERATOR_VERSION)


@pytest.mark.parametrize(("journaled", "version"), [(None, 1), ("1", 1), ("2", 2)])
async def test_an_older_spool_keeps_making_its_versions_bytes(
    served: Served, tmp_path: Path, journaled: str | None, version: int
) -> None:
    spool = tmp_path / "spool"
    with FileJournal.open(spool) as journal:  # as an older sender left it
        await journal.set_meta("run", "oldrun")
        if journaled is not None:  # None: a sender before versions
            await journal.set_meta("generator", journaled)
        await journal.set_meta("seed", str(SEED))
    written = meta_keys_in_order(spool)
    files = await send(served, spool)
    assert meta_keys_in_order(spool) == written  # nothing added
    assert version != GENERATOR_VERSION
    for index, data in files:
        size = spec_for(CONFIG, SEED, index).size
        assert data == content_for(SEED, index, size, version=version)


async def test_a_newer_senders_version_is_refused_before_any_work(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with FileJournal.open(spool) as journal:
        await journal.set_meta("run", "newrun")
        await journal.set_meta("generator", "4")
        await journal.set_meta("seed", str(SEED))
        with pytest.raises(ConfigError, match="generator version 4"):
            await prepare_journal(journal, SEED)
    assert not (spool / "files").exists()
