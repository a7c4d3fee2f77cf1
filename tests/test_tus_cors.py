"""CORS (`server/cors.py`) on every upload endpoint, and the new flags' validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import HOST
from pytest_aiohttp import AiohttpClient

from transfer.core.errors import Code, ConfigError
from transfer.server.app import ServerConfig, make_app
from transfer.server.cors import EXPOSED, cors_origins
from transfer.server.tus import tus_base_path
from transfer.store.memory import MemoryStore

Client = TestClient[Any, Any]
APP = "https://app.example"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "PATCH"}


async def make(aiohttp_client: AiohttpClient, **config: Any) -> Client:
    app = make_app(MemoryStore(), ServerConfig(**config))
    return await aiohttp_client(app, server_kwargs={"host": HOST})


@pytest.mark.parametrize("path", ["/tus/", "/tus/abc", "/uploads", "/uploads/abc", "/files/abc"])
async def test_a_preflight_from_an_allowed_origin_is_answered(
    aiohttp_client: AiohttpClient, path: str
) -> None:
    client = await make(aiohttp_client, cors_origins=(APP,), token="t" * 16)
    asked = "tus-resumable, upload-offset, content-type, authorization"
    resp = await client.options(
        path, headers={**PREFLIGHT, "Access-Control-Request-Headers": asked}
    )
    assert resp.status == 204  # before the bearer check: a preflight carries no token
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == asked
    assert resp.headers["Vary"] == "Origin"


async def test_a_preflight_from_another_origin_is_403(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client, cors_origins=(APP,))
    resp = await client.options("/tus/", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert resp.status == 403
    assert (await resp.json())["code"] == Code.ORIGIN_NOT_ALLOWED
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_answers_and_refusals_expose_the_upload_headers(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await make(aiohttp_client, cors_origins=(APP,))
    tus = {"Tus-Resumable": "1.0.0", "Origin": APP}
    created = await client.post("/tus/", headers={**tus, "Upload-Length": "3"})
    refused = await client.head("/uploads/nope", headers={"Origin": APP})
    for resp in (created, refused):
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        for name in ("Location", "Upload-Offset", "Upload-Length", "Upload-Expires"):
            assert name in exposed
        assert {"Upload-Complete", "Repr-Digest", "Tus-Resumable", "Tus-Version"} <= exposed
    assert set(EXPOSED) >= {"Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm"}


async def test_star_allows_any_origin(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client, cors_origins=("*",))
    resp = await client.options("/uploads", headers={**PREFLIGHT, "Origin": "http://x.test"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_other_origins_and_other_paths_get_no_cors_headers(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await make(aiohttp_client, cors_origins=(APP,))
    resp = await client.get("/uploads/abc", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/healthz", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_without_cors_origins_nothing_changes(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    resp = await client.options("/uploads", headers=PREFLIGHT)
    assert resp.status == 405
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_cors_origin_values() -> None:
    assert cors_origins(["*", "https://a.example/", "http://b.test:8080"]) == (
        "*",
        "https://a.example",
        "http://b.test:8080",
    )
    for bad in ("a.example", "ftp://a.example", "https://a.example/path", "https://"):
        with pytest.raises(ConfigError):
            cors_origins([bad])


def test_tus_path_values() -> None:
    assert tus_base_path("/tus") == "/tus/"
    assert tus_base_path("/api/tus/") == "/api/tus/"
    for bad in ("tus", "/", "/uploads/", "/files/tus", "/a b/", "/tus/../"):
        with pytest.raises(ConfigError):
            tus_base_path(bad)


def test_flags_reach_the_config(tmp_path: Path) -> None:
    from transfer.cli import build_parser
    from transfer.cli.serve import _config

    base = ["serve", "--data-dir", str(tmp_path)]
    args = build_parser().parse_args([*base, "--tus-path", "/t", "--cors-origin", APP])
    config = _config(args)
    assert (config.tus_path, config.cors_origins) == ("/t/", (APP,))
    config = _config(build_parser().parse_args([*base, "--no-tus"]))
    assert (config.tus_path, config.cors_origins) == (None, ())
    assert _config(build_parser().parse_args(base)).tus_path == "/tus/"
