"""`ChunkWriter`'s direct I/O for large chunks, on real files (store/directio.py).

A chunk of `DIRECT_FROM` bytes or more, given a `StagingPool`, is written with
`O_DIRECT` past its first block boundary; the file still holds exactly the old bytes
plus the body (unaligned offsets and lengths: head and tail through the page cache,
nothing past the last byte), readers see it, and only the pool's sole writer goes
direct (a writer beside another writes buffered, so many uploads add no buffers). A
broken body keeps what arrived (fsynced) or is cut back; a full disk (a real small
tmpfs) is a 507 and leaves the old offset; a file position the kernel refuses direct
falls back to buffered writes; and a process killed at any instant of a direct upload
leaves a `.part` that is a prefix of the bytes.
"""

from __future__ import annotations

import itertools
import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from store_conformance import body, broken, write
from support import small_tmpfs

from transfer.core.errors import InsufficientStorage, RequestTimeout
from transfer.core.protocol import ChunkPlan
from transfer.core.records import UploadSpec
from transfer.store.chunkwriter import DIRECT_FROM, ChunkWriter, StagingPool
from transfer.store.directio import BLOCK, STAGE, DirectFile
from transfer.store.filestore import FileStore
from transfer.testing.polling import wait_until

PIECE = 1024 * 1024 - 1  # odd pieces, so buffers fill across piece boundaries
DEADLINE = 30.0


def pieces(data: bytes, size: int = PIECE) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def plan_for(offset: int, length: int) -> ChunkPlan:
    return ChunkPlan(skip=0, write=length, total=None)


async def written(
    part: Path, offset: int, data: bytes, pool: StagingPool, *, durable: bool = True
) -> ChunkWriter:
    """Write `data` at `offset` of `part` through a writer on `pool`; return the writer."""
    writer = await ChunkWriter.open(
        str(part), offset, plan_for(offset, len(data)), {}, durable=durable, pool=pool
    )
    running = xxhash.xxh3_128()
    try:
        await writer.consume(body(*pieces(data)), running.update)
        writer.check()
        await writer.sync()
    finally:
        await writer.close()
    assert running.digest() == xxhash.xxh3_128(data).digest()
    return writer


@pytest.mark.parametrize("head_size", [0, 12345, BLOCK - 1])
@pytest.mark.parametrize("durable", [True, False], ids=["fsync", "no-fsync"])
async def test_a_large_chunk_goes_direct_and_the_file_holds_exactly_the_bytes(
    tmp_path: Path, head_size: int, durable: bool
) -> None:
    part, pool = tmp_path / "up.part", StagingPool()
    head = os.urandom(head_size)
    part.write_bytes(head)
    data = os.urandom(2 * STAGE + 777)  # full buffers, then a partial one with a tail
    writer = await written(part, len(head), data, pool, durable=durable)
    assert writer.direct
    assert writer.written == len(data)
    assert part.stat().st_size == len(head) + len(data)
    assert part.read_bytes() == head + data  # through the page cache: coherent
    assert pool.writers == 0


async def test_the_next_chunk_continues_at_an_unaligned_end(tmp_path: Path) -> None:
    part, pool = tmp_path / "up.part", StagingPool()
    part.write_bytes(b"")
    first, second = os.urandom(DIRECT_FROM + 100), os.urandom(DIRECT_FROM + 3 * BLOCK + 1)
    await written(part, 0, first, pool)
    await written(part, len(first), second, pool)
    assert part.read_bytes() == first + second


async def test_small_chunks_and_a_writer_beside_another_write_buffered(tmp_path: Path) -> None:
    part, pool = tmp_path / "up.part", StagingPool()
    part.write_bytes(b"")
    big, small = plan_for(0, DIRECT_FROM), plan_for(0, 10)
    alone = ChunkWriter(os.open(part, os.O_WRONLY), 0, small, {}, durable=True, pool=pool)
    assert not alone.direct
    await alone.close()
    first = ChunkWriter(os.open(part, os.O_WRONLY), 0, big, {}, durable=True, pool=pool)
    second = ChunkWriter(os.open(part, os.O_WRONLY), 0, big, {}, durable=True, pool=pool)
    assert (first.direct, second.direct) == (True, False)
    for writer in (first, second):
        await writer.close()
    assert pool.writers == 0
    third = ChunkWriter(os.open(part, os.O_WRONLY), 0, big, {}, durable=True, pool=pool)
    assert third.direct
    await third.close()


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "cut-back"])
async def test_a_broken_body_keeps_what_arrived_or_cuts_back(tmp_path: Path, keep: bool) -> None:
    part, pool = tmp_path / "up.part", StagingPool()
    head = os.urandom(5000)
    part.write_bytes(head)
    data = os.urandom(3 * STAGE)
    arrived = pieces(data)[:6]  # 6 pieces of ~1 MiB: one full buffer written, one staged
    writer = await ChunkWriter.open(
        str(part), len(head), plan_for(len(head), len(data)), {}, durable=True, pool=pool
    )
    try:
        with pytest.raises(RequestTimeout):
            await writer.consume(broken(*arrived), None)
        assert writer.body_failed
        offset = await writer.settle(keep=keep)
    finally:
        await writer.close()
    received = b"".join(arrived)
    assert offset == len(head) + (len(received) if keep else 0)
    assert part.read_bytes() == head + (received if keep else b"")
    assert pool.writers == 0


def test_a_position_the_kernel_refuses_direct_is_written_buffered(tmp_path: Path) -> None:
    part = tmp_path / "up.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT)
    buffer = mmap.mmap(-1, STAGE)
    try:
        buffer[:] = os.urandom(STAGE)
        os.write(fd, b"x")  # a position off the block boundary: EINVAL for O_DIRECT
        target = DirectFile(fd)
        target.put(buffer, 2 * BLOCK)
        target.put(buffer, 3 * BLOCK)
        assert target.refused and not target.direct
    finally:
        os.close(fd)
    assert part.read_bytes() == b"x" + buffer[: 2 * BLOCK] + buffer[: 3 * BLOCK]
    buffer.close()


# --- a full disk, for real --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs (see `support.small_tmpfs`)."""
    with small_tmpfs(tmp_path, 6) as mount:
        yield mount


async def test_a_full_disk_is_insufficient_storage_and_leaves_the_old_offset(
    small_disk: Path,
) -> None:
    part, pool = small_disk / "up.part", StagingPool()
    head = os.urandom(3000)
    part.write_bytes(head)
    data = os.urandom(3 * STAGE)  # 12 MiB into 6
    writer = await ChunkWriter.open(
        str(part), len(head), plan_for(len(head), len(data)), {}, durable=True, pool=pool
    )
    try:
        with pytest.raises(InsufficientStorage):
            await writer.consume(body(*pieces(data)), None)
            await writer.sync()
        assert not writer.body_failed
        assert await writer.settle(keep=False) == len(head)
    finally:
        await writer.close()
    assert part.read_bytes() == head
    assert pool.writers == 0


# --- through the store --------------------------------------------------------------------


async def test_the_store_publishes_large_unaligned_chunks_byte_for_byte(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.open()
    data = os.urandom(3 * DIRECT_FROM + 4321)
    await store.create(UploadSpec("big", "big.bin", len(data), {}))
    cuts = [0, 1000, 1000 + DIRECT_FROM + 17, 1000 + 2 * DIRECT_FROM + 4095, len(data)]
    for start, end in itertools.pairwise(cuts):
        await write(store, "big", data[start:end], start, len(data), pieces=7)
    info = await store.finalize("big")
    assert info.record is not None
    assert info.record.digests["xxh3-128"] == xxhash.xxh3_128(data).digest()
    assert (tmp_path / "files" / "big").read_bytes() == data


# --- a kill at any instant ---------------------------------------------------------------

CHILD = """
import asyncio, os, sys
from transfer.core.protocol import ChunkPlan
from transfer.store.chunkwriter import ChunkWriter, StagingPool

async def endless(seed):
    n = 0
    while True:
        yield bytes([(seed + n) % 251]) * 65521
        n += 1
        if n == 200:
            print("going", flush=True)

async def main(path, offset):
    plan = ChunkPlan(skip=0, write=1 << 40, total=None)
    writer = await ChunkWriter.open(path, offset, plan, {}, durable=True, pool=StagingPool())
    assert writer.direct
    await writer.consume(endless(offset), None)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def expected_prefix(offset: int, length: int) -> bytes:
    out, n = bytearray(), 0
    while len(out) < length:
        out += bytes([(offset + n) % 251]) * 65521
        n += 1
    return bytes(out[:length])


@pytest.mark.parametrize("offset", [0, 777])
def test_a_kill_mid_chunk_leaves_a_prefix_of_real_bytes(tmp_path: Path, offset: int) -> None:
    part = tmp_path / "up.part"
    head = os.urandom(offset)
    part.write_bytes(head)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(part), str(offset)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "going\n"
        wait_until(
            lambda: part.stat().st_size > offset + 2 * STAGE, "two buffers", deadline=DEADLINE
        )
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    kept = part.read_bytes()
    assert kept[:offset] == head
    assert kept[offset:] == expected_prefix(offset, len(kept) - offset)
