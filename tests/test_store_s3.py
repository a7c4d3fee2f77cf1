"""The S3 + PostgreSQL store on real SeaweedFS and PostgreSQL, started by the tests
(tests/services.py): two replicas racing, a stale plan, real parts and a fail-over.

The conformance suite runs over this store in tests/test_store_conformance.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import botocore.exceptions
import pytest
from botocore.exceptions import ClientError
from services import S3Stores, Services, fresh_place, replica
from store_conformance import body, payload, published, write, xxh

from transfer.core.errors import Code, Conflict, StorageFailure
from transfer.core.protocol import ChunkPlan
from transfer.core.records import UploadSpec
from transfer.store.s3.failures import db_errors, s3_errors
from transfer.store.s3.intake import PART_MIN
from transfer.store.s3.location import redact_dsn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def two_replicas(services: Services) -> AsyncIterator[tuple[S3Stores, S3Stores]]:
    """Two replicas (each its own S3 client and database pool) on one bucket and schema."""
    where, dsn = await fresh_place(services)
    first, second = await replica(services, where, dsn), await replica(services, where, dsn)
    yield S3Stores(first, part_min=PART_MIN), S3Stores(second, part_min=PART_MIN)
    await first.close()
    await second.close()


async def test_two_replicas_race_conflicting_chunks(
    two_replicas: tuple[S3Stores, S3Stores],
) -> None:
    """Both see offset 0 and send different bytes there: exactly one is accepted, the
    other is refused with the current offset, and the upload holds the winner's bytes."""
    a, b = two_replicas[0].open(), two_replicas[1].open()
    for n in range(8):
        upload_id = f"race{n}"
        await a.create(UploadSpec(upload_id, size=4000))
        mine, theirs = payload(3000, seed=n), payload(3000, seed=100 + n)
        results = await asyncio.gather(
            write(a, upload_id, mine, 0, 4000),
            write(b, upload_id, theirs, 0, 4000),
            return_exceptions=True,
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, Conflict)]
        assert len(accepted) == 1 and len(refused) == 1, results
        assert refused[0].code in (Code.UPLOAD_CONFLICT, Code.OFFSET_MISMATCH)
        winner = mine if results[0] is accepted[0] else theirs
        loser = b if winner is mine else a
        info = await loser.get(upload_id)
        assert info is not None and info.state.offset == 3000  # the loser sees the truth
        await write(loser, upload_id, payload(1000, seed=999), 3000, 4000)
        await loser.finalize(upload_id)
        assert await published(a, upload_id) == winner + payload(1000, seed=999)


async def test_a_stale_plan_is_refused_with_the_current_offset(
    two_replicas: tuple[S3Stores, S3Stores],
) -> None:
    a, b = two_replicas[0].open(), two_replicas[1].open()
    await a.create(UploadSpec("u1", size=300))
    await a.get("u1")
    await b.get("u1")
    await write(a, "u1", payload(100), 0, 300)
    plan = await a.get("u1")
    assert plan is not None and plan.state.offset == 100
    with pytest.raises(Conflict) as refused:
        await b.write_chunk("u1", ChunkPlan(0, 100, 300), body(payload(100, 5)), {})
    assert refused.value.code == Code.OFFSET_MISMATCH
    assert "offset 100" in refused.value.detail
    info = await b.get("u1")
    assert info is not None and info.state.offset == 100


@pytest.mark.slow
async def test_a_fail_over_mid_upload_with_real_parts(
    two_replicas: tuple[S3Stores, S3Stores],
) -> None:
    """12 MiB in 3 MiB chunks with S3's 5 MiB minimum: parts and a tail; the second
    replica finishes, hashing the file back from S3, and the digests are right."""
    a = S3Stores(two_replicas[0].backend, part_min=PART_MIN).open()
    b = S3Stores(two_replicas[1].backend, part_min=PART_MIN).open()
    data = payload(12 * 1024 * 1024, seed=3)
    sha = {"sha-256": hashlib.sha256(data).digest()}
    await a.create(UploadSpec("big", size=len(data), repr_digest=sha))
    step = 3 * 1024 * 1024
    for start in range(0, 9 * 1024 * 1024, step):
        await write(a, "big", data[start : start + step], start, len(data))
    await b.get("big")
    await write(b, "big", data[9 * 1024 * 1024 :], 9 * 1024 * 1024, len(data))
    done = await b.finalize("big")
    assert done.record is not None
    assert dict(done.record.digests) == {**xxh(data), **sha}
    assert await published(a, "big") == data


def test_the_default_path_never_imports_the_s3_clients() -> None:
    """The embedded default runs without the `s3` extra: importing the CLI and the file
    store loads neither aiobotocore nor asyncpg (they are imported lazily)."""
    probe = (
        "import sys, transfer.cli, transfer.cli.serve, transfer.store.filestore, "
        "transfer.store.s3.location; "
        "print(sorted(m for m in ('aiobotocore', 'botocore', 'asyncpg') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# --- pure parts: what a failure becomes, and a DSN as logged --------------------------


@pytest.mark.parametrize(
    ("error", "away"),
    [
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
        (ConnectionResetError(), True),
        (ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"), True),
        (
            ClientError(
                {"Error": {"Code": "X"}, "ResponseMetadata": {"HTTPStatusCode": 502}}, "op"
            ),
            True,
        ),
        (ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"), False),
        (ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"), False),
    ],
)
async def test_an_s3_failure_is_503_only_while_s3_is_away(error: Exception, away: bool) -> None:
    with pytest.raises(StorageFailure) as raised:
        async with s3_errors("put k"):
            raise error
    assert raised.value.code == (Code.STORAGE_UNAVAILABLE if away else Code.STORAGE_ERROR)
    assert ("Retry-After" in raised.value.headers) is away


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionRefusedError(), Code.STORAGE_UNAVAILABLE),
        (TimeoutError(), Code.STORAGE_UNAVAILABLE),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), Code.STORAGE_UNAVAILABLE),
        (asyncpg.exceptions.AdminShutdownError("terminating"), Code.STORAGE_UNAVAILABLE),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), Code.STORAGE_UNAVAILABLE),
        (asyncpg.exceptions.UndefinedTableError("no table"), Code.STORAGE_ERROR),
    ],
)
async def test_a_database_failure_is_503_only_while_it_is_away(
    error: Exception, code: Code
) -> None:
    with pytest.raises(StorageFailure) as raised:
        async with db_errors("read upload u"):
            raise error
    assert raised.value.code == code
    assert raised.value.status == (503 if code == Code.STORAGE_UNAVAILABLE else 500)


@pytest.mark.parametrize(
    ("dsn", "logged"),
    [
        ("postgresql://u:hunter2@db:5432/x", "postgresql://u:***@db:5432/x"),
        (
            "postgresql://u@db/x?sslmode=require&password=hunter2",
            "postgresql://u@db/x?sslmode=require&password=***",
        ),
        ("postgresql:///x?host=/tmp/s", "postgresql:///x?host=/tmp/s"),
        (
            "postgresql://postgres:@/postgres?host=/tmp/p",
            "postgresql://postgres:@/postgres?host=/tmp/p",
        ),
    ],
)
def test_a_dsn_is_logged_without_its_password(dsn: str, logged: str) -> None:
    assert redact_dsn(dsn) == logged
