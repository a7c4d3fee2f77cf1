"""`scripts/chaos.py`'s command line and `run_chaos`, the whole scenario in one call.

The flags, their defaults and the last stdout line (the report as one JSON object) are
a contract quoted by docs/reliability.md: change them only together with that page.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from transfer.core.units import parse_duration
from transfer.testing.chaos.config import PROTOCOLS, SIDES, ChaosConfig, ChaosError, ChaosReport
from transfer.testing.chaos.invariants import check_invariants
from transfer.testing.chaos.run import Run
from transfer.testing.faultproxy import Fault, Plan, random_plan


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run the whole chaos scenario in `config.workdir`; never raises for a violation."""
    started = time.monotonic()
    config.workdir.mkdir(parents=True, exist_ok=True)
    run = Run(config)
    try:
        _drive(run)
    except ChaosError as exc:
        run.violation(str(exc))
    finally:
        run.close()
    run.report.moments = dict(sorted(run.moments.items()))
    try:
        check_invariants(run)
    except (ChaosError, OSError, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
        run.violation(f"could not check the invariants: {exc!r}")
    run.report.wall_time_s = round(time.monotonic() - started, 3)
    return run.report


def _drive(run: Run) -> None:
    run.start_server()
    if run.config.plan is not None:
        run.start_proxy(run.config.plan)
    run.start_sender()
    run.cycles()
    run.finish()


def _plan(args: argparse.Namespace) -> Plan | None:
    if args.fault_rate <= 0 and not args.latency and not args.bandwidth:
        return None
    kinds = tuple(k for k in args.fault_kinds.split(",") if k)
    base = random_plan(
        args.seed, rate=args.fault_rate, max_offset=args.fault_max_offset, kinds=kinds
    )
    extra = {"latency": args.latency, "bandwidth": args.bandwidth}

    def plan(number: int) -> Fault:
        return dataclasses.replace(base(number), **extra)

    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Kill transfer's server and sender at random moments.")
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=None, help="files (default: 2 x cycles, >= 20)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temporary dir")
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    p.add_argument("--min-size", default="1KiB")
    p.add_argument("--max-size", default="1MiB")
    p.add_argument("--min-interval", default="1ms")
    p.add_argument("--max-interval", default="1s")
    p.add_argument("--chunk-size", default="256KiB")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--idle-timeout", default="5s", help="the server's body idle timeout")
    p.add_argument("--inject-corruption", type=float, default=0.0)
    p.add_argument("--sides", default="sender,server")
    p.add_argument("--fault-rate", type=float, default=0.0, help=">0 puts the fault proxy in")
    p.add_argument("--fault-kinds", default="cut,reset")
    p.add_argument("--fault-max-offset", type=int, default=1 << 20)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--bandwidth", type=int, default=None)
    p.add_argument("--deadline", type=float, default=1800.0, help="seconds for all cycles")
    p.add_argument("--protocol", choices=PROTOCOLS, default="native", help="the sender's")
    p.add_argument(
        "--journal-compact-at",
        default=None,
        metavar="SIZE",
        help="the sender's; tiny (e.g. 1KiB) compacts its journal every few records",
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="instead of one server: N replicas on SeaweedFS + PostgreSQL behind nginx "
        "(transfer.testing.cluster_chaos; native protocol, no fault proxy)",
    )
    return p


def config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ChaosConfig:
    """The run the flags ask for; a bad combination ends in `parser.error`."""
    sides = tuple(args.sides.split(","))
    if not sides or not set(sides) <= set(SIDES):
        parser.error("--sides takes sender, server or both, comma-separated")
    if args.cycles < 0:
        parser.error("--cycles must be >= 0")
    config = ChaosConfig(
        workdir=args.workdir or Path(tempfile.mkdtemp(prefix="chaos-")),
        seed=args.seed,
        cycles=args.cycles,
        count=args.count if args.count is not None else max(20, 2 * args.cycles),
        min_size=args.min_size,
        max_size=args.max_size,
        min_interval=args.min_interval,
        max_interval=args.max_interval,
        chunk_size=args.chunk_size,
        concurrency=args.concurrency,
        idle_timeout=args.idle_timeout,
        inject_corruption=args.inject_corruption,
        plan=_plan(args),
        sides=sides,
        deadline=args.deadline,
        protocol=args.protocol,
        journal_compact_at=args.journal_compact_at,
    )
    # Whatever is left after the cycles is generated at the sender's own pace.
    finish = 120.0 + config.count * parse_duration(config.max_interval)
    return dataclasses.replace(config, finish_deadline=finish)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from(args, parser)
    if args.cluster:
        if config.plan is not None or config.protocol != "native":
            parser.error("--cluster runs the native protocol without the fault proxy")
        from transfer.testing.cluster_chaos import run_on_new_cluster  # noqa: PLC0415

        report = run_on_new_cluster(config, args.cluster)
    else:
        report = run_chaos(config)
    if args.workdir is None and not args.keep and report.ok:
        shutil.rmtree(config.workdir, ignore_errors=True)
    elif not report.ok:
        print(f"work dir kept: {config.workdir}", file=sys.stderr)
    print(json.dumps(report.to_json()), flush=True)
    return 0 if report.ok else 1
