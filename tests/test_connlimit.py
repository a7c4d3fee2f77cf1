"""The connection layer on a real in-process server: states, eviction, the header
timeout, the per-address cap, the trusted-proxy rule, metrics, the descriptor limit.

Clients are raw sockets on loopback, bound to other 127.0.0.0/8 source addresses where
a test needs several clients. Nothing sleeps: every wait is a poll or a read with a
deadline that only guards against a hang.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from transfer.common.metrics import Metrics
from transfer.core.errors import Code
from transfer.core.events import Event
from transfer.server.app import STATE, make_app
from transfer.server.connections import ConnLimits, Tracker, parse_network
from transfer.server.connlimit import LimitedTCPSite
from transfer.server.forwarded import client_middleware
from transfer.store.filestore import FileStore
from transfer.testing.polling import wait_until_async

HOST = "127.0.0.1"
GUARD = 10.0  # a hang guard, never a timing assertion
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Site:
    port: int
    tracker: Tracker
    metrics: Metrics
    data_dir: Path


Start = Callable[..., Awaitable[Site]]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """`await start(max_connections=..., per_ip=..., ...)`: a server with those limits."""
    runners: list[web.AppRunner] = []

    async def make(clock: Callable[[], float] | None = None, **limits: object) -> Site:
        store = FileStore(tmp_path / f"data{len(runners)}")
        store.open()
        conn_limits = ConnLimits(**limits)  # type: ignore[arg-type]
        app = make_app(store)
        app.middlewares.insert(0, client_middleware(conn_limits))  # as `transfer serve`
        runner = web.AppRunner(app, keepalive_timeout=75.0)
        await runner.setup()
        runners.append(runner)
        metrics = app[STATE].metrics
        tracker = Tracker(conn_limits, metrics, **({"clock": clock} if clock else {}))
        await LimitedTCPSite(runner, HOST, 0, tracker=tracker).start()
        return Site(runner.addresses[0][1], tracker, metrics, tmp_path / f"data{len(runners) - 1}")

    yield make
    for runner in runners:
        await runner.cleanup()


async def _connect(port: int, source: str = HOST) -> Conn:
    return await asyncio.open_connection(HOST, port, local_addr=(source, 0))


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer: status, headers (lower-case names), body (Content-Length)."""
    async with asyncio.timeout(GUARD):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        headers = {k.lower(): v for k, v in headers.items()}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Did the server close the connection (EOF or reset), reading what is left?"""
    try:
        async with asyncio.timeout(GUARD):
            await reader.read()
    except ConnectionResetError:
        pass
    return True


async def _get(port: int, path: str = "/healthz", source: str = HOST, **headers: str) -> int:
    reader, writer = await _connect(port, source)
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
    status, _, _ = await _answer(reader)
    writer.close()
    return status


async def _partial_headers(port: int, source: str = HOST) -> Conn:
    reader, writer = await _connect(port, source)
    writer.write(b"PUT /uploads/x HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    return reader, writer


def _put_head(upload_id: str, data: bytes, **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (
        f"PUT /uploads/{upload_id} HTTP/1.1\r\nHost: x\r\n{extra}"
        f"Content-Range: bytes 0-{len(data) - 1}/{len(data)}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()


@dataclass
class Body:
    """A PUT whose headers are sent and whose body is held back after its first byte."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    rest: bytes

    async def finish(self) -> int:
        self.writer.write(self.rest)
        await self.writer.drain()
        status, _, _ = await _answer(self.reader)
        self.writer.close()
        return status


async def _in_body(site: Site, upload_id: str, source: str = HOST, **headers: str) -> Body:
    data = upload_id.encode() * 1000
    reader, writer = await _connect(site.port, source)
    writer.write(_put_head(upload_id, data, **headers) + data[:1])
    await writer.drain()
    await _until(site, "in_body", at_least=1)
    return Body(reader, writer, data[1:])


async def _until(site: Site, state: str, at_least: int) -> None:
    def there() -> bool:
        site.tracker.refresh()
        return site.metrics.get("transfer_connections", state=state) >= at_least

    await wait_until_async(there, f"{at_least} connection(s) {state}", deadline=GUARD)


# --- the global cap -------------------------------------------------------------------


async def test_full_of_bodies_a_newcomer_gets_503_and_the_bodies_finish(start: Start) -> None:
    site = await start(max_connections=2)
    first, second = await _in_body(site, "a"), await _in_body(site, "b")
    await _until(site, "in_body", at_least=2)

    reader, writer = await _connect(site.port)
    status, headers, body = await _answer(reader)
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(body)["code"] == Code.TOO_MANY_CONNECTIONS
    writer.close()

    assert [await first.finish(), await second.finish()] == [200, 200]
    assert (site.data_dir / "files" / "a").read_bytes() == b"a" * 1000
    assert site.metrics.get("transfer_connections_refused_total", reason="full") == 1
    await wait_until_async(lambda: len(site.tracker) == 0, "places freed", deadline=GUARD)
    assert await _get(site.port) == 200


async def test_the_oldest_connection_still_reading_headers_makes_room(start: Start) -> None:
    site = await start(max_connections=3)
    oldest, newer = await _partial_headers(site.port), await _partial_headers(site.port)
    upload = await _in_body(site, "u")

    assert await _get(site.port) == 200
    assert await _closed(oldest[0])
    assert not newer[0].at_eof()
    assert await upload.finish() == 200
    evicted = site.metrics.get("transfer_connections_evicted_total", reason="room_reading_headers")
    assert evicted == 1
    newer[1].close()


async def test_an_upload_in_its_body_is_never_closed_to_make_room(start: Start) -> None:
    site = await start(max_connections=4, per_ip=1000)
    upload = await _in_body(site, "body", source="127.0.0.9")
    held = [await _partial_headers(site.port, f"127.0.0.{10 + i % 20}") for i in range(200)]

    assert await upload.finish() == 200
    assert (site.data_dir / "files" / "body").read_bytes() == b"body" * 1000
    evicted = site.metrics.get("transfer_connections_evicted_total", reason="room_reading_headers")
    assert evicted >= 197  # every newcomer but the first three evicted one still reading
    for _, writer in held:
        writer.close()


async def test_an_idle_keepalive_connection_makes_room_when_none_is_reading(
    start: Start,
) -> None:
    site = await start(max_connections=2)
    reader, writer = await _connect(site.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _answer(reader))[0] == 200
    await _until(site, "idle_keepalive", at_least=1)
    upload = await _in_body(site, "k")

    assert await _get(site.port) == 200
    assert await _closed(reader)
    assert await upload.finish() == 200
    reason = "room_idle_keepalive"
    assert site.metrics.get("transfer_connections_evicted_total", reason=reason) == 1


# --- the header timeout ---------------------------------------------------------------


async def test_unfinished_headers_are_closed_but_an_idle_keepalive_is_not(start: Start) -> None:
    site = await start(header_timeout=0.3)
    idle_reader, idle_writer = await _connect(site.port)
    idle_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _answer(idle_reader))[0] == 200
    kept_reader, kept_writer = await _connect(site.port)
    kept_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _answer(kept_reader))[0] == 200
    kept_writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next request's headers, unfinished
    fresh, _ = await _partial_headers(site.port)  # opened after both requests were answered

    assert await _closed(fresh)
    assert await _closed(kept_reader)
    # The idle connection had longer than the timeout, and is still served.
    idle_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _answer(idle_reader))[0] == 200
    assert site.metrics.get("transfer_connections_evicted_total", reason="header_timeout") == 2
    idle_writer.close()


# --- one address, and the trusted proxy -----------------------------------------------


async def test_past_the_per_ip_cap_a_connection_is_refused_and_logged_once_a_minute(
    start: Start,
) -> None:
    clock = Clock()
    site = await start(clock, per_ip=2)
    held = [await _partial_headers(site.port) for _ in range(2)]
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            reader, writer = await _connect(site.port)
            status, headers, body = await _answer(reader)
            assert (status, headers["retry-after"]) == (429, "1")
            assert json.loads(body)["code"] == Code.TOO_MANY_CONNECTIONS_PER_IP
            writer.close()
        clock.now += 61
        reader, writer = await _connect(site.port)
        assert (await _answer(reader))[0] == 429
        writer.close()
    assert await _get(site.port, source="127.0.0.2") == 200
    refused = [line for line in logs if line["event"] == Event.CONNECTION_REFUSED]
    assert [(r["address"], r["reason"], r["refused"]) for r in refused] == [
        ("127.0.0.1", "per_ip", 1),
        ("127.0.0.1", "per_ip", 5),
    ]
    assert site.metrics.get("transfer_connections_refused_total", reason="per_ip") == 6
    for _, writer in held:
        writer.close()


async def test_a_forged_forwarded_for_from_an_untrusted_peer_counts_for_nothing(
    start: Start,
) -> None:
    site = await start(per_ip=2, trusted=(parse_network("127.0.0.3"),))
    forged = {"X_Forwarded_For": "198.51.100.7"}
    bodies = [await _in_body(site, f"f{i}", **forged) for i in range(2)]
    reader, writer = await _connect(site.port)
    assert (await _answer(reader))[0] == 429  # still 127.0.0.1's third connection
    writer.close()
    assert [await body.finish() for body in bodies] == [200, 200]


async def test_through_a_trusted_proxy_each_forwarded_client_gets_its_share(
    start: Start,
) -> None:
    site = await start(per_ip=2, trusted=(parse_network("127.0.0.3/32"),))
    proxy = "127.0.0.3"
    client = {"X_Forwarded_For": "203.0.113.9, 198.51.100.7"}  # the proxy appended the last
    bodies = [await _in_body(site, f"p{i}", proxy, **client) for i in range(2)]
    # The proxy itself is past the per-address cap, and exempt; its client is not.
    third = await _in_body(site, "p2", proxy, **client)
    assert (await _answer(third.reader))[0] == 429
    other = await _in_body(site, "p3", proxy, X_Forwarded_For="198.51.100.8")
    assert [await body.finish() for body in [*bodies, other]] == [200, 200, 200]
    third.writer.close()


# --- metrics and file descriptors -----------------------------------------------------


async def test_metrics_show_connections_by_state_and_every_reason(start: Start) -> None:
    site = await start()
    held = await _partial_headers(site.port)
    reader, writer = await _connect(site.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, _, body = await _answer(reader)
    text = body.decode()
    for state in ("reading_headers", "in_body", "idle_keepalive"):
        assert f'transfer_connections{{state="{state}"}}' in text
    assert 'transfer_connections{state="reading_headers"} 1' in text
    assert 'transfer_connections{state="in_body"} 1' in text  # this very request
    for reason in ("per_ip", "full"):
        assert f'transfer_connections_refused_total{{reason="{reason}"}} 0' in text
    for reason in ("header_timeout", "room_reading_headers", "room_idle_keepalive"):
        assert f'transfer_connections_evicted_total{{reason="{reason}"}} 0' in text
    held[1].close()


def test_a_cap_beyond_the_hard_descriptor_limit_is_refused_in_one_line() -> None:
    # The child lowers its own hard limit, so the test holds wherever the machine's is.
    code = (
        "import resource\n"
        "from transfer.core.errors import ConfigError\n"
        "from transfer.server.connlimit import ensure_fd_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))\n"
        "try:\n"
        "    ensure_fd_limit(1024)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    [line] = done.stdout.splitlines()
    assert "ulimit -Hn" in line and "at most 768" in line


def test_a_low_soft_descriptor_limit_is_raised_at_start() -> None:
    code = (
        "import resource\n"
        "from transfer.server.connlimit import ensure_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))\n"
        "print(ensure_fd_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1].split() == ["1256", "1256"]
    assert Event.FD_LIMIT_RAISED in done.stdout


def test_the_default_cap_shrinks_to_a_low_hard_limit_instead_of_refusing_to_start() -> None:
    # A process may lower its own hard limit (never raise it): do so in a child.
    code = (
        "import resource\n"
        "from transfer.server.connlimit import default_max_connections, ensure_fd_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))\n"
        "cap = default_max_connections()\n"
        "ensure_fd_limit(cap)\n"
        "print(cap)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "768"  # 1024 less the descriptors kept spare
