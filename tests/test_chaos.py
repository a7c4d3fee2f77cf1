"""Bounded chaos: real `transfer serve` / `transfer send` processes, real SIGKILLs, real
sockets through the fault proxy, real files. `transfer.testing.chaos` (the runner behind
`scripts/chaos.py`) drives the runs.

Every run is checked twice: by the runner's own invariants (its report must list no
violation) and again here, independently, from the journal, the server's `files/` and
the server's log: exactly `count` files confirmed, each byte-identical on the server,
nothing else published, each completed once. Each test also asserts that the fault it
is about really happened (kills per side, proxy counters, the server's log lines), so a
run where nothing went wrong cannot pass for one that survived something.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from conftest import StartServer, digest_field
from support import assert_delivered, read_journal

from transfer.common.http import new_session
from transfer.core.events import Event
from transfer.testing.chaos import ChaosConfig, ChaosReport, Run, check_invariants, run_chaos
from transfer.testing.faultproxy import NO_FAULT, Fault, Plan, random_plan
from transfer.testing.harness import free_port, run_transfer
from transfer.testing.logs import LogFile, completions, named
from transfer.testing.polling import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def quick(
    workdir: Path,
    *,
    count: int,
    plan: Plan | None = None,
    min_size: str = "1KiB",
    max_size: str = "512KiB",
) -> ChaosConfig:
    """No kill cycles; files generated 0-50 ms apart."""
    return ChaosConfig(
        workdir,
        cycles=0,
        count=count,
        plan=plan,
        min_size=min_size,
        max_size=max_size,
        min_interval="0ms",
        max_interval="50ms",
    )


def network(workdir: Path, plan: Plan, idle_timeout: str = "5s") -> ChaosConfig:
    """One upload at a time and files of at least 300 KiB: the first connection carries at
    most a small request and then a 256 KiB chunk, so byte 150 000 is inside that body."""
    config = quick(workdir, count=4, plan=plan, min_size="300KiB", max_size="700KiB")
    return dataclasses.replace(config, concurrency=1, idle_timeout=idle_timeout)


def assert_intact(report: ChaosReport, config: ChaosConfig) -> None:
    """The runner saw no violation, and an independent look agrees."""
    count = config.count
    assert report.violations == [], report.to_json()
    assert (report.files_expected, report.confirmed) == (count, count)
    assert (report.lost, report.corrupted, report.duplicated) == (0, 0, 0)
    entries = assert_delivered(config.workdir / "spool", config.workdir / "data", count)
    ids = {e.file_id for e in entries}
    assert {p.name for p in (config.workdir / "data" / "files").iterdir()} == ids
    done = completions(LogFile(config.workdir / "server.log").events())
    assert set(done) <= ids
    assert set(done.values()) <= {1}, done  # nothing completed twice
    # A server killed between publishing a file and logging it never logs that file.
    assert len(ids - set(done)) <= report.kills["server"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("protocol", ["tus", "ietf"])
def test_tus_and_ietf_uploads_survive_kills_on_both_sides(tmp_path: Path, protocol: str) -> None:
    """`transfer send --protocol tus|ietf` against our server's /tus/ and /resumable/: the
    same guarantees. The server names each upload, so the published name is the journaled
    URL's last segment."""
    config = ChaosConfig(
        tmp_path / "run",
        seed=5,
        cycles=10,
        count=30,
        max_interval="300ms",
        max_size="768KiB",
        protocol=protocol,
    )
    report = run_chaos(config)

    assert report.violations == [], report.to_json()
    assert (report.files_expected, report.confirmed) == (30, 30)
    assert (report.lost, report.corrupted, report.duplicated) == (0, 0, 0)
    assert report.kills["sender"] >= 2 and report.kills["server"] >= 2, report.kills
    entries = read_journal(config.workdir / "spool")
    assert all(e.upload_url and e.server_digest == e.digest for e in entries)
    published = {p.name: p for p in (config.workdir / "data" / "files").iterdir()}
    ids = {e.upload_url.rsplit("/", 1)[1]: e for e in entries if e.upload_url}
    assert set(published) == set(ids)
    for upload_id, entry in ids.items():
        assert published[upload_id].read_bytes() == Path(entry.path).read_bytes()
    server = LogFile(config.workdir / "server.log").events()
    done = completions(server)
    assert set(done.values()) <= {1}, done  # nothing completed twice
    assert {e.get("protocol") for e in named(server, Event.UPLOAD_COMPLETED)} == {protocol}
    # Each file had one upload unless a kill fell between its creation and its journal
    # record (an orphan, never published); a kill mid-file resumed its journaled upload.
    created = named(server, Event.UPLOAD_CREATED)
    assert len(created) <= 30 + report.kills["sender"] + report.kills["server"]
    assert report.resumes >= 1


@pytest.mark.timeout(300)
def test_kills_while_the_journal_compacts_every_few_records(tmp_path: Path) -> None:
    """`--journal-compact-at 1KiB`: the sender folds its journal every few records, and is
    killed mid-compaction (a checkpoint or log being replaced) as well as at the other
    moments. Nothing is lost, nothing is sent twice, and the compactions really ran."""
    config = ChaosConfig(
        tmp_path / "run", seed=16, cycles=16, count=60, max_interval="250ms",
        max_size="256KiB", sides=("sender", "sender", "server"), journal_compact_at="1KiB",
    )  # fmt: skip
    report = run_chaos(config)

    assert_intact(report, config)
    assert report.cycles == 16
    assert report.kills["sender"] >= 6, report.kills
    assert any("compaction" in moment for moment in report.moments), report.moments
    sender = LogFile(config.workdir / "sender.log").events()
    assert len(named(sender, Event.JOURNAL_COMPACTED)) >= 4
    assert (config.workdir / "spool" / "journal.ckpt").is_file()
    assert not named(sender, Event.JOURNAL_COMPACTION_FAILED)


def proxy_stat(report: ChaosReport, name: str) -> int:
    assert report.proxy is not None
    return report.proxy[name]


@pytest.mark.timeout(300)
def test_kill_cycles_on_both_sides(tmp_path: Path) -> None:
    config = ChaosConfig(
        tmp_path / "run", seed=7, cycles=24, count=64, max_interval="300ms", max_size="512KiB"
    )
    report = run_chaos(config)

    assert_intact(report, config)
    assert report.cycles == 24
    assert report.kills["sender"] >= 3 and report.kills["server"] >= 3, report.kills
    assert sum(report.moments.values()) == 24
    assert len(report.moments) >= 4, report.moments  # several kinds of moment, both sides


@pytest.mark.timeout(300)
def test_kills_and_random_network_faults_together(tmp_path: Path) -> None:
    # Connections are short when processes keep dying: plan faults early in them.
    plan = random_plan(11, rate=0.25, max_offset=200_000, kinds=("cut", "reset"))
    config = ChaosConfig(
        tmp_path / "run", seed=11, cycles=10, count=40, max_interval="300ms", plan=plan
    )
    report = run_chaos(config)

    assert_intact(report, config)
    assert report.cycles == 10
    assert proxy_stat(report, "cuts") + proxy_stat(report, "resets") > 0, report.proxy


def first_connection(fault: Fault) -> Callable[[int], Fault]:
    return lambda number: fault if number == 0 else NO_FAULT


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("cuts", Fault(cut_after=150_000)),
        ("resets", Fault(reset_after=150_000)),
        ("stalls", Fault(stall_after=150_000)),
    ],
)
def test_a_broken_connection_mid_chunk_is_resumed(tmp_path: Path, kind: str, fault: Fault) -> None:
    # Only the first connection is faulted, inside its first chunk's body. A 1 s idle
    # timeout ends a stalled body with 408.
    config = network(tmp_path / "run", first_connection(fault), idle_timeout="1s")
    report = run_chaos(config)

    assert_intact(report, config)
    assert proxy_stat(report, kind) == 1
    assert report.retries >= 1
    server = LogFile(config.workdir / "server.log").events()
    if kind == "stalls":
        assert named(server, Event.UPLOAD_STALLED)
        assert any(e.get("status") == 408 for e in named(server, Event.REQUEST))


@pytest.mark.timeout(120)
def test_latency_and_a_bandwidth_cap_only_slow_things_down(tmp_path: Path) -> None:
    bandwidth = 2 * 1024 * 1024
    config = network(tmp_path / "run", Fault(latency=0.005, bandwidth=bandwidth))
    report = run_chaos(config)

    assert_intact(report, config)
    sent = proxy_stat(report, "bytes_up")
    assert sent >= sum(e.size for e in read_journal(config.workdir / "spool"))
    assert report.wall_time_s >= sent / bandwidth  # the cap really held the bytes back
    assert report.retries == 0  # slow is not broken


@pytest.mark.timeout(180)
def test_corrupted_chunks_are_refused_and_resent(tmp_path: Path) -> None:
    config = ChaosConfig(
        tmp_path / "run",
        seed=3,
        cycles=4,
        count=12,
        inject_corruption=0.2,
        min_interval="0ms",
        max_interval="100ms",
    )
    report = run_chaos(config)

    assert_intact(report, config)
    server = LogFile(config.workdir / "server.log").events()
    mismatches = named(server, Event.DIGEST_MISMATCH)
    assert mismatches, "no chunk was damaged: the test proved nothing"
    assert {e["code"] for e in mismatches} == {"chunk_digest_mismatch"}
    assert report.digest_mismatches == len(mismatches)
    assert report.retries >= len(mismatches)


@pytest.mark.timeout(120)
def test_the_runner_reports_damage_it_did_not_cause(tmp_path: Path) -> None:
    """The invariant checks are not vacuous: tamper with a clean run's result."""
    config = quick(tmp_path / "run", count=3)
    assert_intact(run_chaos(config), config)
    files = config.workdir / "data" / "files"
    victim = sorted(files.iterdir())[0]
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    victim.write_bytes(bytes(damaged))
    (files / "stray.tmp").write_bytes(b"partial")

    run = Run(config)
    check_invariants(run)
    text = "\n".join(run.report.violations)
    assert f"files/{victim.name} differs" in text
    assert "files/stray.tmp is not a journaled file" in text
    assert (run.report.corrupted, run.report.duplicated) == (1, 1)


# --- whole-file digest and damaged spool files ----------------------------------------


async def test_a_wrong_repr_digest_is_refused_and_nothing_is_published(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = await asyncio.to_thread(serve_process, data_dir)
    data = bytes(range(256)) * 1200
    url = f"{server.url}/uploads/wrong"
    async with new_session() as session:
        body = {"id": "wrong", "name": "wrong.bin", "size": len(data)}
        lie = {"Repr-Digest": digest_field(data[::-1])}
        async with session.post(f"{server.url}/uploads", json=body, headers=lie) as resp:
            assert resp.status == 200
        chunk = {
            "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}",
            "Content-Digest": digest_field(data),  # the chunk itself is intact
        }
        async with session.put(url, data=data, headers=chunk) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "repr_digest_mismatch"
        async with session.head(url) as resp:
            assert resp.headers["Upload-Offset"] == "0"  # reset: nothing kept
            assert resp.headers["Upload-Complete"] == "?0"
        assert list((data_dir / "files").iterdir()) == []
        async with session.get(f"{server.url}/files/wrong") as resp:
            assert resp.status == 404

        # The right declaration replaces the wrong one and the same bytes are published.
        truth = chunk | {"Repr-Digest": digest_field(data)}
        async with session.put(url, data=data, headers=truth) as resp:
            assert resp.status == 200
    assert (data_dir / "files" / "wrong").read_bytes() == data
    # The child writes its log file on its own schedule: poll until the lines are in.
    completed = wait_until(lambda: named(server.events(), Event.UPLOAD_COMPLETED), "the log")
    assert [e["upload_id"] for e in completed] == ["wrong"]
    mismatch = named(server.events(), Event.DIGEST_MISMATCH)
    assert [(e["kind"], e["code"]) for e in mismatch] == [("file", "repr_digest_mismatch")]


def test_a_spool_file_damaged_before_upload_is_failed_not_sent(
    serve_process: StartServer, tmp_path: Path
) -> None:
    spool, data_dir = tmp_path / "spool", tmp_path / "data"
    source = tmp_path / "samples.bin"
    source.write_bytes(bytes(range(256)) * 1500)
    send = ["send", "--spool-dir", str(spool), "--progress", "never", str(source)]

    # Journaled, but the server is unreachable: the file fails and stays unconfirmed.
    nowhere = f"http://127.0.0.1:{free_port()}"
    first = run_transfer(*send, "--server", nowhere, "--retry-timeout", "300ms")
    assert first.returncode == 1, first.stderr
    [journaled] = read_journal(spool)
    assert journaled.state.value == "failed"

    damaged = bytearray(source.read_bytes())
    damaged[1000] ^= 0x10
    source.write_bytes(bytes(damaged))

    server = serve_process(data_dir)
    second = run_transfer(*send, "--server", server.url, "--log-file", str(tmp_path / "s.log"))
    assert second.returncode == 1  # a journaled file failed
    entries = {e.file_id: e for e in read_journal(spool)}
    old = entries.pop(journaled.file_id)
    assert old.state.value == "failed"
    assert old.reason is not None and "changed on disk" in old.reason
    assert not (data_dir / "files" / journaled.file_id).exists()
    assert not (data_dir / "uploads" / f"{journaled.file_id}.json").exists()  # never sent
    # The file as it is now is new content: journaled under a new id and delivered.
    [(new_id, new)] = entries.items()
    assert new.state.value == "confirmed"
    assert (data_dir / "files" / new_id).read_bytes() == bytes(damaged)
    failed = LogFile(tmp_path / "s.log").named(Event.UPLOAD_FAILED)
    assert [e["file_id"] for e in failed] == [journaled.file_id]
    assert "changed on disk" in failed[0]["reason"]


def test_a_publication_cut_by_a_crash_is_finished_at_start_up(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """The record says complete but the rename into files/ never happened: exactly the
    disk after a kill between the two steps of publication (too narrow a window for the
    runner to hit reliably, so the state is laid out by hand)."""
    data_dir = tmp_path / "data"
    server = serve_process(data_dir)
    data = bytes(range(256)) * 900
    body = {"id": "pub", "name": "pub.bin", "size": len(data)}
    with requests.Session() as session:
        headers = {"Repr-Digest": digest_field(data)}
        created = session.post(f"{server.url}/uploads", json=body, headers=headers, timeout=10)
        assert created.status_code == 200
        chunk = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
        sent = session.put(f"{server.url}/uploads/pub", data=data, headers=chunk, timeout=10)
        assert sent.status_code == 200
    server.kill()
    published, part = data_dir / "files" / "pub", data_dir / "uploads" / "pub.part"
    published.rename(part)

    restarted = serve_process(data_dir)
    started = named(restarted.events(), Event.SERVER_STARTED)
    assert [e["recovered"] for e in started] == [["pub"]]
    assert published.read_bytes() == data
    assert not part.exists()
    with requests.Session() as session:
        record = session.get(f"{restarted.url}/uploads/pub", timeout=10)
        assert record.status_code == 200
        assert record.json()["size"] == len(data)
