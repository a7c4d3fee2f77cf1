"""`FileStore`'s disk: `records/` sharded, `uploads/` only what is unfinished, recovery
of every crash point of a publication, and the one-time migration of a flat data dir
(completed records as `uploads/{id}.json`, as every version before `records/` wrote).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import xxhash
from store_conformance import write

from transfer.core.errors import Code, Conflict
from transfer.core.records import UploadSpec
from transfer.store.filestore import FileStore
from transfer.store.recordtree import RecordTree, shard_of

pytestmark = pytest.mark.timeout(30)


def opened(data_dir: Path, cache_size: int = 100) -> FileStore:
    store = FileStore(data_dir, cache_size=cache_size)
    store.open()
    return store


async def upload(store: FileStore, upload_id: str, data: bytes) -> None:
    """A whole upload: create, one chunk, finalize (as a PUT of the whole file does)."""
    await store.create(UploadSpec(upload_id, f"{upload_id}.bin", len(data)))
    await write(store, upload_id, data, 0, len(data), pieces=1)
    await store.finalize(upload_id)


def flat_record(data_dir: Path, upload_id: str, data: bytes, *, published: bool) -> None:
    """What versions before `records/` left for a completed upload: `uploads/{id}.json`
    with `complete: true`, and the file in `files/` (or, when a crash cut publication
    short, still `uploads/{id}.part`). The JSON is written literally, as they wrote it."""
    (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
    (data_dir / "files").mkdir(exist_ok=True)
    digest = xxhash.xxh3_128(data).hexdigest()
    doc = (
        f'{{"id": "{upload_id}", "name": "{upload_id}.bin", "size": {len(data)}, '
        f'"metadata": {{"k": "v"}}, "repr_digest": {{}}, "complete": true, '
        f'"digests": {{"xxh3-128": "{digest}"}}}}'
    )
    (data_dir / "uploads" / f"{upload_id}.json").write_text(doc)
    target = data_dir / ("files" if published else "uploads") / upload_id
    (target if published else target.with_suffix(".part")).write_bytes(data)


def torn_write(tree: RecordTree, upload_id: str) -> None:
    """A record write cut off mid-way: a partial temporary file in its shard."""
    tmp = Path(tree.path(upload_id) + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b'{"torn')


def test_the_shard_is_a_stable_hash_of_the_id() -> None:
    """Pinned: a different hash would lose every record written with this one."""
    assert shard_of("abc") == ("ae", "1e")  # blake2b("abc", digest_size=2)
    assert RecordTree(Path("/d/records"), durable=False).path("abc") == "/d/records/ae/1e/abc.json"
    spread = {shard_of(f"file-{n}")[0] for n in range(2000)}
    assert len(spread) > 200  # the 256 top-level shards fill evenly


async def test_a_publication_leaves_uploads_empty_and_the_record_sharded(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path)
    await upload(store, "one", b"x" * 100)
    await store.create(UploadSpec("open", size=10))
    assert sorted(p.name for p in store.uploads_dir.iterdir()) == ["open.json", "open.part"]
    assert (tmp_path / "files" / "one").read_bytes() == b"x" * 100
    top, leaf = shard_of("one")
    record = json.loads((tmp_path / "records" / top / leaf / "one.json").read_bytes())
    assert (record["id"], record["complete"], record["size"]) == ("one", True, 100)


@pytest.mark.parametrize("point", ["record-written", "renamed", "stray-part"])
async def test_every_crash_point_of_a_publication_is_finished(tmp_path: Path, point: str) -> None:
    """Record durable, then rename, then the `.json` leaves `uploads/`. A `.part` found
    beside a published file is a leftover and never replaces the file."""
    data = os.urandom(3000)
    store = opened(tmp_path)
    await upload(store, "u", data)
    meta, part = tmp_path / "uploads" / "u.json", tmp_path / "uploads" / "u.part"
    meta.write_text(json.dumps({"id": "u", "name": "u.bin", "size": 3000}))  # as before
    if point == "record-written":
        (tmp_path / "files" / "u").rename(part)
    elif point == "stray-part":
        part.write_bytes(b"")
    store = FileStore(tmp_path)
    assert store.open() == (["u"] if point == "record-written" else [])
    assert list(store.uploads_dir.iterdir()) == []
    assert (tmp_path / "files" / "u").read_bytes() == data
    info = await store.get("u")
    assert info is not None and info.record is not None and info.record.size == 3000
    assert store.partial_bytes == 0 and await store.partials() == []


async def test_a_flat_data_dir_is_migrated_once_and_serves_every_old_record(
    tmp_path: Path,
) -> None:
    old = {f"old{n}": os.urandom(100 + n) for n in range(25)}
    for n, (upload_id, data) in enumerate(old.items()):
        flat_record(tmp_path, upload_id, data, published=n != 7)  # old7: cut short
    (tmp_path / "uploads" / "partial.json").write_text(
        '{"id": "partial", "name": null, "size": 50, "metadata": {}, "repr_digest": {}}'
    )
    (tmp_path / "uploads" / "partial.part").write_bytes(b"p" * 20)
    stamp = 1_600_000_000.0
    os.utime(tmp_path / "uploads" / "old3.json", (stamp, stamp))

    store = FileStore(tmp_path)
    assert store.open() == ["old7"]
    assert store.migrated == 25
    assert sorted(p.name for p in store.uploads_dir.iterdir()) == ["partial.json", "partial.part"]
    for upload_id, data in old.items():
        info = await store.get(upload_id)
        assert info is not None and info.record is not None, upload_id
        assert (info.record.size, dict(info.record.metadata)) == (len(data), {"k": "v"})
        assert info.record.digests["xxh3-128"] == xxhash.xxh3_128(data).digest()
        assert (tmp_path / "files" / upload_id).read_bytes() == data
    assert await store.completed_at("old3") == stamp  # the record keeps its age
    partial = await store.get("partial")
    assert partial is not None and partial.state.offset == 20 and store.partial_bytes == 20

    again = FileStore(tmp_path)
    assert (again.open(), again.migrated) == ([], 0)
    assert again.counts().records_read == 1  # the partial's `.json`, nothing else


async def test_a_migration_cut_short_carries_on(tmp_path: Path) -> None:
    """Killed after some records were copied but before their old `.json` went: the
    copies are whole (written atomically), so the next start-up finishes the rest."""
    old = {f"old{n}": os.urandom(64) for n in range(6)}
    for upload_id, data in old.items():
        flat_record(tmp_path, upload_id, data, published=True)
    tree = RecordTree(tmp_path / "records", durable=False)
    (tmp_path / "records").mkdir()
    for upload_id in ("old0", "old1"):
        tree.write(upload_id, (tmp_path / "uploads" / f"{upload_id}.json").read_bytes())
    torn_write(tree, "old2")
    store = FileStore(tmp_path)
    store.open()
    assert store.migrated == 6
    assert list(store.uploads_dir.iterdir()) == []
    for upload_id, data in old.items():
        opened_file = await store.open_file(upload_id)
        assert opened_file is not None
        async with opened_file as file:
            assert await file.read(0, 100) == data
        assert (await store.get(upload_id)) is not None


async def test_an_expired_record_keeps_its_file_and_its_id(tmp_path: Path) -> None:
    store = opened(tmp_path)
    await upload(store, "done", b"d" * 10)
    assert await store.get("done") is not None  # cached
    await store.forget_record("done")
    assert await store.get("done") is None  # never served stale from the cache
    assert await FileStore(tmp_path).get("done") is None
    opened_file = await store.open_file("done")
    assert opened_file is not None
    await opened_file.close()
    with pytest.raises(Conflict) as refused:
        await store.create(UploadSpec("done", size=10))
    assert refused.value.code == Code.UPLOAD_COMPLETE
    assert (tmp_path / "files" / "done").read_bytes() == b"d" * 10
    assert list(store.uploads_dir.iterdir()) == []


async def test_records_by_age(tmp_path: Path) -> None:
    store = opened(tmp_path)
    for upload_id in ("a", "b", "c"):
        await upload(store, upload_id, upload_id.encode())
    path = RecordTree(tmp_path / "records", durable=False).path("a")
    os.utime(path, (1000.0, 1000.0))
    assert await store.completed_before(2000.0) == ["a"]
    assert await store.completed_at("a") == 1000.0
    assert await store.completed_at("nope") is None
    assert sorted(await store.completed_before(time.time() + 10**6)) == ["a", "b", "c"]
