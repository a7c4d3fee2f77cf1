"""The server's connection cap: past it, a new connection gets a 503 problem and is
closed; closing a connection frees its place."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from transfer.server.app import make_app
from transfer.server.connlimit import LimitedTCPSite
from transfer.store.filestore import FileStore
from transfer.testing.polling import wait_until_async

DEADLINE = 5.0


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[int]:
    store = FileStore(tmp_path)
    store.open()
    runner = web.AppRunner(make_app(store))
    await runner.setup()
    site = LimitedTCPSite(runner, "127.0.0.1", 0, max_connections=2)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _get(port: int, path: str = "/healthz") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), DEADLINE)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _until_status(port: int, wanted: int) -> None:
    """Poll /healthz until it answers `wanted` (the server sees new connections a moment
    after the client does); bounded by DEADLINE."""

    async def answers() -> bool:
        return (await _get(port))[0] == wanted

    await wait_until_async(
        answers, f"/healthz answering {wanted}", deadline=DEADLINE, interval=0.01
    )


async def test_past_the_cap_a_connection_gets_503_and_closing_one_frees_a_place(
    capped: int,
) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", capped) for _ in range(2)]
    await _until_status(capped, 503)

    status, body = await _get(capped)
    assert status == 503
    assert json.loads(body)["code"] == "too_many_connections"

    _, writer = idle.pop()
    writer.close()
    await _until_status(capped, 200)
    for _, writer in idle:
        writer.close()


async def test_under_the_cap_requests_are_served(capped: int) -> None:
    assert await _get(capped) == (200, b'{"status": "ok"}')
    assert (await _get(capped, "/metrics"))[0] == 200
