"""The scenarios of issue 5, each one measurement of one round.

S1/S2/S3/S5: one large file through `transfer send PATH` (fsync always or never, by
chunk size); S4: many small files with no interval, and the brief's schedule; S5: many
uploads at once; S6: bytes re-sent after a `kill -9` of the sender.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchlib.context import Bench, make_source, summary
from benchlib.measure import RUN_DEADLINE, Finished, cpu_seconds, peak_rss
from benchlib.plan import MB, GiB, MiB, Plan, Sample
from transfer.core.events import Event
from transfer.testing.children import Child
from transfer.testing.harness import run_transfer, transfer_command
from transfer.testing.logs import LogFile
from transfer.testing.polling import poll

KILL_DELAY = 0.015  # S6: seconds from the threshold ack to the SIGKILL
KILL_DEADLINE = 300.0  # S6: longest wait for the server to hold ~30% of the file


def send_large(bench: Bench, *, fsync: bool, chunk: int) -> Sample:
    """S1/S2/S3/S5: one large file through `transfer send PATH`."""
    size = bench.plan.large
    with bench.server("--fsync", "always" if fsync else "never") as server:
        before = cpu_seconds(server.pid)
        spool = bench.path("spool")
        done, log = bench.send(
            server, "--spool-dir", str(spool), "--chunk-size", str(chunk), str(bench.source)
        )
        server_cpu = cpu_seconds(server.pid) - before
        server_hwm = peak_rss(server.pid)
    shutil.rmtree(spool)
    return {
        "mbps": size / done.wall / MB,
        "mbps_inproc": float(summary(log)["mb_per_s"]),
        "server_cpu_per_gib": server_cpu * GiB / size,
        "sender_cpu_per_gib": done.cpu * GiB / size,
        "server_rss_mib": server_hwm / MiB,
        "sender_rss_mib": done.maxrss / MiB,
    }


def many_files(bench: Bench) -> Sample:
    """S4: `many_count` generated files with no interval, journal and fsync on. CPU per
    file of both processes too: on a shared machine it moves far less than the rate."""
    count = bench.plan.many_count
    with bench.server() as server:
        before = cpu_seconds(server.pid)
        spool = bench.path("spool")
        done, log = bench.send(
            server,
            *("--spool-dir", str(spool), "--count", str(count)),
            *("--min-interval", "0", "--max-interval", "0", "--seed", "5"),
        )
        server_cpu = cpu_seconds(server.pid) - before
    shutil.rmtree(spool)
    doc = summary(log)
    return {
        "files_per_s": doc["confirmed_this_run"] / doc["elapsed_s"],
        "files_per_s_wall": doc["confirmed_this_run"] / done.wall,
        "p50_ms": float(doc["latency_p50_ms"]),
        "p99_ms": float(doc["latency_p99_ms"]),
        "sender_cpu_ms_per_file": 1000 * done.cpu / count,
        "server_cpu_ms_per_file": 1000 * server_cpu / count,
    }


def schedule(bench: Bench) -> Sample:
    """S4: the brief's schedule (intervals 1 ms to 1 s); latency generated -> confirmed."""
    interval = bench.plan.schedule_max_interval
    _, log = _generate(
        bench,
        *("--count", str(bench.plan.schedule_count)),
        *(("--max-interval", interval) if interval else ()),
    )
    doc = summary(log)
    return {"p50_ms": float(doc["latency_p50_ms"]), "p99_ms": float(doc["latency_p99_ms"])}


def _generate(bench: Bench, *args: str) -> tuple[Finished, Path]:
    """`transfer send --spool-dir SPOOL ARGS...` (generated files) to a fresh server; the
    spool is removed after."""
    with bench.server() as server:
        spool = bench.path("spool")
        done, log = bench.send(server, "--spool-dir", str(spool), *args)
    shutil.rmtree(spool)
    return done, log


def concurrent(bench: Bench) -> Sample:
    """S5: `concurrent_files` uploads at once; peak RSS of both sides."""
    plan = bench.plan
    with bench.server() as server:
        spool = bench.path("spool")
        done, _ = bench.send(
            server,
            *("--spool-dir", str(spool), "--concurrency", str(plan.concurrent_files)),
            *("--chunk-size", str(plan.concurrent_chunk), str(bench.many_dir)),
        )
        server_hwm = peak_rss(server.pid)
    shutil.rmtree(spool)
    total = plan.concurrent_files * plan.concurrent_size
    return {
        "server_rss_mib": server_hwm / MiB,
        "sender_rss_mib": done.maxrss / MiB,
        "mbps": total / done.wall / MB,
    }


def resume(bench: Bench) -> Sample:
    """S6: SIGKILL the sender once the server holds ~30% of the file, then rerun it."""
    plan = bench.plan
    source = bench.path("resume.bin")
    make_source(source, plan.resume_size)
    os.sync()
    with bench.server() as server:
        spool = bench.path("spool")
        args = ["--spool-dir", str(spool), "--chunk-size", str(plan.resume_chunk), str(source)]
        first = bench.path("sender.log")
        argv = transfer_command("send", "--server", server.url, "--log-file", str(first), *args)
        sender = bench.harness.spawn([*argv, "--progress", "never"], err=bench.path("stderr"))
        killed = _kill_after(sender, server.log, plan.resume_size * 3 // 10)
        _, second = bench.send(server, *args)
        written = _received(server.log)
    report = _report(bench, first, second)
    shutil.rmtree(spool)
    source.unlink()
    return _resume_figures(plan, report, (first, second), killed=killed, written=written)


def _kill_after(sender: Child, log: LogFile, threshold: int) -> float:
    """SIGKILL `sender` once the server logged `threshold` bytes; returns the bytes then."""
    # The sender may finish first (or the wait time out): then there is no delay.
    if poll(lambda: _received(log) >= threshold, deadline=KILL_DEADLINE, alive=sender.alive):
        # A measured offset into the next chunk's body, not right after an ack; nothing
        # is synchronized by it.
        time.sleep(KILL_DELAY)
    at = _received(log)
    sender.kill()
    return float(at)


def _received(log: LogFile) -> int:
    """Body bytes the server has logged receiving, over all its requests."""
    return sum(int(e.get("bytes", 0)) for e in log.named(Event.REQUEST))


def _report(bench: Bench, *logs: Path) -> dict[str, Any]:
    result = run_transfer(
        "report", "--json", *map(str, logs), cwd=bench.work, env=bench.harness.env,
        timeout=RUN_DEADLINE,
    )  # fmt: skip
    result.check_returncode()
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _resume_figures(
    plan: Plan, report: dict[str, Any], logs: tuple[Path, Path], *, killed: float, written: int
) -> Sample:
    first, second = logs
    acked = sum(int(e["bytes"]) for e in LogFile(first).named(Event.CHUNK_SENT))
    resumed = LogFile(second).named(Event.UPLOAD_RESUMED)
    offset = int(resumed[0]["offset"]) if resumed else 0
    return {
        "bytes_resent": float(report["bytes_resent"]),
        "chunks_resent": report["bytes_resent"] / plan.resume_chunk,
        "killed_at_mib": killed / MiB,
        "unacked_kept_mib": (offset - acked) / MiB,  # the server had it; run 1 never heard
        "server_rewritten": float(written - plan.resume_size),
        "confirmed": float(report["confirmed"]),
    }
