"""The references, measured in the same run as the scenarios, and two diagnostics.

`dd` with and without `conv=fsync`; in-process xxh3-128; `transfer --help` (start-up);
a minimal aiohttp PUT sink (`benchlib/sink.py`, a child of its own) fed by `curl -T`,
with and without one fsync at the end; nginx WebDAV PUT fed by `curl -T`, with and
without a `sync` inside the timing. The diagnostics feed `transfer serve` the whole
file as one curl PUT: the server without our client.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import xxhash

from benchlib.context import Bench
from benchlib.measure import cpu_seconds, peak_rss, run_measured
from benchlib.plan import MB, GiB, MiB, Sample
from transfer.testing.harness import HOST, transfer_command
from transfer.testing.polling import wait_until

SINK = Path(__file__).with_name("sink.py")  # run as a script: it imports no `transfer`
START_DEADLINE = 30.0  # seconds for the sink to announce its port


def ref_dd(bench: Bench, *, fsync: bool) -> Sample:
    out = bench.path("dd.out")
    argv = ["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={bench.plan.large // MiB}"]
    done = run_measured(
        bench.harness, [*argv, *(["conv=fsync"] if fsync else [])], err=bench.path("dd.stderr")
    )
    out.unlink()
    if done.returncode:
        raise RuntimeError(f"dd exited {done.returncode}")
    return {"mbps": bench.plan.large / done.wall / MB}


def ref_hash(bench: Bench) -> Sample:
    data = os.urandom(bench.plan.hash_buffer)
    best = min(_timed(lambda: xxhash.xxh3_128(data).digest()) for _ in range(3))
    return {"mbps": len(data) / best / MB}


def ref_startup(bench: Bench) -> Sample:
    """`transfer --help`: what every `transfer send` pays before its first byte."""
    done = run_measured(bench.harness, transfer_command("--help"), err=bench.path("help.stderr"))
    return {"wall": done.wall, "cpu": done.cpu}


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def curl_put(
    bench: Bench, url: str, *headers: str, then: Callable[[], None] | None = None
) -> float:
    """Wall seconds of `curl -T source url` (plus `then`, e.g. a sync)."""
    assert bench.curl is not None
    argv = [bench.curl, "-sS", "-f", "-o", "/dev/null", "-H", "Expect:", "-T", str(bench.source)]
    for header in headers:
        argv += ["-H", header]
    started = time.perf_counter()
    done = run_measured(bench.harness, [*argv, url], err=bench.path("curl.stderr"))
    if then is not None:
        then()
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"curl exited {done.returncode} for {url}")
    return wall


def ref_sink(bench: Bench, *, fsync: bool) -> Sample:
    directory = bench.path("sink")
    directory.mkdir()
    argv = [sys.executable, str(SINK), str(directory), *(["--fsync"] * fsync)]
    port_file = bench.path("sink.port")
    sink = bench.harness.spawn(argv, err=bench.path("sink.stderr"), out=port_file)
    try:
        port = wait_until(
            lambda: _announced(port_file),
            "the sink's port",
            deadline=START_DEADLINE,
            alive=sink.alive,
        )
        before = cpu_seconds(sink.pid)
        wall = curl_put(bench, f"http://{HOST}:{port}/sink")
        cpu = cpu_seconds(sink.pid) - before
    finally:
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return {"mbps": bench.plan.large / wall / MB, "cpu_per_gib": cpu * GiB / bench.plan.large}


def _announced(port_file: Path) -> str | None:
    """The port the sink printed, once its whole line is there."""
    text = port_file.read_text()
    return text.strip() if text.endswith("\n") else None


def ref_nginx(bench: Bench, *, sync: bool) -> Sample:
    nginx = bench.nginx
    assert nginx is not None
    target = nginx.root / "upload.bin"
    wall = curl_put(bench, f"{nginx.url}/upload.bin", then=os.sync if sync else None)
    target.unlink()
    return {"mbps": bench.plan.large / wall / MB}


def diag_curl_transfer(bench: Bench, *, fsync: bool) -> Sample:
    """`transfer serve` fed the whole file as one curl PUT: the server without our client.

    The upload is created first (`POST` with the file's xxh3 `Repr-Digest`, untimed), as
    `transfer send` does, so the server keeps only the xxh3 running digest; a bare PUT
    would also compute MD5 for GCS clients.
    """
    extra = ["--max-chunk", str(bench.plan.large), "--fsync", "always" if fsync else "never"]
    with bench.server(*extra) as server:
        upload_id = f"curl-{bench.runs}"
        _create(server.url, upload_id, bench.plan.large, bench.source_digest)
        before = cpu_seconds(server.pid)
        wall = curl_put(bench, f"{server.url}/uploads/{upload_id}")
        cpu = cpu_seconds(server.pid) - before
        hwm = peak_rss(server.pid)
    return {
        "mbps": bench.plan.large / wall / MB,
        "cpu_per_gib": cpu * GiB / bench.plan.large,
        "server_rss_mib": hwm / MiB,
    }


def _create(url: str, upload_id: str, size: int, digest: str) -> None:
    body = json.dumps({"id": upload_id, "size": size}).encode()
    request = urllib.request.Request(
        f"{url}/uploads",
        data=body,
        headers={"Content-Type": "application/json", "Repr-Digest": digest},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
