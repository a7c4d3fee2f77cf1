"""Tenant store keys (`{tenant}~{id}`) on the stores themselves: `FileStore`'s
`files/{tenant}/{id}` layout (and its crash recovery), each store's per-tenant partial
bytes (`--tenant-max-partial` enforced on the S3 store too), and the isolation rule
over `MemoryStore` and `S3Store` (every store sees only keys).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient
from store_conformance import StoreFactory, write

from transfer.common import tokenfile
from transfer.core.records import UploadSpec
from transfer.core.tenancy import Scope, public_id, store_key, tenant_of
from transfer.core.tokens import Credential, TokenTable, digest_of
from transfer.server.admission import TenantQuotaStore
from transfer.server.app import ServerConfig, make_app
from transfer.store.base import ServerStore
from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(30)
DATA = b"tenant bytes" * 10


def test_keys_split_one_way_only() -> None:
    key = store_key("lab", "a-b_c")
    assert (key, public_id(key), tenant_of(key)) == ("lab~a-b_c", "a-b_c", "lab")
    assert (store_key(None, "x"), public_id("x"), tenant_of("x")) == ("x", "x", None)


async def _complete(store: FileStore | MemoryStore, key: str, data: bytes) -> None:
    await store.create(UploadSpec(key, "f.bin", len(data)))
    await write(store, key, data, 0, len(data), pieces=1)
    await store.finalize(key)


async def test_filestore_publishes_a_tenants_file_under_its_directory(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.open()
    await _complete(store, "lab~x", DATA)
    await _complete(store, "x", DATA[:5])  # without tenancy: files/{id}, as ever
    assert (tmp_path / "files" / "lab" / "x").read_bytes() == DATA
    assert (tmp_path / "files" / "x").read_bytes() == DATA[:5]
    published = await store.open_file("lab~x")
    assert published is not None
    async with published:
        assert await published.read(0, len(DATA)) == DATA
    assert await store.open_file("other~x") is None


async def test_filestore_finishes_a_tenants_publication_a_crash_cut_short(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path)
    store.open()
    await store.create(UploadSpec("lab~y", "y.bin", len(DATA)))
    await write(store, "lab~y", DATA, 0, len(DATA), pieces=1)
    # The crash: the record is durable, the `.part` not yet renamed (see layout.publish),
    # and the tenant's directory does not exist yet.
    doc = json.loads((tmp_path / "uploads" / "lab~y.json").read_text())
    doc.update(complete=True, size=len(DATA), digests={})
    store._disk.records.write("lab~y", json.dumps(doc).encode())
    reopened = FileStore(tmp_path)
    assert reopened.open() == ["lab~y"]
    assert (tmp_path / "files" / "lab" / "y").read_bytes() == DATA
    assert not (tmp_path / "uploads" / "lab~y.part").exists()


@pytest.fixture(params=["file", "memory", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ServerStore:
    if request.param == "file":
        store = FileStore(tmp_path)
        store.open()
        return store
    if request.param == "s3":
        factory: StoreFactory = request.getfixturevalue("s3_stores")
        return factory.open()
    return MemoryStore()


async def test_partial_bytes_are_counted_per_tenant(any_store: ServerStore) -> None:
    store = any_store
    assert isinstance(store, TenantQuotaStore)
    for key, n in (("lab~a", 10), ("lab~b", 20), ("ops~a", 7), ("a", 3)):
        await store.create(UploadSpec(key, "p", 100))
        await write(store, key, DATA[:n], 0, 100, pieces=1)
    assert (store.partial_bytes_of("lab"), store.partial_bytes_of("ops")) == (30, 7)
    assert store.partial_bytes_of("la") == 0  # a prefix of a name is not the tenant
    assert store.partial_bytes == 40


@pytest.fixture(params=["memory", "s3"])
def other_store(request: pytest.FixtureRequest) -> ServerStore:
    if request.param == "s3":
        factory: StoreFactory = request.getfixturevalue("s3_stores")
        return factory.open()
    return MemoryStore()


async def test_isolation_holds_over_other_stores(
    aiohttp_client: AiohttpClient, tmp_path: Path, other_store: ServerStore
) -> None:
    """The same rule on stores that know nothing of tenants: they only see keys."""
    store = other_store
    path = tmp_path / "tokens.json"
    scopes = frozenset({Scope.UPLOAD, Scope.READ})
    creds = tuple(
        Credential(t, t, scopes, digest_of(f"tt_{t}-secret-token")) for t in ("lab", "ops")
    )
    tokenfile.save(path, TokenTable(creds))
    client = await aiohttp_client(make_app(store, ServerConfig(tokens_file=path)))
    lab, ops = ({"Authorization": f"Bearer tt_{t}-secret-token"} for t in ("lab", "ops"))
    put = {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"}
    assert (await client.put("/uploads/same", data=DATA, headers={**lab, **put})).status == 200
    assert (await client.get("/files/same", headers=ops)).status == 404
    assert (await client.head("/uploads/same", headers=ops)).status == 404
    assert (await client.get("/files/same", headers=lab)).status == 200
    data = DATA[::-1]
    assert (await client.put("/uploads/same", data=data, headers={**ops, **put})).status == 200
    assert await (await client.get("/files/same", headers=ops)).read() == data
    assert await (await client.get("/files/same", headers=lab)).read() == DATA


async def test_a_tenants_partial_quota_holds_on_the_s3_store(
    aiohttp_client: AiohttpClient, tmp_path: Path, s3_stores: StoreFactory
) -> None:
    """`--tenant-max-partial` over PostgreSQL's per-tenant sums: one tenant's partial
    bytes refuse its next chunk (507), never another tenant's."""
    path = tmp_path / "tokens.json"
    creds = tuple(
        Credential(t, t, frozenset({Scope.UPLOAD}), digest_of(f"tt_{t}-secret-token"))
        for t in ("lab", "ops")
    )
    tokenfile.save(path, TokenTable(creds))
    config = ServerConfig(tokens_file=path, tenant_max_partial=250)
    client = await aiohttp_client(make_app(s3_stores.open(), config))
    lab, ops = ({"Authorization": f"Bearer tt_{t}-secret-token"} for t in ("lab", "ops"))
    part = {"Content-Range": "bytes 0-59/200"}
    assert (await client.put("/uploads/p1", data=DATA[:60], headers={**lab, **part})).status == 308
    refused = await client.put("/uploads/p2", data=DATA[:60], headers={**lab, **part})
    assert refused.status == 507
    assert (await refused.json())["code"] == "tenant_quota_exceeded"
    assert (await client.put("/uploads/p2", data=DATA[:60], headers={**ops, **part})).status == 308
