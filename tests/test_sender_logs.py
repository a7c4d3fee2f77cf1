"""The sender's log lines carry `file_id` from structlog's context, bound once per delivery.

Against a real in-process server on 127.0.0.1 and real files. `capture_logs` replaces the
configured processors, so it is given `merge_contextvars` (what `cli.logs.configure`
runs first): the captured events are what the JSON lines hold, minus level and time.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import xxhash
from conftest import Served
from structlog.testing import capture_logs

from transfer.common.http import new_session
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender.client import Corruptor, UploadClient
from transfer.sender.generator import GeneratorConfig
from transfer.sender.journal import FileJournal, JournalEntry
from transfer.sender.pipeline import Sender, SenderConfig, prepare_journal
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader

pytestmark = pytest.mark.timeout(30)

KiB = 1024
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
        yield captured


def spooled(
    directory: Path, file_id: str, data: bytes, on_disk: bytes | None = None
) -> JournalEntry:
    """`data` journaled; `on_disk` (default: `data`) written where the journal points."""
    path = directory / f"{file_id}.bin"
    path.write_bytes(data if on_disk is None else on_disk)
    digest = xxhash.xxh3_128_hexdigest(data)
    return JournalEntry(
        file_id, path.name, str(path), len(data), "int16", digest, FileState.GENERATED
    )


def named(logs: Logs, event: Event) -> Logs:
    return [line for line in logs if line["event"] == event]


class Sleeps:
    """An injected sleep: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class FirstChunkDamaged(Corruptor):
    """Flips a bit of the first chunk only: one transient refusal, then clean chunks.

    Given `first` (the first chunk's opening bytes), only that chunk is damaged: pipelined
    chunks are read in threads, so the first one read need not be the first chunk, and a
    later chunk that arrives early is answered 409 and resent before its digest is read."""

    def __init__(self, first: bytes = b"") -> None:
        super().__init__(rate=1.0, seed=0)
        self.first = first

    def __call__(self, data: bytes) -> bytes:
        return super().__call__(data) if self.flips == 0 and data.startswith(self.first) else data


def uploader(session: Any, served: Served, **options: Any) -> Uploader:
    corruptor = options.pop("corruptor", None)
    client = UploadClient(session, str(served.client.make_url("/")), corruptor=corruptor)
    policy = RetryPolicy(timeout=10.0, max_attempts=5, sleep=options.pop("sleep", Sleeps()))
    return Uploader(client, 256 * KiB, policy, **options)


def chunks_by_file(logs: Logs) -> dict[str, list[tuple[int, int]]]:
    """(offset, bytes) of every chunk.sent line, by the file_id it carries."""
    result: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for line in named(logs, Event.CHUNK_SENT):
        result[line["file_id"]].append((line["offset"], line["bytes"]))
    return result


def covers(chunks: list[tuple[int, int]], size: int) -> bool:
    """The chunks tile 0..size exactly, in order."""
    ends = [offset + length for offset, length in sorted(chunks)]
    starts = [offset for offset, _ in sorted(chunks)]
    return starts == [0, *ends[:-1]] and ends[-1] == size


async def test_chunk_sent_and_upload_confirmed_carry_the_file_id(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: 4 pipelined chunks of 256 KiB
    entry = spooled(tmp_path, "run-00000", data)
    async with new_session() as session:
        done = await uploader(session, served).deliver(entry, fresh=True)

    assert done.state is FileState.CONFIRMED
    assert covers(chunks_by_file(logs)["run-00000"], len(data))
    [confirmed] = named(logs, Event.UPLOAD_CONFIRMED)
    assert confirmed == {
        "event": Event.UPLOAD_CONFIRMED,
        "log_level": "info",
        "file_id": "run-00000",
        "size": len(data),
        "verified": "whole-file-digest",  # our server offers the file's digest
    }
    assert "file_id" not in structlog.contextvars.get_contextvars()  # nothing leaks out


async def test_concurrent_deliveries_keep_their_own_file_id(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    files = {f"run-0000{n}": bytes([n]) * (n * 300 * KiB) for n in (1, 2, 3)}
    entries = [spooled(tmp_path, file_id, data) for file_id, data in files.items()]
    async with new_session() as session:
        up = uploader(session, served)
        done = await asyncio.gather(*(up.deliver(e, fresh=True) for e in entries))

    assert [e.state for e in done] == [FileState.CONFIRMED] * 3
    chunks = chunks_by_file(logs)
    assert set(chunks) == set(files)
    for file_id, data in files.items():
        assert covers(chunks[file_id], len(data)), file_id
    confirmed = {line["file_id"]: line["size"] for line in named(logs, Event.UPLOAD_CONFIRMED)}
    assert confirmed == {file_id: len(data) for file_id, data in files.items()}


async def test_an_outer_binding_is_restored_after_a_delivery(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    entry = spooled(tmp_path, "run-00004", b"\x04\x00" * 512)
    with structlog.contextvars.bound_contextvars(file_id="outer", run="r1"):
        async with new_session() as session:
            await uploader(session, served).deliver(entry, fresh=True)
        assert structlog.contextvars.get_contextvars() == {"file_id": "outer", "run": "r1"}
    [confirmed] = named(logs, Event.UPLOAD_CONFIRMED)
    assert (confirmed["file_id"], confirmed["run"]) == ("run-00004", "r1")


async def test_a_retry_logs_upload_retry_with_file_id_and_attempt(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    data = b"\x05\x00" * 2000  # one chunk: the careful path, retried by tenacity
    entry = spooled(tmp_path, "run-00005", data)
    sleeps = Sleeps()
    async with new_session() as session:
        up = uploader(session, served, corruptor=FirstChunkDamaged(), sleep=sleeps)
        done = await up.deliver(entry, fresh=True)

    assert done.state is FileState.CONFIRMED
    [retry] = named(logs, Event.UPLOAD_RETRY)
    assert (retry["file_id"], retry["attempt"]) == ("run-00005", 1)
    assert "chunk_digest_mismatch" in retry["error"]
    assert retry["wait"] == round(sleeps.delays[0], 3)  # tenacity slept through our sleep
    assert len(sleeps.delays) == 1 and up.stats.retries == 1


async def test_a_pipelined_retry_logs_upload_retry_with_file_id(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    # 768 KiB: 3 pipelined chunks of different bytes, the first one damaged
    data = b"".join(bytes([n]) * (256 * KiB) for n in range(3))
    entry = spooled(tmp_path, "run-00006", data)
    async with new_session() as session:
        up = uploader(session, served, corruptor=FirstChunkDamaged(first=data[:64]))
        done = await up.deliver(entry, fresh=True)

    assert done.state is FileState.CONFIRMED
    retries = named(logs, Event.UPLOAD_RETRY)
    assert retries and all(line["file_id"] == "run-00006" for line in retries)
    assert retries[0]["attempt"] == 1


async def test_a_failure_logs_upload_failed_with_file_id(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    entry = spooled(tmp_path, "run-00007", b"\x07\x00" * 100, on_disk=b"changed")
    async with new_session() as session:
        done = await uploader(session, served).deliver(entry, fresh=True)

    assert done.state is FileState.FAILED
    [failed] = named(logs, Event.UPLOAD_FAILED)
    assert failed["file_id"] == "run-00007"
    assert failed["reason"] == done.reason
    assert named(logs, Event.CHUNK_SENT) == []


async def test_the_pipeline_workers_keep_each_files_id(
    served: Served, tmp_path: Path, logs: Logs
) -> None:
    """Three workers deliver six generated files side by side: every chunk line's file_id
    names the file whose bytes it sent, and generation lines keep their explicit id."""
    spool = tmp_path / "spool"
    generator = GeneratorConfig(
        count=6, min_size=300 * KiB, max_size=900 * KiB, min_interval=0, max_interval=0
    )
    async with new_session() as session:
        with FileJournal.open(spool) as journal:
            await prepare_journal(journal, 11)
            config = SenderConfig(spool, generator, concurrency=3)
            sender = Sender(config, journal, uploader(session, served), sleep=Sleeps())
            assert await sender.run() is True
            entries = journal.entries()

    chunks = chunks_by_file(logs)
    assert set(chunks) == {e.file_id for e in entries}
    for entry in entries:
        assert covers(chunks[entry.file_id], entry.size), entry.file_id
    generated = {line["file_id"] for line in named(logs, Event.FILE_GENERATED)}
    assert generated == {e.file_id for e in entries}
