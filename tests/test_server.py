"""The server over real HTTP on 127.0.0.1 with real files in a temporary data dir.

Every protocol case of the resumable-upload contract (creation, chunks, finalization,
status queries, overlaps, gaps, digests, HEAD/GET/DELETE, file download), the limits
(idle timeout, max_active, max_chunk, max_upload), and a catalogue of bad inputs, each
refused with its exact status and stable problem `code` while the upload it aimed at is
left exactly as it was. Nothing partial may ever appear in `files/`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import xxhash
from aiohttp import ClientResponse
from conftest import HOST, MakeServed, Served, chunks_of, content_range, digest_field, raw_digest
from yarl import URL

from transfer.testing.polling import wait_until_async

pytestmark = pytest.mark.timeout(30)

PROBLEM = "application/problem+json"
DEADLINE = 5.0


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# --- helpers -------------------------------------------------------------------------


async def put(
    served: Served,
    upload_id: str,
    body: bytes | AsyncIterator[bytes] = b"",
    rng: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ClientResponse:
    all_headers = dict(headers or {})
    if rng is not None:
        all_headers["Content-Range"] = rng
    resp = await served.client.put(f"/uploads/{upload_id}", data=body, headers=all_headers)
    await resp.read()
    return resp


async def put_chunk(
    served: Served,
    upload_id: str,
    data: bytes,
    start: int,
    total: int | None,
    *,
    headers: Mapping[str, str] | None = None,
) -> ClientResponse:
    return await put(served, upload_id, data, content_range(start, data, total), headers)


async def create(served: Served, doc: Mapping[str, Any], **headers: str) -> ClientResponse:
    resp = await served.client.post("/uploads", json=doc, headers=headers)
    await resp.read()
    return resp


async def expect_problem(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    body = json.loads(await resp.read())
    assert (resp.status, body.get("code")) == (status, code), body
    assert resp.content_type == PROBLEM
    assert body["status"] == status
    assert body["type"] == f"urn:transfer:error:{code}"
    return dict(body)


async def offset_of(served: Served, upload_id: str) -> int:
    resp = await served.client.head(f"/uploads/{upload_id}")
    assert resp.status == 200
    return int(resp.headers["Upload-Offset"])


async def metric(served: Served, name: str, **labels: str) -> float:
    resp = await served.client.get("/metrics")
    assert resp.status == 200
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{inner}}}" if labels else name
    for line in (await resp.text()).splitlines():
        key, _, value = line.rpartition(" ")
        if key == series:
            return float(value)
    return 0.0


async def assert_healthy(served: Served) -> None:
    resp = await served.client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


def part_bytes(served: Served, upload_id: str) -> bytes:
    return (served.uploads_dir / f"{upload_id}.part").read_bytes()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- creation ------------------------------------------------------------------------


async def test_create_answers_with_an_absolute_location(served: Served) -> None:
    doc = {"id": "up1", "name": "a.bin", "size": 10, "metadata": {"k": "v"}}
    resp = await create(served, doc)

    assert resp.status == 200
    location = URL(resp.headers["Location"])
    assert location.is_absolute()
    assert (location.host, location.port) == (HOST, served.port)
    assert (location.path, location.query_string) == ("/uploads/up1", "")
    assert await resp.json() == {**doc, "offset": 0, "complete": False}
    assert part_bytes(served, "up1") == b""
    assert served.published() == []


async def test_create_is_idempotent_and_never_resets_stored_bytes(served: Served) -> None:
    doc = {"id": "up1", "name": "a.bin", "size": 10}
    first = await create(served, doc)
    again = await create(served, doc)
    assert (first.status, again.status) == (200, 200)
    assert await first.json() == await again.json()

    assert (await put_chunk(served, "up1", b"abcd", 0, 10)).status == 308
    for repeat in (doc, {"id": "up1"}):
        resp = await create(served, repeat)
        assert resp.status == 200
        assert (await resp.json())["offset"] == 4
    assert part_bytes(served, "up1") == b"abcd"


@pytest.mark.parametrize(
    ("changed", "headers"),
    [
        ({"size": 11}, {}),
        ({"name": "b.bin"}, {}),
        ({"metadata": {"k": "w"}}, {}),
        ({"size": None}, {"X-Upload-Content-Length": "11"}),
        ({}, {"Repr-Digest": digest_field(b"other")}),
    ],
    ids=["size", "name", "metadata", "length-header", "repr-digest"],
)
async def test_create_with_different_parameters_conflicts(
    served: Served, changed: dict[str, Any], headers: dict[str, str]
) -> None:
    doc = {"id": "up1", "name": "a.bin", "size": 10, "metadata": {"k": "v"}}
    assert (await create(served, doc, **{"Repr-Digest": digest_field(b"x" * 10)})).status == 200
    assert (await put_chunk(served, "up1", b"abc", 0, 10)).status == 308

    resp = await create(served, {**doc, **changed}, **headers)

    await expect_problem(resp, 409, "upload_conflict")
    got = await (await served.client.get("/uploads/up1")).json()
    assert got == {**doc, "offset": 3, "complete": False}


async def test_server_chooses_a_usable_id(served: Served) -> None:
    first = await served.client.post("/uploads")
    second = await served.client.post("/uploads", json={"name": "n"})
    assert (first.status, second.status) == (200, 200)
    ids = [(await r.json())["id"] for r in (first, second)]
    assert ids[0] != ids[1]
    for upload_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", upload_id)

    location = first.headers["Location"]
    assert URL(location).path == f"/uploads/{ids[0]}"
    resp = await served.client.session.put(
        location, data=b"hello", headers={"Content-Range": "bytes 0-4/5"}
    )
    assert resp.status == 200
    assert (served.files_dir / ids[0]).read_bytes() == b"hello"


async def test_upload_content_length_header_declares_the_size(served: Served) -> None:
    resp = await create(served, {"id": "up1"}, **{"X-Upload-Content-Length": "5"})
    assert resp.status == 200
    assert (await resp.json())["size"] == 5

    # The total is known, so a `bytes S-E/*` chunk reaching it completes the upload.
    done = await put(served, "up1", b"hello", "bytes 0-4/*")
    assert done.status == 200
    assert (await done.json())["size"] == 5


# --- chunks --------------------------------------------------------------------------


async def test_chunks_in_order_complete_with_a_verified_record(served: Served) -> None:
    data = payload(3000)
    doc = {"id": "up1", "name": "n.bin", "metadata": {"a": "b"}}
    assert (await create(served, doc)).status == 200

    for start in (0, 1000):
        resp = await put_chunk(served, "up1", data[start : start + 1000], start, 3000)
        assert resp.status == 308
        assert resp.headers["Range"] == f"bytes=0-{start + 999}"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "Location" not in resp.headers
        assert part_bytes(served, "up1") == data[: start + 1000]
        assert served.published() == []

    done = await put_chunk(served, "up1", data[2000:], 2000, 3000)

    assert done.status == 200
    assert await done.json() == {
        **doc,
        "size": 3000,
        "digests": {"xxh3-128": xxhash.xxh3_128(data).hexdigest()},
        "md5Hash": b64(hashlib.md5(data).digest()),
        "complete": True,
    }
    assert done.headers["Repr-Digest"] == digest_field(data)
    assert (served.files_dir / "up1").read_bytes() == data
    assert not (served.uploads_dir / "up1.part").exists()
    assert await metric(served, "transfer_uploads_completed_total") == 1
    assert await metric(served, "transfer_bytes_received_total") == 3000


async def test_unknown_total_then_declared_total_finalizes(served: Served) -> None:
    data = payload(2000)
    for start in (0, 1000):
        resp = await put_chunk(served, "up1", data[start : start + 1000], start, None)
        assert resp.status == 308
        assert resp.headers["Range"] == f"bytes=0-{start + 999}"
    head = await served.client.head("/uploads/up1")
    assert "Upload-Length" not in head.headers
    assert head.headers["Upload-Complete"] == "?0"
    assert served.published() == []

    done = await put(served, "up1", b"", "bytes */2000")

    assert done.status == 200
    assert (await done.json())["size"] == 2000
    assert done.headers["Repr-Digest"] == digest_field(data)
    assert (served.files_dir / "up1").read_bytes() == data


async def test_status_query_reports_the_offset(served: Served) -> None:
    assert (await create(served, {"id": "up1", "size": 200})).status == 200

    empty = await put(served, "up1", b"", "bytes */*")
    assert empty.status == 308
    assert "Range" not in empty.headers  # omitted at offset 0
    assert "Location" not in empty.headers

    assert (await put_chunk(served, "up1", payload(120), 0, 200)).status == 308
    partial = await put(served, "up1", b"", "bytes */*")
    assert partial.status == 308
    assert partial.headers["Range"] == "bytes=0-119"
    assert "Location" not in partial.headers

    assert (await put_chunk(served, "up1", payload(200)[120:], 120, 200)).status == 200
    complete = await put(served, "up1", b"", "bytes */*")
    assert complete.status == 200
    assert (await complete.json())["size"] == 200


async def test_put_to_an_unknown_valid_id_creates_it(served: Served) -> None:
    resp = await put_chunk(served, "fresh", b"01234", 0, 10)

    assert resp.status == 308
    assert resp.headers["Range"] == "bytes=0-4"
    got = await (await served.client.get("/uploads/fresh")).json()
    assert (got["size"], got["offset"], got["complete"]) == (10, 5, False)


async def test_whole_file_put_without_content_range(served: Served) -> None:
    resp = await put(served, "w1", b"hello world")
    assert resp.status == 200
    assert (await resp.json())["size"] == 11
    assert (served.files_dir / "w1").read_bytes() == b"hello world"

    empty = await put(served, "w2", b"")
    assert empty.status == 200
    assert (await empty.json())["size"] == 0
    assert (served.files_dir / "w2").read_bytes() == b""


async def test_overlapping_retry_is_accepted_and_not_written_twice(served: Served) -> None:
    data = payload(3000)
    assert (await put_chunk(served, "up1", data[:1000], 0, 3000)).status == 308

    retry = await put_chunk(served, "up1", data[:1000], 0, 3000)
    assert retry.status == 308
    assert retry.headers["Range"] == "bytes=0-999"

    # The stored prefix of an overlapping chunk is skipped, not rewritten.
    overlap = b"\xff" * 500 + data[1000:2000]
    resp = await put_chunk(served, "up1", overlap, 500, 3000)
    assert resp.status == 308
    assert resp.headers["Range"] == "bytes=0-1999"
    assert part_bytes(served, "up1") == data[:2000]

    done = await put_chunk(served, "up1", data[1999:], 1999, 3000)
    assert done.status == 200
    assert (served.files_dir / "up1").read_bytes() == data
    assert await metric(served, "transfer_bytes_received_total") == 3000


async def test_gap_is_refused_with_the_current_range(served: Served) -> None:
    assert (await put_chunk(served, "up1", payload(100), 0, 1000)).status == 308

    resp = await put_chunk(served, "up1", payload(100), 200, 1000)

    await expect_problem(resp, 409, "offset_gap")
    assert resp.headers["Range"] == "bytes=0-99"
    assert await offset_of(served, "up1") == 100
    assert part_bytes(served, "up1") == payload(100)

    fresh = await put_chunk(served, "up2", payload(10), 10, 100)
    await expect_problem(fresh, 409, "offset_gap")
    assert "Range" not in fresh.headers


async def test_completed_upload_answers_any_put_with_its_record(served: Served) -> None:
    data = payload(100)
    done = await put_chunk(served, "up1", data, 0, 100)
    assert done.status == 200

    for rng, body in (("bytes 0-99/100", data), ("bytes */*", b""), ("bytes 0-9/10", b"x" * 10)):
        again = await put(served, "up1", body, rng)
        assert again.status == 200
        assert await again.json() == await done.json()
    assert (served.files_dir / "up1").read_bytes() == data


# --- digests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithms", [("xxh3-128",), ("sha-256",), ("xxh3-128", "sha-256")], ids="+".join
)
async def test_chunk_digest(served: Served, algorithms: tuple[str, ...]) -> None:
    data = payload(2000)
    first, second = data[:1000], data[1000:]
    good = {"Content-Digest": digest_field(first, *algorithms)}
    assert (await put_chunk(served, "up1", first, 0, 2000, headers=good)).status == 308

    bad = {"Content-Digest": digest_field(b"not the chunk", *algorithms)}
    resp = await put_chunk(served, "up1", second, 1000, 2000, headers=bad)

    await expect_problem(resp, 400, "chunk_digest_mismatch")
    assert resp.headers["Range"] == "bytes=0-999"
    assert await offset_of(served, "up1") == 1000
    assert part_bytes(served, "up1") == first
    assert await metric(served, "transfer_digest_mismatches_total", kind="chunk") == 1

    good = {"Content-Digest": digest_field(second, *algorithms)}
    assert (await put_chunk(served, "up1", second, 1000, 2000, headers=good)).status == 200
    assert (served.files_dir / "up1").read_bytes() == data


async def test_chunk_digest_every_known_algorithm_must_match(served: Served) -> None:
    data = payload(100)
    wrong_xxh3 = f"sha-256=:{b64(raw_digest(data, 'sha-256'))}:, xxh3-128=:{b64(bytes(16))}:"
    resp = await put_chunk(served, "up1", data, 0, 200, headers={"Content-Digest": wrong_xxh3})
    await expect_problem(resp, 400, "chunk_digest_mismatch")
    assert await offset_of(served, "up1") == 0


async def test_chunk_digest_unknown_algorithms_are_ignored(served: Served) -> None:
    # RFC 9530 lets a receiver ignore algorithms it does not speak; md5 is never trusted.
    header = {"Content-Digest": f"md5=:{b64(bytes(16))}:, unknown=:AAAA:"}
    resp = await put_chunk(served, "up1", payload(100), 0, 200, headers=header)
    assert resp.status == 308


@pytest.mark.parametrize("algorithm", ["xxh3-128", "sha-256"])
@pytest.mark.parametrize("declared_at", ["create", "put"])
async def test_repr_digest_mismatch_resets_the_upload(
    served: Served, algorithm: str, declared_at: str
) -> None:
    data = payload(2000)
    wrong = {"Repr-Digest": digest_field(b"something else", algorithm)}
    on_create = wrong if declared_at == "create" else {}
    assert (await create(served, {"id": "up1", "size": 2000}, **on_create)).status == 200
    on_put = wrong if declared_at == "put" else {}
    assert (await put_chunk(served, "up1", data[:1000], 0, 2000, headers=on_put)).status == 308

    resp = await put_chunk(served, "up1", data[1000:], 1000, 2000)

    await expect_problem(resp, 400, "repr_digest_mismatch")
    assert "Range" not in resp.headers  # back at offset 0
    assert await offset_of(served, "up1") == 0
    assert part_bytes(served, "up1") == b""
    assert served.published() == []
    assert (await served.client.get("/files/up1")).status == 404
    assert await metric(served, "transfer_digest_mismatches_total", kind="file") == 1

    right = {"Repr-Digest": digest_field(data, algorithm)}
    assert (await put_chunk(served, "up1", data[:1000], 0, 2000, headers=right)).status == 308
    done = await put_chunk(served, "up1", data[1000:], 1000, 2000)

    assert done.status == 200
    record = await done.json()
    assert record["digests"]["xxh3-128"] == xxhash.xxh3_128(data).hexdigest()
    assert record["digests"][algorithm] == raw_digest(data, algorithm).hex()
    assert "md5Hash" not in record  # only computed when the client declared no digest
    assert (served.files_dir / "up1").read_bytes() == data


async def test_matching_repr_digest_on_the_final_put(served: Served) -> None:
    data = payload(500)
    header = {"Repr-Digest": digest_field(data, "sha-256", "xxh3-128")}
    done = await put_chunk(served, "up1", data, 0, 500, headers=header)
    assert done.status == 200
    assert (await done.json())["digests"] == {
        "xxh3-128": xxhash.xxh3_128(data).hexdigest(),
        "sha-256": hashlib.sha256(data).hexdigest(),
    }


# --- HEAD / GET / DELETE / files -----------------------------------------------------


async def test_head_reports_progress_and_completion(served: Served) -> None:
    data = payload(100)
    assert (await put_chunk(served, "up1", data[:40], 0, 100)).status == 308

    head = await served.client.head("/uploads/up1")
    assert head.status == 200
    assert head.headers["Upload-Offset"] == "40"
    assert head.headers["Upload-Length"] == "100"
    assert head.headers["Upload-Complete"] == "?0"
    assert head.headers["Cache-Control"] == "no-store"
    assert "Repr-Digest" not in head.headers

    assert (await put_chunk(served, "up1", data[40:], 40, 100)).status == 200
    head = await served.client.head("/uploads/up1")
    assert head.headers["Upload-Offset"] == "100"
    assert head.headers["Upload-Complete"] == "?1"
    assert head.headers["Repr-Digest"] == digest_field(data)

    assert (await served.client.head("/uploads/nope")).status == 404


async def test_get_upload_describes_partial_and_complete(served: Served) -> None:
    data = payload(100)
    assert (await put_chunk(served, "up1", data[:40], 0, 100)).status == 308

    partial = await served.client.get("/uploads/up1")
    assert partial.status == 200
    assert partial.headers["Cache-Control"] == "no-store"
    assert await partial.json() == {
        "id": "up1",
        "name": None,
        "size": 100,
        "metadata": {},
        "offset": 40,
        "complete": False,
    }

    done = await put_chunk(served, "up1", data[40:], 40, 100)
    complete = await served.client.get("/uploads/up1")
    assert complete.status == 200
    assert await complete.json() == await done.json()
    assert complete.headers["Repr-Digest"] == digest_field(data)

    await expect_problem(await served.client.get("/uploads/nope"), 404, "upload_not_found")


async def test_delete_aborts_a_partial_upload(served: Served) -> None:
    assert (await put_chunk(served, "up1", payload(40), 0, 100)).status == 308

    resp = await served.client.delete("/uploads/up1")

    assert resp.status == 204
    assert (await served.client.head("/uploads/up1")).status == 404
    assert list(served.uploads_dir.iterdir()) == []
    assert served.published() == []
    # A status query does not bring it back; a new upload under the id starts from zero.
    assert (await put(served, "up1", b"", "bytes */*")).status == 404
    assert (await put_chunk(served, "up1", payload(10), 0, 100)).status == 308
    assert await offset_of(served, "up1") == 10


async def test_delete_refuses_a_completed_upload(served: Served) -> None:
    data = payload(100)
    assert (await put_chunk(served, "up1", data, 0, 100)).status == 200

    await expect_problem(await served.client.delete("/uploads/up1"), 409, "upload_complete")
    assert (served.files_dir / "up1").read_bytes() == data
    await expect_problem(await served.client.delete("/uploads/nope"), 404, "upload_not_found")


async def test_get_file_serves_whole_and_ranges(served: Served) -> None:
    data = payload(1000)
    assert (await put_chunk(served, "up1", data[:500], 0, 1000)).status == 308
    await expect_problem(await served.client.get("/files/up1"), 404, "file_not_found")
    assert (await put_chunk(served, "up1", data[500:], 500, 1000)).status == 200

    whole = await served.client.get("/files/up1")
    assert whole.status == 200
    assert await whole.read() == data

    part = await served.client.get("/files/up1", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.headers["Content-Range"] == "bytes 10-19/1000"
    assert await part.read() == data[10:20]

    tail = await served.client.get("/files/up1", headers={"Range": "bytes=-5"})
    assert tail.status == 206
    assert await tail.read() == data[-5:]


async def test_metrics_are_prometheus_text(served: Served) -> None:
    resp = await served.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "# TYPE transfer_bytes_received_total counter" in text
    assert "# TYPE transfer_request_duration_seconds histogram" in text


# --- concurrency and limits ----------------------------------------------------------


async def test_concurrent_puts_on_one_id_store_each_byte_once(served: Served) -> None:
    data = payload(64 * 1024)
    total = len(data)
    pieces = [(0, 32 * 1024)] * 3 + [(16 * 1024, 48 * 1024)] * 2 + [(48 * 1024, total)] * 2

    answers = await asyncio.gather(
        *(put_chunk(served, "up1", data[a:b], a, total) for a, b in pieces)
    )

    for resp in answers:
        assert resp.status in (200, 308, 409), resp.status
        if resp.status == 409:
            await expect_problem(resp, 409, "offset_gap")
    # Finish whatever the race left, from the offset the server reports.
    while (offset := await offset_of(served, "up1")) < total:
        resp = await put_chunk(served, "up1", data[offset:], offset, total)
        assert resp.status == 200
    assert (served.files_dir / "up1").read_bytes() == data
    assert await metric(served, "transfer_bytes_received_total") == total


@pytest.mark.parametrize("with_digest", [False, True], ids=["no-digest", "content-digest"])
async def test_stalled_body_times_out(make_served: MakeServed, with_digest: bool) -> None:
    served = await make_served(idle_timeout=0.3)
    data = payload(1000)
    release = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield data[:400]
        await release.wait()
        yield data[400:]

    headers = {"Content-Digest": digest_field(data)} if with_digest else {}
    try:
        resp = await put(served, "up1", stalling(), content_range(0, data, 1000), headers)
    finally:
        release.set()

    await expect_problem(resp, 408, "body_stalled")
    # Without a chunk digest the bytes that arrived are valid and kept; with one they
    # cannot be verified, so the chunk is dropped.
    kept = 0 if with_digest else 400
    assert await offset_of(served, "up1") == kept
    assert part_bytes(served, "up1") == data[:kept]
    assert served.published() == []
    await assert_healthy(served)

    done = await put_chunk(served, "up1", data[kept:], kept, 1000)
    assert done.status == 200
    assert (served.files_dir / "up1").read_bytes() == data


async def test_too_many_active_uploads_is_503_with_retry_after(make_served: MakeServed) -> None:
    served = await make_served(max_active=1, idle_timeout=10.0)
    data = payload(1000)
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield data[:100]
        await release.wait()
        yield data[100:]

    first = asyncio.create_task(put(served, "a", held(), content_range(0, data, 1000)))
    try:

        async def receiving() -> bool:
            return await metric(served, "transfer_uploads_active") == 1

        await wait_until_async(receiving, "an upload receiving", deadline=DEADLINE)
        resp = await put_chunk(served, "b", b"0123456789", 0, 10)
        await expect_problem(resp, 503, "too_many_uploads")
        assert resp.headers["Retry-After"] == "1"
        assert await offset_of(served, "b") == 0
    finally:
        release.set()
    assert (await first).status == 200

    assert (await put_chunk(served, "b", b"0123456789", 0, 10)).status == 200
    assert await metric(served, "transfer_uploads_active") == 0
    assert (served.files_dir / "a").read_bytes() == data


@dataclass(frozen=True)
class Limited:
    """A request against a server limited to 1 KiB chunks and 4 KiB uploads."""

    method: str
    path: str
    status: int
    code: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


LIMITED = {
    "chunk": Limited(
        "PUT",
        "/uploads/l1",
        413,
        "chunk_too_large",
        {"Content-Range": "bytes 0-1024/2000"},
        b"x" * 1025,
    ),
    "whole-file": Limited("PUT", "/uploads/l1", 413, "chunk_too_large", {}, b"x" * 2000),
    "create-size": Limited("POST", "/uploads", 413, "upload_too_large", {}, b'{"size": 4097}'),
    "create-header": Limited(
        "POST", "/uploads", 413, "upload_too_large", {"X-Upload-Content-Length": "5000"}
    ),
    "chunk-total": Limited(
        "PUT",
        "/uploads/l1",
        413,
        "upload_too_large",
        {"Content-Range": "bytes 0-9/5000"},
        b"x" * 10,
    ),
    "declared-total": Limited(
        "PUT", "/uploads/l1", 413, "upload_too_large", {"Content-Range": "bytes */5000"}
    ),
    "unknown-total-past-limit": Limited(
        "PUT",
        "/uploads/l1",
        413,
        "upload_too_large",
        {"Content-Range": "bytes 4096-4105/*"},
        b"x" * 10,
    ),
}


@pytest.mark.parametrize("case", LIMITED.values(), ids=LIMITED.keys())
async def test_size_limits_are_413(make_served: MakeServed, case: Limited) -> None:
    served = await make_served(max_chunk=1024, max_upload=4096)

    resp = await served.client.request(case.method, case.path, data=case.body, headers=case.headers)

    await expect_problem(resp, case.status, case.code)
    assert served.published() == []
    await assert_healthy(served)


async def test_unknown_total_upload_cannot_grow_past_max_upload(make_served: MakeServed) -> None:
    served = await make_served(max_chunk=1024, max_upload=4096)
    data = payload(4096)
    for start in range(0, 4096, 1024):
        resp = await put_chunk(served, "up1", data[start : start + 1024], start, None)
        assert resp.status == 308

    over = await put_chunk(served, "up1", b"x", 4096, None)

    await expect_problem(over, 413, "upload_too_large")
    assert await offset_of(served, "up1") == 4096
    done = await put(served, "up1", b"", "bytes */4096")
    assert done.status == 200
    assert (served.files_dir / "up1").read_bytes() == data


# --- the catalogue of bad inputs -----------------------------------------------------

# Every case runs against a server holding upload `u1`: size 10, offset 5 (STORED).
STORED = b"01234"


@dataclass(frozen=True)
class Bad:
    method: str
    path: str
    status: int
    code: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunked: bool = False  # stream the body (no Content-Length)


def bad_range(value: str, body: bytes = b"x" * 10, path: str = "/uploads/u2") -> Bad:
    return Bad("PUT", path, 400, "invalid_content_range", {"Content-Range": value}, body)


def bad_create(body: bytes, code: str = "invalid_body", **headers: str) -> Bad:
    headers.setdefault("Content-Type", "application/json")
    return Bad("POST", "/uploads", 400, code, headers, body)


def bad_digest(value: str, header: str = "Content-Digest") -> Bad:
    headers = {"Content-Range": "bytes 0-9/10", header: value}
    return Bad("PUT", "/uploads/u2", 400, "invalid_digest", headers, b"x" * 10)


def on_u1(status: int, code: str, rng: str | None, body: bytes = b"", **kw: Any) -> Bad:
    headers = dict(kw.pop("headers", {}))
    if rng is not None:
        headers["Content-Range"] = rng
    return Bad("PUT", "/uploads/u1", status, code, headers, body, **kw)


SIXTEEN = b64(bytes(16))
CATALOGUE: dict[str, Bad] = {
    # Content-Range syntax
    "range-no-total": bad_range("bytes 0-9"),
    "range-equals": bad_range("bytes=0-9/10"),
    "range-two-totals": bad_range("bytes 0-9/10/10"),
    "range-double-space": bad_range("bytes  0-9/10"),
    "range-unit": bad_range("bits 0-9/10"),
    "range-empty-total": bad_range("bytes 0-9/"),
    "range-negative": bad_range("bytes -1-9/10"),
    "range-leading-zero": bad_range("bytes 00-9/10"),
    "range-hex": bad_range("bytes 0x0-9/10"),
    "range-plus": bad_range("bytes +0-9/10"),
    "range-exponent": bad_range("bytes 0-9/1e1"),
    "range-negative-total": bad_range("bytes 0-9/-10"),
    "range-star-end": bad_range("bytes 0-*/10"),
    "range-total-only-empty": bad_range("bytes */", b""),
    "range-total-only-stars": bad_range("bytes */**", b""),
    "range-empty": bad_range(""),
    "range-trailing-comma": bad_range("bytes 0-9/10,"),
    # Unicode digits are digits to str.isdigit, never to us
    "range-arabic-indic": bad_range("bytes \u0660-\u0669/10"),
    "range-fullwidth": bad_range("bytes \uff10-\uff19/10"),
    "range-fullwidth-total": bad_range("bytes 0-9/\uff11\uff10"),
    "range-superscript": bad_range("bytes 0-9/1\u00b2"),
    "range-nbsp": bad_range("bytes\u00a00-9/10"),
    # impossible ranges
    "range-end-before-start": bad_range("bytes 9-0/10"),
    "range-end-at-total": bad_range("bytes 0-10/10", b"x" * 11),
    "range-empty-file": bad_range("bytes 0-0/0", b"x"),
    # absurd lengths
    "range-20-digit-end": bad_range("bytes 0-99999999999999999999/*"),
    "range-20-digit-total": bad_range("bytes 0-9/99999999999999999999"),
    "range-end-past-2^53": bad_range("bytes 9007199254740992-9007199254741001/*"),
    "range-total-past-2^53": bad_range("bytes */9007199254740993", b""),
    "range-total-2^53": Bad(
        "PUT",
        "/uploads/u2",
        413,
        "upload_too_large",
        {"Content-Range": "bytes 0-9/9007199254740992"},
        b"x" * 10,
    ),
    # bodies that disagree with the range
    "body-on-total-only": on_u1(400, "unexpected_body", "bytes */10", b"abc"),
    "body-on-query": on_u1(400, "unexpected_body", "bytes */*", b"abc"),
    "content-length-short": on_u1(400, "length_mismatch", "bytes 5-9/10", b"abc"),
    "content-length-long": on_u1(400, "length_mismatch", "bytes 5-9/10", b"abcdefg"),
    "streamed-body-short": on_u1(400, "body_too_short", "bytes 5-9/10", b"abc", chunked=True),
    "streamed-body-long": on_u1(400, "body_too_long", "bytes 5-9/10", b"abcdefgh", chunked=True),
    "no-range-streamed": Bad(
        "PUT", "/uploads/u2", 400, "missing_content_range", {}, b"abc", chunked=True
    ),
    # ranges that disagree with the upload
    "past-known-total": on_u1(416, "range_past_total", "bytes 5-14/*", b"x" * 10),
    "other-total": on_u1(409, "total_mismatch", "bytes 5-9/20", b"x" * 5),
    "declare-other-total": on_u1(409, "total_mismatch", "bytes */20"),
    "declare-total-below-offset": on_u1(409, "total_mismatch", "bytes */3"),
    "gap": on_u1(409, "offset_gap", "bytes 7-9/10", b"xyz"),
    "chunk-digest-mismatch": on_u1(
        400,
        "chunk_digest_mismatch",
        "bytes 5-9/10",
        b"56789",
        headers={"Content-Digest": digest_field(b"other")},
    ),
    # ids (sent percent-encoded; raw request targets are in test_raw_request_targets)
    "id-dotdot-encoded": Bad("PUT", "/uploads/%2e%2e", 400, "invalid_id"),
    "id-slash-encoded": Bad("PUT", "/uploads/a%2Fb", 400, "invalid_id"),
    "id-traversal": Bad("PUT", "/uploads/..%2Fu1.part", 400, "invalid_id"),
    "id-65-chars": Bad("PUT", "/uploads/" + "a" * 65, 400, "invalid_id"),
    "id-unicode": Bad("PUT", "/uploads/%C3%A9t%C3%A9", 400, "invalid_id"),
    "id-nul": Bad("PUT", "/uploads/a%00b", 400, "invalid_id"),
    "id-dot": Bad("PUT", "/uploads/u1.part", 400, "invalid_id"),
    "id-space": Bad("PUT", "/uploads/a%20b", 400, "invalid_id"),
    "files-traversal": Bad("GET", "/files/..%2Fuploads%2Fu1.part", 400, "invalid_id"),
    "head-traversal": Bad("GET", "/uploads/%2e%2e", 400, "invalid_id"),
    "delete-traversal": Bad("DELETE", "/uploads/%2E%2E", 400, "invalid_id"),
    "create-id-traversal": bad_create(b'{"id": "../u1"}', "invalid_id"),
    "create-id-empty": bad_create(b'{"id": ""}', "invalid_id"),
    "create-id-65": bad_create(json.dumps({"id": "a" * 65}).encode(), "invalid_id"),
    "create-id-unicode": bad_create('{"id": "été"}'.encode(), "invalid_id"),
    # bad JSON
    "json-truncated": bad_create(b'{"id": "x"'),
    "json-array": bad_create(b"[]"),
    "json-string": bad_create(b'"u1"'),
    "json-null": bad_create(b"null"),
    "json-number": bad_create(b"1"),
    "json-not-utf8": bad_create(b'\xff\xfe{"size": 1}'),
    "json-as-text-plain": bad_create(b'{"size": 1}', **{"Content-Type": "text/plain"}),
    # wrong types in JSON
    "id-number": bad_create(b'{"id": 5}'),
    "name-number": bad_create(b'{"name": 5}'),
    "name-empty": bad_create(b'{"name": ""}'),
    "name-too-long": bad_create(json.dumps({"name": "n" * 1025}).encode()),
    "size-string": bad_create(b'{"size": "10"}'),
    "size-negative": bad_create(b'{"size": -1}'),
    "size-float": bad_create(b'{"size": 1.5}'),
    "size-bool": bad_create(b'{"size": true}'),
    "size-nan": bad_create(b'{"size": NaN}'),
    "size-past-2^53": bad_create(b'{"size": 9007199254740993}'),
    "metadata-list": bad_create(b'{"metadata": []}'),
    "metadata-string": bad_create(b'{"metadata": "x"}'),
    "metadata-number-value": bad_create(b'{"metadata": {"a": 1}}'),
    "metadata-too-many": bad_create(
        json.dumps({"metadata": {str(i): "" for i in range(65)}}).encode()
    ),
    "length-header-word": bad_create(b"{}", **{"X-Upload-Content-Length": "abc"}),
    "length-header-negative": bad_create(b"{}", **{"X-Upload-Content-Length": "-1"}),
    "length-header-exponent": bad_create(b"{}", **{"X-Upload-Content-Length": "1e3"}),
    "length-header-arabic": bad_create(b"{}", **{"X-Upload-Content-Length": "\u0661\u0660"}),
    "length-header-huge": bad_create(b"{}", **{"X-Upload-Content-Length": "9" * 20}),
    "size-mismatch": bad_create(
        b'{"size": 5}', "size_mismatch", **{"X-Upload-Content-Length": "6"}
    ),
    "create-body-over-1MiB": Bad(
        "POST",
        "/uploads",
        413,
        "request_entity_too_large",
        {"Content-Type": "application/json"},
        b" " * (1024 * 1024 + 1),
    ),
    # bad digest fields
    "digest-no-colons": bad_digest("xxh3-128=abc"),
    "digest-not-base64": bad_digest("xxh3-128=:!!!!:"),
    "digest-bad-padding": bad_digest("xxh3-128=:AAAAAAAAAAAAAAAAAAAAAA=:"),
    "digest-short": bad_digest("xxh3-128=:AAAA:"),
    "digest-sha256-16-bytes": bad_digest(f"sha-256=:{SIXTEEN}:"),
    "digest-no-value": bad_digest("xxh3-128"),
    "digest-no-key": bad_digest("=:AAAA:"),
    "digest-uppercase-key": bad_digest(f"XXH3-128=:{SIXTEEN}:"),
    "digest-trailing-comma": bad_digest(f"xxh3-128=:{SIXTEEN}:,"),
    "digest-unicode": bad_digest("xxh3-128=:é:"),
    "repr-digest-on-put": bad_digest("sha-256=:AAAA:", "Repr-Digest"),
    "repr-digest-on-create": bad_create(b"{}", "invalid_digest", **{"Repr-Digest": "xxh3-128"}),
    # not there / not allowed
    "get-unknown-upload": Bad("GET", "/uploads/nope", 404, "upload_not_found"),
    "delete-unknown-upload": Bad("DELETE", "/uploads/nope", 404, "upload_not_found"),
    "get-unknown-file": Bad("GET", "/files/nope", 404, "file_not_found"),
    "get-partial-file": Bad("GET", "/files/u1", 404, "file_not_found"),
    "unknown-route": Bad("GET", "/nope", 404, "not_found"),
    "patch-upload": Bad("PATCH", "/uploads/u1", 405, "method_not_allowed"),
    "post-to-upload": Bad("POST", "/uploads/u1", 405, "method_not_allowed"),
    "put-collection": Bad("PUT", "/uploads", 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", CATALOGUE.values(), ids=CATALOGUE.keys())
async def test_bad_input_is_refused_and_changes_nothing(served: Served, case: Bad) -> None:
    assert (await create(served, {"id": "u1", "size": 10})).status == 200
    assert (await put_chunk(served, "u1", STORED, 0, 10)).status == 308
    body: bytes | AsyncIterator[bytes] = chunks_of(case.body, 3) if case.chunked else case.body

    resp = await served.client.request(
        case.method, URL(case.path, encoded=True), data=body, headers=case.headers
    )

    await expect_problem(resp, case.status, case.code)
    await assert_healthy(served)
    assert await offset_of(served, "u1") == len(STORED)
    assert part_bytes(served, "u1") == STORED
    assert sorted(p.name for p in served.uploads_dir.iterdir()) == ["u1.json", "u1.part"]
    assert served.published() == []


RAW_TARGETS = {
    "dotdot": (b"PUT", b"/uploads/..", 400, "invalid_id"),
    "files-dotdot": (b"GET", b"/files/..", 400, "invalid_id"),
    "files-part": (b"GET", b"/files/u1.part", 400, "invalid_id"),
    "files-encoded-traversal": (b"GET", b"/files/%2e%2e%2Fuploads%2Fu1.part", 400, "invalid_id"),
    # `..` as a whole segment is resolved before routing: it can only reach other routes.
    "files-traversal": (b"GET", b"/files/../uploads/u1.part", 404, "not_found"),
}


async def raw_request(port: int, method: bytes, target: bytes) -> tuple[int, str, bytes]:
    """Send a request line exactly as given; returns status, content type and body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(method + b" " + target + b" HTTP/1.1\r\nHost: test\r\n")
        writer.write(b"Content-Range: bytes */*\r\nConnection: close\r\n\r\n")
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


@pytest.mark.parametrize(
    ("method", "target", "status", "code"), RAW_TARGETS.values(), ids=RAW_TARGETS.keys()
)
async def test_raw_request_targets(
    served: Served, method: bytes, target: bytes, status: int, code: str
) -> None:
    assert (await put_chunk(served, "u1", STORED, 0, 10)).status == 308

    got_status, content_type, body = await raw_request(served.port, method, target)

    assert (got_status, json.loads(body)["code"]) == (status, code)
    assert content_type.startswith(PROBLEM)
    assert STORED not in body
    await assert_healthy(served)


@pytest.mark.parametrize("target", [b"/uploads/\xc3\xa9t\xc3\xa9", b"/uploads/a\x00b"])
async def test_unencoded_bytes_in_the_target_are_refused_by_the_http_parser(
    served: Served, target: bytes
) -> None:
    # aiohttp's parser refuses these before the app runs, so the answer is plain text.
    status, _, _ = await raw_request(served.port, b"PUT", target)
    assert status == 400
    await assert_healthy(served)


async def test_client_disconnect_mid_body_keeps_the_bytes_received(
    make_served: MakeServed,
) -> None:
    served = await make_served(idle_timeout=30.0)  # the disconnect, not a timeout, ends it
    data = payload(1000)
    _, writer = await asyncio.open_connection(HOST, served.port)
    writer.write(
        b"PUT /uploads/up1 HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n"
        b"Content-Range: bytes 0-999/1000\r\n\r\n" + data[:400]
    )
    await writer.drain()

    async def receiving() -> bool:
        return await metric(served, "transfer_uploads_active") == 1

    await wait_until_async(receiving, "an upload receiving", deadline=DEADLINE)
    writer.close()
    await writer.wait_closed()

    async def settled() -> bool:
        idle = await metric(served, "transfer_uploads_active") == 0
        return idle and await offset_of(served, "up1") == 400

    await wait_until_async(settled, "the upload settled", deadline=DEADLINE)
    assert part_bytes(served, "up1") == data[:400]
    assert served.published() == []
    done = await put_chunk(served, "up1", data[400:], 400, 1000)
    assert done.status == 200
    assert (served.files_dir / "up1").read_bytes() == data
