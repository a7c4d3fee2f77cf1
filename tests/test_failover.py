"""`transfer send --server A --server B`: client-side fail-over between replicas.

Real processes: one `transfer serve` behind TWO fault proxies is two URLs over the same
store. A proxy closed in the middle of an upload (every connection cut, then refused)
is a replica dying: the sender must move on to the other URL, ask it for the offset,
finish there, every file byte-identical and published once, and `transfer verify`
(given the dead URL first) must pass. Every protocol; also a first server that is down
from the start. The pure parts (what moves on, rebasing, compare-and-switch, the flags)
are checked in process.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import Served
from pytest_aiohttp import AiohttpServer
from services import Services, fresh_place, s3_client
from support import read_journal

from transfer.cli.progress import human_line, servers_text
from transfer.common.http import new_session
from transfer.core.errors import TransientError
from transfer.core.events import Event
from transfer.core.integrity import digest_of
from transfer.sender.client import Progress, UploadClient
from transfer.sender.failover import FailoverClient, Servers, ask_any, moves_on, rebase
from transfer.sender.journal import FileState, JournalEntry
from transfer.testing.faultproxy import Fault
from transfer.testing.harness import Harness, ServerProcess, free_port, run_transfer
from transfer.testing.logs import LogLine, completions, named
from transfer.testing.proxythread import ProxyThread

KiB, MiB = 1024, 1024 * 1024
PROTOCOLS = ("native", "tus", "ietf")
FILES = ("--count", "2", "--seed", "5", "--min-size", "3MiB", "--max-size", "3MiB",
         "--min-interval", "0s", "--max-interval", "0s", "--chunk-size", "256KiB",
         "--retry-timeout", "60s")  # fmt: skip


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    """Each upload protocol the sender speaks."""
    return str(request.param)


def upload_id(entry: JournalEntry) -> str:
    """The server's id: the journaled URL's last segment (tus, IETF), else the file id."""
    return entry.upload_url.rstrip("/").rsplit("/", 1)[-1] if entry.upload_url else entry.file_id


def assert_delivered_once(spool: Path, server: ServerProcess, count: int) -> None:
    """`count` files confirmed, each byte-identical on the server and published once."""
    entries = read_journal(spool)
    assert len(entries) == count
    assert all(e.state is FileState.CONFIRMED for e in entries), [e.reason for e in entries]
    for entry in entries:
        stored = server.data_dir / "files" / upload_id(entry)
        assert stored.read_bytes() == Path(entry.path).read_bytes(), entry.file_id
        assert entry.server_digest == entry.digest
    assert completions(server.events()) == {upload_id(e): 1 for e in entries}


def mid_upload(events: list[LogLine]) -> bool:
    """A chunk was acknowledged and its file is not complete: an upload is half-way."""
    return any(0 < e["acknowledged"] < 3 * MiB for e in named(events, Event.CHUNK_SENT))


def assert_resumed(events: list[LogLine], switch: LogLine) -> None:
    """After `switch`, every file went on from at least what was acknowledged before it
    (the other server reports the shared store's offset), and one did so mid-way."""
    cut = events.index(switch)
    acked: dict[str, int] = {}
    for sent in named(events[:cut], Event.CHUNK_SENT):
        acked[sent["file_id"]] = max(acked.get(sent["file_id"], 0), sent["acknowledged"])
    first_after: dict[str, int] = {}
    for sent in named(events[cut:], Event.CHUNK_SENT):
        first_after.setdefault(sent["file_id"], sent["offset"])
    assert all(offset >= acked.get(f, 0) for f, offset in first_after.items()), (
        acked,
        first_after,
    )
    assert any(offset > 0 for offset in first_after.values()), "nothing resumed mid-way"


def verify(spool: Path, *servers: str) -> None:
    args = [arg for url in servers for arg in ("--server", url)]
    done = run_transfer("verify", "--spool-dir", str(spool), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified 2/2 files: OK" in done.stdout


def assert_moved_on(
    events: list[LogLine], spool: Path, server: ServerProcess, previous: str, now: str
) -> LogLine:
    """One switch, `previous` -> `now`; both files delivered once to `server`; verify
    passes given `previous` first (a dead URL: it moves on too). Returns the switch."""
    switched = named(events, Event.SERVER_SWITCHED)
    assert [(e["previous"], e["server"]) for e in switched] == [(previous, now)]
    assert_delivered_once(spool, server, 2)
    verify(spool, previous, server.url)
    return switched[0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_replica_dies_mid_upload_and_the_sender_finishes_through_the_other(
    launch: Harness, server: ServerProcess, tmp_path: Path, protocol: str
) -> None:
    spool = tmp_path / "spool"
    slow = Fault(bandwidth=2 * MiB)  # a chunk stays on the wire long enough to be cut
    first = ProxyThread(server.port, slow)
    first.start()
    try:
        with ProxyThread(server.port, slow) as second:
            sender = launch.send(first.url, spool, "--server", second.url,
                                 "--protocol", protocol, *FILES)  # fmt: skip
            sender.wait_for(mid_upload, "a chunk acknowledged half-way through a file")
            first.stop()  # the replica dies: open connections cut, new ones refused
            assert sender.finish() == 0, sender.report()
            assert second.stats.bytes_up > 0
    finally:
        first.stop()  # idempotent: a no-op when the test stopped it already

    events = sender.log.events()
    switch = assert_moved_on(events, spool, server, first.url, second.url)
    assert_resumed(events, switch)
    summary = named(events, Event.SEND_SUMMARY)[-1]
    assert summary["server"] == second.url and summary["switches"] == 1


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_first_server_is_down_from_the_start(
    launch: Harness, server: ServerProcess, tmp_path: Path, protocol: str
) -> None:
    spool, dead = tmp_path / "spool", f"http://127.0.0.1:{free_port()}"
    sender = launch.send(dead, spool, "--server", server.url, "--protocol", protocol, *FILES)
    assert sender.finish() == 0, sender.report()
    assert_moved_on(sender.log.events(), spool, server, dead, server.url)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_status_server_shows_the_current_server(
    launch: Harness, server: ServerProcess, tmp_path: Path
) -> None:
    """`send --watch` runs until stopped: after one file went to the second server,
    `GET /servers` on the sender's status port says where it sends now."""
    watched, dead = tmp_path / "in", f"http://127.0.0.1:{free_port()}"
    watched.mkdir()
    (watched / "a.bin").write_bytes(b"x" * 1000)
    sender = launch.send(dead, tmp_path / "spool", "--server", server.url,
                         "--watch", str(watched), "--settle", "0s")  # fmt: skip
    sender.wait_for(lambda events: named(events, Event.UPLOAD_CONFIRMED), "a file confirmed")
    with urllib.request.urlopen(f"{sender.status_url()}/servers", timeout=10) as answer:
        shown = json.loads(answer.read())
    assert shown == {"current": server.url, "servers": [dead, server.url], "switches": 1}
    assert sender.stop(), sender.report()


# --- two real replicas on the S3 store ------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_replica_on_the_s3_store_is_killed_mid_upload(
    services: Services, tmp_path: Path, protocol: str
) -> None:
    """Two `transfer serve --store s3://` replicas (one prefix, one database); the one
    the sender uses is kill -9'd once a multipart part is stored; the sender finishes
    through the other, which resumes the upload from what the store holds."""
    where, dsn = asyncio.run(fresh_place(services))
    flags = ["--s3-endpoint", services.endpoint, "--db", dsn]
    spool, size = tmp_path / "spool", 16 * MiB
    with Harness(tmp_path) as harness:
        dying, other = (
            harness.serve(tmp_path / name, store=str(where), extra=flags, name=name)
            for name in ("dying", "other")
        )
        with ProxyThread(dying.port, Fault(bandwidth=4 * MiB)) as slow:  # a wide window
            sender = harness.send(
                slow.url, spool, "--server", other.url, "--protocol", protocol,
                "--count", "1", "--seed", "9", "--min-size", "16MiB", "--max-size", "16MiB",
                "--chunk-size", "1MiB", "--min-interval", "0s", "--max-interval", "0s",
                "--retry-timeout", "120s",
            )  # fmt: skip
            sender.wait_for(lambda events: acknowledged(events) >= 6 * MiB, "a part stored")
            dying.kill()  # kill -9: the replica dies mid-upload
            assert sender.finish(180) == 0, sender.report()

        entry = read_journal(spool)[0]
        assert entry.state is FileState.CONFIRMED and entry.server_digest == entry.digest
        served = (
            s3_client(services)
            .get_object(Bucket=where.bucket, Key=where.key(f"files/{upload_id(entry)}"))["Body"]
            .read()
        )
        assert len(served) == size and served == Path(entry.path).read_bytes()
        published = completions([*dying.events(), *other.events()])
        assert published == {upload_id(entry): 1}  # published once, by the survivor
        events = sender.log.events()
        switched = named(events, Event.SERVER_SWITCHED)
        assert [e["server"] for e in switched] == [other.url]
        assert_resumed(events, switched[0])
        done = run_transfer("verify", "--spool-dir", str(spool), "--server", slow.url,
                            "--server", other.url)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def acknowledged(events: list[LogLine]) -> int:
    """The highest offset a chunk was acknowledged at."""
    return max((e["acknowledged"] for e in named(events, Event.CHUNK_SENT)), default=0)


# --- in process ------------------------------------------------------------------------


def _refused() -> TransientError:
    cause = aiohttp.ClientConnectionError("Cannot connect to host")
    error = TransientError("PUT: refused")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_refused(), True),
        (TransientError("answered 502", status=502), True),
        (TransientError("answered 503", status=503), True),
        (TransientError("answered 504", status=504), True),
        (TransientError("answered 500", status=500), False),
        (TransientError("answered 507", status=507), False),
        (TransientError("answered 429", status=429), False),
        (TransientError("server sent a body that is not JSON"), False),
        (ValueError("not ours"), False),
    ],
)
def test_what_moves_on_to_the_next_server(error: BaseException, expected: bool) -> None:
    assert moves_on(error) is expected


def test_a_journaled_upload_url_is_rebased_onto_the_next_origin() -> None:
    url = "http://10.0.0.1:8000/tus/abc?x=1"
    assert rebase(url, "https://replica-2:9000") == "https://replica-2:9000/tus/abc?x=1"
    assert rebase(url, "http://b:1/prefix/") == "http://b:1/tus/abc?x=1"  # path kept as given


def test_workers_meeting_one_dead_server_move_on_once() -> None:
    servers = Servers(("http://a", "http://b", "http://c"))
    first = servers.pick()
    for _ in range(3):  # three workers failed on the same server
        servers.failed(first, _refused())
    assert servers.pick() == 1 and servers.pick() == 1
    servers.failed(0, _refused())  # a late report about the old server changes nothing
    assert servers.pick() == 1 and servers.switches == 1
    servers.failed(1, _refused())
    servers.failed(servers.pick(), _refused())
    assert servers.pick() == 0, "the rotation wraps round to a server that came back"
    assert servers.describe() == {
        "current": "http://a",
        "servers": ["http://a", "http://b", "http://c"],
        "switches": 3,
    }


def test_one_server_never_switches() -> None:
    servers = Servers(("http://a",))
    servers.failed(0, _refused())
    assert servers.pick() == 0 and servers.switches == 0


def test_ask_any_tries_each_server_once_then_raises_the_last_failure() -> None:
    servers = Servers(("http://a", "http://b"))
    asked: list[int] = []

    async def down(index: int) -> str:
        asked.append(index)
        raise _refused()

    with pytest.raises(TransientError):
        asyncio.run(ask_any(servers, down))
    assert asked == [0, 1]

    async def second_only(index: int) -> str:
        if index == 0:
            raise _refused()
        return "answer"

    servers = Servers(("http://a", "http://b"))
    assert asyncio.run(ask_any(servers, second_only)) == "answer"


@pytest.mark.parametrize(("status", "moves"), [(502, True), (503, True), (504, True), (500, False)])
async def test_a_gateway_error_moves_on_to_a_server_that_answers(
    aiohttp_server: AiohttpServer, served: Served, status: int, moves: bool
) -> None:
    """Over real HTTP: a front that answers `status` to everything, then a real server."""

    async def refuse(request: web.Request) -> web.Response:
        problem = {"code": "unavailable", "detail": "no upstream"}
        return web.json_response(problem, status=status, content_type="application/problem+json")

    front = web.Application()
    front.router.add_route("*", "/{tail:.*}", refuse)
    gateway = await aiohttp_server(front, host="127.0.0.1")
    servers = Servers((f"http://127.0.0.1:{gateway.port}", f"http://127.0.0.1:{served.port}"))
    data = b"fail-over"
    async with new_session() as session:
        client = FailoverClient(servers, [UploadClient(session, url) for url in servers.urls])

        async def create() -> Progress:
            return await client.create(
                "fo-1", name="a.bin", size=len(data), metadata={}, digest=digest_of(data)
            )

        with pytest.raises(TransientError):
            await create()
        if not moves:  # an answer about the upload: the same server again
            with pytest.raises(TransientError):
                await create()
            assert servers.switches == 0
            return
        assert (await create()).offset == 0
        done = await client.put_chunk("fo-1", 0, data, len(data))
    assert done.record is not None and servers.current == servers.urls[1]
    assert (served.files_dir / "fo-1").read_bytes() == data


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (["http://127.0.0.1:1", "ftp://x"], "--server must be an http:// or https:// URL"),
        (["http://127.0.0.1:1", "http://127.0.0.1:1/"], "is given twice"),
    ],
)
def test_every_server_is_checked(tmp_path: Path, servers: list[str], message: str) -> None:
    args = [arg for url in servers for arg in ("--server", url)]
    for command in (["send", "--count", "1"], ["verify"]):
        done = run_transfer(*command, "--spool-dir", str(tmp_path / "spool"), *args)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr


def test_help_names_the_server_flag_once() -> None:
    done = run_transfer("send", "--help")
    assert done.returncode == 0
    options = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  -")]
    assert options.count("--server") == 1  # one repeatable flag, no --servers twin


def test_the_progress_display_names_the_servers_and_each_switch() -> None:
    switched = {"event": Event.SERVER_SWITCHED, "previous": "http://a", "server": "http://b"}
    assert human_line(switched, "http://b") == "moving on from http://a to http://b"
    assert servers_text(["http://a", "http://b"]) == "http://a or http://b"
    assert servers_text("http://a") == "http://a"
