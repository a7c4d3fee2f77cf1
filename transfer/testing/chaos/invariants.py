"""The end-state invariants of a chaos run, checked after the last process has stopped.

- the journal (`transfer status --json`) holds exactly `count` files, indices
  0..count-1 of one run, every one confirmed with the server's digest equal to its own;
- every journaled file is in `DATA_DIR/files/`, byte-identical to its spool copy; every
  name there is a journaled file (nothing partial or temporary); no `.part` is left for it
  (a file's name there is its upload id: the file id, or the last segment of the
  journaled `upload_url` where the server named the upload, as tus does);
- no upload id was completed twice (`transfer report --json` over both logs);
- no chunk was ever sent from below an offset acknowledged earlier.

Each failure is one line in `report.violations`; the counters (`lost`, `corrupted`,
`duplicated`, ...) say how much of each kind. The checks read the state through the
`transfer` command itself, as a user would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from transfer.testing.chaos.config import ChaosError
from transfer.testing.chaos.offsets import check_sent
from transfer.testing.chaos.run import Run
from transfer.testing.harness import run_transfer
from transfer.testing.logs import LogLine


def check_invariants(run: Run) -> None:
    report = run.report
    report.files_expected = run.config.count
    entries = _transfer_json(["status", "--spool-dir", str(run.spool), "--json"], run.work)
    _check_journal(run, entries)
    _check_published(run, entries)
    logs = [str(run.server_log.path), str(run.sender_log.path)]
    _count_report(run, _transfer_json(["report", "--json", *logs], run.work)[0])
    for text in check_sent(run.sender_log.events()):
        run.violation(text)


def _transfer_json(args: Sequence[str], cwd: Path) -> list[LogLine]:
    done = run_transfer(*args, cwd=cwd, timeout=120)
    if done.returncode != 0:
        raise ChaosError(f"transfer {args[0]} exited {done.returncode}: {done.stderr[-500:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _count_report(run: Run, summary: LogLine) -> None:
    report = run.report
    report.bytes_resent = int(summary["bytes_resent"])
    report.retries, report.resumes = int(summary["retries"]), int(summary["resumes"])
    report.digest_mismatches = int(summary["digest_mismatches"])
    if summary["completed_twice"]:
        report.duplicated += int(summary["completed_twice"])
        run.violation(f"{summary['completed_twice']} upload ids were completed twice on the server")


def _check_journal(run: Run, entries: list[LogLine]) -> None:
    count = run.config.count
    ids = [str(e["id"]) for e in entries]
    runs = {i.rsplit("-", 1)[0] for i in ids}
    indices = sorted(int(i.rsplit("-", 1)[1]) for i in ids)
    if len(runs) > 1 or indices != list(range(count)):
        run.violation(
            f"journal holds {len(ids)} files of runs {sorted(runs)}, not indices 0..{count - 1}"
        )
    confirmed = [
        e for e in entries if e["state"] == "confirmed" and e["server_digest"] == e["digest"]
    ]
    run.report.confirmed = len(confirmed)
    for entry in entries:
        if entry not in confirmed:
            run.violation(f"{entry['id']} ended {entry['state']}: {entry['reason']}")
    if len(confirmed) != count:
        run.violation(f"{len(confirmed)} files confirmed, expected exactly {count}")


def _upload_id(entry: LogLine) -> str:
    url = entry.get("upload_url")
    return str(url).rstrip("/").rsplit("/", 1)[-1] if url else str(entry["id"])


def _check_published(run: Run, entries: list[LogLine]) -> None:
    report = run.report
    files = run.data_dir / "files"
    published = {p.name: p for p in files.iterdir()} if files.is_dir() else {}
    journaled = {_upload_id(e): e for e in entries}
    for name, found in sorted(published.items()):
        if name not in journaled or not found.is_file():
            report.duplicated += 1
            run.violation(f"files/{name} is not a journaled file (partial, temporary or extra)")
    for file_id, entry in journaled.items():
        path = published.get(file_id)
        if path is None:
            report.lost += 1
            run.violation(f"{file_id} is not published on the server")
        elif path.read_bytes() != Path(str(entry["path"])).read_bytes():
            report.corrupted += 1
            run.violation(f"files/{file_id} differs from the sender's copy")
        if (run.data_dir / "uploads" / f"{file_id}.part").exists():
            run.violation(f"uploads/{file_id}.part is left beside a published file")
    report.lost += max(run.config.count - len(journaled), 0)
