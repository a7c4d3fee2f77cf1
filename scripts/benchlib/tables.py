"""The rows of the report, built from the samples of every round.

One function per block of the table: references (R), diagnostics (D), then the
scenarios S1-S6 with their targets, then S7-S8 (`longrun`). Row ids, wording and
targets are what docs/benchmarks.md quotes and tests/test_bench.py looks for.
"""

from __future__ import annotations

from benchlib.cluster import cluster_rows
from benchlib.context import Bench
from benchlib.longrun import longrun_rows
from benchlib.peers import peer_rows
from benchlib.plan import MB, SENDER_HASH_PASSES, SERVER_HASH_PASSES, MiB
from benchlib.rows import Figures, Row, Target, label, num


def reference_rows(f: Figures, bench: Bench) -> list[Row]:
    size = label(bench.plan.large)
    no_curl = "" if bench.curl else "skipped: no curl"
    nginx_note = bench.nginx.version if bench.nginx else f"skipped: {bench.nginx_note}"
    sink_cpu = f.median("sink", "cpu_per_gib")
    return [
        Row("R1", f"dd bs=1M {size} conv=fsync (disk)", "MB/s", f.values("dd-fsync", "mbps")),
        Row("R2", f"dd bs=1M {size}, page cache only", "MB/s", f.values("dd-cache", "mbps")),
        Row("R3", "xxh3-128 in-process, one thread", "MB/s", f.values("xxh3", "mbps")),
        Row(
            "R4",
            f"curl -T {size} -> minimal aiohttp sink, no fsync",
            "MB/s",
            f.values("sink", "mbps"),
            note=no_curl or f"sink CPU {num(sink_cpu)} s/GiB",
        ),
        Row(
            "R5",
            f"curl -T {size} -> minimal aiohttp sink, one fsync at the end",
            "MB/s",
            f.values("sink-fsync", "mbps"),
            note=no_curl,
        ),
        Row(
            "R6",
            f"curl -T {size} -> nginx WebDAV PUT",
            "MB/s",
            f.values("nginx", "mbps"),
            note=nginx_note,
        ),
        Row(
            "R7",
            f"curl -T {size} -> nginx WebDAV PUT, then sync (timed)",
            "MB/s",
            f.values("nginx-sync", "mbps"),
            note=nginx_note,
        ),
        Row(
            "R8",
            "`transfer --help` (Python + imports: start-up of every transfer process)",
            "s",
            f.values("startup", "wall"),
            note=f"CPU {num(f.median('startup', 'cpu'))} s",
        ),
    ]


def diagnostic_rows(f: Figures, bench: Bench) -> list[Row]:
    size = label(bench.plan.large)
    rows = []
    for rid, key, what, ref_key, ref_name in (
        ("D1", "curl-transfer-fsync", "fsync always", "sink-fsync", "R5"),
        ("D2", "curl-transfer", "--fsync never", "sink", "R4"),
    ):
        cpu = f.median(key, "cpu_per_gib")
        rss = f.median(key, "server_rss_mib")
        rows.append(
            Row(
                rid,
                f"curl -T {size} as one PUT -> transfer serve ({what}; no chunking, no sender)",
                "MB/s",
                f.values(key, "mbps"),
                reference=ref_name,
                ref_median=f.median(ref_key, "mbps"),
                note=f"server CPU {num(cpu)} s/GiB, peak RSS {num(rss)} MiB"
                if cpu is not None
                else "skipped: no curl",
            )
        )
    return rows


def large_rows(f: Figures, bench: Bench) -> list[Row]:
    size = label(bench.plan.large)
    dd = f.median("dd-fsync", "mbps")
    nginx, nginx_sync = f.median("nginx", "mbps"), f.median("nginx-sync", "mbps")
    rows: list[Row] = []
    for chunk in bench.plan.chunks:
        key = f"s1-{chunk}"
        rows.append(
            Row(
                "S1",
                f"send {size}, fsync always, chunk {label(chunk)}",
                "MB/s",
                f.values(key, "mbps"),
                reference="R1",
                ref_median=dd,
                target=Target(">= 0.8 x R1", "ratio", ">=", 0.8),
                note=_large_note(f, key, nginx_sync, "R7"),
            )
        )
    for chunk in bench.plan.chunks:
        key = f"s2-{chunk}"
        rows.append(
            Row(
                "S2",
                f"send {size}, --fsync never, chunk {label(chunk)}",
                "MB/s",
                f.values(key, "mbps"),
                reference="R6",
                ref_median=nginx,
                target=Target(">= 0.75 x R6", "ratio", ">=", 0.75),
                note=_large_note(f, key, None, ""),
            )
        )
    return rows


def _large_note(f: Figures, key: str, other: float | None, other_name: str) -> str:
    parts = [f"in-process {num(f.median(key, 'mbps_inproc'))} MB/s"]
    mbps = f.median(key, "mbps")
    if other and mbps:
        verdict = "faster" if mbps > other else "slower"
        parts.append(f"{mbps / other:.2f} x {other_name} ({verdict}; target: faster)")
    elif other_name:
        parts.append(f"{other_name} not measured")
    return "; ".join(parts)


def cpu_rows(f: Figures, bench: Bench) -> list[Row]:
    size = bench.plan.large
    rows = []
    for chunk in bench.plan.chunks:
        key = f"s1-{chunk}"
        sender = f.median(key, "sender_cpu_per_gib")
        rows.append(
            Row(
                "S3",
                f"server CPU per GiB received, fsync always, chunk {label(chunk)}",
                "s/GiB",
                f.values(key, "server_cpu_per_gib"),
                target=Target("<= 1.3 s/GiB", "value", "<=", 1.3),
                note=f"sender CPU {num(sender)} s/GiB",
            )
        )
    xxh3 = f.median("xxh3", "mbps")
    best = max(bench.plan.chunks, key=lambda c: f.median(f"s1-{c}", "mbps") or 0.0)
    wall_values = [size / (v * MB) for v in f.values(f"s1-{best}", "mbps")]
    if xxh3:
        one_pass = size / (xxh3 * MB)
        for name, passes in (
            ("server", SERVER_HASH_PASSES),
            ("end to end", SERVER_HASH_PASSES + SENDER_HASH_PASSES),
        ):
            rows.append(
                Row(
                    "S3",
                    f"hashing share of transfer time, {name} ({passes} xxh3 passes), "
                    f"chunk {label(best)}",
                    "%",
                    tuple(100 * passes * one_pass / w for w in wall_values),
                    target=Target("<= 5 %", "value", "<=", 5.0),
                    note=f"{passes} x {label(size)} at R3 speed = "
                    f"{passes * one_pass * 1000:.0f} ms",
                )
            )
    return rows


def small_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    interval = plan.schedule_max_interval or "1s"
    wall = f.median("s4-many", "files_per_s_wall")
    return [
        Row(
            "S4",
            f"{plan.many_count} files 1KiB-1MiB, zero interval, journal + fsync both sides",
            "files/s",
            f.values("s4-many", "files_per_s"),
            target=Target(">= 250 files/s", "value", ">=", 250.0),
            note=f"send.summary confirmed/elapsed; {num(wall)} files/s incl. process start; "
            f"latency p50 {num(f.median('s4-many', 'p50_ms'))} ms; CPU per file: sender (start-up "
            "included) "
            f"{num(f.median('s4-many', 'sender_cpu_ms_per_file'))} ms, server "
            f"{num(f.median('s4-many', 'server_cpu_ms_per_file'))} ms",
        ),
        Row(
            "S4",
            f"latency generated->confirmed p50, {plan.schedule_count} files, 1ms-{interval}",
            "ms",
            f.values("s4-schedule", "p50_ms"),
            target=Target("<= 10 ms", "value", "<=", 10.0),
        ),
        Row(
            "S4",
            f"latency generated->confirmed p99, {plan.schedule_count} files, 1ms-{interval}",
            "ms",
            f.values("s4-schedule", "p99_ms"),
            target=Target("<= 50 ms", "value", "<=", 50.0),
        ),
    ]


def memory_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    size = label(plan.large)
    worst = max(plan.chunks, key=lambda c: f.median(f"s1-{c}", "server_rss_mib") or 0.0)
    rows = [
        Row(
            "S5",
            f"server peak RSS, one {size} file (worst chunk size: {label(worst)})",
            "MiB",
            f.values(f"s1-{worst}", "server_rss_mib"),
            target=Target("<= 64 MiB", "value", "<=", 64.0),
            note=", ".join(
                f"{label(c)}: {num(f.median(f's1-{c}', 'server_rss_mib'))}" for c in plan.chunks
            ),
        ),
        Row(
            "S5",
            f"server peak RSS, {plan.concurrent_files} uploads at once "
            f"({label(plan.concurrent_size)} files, chunk {label(plan.concurrent_chunk)})",
            "MiB",
            f.values("s5-concurrent", "server_rss_mib"),
            target=Target("<= 128 MiB", "value", "<=", 128.0),
            note=f"{num(f.median('s5-concurrent', 'mbps'))} MB/s",
        ),
    ]
    for chunk in plan.chunks:
        budget = 64 + 4 * chunk / MiB
        rows.append(
            Row(
                "S5",
                f"sender peak RSS, one {size} file, chunk {label(chunk)}, concurrency 4",
                "MiB",
                f.values(f"s1-{chunk}", "sender_rss_mib"),
                target=Target(f"<= 64 MiB + 4 x chunk = {budget:.0f}", "value", "<=", budget),
            )
        )
    budget = 64 + plan.concurrent_files * plan.concurrent_chunk / MiB
    rows.append(
        Row(
            "S5",
            f"sender peak RSS, {plan.concurrent_files} uploads at once, "
            f"chunk {label(plan.concurrent_chunk)}",
            "MiB",
            f.values("s5-concurrent", "sender_rss_mib"),
            target=Target(
                f"<= 64 MiB + {plan.concurrent_files} x chunk = {budget:.0f}",
                "value",
                "<=",
                budget,
            ),
        )
    )
    return rows


def resume_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    key = "s6-resume"
    return [
        Row(
            "S6",
            f"bytes re-sent after kill -9 of the sender, {label(plan.resume_size)} file, "
            f"chunk {label(plan.resume_chunk)}",
            "chunks",
            f.values(key, "chunks_resent"),
            target=Target("<= 1 chunk (1 upload in flight)", "value", "<=", 1.0),
            note=f"killed at {num(f.median(key, 'killed_at_mib'))} MiB received; server held "
            f"{num(f.median(key, 'unacked_kept_mib'))} MiB the killed sender never saw "
            f"acknowledged; server wrote {num(f.median(key, 'server_rewritten'))} bytes twice; "
            "bytes cut off mid-body at the kill are not in chunk.sent (at most 1 chunk)",
        )
    ]


def build_rows(bench: Bench) -> list[Row]:
    f = Figures(bench.samples)
    return [
        *reference_rows(f, bench),
        *diagnostic_rows(f, bench),
        *large_rows(f, bench),
        *cpu_rows(f, bench),
        *small_rows(f, bench),
        *memory_rows(f, bench),
        *resume_rows(f, bench),
        *longrun_rows(f, bench),
        *cluster_rows(f, bench),
        *peer_rows(f, bench),
    ]
