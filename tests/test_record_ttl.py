"""`--record-ttl`: the records of uploads completed longer ago are removed by a sweep
(under the upload's lock, after a second look); the id then answers 404 and cannot be
used again, while its published file stays in `files/{id}` and is still served.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import HOST, StartServer
from pytest_aiohttp import AiohttpClient
from store_conformance import complete
from structlog.testing import capture_logs

from transfer.common.metrics import Metrics
from transfer.core.events import Event
from transfer.server.app import ServerConfig, make_app
from transfer.server.expiry import sweep_records_once
from transfer.server.locks import KeyedLocks
from transfer.store.filestore import FileStore
from transfer.store.recordtree import RecordTree
from transfer.testing.harness import run_transfer
from transfer.testing.polling import wait_until

pytestmark = pytest.mark.timeout(60)
HOUR = 3600.0


async def test_old_records_go_and_their_files_stay(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "data")
    store.open()
    app = make_app(store, ServerConfig(record_ttl=HOUR))
    client = await aiohttp_client(app, server_kwargs={"host": HOST})
    for upload_id in ("old", "new"):
        headers = {"Content-Range": "bytes 0-2/3"}
        resp = await client.put(
            f"/uploads/{upload_id}", data=upload_id[:3].encode(), headers=headers
        )
        assert resp.status == 200
    assert (await client.head("/uploads/old")).status == 200  # cached now
    two_hours_ago = time.time() - 2 * HOUR
    os.utime(
        RecordTree(tmp_path / "data" / "records", durable=False).path("old"), (two_hours_ago,) * 2
    )

    metrics = Metrics()
    with capture_logs() as logs:
        removed = await sweep_records_once(store, KeyedLocks(), metrics, ttl=HOUR, now=time.time)
    assert removed == ["old"]
    assert [e["upload_id"] for e in logs if e["event"] == Event.RECORD_EXPIRED] == ["old"]
    assert metrics.get("transfer_records_expired_total") == 1

    assert (await client.head("/uploads/old")).status == 404
    assert (await client.get("/uploads/old")).status == 404
    assert await (await client.get("/files/old")).read() == b"old"
    again = await client.put("/uploads/old", data=b"xyz", headers={"Content-Range": "bytes 0-2/3"})
    assert (again.status, (await again.json())["code"]) == (409, "upload_complete")
    assert await (await client.get("/files/old")).read() == b"old"  # never replaced
    assert (await client.head("/uploads/new")).status == 200


async def test_two_sweeps_at_once_remove_a_record_once(tmp_path: Path) -> None:
    """The second look under the lock: whichever sweep comes second finds nothing."""
    store = FileStore(tmp_path)
    store.open()
    for upload_id in ("a", "b"):
        await complete(store, upload_id, b"data")
    metrics, locks = Metrics(), KeyedLocks()
    later = time.time() + 2 * HOUR
    both = await asyncio.gather(
        *(sweep_records_once(store, locks, metrics, ttl=HOUR, now=lambda: later) for _ in "12")
    )
    assert sorted(both[0] + both[1]) == ["a", "b"]
    assert metrics.get("transfer_records_expired_total") == 2
    assert await store.get("a") is None and await store.open_file("a") is not None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--record-ttl", "0s"], "--record-ttl must be positive"),
        (["--record-ttl", "soon"], "--record-ttl"),
        (["--cache-size", "-1"], "--cache-size must be 0 or more"),
    ],
)
def test_bad_flags_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    result = run_transfer("serve", "--data-dir", str(tmp_path), "--port", "0", *flags)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _head_status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_a_real_server_forgets_a_record(serve_process: StartServer, tmp_path: Path) -> None:
    """`transfer serve --record-ttl 1s`: within seconds HEAD answers 404 and the file
    is still served (polled with a deadline, never slept)."""
    server = serve_process(tmp_path / "data", extra=["--record-ttl", "1s"])
    put = urllib.request.Request(
        f"{server.url}/uploads/gone",
        data=b"abc",
        method="PUT",
        headers={"Content-Range": "bytes 0-2/3"},
    )
    with urllib.request.urlopen(put, timeout=5) as resp:
        assert resp.status == 200
    wait_until(
        lambda: _head_status(f"{server.url}/uploads/gone") == 404 or None,
        "the record removed by --record-ttl",
        deadline=15.0,
    )
    with urllib.request.urlopen(f"{server.url}/files/gone", timeout=5) as resp:
        assert resp.read() == b"abc"

    def expired() -> list[str]:  # logged once the removal is done, so just after the 404
        return [e["upload_id"] for e in server.events() if e["event"] == Event.RECORD_EXPIRED]

    assert wait_until(expired, "record.expired logged", deadline=15.0) == ["gone"]
