"""The store conformance suite: what every `ServerStore` must do, tested through the
protocols of `transfer.store.base` only.

Use it by subclassing `StoreConformance` in a test module that provides a `stores`
fixture: a `StoreFactory` whose `open()` gives a store over fresh storage the first time
and, afterwards, a new store over the same storage, as a restart after a crash would
(the previous instance is abandoned, never closed). tests/test_store_conformance.py
runs it over `FileStore` and `MemoryStore`; a new store adds itself there.

Chunks are planned with `transfer.core.protocol.plan_chunk`, as the server does; digests
are computed with xxhash and hashlib directly, not with `transfer.core.integrity`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from typing import Protocol

import pytest
import xxhash

from transfer.core.errors import (
    BadRequest,
    Code,
    Conflict,
    DigestMismatch,
    ProtocolError,
    RequestTimeout,
)
from transfer.core.protocol import ChunkPlan, ChunkRange, plan_chunk
from transfer.core.records import UploadInfo, UploadSpec
from transfer.store.base import CountedStore, ServerStore, StoreCounts


class StoreFactory(Protocol):
    def open(self) -> ServerStore:
        """A store over this factory's storage (reopened, if one was opened before)."""
        ...


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def xxh(data: bytes) -> dict[str, bytes]:
    return {"xxh3-128": xxhash.xxh3_128(data).digest()}


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def broken(*pieces: bytes) -> AsyncIterator[bytes]:
    """A body that breaks off after `pieces`, as a stalled client's does."""
    for piece in pieces:
        yield piece
    raise RequestTimeout(Code.BODY_STALLED, "no body bytes for a while")


async def held(
    first: bytes, rest: bytes, started: asyncio.Event, go: asyncio.Event
) -> AsyncIterator[bytes]:
    """`first`, then (once `first` is taken and `go` is set) `rest`."""
    yield first
    started.set()
    await go.wait()
    yield rest


async def write(
    store: ServerStore,
    upload_id: str,
    data: bytes,
    start: int,
    total: int | None,
    *,
    digest: bool = True,
    pieces: int = 3,
) -> UploadInfo:
    """PUT-like: plan the chunk `data` at `start` against the store's state and write it."""
    plan = await planned(store, upload_id, data, start, total)
    size = max(1, -(-len(data) // pieces))
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return await store.write_chunk(upload_id, plan, body(*parts), xxh(data) if digest else {})


async def planned(
    store: ServerStore, upload_id: str, data: bytes, start: int, total: int | None
) -> ChunkPlan:
    info = await store.get(upload_id)
    assert info is not None
    return plan_chunk(info.state, ChunkRange(start, start + len(data) - 1, total))


async def offset(store: ServerStore, upload_id: str) -> int:
    info = await store.get(upload_id)
    assert info is not None
    return info.state.offset


async def published(store: ServerStore, upload_id: str) -> bytes | None:
    """The published file's bytes, read in a few ranges; None if none is published."""
    opened = await store.open_file(upload_id)
    if opened is None:
        return None
    async with opened as file:
        third = max(1, file.size // 3)
        pieces = [await file.read(at, third) for at in range(0, file.size, third)]
        assert await file.read(file.size, 10) == b""
        return b"".join(pieces)


def assert_code(exc: pytest.ExceptionInfo[ProtocolError], code: Code) -> None:
    assert exc.value.code == code, exc.value


def counts(store: ServerStore) -> StoreCounts:
    assert isinstance(store, CountedStore), f"{type(store).__name__} must be a CountedStore"
    return store.counts()


async def complete(store: ServerStore, upload_id: str, data: bytes) -> None:
    await store.create(UploadSpec(upload_id, f"{upload_id}.bin", len(data), {"n": upload_id}))
    await write(store, upload_id, data, 0, len(data), pieces=1)
    await store.finalize(upload_id)


class StoreConformance:
    """Every test takes `stores`, a `StoreFactory` fixture of the subclass's module."""

    # --- creation and offsets ---------------------------------------------------------

    async def test_create_get_and_an_unknown_id(self, stores: StoreFactory) -> None:
        store = stores.open()
        assert await store.get("nope") is None
        spec = UploadSpec("u1", "u1.bin", 100, {"k": "v"}, xxh(b"x"))
        info = await store.create(spec)
        assert (info.spec, info.state.offset, info.state.total, info.record) == (
            spec,
            0,
            100,
            None,
        )
        assert await store.get("u1") == info
        reopened = await stores.open().get("u1")
        assert reopened is not None and reopened.spec == spec and reopened.state.offset == 0

    async def test_create_again_is_idempotent_or_conflicts(self, stores: StoreFactory) -> None:
        store = stores.open()
        await store.create(UploadSpec("u1", "a.bin", 100))
        await write(store, "u1", payload(40), 0, 100)
        again = await store.create(UploadSpec("u1", "a.bin", 100))
        assert again.state.offset == 40  # never reset by a re-create
        with pytest.raises(Conflict) as refused:
            await store.create(UploadSpec("u1", "b.bin", 100))
        assert_code(refused, Code.UPLOAD_CONFLICT)

    async def test_offsets_survive_a_crash(self, stores: StoreFactory) -> None:
        data = payload(3000, seed=1)
        store = stores.open()
        await store.create(UploadSpec("u1", size=len(data)))
        assert (await write(store, "u1", data[:1000], 0, 3000)).state.offset == 1000
        assert (await write(store, "u1", data[1000:2000], 1000, 3000)).state.offset == 2000

        store = stores.open()  # the old instance is abandoned, as a crash would
        assert await offset(store, "u1") == 2000
        await write(store, "u1", data[2000:], 2000, 3000)
        done = await store.finalize("u1")  # the whole-file digest comes from storage now
        assert done.record is not None and done.record.digests["xxh3-128"] == xxh(data)["xxh3-128"]
        assert await published(stores.open(), "u1") == data

    # --- failed chunks ------------------------------------------------------------------

    @pytest.mark.parametrize("with_digest", [False, True], ids=["no-digest", "digest"])
    async def test_a_body_that_breaks_off(self, stores: StoreFactory, with_digest: bool) -> None:
        """Without Content-Digest what arrived is kept; with one, nothing of the chunk."""
        data = payload(1000, seed=2)
        store = stores.open()
        await store.create(UploadSpec("u1", size=1000))
        await write(store, "u1", data[:100], 0, 1000)
        plan = await planned(store, "u1", data[100:], 100, 1000)
        digest = xxh(data[100:]) if with_digest else {}
        with pytest.raises(RequestTimeout):
            await store.write_chunk("u1", plan, broken(data[100:250], data[250:400]), digest)
        kept = 100 if with_digest else 400
        assert await offset(store, "u1") == kept
        assert store.partial_bytes == kept
        store = stores.open()
        assert await offset(store, "u1") == kept
        await write(store, "u1", data[kept:], kept, 1000)
        await store.finalize("u1")
        assert await published(store, "u1") == data

    async def test_a_cancelled_chunk_is_cancelled_and_keeps_what_arrived(
        self, stores: StoreFactory
    ) -> None:
        store = stores.open()
        data = payload(600, seed=3)
        await store.create(UploadSpec("u1", size=600))
        started, go = asyncio.Event(), asyncio.Event()
        plan = await planned(store, "u1", data, 0, 600)
        task = asyncio.create_task(
            store.write_chunk("u1", plan, held(data[:200], data[200:], started, go), {})
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await offset(store, "u1") == 200
        assert (await write(store, "u1", data[200:], 200, 600)).state.offset == 600

    async def test_a_chunk_digest_mismatch_is_cut_back(self, stores: StoreFactory) -> None:
        data = payload(900, seed=4)
        store = stores.open()
        await store.create(UploadSpec("u1", size=900))
        await write(store, "u1", data[:300], 0, 900)
        plan = await planned(store, "u1", data[300:600], 300, 900)
        with pytest.raises(DigestMismatch) as refused:
            await store.write_chunk("u1", plan, body(data[300:600]), xxh(b"other bytes"))
        assert_code(refused, Code.CHUNK_DIGEST_MISMATCH)
        assert await offset(store, "u1") == 300
        assert store.partial_bytes == 300
        assert await offset(stores.open(), "u1") == 300
        await write(store, "u1", data[300:], 300, 900)
        await store.finalize("u1")
        assert await published(store, "u1") == data

    @pytest.mark.parametrize(
        ("sent", "code"), [(150, Code.BODY_TOO_SHORT), (250, Code.BODY_TOO_LONG)]
    )
    async def test_a_body_of_the_wrong_length_is_cut_back(
        self, stores: StoreFactory, sent: int, code: Code
    ) -> None:
        data = payload(400, seed=5)
        store = stores.open()
        await store.create(UploadSpec("u1", size=400))
        await write(store, "u1", data[:100], 0, 400)
        plan = await planned(store, "u1", data[100:300], 100, 400)
        with pytest.raises(BadRequest) as refused:
            await store.write_chunk("u1", plan, body(data[100 : 100 + sent]), {})
        assert_code(refused, code)
        assert await offset(store, "u1") == 100
        assert await offset(stores.open(), "u1") == 100

    # --- overlaps and gaps --------------------------------------------------------------

    async def test_an_overlapping_chunk_skips_the_stored_prefix(self, stores: StoreFactory) -> None:
        data = payload(300, seed=6)
        store = stores.open()
        await store.create(UploadSpec("u1", size=300))
        await write(store, "u1", data[:100], 0, 300)
        assert (await write(store, "u1", data[50:200], 50, 300)).state.offset == 200
        assert (await write(store, "u1", data[120:180], 120, 300)).state.offset == 200
        assert store.partial_bytes == 200
        # The overlap is not written, but the whole body is still checked.
        plan = await planned(store, "u1", data[:250], 0, 300)
        with pytest.raises(DigestMismatch):
            await store.write_chunk("u1", plan, body(data[:250]), xxh(data[:249]))
        assert await offset(store, "u1") == 200
        await write(store, "u1", data[150:], 150, 300)
        await store.finalize("u1")
        assert await published(store, "u1") == data

    async def test_a_gap_is_refused_before_the_store(self, stores: StoreFactory) -> None:
        store = stores.open()
        await store.create(UploadSpec("u1", size=300))
        await write(store, "u1", payload(100), 0, 300)
        with pytest.raises(Conflict) as refused:
            await write(store, "u1", payload(50), 150, 300)
        assert_code(refused, Code.OFFSET_GAP)
        assert await offset(store, "u1") == 100

    # --- the whole file -----------------------------------------------------------------

    async def test_a_repr_digest_mismatch_resets_to_zero(self, stores: StoreFactory) -> None:
        data = payload(500, seed=7)
        store = stores.open()
        await store.create(UploadSpec("u1", size=500, repr_digest=xxh(data)))
        wrong = data[:-1] + bytes([data[-1] ^ 1])
        await write(store, "u1", wrong, 0, 500)
        with pytest.raises(DigestMismatch) as refused:
            await store.finalize("u1")
        assert_code(refused, Code.REPR_DIGEST_MISMATCH)
        assert await offset(store, "u1") == 0
        assert store.partial_bytes == 0
        assert await store.open_file("u1") is None
        assert await offset(stores.open(), "u1") == 0
        await write(store, "u1", data, 0, 500)
        assert (await store.finalize("u1")).record is not None
        assert await published(store, "u1") == data

    async def test_publication_is_atomic(self, stores: StoreFactory) -> None:
        data = payload(1234, seed=8)
        store = stores.open()
        await store.create(UploadSpec("u1", "u1.bin", size=len(data), metadata={"a": "b"}))
        await write(store, "u1", data, 0, len(data))
        assert await store.open_file("u1") is None  # every byte is there, not published yet
        assert await stores.open().open_file("u1") is None
        done = await store.finalize("u1")
        assert done.record is not None
        assert (done.record.size, done.record.name, dict(done.record.metadata)) == (
            1234,
            "u1.bin",
            {"a": "b"},
        )
        assert await store.finalize("u1") == done  # idempotent
        opened = await store.open_file("u1")
        assert opened is not None
        async with opened as file:
            assert file.size == 1234
            assert file.modified_ns > 0
            assert await file.read(1000, 500) == data[1000:]
        store = stores.open()
        assert await published(store, "u1") == data
        info = await store.get("u1")
        assert info is not None and info.record == done.record
        assert store.partial_bytes == 0

    @pytest.mark.parametrize("reopen", [False, True], ids=["running", "reopened"])
    async def test_the_record_digests(self, stores: StoreFactory, reopen: bool) -> None:
        """xxh3-128 and every declared algorithm; md5 too when none was declared."""
        data = payload(700, seed=9)
        sha = {"sha-256": hashlib.sha256(data).digest()}
        store = stores.open()
        await store.create(UploadSpec("plain", size=700))
        await store.create(UploadSpec("sha", size=700, repr_digest=sha))
        for upload_id in ("plain", "sha"):
            await write(store, upload_id, data, 0, 700)
        store = stores.open() if reopen else store
        plain, declared = await store.finalize("plain"), await store.finalize("sha")
        assert plain.record is not None and declared.record is not None
        assert dict(plain.record.digests) == {
            **xxh(data),
            "md5": hashlib.md5(data).digest(),
        }
        assert dict(declared.record.digests) == {**xxh(data), **sha}

    async def test_declare_a_total_and_a_digest_later(self, stores: StoreFactory) -> None:
        data = payload(400, seed=10)
        store = stores.open()
        await store.create(UploadSpec("u1"))
        await write(store, "u1", data[:300], 0, None)
        with pytest.raises(Conflict) as refused:
            await store.declare("u1", size=200, repr_digest={})
        assert_code(refused, Code.TOTAL_MISMATCH)
        info = await store.declare("u1", size=400, repr_digest=xxh(b"wrong"))
        assert (info.spec.size, info.state.total, info.state.offset) == (400, 400, 300)
        with pytest.raises(Conflict):
            await store.declare("u1", size=500, repr_digest={})
        store = stores.open()
        info = await store.declare("u1", size=None, repr_digest={})
        assert (info.spec.size, info.spec.repr_digest) == (400, xxh(b"wrong"))
        await write(store, "u1", data[300:], 300, 400)
        with pytest.raises(DigestMismatch):
            await store.finalize("u1")  # checked against the digest declared late
        await store.declare("u1", size=None, repr_digest=xxh(data))
        await write(store, "u1", data, 0, 400)
        assert (await store.finalize("u1")).record is not None

    async def test_delete(self, stores: StoreFactory) -> None:
        store = stores.open()
        await store.create(UploadSpec("gone", size=100))
        await store.create(UploadSpec("kept", size=100))
        await write(store, "gone", payload(60), 0, 100)
        await write(store, "kept", payload(30), 0, 100)
        await store.delete("gone")
        assert await store.get("gone") is None
        assert await store.modified("gone") is None
        assert [i for i, _ in await store.partials()] == ["kept"]
        assert store.partial_bytes == 30
        store = stores.open()
        assert await store.get("gone") is None
        assert store.partial_bytes == 30
        again = await store.create(UploadSpec("gone", size=100))
        assert again.state.offset == 0

    # --- concurrency --------------------------------------------------------------------

    async def test_a_second_writer_on_one_id_is_refused_and_changes_nothing(
        self, stores: StoreFactory
    ) -> None:
        data = payload(1000, seed=11)
        store = stores.open()
        await store.create(UploadSpec("u1", size=1000))
        await store.create(UploadSpec("u2", size=1000))
        started, go = asyncio.Event(), asyncio.Event()
        plan = await planned(store, "u1", data[:500], 0, 1000)
        first = asyncio.create_task(
            store.write_chunk("u1", plan, held(data[:200], data[200:500], started, go), {})
        )
        await started.wait()
        for attempt in (
            write(store, "u1", data[:500], 0, 1000),
            store.declare("u1", size=None, repr_digest=xxh(data)),
            store.finalize("u1"),
            store.delete("u1"),
        ):
            with pytest.raises(Conflict) as refused:
                await attempt
            assert_code(refused, Code.UPLOAD_CONFLICT)
        assert (await write(store, "u2", data[:300], 0, 1000)).state.offset == 300  # others go on
        go.set()
        assert (await first).state.offset == 500
        assert (await write(store, "u1", data[500:], 500, 1000)).state.offset == 1000
        await store.finalize("u1")
        assert await published(store, "u1") == data

    async def test_a_read_racing_a_delete_never_brings_the_upload_back(
        self, stores: StoreFactory
    ) -> None:
        """`get` is not serialized with mutations (HEAD takes no lock)."""
        store = stores.open()
        for n in range(20):
            await store.create(UploadSpec(f"u{n}", size=100))
            await write(store, f"u{n}", payload(50), 0, 100)
        store = stores.open()  # nothing cached: every get reads the storage
        for n in range(20):
            await asyncio.gather(store.get(f"u{n}"), store.delete(f"u{n}"), store.get(f"u{n}"))
            assert await store.get(f"u{n}") is None
        assert store.partial_bytes == 0
        assert await store.partials() == []

    # --- expiry and quota ---------------------------------------------------------------

    async def test_partials_and_their_modification_times(self, stores: StoreFactory) -> None:
        store = stores.open()
        before = time.time()
        for upload_id in ("a", "b", "done"):
            await store.create(UploadSpec(upload_id, size=10))
        await write(store, "a", payload(5), 0, 10)
        await write(store, "done", payload(10), 0, 10)
        await store.finalize("done")
        after = time.time()
        listed = dict(await store.partials())
        assert sorted(listed) == ["a", "b"]
        for upload_id, modified in listed.items():
            # File systems stamp with a coarse clock: allow a little either side.
            assert before - 1 <= modified <= after + 1
            assert await store.modified(upload_id) == modified
        assert await store.modified("done") is None
        assert await store.modified("nope") is None
        await write(store, "b", payload(5), 0, 10)
        modified_b = await store.modified("b")
        assert modified_b is not None and modified_b >= listed["b"]
        assert dict(await stores.open().partials()).keys() == {"a", "b"}

    async def test_partial_bytes_accounting(self, stores: StoreFactory) -> None:
        store = stores.open()
        assert store.partial_bytes == 0
        assert store.free_bytes() > 0
        await store.create(UploadSpec("a", size=1000))
        await store.create(UploadSpec("b"))
        await write(store, "a", payload(400), 0, 1000)
        await write(store, "b", payload(250), 0, None)
        assert store.partial_bytes == 650
        plan = await planned(store, "a", payload(100), 400, 1000)
        with pytest.raises(DigestMismatch):
            await store.write_chunk("a", plan, body(payload(100)), xxh(b"no"))
        assert store.partial_bytes == 650
        assert stores.open().partial_bytes == 650
        await write(store, "a", payload(1000)[400:], 400, 1000)
        await store.finalize("a")
        assert store.partial_bytes == 250
        await store.delete("b")
        assert store.partial_bytes == 0
        assert stores.open().partial_bytes == 0

    # --- history ------------------------------------------------------------------------

    async def test_start_up_reads_no_completed_records(self, stores: StoreFactory) -> None:
        """Opening reads what is unfinished, never the records of completed uploads: the
        records read by a start-up are the same after 3 completed uploads and after 40
        (counted, not timed); the records are still read, one by one, when asked for."""
        store = stores.open()
        for n in range(2):
            await store.create(UploadSpec(f"partial{n}", size=100))
            await write(store, f"partial{n}", payload(10 + n), 0, 100)
        read_at_start, made = [], 0
        for done in (3, 40):
            for n in range(made, done):
                await complete(store, f"done{n}", payload(50, seed=n))
            made = done
            store = stores.open()
            read_at_start.append(counts(store).records_read)
        assert read_at_start[0] == read_at_start[1] <= 2, read_at_start
        assert counts(store).partials == 2
        for n in range(40):
            before = counts(store).records_read
            info = await store.get(f"done{n}")
            assert info is not None and info.record is not None
            assert (info.record.size, dict(info.record.metadata)) == (50, {"n": f"done{n}"})
            assert counts(store).records_read == before + 1  # read on demand, once
            assert await published(store, f"done{n}") == payload(50, seed=n)
        assert counts(store).cached <= max(counts(store).cache_capacity, 0)
        assert await offset(store, "partial1") == 11
