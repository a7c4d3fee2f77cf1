"""`GET /files/{id}` and `HEAD`: whole files, one range, conditional requests.

The endpoint reads through the store's `PublishedFile`, so it runs on any store:
- the documented answers (docs/protocol.md) are checked over `FileStore` and
  `MemoryStore`;
- over `FileStore`, every request of a long table is also sent to aiohttp's own
  `FileResponse` for the same file, which served this endpoint before the store seam:
  status, body and every header that matters must be identical.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from conftest import HOST
from pytest_aiohttp import AiohttpClient

from transfer.server.app import ServerConfig, make_app
from transfer.store.base import ServerStore
from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(30)

Client = TestClient[web.Request, web.Application]
DATA = random.Random(1).randbytes(1000)
COMPARED = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Transfer-Encoding",
    "Content-Encoding",
)


@dataclass
class Site:
    client: Client
    store: ServerStore
    data_dir: Path | None

    async def publish(self, upload_id: str, data: bytes) -> None:
        headers = {"Content-Range": f"bytes */{len(data)}"}
        if data:
            headers["Content-Range"] = f"bytes 0-{len(data) - 1}/{len(data)}"
        resp = await self.client.put(f"/uploads/{upload_id}", data=data, headers=headers)
        assert resp.status == 200, await resp.text()

    async def validators(self, upload_id: str) -> tuple[str, str]:
        resp = await self.client.head(f"/files/{upload_id}")
        return resp.headers["ETag"], resp.headers["Last-Modified"]


async def reference(request: web.Request) -> web.StreamResponse:
    """What `GET /files/{id}` was: aiohttp's FileResponse on the published path."""
    data_dir: Path = request.app[DATA_DIR]
    path = data_dir / "files" / request.match_info["upload_id"]
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


DATA_DIR = web.AppKey("data_dir", Path)


async def make_site(kind: str, aiohttp_client: AiohttpClient, tmp_path: Path) -> Site:
    store: ServerStore
    data_dir: Path | None = None
    if kind == "file":
        data_dir = tmp_path / "data"
        file_store = FileStore(data_dir)
        file_store.open()
        store = file_store
    else:
        store = MemoryStore()
    app = make_app(store, ServerConfig())
    if data_dir is not None:
        app[DATA_DIR] = data_dir
        app.router.add_get("/ref/{upload_id}", reference)
    client = await aiohttp_client(app, server_kwargs={"host": HOST})
    served = Site(client, store, data_dir)
    await served.publish("f", DATA)
    await served.publish("empty", b"")
    return served


@pytest.fixture(params=["file", "memory"])
async def site(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient, tmp_path: Path
) -> Site:
    return await make_site(request.param, aiohttp_client, tmp_path)


@pytest.fixture
async def file_site(aiohttp_client: AiohttpClient, tmp_path: Path) -> Site:
    """A file store, with `/ref/{id}` serving the same files through `FileResponse`."""
    return await make_site("file", aiohttp_client, tmp_path)


def shifted(http_date: str, seconds: int) -> str:
    return formatdate(parsedate_to_datetime(http_date).timestamp() + seconds, usegmt=True)


Headers = Callable[[str, str], dict[str, str]]  # (etag, last_modified) -> request headers


@dataclass(frozen=True)
class Case:
    headers: Headers
    status: int
    content_range: str | None = None
    body: slice | None = None  # the part of DATA sent; None: nothing


def plain(**headers: str) -> Headers:
    return lambda _etag, _modified: dict(headers)


CASES: dict[str, Case] = {
    "whole": Case(plain(), 200, None, slice(None)),
    "range": Case(plain(Range="bytes=10-19"), 206, "bytes 10-19/1000", slice(10, 20)),
    "open-ended": Case(plain(Range="bytes=990-"), 206, "bytes 990-999/1000", slice(990, None)),
    "suffix": Case(plain(Range="bytes=-5"), 206, "bytes 995-999/1000", slice(995, None)),
    "suffix-longer-than-file": Case(
        plain(Range="bytes=-5000"), 206, "bytes 0-999/1000", slice(None)
    ),
    "suffix-zero": Case(plain(Range="bytes=-0"), 206, "bytes 0-999/1000", slice(None)),
    "end-past-size": Case(
        plain(Range="bytes=900-5000"), 206, "bytes 900-999/1000", slice(900, None)
    ),
    "upper-case-unit": Case(plain(Range="BYTES=0-0"), 206, "bytes 0-0/1000", slice(0, 1)),
    "start-at-size": Case(plain(Range="bytes=1000-"), 416, "bytes */1000"),
    "start-past-size": Case(plain(Range="bytes=5000-6000"), 416, "bytes */1000"),
    "end-before-start": Case(plain(Range="bytes=20-10"), 416, "bytes */1000"),
    "several-ranges": Case(plain(Range="bytes=0-5,10-15"), 416, "bytes */1000"),
    "other-unit": Case(plain(Range="items=0-5"), 416, "bytes */1000"),
    "no-numbers": Case(plain(Range="bytes=-"), 416, "bytes */1000"),
    "empty-range": Case(plain(Range=""), 416, "bytes */1000"),
    "if-none-match-hit": Case(lambda e, _m: {"If-None-Match": e}, 304),
    "if-none-match-weak-hit": Case(lambda e, _m: {"If-None-Match": f"W/{e}"}, 304),
    "if-none-match-any": Case(plain(**{"If-None-Match": "*"}), 304),
    "if-none-match-miss": Case(plain(**{"If-None-Match": '"other"'}), 200, None, slice(None)),
    "if-modified-since-now": Case(lambda _e, m: {"If-Modified-Since": m}, 304),
    "if-modified-since-before": Case(
        lambda _e, m: {"If-Modified-Since": shifted(m, -3600)}, 200, None, slice(None)
    ),
    "if-none-match-wins-over-date": Case(
        lambda _e, m: {"If-None-Match": '"other"', "If-Modified-Since": m},
        200,
        None,
        slice(None),
    ),
    "if-match-hit": Case(lambda e, _m: {"If-Match": e}, 200, None, slice(None)),
    "if-match-any": Case(plain(**{"If-Match": "*"}), 200, None, slice(None)),
    "if-match-miss": Case(plain(**{"If-Match": '"other"'}), 412),
    "if-match-weak": Case(lambda e, _m: {"If-Match": f"W/{e}"}, 412),
    "if-unmodified-since-before": Case(
        lambda _e, m: {"If-Unmodified-Since": shifted(m, -3600)}, 412
    ),
    "if-unmodified-since-now": Case(
        lambda _e, m: {"If-Unmodified-Since": m}, 200, None, slice(None)
    ),
    "if-match-failing-with-range": Case(
        plain(**{"If-Match": '"other"', "Range": "bytes=0-9"}), 412
    ),
    "if-range-date-current": Case(
        lambda _e, m: {"If-Range": m, "Range": "bytes=0-9"}, 206, "bytes 0-9/1000", slice(0, 10)
    ),
    "if-range-date-stale": Case(
        lambda _e, m: {"If-Range": shifted(m, -3600), "Range": "bytes=0-9"},
        200,
        None,
        slice(None),
    ),
    "if-range-stale-skips-a-bad-range": Case(
        lambda _e, m: {"If-Range": shifted(m, -3600), "Range": "bytes=0-5,8-9"},
        200,
        None,
        slice(None),
    ),
    "if-range-etag-is-ignored": Case(
        lambda e, _m: {"If-Range": e, "Range": "bytes=0-9"}, 206, "bytes 0-9/1000", slice(0, 10)
    ),
}


async def fetch(client: Client, method: str, path: str, headers: dict[str, str]) -> ClientResponse:
    resp = await client.request(method, path, headers=headers)
    await resp.read()
    return resp


@pytest.mark.parametrize("name", sorted(CASES))
async def test_documented_answers(site: Site, name: str) -> None:
    case = CASES[name]
    etag, modified = await site.validators("f")
    resp = await fetch(site.client, "GET", "/files/f", case.headers(etag, modified))
    assert resp.status == case.status
    assert resp.headers.get("Content-Range") == case.content_range
    assert await resp.read() == (DATA[case.body] if case.body else b"")
    assert resp.headers["Content-Type"] == "application/octet-stream"
    if case.status in (200, 206):
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert (resp.headers["ETag"], resp.headers["Last-Modified"]) == (etag, modified)


async def test_validators_are_mtime_and_size(site: Site) -> None:
    opened = await site.store.open_file("f")
    assert opened is not None
    async with opened as published:
        expected = f'"{published.modified_ns:x}-{published.size:x}"'
        seconds = -(-published.modified_ns // 1_000_000_000)  # rounded up
    resp = await fetch(site.client, "GET", "/files/f", {})
    assert resp.headers["ETag"] == expected
    assert resp.headers["Last-Modified"] == formatdate(seconds, usegmt=True)
    assert resp.headers["Content-Length"] == "1000"


async def test_head_has_the_headers_and_no_body(site: Site) -> None:
    whole = await fetch(site.client, "HEAD", "/files/f", {})
    assert (whole.status, whole.headers["Content-Length"]) == (200, "1000")
    assert await whole.read() == b""
    part = await fetch(site.client, "HEAD", "/files/f", {"Range": "bytes=-10"})
    assert (part.status, part.headers["Content-Range"]) == (206, "bytes 990-999/1000")
    assert part.headers["Content-Length"] == "10"


async def test_an_empty_file(site: Site) -> None:
    resp = await fetch(site.client, "GET", "/files/empty", {})
    assert (resp.status, await resp.read(), resp.headers["Content-Length"]) == (200, b"", "0")
    for value in ("bytes=0-", "bytes=-5"):
        resp = await fetch(site.client, "GET", "/files/empty", {"Range": value})
        assert (resp.status, resp.headers["Content-Range"]) == (416, "bytes */0")


async def test_only_published_files_are_served(site: Site) -> None:
    resp = await site.client.put(
        "/uploads/partial", data=b"x" * 10, headers={"Content-Range": "bytes 0-9/20"}
    )
    assert resp.status == 308
    for upload_id in ("partial", "nope"):
        resp = await fetch(site.client, "GET", f"/files/{upload_id}", {})
        assert resp.status == 404
        assert (await resp.json())["code"] == "file_not_found"


async def test_a_large_file_streams_in_pieces(site: Site) -> None:
    data = random.Random(2).randbytes(3 * 256 * 1024 + 17)
    await site.publish("big", data)
    resp = await fetch(site.client, "GET", "/files/big", {})
    assert await resp.read() == data
    resp = await fetch(site.client, "GET", "/files/big", {"Range": "bytes=100-600000"})
    assert await resp.read() == data[100:600001]


# --- the same answers as aiohttp's FileResponse -------------------------------------


def _answer(resp: ClientResponse, body: bytes) -> dict[str, Any]:
    return {
        "status": resp.status,
        "body": body,
        **{name: resp.headers.get(name) for name in COMPARED},
    }


async def _both(
    site: Site, method: str, upload_id: str, headers: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = await fetch(site.client, method, f"/files/{upload_id}", headers)
    theirs = await fetch(site.client, method, f"/ref/{upload_id}", headers)
    return _answer(ours, await ours.read()), _answer(theirs, await theirs.read())


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_answers_equal_aiohttps_file_response(file_site: Site, method: str) -> None:
    site = file_site
    etag, modified = await site.validators("f")
    for name, case in sorted(CASES.items()):
        ours, theirs = await _both(site, method, "f", case.headers(etag, modified))
        assert ours == theirs, name
    for value in (None, "bytes=0-", "bytes=-5"):
        headers = {"Range": value} if value else {}
        ours, theirs = await _both(site, method, "empty", headers)
        assert ours == theirs, value
