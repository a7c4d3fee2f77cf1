"""The sender's checked reads (sender/localfile.py) and file-region bodies (common/http.py):
a file sent in one request is sent as checked, in one thread hop; a larger file's
chunks are regions of the checked descriptor, sent from the file (sendfile, or pieces
over TLS), and a region that changed after its digest was taken is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

import aiohttp
import pytest
import trustme
import xxhash
from conftest import StartServer
from support import damage_file

from transfer.common.http import Region, new_session
from transfer.core.errors import LocalFileDamaged, TransientError
from transfer.core.filestate import FileState
from transfer.sender.client import Announce, Body, Progress, UploadClient
from transfer.sender.journal import JournalEntry
from transfer.sender.localfile import (
    HASH_BLOCK,
    hash_file,
    hash_for_journal,
    identity,
    open_checked,
)
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader

P = ParamSpec("P")
T = TypeVar("T")
CHUNK = 64 * 1024
ANNOUNCE = Announce("a.bin", {"dtype": "int16"}, bytes(16))


def spooled(path: Path, data: bytes, file_id: str = "run-00000") -> JournalEntry:
    path.write_bytes(data)
    digest = xxhash.xxh3_128_hexdigest(data)
    return JournalEntry(
        file_id, path.name, str(path), len(data), "int16", digest, FileState.GENERATED
    )


def pattern(size: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


@pytest.mark.parametrize("size", [0, 1, HASH_BLOCK - 1, HASH_BLOCK, HASH_BLOCK + 1])
def test_hash_file_is_the_xxh3_of_the_bytes(tmp_path: Path, size: int) -> None:
    data = pattern(size)
    (tmp_path / "f").write_bytes(data)
    assert hash_file(tmp_path / "f") == (size, xxhash.xxh3_128_hexdigest(data))


async def content(data: memoryview | Region) -> bytes:
    """A chunk's bytes as they are now (a region is read from its file)."""
    return await asyncio.to_thread(data.read) if isinstance(data, Region) else bytes(data)


async def test_a_file_sent_whole_is_sent_as_checked(tmp_path: Path) -> None:
    """A change after the check cannot reach the request: the checked bytes are kept."""
    data = pattern(CHUNK)
    entry = spooled(tmp_path / "a.bin", data)
    async with open_checked(entry, CHUNK) as source:
        (tmp_path / "a.bin").write_bytes(pattern(CHUNK, seed=2))
        assert await content(await source.read(0)) == data
        assert await content(await source.read(1000)) == data[1000:]


async def test_chunks_are_regions_of_the_checked_file(tmp_path: Path) -> None:
    """A larger file is read through the descriptor that was hashed: a file renamed over
    the path after the check is not the one sent. Each region carries the digest of its
    bytes, taken when it was read."""
    data = pattern(3 * CHUNK - 5)
    entry = spooled(tmp_path / "a.bin", data)
    async with open_checked(entry, CHUNK) as source:
        (tmp_path / "other").write_bytes(pattern(3 * CHUNK, seed=2))
        os.replace(tmp_path / "other", tmp_path / "a.bin")
        regions = [await source.read(offset) for offset in range(0, len(data), CHUNK)]
        parts = [await content(region) for region in regions]
    assert b"".join(parts) == data
    assert [len(region) for region in regions] == [CHUNK, CHUNK, CHUNK - 5]
    for region, part in zip(regions, parts, strict=True):
        assert isinstance(region, Region)
        assert region.digests == {"xxh3-128": xxhash.xxh3_128_digest(part)}


@pytest.mark.parametrize("how", ["flip", "truncate", "append", "delete"])
@pytest.mark.parametrize("chunk", [CHUNK, 4 * CHUNK], ids=["chunked", "whole"])
async def test_a_damaged_file_is_refused_before_anything_is_read(
    tmp_path: Path, how: str, chunk: int
) -> None:
    entry = spooled(tmp_path / "a.bin", pattern(2 * CHUNK))
    damage_file(tmp_path / "a.bin", how)
    expected = "No such file" if how == "delete" else "changed on disk since it was journaled"
    with pytest.raises(LocalFileDamaged, match=expected):
        async with open_checked(entry, chunk):
            raise AssertionError("a damaged file was opened")


def rewrite(path: Path, offset: int, data: bytes) -> None:
    """Change bytes in place: the same file (inode), other content."""
    with path.open("r+b") as stream:
        stream.seek(offset)
        stream.write(data)


async def test_a_chunk_asked_for_again_is_compared_with_the_check(tmp_path: Path) -> None:
    """A retry reads the chunk again: changed since the check, the file is damaged. A
    chunk off the grid (after a short acknowledgement) is hashed as it is now."""
    data = pattern(3 * CHUNK)
    entry = spooled(tmp_path / "a.bin", data)
    async with open_checked(entry, CHUNK) as source:
        first = await source.read(0)
        assert isinstance(first, Region)
        assert first.digests["xxh3-128"] == xxhash.xxh3_128_digest(data[:CHUNK])
        assert await source.read(0) == first  # read again, unchanged: the same chunk
        rewrite(tmp_path / "a.bin", CHUNK + 10, b"changed")
        off_grid = await source.read(CHUNK + 5)
        assert isinstance(off_grid, Region)
        now = (tmp_path / "a.bin").read_bytes()[CHUNK + 5 : 2 * CHUNK + 5]
        assert off_grid.digests["xxh3-128"] == xxhash.xxh3_128_digest(now)
        with pytest.raises(LocalFileDamaged, match="changed on disk since it was journaled"):
            await source.read(CHUNK)


async def test_a_region_changed_after_its_digest_is_refused_by_the_server(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """The bytes sent come from the file again (sendfile): if they changed since the
    digest was taken, the server refuses the chunk and keeps nothing of it."""
    server = serve_process(tmp_path / "data")
    entry = spooled(tmp_path / "a.bin", pattern(2 * CHUNK))
    async with new_session() as session, open_checked(entry, CHUNK) as source:
        client = UploadClient(session, server.url)
        region = await source.read(0)
        rewrite(tmp_path / "a.bin", 100, b"changed")
        with pytest.raises(TransientError, match="chunk_digest_mismatch"):
            await client.put_chunk(entry.file_id, 0, region, entry.size, announce=ANNOUNCE)
        assert (await client.query(entry.file_id)).offset == 0


async def test_a_region_cut_short_fails_its_request(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """A file truncated after the digest fails the request at once (a transient error:
    the retry's read finds the file short), rather than leaving the body unfinished."""
    server = serve_process(tmp_path / "data")
    entry = spooled(tmp_path / "a.bin", pattern(2 * CHUNK))
    async with new_session() as session, open_checked(entry, CHUNK) as source:
        client = UploadClient(session, server.url)
        region = await source.read(0)
        os.truncate(tmp_path / "a.bin", 1000)
        with pytest.raises(TransientError):
            await client.put_chunk(entry.file_id, 0, region, entry.size, announce=ANNOUNCE)
        with pytest.raises(LocalFileDamaged, match="shorter than its journaled"):
            await source.read(0)


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the calls handed to it (thread hops)."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.hops = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self.hops += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(("size", "hops"), [(CHUNK, 1), (3 * CHUNK, 1)])
async def test_thread_hops_per_delivery(
    serve_process: StartServer, tmp_path: Path, size: int, hops: int
) -> None:
    """One hop per delivery: a file sent in one request is read, hashed and compared in
    it; a larger file is hashed in it, with its chunks' digests, and its regions go
    out through sendfile (a region read in pieces costs a hop per piece: TLS below)."""
    server = serve_process(tmp_path / "data")
    entry = spooled(tmp_path / "a.bin", pattern(size))
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    try:
        async with new_session() as session:
            uploader = Uploader(UploadClient(session, server.url), CHUNK, RetryPolicy(timeout=10))
            done = await uploader.deliver(entry, fresh=True)
    finally:
        executor.shutdown(wait=True)
    assert done.state is FileState.CONFIRMED
    assert (tmp_path / "data" / "files" / entry.file_id).read_bytes() == pattern(size)
    assert executor.hops == hops


async def test_regions_go_out_in_pieces_over_tls(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """No sendfile through TLS: each region is read in pieces in a thread instead."""
    size = 3 * CHUNK - 5
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    server = serve_process(tmp_path / "data", extra=tls)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    entry = spooled(tmp_path / "a.bin", pattern(size))
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    try:
        async with new_session(ssl_context=context) as session:
            client = UploadClient(session, server.url)
            uploader = Uploader(client, CHUNK, RetryPolicy(timeout=10), window=1)
            done = await uploader.deliver(entry, fresh=True)
    finally:
        executor.shutdown(wait=True)
    assert done.state is FileState.CONFIRMED
    assert (tmp_path / "data" / "files" / entry.file_id).read_bytes() == pattern(size)
    assert executor.hops == 1 + 3  # the check, then a piece per chunk (each < PIECE)


class ChangesTheFileFirst(UploadClient):
    """Changes the file in place just before the first chunk goes out: after the check."""

    def __init__(self, session: aiohttp.ClientSession, url: str, path: Path) -> None:
        super().__init__(session, url)
        self.path, self.changed = path, False

    async def put_chunk(
        self, file_id: str, start: int, data: Body, total: int, *, announce: Announce | None = None
    ) -> Progress:
        if not self.changed:
            rewrite(self.path, 10, b"changed")
            self.changed = True
        return await super().put_chunk(file_id, start, data, total, announce=announce)


async def test_a_file_changed_after_the_check_fails_and_is_never_published(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """The first chunk is refused (its bytes are not the checked ones); its retry reads it
    again and finds the file damaged: failed at once, not retried until the budget ends."""
    server = serve_process(tmp_path / "data")
    entry = spooled(tmp_path / "a.bin", pattern(3 * CHUNK))
    async with new_session() as session:
        client = ChangesTheFileFirst(session, server.url, tmp_path / "a.bin")
        uploader = Uploader(client, CHUNK, RetryPolicy(timeout=10))
        done = await uploader.deliver(entry, fresh=True)
    assert done.state is FileState.FAILED
    assert done.reason is not None and "changed on disk since it was journaled" in done.reason
    assert not (tmp_path / "data" / "files" / entry.file_id).exists()


def rchar() -> int:
    """Bytes this process has read so far (read, pread, sendfile), as the kernel counts."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar: "):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("size", [2 * CHUNK, 3 * CHUNK - 5, 3 * CHUNK])
def test_the_journaling_pass_takes_the_checks_chunk_digests(tmp_path: Path, size: int) -> None:
    data = pattern(size)
    (tmp_path / "f").write_bytes(data)
    hashed = hash_for_journal(tmp_path / "f", lambda n: CHUNK if n > CHUNK else None)
    assert (hashed.size, hashed.digest) == (size, xxhash.xxh3_128_hexdigest(data))
    parts = [data[i : i + CHUNK] for i in range(0, size, CHUNK)]
    assert hashed.digests == b"".join(xxhash.xxh3_128_digest(part) for part in parts)
    assert hashed.reusable and hashed.identity == identity((tmp_path / "f").stat())
    small = hash_for_journal(tmp_path / "f", lambda n: None)  # sent whole: nothing to keep
    assert (small.size, small.digest, small.reusable) == (size, hashed.digest, False)


async def test_the_first_attempt_reuses_the_journaling_pass(tmp_path: Path) -> None:
    """The file read for the journal is not read again by the check: its chunks go out
    with the digests that pass took (rchar barely moves: a few bytes of /proc)."""
    size = 64 * CHUNK
    entry = spooled(tmp_path / "a.bin", pattern(size))
    hashed = hash_for_journal(tmp_path / "a.bin", lambda n: CHUNK)
    before = rchar()
    async with open_checked(entry, CHUNK, hashed) as source:
        read = rchar() - before
        first = await source.read(0)
    assert read < CHUNK, f"{read} bytes read by a check the journaling pass made"
    assert isinstance(first, Region)
    assert first.digests["xxh3-128"] == xxhash.xxh3_128_digest(pattern(size)[:CHUNK])


@pytest.mark.parametrize("why", ["touched", "other chunk size", "other digest", "replaced"])
async def test_the_full_check_runs_unless_the_file_is_the_one_read(
    tmp_path: Path, why: str
) -> None:
    """Any sign that the file or the plan differs from the journaling pass (its time,
    the chunk size, the digest journaled, another file at the path) means a full pass."""
    size = 64 * CHUNK
    path = tmp_path / "a.bin"
    entry = spooled(path, pattern(size))
    hashed = hash_for_journal(path, lambda n: CHUNK)
    chunk = 2 * CHUNK if why == "other chunk size" else CHUNK
    if why == "touched":
        os.utime(path, ns=(1, 1))
    elif why == "other digest":
        hashed = dataclasses.replace(hashed, digest="0" * 32)
    elif why == "replaced":
        (tmp_path / "b.bin").write_bytes(pattern(size))
        os.replace(tmp_path / "b.bin", path)
    before = rchar()
    async with open_checked(entry, chunk, hashed):
        read = rchar() - before
    assert read >= size
