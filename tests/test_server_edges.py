"""Edge cases of the server: bugs surface as problem+json, declarations that conflict with
stored bytes, a store left half-created by a crash, and bearer-token authentication."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import xxhash
from aiohttp import web
from conftest import HOST, MakeServed, Served, content_range, digest_field
from pytest_aiohttp import AiohttpClient

from transfer.cli.logs import redactor
from transfer.core.protocol import format_upload_metadata
from transfer.server.app import ServerConfig, make_app
from transfer.server.auth import token_matches
from transfer.store.filestore import FileStore, UploadInfo

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


# --- creating an upload with its first PUT ------------------------------------------


async def test_a_first_put_with_upload_metadata_creates_the_upload_in_full(
    served: Served,
) -> None:
    data = b"int16 samples!"
    headers = {
        "Content-Range": content_range(0, data, len(data)),
        "Upload-Metadata": format_upload_metadata("a.bin", {"dtype": "int16"}),
        "Repr-Digest": digest_field(data),
    }
    resp = await served.client.put("/uploads/u9", data=data, headers=headers)

    assert resp.status == 200
    record = await resp.json()
    assert record["name"] == "a.bin"
    assert record["metadata"] == {"dtype": "int16"}
    assert record["digests"]["xxh3-128"] == xxhash.xxh3_128_hexdigest(data)
    assert "md5Hash" not in record  # a declared digest spares the MD5 pass
    assert (served.data_dir / "files" / "u9").read_bytes() == data


async def test_a_wrong_repr_digest_on_a_creating_put_publishes_nothing(served: Served) -> None:
    data = b"payload"
    headers = {
        "Content-Range": content_range(0, data, len(data)),
        "Upload-Metadata": format_upload_metadata("a.bin", {}),
        "Repr-Digest": digest_field(b"something else"),
    }
    resp = await served.client.put("/uploads/u8", data=data, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["code"] == "repr_digest_mismatch"
    assert not (served.data_dir / "files" / "u8").exists()


@pytest.mark.parametrize(
    "value",
    ["name", "name !!!", "na me " + base64.b64encode(b"x").decode(), "name //8=", "a YQ==,a YQ=="],
)
async def test_bad_upload_metadata_is_refused_and_creates_nothing(
    served: Served, value: str
) -> None:
    headers = {"Content-Range": "bytes 0-0/1", "Upload-Metadata": value}
    resp = await served.client.put("/uploads/u7", data=b"x", headers=headers)
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_metadata"
    assert (await served.client.head("/uploads/u7")).status == 404


def test_the_log_redactor_hides_a_token_anywhere_in_an_event() -> None:
    redact = redactor([TOKEN, ""])
    event = redact(
        None,
        "error",
        {"event": f"bad header Authorization: Bearer {TOKEN}\x01", "exception": f"...{TOKEN}..."},
    )
    assert isinstance(event, dict)
    assert TOKEN not in json.dumps(event)
    assert "[redacted]" in event["event"] and "[redacted]" in event["exception"]
