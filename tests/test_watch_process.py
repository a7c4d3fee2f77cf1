"""`transfer send --watch DIR` end to end: real folders, real `transfer serve` and
`transfer send` processes, real kill -9.

The producer is the test: it writes files the ways producers do (at once, slowly in
pieces through one open handle, renamed into place, in folders created after the watch
started, 1000 at once) and keeps what it wrote. The verdict is read from the server's
disk, independently of the sender's journal: every file it wrote is published exactly
once (one `upload.completed` per id), under its path relative to DIR, with the bytes
the producer wrote. Durations are parameters (`--settle 0.3s`, a server down for a few
seconds), so the behaviours are the issue's while the tests stay short. Waits poll with
deadlines; the only sleeps are a slow producer's pauses, which are the behaviour under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from transfer.core.events import Event
from transfer.testing.harness import Harness, SenderProcess, ServerProcess, free_port, run_transfer
from transfer.testing.logs import LogLine, completions, named
from transfer.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
FAST = ("--settle", "0.3s", "--rescan", "2s")
Written = dict[str, bytes]  # what the producer wrote: relative path -> bytes


def published(data_dir: Path) -> dict[str, list[bytes]]:
    """Every published file on the server's disk by record name, versions in order."""
    found: dict[str, list[tuple[int, bytes]]] = {}
    for record in (data_dir / "records").glob("*/*/*.json"):  # records/ab/cd/{id}.json
        doc = json.loads(record.read_text())
        body = data_dir / "files" / doc["id"]
        if doc.get("complete") and body.is_file():
            version = int(doc["metadata"]["version"])
            assert doc["metadata"]["path"] == doc["name"]
            found.setdefault(doc["name"], []).append((version, body.read_bytes()))
    return {name: [data for _, data in sorted(versions)] for name, versions in found.items()}


def wait_published(server: ServerProcess, written: Written, deadline: float = 60.0) -> None:
    """Until every written file is on the server (latest content), then check exactly once."""

    def arrived() -> bool:
        now = published(server.data_dir)
        return all(now.get(rel, [b""])[-1] == data for rel, data in written.items())

    wait_until(arrived, f"{len(written)} files published", deadline=deadline, interval=0.05)
    assert_exactly_once(server, written)


def assert_exactly_once(server: ServerProcess, written: Written) -> None:
    now = published(server.data_dir)
    assert set(now) == set(written), set(now) ^ set(written)
    for rel, data in written.items():
        assert now[rel] == [data], f"{rel}: {len(now[rel])} versions"

    # The server logs `upload.completed` just after the rename that `published` sees.
    def logged() -> Counter[str] | None:
        counts = completions(server.events())
        return counts if sum(counts.values()) >= len(written) else None

    done = wait_until(logged, "every completion logged")
    assert set(done.values()) == {1}


def watching(
    launch: Harness, server: ServerProcess, spool: Path, folder: Path, *args: str
) -> SenderProcess:
    """A watching sender, returned once its first rescan is done."""
    sender = launch.send(server.url, spool, "--watch", str(folder), *FAST, *args, name="send")
    sender.wait_for(lambda events: named(events, Event.WATCH_RESCAN), "the first rescan")
    return sender


def write(folder: Path, rel: str, data: bytes) -> None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def rename_in(folder: Path, rel: str, data: bytes) -> None:
    """The best way to produce a file: write it under an ignored name, rename it in."""
    write(folder, rel + ".part", data)
    os.replace(folder / (rel + ".part"), folder / rel)


def taken(events: list[LogLine]) -> list[LogLine]:
    return named(events, Event.WATCH_TAKEN)


def journaled(count: int) -> Callable[[list[LogLine]], bool]:
    """A log probe: have `count` watched files been journaled?"""
    return lambda events: len(taken(events)) >= count


# --- every way of writing ---------------------------------------------------------


def test_files_written_every_way_arrive_once_intact_and_named_by_path(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    sender = watching(launch, server, tmp_path / "spool", folder)
    written: Written = {"at-once.dat": os.urandom(5000)}
    write(folder, "at-once.dat", written["at-once.dat"])
    rename_in(folder, "renamed.dat", written.setdefault("renamed.dat", os.urandom(3000)))
    written["new/deeper/nested.dat"] = os.urandom(100)
    write(folder, "new/deeper/nested.dat", written["new/deeper/nested.dat"])
    for ignored in (".hidden", "x.tmp", "y.part", "~lock", "new/.cache/z"):
        write(folder, ignored, b"never sent")
    pieces = [os.urandom(64 * 1024) for _ in range(5)]
    with (folder / "slow.dat").open("wb") as slow:  # open for 5 pauses longer than --settle
        for piece in pieces:
            slow.write(piece)
            slow.flush()
            time.sleep(0.4)  # the producer's pace, not a synchronization
    written["slow.dat"] = b"".join(pieces)
    wait_published(server, written)
    status = json.loads(urllib.request.urlopen(f"{sender.status_url()}/status").read())
    assert status["watch"]["dir"] == str(folder)
    assert status["watch"]["backlog"] == 0
    assert status["watch"]["last_delivered"]["name"] in written
    sender.stop()
    shown = run_transfer("status", "--spool-dir", str(tmp_path / "spool")).stdout
    assert f"watching {folder}: 4 files journaled, backlog 0" in shown


def test_the_backlog_is_sent_at_start_and_never_again_also_from_a_moved_spool(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    written = {f"d{i % 3}/f{i}.bin": os.urandom(1000 + i) for i in range(30)}
    for rel, data in written.items():
        write(folder, rel, data)
    first = watching(launch, server, tmp_path / "spool", folder)
    wait_published(server, written)
    first.stop()
    moved = tmp_path / "elsewhere" / "spool"
    moved.parent.mkdir()
    subprocess.run(["cp", "-a", str(tmp_path / "spool"), str(moved.parent)], check=True)
    for spool in (tmp_path / "spool", moved):
        again = watching(launch, server, spool, folder)
        again.wait_for(lambda events: len(named(events, Event.WATCH_RESCAN)) >= 2, "a rescan")
        assert not taken(again.events())
        again.stop()
    assert_exactly_once(server, written)


# --- kill -9 ------------------------------------------------------------------------


def test_a_burst_of_1000_files_with_kill9_while_writing_and_uploading(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    spool = tmp_path / "spool"
    sender = watching(launch, server, spool, folder)
    written: Written = {}
    for i in range(1000):
        written[f"burst/{i:04d}.bin"] = data = os.urandom(1024)
        write(folder, f"burst/{i:04d}.bin", data)
        if i == 300:
            sender.kill()  # while files are being written
            sender = watching(launch, server, spool, folder)
    sender.wait_for(lambda events: len(named(events, Event.UPLOAD_CONFIRMED)) >= 50, "uploads")
    sender.kill()  # while uploads run
    watching(launch, server, spool, folder)
    wait_published(server, written, deadline=120.0)


def test_modified_after_journaled_is_a_new_version_or_refused(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    spool = tmp_path / "spool"
    sender = watching(launch, server, spool, folder)
    first, second = os.urandom(2000), os.urandom(2500)
    write(folder, "m.dat", first)
    wait_published(server, {"m.dat": first})
    write(folder, "m.dat", second)
    wait_until(lambda: published(server.data_dir).get("m.dat") == [first, second], "version 2")
    assert named(sender.events(), Event.WATCH_CHANGED)
    sender.stop()
    refusing = watching(launch, server, spool, folder, "--on-change", "refuse")
    write(folder, "m.dat", b"third content")
    refusing.wait_for(lambda events: named(events, Event.WATCH_CHANGE_REFUSED), "a refusal")
    assert published(server.data_dir)["m.dat"] == [first, second]


def test_a_file_deleted_before_it_settled_is_never_sent(launch: Harness, tmp_path: Path) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    sender = launch.send(
        server.url, tmp_path / "spool", "--watch", str(folder), "--settle", "3s", name="send"
    )
    sender.wait_for(lambda events: named(events, Event.WATCH_RESCAN), "the first rescan")
    write(folder, "gone.dat", b"short-lived")
    (folder / "gone.dat").unlink()
    sender.wait_for(lambda events: named(events, Event.WATCH_VANISHED), "vanished")
    write(folder, "kept.dat", b"kept")
    wait_published(server, {"kept.dat": b"kept"})


def test_a_renamed_folder_is_not_sent_again_and_new_files_in_it_are(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    written = {f"a/f{i}.bin": os.urandom(500) for i in range(5)}
    for rel, data in written.items():
        write(folder, rel, data)
    sender = watching(launch, server, tmp_path / "spool", folder)
    wait_published(server, written)
    (folder / "a").rename(folder / "b")
    written["b/new.bin"] = os.urandom(600)
    write(folder, "b/new.bin", written["b/new.bin"])
    wait_published(server, written)
    assert len(named(sender.events(), Event.WATCH_MOVED)) == 5


def test_a_full_event_queue_is_recovered_by_the_rescan(launch: Harness, tmp_path: Path) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    sender = watching(launch, server, tmp_path / "spool", folder, "--watch-queue", "4")
    written = {f"q/{i:03d}.bin": os.urandom(256) for i in range(300)}
    for rel, data in written.items():
        write(folder, rel, data)
    wait_published(server, written)
    assert named(sender.events(), Event.WATCH_OVERFLOW)


# --- after confirmation ---------------------------------------------------------------


def test_after_confirm_delete_and_move_touch_only_confirmed_unchanged_files(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    spool = tmp_path / "spool"
    written = {f"s/{i}.bin": os.urandom(700) for i in range(6)}
    for rel, data in written.items():
        write(folder, rel, data)
    keeping = watching(launch, server, spool, folder)
    wait_published(server, written)
    keeping.kill()  # confirmed, not yet deleted: what a kill between the two leaves
    write(folder, "s/0.bin", b"changed after confirmation")
    deleting = watching(launch, server, spool, folder, "--after-confirm", "delete",
                        "--on-change", "refuse")  # fmt: skip

    def only_the_changed_one_left() -> bool:
        return sorted(p.name for p in (folder / "s").iterdir()) == ["0.bin"]

    wait_until(only_the_changed_one_left, "every confirmed, unchanged file deleted")
    expected = sorted(str(folder / r) for r in written)[1:]

    def deletions_logged() -> bool:  # the line follows the unlink: wait for it too
        deleted = named(deleting.events(), Event.SOURCE_DELETED)
        return len(deleted) >= len(expected)

    wait_until(deletions_logged, "every deletion logged")
    deleted = named(deleting.events(), Event.SOURCE_DELETED)
    assert sorted(e["path"] for e in deleted) == expected
    deleting.stop()
    mover = watching(launch, server, tmp_path / "spool2", folder,
                     "--after-confirm", f"move:{tmp_path / 'done'}")  # fmt: skip
    rename_in(folder, "t/late.bin", late := os.urandom(900))
    wait_until((tmp_path / "done" / "t" / "late.bin").is_file, "moved")
    assert (tmp_path / "done" / "t" / "late.bin").read_bytes() == late
    confirmed = [e["file_id"] for e in named(mover.events(), Event.UPLOAD_CONFIRMED)]
    moved = named(mover.events(), Event.SOURCE_MOVED)
    assert {e["file_id"] for e in moved} <= set(confirmed)


# --- the server away -----------------------------------------------------------------


def test_server_down_while_files_arrive_all_delivered_in_arrival_order(
    launch: Harness, tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    server = launch.serve(data, port=port)
    folder = tmp_path / "in"
    folder.mkdir()
    sender = watching(launch, server, tmp_path / "spool", folder, "--concurrency", "1")
    server.kill()
    written: Written = {}
    for i in range(12):  # two folders, files arriving one after another
        rel = f"{'ab'[i % 2]}/{i:02d}.bin"
        rename_in(folder, rel, written.setdefault(rel, os.urandom(400)))
        sender.wait_for(journaled(i + 1), f"file {i} journaled")
    server = launch.serve(data, port=port)
    wait_published(server, written)
    # The server publishes before the sender hears it and logs the confirmation.
    sender.wait_for(
        lambda events: len(named(events, Event.UPLOAD_CONFIRMED)) >= len(written),
        "every confirmation logged",
    )
    order = {e["file_id"]: e["name"] for e in taken(sender.events())}
    confirmed = [order[e["file_id"]] for e in named(sender.events(), Event.UPLOAD_CONFIRMED)]
    for sub in "ab":
        mine = [rel for rel in confirmed if rel.startswith(sub)]
        assert mine == sorted(mine), mine
    assert Counter(confirmed) == Counter(written.keys())


@pytest.mark.timeout(300)
def test_a_256mib_file_written_slowly_while_small_ones_arrive(
    launch: Harness, tmp_path: Path
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    watching(launch, server, tmp_path / "spool", folder)
    written: Written = {}
    block = os.urandom(1024 * 1024)
    with (folder / "big.bin").open("wb") as big:
        for i in range(256):
            big.write(block[i:] + block[:i])  # distinct MiBs
            if i % 32 == 0:
                rename_in(folder, f"small/{i}.bin", written.setdefault(f"small/{i}.bin", block[:i]))
    written["big.bin"] = (folder / "big.bin").read_bytes()
    wait_published(server, written, deadline=240.0)


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
def test_watching_works_over_the_other_protocols(
    launch: Harness, tmp_path: Path, protocol: str
) -> None:
    server = launch.serve(tmp_path / "data")
    folder = tmp_path / "in"
    folder.mkdir()
    watching(launch, server, tmp_path / "spool", folder, "--protocol", protocol)
    written: Written = {"a.dat": os.urandom(300_000), "sub/b.dat": os.urandom(5000)}
    rename_in(folder, "a.dat", written["a.dat"])
    write(folder, "sub/b.dat", written["sub/b.dat"])
    wait_published(server, written)
