"""Watch mode's figures (docs/benchmarks.md, "Watch mode"), against the generator mode
on the same run:

    .venv/bin/python scripts/benchlib/watchbench.py [--files N] [--burst N] [--seed S]

- Latency: a producer writes the brief's schedule (sizes 1 KiB-1 MiB, waits 1 ms-1 s,
  seeded) as `NAME.part` and renames each into the watched folder; latency is the
  sender's `upload.confirmed` log time minus the rename time (p50, p99). The generator
  mode's figure is its own generated-to-confirmed latency over the same schedule.
- Burst: N files of 1 KiB renamed in at once; files/s from the first rename to the last
  confirmation, against `send --count N` of 1 KiB files with no waits.

Every child is started by the one process harness; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from transfer.core.events import Event
from transfer.testing.harness import Harness, ServerProcess
from transfer.testing.logs import named
from transfer.testing.polling import wait_until

KiB = 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp), new_session=True) as launch:
        work = Path(tmp)
        server = launch.serve(work / "data")
        rng = random.Random(args.seed)
        plan = [(rng.randint(KiB, KiB * KiB), rng.uniform(0.001, 1.0)) for _ in range(args.files)]
        figures = {
            "watch_schedule": watch_run(launch, server, work / "w1", plan),
            "watch_burst": watch_run(launch, server, work / "w2", [(KiB, 0.0)] * args.burst),
            "generator_schedule": generator_run(launch, server, work / "g1", args.files, args.seed),
            "generator_burst": generator_run(launch, server, work / "g2", args.burst, None),
        }
    print(json.dumps(figures, indent=2))
    return 0


def watch_run(
    launch: Harness, server: ServerProcess, work: Path, plan: list[tuple[int, float]]
) -> dict[str, float]:
    folder = work / "in"
    folder.mkdir(parents=True)
    name = f"watch-{work.name}"
    sender = launch.send(server.url, work / "spool", "--watch", str(folder), name=name)
    sender.wait_for(lambda events: named(events, Event.WATCH_RESCAN), "watching")
    renamed: dict[str, float] = {}
    for index, (size, pause) in enumerate(plan):
        time.sleep(pause)  # the producer's schedule, not a synchronization
        rel = f"f{index:05d}.bin"
        (folder / f"{rel}.part").write_bytes(os.urandom(size))
        os.replace(folder / f"{rel}.part", folder / rel)
        renamed[rel] = time.time()
    done = sender.wait_for(
        lambda events: len(named(events, Event.UPLOAD_CONFIRMED)) >= len(plan) or None,
        "every file confirmed", deadline=600.0,
    )  # fmt: skip
    del done
    events = sender.events()
    names = {e["file_id"]: e["name"] for e in named(events, Event.WATCH_TAKEN)}
    confirmed = {
        names[e["file_id"]]: _wall(e["timestamp"]) for e in named(events, Event.UPLOAD_CONFIRMED)
    }
    sender.stop()
    latencies = sorted(confirmed[rel] - renamed[rel] for rel in renamed)
    span = max(confirmed.values()) - min(renamed.values())
    return _figures(latencies, len(plan), span)


def generator_run(
    launch: Harness, server: ServerProcess, work: Path, count: int, seed: int | None
) -> dict[str, float]:
    shape = ("--min-size", "1KiB", "--max-size", "1MiB", "--min-interval", "1ms",
             "--max-interval", "1s", "--seed", str(seed)) if seed is not None else (
             "--min-size", "1KiB", "--max-size", "1KiB", "--min-interval", "0s",
             "--max-interval", "0s")  # fmt: skip
    sender = launch.send(server.url, work / "spool", "--count", str(count), *shape,
                         name=f"gen-{work.name}")  # fmt: skip
    wait_until(lambda: sender.proc.poll() is not None, "the generator run", deadline=600.0)
    summary = sender.summary()
    return {
        "files": count,
        "files_per_s": round(count / float(summary["elapsed_s"]), 1),
        "p50_ms": summary["latency_p50_ms"],
        "p99_ms": summary["latency_p99_ms"],
    }


def _figures(latencies: list[float], files: int, span: float) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "files": files,
        "files_per_s": round(files / span, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
    }


def _wall(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp).timestamp()


if __name__ == "__main__":
    sys.exit(main())
