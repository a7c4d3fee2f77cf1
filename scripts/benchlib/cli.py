"""`scripts/bench.py`'s command line: the rounds, then the report.

The flags, their defaults and the report's layout are a contract quoted by
docs/benchmarks.md; the hidden `--sink DIR [--sink-fsync]` still runs the sink in this
process, as it always did (the bench itself starts `benchlib/sink.py` instead).

Invariants: `os.sync()` runs before every timed run, so no run pays for its
predecessor's writeback; rounds are interleaved (every measurement once per round);
SIGTERM ends the run through `finally`, so every child is stopped and reaped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchlib import peers
from benchlib.cluster import KEY as CLUSTER_KEY
from benchlib.cluster import cluster_bench
from benchlib.context import Bench, make_many, make_source
from benchlib.facts import machine, notes, render
from benchlib.longrun import sender_compaction, server_soak
from benchlib.nginx import find_nginx, start_nginx
from benchlib.plan import FULL, QUICK, Sample
from benchlib.references import (
    diag_curl_transfer,
    ref_dd,
    ref_hash,
    ref_nginx,
    ref_sink,
    ref_startup,
)
from benchlib.rows import num, render_table
from benchlib.scenarios import concurrent, many_files, resume, schedule, send_large
from benchlib.sink import run_sink
from benchlib.tables import build_rows
from transfer.testing.harness import Harness
from transfer.testing.polling import NotReached

DESCRIPTION = "Benchmark `transfer` against references measured in the same run (issue 5)."
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
START_DEADLINE = 30.0  # seconds for `transfer serve` to announce itself

Measure = Callable[[Bench], Sample]


def measurements(bench: Bench) -> list[tuple[str, Measure]]:
    """Every timed thing, in the order each round runs them."""
    found: list[tuple[str, Measure]] = [
        ("dd-fsync", lambda b: ref_dd(b, fsync=True)),
        ("dd-cache", lambda b: ref_dd(b, fsync=False)),
        ("xxh3", ref_hash),
        ("startup", ref_startup),
    ]
    if bench.curl:
        found += [
            ("sink", lambda b: ref_sink(b, fsync=False)),
            ("sink-fsync", lambda b: ref_sink(b, fsync=True)),
            ("curl-transfer-fsync", lambda b: diag_curl_transfer(b, fsync=True)),
            ("curl-transfer", lambda b: diag_curl_transfer(b, fsync=False)),
        ]
    if bench.curl and bench.nginx:
        found += [
            ("nginx", lambda b: ref_nginx(b, sync=False)),
            ("nginx-sync", lambda b: ref_nginx(b, sync=True)),
        ]
    for chunk in bench.plan.chunks:
        found.append((f"s1-{chunk}", _bind_large(fsync=True, chunk=chunk)))
        found.append((f"s2-{chunk}", _bind_large(fsync=False, chunk=chunk)))
    found += [
        ("s4-many", many_files),
        ("s4-schedule", schedule),
        ("s5-concurrent", concurrent),
        ("s6-resume", resume),
        ("s7-soak", server_soak),
        ("s8-compaction", sender_compaction),
        (CLUSTER_KEY, cluster_bench),
    ]
    return found + peers.measurements()  # P1/P2: the same client to peer servers


def _bind_large(*, fsync: bool, chunk: int) -> Measure:
    return lambda b: send_large(b, fsync=fsync, chunk=chunk)


def run_rounds(bench: Bench, repeat: int, only: set[str] | None) -> None:
    todo = [(k, m) for k, m in measurements(bench) if only is None or k in only]
    for round_no in range(1, repeat + 1):
        for key, measure in todo:
            os.sync()
            started = time.perf_counter()
            sample = measure(bench)
            bench.samples.setdefault(key, []).append(sample)
            shown = ", ".join(f"{k}={num(v)}" for k, v in sample.items())
            took = time.perf_counter() - started
            print(f"[round {round_no}/{repeat}] {key}: {shown} ({took:.1f} s)", file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="tiny sizes: every scenario in seconds")
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--out", type=Path, help="write the Markdown report here")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp"), help="the disk under test")
    p.add_argument("--install-nginx", action="store_true", help="apt-get install nginx (root)")
    p.add_argument("--keep", action="store_true", help="keep the work files and logs")
    p.add_argument(
        "--transfer-src",
        type=Path,
        help="benchmark the `transfer` package under this directory (e.g. a `git archive` "
        "snapshot) instead of the installed one",
    )
    p.add_argument("--only", help="comma-separated measurement keys (for debugging)")
    p.add_argument("--sink", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sink-fsync", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def _child_env(source: Path | None) -> dict[str, str] | None:
    if source is None:
        return None
    if not (source / "transfer" / "__init__.py").exists():
        raise SystemExit(f"--transfer-src {source}: no transfer/__init__.py there")
    path = os.pathsep.join(filter(None, [str(source.resolve()), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def prepare(args: argparse.Namespace, harness: Harness, work: Path) -> Bench:
    plan = QUICK if args.quick else FULL
    source = work / "source.bin"
    digest = make_source(source, plan.large)
    many = work / "concurrent"
    make_many(many, plan.concurrent_files, plan.concurrent_size)
    curl = shutil.which("curl") or ("/usr/bin/curl" if Path("/usr/bin/curl").exists() else None)
    bench = Bench(plan, work, harness, source, digest, many, curl)
    binary, bench.nginx_note = find_nginx(args.install_nginx)
    if binary is not None:
        try:
            bench.nginx = start_nginx(harness, binary, work)
        except NotReached as exc:
            bench.nginx_note = f"nginx did not start: {exc}"
    os.sync()
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sink is not None:
        run_sink(args.sink, fsync=args.sink_fsync)
        return 0
    # SIGTERM ends the run through `finally`, so every child is stopped and reaped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="transfer-bench-", dir=args.work_dir))
    harness = Harness(work, cwd=work, env=_child_env(args.transfer_src), new_session=True,
                      start_deadline=START_DEADLINE, stop_deadline=STOP_GRACE)  # fmt: skip
    facts = machine(work, harness)
    try:
        bench = prepare(args, harness, work)
        only = set(args.only.split(",")) if args.only else None
        run_rounds(bench, args.repeat, only)
    finally:
        harness.close(gracefully=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["nginx"] = bench.nginx.version if bench.nginx else bench.nginx_note
    command = " ".join(["python", "scripts/bench.py", *(argv or sys.argv[1:])])
    table = render_table(build_rows(bench))
    report = render(facts, table, command, notes(bench))
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return 0
