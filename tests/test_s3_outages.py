"""Outages under `transfer serve --store s3://`: PostgreSQL, then SeaweedFS, stopped and
started again while `transfer send` uploads through the server.

Each test runs on services of its own (`own_services` in tests/services.py: the
session's are shared and never restarted). Meanwhile the server answers 503
`storage_unavailable` with `Retry-After` (a probe PUT sees one), never 500; the sender
retries and finishes once the service is back; `transfer verify` passes, and every
confirmed file is served back byte-identical: nothing acknowledged was lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from services import OwnServices, fresh_place
from support import read_journal

from transfer.core.events import Event
from transfer.sender.journal import FileState
from transfer.testing.harness import Harness, ServerProcess, run_transfer
from transfer.testing.polling import wait_until

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]
OUTAGE_SEEN_DEADLINE = 60.0
SEND = (
    "--count", "24", "--seed", "11", "--min-size", "64KiB", "--max-size", "2MiB",
    "--chunk-size", "256KiB", "--concurrency", "3",
    "--min-interval", "100ms", "--max-interval", "400ms", "--retry-timeout", "5m",
)  # fmt: skip


def probe(url: str) -> tuple[int, str | None, str]:
    """A small chunk creating a fresh upload (so it needs both services): (status,
    Retry-After, problem code)."""
    data = secrets.token_bytes(10)
    request = urllib.request.Request(
        f"{url}/uploads/probe-{secrets.token_hex(4)}",
        data=data,
        method="PUT",
        headers={"Content-Range": "bytes 0-9/20"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, None, ""
    except urllib.error.HTTPError as exc:
        code = json.loads(exc.read() or b"{}").get("code", "")
        return exc.code, exc.headers.get("Retry-After"), str(code)


def outage_seen(url: str) -> tuple[int, str | None, str] | None:
    found = probe(url)
    return found if found[0] == 503 else None


def download_status(server: ServerProcess) -> int:
    """The status of `GET /files/{id}` for the first upload completed."""
    upload_id = server.named(Event.UPLOAD_COMPLETED)[0]["upload_id"]
    try:
        with urllib.request.urlopen(f"{server.url}/files/{upload_id}", timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def served(url: str, upload_id: str) -> bytes:
    with urllib.request.urlopen(f"{url}/files/{upload_id}", timeout=60) as answer:
        return bytes(answer.read())


def run_through_an_outage(
    own: OwnServices, tmp_path: Path, stop: Callable[[], None], start: Callable[[], None]
) -> None:
    where, dsn = asyncio.run(fresh_place(own.services))
    with Harness(tmp_path) as harness:
        flags = ["--s3-endpoint", own.services.endpoint, "--db", dsn]
        server = harness.serve(tmp_path / "unused", store=str(where), extra=flags)
        spool = tmp_path / "spool"
        sender = harness.send(server.url, spool, *SEND)
        server.wait_for(lambda lines: _completed(lines, 3), "three uploads completed")
        stop()
        status, retry_after, code = wait_until(
            lambda: outage_seen(server.url), "a 503 while away", deadline=OUTAGE_SEEN_DEADLINE
        )
        assert (status, code) == (503, "storage_unavailable") and retry_after, (status, code)
        assert download_status(server) == 503  # before any header: not a 200 cut short
        assert sender.alive()
        start()
        assert sender.finish(300) == 0, sender.report()
        assert sender.named(Event.UPLOAD_RETRY), "the sender never met the outage"
        _check_delivered(server, spool)
        harness.close(gracefully=True)


def _completed(lines: list[dict[str, object]], n: int) -> bool | None:
    done = [line for line in lines if line.get("event") == Event.UPLOAD_COMPLETED]
    return True if len(done) >= n else None


def _check_delivered(server: ServerProcess, spool: Path) -> None:
    """Every file confirmed, verified, served byte-identical; no 500 was ever answered."""
    entries = read_journal(spool)
    assert len(entries) == 24
    assert all(e.state == FileState.CONFIRMED for e in entries), entries
    verified = run_transfer("verify", "--server", server.url, "--spool-dir", str(spool))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for entry in entries:
        sent = Path(entry.path).read_bytes()
        got = served(server.url, entry.file_id)
        assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest(), entry.file_id
    answered = [(line.get("path"), line.get("status")) for line in server.named(Event.REQUEST)]
    senders = [status for path, status in answered if "/probe-" not in str(path)]
    assert 503 in senders, "no request of the sender's was answered 503"
    assert 500 not in [status for _, status in answered], "a storage outage answered 500"


def test_postgresql_restarted_mid_run(own_services: OwnServices, tmp_path: Path) -> None:
    pg = own_services.postgres
    run_through_an_outage(own_services, tmp_path, pg.pause, pg.resume)


def test_seaweedfs_restarted_mid_run(own_services: OwnServices, tmp_path: Path) -> None:
    weed = own_services.seaweedfs
    run_through_an_outage(own_services, tmp_path, weed.kill, weed.restart)
