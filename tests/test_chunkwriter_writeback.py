"""`ChunkWriter`'s overlapped writeback on a real file: a head start, never the guarantee.

A body longer than `FLUSH_EVERY` starts the writeback of what it wrote while it keeps
arriving (`start_writeback`); the bytes still become durable only by the fsync in
`sync`, and the file holds exactly the body. `start_writeback` reports a failing call as
an `OSError` (here: a closed descriptor), which `ChunkWriter` turns into a 500.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import xxhash

from transfer.core.protocol import ChunkPlan
from transfer.store.chunkwriter import FLUSH_EVERY, ChunkWriter, start_writeback

PIECE = 256 * 1024


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


def _plan(offset: int, length: int) -> ChunkPlan:
    return ChunkPlan(skip=0, write=length, total=offset + length)


@pytest.mark.parametrize("durable", [True, False], ids=["fsync", "no-fsync"])
async def test_a_body_longer_than_the_flush_step_lands_whole(tmp_path: Path, durable: bool) -> None:
    part = tmp_path / "up.part"
    head = os.urandom(12345)  # an unaligned offset, as a resumed upload has
    part.write_bytes(head)
    body = os.urandom(3 * FLUSH_EVERY + 777)
    writer = await ChunkWriter.open(
        str(part), len(head), _plan(len(head), len(body)), {}, durable=durable
    )
    running = xxhash.xxh3_128()
    try:
        await writer.consume(_pieces(body), running.update)
        writer.check()
        await writer.sync()
    finally:
        await writer.close()
    assert writer.written == len(body)
    assert running.digest() == xxhash.xxh3_128(body).digest()
    assert part.read_bytes() == head + body


def test_start_writeback_queues_dirty_bytes_and_leaves_them_intact(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(FLUSH_EVERY)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        start_writeback(fd, 0, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_start_writeback_raises_oserror_on_a_bad_descriptor(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(OSError):
        start_writeback(fd, 0, 1)
