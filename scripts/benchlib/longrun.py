"""Issue 15's figures: a server and a sender that run for months (S7, S8).

- S7 (`server_soak`): `Plan.soak_uploads` small uploads (1 KiB, one raw `PUT` each,
  `--fsync never`: memory is measured, not the disk) through one `transfer serve`; its
  RSS at a tenth of the way (10k uploads in the full run) and at the end; then its
  start-up (spawn to `server.started`, median of `Plan.startup_runs`, after
  `os.sync()`) on that data dir with every upload completed, against an empty one.
- S8 (`sender_compaction`): spools of `Plan.journal_files` and of 100 confirmed files
  (journaled and compacted in this process, as `transfer send` would leave them); the
  wall time of `transfer status` and of a `transfer send` with nothing left to do
  (start-up, journal replay, exit) on each; then, with 1000 unconfirmed files added to
  each and compacted again, the bytes a start-up replays (journal.log plus the
  checkpoint's unfolded records), which must follow the unconfirmed files, not the
  confirmed ones.

Invariants: the spools are built once per run (their directory is the marker; a
`transfer send` with nothing to do adds no file to them); nothing is asserted.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from benchlib.context import Bench
from benchlib.measure import run_measured
from benchlib.plan import KiB, Sample
from benchlib.rows import Figures, Row, Target, num
from benchlib.soak import growth_base, soak, start_up
from transfer.core.filestate import FileEvent, FileState
from transfer.sender import checkpoint
from transfer.sender.journal import LOG_NAME, FileJournal, JournalEntry
from transfer.testing.harness import transfer_command

SMALL = 100  # confirmed files in the reference spool
UNCONFIRMED = 1000  # files added to both spools for the replayed-bytes figure
AS_SMALL = Target(f"<= 1.5 x {SMALL} files", "ratio", "<=", 1.5)  # S8's usual goal
RUN = "b0b0b0b0"  # the spools' run id (ids `{RUN}-{index:05d}`, as generated)
BATCH = 1000  # appends in flight at once while building (they share one fsync)


def server_soak(bench: Bench) -> Sample:
    count = bench.plan.soak_uploads
    data = bench.path("soak-data")
    try:
        found = soak(bench.harness, data, count, ["--fsync", "never"])
        rss: dict[int, float] = found["rss_mib"]  # type: ignore[assignment]
        full = start_up(bench.harness, data, bench.plan.startup_runs)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    empty = bench.path("empty-data")
    empty_start = start_up(bench.harness, empty, bench.plan.startup_runs)
    shutil.rmtree(empty, ignore_errors=True)
    return {
        "growth_mib": rss[count] - rss[growth_base(count)],
        "rss_base_mib": rss[growth_base(count)],
        "rss_end_mib": rss[count],
        "uploads_per_s": float(found["uploads_per_s"]),  # type: ignore[arg-type]
        "start_full_s": full,
        "start_empty_s": empty_start,
    }


def sender_compaction(bench: Bench) -> Sample:
    spools = _spools(bench)
    big, small = spools / "big", spools / "small"
    with bench.server() as server:
        sample = {
            "status_big_s": _wall(bench, "status", "--spool-dir", str(big)),
            "status_small_s": _wall(bench, "status", "--spool-dir", str(small)),
            "send_big_s": _wall(bench, *_send(server.url, big, bench.plan.journal_files)),
            "send_small_s": _wall(bench, *_send(server.url, small, SMALL)),
        }
    sample["replayed_big_kib"] = _replayed(spools / "big+") / KiB
    sample["replayed_small_kib"] = _replayed(spools / "small+") / KiB
    return sample


def _send(url: str, spool: Path, count: int) -> list[str]:
    return ["send", "--server", url, "--spool-dir", str(spool), "--count", str(count),
            "--progress", "never"]  # fmt: skip


def _wall(bench: Bench, *args: str) -> float:
    done = run_measured(
        bench.harness, transfer_command(*args), err=bench.path("s8.stderr"),
        out=bench.path("s8.stdout"),
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"transfer {' '.join(args)} exited {done.returncode}")
    return done.wall


def _replayed(spool: Path) -> int:
    """Bytes a start-up replays: journal.log and the checkpoint's unfolded records."""
    loaded = checkpoint.read(spool)
    live = sum(len(payload) + 1 for payload in loaded.live) if loaded else 0
    return (spool / LOG_NAME).stat().st_size + live


def _spools(bench: Bench) -> Path:
    """big, small (every file confirmed) and big+, small+ (1000 unconfirmed more)."""
    spools = bench.work / "s8-spools"
    if not spools.is_dir():
        building = bench.work / "s8-spools.building"
        shutil.rmtree(building, ignore_errors=True)
        for name, count in (("big", bench.plan.journal_files), ("small", SMALL)):
            asyncio.run(_build(building / name, count, 0))
            shutil.copytree(building / name, building / f"{name}+")
            asyncio.run(_build(building / f"{name}+", count, UNCONFIRMED))
        building.rename(spools)
    return spools


async def _build(spool: Path, first: int, count: int) -> None:
    """Journal files `first`.. as a finished `transfer send` leaves them (confirmed when
    `count` is 0: then `first` files; else `count` more, only generated), then compact."""
    new = range(first) if count == 0 else range(first, first + count)
    with FileJournal.open(spool) as journal:
        if "run" not in journal.meta():
            await journal.set_meta("run", RUN)
            await journal.set_meta("seed", "1")
        for start in range(new.start, new.stop, BATCH):
            batch = new[start - new.start : start - new.start + BATCH]
            await asyncio.gather(*(journal.record(_entry(spool, i, count == 0)) for i in batch))
        await journal.compact()


def _entry(spool: Path, index: int, confirmed: bool) -> JournalEntry:
    entry = JournalEntry(
        file_id=f"{RUN}-{index:05d}", name=f"{index:05d}.bin",
        path=str(spool / "files" / f"{index:05d}.bin"), size=1024, dtype="int16",
        digest=f"{index:032x}", state=FileState.GENERATED,
    )  # fmt: skip
    return entry.after(FileEvent.DIGEST_MATCHED, server_digest=entry.digest) if confirmed else entry


def longrun_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    n, base = plan.soak_uploads, growth_base(plan.soak_uploads)
    files = plan.journal_files
    soaked = "s7-soak"
    return [
        Row(
            "S7",
            f"server RSS growth from {base} to {n} uploads of 1KiB (--fsync never)",
            "MiB",
            f.values(soaked, "growth_mib"),
            target=Target("<= 5 MiB", "value", "<=", 5.0),
            note=f"RSS {num(f.median(soaked, 'rss_base_mib'))} -> "
            f"{num(f.median(soaked, 'rss_end_mib'))} MiB; "
            f"{num(f.median(soaked, 'uploads_per_s'))} uploads/s",
        ),
        Row(
            "S7",
            f"server start-up with {n} completed uploads (spawn to server.started)",
            "s",
            f.values(soaked, "start_full_s"),
            reference="empty data dir",
            ref_median=f.median(soaked, "start_empty_s"),
            target=Target("<= 1.5 x empty", "ratio", "<=", 1.5),
            note=f"empty: {num(f.median(soaked, 'start_empty_s'))} s; goal also <= 1 s",
        ),
        _s8_row(
            f, f"`transfer status` with {files} confirmed files (compacted)", "s", "status_{}_s"
        ),
        _s8_row(
            f,
            f"`transfer send` start-up to exit, nothing to do, {files} confirmed files",
            "s",
            "send_{}_s",
        ),
        _s8_row(
            f,
            f"journal replayed at start after compaction, {files} confirmed + "
            f"{UNCONFIRMED} unconfirmed",
            "KiB",
            "replayed_{}_kib",
            reference=f"{SMALL} confirmed + {UNCONFIRMED}",
            target=Target("<= 1.1 x (follows the unconfirmed)", "ratio", "<=", 1.1),
            note="journal.log + the checkpoint's unfolded records",
        ),
    ]


def _s8_row(
    f: Figures,
    what: str,
    unit: str,
    metric: str,
    *,
    reference: str = f"{SMALL} files",
    target: Target = AS_SMALL,
    note: str = "",
) -> Row:
    """An S8 row: the big spool's figure against the small one's (`metric` has `{}` for
    `big` or `small`)."""
    return Row(
        "S8",
        what,
        unit,
        f.values("s8-compaction", metric.format("big")),
        reference=reference,
        ref_median=f.median("s8-compaction", metric.format("small")),
        target=target,
        note=note,
    )
