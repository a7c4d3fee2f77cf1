"""`transfer send --protocol tus`: real senders against real tus servers.

- A third-party server, `@tus/server` with `@tus/file-store` under Node
  (tests/node-tus-server): the 100-file job, every file byte-identical in its file store
  and confirmed `length-only` (the store announces no checksum extension and no
  whole-file digest); a kill -9 of the sender mid-file through a bandwidth-capped proxy,
  then a restart that resumes the journaled upload instead of creating a second one.
- Our own `transfer serve` at /tus/: files confirmed by the whole-file digest read back
  with HEAD (`Repr-Digest`), and chunks damaged on the way refused by their
  per-PATCH `Upload-Checksum` (460) and re-sent.
- The pure parts: what OPTIONS announces, where the tus endpoint is.

Node and tests/node-tus-server/node_modules come from `scripts/test.sh`
(`npm ci --prefix tests/node-tus-server`); without them the Node tests skip, except
under `CI=true`, where they fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import StartServer
from support import missing_piece, read_journal

from transfer.cli.send import tus_endpoint
from transfer.core.events import Event
from transfer.sender.client import Verified
from transfer.sender.journal import FileState, JournalEntry
from transfer.sender.tusclient import Discovery
from transfer.testing.faultproxy import Fault
from transfer.testing.harness import Child, Harness, run_transfer, transfer_command
from transfer.testing.logs import LogFile, named
from transfer.testing.nodetus import announced_port, node_argv, node_missing
from transfer.testing.polling import wait_until
from transfer.testing.proxythread import ProxyThread

KiB, MiB = 1024, 1024 * 1024
FAST = ("--min-interval", "0ms", "--max-interval", "20ms")


@dataclass
class NodeTus:
    """A running `@tus/server`: its creation URL and its file store's directory."""

    child: Child
    endpoint: str
    store: Path

    def uploads(self) -> dict[str, bytes]:
        """Upload id -> the bytes the store holds (every upload has an `{id}.json`)."""
        ids = [p.name.removesuffix(".json") for p in self.store.glob("*.json")]
        return {upload_id: (self.store / upload_id).read_bytes() for upload_id in ids}


@pytest.fixture
def node_tus(launch: Harness, tmp_path: Path) -> NodeTus:
    """`@tus/server` on 127.0.0.1, port 0, announced on its stdout."""
    missing = node_missing()
    if missing is not None:
        missing_piece(missing)
    out, store = tmp_path / "node.out", tmp_path / "store"
    child = launch.spawn(node_argv(store), err=tmp_path / "node.err", out=out)
    port = wait_until(
        lambda: announced_port(out),
        "@tus/server to listen",
        alive=child.alive,
        context=child.report,
    )
    return NodeTus(child, f"http://127.0.0.1:{port}/files/", store)


def send_args(server: str, spool: Path, log: Path, *extra: str) -> list[str]:
    return ["send", "--protocol", "tus", "--server", server, "--spool-dir", str(spool),
            "--progress", "never", "--log-file", str(log), *extra]  # fmt: skip


def upload_id(entry: JournalEntry) -> str:
    assert entry.upload_url is not None, f"{entry.file_id} has no journaled upload URL"
    return entry.upload_url.rstrip("/").rsplit("/", 1)[-1]


def assert_in_store(entries: list[JournalEntry], stored: dict[str, bytes], count: int) -> None:
    """`count` confirmed files, each exactly once in `stored`, byte-identical to the spool."""
    assert len(entries) == count
    assert [e.file_id for e in entries if e.state is not FileState.CONFIRMED] == []
    assert sorted(upload_id(e) for e in entries) == sorted(stored)  # one upload per file
    for entry in entries:
        assert stored[upload_id(entry)] == Path(entry.path).read_bytes(), entry.file_id


# --- @tus/server (Node) ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_100_file_job_reaches_tus_node_server(node_tus: NodeTus, tmp_path: Path) -> None:
    spool, log = tmp_path / "spool", tmp_path / "send.log"
    job = ("--count", "100", "--min-size", "1KiB", "--max-size", "256KiB", "--seed", "5", *FAST)
    done = run_transfer(*send_args(node_tus.endpoint, spool, log, *job), timeout=150)

    assert done.returncode == 0, done.stderr[-2000:]
    entries = read_journal(spool)
    assert_in_store(entries, node_tus.uploads(), 100)
    # No whole-file digest and no checksum extension: confirmed by the length only, and
    # the journal and the log say so.
    assert {(e.verified, e.server_digest) for e in entries} == {("length-only", None)}
    confirmed = LogFile(log).named(Event.UPLOAD_CONFIRMED)
    assert len(confirmed) == 100
    assert {e["verified"] for e in confirmed} == {Verified.LENGTH_ONLY}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_sender_killed_mid_file_resumes_the_same_upload(
    node_tus: NodeTus, launch: Harness, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(4 * MiB))
    spool, log = tmp_path / "spool", tmp_path / "send.log"
    port = int(node_tus.endpoint.split(":")[2].split("/")[0])
    # 2 MiB/s: the file takes about 2 s, so the kill lands inside it.
    with ProxyThread(port, lambda _: Fault(bandwidth=2 * MiB)) as proxy:
        server = f"{proxy.url}/files/"
        args = send_args(server, spool, log, "--chunk-size", "256KiB", str(source))
        first = launch.spawn(transfer_command(*args), err=tmp_path / "first.err")
        part = wait_until(lambda: _partial(node_tus, 4 * MiB), "bytes in the store", deadline=30)
        first.kill()
        [journaled] = read_journal(spool)
        assert journaled.state is FileState.GENERATED
        assert upload_id(journaled) == part  # the URL was journaled before its bytes
        mark = LogFile(log).count()

        second = run_transfer(*send_args(server, spool, log, str(source)), timeout=60)

    assert second.returncode == 0, second.stderr[-2000:]
    assert_in_store(read_journal(spool), node_tus.uploads(), 1)
    events = LogFile(log).events()[mark:]
    resumed = named(events, Event.UPLOAD_RESUMED)
    assert len(resumed) == 1 and resumed[0]["offset"] > 0, resumed
    assert min(e["offset"] for e in named(events, Event.CHUNK_SENT)) == resumed[0]["offset"]


def _partial(node: NodeTus, total: int) -> str | None:
    """The id of an upload holding some but not all of its bytes, if any."""
    for path in node.store.glob("*.json"):
        data = path.with_suffix("")
        if data.exists() and 0 < data.stat().st_size < total:
            return data.name
    return None


# --- transfer serve at /tus/ -----------------------------------------------------------


@pytest.mark.slow
def test_our_server_confirms_by_the_whole_file_digest(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir, spool, log = tmp_path / "data", tmp_path / "spool", tmp_path / "send.log"
    server = serve_process(data_dir)
    job = ("--count", "8", "--max-size", "3MiB", "--chunk-size", "1MiB", "--seed", "2", *FAST)
    done = run_transfer(*send_args(server.url, spool, log, *job))

    assert done.returncode == 0, done.stderr[-2000:]
    entries = read_journal(spool)
    published = {p.name: p.read_bytes() for p in (data_dir / "files").iterdir()}
    assert_in_store(entries, published, 8)
    assert all(e.server_digest == e.digest and e.verified is None for e in entries)
    confirmed = LogFile(log).named(Event.UPLOAD_CONFIRMED)
    assert {e["verified"] for e in confirmed} == {Verified.WHOLE_FILE_DIGEST}
    assert {e["upload_id"] for e in confirmed} == set(published)
    created = named(server.events(), Event.UPLOAD_CREATED)
    assert sorted(e["upload_id"] for e in created) == sorted(published)  # never a second one
    assert {e["protocol"] for e in created} == {"tus"}


@pytest.mark.slow
def test_chunks_damaged_in_transit_fail_their_checksum_and_are_resent(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir, spool, log = tmp_path / "data", tmp_path / "spool", tmp_path / "send.log"
    server = serve_process(data_dir)
    job = ("--count", "6", "--min-size", "300KiB", "--max-size", "1MiB", "--seed", "4", *FAST)
    damage = ("--chunk-size", "256KiB", "--inject-corruption", "0.3")
    done = run_transfer(*send_args(server.url, spool, log, *job, *damage))

    assert done.returncode == 0, done.stderr[-2000:]
    published = {p.name: p.read_bytes() for p in (data_dir / "files").iterdir()}
    assert_in_store(read_journal(spool), published, 6)
    refused = [e for e in named(server.events(), Event.REQUEST) if e.get("status") == 460]
    assert refused, "no chunk was damaged: the test proved nothing"
    assert len(LogFile(log).named(Event.UPLOAD_RETRY)) >= len(refused)


# --- the pure parts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "algorithms", "checksum"),
    [
        ("creation,checksum", "sha1,md5,sha256,xxh3-128", "xxh3-128"),
        ("creation, checksum", "md5, SHA256", "sha256"),
        ("creation,checksum", "crc32", None),  # nothing we can compute
        ("creation,expiration", "sha1", None),  # algorithms without the extension: none
        (None, None, None),
    ],
)
def test_options_decide_the_per_chunk_checksum(
    extension: str | None, algorithms: str | None, checksum: str | None
) -> None:
    headers = {"Tus-Extension": extension, "Tus-Checksum-Algorithm": algorithms}
    found = Discovery.from_headers({k: v for k, v in headers.items() if v is not None})
    assert found.checksum == checksum
    expected = Verified.PER_CHUNK_CHECKSUM if checksum else Verified.LENGTH_ONLY
    assert found.verified is expected


@pytest.mark.parametrize(
    ("server", "endpoint"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/tus/"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/tus/"),
        ("https://h.example/files/", "https://h.example/files/"),
        ("http://h.example/up/tus", "http://h.example/up/tus"),
    ],
)
def test_the_tus_endpoint_is_the_servers_path_or_tus(server: str, endpoint: str) -> None:
    assert tus_endpoint(server) == endpoint


def test_a_bad_server_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_transfer(*send_args("ftp://x", tmp_path / "spool", tmp_path / "s.log"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "--server must be an http:// or https:// URL" in done.stderr
