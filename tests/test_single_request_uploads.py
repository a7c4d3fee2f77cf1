"""Uploads whose first request carries the whole file, through tus and the IETF draft:
the server's deferral scope (`intake.deferring`, `FileStore.deferred`) and the sender's
confirmation without a HEAD (`TusClient`).

The server rule under test is the native whole PUT's (tests/test_filestore_small.py):
nothing about the upload is answered before it is published or its `.json` is durable,
so inside the request the upload has only its `.part`, and a `.part` alone after a kill
was never acknowledged. A creation that can announce its URL early (an IETF 104) or
that carries only part of the file makes its `.json` durable at once.

The sender's rule: no creation carries the file (its URL must be journaled before its
bytes), and a tus PATCH that publishes answers the `Repr-Digest`, so a small file costs
a POST and a PATCH, no HEAD.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import HOST, Served, StartServer, digest_field
from support import read_journal

from transfer.core.events import Event
from transfer.testing.harness import run_transfer
from transfer.testing.logs import named
from transfer.testing.polling import wait_until, wait_until_async

pytestmark = pytest.mark.timeout(90)

DEADLINE = 10.0
TUS = {"Tus-Resumable": "1.0.0"}


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def suffixes(directory: Path) -> list[str]:
    return sorted(p.suffix for p in directory.iterdir())


def watched_body(
    data: bytes, uploads: Path, seen: list[list[str]], *, until: str = ".part"
) -> AsyncIterator[bytes]:
    """`data` in two halves; between them, what `uploads` holds once a file ending in
    `until` is there (the server is inside the request: it has not all the body)."""

    async def body() -> AsyncIterator[bytes]:
        yield data[: len(data) // 2]
        await wait_until_async(
            lambda: until in suffixes(uploads), f"a {until} file", deadline=DEADLINE
        )
        seen.append(suffixes(uploads))
        yield data[len(data) // 2 :]

    return body()


# --- the server: tus -------------------------------------------------------------------


async def test_a_tus_creation_carrying_the_whole_file_writes_no_json(served: Served) -> None:
    data, seen = b"t" * 6000, list[list[str]]()
    resp = await served.client.post(
        "/tus/",
        data=watched_body(data, served.uploads_dir, seen),
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Content-Length": str(len(data)),
            "Content-Type": "application/offset+octet-stream",
            "Upload-Metadata": "filename " + base64.b64encode(b"t.bin").decode(),
            "Repr-Digest": digest_field(data),
        },
    )
    assert resp.status == 201, await resp.text()
    assert seen == [[".part"]]
    assert listing(served.uploads_dir) == []
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert digest_field(data) in resp.headers["Repr-Digest"]  # no HEAD needed to confirm
    upload_id = resp.headers["Location"].rsplit("/", 1)[-1]
    assert (served.files_dir / upload_id).read_bytes() == data


async def test_partials_created_with_their_whole_body_concatenate(served: Served) -> None:
    """A deferred partial is published with its parameters (`Upload-Concat: partial`
    included): the final upload finds it after the scope."""
    urls = []
    for piece in (b"first-", b"second"):
        resp = await served.client.post(
            "/tus/",
            data=piece,
            headers={
                **TUS,
                "Upload-Length": str(len(piece)),
                "Upload-Concat": "partial",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert resp.status == 201, await resp.text()
        urls.append(resp.headers["Location"])
    final = await served.client.post(
        "/tus/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls)}
    )
    assert final.status == 201, await final.text()
    upload_id = final.headers["Location"].rsplit("/", 1)[-1]
    assert (served.files_dir / upload_id).read_bytes() == b"first-second"
    assert listing(served.uploads_dir) == []


async def test_a_tus_creation_carrying_part_of_the_file_is_durable_at_once(
    served: Served,
) -> None:
    data, seen = b"p" * 4000, list[list[str]]()
    resp = await served.client.post(
        "/tus/",
        data=watched_body(data, served.uploads_dir, seen, until=".json"),
        headers={
            **TUS,
            "Upload-Length": "10000",
            "Content-Length": str(len(data)),
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert resp.status == 201, await resp.text()
    assert seen == [[".json", ".part"]]
    assert "Repr-Digest" not in resp.headers and "Upload-Expires" in resp.headers


async def test_a_tus_patch_that_publishes_answers_the_repr_digest(served: Served) -> None:
    data = b"d" * 3000
    created = await served.client.post("/tus/", headers={**TUS, "Upload-Length": "3000"})
    assert created.status == 201
    url = "/tus/" + created.headers["Location"].rsplit("/", 1)[-1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    resp = await served.client.patch(url, data=data, headers=headers)
    assert resp.status == 204
    head = await served.client.head(url, headers=TUS)
    assert resp.headers["Repr-Digest"] == head.headers["Repr-Digest"]


# --- the server: IETF ------------------------------------------------------------------


async def test_an_ietf_complete_creation_without_a_104_writes_no_json(served: Served) -> None:
    data, seen = b"i" * 6000, list[list[str]]()
    resp = await served.client.post(
        "/resumable/",
        data=watched_body(data, served.uploads_dir, seen),
        headers={
            "Upload-Complete": "?1",
            "Content-Length": str(len(data)),
            "Repr-Digest": digest_field(data),
        },
    )
    assert resp.status == 201, await resp.text()
    assert seen == [[".part"]]
    assert listing(served.uploads_dir) == []
    assert resp.headers["Upload-Complete"] == "?1"
    assert digest_field(data) in resp.headers["Repr-Digest"]


async def test_an_ietf_creation_that_answers_a_104_is_durable_before_it(served: Served) -> None:
    """The 104 hands out the upload's URL before the content is read: the `.json` must
    be durable by then, whatever the rest of the request does."""
    data = b"h" * 6000
    reader, writer = await asyncio.open_connection(HOST, served.port)
    head = (
        "POST /resumable/ HTTP/1.1\r\nHost: x\r\nUpload-Draft-Interop-Version: 6\r\n"
        f"Upload-Complete: ?1\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + data[:3000])
    await writer.drain()
    async with asyncio.timeout(DEADLINE):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 104 ")
    assert suffixes(served.uploads_dir) == [".json", ".part"]
    writer.write(data[3000:])
    async with asyncio.timeout(DEADLINE):
        final = await reader.read()
    writer.close()
    assert final.startswith(b"HTTP/1.1 201 ")


# --- kill -9 of a real server inside a tus creation-with-upload -------------------------


def test_a_kill_inside_a_tus_creation_with_upload_leaves_nothing(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir, data = tmp_path / "data", b"k" * 300_000
    uploads = data_dir / "uploads"
    server = serve_process(data_dir)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection((HOST, port), timeout=DEADLINE) as sock:
        sock.sendall(
            (
                "POST /tus/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                f"Upload-Length: {len(data)}\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/offset+octet-stream\r\n\r\n"
            ).encode()
            + data[:100_000]
        )
        wait_until(
            lambda: any(p.stat().st_size > 0 for p in uploads.glob("*.part")),
            "bytes stored",
            deadline=DEADLINE,
        )
        assert suffixes(uploads) == [".part"]
        server.kill()
    restarted = serve_process(data_dir)
    assert listing(uploads) == []
    started = named(restarted.events(), Event.SERVER_STARTED)
    assert [(e["discarded"], e["recovered"]) for e in started] == [(1, [])]


# --- the sender ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tus_file_costs_a_post_and_a_patch_and_no_head(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """No creation carries the file (its URL would not be journaled before its bytes),
    and the PATCH answer's `Repr-Digest` confirms it without a HEAD."""
    data_dir, spool, log = tmp_path / "data", tmp_path / "spool", tmp_path / "send.log"
    server = serve_process(data_dir)
    job = ("--count", "6", "--max-size", "64KiB", "--min-interval", "0", "--max-interval", "0")
    done = run_transfer(
        "send", "--protocol", "tus", "--server", f"{server.url}/tus/", "--spool-dir",
        str(spool), "--log-file", str(log), "--progress", "never", "--seed", "3", *job,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    entries = read_journal(spool)
    assert len(entries) == 6 and all(e.server_digest == e.digest for e in entries)
    requests = named(server.events(), Event.REQUEST)
    assert Counter(e["method"] for e in requests) == Counter(OPTIONS=1, POST=6, PATCH=6)
    assert {e["bytes"] for e in requests if e["method"] == "POST"} == {0}
