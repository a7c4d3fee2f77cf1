"""Disk and journal faults: a full data disk, a failing fsync, a journal that lost power.

- Full disk, for real: the server runs as a child on a small tmpfs (mounted here; the
  variants skip cleanly where mounting is not allowed). A chunk that does not fit gets
  507 `insufficient_storage`, the offset stays where it was, and once space returns the
  same chunk goes through; `transfer send` backs off meanwhile and then finishes.
- ENOSPC and EIO injected in process: `os.write` / `os.fsync` fail once, for a `.part`
  file only. This is the only mocking in the chaos tests: a real EIO needs a
  device-mapper target (dm-error / dm-flakey), which a test machine rarely allows.
- Power loss: every journal frame is fsynced before it is acted on, so a power cut drops
  at most the write in flight. Here the journal is cut back further than that, to an
  earlier frame boundary or into a frame, which is harsher: the spool and the server are
  ahead of the journal. The next `transfer send` must still end with exactly `--count`
  files, each confirmed once and byte-identical on the server.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import ClientResponse
from conftest import MakeServed, Served, ServerProcess, StartServer, digest_field
from support import (
    Launcher,
    assert_delivered,
    completions,
    named,
    run_transfer,
    small_tmpfs,
    wait_until,
)

from transfer.core.events import Event
from transfer.sender.journal import LOG_NAME, FileJournal, scan_frames

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(90)]

KiB, MiB = 1024, 1024 * 1024
CHUNK = 256 * KiB
DEADLINE = 10.0


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- a small tmpfs --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (see `support.small_tmpfs`)."""
    with small_tmpfs(tmp_path, 4) as mount:
        yield mount


def fill(disk: Path, leave: int) -> Path:
    """A filler file taking all but about `leave` bytes of `disk`."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave
    with filler.open("wb") as stream:
        stream.write(b"\0" * size)
    return filler


def fill_up(disk: Path) -> Path:
    """A filler file written until the disk refuses (ENOSPC)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * (64 * KiB))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


class Uploads:
    """A raw client (requests) for one upload on a server child."""

    def __init__(self, base: str, upload_id: str, data: bytes) -> None:
        self.url = f"{base}/uploads/{upload_id}"
        self.data = data
        self.session = requests.Session()
        body = {"id": upload_id, "name": f"{upload_id}.bin", "size": len(data)}
        headers = {"Repr-Digest": digest_field(data)}
        resp = self.session.post(f"{base}/uploads", json=body, headers=headers, timeout=DEADLINE)
        assert resp.status_code == 200, resp.text

    def put(self, start: int, body: bytes | Iterator[bytes] | None = None) -> requests.Response:
        end = min(start + CHUNK, len(self.data))
        headers = {
            "Content-Range": f"bytes {start}-{end - 1}/{len(self.data)}",
            "Content-Digest": digest_field(self.data[start:end]),
        }
        data = self.data[start:end] if body is None else body
        return self.session.put(self.url, data=data, headers=headers, timeout=DEADLINE)

    def offset(self) -> int:
        head = self.session.head(self.url, timeout=DEADLINE)
        assert head.status_code == 200
        return int(head.headers["Upload-Offset"])


def assert_refused_for_space(resp: requests.Response, offset: int) -> None:
    assert resp.status_code == 507, resp.text
    assert resp.json()["code"] == "insufficient_storage"
    assert resp.headers["Range"] == f"bytes=0-{offset - 1}"  # what is stored, unchanged


def serve_on(serve_process: StartServer, disk: Path) -> ServerProcess:
    # --reserve 0: the whole small disk is usable, so the disk itself says when it is full.
    return serve_process(disk / "data", extra=["--reserve", "0"])


def test_a_chunk_larger_than_the_free_space_is_507_until_space_returns(
    small_disk: Path, serve_process: StartServer
) -> None:
    server = serve_on(serve_process, small_disk)
    data = payload(4 * CHUNK - 100, seed=1)
    upload = Uploads(server.url, "big", data)
    filler = fill(small_disk, leave=CHUNK + 64 * KiB)

    assert upload.put(0).status_code == 308
    assert_refused_for_space(upload.put(CHUNK), CHUNK)
    assert upload.offset() == CHUNK
    part = small_disk / "data" / "uploads" / "big.part"
    assert part.read_bytes() == data[:CHUNK]

    filler.unlink()
    assert upload.put(CHUNK).status_code == 308
    assert upload.put(2 * CHUNK).status_code == 308
    done = upload.put(3 * CHUNK)
    assert done.status_code == 200, done.text
    assert (small_disk / "data" / "files" / "big").read_bytes() == data


def test_the_disk_filling_up_mid_chunk_is_507_and_nothing_of_it_is_kept(
    small_disk: Path, serve_process: StartServer
) -> None:
    """A real ENOSPC from `write`: the disk fills up while the chunk's body arrives."""
    server = serve_on(serve_process, small_disk)
    data = payload(2 * CHUNK, seed=2)
    upload = Uploads(server.url, "mid", data)
    assert upload.put(0).status_code == 308
    part = small_disk / "data" / "uploads" / "mid.part"
    fillers: list[Path] = []

    def body() -> Iterator[bytes]:
        yield data[CHUNK : CHUNK + 64 * KiB]
        wait_until(lambda: part.stat().st_size > CHUNK, "the first piece on disk")
        fillers.append(fill_up(small_disk))
        yield data[CHUNK + 64 * KiB :]

    assert_refused_for_space(upload.put(CHUNK, body()), CHUNK)
    assert upload.offset() == CHUNK
    assert part.read_bytes() == data[:CHUNK]  # the bytes written before ENOSPC are gone

    fillers[0].unlink()
    done = upload.put(CHUNK)
    assert done.status_code == 200, done.text
    assert (small_disk / "data" / "files" / "mid").read_bytes() == data


@pytest.mark.slow
def test_the_sender_backs_off_on_a_full_disk_and_finishes_when_space_returns(
    small_disk: Path, serve_process: StartServer, tmp_path: Path
) -> None:
    server = serve_on(serve_process, small_disk)
    filler = fill(small_disk, leave=MiB)
    spool = tmp_path / "spool"
    args: tuple[str, ...] = (
        "--count",
        "4",
        "--seed",
        "5",
        "--min-size",
        "500KiB",
        "--max-size",
        "700KiB",
    )
    args += ("--min-interval", "0s", "--max-interval", "0s", "--retry-timeout", "60s")
    with Launcher(tmp_path) as launch:
        sender = launch.send(server.url, spool, *args)

        def refused(events: list[dict[str, Any]]) -> bool:
            return any("507" in str(e.get("error")) for e in named(events, Event.UPLOAD_RETRY))

        sender.wait_for(refused, "a 507 retried by the sender")
        assert len(list((small_disk / "data" / "files").iterdir())) < 4
        filler.unlink()
        assert sender.finish(60.0) == 0, sender.report()
    assert_delivered(spool, small_disk / "data", 4)


# --- injected ENOSPC and EIO, in process ----------------------------------------------


class FailOnce:
    """Wraps `os.write` or `os.fsync` so that it fails once, on a `.part` file only.

    A write fails as a disk filling up does: a short write of half the bytes first, then
    the error; so what the chunk already wrote must be cut back, not just left unwritten.
    """

    def __init__(self, real: Callable[..., Any], code: int, *, short_first: bool) -> None:
        self.real, self.code, self.fired = real, code, 0
        self.short_first = short_first

    def __call__(self, fd: int, *args: Any) -> Any:
        if self.fired or Path(f"/proc/self/fd/{fd}").readlink().suffix != ".part":
            return self.real(fd, *args)
        if self.short_first:
            self.short_first = False
            data = args[0]
            return self.real(fd, data[: len(data) // 2])
        self.fired += 1
        raise OSError(self.code, os.strerror(self.code))


async def put(served: Served, upload_id: str, data: bytes, start: int) -> ClientResponse:
    piece = data[start : start + CHUNK]
    headers = {
        "Content-Range": f"bytes {start}-{start + len(piece) - 1}/{len(data)}",
        "Content-Digest": digest_field(piece),
    }
    return await served.client.put(f"/uploads/{upload_id}", data=piece, headers=headers)


async def head_offset(served: Served, upload_id: str) -> int:
    resp = await served.client.head(f"/uploads/{upload_id}")
    return int(resp.headers["Upload-Offset"])


@dataclass(frozen=True)
class Injected:
    call: str  # "write" or "fsync"
    code: int  # errno
    status: int
    problem: str


@pytest.mark.parametrize(
    "injected",
    [
        Injected("write", errno.ENOSPC, 507, "insufficient_storage"),
        Injected("write", errno.EIO, 500, "storage_error"),
        Injected("fsync", errno.EIO, 500, "storage_error"),
    ],
    ids=["write-ENOSPC", "write-EIO", "fsync-EIO"],
)
async def test_a_failing_write_or_fsync_leaves_the_chunk_unacknowledged(
    make_served: MakeServed, monkeypatch: pytest.MonkeyPatch, injected: Injected
) -> None:
    served = await make_served()
    data = payload(3 * CHUNK, seed=3)
    created = await served.client.post(
        "/uploads",
        json={"id": "f", "name": "f.bin", "size": len(data)},
        headers={"Repr-Digest": digest_field(data)},
    )
    assert created.status == 200
    assert (await put(served, "f", data, 0)).status == 308

    real = getattr(os, injected.call)
    fault = FailOnce(real, injected.code, short_first=injected.call == "write")
    monkeypatch.setattr(os, injected.call, fault)
    refused = await put(served, "f", data, CHUNK)
    assert fault.fired == 1
    assert refused.status == injected.status
    assert (await refused.json())["code"] == injected.problem
    assert refused.headers["Range"] == f"bytes=0-{CHUNK - 1}"
    assert await head_offset(served, "f") == CHUNK
    assert (served.uploads_dir / "f.part").read_bytes() == data[:CHUNK]

    # The fault was one call: the same chunk again, then the rest.
    assert (await put(served, "f", data, CHUNK)).status == 308
    assert (await put(served, "f", data, 2 * CHUNK)).status == 200
    assert (served.files_dir / "f").read_bytes() == data


# --- the journal loses power ----------------------------------------------------------

SEND: tuple[str, ...] = (
    "--count",
    "8",
    "--seed",
    "9",
    "--max-size",
    "300KiB",
    "--min-interval",
    "0s",
)
SEND += ("--max-interval", "0s", "--progress", "never")


def cut_point(journal: bytes, how: str, seed: int) -> int:
    """Where to cut `journal`: at or inside a frame after the run's meta records."""
    frames, end = scan_frames(journal)
    assert end == len(journal)
    files = [i for i, (_, body) in enumerate(frames) if json.loads(body)["kind"] == "file"]
    rng = random.Random(seed)
    index = rng.choice(files)
    start = frames[index][0]
    if how == "boundary":
        return start
    header = 11  # magic, length, crc32
    if how == "header":
        return start + rng.randrange(1, header)
    return start + header + rng.randrange(0, len(frames[index][1]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "seed"), [("boundary", 1), ("boundary", 2), ("header", 3), ("frame", 4), ("frame", 5)]
)
def test_a_journal_cut_back_by_power_loss_recovers_and_finishes_exactly(
    serve_process: StartServer, tmp_path: Path, how: str, seed: int
) -> None:
    server = serve_process(tmp_path / "data")
    spool = tmp_path / "spool"
    first = run_transfer("send", "--server", server.url, "--spool-dir", str(spool), *SEND)
    assert first.returncode == 0, first.stderr
    before = assert_delivered(spool, tmp_path / "data", 8)

    log = spool / LOG_NAME
    data = log.read_bytes()
    cut = cut_point(data, how, seed)
    log.write_bytes(data[:cut])
    with FileJournal.open(spool) as journal:
        survivors = journal.entries()
        assert journal.recovery.dropped_bytes == cut - scan_frames(data[:cut])[1]
    assert len(survivors) < 8 or any(e.state.value != "confirmed" for e in survivors)

    second = run_transfer("send", "--server", server.url, "--spool-dir", str(spool), *SEND)
    assert second.returncode == 0, second.stderr
    after = assert_delivered(spool, tmp_path / "data", 8)
    assert sorted((e.file_id, e.digest) for e in after) == sorted(
        (e.file_id, e.digest) for e in before
    )
    server.stop()
    wait_until(lambda: named(server.events(), Event.SERVER_STOPPED), "the server's last line")
    done = completions(server.events())
    assert sorted(done) == sorted(e.file_id for e in before)
    assert set(done.values()) == {1}, done  # nothing uploaded and published twice
