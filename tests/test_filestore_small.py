"""Small uploads on `FileStore`: the deferred `.json` of an upload created by the request
that carries its whole body (`FileStore.deferred`), what recovery makes of every state a
crash can leave of it, and the record tree's shard directories.

The rule under test: nothing about an upload is acknowledged before its `.json` is
durable or its record is. Inside a scope the upload has only its `.part`; the scope ends
with a publication (the record holds every parameter) or a durable `.json`, before any
answer; outside a scope `get` writes it first. So a `.part` alone after a crash was
never acknowledged, and start-up removes it; everything acknowledged stays.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from conftest import Served, StartServer, digest_field
from hookreceiver import Receiver
from pytest_aiohttp import AiohttpClient
from store_conformance import write

from transfer.core.errors import DigestMismatch
from transfer.core.events import Event
from transfer.core.records import UploadSpec
from transfer.server.app import ServerConfig, make_app
from transfer.server.hooks import HookConfig
from transfer.store.filestore import FileStore
from transfer.store.outbox import FileOutbox
from transfer.store.recordtree import RecordTree, shard_of
from transfer.testing.polling import wait_until, wait_until_async

pytestmark = pytest.mark.timeout(60)

DEADLINE = 10.0


def opened(data_dir: Path) -> FileStore:
    store = FileStore(data_dir)
    store.open()
    return store


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def spec_of(upload_id: str, size: int) -> UploadSpec:
    return UploadSpec(upload_id, f"{upload_id}.bin", size, {"k": "v"})


# --- the scope, on the store ------------------------------------------------------------


async def test_an_upload_created_and_published_in_a_scope_never_has_a_json(
    tmp_path: Path,
) -> None:
    store, data = opened(tmp_path), b"a" * 3000
    async with store.deferred("a"):
        await store.create(spec_of("a", len(data)))
        assert listing(store.uploads_dir) == ["a.part"]
        await write(store, "a", data, 0, len(data))
        assert listing(store.uploads_dir) == ["a.part"]
        info = await store.finalize("a")
    assert info.record is not None and info.record.metadata == {"k": "v"}
    assert listing(store.uploads_dir) == []
    assert (tmp_path / "files" / "a").read_bytes() == data
    reopened = opened(tmp_path)
    again = await reopened.get("a")
    assert again is not None and again.record is not None and again.spec.name == "a.bin"


async def test_a_scope_that_ends_unpublished_leaves_a_durable_json(tmp_path: Path) -> None:
    store = opened(tmp_path)
    async with store.deferred("half"):
        await store.create(spec_of("half", 100))
        await write(store, "half", b"h" * 40, 0, 100)
    meta = json.loads((store.uploads_dir / "half.json").read_bytes())
    assert (meta["id"], meta["size"], meta["metadata"]) == ("half", 100, {"k": "v"})
    info = await opened(tmp_path).get("half")
    assert info is not None and info.state.offset == 40


async def test_a_whole_file_mismatch_in_a_scope_leaves_the_upload_at_zero_durably(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path)
    spec = UploadSpec("bad", None, 10, {}, {"xxh3-128": b"\0" * 16})
    async with store.deferred("bad"):
        await store.create(spec)
        await write(store, "bad", b"b" * 10, 0, 10)
        with pytest.raises(DigestMismatch):
            await store.finalize("bad")
    assert listing(store.uploads_dir) == ["bad.json", "bad.part"]
    info = await opened(tmp_path).get("bad")
    assert info is not None and info.state.offset == 0 and info.spec.repr_digest


async def test_a_cancelled_scope_still_writes_the_json(tmp_path: Path) -> None:
    store = opened(tmp_path)
    created, never = asyncio.Event(), asyncio.Event()

    async def request() -> None:
        async with store.deferred("c"):
            await store.create(spec_of("c", 50))
            created.set()
            await never.wait()

    task = asyncio.ensure_future(request())
    await created.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert listing(store.uploads_dir) == ["c.json", "c.part"]


async def test_outside_a_scope_and_for_a_known_id_creation_is_durable_at_once(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path)
    await store.create(spec_of("plain", 10))
    assert listing(store.uploads_dir) == ["plain.json", "plain.part"]
    async with store.deferred("plain"):
        info = await store.create(spec_of("plain", 10))  # re-opened, not created
        assert info.state.offset == 0
        assert listing(store.uploads_dir) == ["plain.json", "plain.part"]


async def test_a_delete_in_a_scope_leaves_nothing(tmp_path: Path) -> None:
    store = opened(tmp_path)
    async with store.deferred("d"):
        await store.create(spec_of("d", 10))
        await store.delete("d")
    assert listing(store.uploads_dir) == []
    assert await store.get("d") is None


# --- recovery of what a crash can leave -------------------------------------------------


async def test_start_up_removes_only_what_was_never_acknowledged(tmp_path: Path) -> None:
    """Hand-made states: a provisional upload cut short (a `.part` alone, empty or
    not), one cut after its record (a `.part` and a record, no `.json`), and an
    acknowledged partial upload (`.json` and `.part`)."""
    store = opened(tmp_path)
    async with store.deferred("recorded"):
        await store.create(spec_of("recorded", 5))
        await write(store, "recorded", b"r" * 5, 0, 5)
        await store.finalize("recorded")
    (tmp_path / "files" / "recorded").rename(store.uploads_dir / "recorded.part")
    await store.create(spec_of("acked", 10))
    await write(store, "acked", b"k" * 4, 0, 10)
    (store.uploads_dir / "lost.part").write_bytes(b"l" * 7)
    (store.uploads_dir / "empty.part").write_bytes(b"")

    restarted = FileStore(tmp_path)
    assert restarted.open() == ["recorded"]
    assert restarted.discarded == 2
    assert listing(restarted.uploads_dir) == ["acked.json", "acked.part"]
    assert restarted.partial_bytes == 4
    assert (tmp_path / "files" / "recorded").read_bytes() == b"r" * 5
    assert await restarted.get("lost") is None and await restarted.get("empty") is None
    acked = await restarted.get("acked")
    assert acked is not None and acked.state.offset == 4
    async with restarted.deferred("lost"):  # the id is free again
        await restarted.create(spec_of("lost", 3))
        await write(restarted, "lost", b"L" * 3, 0, 3)
        await restarted.finalize("lost")
    assert (tmp_path / "files" / "lost").read_bytes() == b"LLL"


# --- through the native front-end -------------------------------------------------------


async def test_a_creating_put_of_the_whole_file_writes_no_json(served: Served) -> None:
    data = b"w" * 5000
    seen: list[list[str]] = []

    async def body() -> AsyncIterator[bytes]:
        yield data[:2500]
        part = served.uploads_dir / "whole.part"
        await wait_until_async(part.exists, "the upload created", deadline=DEADLINE)
        seen.append(listing(served.uploads_dir))  # inside the request: no `.json`
        yield data[2500:]

    resp = await served.client.put(
        "/uploads/whole",
        data=body(),
        headers={
            "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}",
            "Content-Length": str(len(data)),
            "Repr-Digest": digest_field(data),
            "Upload-Metadata": "name d2hvbGUuYmlu",
        },
    )
    assert resp.status == 200, await resp.text()
    assert seen == [["whole.part"]]
    assert listing(served.uploads_dir) == []
    assert (await resp.json())["name"] == "whole.bin"


async def test_with_delivering_hooks_a_creating_whole_put_is_durable_at_once(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """The `created` event is written durably to the outbox during the request, so the
    upload it announces must be durable first: no deferral."""
    store = opened(tmp_path)
    with Receiver() as receiver:
        hooks = HookConfig(url=receiver.url, secret=b"s" * 32, max_backoff=0.2)
        app = make_app(store, ServerConfig(hooks=hooks), outbox=FileOutbox(tmp_path))
        client = await aiohttp_client(app)
        await _put_while_looking(client, store)
        await client.close()  # the deliverer stops while the receiver still answers


async def _put_while_looking(client: TestClient[Any, Any], store: FileStore) -> None:
    data, seen = b"h" * 5000, []

    async def body() -> AsyncIterator[bytes]:
        yield data[:2500]
        part = store.uploads_dir / "h.part"
        await wait_until_async(part.exists, "the upload created", deadline=DEADLINE)
        seen.append(listing(store.uploads_dir))
        yield data[2500:]

    headers = {"Content-Range": "bytes 0-4999/5000", "Content-Length": "5000"}
    resp = await client.put("/uploads/h", data=body(), headers=headers)
    assert resp.status == 200, await resp.text()
    assert seen == [["h.json", "h.part"]]


@pytest.mark.parametrize("case", ["first-chunk", "wrong-digest"])
async def test_every_answer_about_an_unpublished_upload_follows_its_json(
    served: Served, case: str
) -> None:
    data = b"p" * 100
    end, repr_data = (39, data) if case == "first-chunk" else (99, b"other")
    resp = await served.client.put(
        "/uploads/p",
        data=data[: end + 1],
        headers={"Content-Range": f"bytes 0-{end}/100", "Repr-Digest": digest_field(repr_data)},
    )
    assert resp.status == (308 if case == "first-chunk" else 400)
    assert listing(served.uploads_dir) == ["p.json", "p.part"]
    info = await opened(served.data_dir).get("p")
    assert info is not None and info.state.offset == (40 if case == "first-chunk" else 0)


# --- kill -9 of a real server -----------------------------------------------------------


def raw_put_head(port: int, upload_id: str, total: int, digest: str) -> socket.socket:
    """A creating PUT of the whole file whose body has not been sent yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    sock.sendall(
        (
            f"PUT /uploads/{upload_id} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Range: bytes 0-{total - 1}/{total}\r\nContent-Length: {total}\r\n"
            f"Repr-Digest: {digest}\r\n\r\n"
        ).encode()
    )
    return sock


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_kill_inside_a_creating_whole_put_leaves_nothing_and_the_put_succeeds_again(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir, data = tmp_path / "data", b"k" * 300_000
    part = data_dir / "uploads" / "k.part"
    server = serve_process(data_dir)
    with raw_put_head(port_of(server.url), "k", len(data), digest_field(data)) as sock:
        sock.sendall(data[:100_000])
        wait_until(
            lambda: part.exists() and part.stat().st_size > 0, "bytes stored", deadline=DEADLINE
        )
        assert listing(data_dir / "uploads") == ["k.part"]
        server.kill()
    restarted = serve_process(data_dir)
    assert listing(data_dir / "uploads") == []
    started = [e for e in restarted.events() if e["event"] == Event.SERVER_STARTED]
    assert [(e["discarded"], e["recovered"]) for e in started] == [(1, [])]
    url = f"{restarted.url}/uploads/k"
    with requests.Session() as session:
        assert session.head(url, timeout=DEADLINE).status_code == 404
        headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
        headers["Repr-Digest"] = digest_field(data)
        assert session.put(url, data=data, headers=headers, timeout=DEADLINE).status_code == 200
    assert (data_dir / "files" / "k").read_bytes() == data


def test_bytes_kept_from_a_broken_whole_put_survive_a_kill(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """The body breaks off (no `Content-Digest`: its bytes are kept); the scope's end
    writes the `.json` durably, so the offset a later `HEAD` answers survives a kill."""
    data_dir, data = tmp_path / "data", b"b" * 300_000
    uploads = data_dir / "uploads"
    server = serve_process(data_dir)
    with raw_put_head(port_of(server.url), "b", len(data), digest_field(data)) as sock:
        sock.sendall(data[:100_000])
        wait_until((uploads / "b.part").exists, "the upload created", deadline=DEADLINE)
    wait_until((uploads / "b.json").exists, "the scope ended", deadline=DEADLINE)
    with requests.Session() as session:
        kept = int(
            session.head(f"{server.url}/uploads/b", timeout=DEADLINE).headers["Upload-Offset"]
        )
    server.kill()
    restarted = serve_process(data_dir)
    with requests.Session() as session:
        head = session.head(f"{restarted.url}/uploads/b", timeout=DEADLINE)
    assert (head.status_code, int(head.headers["Upload-Offset"])) == (200, kept)


# --- the record tree --------------------------------------------------------------------


def test_a_record_in_a_shard_another_writer_made_fsyncs_its_parents(tmp_path: Path) -> None:
    tree = RecordTree(tmp_path / "records", durable=True)
    tree.root.mkdir()
    first = "x1"
    second = next(f"y{n}" for n in range(100_000) if shard_of(f"y{n}") == shard_of(first))
    # A writer that made the shard and has not fsynced its parents yet:
    tree._make_shard(tree.shard(first), durable=True)
    assert set(tree._unsynced) == {tree.shard(first), tree.shard(first).rpartition("/")[0]}
    tree.write(second, b"{}")
    assert tree._unsynced == {}
    tree.write(first, b"{}")
    assert tree.read(first) == b"{}" and tree.read(second) == b"{}" and tree.count() == 2
