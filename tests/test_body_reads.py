"""How `server/body.py` reads: wide socket reads for a large body, one idle timer per
body, and the allocator tuned so megabyte pieces reuse the heap.

The rules themselves (408 `body_stalled`, `body_too_slow`, `body_preempted`, 400
`body_incomplete`) are tested through the server in test_server.py, test_security.py and
test_server_logs.py; this file tests the machinery issue 13 added under them, on a real
aiohttp server, real `StreamReader`s and real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import xxhash
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from pytest_aiohttp import AiohttpClient
from support import missing_piece

from transfer.server.body import READ_SIZE, WIDE_FROM, _IdleWatch, _Stalled, request_body
from transfer.server.state import ServerConfig
from transfer.testing.polling import wait_until_async

DEADLINE = 10.0


async def _sink(request: web.Request) -> web.Response:
    """Reads the body through `request_body`; answers what the socket's read size was."""
    transport = request.transport
    before = getattr(transport, "max_size", None)
    during: set[int | None] = set()
    digest = xxhash.xxh3_128()
    async with contextlib.aclosing(request_body(request, ServerConfig())) as body:
        async for piece in body:
            digest.update(piece)
            during.add(getattr(transport, "max_size", None))
    assert transport is not None
    return web.json_response(
        {
            "before": before,
            "during": sorted(during, key=str),
            "after": getattr(transport, "max_size", None),
            "client": list(transport.get_extra_info("peername")),
            "digest": digest.hexdigest(),
        }
    )


async def _put(client: Any, body: bytes) -> dict[str, Any]:
    async with client.put("/sink", data=body) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
    assert answer["digest"] == xxhash.xxh3_128(body).hexdigest()
    return answer


async def test_large_body_is_read_wide_and_the_connection_reads_as_before_after(
    aiohttp_client: AiohttpClient,
) -> None:
    app = web.Application(client_max_size=64 * WIDE_FROM)
    app.router.add_put("/sink", _sink)
    client = await aiohttp_client(app)
    default = (await _put(client, b"small"))["before"]
    assert isinstance(default, int) and default < READ_SIZE  # asyncio's own 256 KiB

    large = await _put(client, os.urandom(2 * WIDE_FROM + 12345))
    assert large["before"] == default
    assert large["during"] == [READ_SIZE]
    assert large["after"] == default

    small = await _put(client, os.urandom(WIDE_FROM - 1))  # below the threshold
    assert small["during"] == [default]
    assert small["client"] == large["client"]  # the same kept-alive connection


@pytest.fixture
async def stream() -> AsyncIterator[StreamReader]:
    """A `StreamReader` on a connected protocol (one end of a socket pair)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, protocol = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
    try:
        yield StreamReader(protocol, 2**16, loop=loop)
    finally:
        transport.close()
        theirs.close()


async def test_a_read_pending_for_idle_seconds_fails_with_stalled(stream: StreamReader) -> None:
    watch = _IdleWatch(stream, 0.05)
    watch.reading()
    with pytest.raises(_Stalled):
        await asyncio.wait_for(stream.readany(), DEADLINE)
    assert not watch.armed


async def test_the_timer_lapses_between_reads_and_a_read_rearms_it(
    stream: StreamReader,
) -> None:
    watch = _IdleWatch(stream, 0.05)
    watch.reading()
    stream.feed_data(b"first")
    assert await stream.readany() == b"first"
    watch.idle()
    # Between reads the timer fires, finds no pending read and lapses: nothing fails.
    await wait_until_async(lambda: not watch.armed, "the timer to lapse", deadline=DEADLINE)
    assert stream.exception() is None

    watch.reading()
    assert watch.armed
    stream.feed_data(b"second")
    assert await stream.readany() == b"second"
    watch.idle()
    watch.close()
    assert not watch.armed
    assert stream.exception() is None


async def test_a_later_read_gets_its_whole_idle(
    stream: StreamReader,
) -> None:
    """The timer armed by an earlier read re-arms for the later read's own deadline."""
    loop = asyncio.get_running_loop()
    watch = _IdleWatch(stream, 0.2)
    watch.reading()
    stream.feed_data(b"x")
    assert await stream.readany() == b"x"
    watch.idle()
    began = loop.time()
    watch.reading()  # the timer is still the first read's
    with pytest.raises(_Stalled):
        await asyncio.wait_for(stream.readany(), DEADLINE)
    assert loop.time() - began >= 0.2  # failed no earlier than its own deadline


_PIECES = """
import asyncio, resource, sys
from transfer.server.body import tune_allocator
if sys.argv[1] == "tuned":
    asyncio.run(tune_allocator(None))
def piece(n):  # a 1 MiB read, the parser's copy of it, the next read
    read = b"r" * (1 << 20)
    body = read[:n]
    del read
    after = b"a" * (1 << 20)
    del body, after
for i in range(20):
    piece(700000 + i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(500):
    piece(600000 + (i * 7919) % 400000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PIECES, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_tuned_allocator_reuses_the_heap_for_megabyte_pieces() -> None:
    """Megabyte pieces freed and allocated again stop faulting fresh pages in."""
    if platform.libc_ver()[0] != "glibc":
        missing_piece("mallopt is glibc's")
    untuned, tuned = _faults("default"), _faults("tuned")
    assert tuned * 4 < untuned
