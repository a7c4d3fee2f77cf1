"""The IETF resumable-upload front-end in process, on `MemoryStore` and `FileStore`: the
draft's MUSTs as tests, one engine with the native API, and the 104 on a raw socket."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import HOST, digest_field
from pytest_aiohttp import AiohttpClient

from transfer.core.errors import Code, ConfigError
from transfer.core.ietf import PARTIAL_UPLOAD, PROBLEM_TYPES
from transfer.server.app import ServerConfig, make_app
from transfer.server.cors import EXPOSED
from transfer.server.ietf_request import ietf_base_path
from transfer.server.state import STATE
from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryStore

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
V8 = {"Upload-Draft-Interop-Version": "8"}
APPEND = {**V8, "Content-Type": PARTIAL_UPLOAD}


@pytest.fixture(params=["memory", "file"])
def make_client(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient, tmp_path: Path
) -> MakeClient:
    async def make(**config: Any) -> Client:
        if request.param == "memory":
            store: Any = MemoryStore()
        else:
            store = FileStore(tmp_path / "data")
            store.open()
        return await aiohttp_client(
            make_app(store, ServerConfig(**config)), server_kwargs={"host": HOST}
        )

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def create(
    client: Client,
    data: bytes = b"",
    *,
    complete: bool = False,
    headers: Mapping[str, str] | None = None,
) -> str:
    resp = await client.post(
        "/resumable/",
        data=data,
        headers={**V8, "Upload-Complete": "?1" if complete else "?0", **(headers or {})},
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Upload-Offset"] == str(len(data))
    return resp.headers["Location"].rsplit("/", 1)[1]


async def append(
    client: Client, upload_id: str, offset: int, data: bytes, complete: bool, **headers: str
) -> Any:
    return await client.patch(
        f"/resumable/{upload_id}",
        data=data,
        headers={
            **APPEND,
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1" if complete else "?0",
            **headers,
        },
    )


async def test_careful_creation_then_appends_publish_one_engine_upload(client: Client) -> None:
    resp = await client.post(
        "/resumable/", headers={**V8, "Upload-Complete": "?0", "Upload-Length": "11"}
    )
    assert resp.status == 201
    assert resp.headers["Upload-Complete"] == "?0"
    assert resp.headers["Upload-Draft-Interop-Version"] == "8"
    assert resp.headers["Upload-Limit"].startswith("max-size=")
    upload_id = resp.headers["Location"].rsplit("/", 1)[1]
    head = await client.head(f"/resumable/{upload_id}", headers=V8)
    assert head.status == 204
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Complete"] == "?0"
    assert head.headers["Upload-Length"] == "11"
    assert head.headers["Cache-Control"] == "no-store"
    assert "max-age=" in head.headers["Upload-Limit"]
    first = await append(client, upload_id, 0, b"hello ", complete=False)
    assert (first.status, first.headers["Upload-Complete"]) == (204, "?0")
    assert first.headers["Upload-Offset"] == "6"
    last = await append(client, upload_id, 6, b"world", complete=True)
    assert (last.status, last.headers["Upload-Complete"]) == (200, "?1")
    record = await last.json()
    assert record["digests"]["sha-256"] == hashlib.sha256(b"hello world").hexdigest()
    native = await client.head(f"/uploads/{upload_id}")
    assert native.headers["Upload-Complete"] == "?1"
    assert await (await client.get(f"/files/{upload_id}")).read() == b"hello world"
    metrics = await (await client.get("/metrics")).text()
    assert 'transfer_bytes_received_total{protocol="ietf"} 11' in metrics


async def test_creation_with_the_whole_file_answers_the_record(client: Client) -> None:
    resp = await client.post(
        "/resumable/",
        data=b"abc",
        headers={
            **V8,
            "Upload-Complete": "?1",
            "Content-Disposition": 'inline; filename="a b.txt"',
            "Content-Type": "text/plain",
        },
    )
    assert resp.status == 201
    assert resp.headers["Upload-Complete"] == "?1"
    record = await resp.json()
    assert (record["name"], record["size"], record["metadata"]) == (
        "a b.txt",
        3,
        {"filetype": "text/plain"},
    )
    assert "sha-256" in resp.headers["Repr-Digest"]


async def test_an_empty_file_in_one_request(client: Client) -> None:
    upload_id = await create(client, complete=True)
    assert await (await client.get(f"/files/{upload_id}")).read() == b""


async def test_bytes_reaching_the_length_wait_for_upload_complete(client: Client) -> None:
    upload_id = await create(client, b"abc", headers={"Upload-Length": "3"})
    assert (await client.get(f"/files/{upload_id}")).status == 404  # ?0: not complete yet
    done = await append(client, upload_id, 3, b"", complete=True)
    assert done.status == 200
    assert await (await client.get(f"/files/{upload_id}")).read() == b"abc"


async def test_an_append_at_the_wrong_offset_is_409_with_the_right_offset(client: Client) -> None:
    upload_id = await create(client, b"abc")
    resp = await append(client, upload_id, 0, b"xyz", complete=False)
    assert resp.status == 409
    assert resp.headers["Upload-Offset"] == "3"
    assert resp.headers["Upload-Complete"] == "?0"
    problem = await resp.json()
    assert problem["code"] == Code.OFFSET_MISMATCH
    assert problem["type"] == PROBLEM_TYPES + "mismatching-upload-offset"
    assert (problem["expected-offset"], problem["provided-offset"]) == (3, 0)


@pytest.mark.parametrize("value", [None, "yes", "1"])
async def test_an_append_must_carry_upload_complete(client: Client, value: str | None) -> None:
    upload_id = await create(client)
    headers = {**APPEND, "Upload-Offset": "0"}
    if value is not None:
        headers["Upload-Complete"] = value
    resp = await client.patch(f"/resumable/{upload_id}", data=b"x", headers=headers)
    assert resp.status == 400
    assert (await resp.json())["code"] == Code.UPLOAD_COMPLETE_REQUIRED
    head = await client.head(f"/resumable/{upload_id}", headers=V8)
    assert head.headers["Upload-Offset"] == "0"  # nothing appended


async def test_a_creation_must_carry_upload_complete(client: Client) -> None:
    resp = await client.post("/resumable/", data=b"x", headers=V8)
    assert resp.status == 400
    assert (await resp.json())["code"] == Code.UPLOAD_COMPLETE_REQUIRED


async def test_partial_upload_media_type_from_interop_6_on(client: Client) -> None:
    upload_id = await create(client)
    for version, status in (("8", 415), ("6", 415), ("5", 204)):
        resp = await append(
            client,
            upload_id,
            0,
            b"",
            complete=False,
            **{"Content-Type": "application/octet-stream", "Upload-Draft-Interop-Version": version},
        )
        assert resp.status == status, version
        assert resp.headers["Upload-Draft-Interop-Version"] == version


async def test_an_unknown_interop_version_is_refused(client: Client) -> None:
    resp = await client.post(
        "/resumable/", headers={"Upload-Draft-Interop-Version": "7", "Upload-Complete": "?0"}
    )
    assert resp.status == 400
    assert (await resp.json())["code"] == Code.INTEROP_VERSION_UNSUPPORTED


async def test_inconsistent_lengths_are_refused_before_a_byte_is_stored(client: Client) -> None:
    upload_id = await create(client, headers={"Upload-Length": "10"})
    short = await append(client, upload_id, 0, b"12345678", complete=True)
    assert short.status == 400
    problem = await short.json()
    assert problem["code"] == Code.INCONSISTENT_UPLOAD_LENGTH
    assert problem["type"] == PROBLEM_TYPES + "inconsistent-upload-length"
    past = await append(client, upload_id, 0, b"x" * 11, complete=False)
    assert past.status == 413
    assert (await past.json())["code"] == Code.UPLOAD_LENGTH_EXCEEDED
    head = await client.head(f"/resumable/{upload_id}", headers=V8)
    assert head.headers["Upload-Offset"] == "0"


async def test_an_invalid_upload_length_is_ignored(client: Client) -> None:
    upload_id = await create(client, headers={"Upload-Length": "-5"})
    head = await client.head(f"/resumable/{upload_id}", headers=V8)
    assert "Upload-Length" not in head.headers


async def test_a_length_told_late_by_upload_complete_is_recorded(client: Client) -> None:
    upload_id = await create(client, b"ab")
    done = await append(client, upload_id, 2, b"cd", complete=True)
    assert done.status == 200
    assert (await done.json())["size"] == 4


async def test_repr_digest_is_verified_and_a_mismatch_never_lowers_the_offset(
    client: Client,
) -> None:
    good = await create(
        client, b"abc", complete=True, headers={"Repr-Digest": digest_field(b"abc")}
    )
    assert await (await client.get(f"/files/{good}")).read() == b"abc"
    resp = await client.post(
        "/resumable/",
        data=b"abd",
        headers={**V8, "Upload-Complete": "?1", "Repr-Digest": digest_field(b"abc")},
    )
    assert resp.status == 400
    assert (await resp.json())["code"] == Code.REPR_DIGEST_MISMATCH
    assert resp.headers["Upload-Complete"] == "?1"  # the data all arrived: resuming won't help
    # The engine reset it to offset 0; the draft forbids a lower offset, so it is gone.
    assert await client.app[STATE].store.partials() == []
    metrics = await (await client.get("/metrics")).text()
    assert 'transfer_uploads_completed_total{protocol="ietf"} 1' in metrics


async def test_cancellation(client: Client) -> None:
    upload_id = await create(client, b"abc")
    resp = await client.delete(f"/resumable/{upload_id}", headers=V8)
    assert resp.status == 204
    assert (await client.head(f"/resumable/{upload_id}", headers=V8)).status == 404


async def test_a_completed_upload_replays_its_answer_and_takes_no_bytes(client: Client) -> None:
    upload_id = await create(client, b"abc", complete=True)
    replay = await append(client, upload_id, 3, b"", complete=True)
    assert replay.status == 200
    assert (await replay.json())["size"] == 3
    more = await append(client, upload_id, 3, b"d", complete=True)
    assert more.status == 409
    assert (await more.json())["code"] == Code.UPLOAD_COMPLETE
    head = await client.head(f"/resumable/{upload_id}", headers=V8)
    assert (head.headers["Upload-Complete"], head.headers["Upload-Offset"]) == ("?1", "3")


async def test_options_announces_the_limits(client: Client) -> None:
    resp = await client.options("/resumable/", headers=V8)
    assert resp.status == 204
    assert resp.headers["Upload-Limit"] == "max-size=68719476736, max-append-size=67108864"
    old = await client.options("/resumable/", headers={"Upload-Draft-Interop-Version": "5"})
    assert "Upload-Limit" not in old.headers


async def test_refusals_of_the_request_itself(client: Client) -> None:
    concat = await client.post(
        "/resumable/", headers={**V8, "Upload-Complete": "?0", "Upload-Concat": "partial"}
    )
    assert (await concat.json())["code"] == Code.UPLOAD_CONCAT_UNSUPPORTED
    upload_id = await create(client)

    async def chunked() -> Any:
        yield b"abc"

    resp = await client.patch(
        f"/resumable/{upload_id}",
        data=chunked(),
        headers={**APPEND, "Upload-Offset": "0", "Upload-Complete": "?0"},
    )
    assert resp.status == 411
    put = await client.put(f"/resumable/{upload_id}", headers=V8)
    assert put.status == 405


async def test_max_append_size_is_enforced(make_client: MakeClient) -> None:
    client = await make_client(max_chunk=4, max_upload=100)
    resp = await client.post("/resumable/", data=b"12345", headers={**V8, "Upload-Complete": "?1"})
    assert resp.status == 413
    assert (await resp.json())["code"] == Code.CHUNK_TOO_LARGE
    too_big = await client.post(
        "/resumable/", headers={**V8, "Upload-Complete": "?0", "Upload-Length": "101"}
    )
    assert (await too_big.json())["code"] == Code.UPLOAD_TOO_LARGE


async def test_switched_off(make_client: MakeClient) -> None:
    client = await make_client(ietf_path=None)
    assert (await client.post("/resumable/", headers=V8)).status == 404


async def test_cors_covers_the_endpoints_and_exposes_the_headers(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=("https://app.example",))
    origin = {"Origin": "https://app.example"}
    preflight = await client.options(
        "/resumable/", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    resp = await client.post("/resumable/", headers={**V8, **origin, "Upload-Complete": "?0"})
    exposed = resp.headers["Access-Control-Expose-Headers"]
    for name in (
        "Location",
        "Upload-Offset",
        "Upload-Complete",
        "Upload-Limit",
        "Upload-Draft-Interop-Version",
        "Upload-Length",
    ):
        assert name in EXPOSED
        assert name in exposed


def test_the_base_path_flag() -> None:
    assert ietf_base_path("/up", tus_path="/tus/") == "/up/"
    for bad in ("up/", "/tus/", "/uploads/", "/a/../b/"):
        with pytest.raises(ConfigError):
            ietf_base_path(bad, tus_path="/tus/")


# --- 104 (Upload Resumption Supported) on a raw socket ---------------------------------


async def raw(client: Client, head: str, body: bytes = b"") -> bytes:
    """Send one request (`Connection: close`) and read every byte of the answer."""
    reader, writer = await asyncio.open_connection(HOST, client.server.port)
    request = head.replace("\n", "\r\n") + "Connection: close\r\n"
    request += f"Content-Length: {len(body)}\r\n\r\n"
    writer.write(request.encode() + body)
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    return answer


async def test_104_precedes_the_final_answer_on_http_1_1(client: Client) -> None:
    answer = await raw(
        client,
        "POST /resumable/ HTTP/1.1\nHost: x\nUpload-Draft-Interop-Version: 6\n"
        "Upload-Complete: ?1\n",
        b"hello",
    )
    interim, _, final = answer.partition(b"\r\n\r\n")
    lines = interim.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 104 Upload Resumption Supported"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Upload-Draft-Interop-Version"] == "6"
    assert fields["Upload-Limit"].startswith("max-size=")
    assert final.startswith(b"HTTP/1.1 201 Created\r\n")
    final_location = [ln for ln in final.split(b"\r\n") if ln.startswith(b"Location: ")]
    assert final_location == [f"Location: {fields['Location']}".encode()]  # identical
    assert answer.count(b" 104 ") == 1


async def test_100_continue_is_not_omitted_for_the_104(client: Client) -> None:
    answer = await raw(
        client,
        "POST /resumable/ HTTP/1.1\nHost: x\nUpload-Draft-Interop-Version: 8\n"
        "Upload-Complete: ?1\nExpect: 100-continue\n",
        b"hello",
    )
    statuses = [ln for ln in answer.split(b"\r\n") if ln.startswith(b"HTTP/1.1 ")]
    assert statuses == [
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 104 Upload Resumption Supported",
        b"HTTP/1.1 201 Created",
    ]


@pytest.mark.parametrize(
    "head",
    [
        "POST /resumable/ HTTP/1.0\nHost: x\nUpload-Draft-Interop-Version: 8\n",
        "POST /resumable/ HTTP/1.1\nHost: x\n",  # no interop version: MUST NOT send 104
    ],
    ids=["http-1.0", "no-interop-version"],
)
async def test_no_104_when_the_client_cannot_take_it(client: Client, head: str) -> None:
    answer = await raw(client, head + "Upload-Complete: ?1\n", b"hello")
    assert b" 104 " not in answer
    assert answer.split(b"\r\n", 1)[0].endswith(b"201 Created")
