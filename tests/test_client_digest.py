"""A chunk that is the whole file takes its Content-Digest from the announced (journaled)
digest instead of hashing the bytes again (sender/client.py, `announced_digest`); the
server still checks the bytes against it, so bytes that are not the journaled ones are
refused, never kept."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import xxhash
from conftest import StartServer

from transfer.common.http import Region, new_session
from transfer.core.errors import TransientError
from transfer.sender.client import Announce, UploadClient, announced_digest

pytestmark = pytest.mark.timeout(30)
DATA = bytes(range(256)) * 64  # 16 KiB


def announce_of(data: bytes) -> Announce:
    return Announce("a.bin", {"dtype": "int16"}, xxhash.xxh3_128_digest(data))


def test_only_a_whole_file_of_bytes_takes_the_announced_digest(tmp_path: Path) -> None:
    announce = announce_of(DATA)
    view = memoryview(DATA)
    assert announced_digest(view, 0, len(DATA), announce) == announce.digest
    assert announced_digest(DATA, 0, len(DATA), announce) == announce.digest
    assert announced_digest(view[:100], 0, len(DATA), announce) is None  # a first chunk
    assert announced_digest(view[100:], 100, len(DATA), announce) is None  # a later one
    assert announced_digest(view, 0, len(DATA), None) is None  # nothing announced
    (tmp_path / "f").write_bytes(DATA)
    with io.FileIO(tmp_path / "f", "rb") as file:
        region = Region(file, 0, len(DATA), {"xxh3-128": b"r" * 16})
        assert announced_digest(region, 0, len(DATA), announce) is None  # its own digest


async def test_a_whole_file_is_confirmed_with_the_announced_digest(
    serve_process: StartServer, tmp_path: Path
) -> None:
    server = serve_process(tmp_path / "data")
    async with new_session() as session:
        client = UploadClient(session, server.url)
        done = await client.put_chunk(
            "whole-1", 0, memoryview(DATA), len(DATA), announce=announce_of(DATA)
        )
    assert done.record is not None
    assert done.digest == xxhash.xxh3_128_hexdigest(DATA)


async def test_bytes_that_are_not_the_announced_ones_are_refused_and_not_kept(
    serve_process: StartServer, tmp_path: Path
) -> None:
    server = serve_process(tmp_path / "data")
    other = bytes(reversed(DATA))
    async with new_session() as session:
        client = UploadClient(session, server.url)
        with pytest.raises(TransientError, match="chunk_digest_mismatch"):
            await client.put_chunk(
                "whole-2", 0, memoryview(other), len(other), announce=announce_of(DATA)
            )
        after = await client.query("whole-2")
    assert after.record is None
    assert after.offset == 0
