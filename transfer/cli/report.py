"""`transfer report LOGFILE...`: what happened in a run, from the JSON logs alone.

Reads the structured logs of any number of sender and server runs (in any order; lines
that are not JSON objects are counted and skipped) and reconstructs: files generated,
confirmed and failed, uploads the server completed (and any it completed twice), retries,
resumes, digest mismatches, how many times each side started (so kills survived), and
bytes sent more than once.

Pure: `summarise` takes parsed lines; only `read_lines` touches files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transfer.core.events import Event


@dataclass(slots=True)
class Report:
    sender_runs: int = 0
    sender_clean_exits: int = 0
    server_runs: int = 0
    server_clean_exits: int = 0
    generated: int = 0
    confirmed: int = 0
    failed: int = 0
    completed_on_server: int = 0
    completed_twice: int = 0
    confirmed_twice: int = 0
    retries: int = 0
    resumes: int = 0
    digest_mismatches: int = 0
    bytes_sent: int = 0
    bytes_confirmed: int = 0
    skipped_lines: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def kills_survived(self) -> dict[str, int]:
        """Runs that ended without their clean-exit line (killed or crashed)."""
        return {
            "sender": max(self.sender_runs - self.sender_clean_exits, 0),
            "server": max(self.server_runs - self.server_clean_exits, 0),
        }

    @property
    def bytes_resent(self) -> int:
        return max(self.bytes_sent - self.bytes_confirmed, 0)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["kills_survived"] = self.kills_survived
        doc["bytes_resent"] = self.bytes_resent
        return doc


def read_lines(paths: Iterable[Path]) -> Iterator[dict[str, Any] | None]:
    """Each line of each file as a JSON object, or None when it is not one."""
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as stream:
            for line in stream:
                yield _parse(line)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


_COUNTERS = {
    Event.SENDER_STARTED: "sender_runs",
    Event.SEND_SUMMARY: "sender_clean_exits",
    Event.SERVER_STARTED: "server_runs",
    Event.SERVER_STOPPED: "server_clean_exits",
    Event.FILE_GENERATED: "generated",
    Event.UPLOAD_RETRY: "retries",
    Event.UPLOAD_RESUMED: "resumes",
    Event.DIGEST_MISMATCH: "digest_mismatches",
}


def summarise(lines: Iterable[dict[str, Any] | None]) -> Report:
    report = Report()
    confirmed: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    for doc in lines:
        if doc is None:
            report.skipped_lines += 1
            continue
        event = doc.get("event")
        if event in _COUNTERS:
            name = _COUNTERS[event]
            setattr(report, name, getattr(report, name) + 1)
        elif event == Event.CHUNK_SENT:
            report.bytes_sent += int(doc.get("bytes", 0))
        elif event == Event.UPLOAD_CONFIRMED:
            confirmed[str(doc.get("file_id"))] += 1
            sizes[str(doc.get("file_id"))] = int(doc.get("size", 0))
        elif event == Event.UPLOAD_COMPLETED:
            completed[str(doc.get("upload_id"))] += 1
        elif event == Event.UPLOAD_FAILED:
            report.failures[str(doc.get("file_id"))] = str(doc.get("reason"))
    report.confirmed = len(confirmed)
    report.confirmed_twice = sum(1 for n in confirmed.values() if n > 1)
    report.failed = len(set(report.failures) - set(confirmed))
    report.completed_on_server = len(completed)
    report.completed_twice = sum(1 for n in completed.values() if n > 1)
    report.bytes_confirmed = sum(sizes.values())
    return report


def render(report: Report) -> str:
    """A few lines for people."""
    kills = report.kills_survived
    return "\n".join(
        [
            f"files: {report.generated} generated, {report.confirmed} confirmed, "
            f"{report.failed} failed; server completed {report.completed_on_server}",
            f"runs: sender {report.sender_runs} ({kills['sender']} killed), "
            f"server {report.server_runs} ({kills['server']} killed)",
            f"retries {report.retries}, resumes {report.resumes}, "
            f"digest mismatches {report.digest_mismatches}",
            f"bytes: {report.bytes_sent} sent, {report.bytes_resent} sent more than once",
            f"duplicates: {report.completed_twice} completed twice, "
            f"{report.confirmed_twice} confirmed twice",
        ]
    )
