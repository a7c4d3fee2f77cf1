"""`transfer serve --store s3://` as a real process on real SeaweedFS and PostgreSQL
(tests/services.py): `transfer send` with each protocol and `transfer verify`; the native
API by hand (POST, PUT, HEAD, GET with Range, DELETE) and `/metrics`; expiry aborting the
multipart upload; `--record-ttl`; the partial quota; and the flag mistakes, each one
line on stderr that never shows a password.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import digest_field
from services import Services, fresh_place, s3_client
from support import read_journal

from transfer.core.events import Event
from transfer.sender.journal import FileState
from transfer.store.s3.location import S3Location
from transfer.testing.harness import Harness, ServerProcess, run_transfer
from transfer.testing.polling import wait_until_async

pytestmark = pytest.mark.timeout(240)
KiB, MiB = 1024, 1024 * 1024
FAST = ("--min-interval", "0ms", "--max-interval", "5ms")


@dataclass
class S3Place:
    """A fresh bucket prefix and database schema, and the `transfer serve` children on it."""

    harness: Harness
    services: Services
    where: S3Location
    dsn: str
    servers: list[ServerProcess] = field(default_factory=list)

    def serve(self, *extra: str) -> ServerProcess:
        """One more `transfer serve --store s3://...` (a replica, or a restart)."""
        flags = ["--s3-endpoint", self.services.endpoint, "--db", self.dsn, *extra]
        where = str(self.where)
        server = self.harness.serve(self.harness.workdir / "unused", store=where, extra=flags)
        self.servers.append(server)
        return server

    def keys(self, under: str) -> list[str]:
        """Object keys below `PREFIX/under`, relative to it (a plain botocore client)."""
        prefix = self.where.key(under)
        listed = s3_client(self.services).list_objects_v2(Bucket=self.where.bucket, Prefix=prefix)
        return [o["Key"].removeprefix(prefix) for o in listed.get("Contents", [])]

    def multipart_uploads(self) -> list[str]:
        """Keys of the multipart uploads in progress under `PREFIX/`."""
        client = s3_client(self.services)
        listed = client.list_multipart_uploads(Bucket=self.where.bucket, Prefix=self.where.key(""))
        return [u["Key"] for u in listed.get("Uploads", [])]


@pytest.fixture
async def s3_place(services: Services, tmp_path: Path) -> AsyncIterator[S3Place]:
    where, dsn = await fresh_place(services)
    with Harness(tmp_path) as harness:
        yield S3Place(harness, services, where, dsn)
        harness.close(gracefully=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def server_id(entry: Any) -> str:
    """The id the server knows a journaled file by (tus and IETF name it in a URL)."""
    return str(entry.upload_url).rsplit("/", 1)[-1] if entry.upload_url else entry.file_id


def data_of(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (1 + size // 32)
    return block[:size]


async def put(
    http: aiohttp.ClientSession, url: str, data: bytes, start: int, total: int | None
) -> aiohttp.ClientResponse:
    """One native chunk; the response is read (and released)."""
    span = f"bytes {start}-{start + len(data) - 1}/{'*' if total is None else total}"
    headers = {"Content-Range": span, "Content-Digest": digest_field(data)}
    async with http.put(url, data=data, headers=headers) as answer:
        await answer.read()
    return answer


# --- transfer send, every protocol ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["native", "tus", "ietf"])
async def test_send_and_verify_over_the_s3_store(
    s3_place: S3Place, tmp_path: Path, protocol: str
) -> None:
    """Files from 1 KiB to 7 MiB in 1 MiB chunks (so parts, tails and single objects), all
    confirmed, `transfer verify` passes, and every file served back is byte-identical."""
    server = s3_place.serve()
    spool = tmp_path / "spool"
    sender = s3_place.harness.send(
        server.url, spool, "--protocol", protocol, "--count", "6", "--seed", "7",
        "--min-size", "1KiB", "--max-size", "7MiB", "--chunk-size", "1MiB", *FAST,
    )  # fmt: skip
    assert sender.finish(180) == 0, sender.report()
    entries = read_journal(spool)
    assert len(entries) == 6
    assert all(e.state == FileState.CONFIRMED for e in entries), entries
    verified = run_transfer("verify", "--server", server.url, "--spool-dir", str(spool))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    async with aiohttp.ClientSession() as http:
        for entry in entries:
            async with http.get(f"{server.url}/files/{server_id(entry)}") as got:
                assert got.status == 200, entry
                served = await got.read()
            original = await asyncio.to_thread(Path(entry.path).read_bytes)
            assert sha256(served) == sha256(original), entry.file_id
    published = s3_place.keys("files/")
    assert sorted(published) == sorted(server_id(e) for e in entries)  # nothing else
    started = server.named(Event.SERVER_STARTED)[-1]
    assert started["store"] == str(s3_place.where)


# --- the native API by hand -----------------------------------------------------------


async def test_native_requests_over_the_s3_store(s3_place: S3Place) -> None:
    """POST, two PUTs across S3's 5 MiB part minimum, HEAD, GET (whole and a Range), a
    DELETE that aborts the multipart upload, and /metrics."""
    url = s3_place.serve().url
    data = data_of(6 * MiB + 123)
    async with aiohttp.ClientSession() as http:
        made = await http.post(
            f"{url}/uploads",
            json={"id": "hand1", "size": len(data)},
            headers={"Repr-Digest": digest_field(data, "sha-256")},
        )
        assert made.status == 200, await made.text()
        first = await put(http, f"{url}/uploads/hand1", data[: 5 * MiB + 7], 0, len(data))
        assert first.status == 308 and first.headers["Range"] == f"bytes=0-{5 * MiB + 6}"
        async with http.head(f"{url}/uploads/hand1") as head:
            assert head.status == 200 and head.headers["Upload-Offset"] == str(5 * MiB + 7)
        last = await put(http, f"{url}/uploads/hand1", data[5 * MiB + 7 :], 5 * MiB + 7, len(data))
        assert last.status == 200
        async with http.get(f"{url}/files/hand1") as whole:
            assert whole.status == 200 and await whole.read() == data
        async with http.get(f"{url}/files/hand1", headers={"Range": "bytes=100-5242979"}) as part:
            assert part.status == 206 and await part.read() == data[100:5242980]
        await _delete_aborts_the_multipart_upload(http, url, s3_place)
        async with http.get(f"{url}/metrics") as metrics:
            text = await metrics.text()
        assert metrics.status == 200
        assert "transfer_uploads_completed_total 1" in text, text


async def _delete_aborts_the_multipart_upload(
    http: aiohttp.ClientSession, url: str, s3_place: S3Place
) -> None:
    data = data_of(5 * MiB + 1, seed=2)
    async with http.post(f"{url}/uploads", json={"id": "hand2", "size": 2 * len(data)}) as made:
        assert made.status == 200
    assert (await put(http, f"{url}/uploads/hand2", data, 0, 2 * len(data))).status == 308
    assert s3_place.multipart_uploads() == [s3_place.where.key("files", "hand2")]
    async with http.delete(f"{url}/uploads/hand2") as deleted:
        assert deleted.status in (200, 204), await deleted.text()
    async with http.head(f"{url}/uploads/hand2") as head:
        assert head.status == 404
    assert s3_place.multipart_uploads() == []
    assert s3_place.keys("tails/") == []


# --- expiry, --record-ttl, the quota ----------------------------------------------------


async def test_expiry_aborts_the_multipart_upload(s3_place: S3Place) -> None:
    url = s3_place.serve("--partial-ttl", "2s").url
    data = data_of(5 * MiB + 10)
    async with aiohttp.ClientSession() as http:
        assert (await put(http, f"{url}/uploads/idle", data, 0, 3 * len(data))).status == 308
        assert len(s3_place.multipart_uploads()) == 1  # one part; no tail: 10 bytes over

        async def gone() -> bool:
            async with http.head(f"{url}/uploads/idle") as head:
                return head.status == 404

        await wait_until_async(gone, "the idle upload expired", deadline=30)
    assert s3_place.multipart_uploads() == []
    assert s3_place.keys("tails/") == []


async def test_record_ttl_forgets_the_record_and_keeps_the_file(s3_place: S3Place) -> None:
    url = s3_place.serve("--record-ttl", "1s").url
    data = data_of(3000)
    async with aiohttp.ClientSession() as http:
        assert (await put(http, f"{url}/uploads/old", data, 0, len(data))).status == 200

        async def forgotten() -> bool:
            async with http.head(f"{url}/uploads/old") as head:
                return head.status == 404

        await wait_until_async(forgotten, "the record removed", deadline=30)
        async with http.get(f"{url}/files/old") as got:
            assert got.status == 200 and await got.read() == data
        async with http.post(f"{url}/uploads", json={"id": "old"}) as again:
            assert again.status == 409
            assert (await again.json())["code"] == "upload_complete"


async def test_the_partial_quota_holds_on_the_s3_store(s3_place: S3Place) -> None:
    url = s3_place.serve("--max-partial", "1MiB").url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/uploads", json={"id": "big", "size": 2 * MiB}) as made:
            assert made.status == 507
            assert (await made.json())["code"] == "partial_quota_exceeded"
        async with http.post(f"{url}/uploads", json={"id": "q"}) as made:
            assert made.status == 200
        refused = await put(http, f"{url}/uploads/q", data_of(2 * MiB), 0, None)
        assert refused.status == 507
        assert (await put(http, f"{url}/uploads/q", data_of(MiB // 2), 0, None)).status == 308


# --- flag mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ((), "exactly one of --data-dir"),
        (("--data-dir", "{T}/a", "--store", "file://{T}/b"), "exactly one of --data-dir"),
        (("--store", "s3://transfer-test/x"), "needs --db"),
        (("--store", "file://{T}/a", "--db", "postgresql://h/db"), "--db and --s3-endpoint"),
        (("--data-dir", "{T}/a", "--s3-endpoint", "http://h"), "--db and --s3-endpoint"),
        (("--store", "ftp://host/x"), "expected file://PATH or s3://BUCKET/PREFIX"),
        (("--store", "s3://Bad_Bucket/x", "--db", "postgresql://h/db"), "not a valid S3 bucket"),
        (
            ("--store", "s3://transfer-test/x", "--db", "mysql://u:hunter2@h/db"),
            "--db mysql://u:***@h/db",
        ),
    ],
)
def test_store_flag_mistakes_are_one_line(
    tmp_path: Path, flags: tuple[str, ...], said: str
) -> None:
    argv = [f.replace("{T}", str(tmp_path)) for f in flags]
    done = run_transfer("serve", "--port", "0", *argv)
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "hunter2" not in done.stderr


def test_an_unreachable_database_is_named_without_its_password(services: Services) -> None:
    dsn = "postgresql://transfer:hunter2@127.0.0.1:1/db"
    done = run_transfer(
        "serve", "--port", "0", "--store", f"s3://{services.bucket}/x",
        "--s3-endpoint", services.endpoint, "--db", dsn,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--db postgresql://transfer:***@127.0.0.1:1/db: cannot connect" in done.stderr
    assert "hunter2" not in done.stderr


def test_a_missing_s3_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """asyncpg shadowed by a package that cannot be imported, as if it were absent."""
    (tmp_path / "asyncpg").mkdir()
    (tmp_path / "asyncpg" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'asyncpg'\", name='asyncpg')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = run_transfer(
        "serve", "--port", "0", "--store", "s3://transfer-test/x", "--db", "postgresql://h/d",
        env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'transfer[s3]'" in done.stderr and "asyncpg" in done.stderr


def test_server_started_names_the_store_and_never_a_password(s3_place: S3Place) -> None:
    """The DSN's password (here in a `password=` parameter PostgreSQL ignores when the
    server trusts the socket) is `***` in the log."""
    s3_place.dsn += "&password=hunter2" if "?" in s3_place.dsn else "?password=hunter2"
    server = s3_place.serve()
    started = server.named(Event.SERVER_STARTED)[-1]
    assert started["store"] == str(s3_place.where)
    assert "hunter2" not in json.dumps(started) and "***" in started["db"]
    assert "hunter2" not in "\n".join(server.lines)


def test_store_file_url_is_the_data_dir(tmp_path: Path) -> None:
    """`--store file://PATH` serves from PATH exactly as `--data-dir PATH` does."""
    data_dir = tmp_path / "data"
    with Harness(tmp_path) as harness:
        server = harness.serve(data_dir, store=f"file://{data_dir}")
        data = data_of(5000)
        request = urllib.request.Request(
            f"{server.url}/uploads/plain", data=data, method="PUT", headers={}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        started = server.named(Event.SERVER_STARTED)[-1]
        assert started["store"] == f"file://{data_dir}"
        assert started["data_dir"] == str(data_dir)
        harness.close(gracefully=True)
    assert (data_dir / "files" / "plain").read_bytes() == data
