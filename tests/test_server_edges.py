"""Edge cases of the server: bugs surface as problem+json, declarations that conflict with
stored bytes, a store left half-created by a crash, and bearer-token authentication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from conftest import HOST, MakeServed, Served, content_range
from pytest_aiohttp import AiohttpClient

from transfer.auth import token_matches
from transfer.server import ServerConfig, make_app
from transfer.storage import FileStore, UploadInfo

TOKEN = "s3cret-token-value"


class ExplodingStore(FileStore):
    """A store with a bug: the only way to reach the server's last-resort handler."""

    async def get(self, upload_id: str) -> UploadInfo | None:
        raise RuntimeError("a bug in the store")


async def test_an_unexpected_error_is_a_problem_not_a_traceback(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    store = ExplodingStore(tmp_path)
    store.open()
    client = await aiohttp_client(make_app(store), server_kwargs={"host": HOST})

    resp = await client.head("/uploads/abc")
    assert resp.status == 500
    resp = await client.get("/uploads/abc")
    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "internal_error"
    assert "RuntimeError" not in json.dumps(body)
    assert (await client.get("/healthz")).status == 200


async def test_post_with_a_size_below_the_stored_bytes_conflicts_and_saves_nothing(
    served: Served,
) -> None:
    resp = await served.client.put(
        "/uploads/u1",
        data=b"x" * 100,
        headers={"Content-Range": content_range(0, b"x" * 100, None)},
    )
    assert resp.status == 308

    resp = await served.client.post("/uploads", json={"id": "u1", "size": 50})
    assert resp.status == 409
    assert (await resp.json())["code"] == "total_mismatch"
    meta = json.loads((served.data_dir / "uploads" / "u1.json").read_bytes())
    assert meta["size"] is None


async def test_a_json_without_its_part_reads_as_an_empty_upload(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.open()
    uploads = tmp_path / "uploads"
    (uploads / "u1.json").write_text(json.dumps({"id": "u1", "size": 10, "metadata": {}}))

    info = await FileStore(tmp_path).get("u1")

    assert info is not None
    assert info.state.offset == 0
    assert (uploads / "u1.part").read_bytes() == b""


async def test_method_not_allowed_keeps_its_allow_header(served: Served) -> None:
    resp = await served.client.post("/healthz")
    assert resp.status == 405
    assert resp.content_type == "application/problem+json"
    assert "GET" in resp.headers["Allow"]


async def test_metrics_name_the_exposition_format(served: Served) -> None:
    resp = await served.client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")


# --- authentication -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Basic {TOKEN}", False),
        ("Bearer", False),
        ("", False),
        (None, False),
        ("Bearer é", False),
    ],
)
def test_token_matches(header: str | None, ok: bool) -> None:
    assert token_matches(header, TOKEN) is ok


@pytest.fixture
async def guarded(make_served: MakeServed) -> Served:
    return await make_served(token=TOKEN)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/uploads"),
        ("PUT", "/uploads/u1"),
        ("HEAD", "/uploads/u1"),
        ("GET", "/uploads/u1"),
        ("DELETE", "/uploads/u1"),
        ("GET", "/files/u1"),
        ("GET", "/nowhere"),
    ],
)
async def test_every_upload_and_download_route_needs_the_token(
    guarded: Served, method: str, path: str
) -> None:
    resp = await guarded.client.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if method != "HEAD":
        assert (await resp.json())["code"] == "unauthorized"
    assert not list((guarded.data_dir / "uploads").iterdir())


async def test_the_token_opens_the_routes_and_health_stays_open(guarded: Served) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await guarded.client.get("/healthz")).status == 200
    assert (await guarded.client.get("/metrics")).status == 200
    resp = await guarded.client.post("/uploads", json={"id": "u1", "size": 3}, headers=auth)
    assert resp.status == 200
    resp = await guarded.client.put(
        "/uploads/u1", data=b"abc", headers={**auth, "Content-Range": "bytes 0-2/3"}
    )
    assert resp.status == 200
    assert await (await guarded.client.get("/files/u1", headers=auth)).read() == b"abc"


async def test_metrics_can_be_protected(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.open()
    app: web.Application = make_app(store, ServerConfig(token=TOKEN, protect_metrics=True))
    client = await aiohttp_client(app, server_kwargs={"host": HOST})
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/healthz")).status == 200
    ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
