"""Security and hardening: TLS with a bearer token end to end, expiry of abandoned
uploads, a slow-body attack beside a normal upload, disk space and the partial quota,
and the HTTP limits that bad input meets before it reaches a handler.

Real servers only: `transfer serve` children (via `support.Launcher`) for the TLS and
token run, in-process servers on 127.0.0.1 port 0 for the rest. Certificates come from a
throwaway CA (trustme). Nothing sleeps to synchronize: waits are polls under a deadline;
the only pauses are the attackers' own pacing.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import os
import random
import shutil
import socket
import ssl
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from conftest import HOST, MakeServed, Served, content_range
from pytest_aiohttp import AiohttpClient
from support import Launcher, LogFile, assert_delivered, read_journal, run_transfer

from transfer.common.tls import server_context
from transfer.core.events import Event
from transfer.sender.journal import FileState
from transfer.server.app import STATE, ServerConfig, make_app
from transfer.server.expiry import sweep_once
from transfer.store.filestore import FileStore
from transfer.testing.polling import wait_until_async

pytestmark = pytest.mark.timeout(60)

KiB = 1024
MiB = 1024 * KiB
TOKEN = "wombat-7f3c9a1e5b2d4c6e-token"  # distinctive, so a grep of the logs cannot miss it
WRONG_TOKEN = "not-the-token-0123456789"
FAST = ("--min-interval", "0s", "--max-interval", "0s", "--max-size", "64KiB")
DEADLINE = 20.0  # seconds: bound on any in-process wait
DURATION_COUNT = "transfer_request_duration_seconds_count"
Client = TestClient[web.Request, web.Application]


# --- a throwaway CA ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    cert: Path  # the server's certificate chain (PEM), issued for 127.0.0.1
    key: Path  # its private key (PEM)
    ca: Path  # the CA certificate a client must be given (`--ca-file`)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert(HOST)
    pki = Pki(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(pki.cert), append=True)
    issued.private_key_pem.write_to_path(str(pki.key))
    ca.cert_pem.write_to_path(str(pki.ca))
    return pki


# --- TLS and the token, end to end ---------------------------------------------------


def _failures(spool: Path) -> list[str]:
    """The reason of every journaled file; fails if any file is not `failed`."""
    entries = read_journal(spool)
    assert entries
    assert all(e.state is FileState.FAILED for e in entries), [e.state for e in entries]
    return [e.reason or "" for e in entries]


def _stored(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())


def test_tls_with_a_token_end_to_end_and_refusals(tmp_path: Path, pki: Pki) -> None:
    data = tmp_path / "data"
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    with Launcher(tmp_path) as launch:
        server = launch.serve(data, extra=[*tls, "--token", TOKEN])
        assert server.url.startswith("https://127.0.0.1:")
        url = server.url

        # No --ca-file: the private CA is unknown, every connection is refused.
        spool = tmp_path / "spool-no-ca"
        untrusted = launch.send(
            url, spool, "--token", TOKEN, "--count", "2", "--retry-timeout", "0.5s", *FAST
        )
        assert untrusted.finish() == 1, untrusted.report()
        assert all("certificate verify failed" in r.lower() for r in _failures(spool))
        assert "certificate verify failed" in untrusted.log.path.read_text().lower()

        # The right CA, the wrong token: 401, for good (not retried).
        spool = tmp_path / "spool-wrong-token"
        wrong = launch.send(url, spool, "--ca-file", str(pki.ca), "--token", WRONG_TOKEN, *FAST)
        assert wrong.finish() == 1, wrong.report()
        assert all(r.startswith("401 unauthorized") for r in _failures(spool))
        assert _stored(data) == []

        spool = tmp_path / "spool"
        good = launch.send(
            url, spool, "--ca-file", str(pki.ca), "--token", TOKEN, "--count", "5", *FAST
        )
        assert good.finish() == 0, good.report()
        assert_delivered(spool, data, 5)

        verify = ["verify", "--spool-dir", str(spool), "--server", url, "--ca-file", str(pki.ca)]
        done = run_transfer(*verify, "--token", TOKEN, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verified 5/5" in done.stdout
        done = run_transfer(*verify, "--token", WRONG_TOKEN, timeout=30)
        assert done.returncode == 1
        server.proc.terminate()
        server.proc.wait(10)

    assert LogFile(server.log.path).named(Event.SERVER_STOPPED)
    logs = [p for p in tmp_path.iterdir() if p.suffix in (".log", ".err", ".out")]
    assert len(logs) >= 8  # a log, stdout and stderr per child
    for path in logs:
        text = path.read_text()
        assert TOKEN not in text, path
        assert WRONG_TOKEN not in text, path


def _weak_client(ca: Path) -> ssl.SSLContext | None:
    """A client that speaks at most TLS 1.1, or None if this OpenSSL cannot build one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(ca)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    return context


def _weak_server(pki: Pki) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(pki.cert, pki.key)
    return context


async def _handshake(context: ssl.SSLContext, port: int) -> str:
    """Open a TLS connection to 127.0.0.1:`port`; the negotiated version."""
    async with asyncio.timeout(5):
        _, writer = await asyncio.open_connection(HOST, port, ssl=context, server_hostname=HOST)
    try:
        version: str = writer.get_extra_info("ssl_object").version()
        return version
    finally:
        writer.close()


async def _speaks_tls_1_1(client: ssl.SSLContext, pki: Pki) -> bool:
    """Whether `client` can complete a TLS 1.1 handshake at all (with a server that allows it)."""
    try:
        server = await asyncio.start_server(lambda r, w: w.close(), HOST, 0, ssl=_weak_server(pki))
    except ssl.SSLError:
        return False
    async with server:
        try:
            return await _handshake(client, server.sockets[0].getsockname()[1]) == "TLSv1.1"
        except (ssl.SSLError, ConnectionError):
            return False


async def test_tls_below_1_2_is_refused(tmp_path: Path, pki: Pki) -> None:
    weak = _weak_client(pki.ca)
    if weak is None or not await _speaks_tls_1_1(weak, pki):
        pytest.skip("this OpenSSL cannot speak TLS 1.1 even when both sides allow it")
    store = FileStore(tmp_path)
    store.open()
    runner = web.AppRunner(make_app(store))
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=server_context(pki.cert, pki.key))
    await site.start()
    port = runner.addresses[0][1]
    try:
        # A protocol_version alert (SSLError) or, as asyncio reports it, a reset.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await _handshake(weak, port)
        modern = ssl.create_default_context(cafile=pki.ca)
        assert await _handshake(modern, port) in ("TLSv1.2", "TLSv1.3")
    finally:
        await runner.cleanup()


# --- expiry of abandoned partial uploads ---------------------------------------------


@dataclass(slots=True)
class FakeClock:
    now: float

    def __call__(self) -> float:
        return self.now


TTL = 3600.0


def _expires_at(value: str) -> float:
    """An `Upload-Expires` value (an IMF-fixdate HTTP date) as a timestamp."""
    assert value.endswith(" GMT"), value
    return email.utils.parsedate_to_datetime(value).timestamp()


def _assert_expires(value: str, modified: float) -> None:
    # HTTP dates have whole seconds: the header is mtime + ttl, rounded down.
    assert 0 <= modified + TTL - _expires_at(value) < 1, (value, modified)


async def _metric(client: Client, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


async def _sweep(client: Client, clock: FakeClock) -> list[str]:
    state = client.app[STATE]
    return await sweep_once(state.store, state.admission.locks, state.metrics, ttl=TTL, now=clock)


async def test_idle_partial_uploads_expire_and_nothing_else_does(make_served: MakeServed) -> None:
    clock = FakeClock(time.time())
    served = await make_served(partial_ttl=TTL, clock=clock)
    client = served.client

    resp = await client.post("/uploads", json={"id": "stale", "size": 100})
    part = served.uploads_dir / "stale.part"
    _assert_expires(resp.headers["Upload-Expires"], part.stat().st_mtime)
    resp = await client.put(
        "/uploads/stale", data=b"s" * 10, headers={"Content-Range": "bytes 0-9/100"}
    )
    assert resp.status == 308
    _assert_expires(resp.headers["Upload-Expires"], part.stat().st_mtime)
    idle_since = clock.now - TTL - 60
    os.utime(part, (idle_since, idle_since))
    resp = await client.head("/uploads/stale")
    _assert_expires(resp.headers["Upload-Expires"], idle_since)

    resp = await client.put(
        "/uploads/fresh", data=b"f" * 7, headers={"Content-Range": "bytes 0-6/*"}
    )
    assert resp.status == 308
    resp = await client.put(
        "/uploads/done", data=b"d" * 5, headers={"Content-Range": "bytes 0-4/5"}
    )
    assert resp.status == 200
    assert "Upload-Expires" not in resp.headers
    assert "Upload-Expires" not in (await client.head("/uploads/done")).headers

    assert await _sweep(client, clock) == ["stale"]
    assert await _metric(client, "transfer_uploads_expired_total") == 1
    assert (await client.head("/uploads/stale")).status == 404
    resp = await client.get("/uploads/stale")
    assert (resp.status, (await resp.json())["code"]) == (404, "upload_not_found")
    resp = await client.put("/uploads/stale", headers={"Content-Range": "bytes */*"})
    assert resp.status == 404  # a status query does not bring it back
    assert not part.exists()
    assert not (served.uploads_dir / "stale.json").exists()

    resp = await client.head("/uploads/fresh")
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, "7")
    assert (served.uploads_dir / "fresh.part").read_bytes() == b"f" * 7
    assert (served.files_dir / "done").read_bytes() == b"d" * 5

    # Time passes (the fake clock): the fresh one expires too, the completed file never.
    clock.now += TTL + 1
    assert await _sweep(client, clock) == ["fresh"]
    assert await _sweep(client, clock) == []
    assert await _metric(client, "transfer_uploads_expired_total") == 2
    assert (await client.head("/uploads/fresh")).status == 404
    assert (served.files_dir / "done").read_bytes() == b"d" * 5
    assert (await client.head("/uploads/done")).headers["Upload-Complete"] == "?1"
    assert client.app[STATE].store.partial_bytes == 0


# --- a slow-body attack beside a normal upload ---------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        if not self.headers.get("content-type", "").startswith("application/problem+json"):
            return None
        return str(json.loads(self.body)["code"])


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def _exchange(port: int, request: bytes) -> Answer:
    """One raw request on a fresh connection; the server's answer."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request)
            await writer.drain()
            return await _read_answer(reader)
        finally:
            writer.close()


TRICKLE_STEPS = 100  # at most 100 bytes at 0.1 s each: the attack is bounded
ATTACKERS = 8


async def _trickle(port: int, upload_id: str) -> Answer:
    """Announce a 1 MiB chunk, then send it a byte every 0.1 s until the server answers."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head = (
        f"PUT /uploads/{upload_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Range: bytes 0-{MiB - 1}/{MiB}\r\nContent-Length: {MiB}\r\n\r\n"
    )
    writer.write(head.encode())
    answer = asyncio.create_task(_read_answer(reader))
    try:
        for _ in range(TRICKLE_STEPS):
            if answer.done():
                break
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({answer}, timeout=0.1)  # the attack's pace, woken by an answer
        async with asyncio.timeout(5):
            return await answer
    finally:
        answer.cancel()
        writer.close()


async def _put_until_accepted(client: Client, upload_id: str, data: bytes) -> list[int]:
    """PUT the whole file, again while the server answers 503; every status seen."""
    statuses: list[int] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        resp = await client.put(
            f"/uploads/{upload_id}",
            data=data,
            headers={"Content-Range": content_range(0, data, len(data))},
        )
        await resp.read()
        statuses.append(resp.status)
        if resp.status != 503:
            return statuses
        await asyncio.sleep(0.05)  # a client's backoff, bounded by the deadline
    raise AssertionError(f"still refused after {DEADLINE} s: {statuses}")


class BodyClock(FakeClock):
    """The server's monotonic clock for body rates; it notes which tasks read it."""

    __slots__ = ("readers",)

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.readers: set[asyncio.Task[object] | None] = set()

    def __call__(self) -> float:
        self.readers.add(asyncio.current_task())
        return self.now


async def test_a_slow_body_attack_does_not_stop_a_normal_upload(make_served: MakeServed) -> None:
    clock = BodyClock(1000.0)
    served = await make_served(idle_timeout=5.0, max_active=ATTACKERS, monotonic=clock)
    admission = served.client.app[STATE].admission
    data = random.Random(6).randbytes(300 * KiB)

    attack = [asyncio.create_task(_trickle(served.port, f"slow{i}")) for i in range(ATTACKERS)]
    try:
        await wait_until_async(
            lambda: admission.active == ATTACKERS,
            "the attackers to hold every slot",
            deadline=DEADLINE,
        )
        await wait_until_async(
            lambda: len(clock.readers) == ATTACKERS,
            "every attack body to be timed",
            deadline=DEADLINE,
        )
        refused = await served.client.put(
            "/uploads/normal", data=data, headers={"Content-Range": content_range(0, data, None)}
        )
        assert await _problem(refused) == (503, "too_many_uploads")  # the attack holds them
        # A minute passes for the trickling bodies: each one's next byte finds it far
        # under --min-rate, and the slots free up.
        clock.now += 60.0
        statuses = await _put_until_accepted(served.client, "normal", data)
        answers = await asyncio.gather(*attack)
    finally:
        for task in attack:
            task.cancel()

    assert statuses[-1] == 200
    # Cut by the rate rule, or (one of them) preempted to make room for the normal upload.
    assert {a.status for a in answers} == {408}
    assert {a.code for a in answers} <= {"body_too_slow", "body_preempted"}
    assert (served.files_dir / "normal").read_bytes() == data
    assert admission.active == 0


# --- disk space and the partial quota ------------------------------------------------


async def _problem(resp: ClientResponse) -> tuple[int, str]:
    assert resp.content_type == "application/problem+json"
    return resp.status, str((await resp.json())["code"])


async def test_a_size_that_would_eat_into_the_reserve_is_refused_at_creation(
    make_served: MakeServed, tmp_path: Path
) -> None:
    free = shutil.disk_usage(tmp_path).free
    served = await make_served(reserve=max(free - 256 * MiB, 0))  # 256 MiB left to hand out
    client = served.client

    resp = await client.post("/uploads", json={"id": "big", "size": 1024 * MiB})
    assert await _problem(resp) == (507, "insufficient_storage")
    resp = await client.put("/uploads/big", headers={"Content-Range": f"bytes */{1024 * MiB}"})
    assert await _problem(resp) == (507, "insufficient_storage")
    resp = await client.put(
        "/uploads/big", data=b"x" * 10, headers={"Content-Range": f"bytes 0-9/{1024 * MiB}"}
    )
    assert await _problem(resp) == (507, "insufficient_storage")
    assert list(served.uploads_dir.iterdir()) == []

    resp = await client.post("/uploads", json={"id": "small", "size": KiB})
    assert resp.status == 200


async def test_a_size_larger_than_the_disk_is_refused_at_creation(
    make_served: MakeServed,
) -> None:
    served = await make_served(max_upload=2**50, max_partial=2**50)
    resp = await served.client.post("/uploads", json={"id": "huge", "size": 2**49})
    assert await _problem(resp) == (507, "insufficient_storage")
    assert list(served.uploads_dir.iterdir()) == []


class TightStore(FileStore):
    """A file store whose disk has exactly `free` bytes left."""

    free = 100 * MiB

    def free_bytes(self) -> int:
        return self.free


async def test_a_chunk_that_would_eat_into_the_reserve_is_refused_before_writing(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = TightStore(tmp_path)
    store.open()
    client = await aiohttp_client(
        make_app(store, ServerConfig(reserve=MiB)), server_kwargs={"host": HOST}
    )
    resp = await client.put(
        "/uploads/u", data=b"a" * 100, headers={"Content-Range": "bytes 0-99/*"}
    )
    assert resp.status == 308

    store.free = MiB + 99  # 99 bytes above the reserve
    resp = await client.put(
        "/uploads/u", data=b"b" * 100, headers={"Content-Range": "bytes 100-199/*"}
    )
    assert await _problem(resp) == (507, "insufficient_storage")
    assert resp.headers["Range"] == "bytes=0-99"
    assert (tmp_path / "uploads" / "u.part").read_bytes() == b"a" * 100

    store.free = MiB + 100
    resp = await client.put(
        "/uploads/u", data=b"b" * 100, headers={"Content-Range": "bytes 100-199/200"}
    )
    assert resp.status == 200
    assert (tmp_path / "files" / "u").read_bytes() == b"a" * 100 + b"b" * 100


async def _chunk(client: Client, upload_id: str, start: int, data: bytes) -> ClientResponse:
    return await client.put(
        f"/uploads/{upload_id}",
        data=data,
        headers={"Content-Range": content_range(start, data, None)},
    )


async def test_the_partial_quota_holds_and_is_freed_by_completion_and_deletion(
    make_served: MakeServed,
) -> None:
    served = await make_served(max_partial=1000)
    client = served.client
    store = client.app[STATE].store

    assert (await _chunk(client, "a", 0, b"a" * 600)).status == 308
    resp = await _chunk(client, "b", 0, b"b" * 500)
    assert await _problem(resp) == (507, "partial_quota_exceeded")
    assert (await client.head("/uploads/b")).headers["Upload-Offset"] == "0"
    resp = await client.post("/uploads", json={"id": "c", "size": 500})
    assert await _problem(resp) == (507, "partial_quota_exceeded")
    assert not (served.uploads_dir / "c.json").exists()

    # Completing `a` (declaring its total) frees its 600 bytes.
    assert (await client.put("/uploads/a", headers={"Content-Range": "bytes */600"})).status == 200
    assert store.partial_bytes == 0
    resp = await _chunk(client, "b", 0, b"b" * 500)
    assert resp.status == 308

    resp = await _chunk(client, "b", 500, b"b" * 501)
    assert await _problem(resp) == (507, "partial_quota_exceeded")
    assert resp.headers["Range"] == "bytes=0-499"
    assert (served.uploads_dir / "b.part").read_bytes() == b"b" * 500
    resp = await _chunk(client, "d", 0, b"d" * 600)
    assert await _problem(resp) == (507, "partial_quota_exceeded")

    # Deleting `b` frees its 500 bytes.
    assert (await client.delete("/uploads/b")).status == 204
    assert store.partial_bytes == 0
    resp = await _chunk(client, "d", 0, b"d" * 600)
    assert resp.status == 308
    assert store.partial_bytes == 600
    assert (served.files_dir / "a").read_bytes() == b"a" * 600


async def _start_chunk(port: int, upload_id: str, data: bytes) -> Held:
    """A PUT of `data` to a new upload whose body has begun (one byte) but not ended."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head = (
        f"PUT /uploads/{upload_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Range: {content_range(0, data, None)}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data[:1])
    await writer.drain()
    return Held(writer, asyncio.create_task(_read_answer(reader)), data[1:])


@dataclass
class Held:
    """A request whose body is held back: `finish()` sends the rest and reads the answer."""

    writer: asyncio.StreamWriter
    answer: asyncio.Task[Answer]
    rest: bytes

    async def finish(self) -> Answer:
        try:
            if not self.answer.done():
                self.writer.write(self.rest)
                await self.writer.drain()
            async with asyncio.timeout(10):
                return await self.answer
        finally:
            self.writer.close()


async def _race_two_chunks(client: Client, port: int) -> list[tuple[int, str | None]]:
    """Two 600-byte chunks received at once: the first is held mid-body while the
    second is checked against the limits."""
    admission = client.app[STATE].admission
    first = await _start_chunk(port, "p1", b"1" * 600)
    await wait_until_async(
        lambda: admission.active == 1, "the first chunk to be receiving", deadline=DEADLINE
    )
    second = await _start_chunk(port, "p2", b"2" * 600)
    await wait_until_async(
        lambda: admission.active == 2 or second.answer.done(), "the second chunk", deadline=DEADLINE
    )
    answers = [await first.finish(), await second.finish()]
    return [(a.status, a.code) for a in answers]


async def test_concurrent_chunks_cannot_overdraw_the_partial_quota(
    make_served: MakeServed,
) -> None:
    served = await make_served(max_partial=1000, idle_timeout=5.0)
    answers = await _race_two_chunks(served.client, served.port)
    assert answers == [(308, None), (507, "partial_quota_exceeded")]
    assert served.client.app[STATE].store.partial_bytes == 600


async def test_concurrent_chunks_cannot_overdraw_the_disk_reserve(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = TightStore(tmp_path)
    store.free = MiB + 1000  # 1000 bytes above the reserve
    store.open()
    config = ServerConfig(reserve=MiB, idle_timeout=5.0)
    client = await aiohttp_client(make_app(store, config), server_kwargs={"host": HOST})
    assert client.port is not None
    answers = await _race_two_chunks(client, client.port)
    assert answers == [(308, None), (507, "insufficient_storage")]


# --- HTTP limits ---------------------------------------------------------------------


async def test_oversized_requests_are_refused_and_the_server_keeps_serving(
    served: Served,
) -> None:
    port = served.port
    big_field = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    big_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    for request in (big_field, big_line, many + b"\r\n"):
        answer = await _exchange(port, request)
        assert 400 <= answer.status < 500, answer

    resp = await served.client.post(
        "/uploads",
        data=b"{" + b" " * (MiB + 1) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert await _problem(resp) == (413, "request_entity_too_large")
    answer = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 200


def _status_of(port: int, request: bytes) -> int:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        return response.status


def test_made_up_methods_do_not_grow_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request is timed under its method. aiohttp's pure-Python parser (no C
    extensions) takes any token as a method: each must not add a series, or a client could
    grow the server's memory one made-up method at a time."""
    monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    with Launcher(tmp_path) as launch:
        server = launch.serve(tmp_path / "data")
        for i in range(20):
            request = f"FOO{i} /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            assert _status_of(server.port, request.encode()) == 404
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
            text = response.read().decode()
    series = [line for line in text.splitlines() if line.startswith(DURATION_COUNT)]
    assert f'{DURATION_COUNT}{{method="other",route="unmatched"}} 20' in series
    assert not any("FOO" in line for line in series)
