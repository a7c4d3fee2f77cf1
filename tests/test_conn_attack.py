"""Issue #16 as an attacker on loopback would play it, against a real `transfer serve`.

600 connections each send `PUT /uploads/x HTTP/1.1\\r\\nHost: x\\r\\n` and then nothing.
A normal 100 KB upload must still complete: at once from another address, and from the
attacker's own address once the header timeout has passed (1 s here, instead of 10 s, so
the test is short; the real figures are in docs/security.md). The deadlines below only
guard against a hang; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from conftest import StartServer

from transfer.core.events import Event
from transfer.testing.logs import LogLine
from transfer.testing.polling import wait_until_async

HOST = "127.0.0.1"
GUARD = 30.0
ATTACK = b"PUT /uploads/x HTTP/1.1\r\nHost: x\r\n"
Writers = list[asyncio.StreamWriter]

pytestmark = pytest.mark.slow


async def _slow_headers(port: int, sources: Sequence[str], count: int) -> Writers:
    """`count` connections spread over `sources`, each stopped inside its headers."""

    async def one(i: int) -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.open_connection(
                HOST, port, local_addr=(sources[i % len(sources)], 0)
            )
            writer.write(ATTACK)
            await writer.drain()
        except OSError:  # refused and closed under us: that is the server's right
            return None
        return writer

    writers: Writers = []
    for start in range(0, count, 100):  # batches: the listen backlog is 128
        found = await asyncio.gather(*(one(i) for i in range(start, min(start + 100, count))))
        writers += [w for w in found if w is not None]
    return writers


@contextlib.asynccontextmanager
async def _attack(port: int, sources: Sequence[str], count: int = 600) -> AsyncIterator[None]:
    writers = await _slow_headers(port, sources, count)
    try:
        yield
    finally:
        for writer in writers:
            writer.close()


async def _upload(port: int, source: str, upload_id: str, data: bytes, *head: str) -> int:
    """One PUT of the whole of `data` from `source`: the answer's status."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    lines = [
        f"PUT /uploads/{upload_id} HTTP/1.1", "Host: x", *head,
        f"Content-Range: bytes 0-{len(data) - 1}/{len(data)}",
        f"Content-Length: {len(data)}", "Connection: close",
    ]  # fmt: skip
    try:
        async with asyncio.timeout(GUARD):
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            await writer.drain()
            status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


def _serve(serve_process: StartServer, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    data_dir = tmp_path / "data"
    server = serve_process(data_dir, extra=["--header-timeout", "1s", *extra])
    return server.port, data_dir


DATA = bytes(range(256)) * 400  # 100 KiB


async def test_600_slow_headers_from_one_address(
    serve_process: StartServer, tmp_path: Path
) -> None:
    port, data_dir = _serve(serve_process, tmp_path)
    async with _attack(port, ["127.0.0.1"]):
        assert await _upload(port, "127.0.0.2", "other", DATA) == 200
        # The attacker's own address: refused (429) while its 64 are open, then served.
        statuses = [await _upload(port, "127.0.0.1", "own", DATA)]

        async def served() -> bool:
            statuses.append(await _upload(port, "127.0.0.1", "own", DATA))
            return statuses[-1] == 200

        await wait_until_async(served, "the header timeout freeing 127.0.0.1", deadline=GUARD)
    assert statuses[0] == 429
    assert set(statuses[:-1]) == {429}
    assert (data_dir / "files" / "other").read_bytes() == DATA
    assert (data_dir / "files" / "own").read_bytes() == DATA


async def test_600_slow_headers_from_20_addresses(
    serve_process: StartServer, tmp_path: Path
) -> None:
    port, data_dir = _serve(serve_process, tmp_path, "--max-connections", "512")
    sources = [f"127.0.0.{10 + i}" for i in range(20)]
    async with _attack(port, sources):
        assert await _upload(port, "127.0.0.2", "a", DATA) == 200
        assert await _upload(port, sources[0], "b", DATA) == 200
    assert (data_dir / "files" / "a").read_bytes() == DATA


async def test_forwarded_for_is_logged_as_the_client_only_from_a_trusted_proxy(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = serve_process(data_dir, extra=["--trusted-proxy", "127.0.0.3/32"])
    forged = "X-Forwarded-For: 198.51.100.7"
    assert await _upload(server.port, "127.0.0.1", "direct", DATA, forged) == 200
    assert await _upload(server.port, "127.0.0.3", "proxied", DATA, forged) == 200

    def clients(lines: list[LogLine]) -> dict[str, str] | None:
        requests = [line for line in lines if line["event"] == Event.REQUEST]
        found = {str(line.get("upload_id")): str(line.get("client")) for line in requests}
        return found if len(found) == 2 else None

    found = await asyncio.to_thread(server.wait_for, clients, "two request lines")
    assert found == {"direct": "127.0.0.1", "proxied": "198.51.100.7"}
