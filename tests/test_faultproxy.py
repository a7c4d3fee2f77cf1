"""FaultProxy over real sockets on 127.0.0.1: a tiny echo/sink target, plus aiohttp."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from transfer.common.http import new_session
from transfer.core.errors import ConfigError
from transfer.testing.faultproxy import NO_FAULT, Fault, FaultProxy, random_plan

pytestmark = pytest.mark.timeout(20)

HOST = "127.0.0.1"
DEADLINE = 5.0


@dataclass
class Target:
    """A TCP server on 127.0.0.1 that records what it receives and, if `echo`, sends it back."""

    echo: bool
    received: bytearray = field(default_factory=bytearray)
    closed: int = 0  # connections that ended, by EOF or by reset
    resets: int = 0
    port: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def until(self, predicate: Callable[[], bool], within: float = DEADLINE) -> None:
        """Wait until `predicate` holds; TimeoutError after `within` seconds."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), within)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += data
                await self._notify()
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except ConnectionResetError:
            self.resets += 1
        finally:
            self.closed += 1
            writer.close()
            await self._notify()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


async def _serve(echo: bool) -> AsyncIterator[Target]:
    target = Target(echo=echo)
    server = await asyncio.start_server(target._handle, HOST, 0)
    target.port = int(server.sockets[0].getsockname()[1])
    try:
        yield target
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[Target]:
    async for target in _serve(echo=True):
        yield target


@pytest.fixture
async def sink() -> AsyncIterator[Target]:
    async for target in _serve(echo=False):
        yield target


async def closed_by_peer(reader: asyncio.StreamReader) -> None:
    """Read until the connection ends, by FIN or by RST (closing with unread input)."""
    try:
        while await asyncio.wait_for(reader.read(65536), DEADLINE):
            pass
    except ConnectionResetError:
        pass


class FakeSleep:
    """Records requested delays and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, proxy.port), DEADLINE)


async def round_trip(proxy: FaultProxy, payload: bytes) -> bytes:
    """Send `payload` and half-close while reading the echo until EOF."""
    reader, writer = await connect(proxy)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    try:
        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(), DEADLINE)
        await sender
        return echoed
    finally:
        writer.close()


async def test_no_fault_passes_bytes_unchanged_both_ways(echo: Target) -> None:
    payload = random.Random(1).randbytes(300 * 1024)
    async with FaultProxy(HOST, echo.port) as proxy:
        assert await round_trip(proxy, payload) == payload
        await echo.until(lambda: echo.closed == 1)
    assert bytes(echo.received) == payload
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)
    assert (proxy.stats.cuts, proxy.stats.resets, proxy.stats.stalls) == (0, 0, 0)


async def test_cut_forwards_exactly_n_bytes_then_fin(sink: Target) -> None:
    async with FaultProxy(HOST, sink.port, plan=Fault(cut_after=1000)) as proxy:
        reader, writer = await connect(proxy)
        writer.write(bytes(5000))
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # a clean EOF
        await sink.until(lambda: sink.closed == 1)
        writer.close()
    assert bytes(sink.received) == bytes(1000)
    assert sink.resets == 0
    assert (proxy.stats.bytes_up, proxy.stats.cuts) == (1000, 1)


async def test_cut_at_zero_closes_on_connect(sink: Target) -> None:
    async with FaultProxy(HOST, sink.port, plan=Fault(cut_after=0)) as proxy:
        reader, writer = await connect(proxy)
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        await sink.until(lambda: sink.closed == 1)
        writer.close()
    assert sink.received == b""


async def test_reset_gives_client_connection_reset(sink: Target) -> None:
    async with FaultProxy(HOST, sink.port, plan=Fault(reset_after=100)) as proxy:
        reader, writer = await connect(proxy)
        writer.write(bytes(10_000))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), DEADLINE)
        await sink.until(lambda: sink.closed == 1)
        writer.close()
    assert len(sink.received) <= 100
    assert proxy.stats.resets == 1


async def test_stall_holds_connection_open_until_close(sink: Target) -> None:
    proxy = FaultProxy(HOST, sink.port, plan=Fault(stall_after=1000))
    await proxy.start()
    try:
        reader, writer = await connect(proxy)
        writer.write(bytes(5000))
        await sink.until(lambda: len(sink.received) >= 1000)
        with pytest.raises(TimeoutError):  # nothing more arrives and nothing closes
            await sink.until(lambda: len(sink.received) > 1000 or sink.closed > 0, within=0.2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.05)
        assert proxy.stats.stalls == 1
    finally:
        await asyncio.wait_for(proxy.close(), DEADLINE)
    await closed_by_peer(reader)
    await sink.until(lambda: sink.closed == 1)
    writer.close()
    assert len(sink.received) == 1000


async def test_set_plan_ends_a_stall(sink: Target) -> None:
    async with FaultProxy(HOST, sink.port, plan=Fault(stall_after=10)) as proxy:
        reader, writer = await connect(proxy)
        writer.write(bytes(100))
        await sink.until(lambda: len(sink.received) == 10)
        proxy.set_plan(NO_FAULT)
        await closed_by_peer(reader)
        await sink.until(lambda: sink.closed == 1)
        writer.close()
    assert len(sink.received) == 10


async def test_latency_is_requested_once_per_read_in_both_directions(echo: Target) -> None:
    sleep = FakeSleep()
    async with FaultProxy(HOST, echo.port, plan=Fault(latency=0.25), sleep=sleep) as proxy:
        reader, writer = await connect(proxy)
        for i in range(5):
            writer.write(bytes([i]) * 100)
            assert await asyncio.wait_for(reader.readexactly(100), DEADLINE) == bytes([i]) * 100
        writer.close()
    # one 100-byte write is one loopback segment, so one read each way per round trip
    assert sleep.calls == [0.25] * 10
    assert sum(sleep.calls) == pytest.approx(2.5)


async def test_bandwidth_requests_bytes_over_rate(echo: Target) -> None:
    sleep = FakeSleep()
    payload = random.Random(2).randbytes(50_000)
    plan = Fault(bandwidth=10_000)
    async with FaultProxy(HOST, echo.port, plan=plan, sleep=sleep) as proxy:
        assert await round_trip(proxy, payload) == payload
    assert sum(sleep.calls) == pytest.approx(2 * len(payload) / 10_000)
    assert max(sleep.calls) <= 1.0  # reads are capped at one second's worth
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


async def test_set_plan_applies_to_the_next_connection_only(echo: Target) -> None:
    seen: list[int] = []

    def plan(number: int) -> Fault:
        seen.append(number)
        return NO_FAULT

    async with FaultProxy(HOST, echo.port, plan=plan) as proxy:
        first_r, first_w = await connect(proxy)
        first_w.write(b"ping")
        assert await asyncio.wait_for(first_r.readexactly(4), DEADLINE) == b"ping"
        proxy.set_plan(Fault(cut_after=10))
        # the cut also ends the downstream, so at most the first 10 bytes come back
        assert len(await round_trip(proxy, bytes(100))) <= 10
        await echo.until(lambda: echo.closed == 1)
        assert len(echo.received) == 4 + 10
        first_w.write(bytes(100))  # the open connection keeps its own (no) fault
        assert await asyncio.wait_for(first_r.readexactly(100), DEADLINE) == bytes(100)
        first_w.close()
    assert seen == [0]
    assert (proxy.stats.connections, proxy.stats.cuts, proxy.stats.bytes_up) == (2, 1, 114)


def test_random_plan_is_deterministic_for_a_seed() -> None:
    first, again, other = (random_plan(s, rate=0.5, max_offset=1000) for s in (7, 7, 8))
    assert [first(n) for n in range(200)] == [again(n) for n in range(200)]
    assert [first(n) for n in range(200)] != [other(n) for n in range(200)]
    assert first(123) == first(123)


def test_random_plan_respects_rate_offsets_and_kinds() -> None:
    faults = [random_plan(3, rate=0.3, max_offset=500)(n) for n in range(1000)]
    faulted = [f for f in faults if f != NO_FAULT]
    assert 200 <= len(faulted) <= 400
    offsets = [f.trigger() for f in faulted]
    assert all(t is not None and 0 <= t[0] < 500 for t in offsets)
    assert {t[1] for t in offsets if t is not None} == {"cut", "reset", "stall"}
    only_cuts = [random_plan(3, rate=1.0, max_offset=10, kinds=("cut",))(n) for n in range(50)]
    assert all(f.cut_after is not None and f.cut_after < 10 for f in only_cuts)
    assert all(random_plan(3, rate=0.0, max_offset=10)(n) == NO_FAULT for n in range(50))


def test_random_plan_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        random_plan(1, rate=1.5, max_offset=10)
    with pytest.raises(ConfigError):
        random_plan(1, rate=0.5, max_offset=0)
    with pytest.raises(ConfigError):
        random_plan(1, rate=0.5, max_offset=10, kinds=("cut", "melt"))


def test_fault_validates_and_the_smallest_offset_fires_first() -> None:
    with pytest.raises(ConfigError):
        Fault(cut_after=-1)
    with pytest.raises(ConfigError):
        Fault(bandwidth=0)
    assert Fault(cut_after=9, reset_after=3, stall_after=3).trigger() == (3, "reset")


# ---- through a real aiohttp server and client ------------------------------------------


async def _length(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"length": len(body)})


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/upload", _length)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def _post(proxy: FaultProxy, body: bytes, read_timeout: float = DEADLINE) -> int:
    client_timeout = aiohttp.ClientTimeout(total=DEADLINE, sock_read=read_timeout)
    async with new_session(force_close=True, timeout=client_timeout) as session:
        url = f"http://{HOST}:{proxy.port}/upload"
        async with session.post(url, data=body) as response:
            assert response.status == 200
            result: dict[str, int] = await response.json()
            return result["length"]


async def test_aiohttp_through_proxy(http_port: int) -> None:
    body = random.Random(4).randbytes(200 * 1024)
    async with FaultProxy(HOST, http_port) as proxy:
        assert await _post(proxy, body) == len(body)
        proxy.set_plan(Fault(reset_after=1000))
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            await _post(proxy, body)
        proxy.set_plan(Fault(cut_after=1000))
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            await _post(proxy, body)
        proxy.set_plan(Fault(stall_after=1000))
        with pytest.raises(TimeoutError):
            await _post(proxy, body, read_timeout=0.2)
        proxy.set_plan(NO_FAULT)
        assert await _post(proxy, body) == len(body)
    assert proxy.stats.connections == 5
    assert (proxy.stats.resets, proxy.stats.cuts, proxy.stats.stalls) == (1, 1, 1)


async def test_close_is_idempotent_and_port_needs_start() -> None:
    proxy = FaultProxy(HOST, 9)  # never connected to: no traffic leaves
    with pytest.raises(RuntimeError):
        _ = proxy.port
    async with proxy:
        assert proxy.port > 0
    await asyncio.wait_for(proxy.close(), DEADLINE)
