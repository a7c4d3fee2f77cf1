"""The sender's first upload of a file it just journaled takes one request per chunk and
no POST; anything resumed or re-sent goes through POST and the local digest check."""

from __future__ import annotations

from pathlib import Path

import xxhash
from conftest import Served
from support import Launcher, assert_delivered

from transfer.common.http import new_session
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender.client import Corruptor, UploadClient
from transfer.sender.journal import JournalEntry
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader


def spooled(path: Path, file_id: str, data: bytes, journaled: bytes | None = None) -> JournalEntry:
    """`data` on disk, journaled with the digest of `journaled` (default: `data`)."""
    path.write_bytes(data)
    digest = xxhash.xxh3_128_hexdigest(data if journaled is None else journaled)
    return JournalEntry(
        file_id, path.name, str(path), len(data), "int16", digest, FileState.GENERATED
    )


def _requests(log_events: list[dict[str, object]], method: str) -> int:
    return sum(
        1 for e in log_events if e.get("event") == Event.REQUEST and e.get("method") == method
    )


def test_fresh_files_are_created_by_their_first_put(tmp_path: Path) -> None:
    with Launcher(tmp_path) as launch:
        server = launch.serve(tmp_path / "data")
        sender = launch.send(
            server.url, tmp_path / "spool", "--count", "6", "--seed", "3",
            "--min-interval", "0", "--max-interval", "0", "--max-size", "64KiB",
        )  # fmt: skip
        assert sender.finish() == 0
        events = server.log.events()
    entries = assert_delivered(tmp_path / "spool", tmp_path / "data", 6)
    assert _requests(events, "POST") == 0
    assert _requests(events, "PUT") == 6  # one request per small file
    created = [e for e in events if e.get("event") == Event.UPLOAD_CREATED]
    assert {e["name"] for e in created} == {e.name for e in entries}


async def test_a_file_damaged_before_its_first_upload_is_never_published(
    served: Served, tmp_path: Path
) -> None:
    """The fresh path skips the POST, not the local check: nothing is sent."""
    journaled = b"\x01\x00" * 5000
    damaged = journaled[:-1] + b"\x7f"  # changed on disk after it was hashed
    entry = spooled(tmp_path / "a.bin", "run-00000", damaged, journaled)
    url = str(served.client.make_url("/"))
    async with new_session() as session:
        policy = RetryPolicy(max_attempts=3, sleep=_no_sleep)
        uploader = Uploader(UploadClient(session, url), None, policy)
        done = await uploader.deliver(entry, fresh=True)

    assert done.state is FileState.FAILED
    assert done.reason is not None and "changed on disk" in done.reason
    assert uploader.stats.bytes_sent == 0
    assert not (served.data_dir / "uploads" / "run-00000.part").exists()


async def _no_sleep(seconds: float) -> None:
    return None


async def test_a_chunk_refused_every_time_fails_instead_of_looping(
    served: Served, tmp_path: Path
) -> None:
    data = b"\x02\x00" * 3000
    entry = spooled(tmp_path / "b.bin", "run-00001", data)
    url = str(served.client.make_url("/"))
    async with new_session() as session:
        client = UploadClient(session, url, corruptor=Corruptor(1.0, seed=1))
        uploader = Uploader(client, None, RetryPolicy(max_attempts=3, sleep=_no_sleep))
        done = await uploader.deliver(entry, fresh=True)

    assert done.state is FileState.FAILED
    assert done.reason is not None and "no progress" in done.reason
    assert served.published() == []


async def test_a_large_file_streams_with_two_chunks_in_flight(
    served: Served, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (7 * 1024 + 3)  # ~1.8 MiB: 8 chunks of 256 KiB
    entry = spooled(tmp_path / "c.bin", "run-00002", data)
    url = str(served.client.make_url("/"))
    async with new_session() as session:
        uploader = Uploader(UploadClient(session, url), 256 * 1024, RetryPolicy(timeout=10.0))
        done = await uploader.deliver(entry, fresh=True)

    assert done.state is FileState.CONFIRMED
    assert (served.data_dir / "files" / "run-00002").read_bytes() == data
    assert uploader.stats.chunks == -(-len(data) // (256 * 1024))  # nothing sent twice
    assert uploader.stats.bytes_sent == len(data)


async def test_a_pipeline_surprise_falls_back_to_one_chunk_at_a_time(
    served: Served, tmp_path: Path
) -> None:
    """The server already holds a prefix the sender does not know about: the pipelined
    chunks overlap it, the short acknowledgement ends the pipeline, and the careful path
    finishes the file from the server's offset."""
    data = bytes(range(256)) * 4096  # 1 MiB: 4 chunks of 256 KiB
    entry = spooled(tmp_path / "d.bin", "run-00003", data)
    prefix = data[: 300 * 1024]
    resp = await served.client.put(
        "/uploads/run-00003",
        data=prefix,
        headers={"Content-Range": f"bytes 0-{len(prefix) - 1}/{len(data)}"},
    )
    assert resp.status == 308
    url = str(served.client.make_url("/"))
    async with new_session() as session:
        uploader = Uploader(UploadClient(session, url), 256 * 1024, RetryPolicy(timeout=10.0))
        done = await uploader.deliver(entry, fresh=True)

    assert done.state is FileState.CONFIRMED
    assert (served.data_dir / "files" / "run-00003").read_bytes() == data
