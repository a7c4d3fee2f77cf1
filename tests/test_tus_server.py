"""The tus 1.0.0 front-end in process, on `MemoryStore` and on `FileStore`: each MUST of
the protocol text (core, creation, creation-with-upload, defer-length, expiration,
checksum, termination, concatenation) as a test, and one engine with the native API."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import xxhash
from aiohttp.test_utils import TestClient
from conftest import HOST
from pytest_aiohttp import AiohttpClient

from transfer.core.errors import Code
from transfer.server.app import ServerConfig, make_app
from transfer.server.expiry import sweep_once
from transfer.server.state import STATE
from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryStore

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
V = {"Tus-Resumable": "1.0.0"}
OCTETS = {**V, "Content-Type": "application/offset+octet-stream"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(params=["memory", "file"])
def make_client(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient, tmp_path: Path
) -> MakeClient:
    """`await make_client(**ServerConfig fields)` on the parametrized store."""

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


async def create(client: Client, length: int | None, **headers: str) -> str:
    """A new upload's path (`/tus/{id}`)."""
    sizes = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    resp = await client.post("/tus/", headers={**V, **sizes, **headers})
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    assert location.startswith(f"http://{HOST}:")
    return "/" + location.split("/", 3)[3]


async def patch(client: Client, path: str, offset: int, data: bytes, **headers: str) -> Any:
    return await client.patch(
        path, data=data, headers={**OCTETS, "Upload-Offset": str(offset), **headers}
    )


async def offset_of(client: Client, path: str) -> int:
    resp = await client.head(path, headers=V)
    assert resp.status == 200
    return int(resp.headers["Upload-Offset"])


async def problem(resp: Any, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    if resp.method != "HEAD":
        assert (await resp.json())["code"] == code


async def file_of(client: Client, path: str) -> bytes:
    resp = await client.get(path.replace("/tus/", "/files/"))
    assert resp.status == 200
    return bytes(await resp.read())


# --- core --------------------------------------------------------------------------


async def test_options_announces_version_extensions_size_and_checksums(
    make_client: MakeClient,
) -> None:
    client = await make_client(max_upload=12345)
    for path in ("/tus/", "/tus/someid"):
        resp = await client.options(path)  # no Tus-Resumable: OPTIONS needs none
        assert resp.status == 204
        assert resp.headers["Tus-Version"] == "1.0.0"
        assert resp.headers["Tus-Resumable"] == "1.0.0"
        assert resp.headers["Tus-Max-Size"] == "12345"
        assert set(resp.headers["Tus-Extension"].split(",")) == {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "expiration",
            "checksum",
            "concatenation",
        }
        assert resp.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256,xxh3-128"


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
async def test_an_unsupported_version_is_412_with_tus_version_and_changes_nothing(
    client: Client, version: str | None
) -> None:
    headers = {"Tus-Resumable": version} if version else {}
    resp = await client.post("/tus/", headers={**headers, "Upload-Length": "3"})
    await problem(resp, 412, Code.TUS_VERSION_UNSUPPORTED)
    assert resp.headers["Tus-Version"] == "1.0.0"
    path = await create(client, 3)
    resp = await client.patch(
        path,
        data=b"abc",
        headers={**OCTETS, **headers, "Upload-Offset": "0"} | {"Tus-Resumable": version or ""},
    )
    await problem(resp, 412, Code.TUS_VERSION_UNSUPPORTED)
    assert await offset_of(client, path) == 0


async def test_head_reports_offset_length_metadata_and_forbids_caching(client: Client) -> None:
    meta = f"filename {b64(b'a.txt')},flag"
    path = await create(client, 10, **{"Upload-Metadata": meta})
    resp = await client.head(path, headers=V)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "0"
    assert resp.headers["Upload-Length"] == "10"
    assert resp.headers["Upload-Metadata"] == meta
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Defer-Length" not in resp.headers


async def test_head_of_an_unknown_upload_is_404_without_an_offset(client: Client) -> None:
    resp = await client.head("/tus/nope", headers=V)
    assert resp.status == 404
    assert "Upload-Offset" not in resp.headers
    assert resp.headers["Tus-Resumable"] == "1.0.0"


async def test_patches_append_and_answer_204_with_the_new_offset(client: Client) -> None:
    data = bytes(range(256)) * 40
    path = await create(client, len(data))
    resp = await patch(client, path, 0, data[:4000])
    assert resp.status == 204
    assert resp.headers["Upload-Offset"] == "4000"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Expires" in resp.headers  # expiration: on every PATCH while partial
    resp = await patch(client, path, 4000, data[4000:])
    assert resp.status == 204
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert await file_of(client, path) == data


@pytest.mark.parametrize("offset", [0, 3, 9])
async def test_a_wrong_offset_is_409_and_stores_nothing(client: Client, offset: int) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"abcdef")).status == 204
    resp = await patch(client, path, offset, b"xyz")
    await problem(resp, 409, Code.OFFSET_MISMATCH)
    assert resp.headers["Upload-Offset"] == "6"
    assert await offset_of(client, path) == 6


async def test_patch_needs_the_offset_octet_stream_content_type(client: Client) -> None:
    path = await create(client, 3)
    headers = {**V, "Upload-Offset": "0", "Content-Type": "application/octet-stream"}
    resp = await client.patch(path, data=b"abc", headers=headers)
    await problem(resp, 415, Code.UNSUPPORTED_MEDIA_TYPE)
    assert await offset_of(client, path) == 0


async def test_patch_needs_an_upload_offset(client: Client) -> None:
    path = await create(client, 3)
    resp = await client.patch(path, data=b"abc", headers=OCTETS)
    await problem(resp, 400, Code.INVALID_UPLOAD_OFFSET)


async def test_patch_of_an_unknown_upload_is_404(client: Client) -> None:
    await problem(await patch(client, "/tus/nope", 0, b"a"), 404, Code.UPLOAD_NOT_FOUND)


async def test_a_body_past_the_length_is_413_and_stores_nothing(client: Client) -> None:
    path = await create(client, 4)
    await problem(await patch(client, path, 0, b"abcde"), 413, Code.UPLOAD_LENGTH_EXCEEDED)
    assert await offset_of(client, path) == 0


async def test_a_chunked_body_is_411(client: Client) -> None:
    path = await create(client, 4)

    async def body() -> Any:
        yield b"ab"

    resp = await client.patch(path, data=body(), headers={**OCTETS, "Upload-Offset": "0"})
    await problem(resp, 411, Code.LENGTH_REQUIRED)


async def test_method_override_turns_a_post_into_patch_head_and_delete(client: Client) -> None:
    path = await create(client, 3)
    over = {**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}
    resp = await client.post(path, data=b"ab", headers=over)
    assert resp.status == 204
    assert resp.headers["Upload-Offset"] == "2"
    resp = await client.post(path, headers={**V, "X-HTTP-Method-Override": "HEAD"})
    assert resp.headers["Upload-Offset"] == "2"
    resp = await client.post(path, headers={**V, "X-HTTP-Method-Override": "DELETE"})
    assert resp.status == 204
    await problem(await client.head(path, headers=V), 404, Code.UPLOAD_NOT_FOUND)
    resp = await client.post(path, headers={**V, "X-HTTP-Method-Override": "TRACE"})
    await problem(resp, 400, Code.INVALID_METHOD_OVERRIDE)


async def test_other_methods_are_405_with_allow(client: Client) -> None:
    resp = await client.put("/tus/someid", headers=V)
    await problem(resp, 405, Code.METHOD_NOT_ALLOWED)
    assert set(resp.headers["Allow"].split(", ")) == {"HEAD", "PATCH", "DELETE", "OPTIONS"}


# --- creation, creation-with-upload, creation-defer-length, expiration -----------------


async def test_creation_answers_201_location_and_expiry(client: Client) -> None:
    resp = await client.post("/tus/", headers={**V, "Upload-Length": "5"})
    assert resp.status == 201
    assert resp.headers["Location"].rsplit("/", 2)[1] == "tus"
    assert resp.headers["Upload-Offset"] == "0"
    assert resp.headers["Upload-Expires"].endswith(" GMT")


async def test_creation_refusals(make_client: MakeClient) -> None:
    client = await make_client(max_upload=100, max_partial=50)
    cases: list[tuple[Mapping[str, str], int, str]] = [
        ({"Upload-Length": "101"}, 413, Code.UPLOAD_TOO_LARGE),
        ({"Upload-Length": "51"}, 507, Code.PARTIAL_QUOTA_EXCEEDED),
        ({}, 400, Code.INVALID_UPLOAD_LENGTH),
        ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, 400, Code.INVALID_UPLOAD_LENGTH),
        ({"Upload-Length": "5", "Upload-Metadata": "a !"}, 400, Code.INVALID_METADATA),
        ({"Upload-Length": "5", "Upload-Concat": "whole"}, 400, Code.INVALID_UPLOAD_CONCAT),
        ({"Upload-Length": "5", "Repr-Digest": "sha-256=:AA==:"}, 400, Code.INVALID_DIGEST),
    ]
    for headers, status, code in cases:
        await problem(await client.post("/tus/", headers={**V, **headers}), status, code)


async def test_creation_with_upload_stores_the_body_and_answers_the_offset(
    client: Client,
) -> None:
    resp = await client.post("/tus/", data=b"hello", headers={**OCTETS, "Upload-Length": "11"})
    assert resp.status == 201
    assert resp.headers["Upload-Offset"] == "5"
    path = "/" + resp.headers["Location"].split("/", 3)[3]
    assert (await patch(client, path, 5, b" world")).status == 204
    assert await file_of(client, path) == b"hello world"


async def test_creation_with_upload_of_the_whole_file_publishes_it(client: Client) -> None:
    resp = await client.post("/tus/", data=b"all", headers={**OCTETS, "Upload-Length": "3"})
    assert resp.headers["Upload-Offset"] == "3"
    assert "Upload-Expires" not in resp.headers  # complete: it never expires
    assert await file_of(client, "/" + resp.headers["Location"].split("/", 3)[3]) == b"all"


async def test_an_empty_upload_is_published_at_creation(client: Client) -> None:
    path = await create(client, 0)
    assert await file_of(client, path) == b""


async def test_deferred_length_is_announced_until_a_patch_sets_it(client: Client) -> None:
    path = await create(client, None)
    resp = await client.head(path, headers=V)
    assert resp.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in resp.headers
    assert (await patch(client, path, 0, b"abc")).status == 204
    resp = await patch(client, path, 3, b"de", **{"Upload-Length": "5"})
    assert resp.status == 204
    assert await file_of(client, path) == b"abcde"
    resp = await client.head(path, headers=V)
    assert resp.headers["Upload-Length"] == "5"
    assert "Upload-Defer-Length" not in resp.headers


async def test_a_length_once_set_never_changes(client: Client) -> None:
    path = await create(client, None)
    assert (await patch(client, path, 0, b"ab", **{"Upload-Length": "4"})).status == 204
    resp = await patch(client, path, 2, b"c", **{"Upload-Length": "5"})
    await problem(resp, 409, Code.TOTAL_MISMATCH)
    assert resp.headers["Upload-Offset"] == "2"


async def test_expired_uploads_answer_404(make_client: MakeClient) -> None:
    now = [1000.0]
    client = await make_client(partial_ttl=60.0, clock=lambda: now[0])
    path = await create(client, 10)
    state = client.app[STATE] if client.app is not None else None
    assert state is not None
    now[0] += 10**10  # far past any file modification time
    removed = await sweep_once(
        state.store, state.admission.locks, state.metrics, ttl=60.0, now=lambda: now[0]
    )
    assert removed == [path.rsplit("/", 1)[1]]
    await problem(await client.head(path, headers=V), 404, Code.UPLOAD_NOT_FOUND)


# --- checksum ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        ("sha1", lambda d: hashlib.sha1(d).digest()),
        ("md5", lambda d: hashlib.md5(d).digest()),
        ("sha256", lambda d: hashlib.sha256(d).digest()),
        ("xxh3-128", xxhash.xxh3_128_digest),
    ],
)
async def test_checksums_verify_each_patch(
    client: Client, name: str, digest: Callable[[bytes], bytes]
) -> None:
    path = await create(client, 6)
    bad = {"Upload-Checksum": f"{name} {b64(digest(b'xyz'))}"}
    resp = await patch(client, path, 0, b"abc", **bad)
    await problem(resp, 460, Code.CHECKSUM_MISMATCH)
    assert resp.reason == Code.CHECKSUM_MISMATCH.problem_title  # not an empty phrase
    assert await offset_of(client, path) == 0  # a mismatch appends nothing
    good = {"Upload-Checksum": f"{name} {b64(digest(b'abc'))}"}
    assert (await patch(client, path, 0, b"abc", **good)).status == 204
    assert await offset_of(client, path) == 3


async def test_an_unsupported_checksum_algorithm_is_400_and_stores_nothing(
    client: Client,
) -> None:
    path = await create(client, 3)
    resp = await patch(client, path, 0, b"abc", **{"Upload-Checksum": "crc32 AAAAAA=="})
    await problem(resp, 400, Code.CHECKSUM_ALGORITHM_UNSUPPORTED)
    assert await offset_of(client, path) == 0


async def test_a_checksum_mismatch_is_counted_as_a_chunk_mismatch(client: Client) -> None:
    path = await create(client, 3)
    bad = {"Upload-Checksum": f"sha1 {b64(hashlib.sha1(b'no').digest())}"}
    await patch(client, path, 0, b"abc", **bad)
    text = await (await client.get("/metrics")).text()
    assert 'transfer_digest_mismatches_total{kind="chunk"} 1' in text


# --- termination ---------------------------------------------------------------------


async def test_termination_removes_a_partial_upload(client: Client) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"abc")).status == 204
    resp = await client.delete(path, headers=V)
    assert resp.status == 204
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    await problem(await client.head(path, headers=V), 404, Code.UPLOAD_NOT_FOUND)
    await problem(await patch(client, path, 3, b"d"), 404, Code.UPLOAD_NOT_FOUND)


async def test_a_published_upload_is_never_removed(client: Client) -> None:
    path = await create(client, 1)
    await patch(client, path, 0, b"a")
    await problem(await client.delete(path, headers=V), 409, Code.UPLOAD_COMPLETE)
    assert await file_of(client, path) == b"a"


# --- concatenation -------------------------------------------------------------------


async def partial(client: Client, data: bytes) -> str:
    path = await create(client, len(data), **{"Upload-Concat": "partial"})
    if data:
        assert (await patch(client, path, 0, data)).status == 204
    return path


async def test_a_final_upload_is_its_partials_in_order(client: Client) -> None:
    parts = [b"first,", b"", b"second,", b"third"]
    paths = [await partial(client, p) for p in parts]
    head = await client.head(paths[0], headers=V)
    assert head.headers["Upload-Concat"] == "partial"
    # Absolute and relative URLs, one partial twice.
    urls = [f"http://{HOST}{paths[0]}", *paths[1:], paths[0]]
    concat = "final;" + " ".join(urls)
    meta = f"filename {b64(b'joined.txt')}"
    resp = await client.post(
        "/tus/", headers={**V, "Upload-Concat": concat, "Upload-Metadata": meta}
    )
    assert resp.status == 201, await resp.text()
    final = "/" + resp.headers["Location"].split("/", 3)[3]
    expected = b"".join(parts) + parts[0]
    assert await file_of(client, final) == expected
    head = await client.head(final, headers=V)
    assert head.headers["Upload-Concat"] == concat
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(expected))
    record = await (await client.get(final.replace("/tus/", "/uploads/"))).json()
    assert record["name"] == "joined.txt"
    assert record["digests"]["sha-256"] == hashlib.sha256(expected).hexdigest()
    await problem(await patch(client, final, len(expected), b""), 403, Code.UPLOAD_IS_FINAL)


async def test_final_upload_refusals(client: Client) -> None:
    done = await partial(client, b"abc")
    unfinished = await create(client, 5, **{"Upload-Concat": "partial"})
    plain = await create(client, 1)
    await patch(client, plain, 0, b"x")
    cases = [
        (f"final;{done} {unfinished}", 400, Code.CONCAT_PARTIAL_INCOMPLETE),
        (f"final;{done} {plain}", 400, Code.CONCAT_NOT_PARTIAL),
        (f"final;{done} /tus/nope", 404, Code.UPLOAD_NOT_FOUND),
        ("final;/uploads/x", 400, Code.INVALID_UPLOAD_CONCAT),
    ]
    for concat, status, code in cases:
        resp = await client.post("/tus/", headers={**V, "Upload-Concat": concat})
        await problem(resp, status, code)
    resp = await client.post(
        "/tus/", headers={**V, "Upload-Concat": f"final;{done}", "Upload-Length": "3"}
    )
    await problem(resp, 400, Code.INVALID_UPLOAD_LENGTH)


async def test_a_final_upload_past_max_upload_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_upload=5)
    paths = [await partial(client, b"abc"), await partial(client, b"def")]
    resp = await client.post("/tus/", headers={**V, "Upload-Concat": "final;" + " ".join(paths)})
    await problem(resp, 413, Code.UPLOAD_TOO_LARGE)


# --- one engine ------------------------------------------------------------------------


async def test_a_tus_upload_is_an_upload_like_any_other(client: Client) -> None:
    data = b"one engine\n" * 100
    path = await create(client, len(data), **{"Upload-Metadata": f"filename {b64(b'e.txt')}"})
    upload_id = path.rsplit("/", 1)[1]
    await patch(client, path, 0, data[:500])
    resp = await client.head(f"/uploads/{upload_id}")
    assert resp.headers["Upload-Offset"] == "500"
    await patch(client, path, 500, data[500:])
    resp = await client.head(f"/uploads/{upload_id}")
    assert resp.headers["Upload-Complete"] == "?1"
    sha = b64(hashlib.sha256(data).digest())
    xxh = b64(xxhash.xxh3_128_digest(data))
    assert resp.headers["Repr-Digest"] == f"sha-256=:{sha}:, xxh3-128=:{xxh}:"
    record = await (await client.get(f"/uploads/{upload_id}")).json()
    assert record["name"] == "e.txt"
    assert record["metadata"] == {"filename": "e.txt"}
    assert "md5Hash" not in record
    text = await (await client.get("/metrics")).text()
    assert 'transfer_uploads_completed_total{protocol="tus"} 1' in text
    assert f'transfer_bytes_received_total{{protocol="tus"}} {len(data)}' in text


async def test_a_declared_repr_digest_is_verified_at_completion(client: Client) -> None:
    wrong = f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:"
    path = await create(client, 3, **{"Repr-Digest": wrong})
    await problem(await patch(client, path, 0, b"abc"), 400, Code.REPR_DIGEST_MISMATCH)
    assert await offset_of(client, path) == 0  # reset: send it again
    right = f"sha-256=:{b64(hashlib.sha256(b'abc').digest())}:"
    path = await create(client, 3, **{"Repr-Digest": right})
    assert (await patch(client, path, 0, b"abc")).status == 204


async def test_no_tus_means_no_tus_routes(make_client: MakeClient) -> None:
    client = await make_client(tus_path=None)
    resp = await client.post("/tus/", headers={**V, "Upload-Length": "1"})
    assert resp.status == 404


async def test_another_base_path(make_client: MakeClient) -> None:
    client = await make_client(tus_path="/files-tus/v1/")
    resp = await client.post("/files-tus/v1/", headers={**V, "Upload-Length": "1"})
    assert resp.status == 201
    assert "/files-tus/v1/" in resp.headers["Location"]
    assert (await client.post("/tus/", headers=V)).status == 404
