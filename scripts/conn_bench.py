"""Measure the connection layer of `transfer serve` (issue #16); figures for docs/security.md.

    .venv/bin/python scripts/conn_bench.py [--idle 2000]

1. Memory of an idle connection: the server's RSS (VmRSS) and the kernel's TCP socket
   memory (/proc/net/sockstat `mem`, pages) before and after `--idle` connections that
   completed one request and stay kept alive, then as many that stopped inside their
   headers; per connection = difference / count.
2. The attack of the issue: 600 connections stopped inside their headers, from one
   address and then spread over 20; the wall time of a normal 100 KiB upload from
   another address and, for the one-address case, from the attacker's own address
   (first try and once accepted), at the default flags (`--header-timeout 10s`).

Runs the real `transfer serve` through the test harness; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from transfer.testing.harness import Harness

HOST = "127.0.0.1"
ATTACK = b"PUT /uploads/x HTTP/1.1\r\nHost: x\r\n"
DATA = bytes(range(256)) * 400  # 100 KiB
Writers = list[asyncio.StreamWriter]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tcp_mem_kib() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * resource.getpagesize() // 1024
    raise RuntimeError("no TCP line")


async def open_many(port: int, count: int, first: bytes, sources: list[str]) -> Writers:
    async def one(i: int) -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(
            HOST, port, local_addr=(sources[i % len(sources)], 0)
        )
        writer.write(first)
        await writer.drain()
        if first.endswith(b"\r\n\r\n"):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(b'{"status": "ok"}'))
        return writer

    writers: Writers = []
    for start in range(0, count, 100):
        writers += await asyncio.gather(*(one(i) for i in range(start, min(start + 100, count))))
    return writers


async def upload(port: int, source: str, upload_id: str) -> int:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    head = (
        f"PUT /uploads/{upload_id} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Range: bytes 0-{len(DATA) - 1}/{len(DATA)}\r\n"
        f"Content-Length: {len(DATA)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + DATA)
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def until_accepted(port: int, source: str, upload_id: str) -> tuple[float, int]:
    """Seconds until an upload from `source` is accepted, retrying every 0.1 s (as a
    client honouring `Retry-After` would, only faster); and the attempts it took."""
    started, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        if await upload(port, source, upload_id) == 200:
            return time.monotonic() - started, attempts
        await asyncio.sleep(0.1)  # a client's pause between retries, not synchronization


async def memory(port: int, pid: int, count: int, first: bytes, name: str) -> None:
    """RSS growth of a fresh server holding `count` connections that sent `first`."""
    sources = [f"127.0.1.{i}" for i in range(1, 64)]
    rss, kernel = rss_kib(pid), tcp_mem_kib()
    writers = await open_many(port, count, first, sources)
    await asyncio.sleep(0.5)  # let the server accept and read the last ones before we look
    d_rss, d_kernel = rss_kib(pid) - rss, tcp_mem_kib() - kernel
    print(
        f"{name}: {count} connections: server RSS +{d_rss} KiB ({d_rss / count:.1f} KiB "
        f"each); kernel TCP buffers (sockstat mem) +{d_kernel} KiB"
    )
    for writer in writers:
        writer.close()


async def attack(port: int, sources: list[str], label: str) -> None:
    writers = await open_many(port, 600, ATTACK, sources)
    started = time.monotonic()
    status = await upload(port, "127.0.0.2", f"other-{len(sources)}")
    print(f"{label}: upload from 127.0.0.2: {status} in {time.monotonic() - started:.3f} s")
    if len(sources) == 1:
        took, attempts = await until_accepted(port, sources[0], "own")
        print(f"{label}: upload from {sources[0]}: 200 after {took:.2f} s ({attempts} tries)")
    for writer in writers:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=2000, help="connections for memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as harness:
        roomy = ["--max-connections-per-ip", "100000", "--max-connections", "15000"]
        kinds = (("idle keep-alive", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
                 ("inside headers", ATTACK))  # fmt: skip
        for i, (name, first) in enumerate(kinds):
            fresh = harness.serve(Path(tmp) / f"m{i}", extra=roomy)
            asyncio.run(memory(fresh.port, fresh.pid, args.idle, first, name))
            fresh.kill()
        server = harness.serve(Path(tmp) / "b")
        asyncio.run(attack(server.port, ["127.0.0.1"], "600 from one address"))
        asyncio.run(attack(server.port, [f"127.0.0.{10 + i}" for i in range(20)], "600 from 20"))


if __name__ == "__main__":
    main()
