"""The sender end to end: real `transfer serve` and `transfer send` processes on 127.0.0.1,
real spool and data directories, compared byte for byte; plus one in-process run whose
status server is read while it works.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer
from support import (
    Launcher,
    LogFile,
    ServerProcess,
    assert_delivered,
    completions,
    free_port,
    metric,
    named,
    read_journal,
    read_meta,
    run_transfer,
)

from transfer.common.http import new_session
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender.client import UploadClient
from transfer.sender.generator import GeneratorConfig, content_for, spec_for
from transfer.sender.journal import FileJournal, JournalEntry
from transfer.sender.pipeline import Sender, SenderConfig, prepare_journal
from transfer.sender.retry import RetryPolicy
from transfer.sender.status import make_status_app
from transfer.sender.uploader import Uploader
from transfer.server.app import make_app
from transfer.store.filestore import FileStore
from transfer.store.recordtree import RecordTree

pytestmark = pytest.mark.timeout(60)

KiB = 1024
FAST = ("--min-interval", "0s", "--max-interval", "0s")
SMALL = ("--min-size", "1KiB", "--max-size", "64KiB", *FAST)
COMPLETED = "transfer_uploads_completed_total"


@dataclass
class Sends:
    """Runs `transfer send` to completion; each run logs to its own file under `workdir`."""

    workdir: Path
    logs: list[LogFile] = field(default_factory=list)

    def __call__(self, server: str, spool: Path, *args: str, cwd: Path | None = None) -> Run:
        log = LogFile(self.workdir / f"run{len(self.logs)}.log")
        self.logs.append(log)
        done = run_transfer(
            "send", "--server", server, "--spool-dir", str(spool), "--log-file", str(log.path),
            "--progress", "never", *args, cwd=cwd,
        )  # fmt: skip
        return Run(done.returncode, done.stdout, done.stderr, log.events())


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]

    def named(self, event: str) -> list[dict[str, Any]]:
        return named(self.events, event)

    def summary(self) -> dict[str, Any]:
        [summary] = self.named(Event.SEND_SUMMARY)
        return summary


@pytest.fixture
def send(tmp_path: Path) -> Sends:
    return Sends(tmp_path)


def index_of(entry: JournalEntry) -> int:
    return int(entry.file_id.rsplit("-", 1)[1])


def check_generated(entries: list[JournalEntry], seed: int, config: GeneratorConfig) -> None:
    """Each spool file is exactly what the seeded generator makes for its index."""
    for entry in entries:
        spec = spec_for(config, seed, index_of(entry))
        assert Path(entry.path).read_bytes() == content_for(seed, spec.index, spec.size)


SMALL_CONFIG = GeneratorConfig(
    count=12, min_size=KiB, max_size=64 * KiB, min_interval=0.0, max_interval=0.0
)


# --- generated files -----------------------------------------------------------------


def test_generated_files_are_confirmed_and_identical_on_the_server(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    run = send(server.url, spool, "--count", "12", "--seed", "7", *SMALL)
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("12/12 files confirmed, 0 failed;")
    entries = assert_delivered(spool, server.data_dir, 12)
    assert sorted(index_of(e) for e in entries) == list(range(12))
    check_generated(entries, 7, SMALL_CONFIG)
    assert all(KiB <= e.size <= 64 * KiB and e.size % 2 == 0 for e in entries)
    assert len(run.named(Event.FILE_GENERATED)) == 12
    assert len(run.named(Event.UPLOAD_CONFIRMED)) == 12
    assert run.named(Event.SENDER_STARTED)[0]["status_url"].startswith("http://127.0.0.1:")
    assert metric(server.url, COMPLETED) == 12
    assert completions(server.events()) == {e.file_id: 1 for e in entries}


def test_the_same_seed_makes_the_same_files(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    def spool_bytes(name: str, seed: str) -> dict[int, bytes]:
        spool = tmp_path / name
        assert send(server.url, spool, "--count", "5", "--seed", seed, *SMALL).code == 0
        return {index_of(e): Path(e.path).read_bytes() for e in read_journal(spool)}

    first, again, other = spool_bytes("a", "11"), spool_bytes("b", "11"), spool_bytes("c", "12")
    assert first == again
    assert len(first) == 5
    assert all(first[i] != other[i] for i in range(5))
    assert read_meta(tmp_path / "a")["run"] != read_meta(tmp_path / "b")["run"]  # ids differ


def test_rerunning_a_finished_spool_uploads_nothing(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    assert send(server.url, spool, "--count", "4", "--seed", "3", *SMALL).code == 0
    created = len(named(server.events(), Event.UPLOAD_CREATED))
    assert metric(server.url, COMPLETED) == 4

    again = send(server.url, spool, "--count", "4", "--seed", "3", *SMALL)
    assert again.code == 0, again.stderr
    assert again.stdout.startswith("4/4 files confirmed, 0 failed; 0 B sent")
    assert again.named(Event.FILE_GENERATED) == []
    assert again.named(Event.FILE_REQUEUED) == []
    assert again.summary()["bytes_sent"] == 0
    assert metric(server.url, COMPLETED) == 4
    assert len(named(server.events(), Event.UPLOAD_CREATED)) == created
    assert_delivered(spool, server.data_dir, 4)


def test_raising_count_generates_only_the_missing_files(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    assert send(server.url, spool, "--count", "3", "--seed", "5", *SMALL).code == 0
    more = send(server.url, spool, "--count", "7", "--seed", "5", *SMALL)
    assert more.code == 0, more.stderr
    # Spool writes overlap, so a burst may journal out of index order: compare sorted.
    assert sorted(e["index"] for e in more.named(Event.FILE_GENERATED)) == [3, 4, 5, 6]
    entries = assert_delivered(spool, server.data_dir, 7)
    assert sorted(index_of(e) for e in entries) == list(range(7))
    check_generated(entries, 5, SMALL_CONFIG)
    assert metric(server.url, COMPLETED) == 7


def test_a_different_seed_on_an_existing_spool_is_refused(send: Sends, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    nowhere = f"http://127.0.0.1:{free_port()}"  # count 0: nothing is ever sent
    assert send(nowhere, spool, "--count", "0", "--seed", "1").code == 0
    refused = send(nowhere, spool, "--count", "0", "--seed", "2")
    assert refused.code == 2
    assert refused.stderr == "transfer send: this spool dir was started with --seed 1, not 2\n"


# --- PATH mode -----------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, bytes]:
    """A directory with nested files (one empty); relative name -> content."""
    files = {
        "a.bin": bytes(range(256)) * 40,
        "empty.bin": b"",
        "sub/b.bin": b"\x7f\xff" * 3000,
        "sub/deeper/c.txt": b"hello\n" * 50_000,  # 300 kB: two 256 KiB chunks
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_path_mode_sends_a_directory_tree_and_a_single_file(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    single = tmp_path / "single.dat"
    single.write_bytes(b"one file" * 1000)
    spool = tmp_path / "spool"
    run = send(server.url, spool, str(tmp_path / "tree"), str(single))
    assert run.code == 0, run.stderr
    assert run.named(Event.FILE_GENERATED) == []
    entries = assert_delivered(spool, server.data_dir, 5)
    expected = {**tree, "single.dat": single.read_bytes()}
    assert {e.name: Path(e.path).read_bytes() for e in entries} == expected
    assert {e.name: e.size for e in entries}["empty.bin"] == 0
    assert {e.dtype for e in entries} == {"bytes"}

    again = send(server.url, spool, str(tmp_path / "tree"), str(single))
    assert again.code == 0
    assert again.summary()["bytes_sent"] == 0
    assert len(read_journal(spool)) == 5
    assert metric(server.url, COMPLETED) == 5


def test_a_missing_path_is_a_config_error(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    run = send(server.url, tmp_path / "spool", str(tmp_path / "nope"))
    assert run.code == 2
    assert run.stderr.strip().endswith("nope is not a file or directory")


# --- status and verify ---------------------------------------------------------------


def test_status_and_verify(
    send: Sends, launch: Launcher, server: ServerProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    assert send(server.url, spool, "--count", "4", "--seed", "9", *SMALL).code == 0
    entries = {e.file_id: e for e in read_journal(spool)}

    status = run_transfer("status", "--spool-dir", str(spool), "--json")
    assert status.returncode == 0
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert {r["id"]: (r["state"], r["digest"], r["size"]) for r in rows} == {
        i: ("confirmed", e.digest, e.size) for i, e in entries.items()
    }
    ok = run_transfer("verify", "--spool-dir", str(spool), "--server", server.url)
    assert (ok.returncode, ok.stdout) == (0, "verified 4/4 files: OK\n")

    # The server loses one file's record (and its bytes), then comes back.
    lost = sorted(entries)[1]
    server.kill()
    Path(RecordTree(server.data_dir / "records", durable=False).path(lost)).unlink()
    (server.data_dir / "files" / lost).unlink()
    restarted = launch.serve(server.data_dir)
    bad = run_transfer("verify", "--spool-dir", str(spool), "--server", restarted.url)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{lost}: missing on the server (offset 0)",
        "verified 3/4 files: 1 missing or different",
    ]

    empty = launch.serve(tmp_path / "other-data")
    wrong = run_transfer("verify", "--spool-dir", str(spool), "--server", empty.url)
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[-1] == "verified 0/4 files: 4 missing or different"

    nobody = f"http://127.0.0.1:{free_port()}"
    down = run_transfer("verify", "--spool-dir", str(spool), "--server", nobody)
    assert down.returncode == 1
    assert "ClientConnectorError" in down.stdout


def spool_with_run(spool: Path, run: str, seed: int) -> Path:
    """A spool whose journal already names its run id (so two spools share file ids)."""

    async def prepare() -> None:
        with FileJournal.open(spool) as journal:
            await journal.set_meta("run", run)
            await journal.set_meta("seed", str(seed))

    asyncio.run(prepare())
    return spool


def test_verify_notices_a_different_file_under_the_same_id(
    send: Sends, launch: Launcher, server: ServerProcess, tmp_path: Path
) -> None:
    ours = spool_with_run(tmp_path / "ours", "shared", 1)
    theirs = spool_with_run(tmp_path / "theirs", "shared", 2)
    elsewhere = launch.serve(tmp_path / "elsewhere")
    assert send(elsewhere.url, ours, "--count", "2", *SMALL).code == 0
    assert send(server.url, theirs, "--count", "2", *SMALL).code == 0
    assert (
        run_transfer("verify", "--spool-dir", str(ours), "--server", elsewhere.url).returncode == 0
    )

    mixed = run_transfer("verify", "--spool-dir", str(ours), "--server", server.url)
    assert mixed.returncode == 1
    digests = {e.file_id: e.digest for e in read_journal(theirs)}
    lines = mixed.stdout.splitlines()
    assert lines[:2] == [
        f"{e.file_id}: server digest {digests[e.file_id]} != {e.digest}" for e in read_journal(ours)
    ]
    assert lines[2] == "verified 0/2 files: 2 missing or different"


# --- faults and refusals -------------------------------------------------------------


def test_injected_corruption_is_refused_by_the_server_and_resent(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    run = send(
        server.url, spool, "--count", "12", "--seed", "21", "--inject-corruption", "0.3", *SMALL
    )
    assert run.code == 0, run.stderr
    entries = assert_delivered(spool, server.data_dir, 12)
    refused = metric(server.url, "transfer_digest_mismatches_total", {"kind": "chunk"})
    assert refused > 0
    assert run.summary()["retries"] >= refused
    assert any("chunk_digest_mismatch" in e["error"] for e in run.named(Event.UPLOAD_RETRY))
    assert completions(server.events()) == {e.file_id: 1 for e in entries}


def test_a_server_limit_fails_files_with_the_servers_code(
    send: Sends, launch: Launcher, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data", extra=["--max-upload", "4KiB"])
    spool = tmp_path / "spool"
    args = ("--count", "8", "--seed", "2", "--min-size", "1KiB", "--max-size", "8KiB", *FAST)
    run = send(server.url, spool, *args)
    assert run.code == 1
    entries = read_journal(spool)
    too_big = {e.file_id for e in entries if e.size > 4 * KiB}
    assert too_big and len(too_big) < 8, "the seed must give both kinds"
    for entry in entries:
        if entry.file_id in too_big:
            assert entry.state is FileState.FAILED
            assert entry.reason is not None and entry.reason.startswith("413 upload_too_large")
        else:
            assert entry.state is FileState.CONFIRMED
    failed = run.named(Event.UPLOAD_FAILED)
    assert {e["file_id"] for e in failed} == too_big
    assert all("upload_too_large" in e["reason"] for e in failed)
    assert run.stdout.startswith(f"{8 - len(too_big)}/8 files confirmed, {len(too_big)} failed;")
    status = run_transfer("status", "--spool-dir", str(spool), "--json")
    reasons = [json.loads(line)["reason"] for line in status.stdout.splitlines()]
    assert sum("upload_too_large" in (r or "") for r in reasons) == len(too_big)


def test_a_spool_given_relative_resumes_from_another_working_directory(
    send: Sends, server: ServerProcess, tmp_path: Path
) -> None:
    """Journaled paths must not depend on the cwd of the run that wrote them."""
    first_cwd, second_cwd = tmp_path / "one", tmp_path / "two"
    first_cwd.mkdir()
    second_cwd.mkdir()
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = ("--count", "2", "--seed", "4", *SMALL)
    failed = send(nowhere, Path("spool"), *args, "--retry-timeout", "200ms", cwd=first_cwd)
    assert failed.code == 1
    assert all(Path(e.path).is_absolute() for e in read_journal(first_cwd / "spool"))
    again = send(server.url, first_cwd / "spool", *args, cwd=second_cwd)
    assert again.code == 0, again.named(Event.UPLOAD_FAILED)
    assert_delivered(first_cwd / "spool", server.data_dir, 2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--chunk-size", "100KiB"], "--chunk-size must be a positive multiple of 256KiB"),
        (["--chunk-size", "0"], "--chunk-size must be a positive multiple of 256KiB"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--server", "ftp://x"], "--server must be an http:// or https:// URL, not 'ftp://x'"),
        (["--inject-corruption", "1.5"], "--inject-corruption must be between 0 and 1"),
        (["--status-port", "70000"], "--status-port must be 0-65535"),
        (["--count", "-1"], "file count must be >= 0, not -1"),
        (["--min-size", "2KiB", "--max-size", "1KiB"], "sizes must satisfy 2 <= min <= max"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    spool = tmp_path / "spool"
    done = run_transfer("send", "--server", "http://127.0.0.1:9", "--spool-dir", str(spool), *flags)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"transfer send: {message}")
    assert done.stdout == ""
    assert not spool.exists()


def test_an_unparsable_size_exits_2(tmp_path: Path) -> None:
    done = run_transfer(
        "send", "--server", "http://x", "--spool-dir", str(tmp_path), "--chunk-size", "1XB"
    )
    assert done.returncode == 2
    assert "argument --chunk-size: unknown size unit in '1XB'" in done.stderr.splitlines()[-1]


def test_a_busy_status_port_is_a_config_error(send: Sends, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = send(
            "http://127.0.0.1:9", tmp_path / "spool", "--count", "0", "--status-port", str(port)
        )
    assert run.code == 2
    assert run.stderr.startswith(f"transfer send: cannot listen on 127.0.0.1:{port}")


# --- the status server, in process ---------------------------------------------------


@dataclass
class Gate:
    """The generator's `sleep`: the first `free` waits return at once, the rest block
    until `open` is called. So a test can hold a run in the middle of generation."""

    free: int
    calls: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def sleep(self, seconds: float) -> None:
        self.calls += 1
        if self.calls > self.free:
            await self.opened.wait()

    def open(self) -> None:
        self.opened.set()


def assert_published(entries: list[JournalEntry], data_dir: Path) -> None:
    for entry in entries:
        assert (data_dir / "files" / entry.file_id).read_bytes() == Path(entry.path).read_bytes()


async def poll_status(
    client: Any, done: Callable[[dict[str, Any]], bool], deadline: float = 10.0
) -> dict[str, Any]:
    async with asyncio.timeout(deadline):
        while True:
            response = await client.get("/status")
            assert response.status == 200
            snap: dict[str, Any] = await response.json()
            if done(snap):
                return snap
            await asyncio.sleep(0.01)


async def test_the_status_server_reports_counts_while_running(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "data")
    store.open()
    upload_server = await aiohttp_server(make_app(store), host="127.0.0.1")
    spool = tmp_path / "spool"
    gate = Gate(free=2)
    generator = GeneratorConfig(count=5, min_size=KiB, max_size=300 * KiB)
    async with new_session() as session:
        with FileJournal.open(spool) as journal:
            await prepare_journal(journal, 17)
            client = UploadClient(session, str(upload_server.make_url("")))
            uploader = Uploader(client, 256 * KiB, RetryPolicy(timeout=10.0))
            config = SenderConfig(spool, generator, concurrency=2)
            sender = Sender(config, journal, uploader, sleep=gate.sleep)
            status = await aiohttp_client(make_status_app(sender))
            run = asyncio.create_task(sender.run())

            held = await poll_status(status, lambda s: s["files"]["confirmed"] == 2)
            assert held["files"] == {"generated": 0, "confirmed": 2, "failed": 0}
            assert (held["generated_this_run"], held["confirmed_this_run"]) == (2, 2)
            assert held["bytes_sent"] == sum(e.size for e in journal.entries())
            assert not run.done()
            health = await status.get("/healthz")
            assert await health.json() == {"status": "ok"}

            gate.open()
            assert await asyncio.wait_for(run, 20) is True
            final = await poll_status(status, lambda s: True)
            assert final["files"] == {"generated": 0, "confirmed": 5, "failed": 0}
            assert final["bytes_sent"] == sum(e.size for e in journal.entries())
            assert final["latency_p50_ms"] is not None
            text = await (await status.get("/metrics")).text()
            assert 'transfer_sender_files{state="confirmed"} 5' in text.splitlines()
            assert_published(journal.entries(), tmp_path / "data")
