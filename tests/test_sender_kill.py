"""kill -9 at the worst moments: the sender (during generation, mid-chunk, between the
server's completion and the journal's confirmation) and the server (mid-run).

After every crash the same command is run again with the same --spool-dir and --seed, and
the end state must be exact: `count` files confirmed, each byte-identical on the server
and equal to what the seeded generator makes for its index, and none uploaded twice (the
server logs `upload.completed` once per id and counts `count` completions).

Moments that are races in real time are made wide on purpose: a bandwidth-capped proxy
keeps a chunk in flight for tens of milliseconds; a latency proxy holds the server's
answers back, so the server has completed an upload well before the sender can know.
The last race is also reproduced exactly, in process, with a journal that fails to record
CONFIRMED.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer
from support import JournalWrapper, assert_delivered, metric, read_journal

from transfer.common.http import new_session
from transfer.core.events import Event
from transfer.sender.client import UploadClient
from transfer.sender.generator import GeneratorConfig, content_for, spec_for
from transfer.sender.journal import FileJournal, FileState, Journal, JournalEntry
from transfer.sender.pipeline import Sender, SenderConfig, prepare_journal
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader
from transfer.server.app import STATE, make_app
from transfer.store.filestore import FileStore
from transfer.testing.faultproxy import Fault
from transfer.testing.harness import Harness, ServerProcess
from transfer.testing.logs import LogLine, completions, named
from transfer.testing.polling import wait_until
from transfer.testing.proxythread import ProxyThread

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(90)]

KiB, MiB = 1024, 1024 * 1024
FAST = ("--min-interval", "0s", "--max-interval", "0s")
COMPLETED = "transfer_uploads_completed_total"


def index_of(entry: JournalEntry) -> int:
    return int(entry.file_id.rsplit("-", 1)[1])


def assert_exactly_once(
    spool: Path, server: ServerProcess, count: int, seed: int, config: GeneratorConfig
) -> list[JournalEntry]:
    """The end state every sender crash must reach after a restart."""
    entries = assert_delivered(spool, server.data_dir, count)
    assert sorted(index_of(e) for e in entries) == list(range(count))
    for entry in entries:
        spec = spec_for(config, seed, index_of(entry))
        assert Path(entry.path).read_bytes() == content_for(seed, spec.index, spec.size)
    assert completions(server.events()) == {e.file_id: 1 for e in entries}
    assert metric(server.url, COMPLETED) == count
    return entries


def sizes(events: list[LogLine]) -> dict[str, int]:
    return {e["file_id"]: e["size"] for e in named(events, Event.FILE_GENERATED)}


# --- (a) during generation -----------------------------------------------------------


def reached(index: int) -> Callable[[list[LogLine]], bool]:
    """A log probe: has file `index` been generated (and so journaled)?"""
    return lambda events: any(e["index"] >= index for e in named(events, Event.FILE_GENERATED))


def test_killed_during_generation_regenerates_only_the_missing_files(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    spool = tmp_path / "spool"
    count, seed = 8, 31
    config = GeneratorConfig(count, KiB, 64 * KiB, 0.0, 0.0)
    args = ("--count", str(count), "--seed", str(seed), "--min-size", "1KiB", "--max-size", "64KiB")
    slow = ("--min-interval", "150ms", "--max-interval", "150ms")

    journaled = 0
    for k in (2, 5):  # two crashes, each once k files exist in total
        run = launch.send(server.url, spool, *args, *slow)
        run.wait_for(reached(k - 1), f"file {k - 1} generated")
        run.kill()
        now = read_journal(spool)
        assert k <= len(now) < count, "the kill must land during generation"
        journaled = len(now)

    last = launch.send(server.url, spool, *args, *FAST)
    assert last.finish() == 0, last.report()
    regenerated = [e["index"] for e in named(last.log.events(), Event.FILE_GENERATED)]
    # Spool writes overlap, so a burst may journal out of index order: compare sorted.
    assert sorted(regenerated) == list(range(journaled, count))
    assert_exactly_once(spool, server, count, seed, config)


# --- (b) mid-chunk -------------------------------------------------------------------


def first_partial_ack(events: list[LogLine]) -> LogLine | None:
    """A chunk.sent that left its file incomplete: the upload is mid-way."""
    size = sizes(events)
    for sent in named(events, Event.CHUNK_SENT):
        if 0 < sent["acknowledged"] < size[sent["file_id"]]:
            return sent
    return None


def test_killed_mid_chunk_resumes_at_the_servers_offset(launch: Harness, tmp_path: Path) -> None:
    server = launch.serve(tmp_path / "data")
    spool = tmp_path / "spool"
    count, seed = 3, 41
    config = GeneratorConfig(count, 2 * MiB, 4 * MiB, 0.0, 0.0)
    args = ("--count", str(count), "--seed", str(seed), "--min-size", "2MiB", "--max-size",
            "4MiB", *FAST, "--chunk-size", "256KiB", "--concurrency", "2")  # fmt: skip

    # 4 MiB/s per connection: each 256 KiB chunk spends ~60 ms on the wire.
    with ProxyThread(server.port, Fault(bandwidth=4 * MiB)) as proxy:
        first = launch.send(proxy.url, spool, *args, log_level="debug")
        ack = first.wait_for(first_partial_ack, "a chunk acknowledged mid-file")
        first.kill()

    unconfirmed = {e.file_id for e in read_journal(spool) if e.state is not FileState.CONFIRMED}
    assert ack["file_id"] in unconfirmed

    # The server's offsets may still move for a moment (a chunk the dead sender had
    # already handed to the kernel can land, or be cut back): whatever it holds when
    # asked is what the restarted sender must continue from.
    second = launch.send(server.url, spool, *args, log_level="debug")
    assert second.finish() == 0, second.report()
    events = second.log.events()
    final = assert_exactly_once(spool, server, count, seed, config)
    size = {e.file_id: e.size for e in final}
    resumed = {e["file_id"]: e["offset"] for e in named(events, Event.UPLOAD_RESUMED)}
    assert ack["acknowledged"] <= resumed[ack["file_id"]] < size[ack["file_id"]]
    for file_id, end in size.items():
        sent = [(e["offset"], e["bytes"]) for e in named_chunks(events, file_id)]
        if sent:  # from where the server stood to the end, each byte once
            assert_contiguous(sent, resumed.get(file_id, 0), end)
        else:  # confirmed before the kill, or completed by a chunk that landed after it
            assert file_id not in resumed
    owed = sum(size[i] - resumed.get(i, 0) for i in size if named_chunks(events, i))
    assert second.summary()["bytes_sent"] == owed
    # Across both runs the server wrote every byte exactly once.
    assert metric(server.url, "transfer_bytes_received_total") == sum(size.values())


def named_chunks(events: list[LogLine], file_id: str) -> list[LogLine]:
    return [e for e in named(events, Event.CHUNK_SENT) if e["file_id"] == file_id]


def assert_contiguous(sent: list[tuple[int, int]], start: int, end: int) -> None:
    """Chunks (offset, length) cover start..end once, in order."""
    position = start
    for offset, length in sent:
        assert offset == position, f"chunk at {offset}, expected {position}: {sent}"
        position += length
    assert position == end


# --- (c) completed on the server, not yet confirmed in the journal -------------------


def completed_unconfirmed(server: ServerProcess) -> str | None:
    done = completions(server.events())
    return next(iter(done), None)


def test_killed_after_the_last_chunk_before_confirmation(launch: Harness, tmp_path: Path) -> None:
    server = launch.serve(tmp_path / "data")
    spool = tmp_path / "spool"
    count, seed = 2, 51
    config = GeneratorConfig(count, KiB, 4 * KiB, 0.0, 0.0)
    args = ("--count", str(count), "--seed", str(seed), "--min-size", "1KiB", "--max-size",
            "4KiB", *FAST)  # fmt: skip

    # Every read through the proxy waits 0.3 s: the server's 200 for the last chunk
    # reaches the sender 0.3 s after the server logged upload.completed.
    with ProxyThread(server.port, Fault(latency=0.3)) as proxy:
        first = launch.send(proxy.url, spool, *args, log_level="debug")
        done_id = wait_until(
            lambda: completed_unconfirmed(server),
            "the server completing an upload",
            alive=first.alive,
            context=first.report,
        )
        first.kill()

    journal = {e.file_id: e for e in read_journal(spool)}
    assert journal[done_id].state is FileState.GENERATED, "the kill came too late"
    assert (server.data_dir / "files" / done_id).is_file()

    second = launch.send(server.url, spool, *args, log_level="debug")
    assert second.finish() == 0, second.report()
    events = second.log.events()
    assert [e for e in named(events, Event.CHUNK_SENT) if e["file_id"] == done_id] == []
    assert done_id in {e["file_id"] for e in named(events, Event.UPLOAD_CONFIRMED)}
    assert_exactly_once(spool, server, count, seed, config)


class SimulatedCrash(Exception):
    """Stands for the process dying just before CONFIRMED reaches the journal."""


class CrashOnConfirm(JournalWrapper):
    """A `Journal` that records everything but CONFIRMED, which it 'dies' on."""

    def __init__(self, inner: Journal) -> None:
        super().__init__(inner)
        self.refused: list[str] = []

    async def record(self, entry: JournalEntry) -> None:
        if entry.state is FileState.CONFIRMED:
            self.refused.append(entry.file_id)
            raise SimulatedCrash(entry.file_id)
        await self.inner.record(entry)


def make_sender(session: aiohttp.ClientSession, url: str, spool: Path, journal: Journal) -> Sender:
    generator = GeneratorConfig(count=2, min_size=300 * KiB, max_size=600 * KiB)
    config = SenderConfig(spool, generator, concurrency=1)
    uploader = Uploader(UploadClient(session, url), 256 * KiB, RetryPolicy(timeout=10.0))

    async def no_wait(seconds: float) -> None:
        return None

    return Sender(config, journal, uploader, sleep=no_wait)


async def test_a_completion_the_journal_missed_is_confirmed_from_the_servers_record(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "data")
    store.open()
    app = make_app(store)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = str(server.make_url(""))
    spool = tmp_path / "spool"
    async with new_session() as session:
        with FileJournal.open(spool) as real:
            await prepare_journal(real, 7)
            crashing = CrashOnConfirm(real)
            with pytest.raises(SimulatedCrash):
                await make_sender(session, url, spool, crashing).run()
            [lost] = crashing.refused
            assert {e.file_id: e.state for e in real.entries()}[lost] is FileState.GENERATED
        assert app[STATE].metrics.get(COMPLETED) == 1

        with FileJournal.open(spool) as journal:
            again = make_sender(session, url, spool, journal)
            assert await again.run() is True
            entries = {e.file_id: e for e in journal.entries()}
    assert [e.state for e in entries.values()] == [FileState.CONFIRMED] * 2
    other = next(e for i, e in entries.items() if i != lost)
    assert again.uploader.stats.bytes_sent == other.size  # nothing of `lost` was resent
    assert app[STATE].metrics.get(COMPLETED) == 2
    for file_id, entry in entries.items():
        assert_same(tmp_path / "data" / "files" / file_id, Path(entry.path))


def assert_same(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes()


# --- (d) the server is killed and restarted ------------------------------------------


def test_the_sender_rides_out_a_server_killed_and_restarted(
    launch: Harness, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = launch.serve(data)
    spool = tmp_path / "spool"
    count, seed = 8, 61
    args = ("--count", str(count), "--seed", str(seed), "--min-size", "256KiB", "--max-size",
            "1MiB", "--min-interval", "30ms", "--max-interval", "60ms", "--concurrency", "2",
            "--retry-timeout", "30s")  # fmt: skip
    run = launch.send(server.url, spool, *args)
    wait_until(
        lambda: len(completions(server.events())) >= 2,
        "two uploads completed",
        alive=run.alive,
        context=run.report,
    )
    server.kill()
    before = server.events()
    run.wait_for(lambda ev: named(ev, Event.UPLOAD_RETRY), "the sender retrying")
    assert run.alive()

    restarted = launch.serve(data, port=server.port)
    assert run.finish(60) == 0, run.report()
    assert_delivered(spool, data, count)
    done = completions(before) + completions(restarted.events())
    assert max(done.values()) == 1, f"uploaded twice: {done}"
    retries = named(run.log.events(), Event.UPLOAD_RETRY)
    assert retries and all(r["error"] for r in retries)
    summary: dict[str, Any] = run.summary()
    assert summary["ok"] is True and summary["retries"] == len(retries)
