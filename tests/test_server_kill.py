"""SIGKILL the real server process mid-upload, restart it on the same data dir, resume.

What must hold after a crash: every acknowledged byte is still there, the offset the
restarted server reports is the data file's length (bytes that arrived but were never
acknowledged count as stored), resuming from that offset completes the upload, and the
published file is byte-identical with the right digest. The client side is `requests`,
synchronous in the test thread; the server is a child process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import xxhash
from conftest import StartServer, digest_field

from transfer.core.events import Event
from transfer.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(60)]

MiB = 1024 * 1024
PIECE = 256 * 1024
DEADLINE = 10.0


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def put_range(
    session: requests.Session,
    url: str,
    body: bytes | Iterator[bytes],
    rng: tuple[int, int, int],
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """PUT `body` as `bytes S-E/T` for `rng` = (S, E, T)."""
    start, end, total = rng
    all_headers = {"Content-Range": f"bytes {start}-{end}/{total}", **(headers or {})}
    return session.put(url, data=body, headers=all_headers, timeout=DEADLINE)


def query_offset(session: requests.Session, url: str) -> int:
    resp = session.put(url, headers={"Content-Range": "bytes */*"}, timeout=DEADLINE)
    assert resp.status_code == 308
    assert "Location" not in resp.headers
    rng = resp.headers.get("Range")
    return 0 if rng is None else int(rng.removeprefix("bytes=0-")) + 1


def finish(session: requests.Session, url: str, data: bytes, offset: int) -> requests.Response:
    """Send everything from `offset` with the whole file's digest; expect completion."""
    repr_digest = {"Repr-Digest": digest_field(data)}
    resp = put_range(session, url, data[offset:], (offset, len(data) - 1, len(data)), repr_digest)
    assert resp.status_code == 200, resp.text
    return resp


def assert_published(data_dir: Path, upload_id: str, data: bytes, resp: requests.Response) -> None:
    assert (data_dir / "files" / upload_id).read_bytes() == data
    assert not (data_dir / "uploads" / f"{upload_id}.part").exists()
    record = resp.json()
    assert record["size"] == len(data)
    assert record["digests"]["xxh3-128"] == xxhash.xxh3_128(data).hexdigest()
    assert resp.headers["Repr-Digest"] == digest_field(data)


def start_upload(session: requests.Session, base: str, upload_id: str, total: int) -> str:
    resp = session.post(
        f"{base}/uploads",
        json={"id": upload_id, "name": f"{upload_id}.bin"},
        headers={"X-Upload-Content-Length": str(total)},
        timeout=DEADLINE,
    )
    assert resp.status_code == 200
    return str(resp.headers["Location"])


def test_kill_while_a_chunk_body_is_arriving(serve_process: StartServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first, big = 1 * MiB, 8 * MiB
    data = payload(first + big + 1234)
    total = len(data)
    part = data_dir / "uploads" / "big.part"
    server = serve_process(data_dir)
    stored_before_kill = 0

    def slow_body() -> Iterator[bytes]:
        """Half the chunk in pieces; once the server has stored some of it, SIGKILL it."""
        nonlocal stored_before_kill
        for i in range(first, first + big // 2, PIECE):
            yield data[i : i + PIECE]
        wait_until(
            lambda: part.stat().st_size > first, "bytes of the chunk stored", deadline=DEADLINE
        )
        stored_before_kill = part.stat().st_size
        server.kill()
        yield data[first + big // 2 : first + big]

    with requests.Session() as session:
        url = start_upload(session, server.url, "big", total)
        acked = put_range(session, url, data[:first], (0, first - 1, total))
        assert acked.status_code == 308
        assert acked.headers["Range"] == f"bytes=0-{first - 1}"

        with pytest.raises(requests.ConnectionError):
            put_range(session, url, slow_body(), (first, first + big - 1, total))
        assert server.proc.returncode == -9
        assert first < stored_before_kill <= first + big // 2

    restarted = serve_process(data_dir)
    url = f"{restarted.url}/uploads/big"
    with requests.Session() as session:
        offset = query_offset(session, url)
        # At least what was acknowledged, and what arrived unacknowledged counts too.
        assert stored_before_kill <= offset <= first + big // 2
        assert part.read_bytes() == data[:offset]
        assert list((data_dir / "files").iterdir()) == []

        done = finish(session, url, data, offset)
    assert_published(data_dir, "big", data, done)


def test_kill_between_chunks(serve_process: StartServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data = payload(3 * MiB + 77, seed=8)
    total = len(data)
    server = serve_process(data_dir)
    with requests.Session() as session:
        url = start_upload(session, server.url, "two", total)
        assert put_range(session, url, data[:MiB], (0, MiB - 1, total)).status_code == 308
    server.kill()

    restarted = serve_process(data_dir)
    url = f"{restarted.url}/uploads/two"
    with requests.Session() as session:
        assert query_offset(session, url) == MiB
        head = session.head(url, timeout=DEADLINE)
        assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (
            str(MiB),
            str(total),
        )
        assert list((data_dir / "files").iterdir()) == []
        # The next chunk is resumed against the restarted server, then the rest.
        second = put_range(session, url, data[MiB : 2 * MiB], (MiB, 2 * MiB - 1, total))
        assert second.status_code == 308
        done = finish(session, url, data, 2 * MiB)
    assert_published(data_dir, "two", data, done)
    assert [e["recovered"] for e in restarted.events() if e["event"] == Event.SERVER_STARTED] == [
        []
    ]
