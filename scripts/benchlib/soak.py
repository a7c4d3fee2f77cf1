"""Issue 15's server soak: RSS and start-up time against the number of uploads ever sent.

    .venv/bin/python scripts/benchlib/soak.py [--uploads N] [--records N] [--work DIR]

1. Soak: one `transfer serve` (through the one harness) receives `--uploads` small
   files (1 KiB, one raw `PUT` each, 16 at a time over kept-alive connections); the
   server's VmRSS is read from /proc at every tenth of the way. The figure is the growth
   from the 10k point (a tenth of the way, for fewer than 100k uploads) to the end, and
   the slope per 10k uploads. `scripts/bench.py` runs it as S7 (`benchlib.longrun`).
2. Start-up: the time from spawning `transfer serve` to its `server.started` line, on
   an empty data dir, on the soak's data dir (records made by real uploads), and on one
   with `--records` completed uploads laid out directly on disk in the current layout
   (`records/` plus `files/`), which is quicker to build than uploading them.

Invariants: only loopback; every child is started by `transfer.testing.harness` and
killed when the script ends; nothing is asserted, figures are printed (one JSON line
per measurement, then a summary) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from transfer.store.recordtree import RecordTree
from transfer.testing.harness import Harness

SIZE = 1024
CONCURRENCY = 16


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _upload(url: str, count: int, pid: int, marks: set[int]) -> dict[int, float]:
    """PUT `count` files of `SIZE` bytes; VmRSS after each count in `marks`."""
    body = os.urandom(SIZE)
    headers = {"Content-Range": f"bytes 0-{SIZE - 1}/{SIZE}"}
    rss: dict[int, float] = {0: rss_mib(pid)}
    queue = iter(range(count))
    done = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            for n in queue:
                async with session.put(f"{url}/uploads/s{n}", data=body, headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(f"upload {n}: {r.status} {await r.text()}")
                done += 1
                if done in marks:
                    rss[done] = rss_mib(pid)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return rss


def soak(harness: Harness, data_dir: Path, count: int, extra: list[str]) -> dict[str, object]:
    server = harness.serve(data_dir, extra=extra)
    base = growth_base(count)
    marks = {max(1, count * k // 10) for k in range(1, 11)} | {base}
    started = time.monotonic()
    rss = asyncio.run(_upload(server.url, count, server.pid, marks))
    elapsed = time.monotonic() - started
    server.stop()
    growth = rss[count] - rss[base]
    return {
        "uploads": count,
        "flags": " ".join(extra),
        "uploads_per_s": round(count / elapsed),
        "rss_mib": {k: round(v, 1) for k, v in sorted(rss.items())},
        "growth_from_10k_mib": round(growth, 1),
        "slope_mib_per_10k": round(growth / max(1, count - base) * 10_000, 2),
    }


def growth_base(count: int) -> int:
    """Where growth is measured from: 10k uploads, or a tenth of a shorter soak (the
    first uploads fill the caches and the allocator's arenas)."""
    return max(1, min(10_000, count // 10))


def lay_out_records(data_dir: Path, count: int) -> None:
    """`count` completed uploads as the current layout keeps them, without a server."""
    (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
    files = data_dir / "files"
    files.mkdir(exist_ok=True)
    tree = RecordTree(data_dir / "records", durable=False)
    tree.root.mkdir(exist_ok=True)
    for n in range(count):
        upload_id = f"r{n}"
        doc: dict[str, object] = {"id": upload_id, "name": None, "size": 1, "metadata": {}}
        doc.update(complete=True, digests={"xxh3-128": "00" * 16})
        tree.write(upload_id, json.dumps(doc).encode())
        (files / upload_id).write_bytes(b"x")
    os.sync()


def start_up(harness: Harness, data_dir: Path, runs: int = 3) -> float:
    """The median time from spawn to `server.started`, after an `os.sync()`."""
    times = []
    for _ in range(runs):
        os.sync()
        began = time.monotonic()
        server = harness.serve(data_dir, extra=[])
        times.append(time.monotonic() - began)
        server.stop()
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--fsync", choices=("always", "never"), default="never")
    parser.add_argument("--cache-size", default=None, help="passed to transfer serve")
    parser.add_argument("--only-soak", action="store_true", help="skip the start-up timings")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="soak-"))
    (work / "children").mkdir(parents=True, exist_ok=True)
    with Harness(work / "children") as harness:
        results: dict[str, object] = {}
        extra = ["--fsync", args.fsync]
        extra += ["--cache-size", args.cache_size] if args.cache_size else []
        results["soak"] = soak(harness, work / "soak", args.uploads, extra)
        print(json.dumps(results["soak"]), flush=True)
        if args.only_soak:
            return
        results["start_empty_s"] = round(start_up(harness, work / "empty"), 3)
        results[f"start_{args.uploads}_uploaded_s"] = round(start_up(harness, work / "soak"), 3)
        lay_out_records(work / "laid", args.records)
        results[f"start_{args.records}_laid_out_s"] = round(start_up(harness, work / "laid"), 3)
        harness.close(gracefully=True)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
