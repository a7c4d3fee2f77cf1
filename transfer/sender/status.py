"""What the sender shows: its own small HTTP server (the brief's "second server") and the
summary line for people (the progress display is `transfer.cli.progress`).

`GET /status` JSON counts by state, bytes and rates; `GET /metrics` Prometheus text;
`GET /healthz`. Read-only: nothing here changes the journal or the uploads.
Units: `mb_per_s` in JSON is decimal (10^6 bytes/s, as in docs/benchmarks.md); the lines a
person reads are binary throughout (MiB and MiB/s), never a mix.
"""

from __future__ import annotations

import statistics

from aiohttp import web

from transfer.common.metrics import Metrics
from transfer.core.filestate import FileState
from transfer.core.units import format_size
from transfer.sender.journal import FileJournal
from transfer.sender.pipeline import Sender

SENDER = web.AppKey("sender", Sender)
MiB = 1024 * 1024
_CONFIRMED, _FAILED = FileState.CONFIRMED.value, FileState.FAILED.value  # keys of counts()


def snapshot(sender: Sender) -> dict[str, object]:
    """Everything /status reports, also used for the summary line."""
    stats = sender.uploader.stats
    elapsed = max(sender.clock() - sender.tally.started, 1e-9)
    latencies = sorted(sender.tally.latencies)
    return {
        "files": sender.counts(),
        "generated_this_run": sender.tally.generated,
        "confirmed_this_run": sender.tally.confirmed,
        "failed_this_run": sender.tally.failed,
        "bytes_sent": stats.bytes_sent,
        "chunks": stats.chunks,
        "retries": stats.retries,
        "resumes": stats.resumes,
        "elapsed_s": round(elapsed, 3),
        "mb_per_s": round(stats.bytes_sent / elapsed / 1e6, 3),
        "latency_p50_ms": _quantile(latencies, 0.5),
        "latency_p99_ms": _quantile(latencies, 0.99),
        # `send --watch`: the folder, its backlog and the last file delivered (else null)
        "watch": sender.watching.status() if sender.watching is not None else None,
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 3)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[min(int(q * 100), 99) - 1] * 1000, 3)


def make_status_app(sender: Sender) -> web.Application:
    app = web.Application()
    app[SENDER] = sender
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _status(request: web.Request) -> web.Response:
    return web.json_response(snapshot(request.app[SENDER]))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    sender = request.app[SENDER]
    m = Metrics()
    m.describe("transfer_sender_files", "gauge", "Journaled files by state")
    for state, count in sender.counts().items():
        m.set("transfer_sender_files", count, state=state)
    stats = sender.uploader.stats
    for name, value, text in (
        ("transfer_sender_bytes_sent_total", stats.bytes_sent, "Chunk bytes sent"),
        ("transfer_sender_retries_total", stats.retries, "Retried requests"),
        ("transfer_sender_resumes_total", stats.resumes, "Uploads resumed at an offset"),
    ):
        m.describe(name, "counter", text)
        m.set(name, value)
    if isinstance(sender.journal, FileJournal):
        _journal_metrics(m, sender.journal)
    return web.Response(text=m.render(), content_type="text/plain")


def _journal_metrics(m: Metrics, journal: FileJournal) -> None:
    """Record counts of the journal and its checkpoint; no label (bounded cardinality)."""
    stats = journal.stats()
    for name, kind, value, text in (
        ("transfer_sender_journal_records", "gauge", stats.log_records, "Records in journal.log"),
        ("transfer_sender_journal_bytes", "gauge", stats.log_bytes, "Bytes of journal.log"),
        ("transfer_sender_checkpoint_entries", "gauge", stats.checkpoint_entries,
         "Confirmed files folded into journal.ckpt"),
        ("transfer_sender_checkpoint_bytes", "gauge", stats.checkpoint_bytes,
         "Bytes of journal.ckpt"),
        ("transfer_sender_compactions_total", "counter", stats.compactions,
         "Journal compactions finished"),
    ):  # fmt: skip
        m.describe(name, kind, text)
        m.set(name, value)


def mib_per_s(sender: Sender) -> float:
    """Chunk bytes sent per second since the sender started, in MiB/s."""
    elapsed = max(sender.clock() - sender.tally.started, 1e-9)
    return sender.uploader.stats.bytes_sent / elapsed / MiB


def summary_line(sender: Sender) -> str:
    """The last stdout line of `transfer send`, for people: binary units throughout."""
    snap = snapshot(sender)
    files = sender.counts()
    total = sum(files.values())
    return (
        f"{files[_CONFIRMED]}/{total} files confirmed, {files[_FAILED]} failed; "
        f"{format_size(sender.uploader.stats.bytes_sent)} sent in {snap['elapsed_s']} s "
        f"({mib_per_s(sender):.2f} MiB/s); {snap['retries']} retries, {snap['resumes']} resumes"
    )
