"""The bounded cache of completed records: never more than `--cache-size` entries, and
every record still served correctly through a real server (GET, HEAD, an idempotent
re-finalize, the file), never stale after a DELETE or a removed record.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import HOST, digest_field
from pytest_aiohttp import AiohttpClient
from store_conformance import complete, write

from transfer.core.records import UploadSpec
from transfer.server.app import ServerConfig, make_app
from transfer.store.filestore import FileStore
from transfer.store.lru import LRU

pytestmark = pytest.mark.timeout(60)
BOUND = 4


def test_the_lru_drops_the_least_recently_used() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now "b" is the least recently used
    lru.put("c", 3)
    assert ("a" in lru, "b" in lru, "c" in lru, len(lru)) == (True, False, True, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None
    empty: LRU[str, int] = LRU(0)
    empty.put("a", 1)
    assert (len(empty), empty.get("a")) == (0, None)
    with pytest.raises(ValueError, match="capacity"):
        LRU(-1)


async def test_past_the_bound_every_record_is_still_served(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "data", cache_size=BOUND)
    store.open()
    client = await aiohttp_client(make_app(store, ServerConfig()), server_kwargs={"host": HOST})
    files = {f"f{n}": os.urandom(200 + n) for n in range(3 * BOUND)}
    for upload_id, data in files.items():
        headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
        assert (await client.put(f"/uploads/{upload_id}", data=data, headers=headers)).status == 200
        assert store.counts().cached <= BOUND
    for _ in range(2):  # twice: the second pass reads back what the first evicted
        for upload_id, data in files.items():
            record = await client.get(f"/uploads/{upload_id}")
            assert record.status == 200
            body = await record.json()
            assert (body["id"], body["size"], body["complete"]) == (upload_id, len(data), True)
            head = await client.head(f"/uploads/{upload_id}")
            assert head.headers["Upload-Complete"] == "?1"
            assert head.headers["Repr-Digest"] == digest_field(data)
            again = await client.put(
                f"/uploads/{upload_id}", headers={"Content-Range": f"bytes */{len(data)}"}
            )
            assert (again.status, await again.json()) == (200, body)  # idempotent
            assert await (await client.get(f"/files/{upload_id}")).read() == data
            assert store.counts().cached <= BOUND
    assert store.counts().records_read >= 3 * BOUND  # misses went to disk
    metrics = await (await client.get("/metrics")).text()
    assert f"transfer_store_cache_entries {BOUND}" in metrics
    assert f"transfer_store_cache_capacity {BOUND}" in metrics
    assert "transfer_store_partial_uploads 0" in metrics


async def test_no_cache_at_all_still_serves(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data", cache_size=0)
    store.open()
    client = await aiohttp_client(make_app(store, ServerConfig()), server_kwargs={"host": HOST})
    headers = {"Content-Range": "bytes 0-2/3"}
    assert (await client.put("/uploads/z", data=b"zzz", headers=headers)).status == 200
    assert (await client.head("/uploads/z")).headers["Upload-Complete"] == "?1"
    assert store.counts().cached == 0


async def test_a_deleted_upload_is_never_served_from_memory(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "data", cache_size=BOUND)
    store.open()
    client = await aiohttp_client(make_app(store, ServerConfig()), server_kwargs={"host": HOST})
    headers = {"Content-Range": "bytes 0-4/10"}
    assert (await client.put("/uploads/p", data=b"12345", headers=headers)).status == 308
    assert store.counts().partials == 1
    assert (await client.delete("/uploads/p")).status == 204
    assert (await client.head("/uploads/p")).status == 404
    assert store.counts().partials == 0


async def test_no_name_with_an_id_is_interned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's pathlib interns every part of each `Path` it builds: a `Path` per
    upload grew the interpreter's table of interned strings, and RSS, forever (measured:
    docs/benchmarks.md). Every name with an id in it must be a `str`."""
    interned: list[str] = []
    real = sys.intern

    def recording(text: str) -> str:
        interned.append(text)
        return real(text)

    monkeypatch.setattr(sys, "intern", recording)
    store = FileStore(tmp_path, cache_size=2)
    store.open()
    for n in range(4):
        await complete(store, f"uniq{n}", b"data")
    await store.create(UploadSpec("uniqpartial", size=10))
    await write(store, "uniqpartial", b"12345", 0, 10)
    store = FileStore(tmp_path, cache_size=2)
    store.open()
    await write(store, "uniqpartial", b"67890", 5, 10)
    await store.finalize("uniqpartial")  # hashed from disk after the restart
    for n in range(4):
        assert await store.get(f"uniq{n}") is not None
        await (await store.open_file(f"uniq{n}") or pytest.fail("no file")).close()
    await store.forget_record("uniq0")
    assert await store.partials() == []
    assert sorted(await store.completed_before(time.time() + 60)) == [
        "uniq1",
        "uniq2",
        "uniq3",
        "uniqpartial",
    ]
    assert [t for t in interned if "uniq" in t] == []
