"""The HTTP handlers over `MemoryStore` as well as `FileStore`: they need nothing but
the store's protocols, so the same requests give the same answers on both (and the
memory store has no path for a handler to reach for).

tests/test_server.py covers the endpoints in depth over `FileStore`; these are the
main paths once per store, plus the expiry sweep through `ExpiringStore`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from conftest import HOST, content_range, digest_field
from pytest_aiohttp import AiohttpClient

from transfer.core.errors import Code
from transfer.server.app import STATE, ServerConfig, make_app
from transfer.server.expiry import sweep_once
from transfer.store.base import ServerStore
from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(30)

Client = TestClient[web.Request, web.Application]


@dataclass
class Site:
    client: Client
    store: ServerStore

    async def put(
        self, upload_id: str, data: bytes, start: int, total: int | None, **headers: str
    ) -> ClientResponse:
        all_headers = {"Content-Range": content_range(start, data, total), **headers}
        resp = await self.client.put(f"/uploads/{upload_id}", data=data, headers=all_headers)
        await resp.read()
        return resp

    async def problem(self, resp: ClientResponse) -> tuple[int, str]:
        return resp.status, str((await resp.json())["code"])

    async def offset(self, upload_id: str) -> int:
        resp = await self.client.head(f"/uploads/{upload_id}")
        assert resp.status == 200
        return int(resp.headers["Upload-Offset"])


def make_store(kind: str, tmp_path: Path) -> ServerStore:
    if kind == "memory":
        return MemoryStore()
    store = FileStore(tmp_path / "data")
    store.open()
    return store


@pytest.fixture(params=["file", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def serve(kind: str, aiohttp_client: AiohttpClient, tmp_path: Path, **config: Any) -> Site:
    store = make_store(kind, tmp_path)
    client = await aiohttp_client(
        make_app(store, ServerConfig(**config)), server_kwargs={"host": HOST}
    )
    return Site(client, store)


@pytest.fixture
async def site(kind: str, aiohttp_client: AiohttpClient, tmp_path: Path) -> Site:
    return await serve(kind, aiohttp_client, tmp_path)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk_digest(data: bytes) -> Mapping[str, str]:
    return {"Content-Digest": digest_field(data)}


async def test_an_upload_in_chunks_is_published_and_served(site: Site) -> None:
    data = payload(3000, seed=1)
    resp = await site.client.post(
        "/uploads",
        json={"id": "u1", "name": "u1.bin", "size": 3000},
        headers={"Repr-Digest": digest_field(data)},
    )
    assert resp.status == 200
    assert "Upload-Expires" in resp.headers
    first = await site.put("u1", data[:1000], 0, 3000, **chunk_digest(data[:1000]))
    assert (first.status, first.headers["Range"]) == (308, "bytes=0-999")
    assert "Upload-Expires" in first.headers
    assert "Upload-Expires" in (await site.client.head("/uploads/u1")).headers
    done = await site.put("u1", data[1000:], 1000, 3000, **chunk_digest(data[1000:]))
    assert done.status == 200
    assert done.headers["Repr-Digest"] == digest_field(data)
    record = await done.json()
    assert (record["id"], record["size"], record["complete"]) == ("u1", 3000, True)
    head = await site.client.head("/uploads/u1")
    assert (head.headers["Upload-Complete"], "Upload-Expires" in head.headers) == ("?1", False)
    resp = await site.client.get("/files/u1")
    assert await resp.read() == data
    resp = await site.client.get("/files/u1", headers={"Range": "bytes=-10"})
    assert (resp.status, await resp.read()) == (206, data[-10:])


async def test_overlaps_gaps_and_digest_mismatches(site: Site) -> None:
    data = payload(600, seed=2)
    assert (await site.put("u1", data[:300], 0, 600)).status == 308
    assert (await site.put("u1", data[100:400], 100, 600)).status == 308
    assert await site.offset("u1") == 400
    gap = await site.put("u1", data[500:], 500, 600)
    assert await site.problem(gap) == (409, Code.OFFSET_GAP)
    assert gap.headers["Range"] == "bytes=0-399"
    bad = await site.put("u1", data[400:], 400, 600, **chunk_digest(b"other"))
    assert await site.problem(bad) == (400, Code.CHUNK_DIGEST_MISMATCH)
    assert bad.headers["Range"] == "bytes=0-399"
    assert (await site.put("u1", data[400:], 400, 600)).status == 200
    assert await (await site.client.get("/files/u1")).read() == data


async def test_a_repr_digest_mismatch_resets_the_upload(site: Site) -> None:
    data = payload(200, seed=3)
    resp = await site.put("u1", data, 0, 200, **{"Repr-Digest": digest_field(b"other")})
    assert await site.problem(resp) == (400, Code.REPR_DIGEST_MISMATCH)
    assert await site.offset("u1") == 0
    assert (await site.client.get("/files/u1")).status == 404


async def test_delete_and_the_partial_quota(
    kind: str, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    site = await serve(kind, aiohttp_client, tmp_path, max_partial=1000)
    assert (await site.put("a", payload(600), 0, None)).status == 308
    resp = await site.put("b", payload(500), 0, None)
    assert await site.problem(resp) == (507, Code.PARTIAL_QUOTA_EXCEEDED)
    assert site.store.partial_bytes == 600
    assert (await site.client.delete("/uploads/a")).status == 204
    assert site.store.partial_bytes == 0
    assert (await site.client.head("/uploads/a")).status == 404
    assert (await site.put("b", payload(500), 0, 500)).status == 200
    resp = await site.client.delete("/uploads/b")
    assert await site.problem(resp) == (409, Code.UPLOAD_COMPLETE)


async def test_the_sweep_removes_idle_partial_uploads_only(site: Site) -> None:
    assert (await site.put("idle", payload(10), 0, 20)).status == 308
    assert (await site.put("done", payload(10), 0, 10)).status == 200
    state = site.client.app[STATE]
    ttl = 60.0

    async def sweep(now: float) -> list[str]:
        locks = state.admission.locks
        return await sweep_once(site.store, locks, state.metrics, ttl=ttl, now=lambda: now)

    assert await sweep(time.time()) == []
    assert await sweep(time.time() + ttl + 5) == ["idle"]
    assert (await site.client.head("/uploads/idle")).status == 404
    assert (await site.client.head("/uploads/done")).headers["Upload-Complete"] == "?1"
    assert site.store.partial_bytes == 0
