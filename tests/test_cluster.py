"""Three replicas on one S3 store and one database, behind nginx: real processes only.

The cluster is `transfer.testing.cluster` (what scripts/cluster.sh runs) on the
session's SeaweedFS and PostgreSQL (tests/services.py), each test on a fresh prefix and
schema. nginx is Debian's nginx-light (scripts/test.sh installs it as root); without it
these tests skip, or fail under CI=true.

- a replica SIGKILLed in the middle of a 64 MiB upload: the sender finishes through
  another, the file is byte-identical and was published exactly once;
- two replicas receiving conflicting chunks of one upload at once: exactly one is
  accepted, the other is 409 with the current offset (`Range`), the file is right;
- the demo job and a chaos run (kills of the sender and of replicas) through nginx,
  verified by `transfer verify`;
- the cluster script's entry point announces its URL and stops cleanly on SIGTERM, and
  docs/scaling.md quotes the nginx configuration that is really written.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from services import Services, fresh_place
from support import missing_piece

from transfer.common.http import new_session
from transfer.core.events import Event
from transfer.testing.chaos.config import ChaosConfig
from transfer.testing.cluster import Cluster, ClusterConfig
from transfer.testing.cluster_chaos import run_cluster_chaos
from transfer.testing.cluster_nginx import cluster_conf
from transfer.testing.faultproxy import Fault
from transfer.testing.harness import Harness, run_transfer
from transfer.testing.logs import LogFile, LogLine
from transfer.testing.nginx import TEMP_DIRS, nginx_binary
from transfer.testing.polling import wait_until, wait_until_async
from transfer.testing.proxythread import ProxyThread

MiB = 1024 * 1024


@pytest.fixture
def cluster(services: Services, tmp_path: Path) -> Iterator[Cluster]:
    """Three replicas and nginx on the session's SeaweedFS and PostgreSQL."""
    if nginx_binary() is None:
        missing_piece("nginx is not installed (scripts/test.sh installs nginx-light as root)")
    where, dsn = asyncio.run(fresh_place(services))
    config = ClusterConfig(
        tmp_path / "cluster",
        db=dsn,
        s3_endpoint=services.endpoint,
        bucket=where.bucket,
        prefix=where.prefix,
        max_chunk="16MiB",
    )
    config.workdir.mkdir()
    with Cluster(config) as running:
        yield running


def puts_in(cluster: Cluster, index: int, upload_id: str) -> int:
    """PUTs with bytes that replica `index` answered for `upload_id` (every run of it)."""
    return sum(
        1
        for e in cluster.harness.log_file(f"replica{index}").named(Event.REQUEST)
        if e.get("upload_id") == upload_id and e.get("method") == "PUT" and e.get("bytes")
    )


def completions_of(cluster: Cluster, upload_id: str) -> list[LogLine]:
    """Every `upload.completed` line for `upload_id` in every replica's log, restarts too."""
    return [
        e
        for index in range(len(cluster.replicas))
        for e in cluster.harness.log_file(f"replica{index}").named(Event.UPLOAD_COMPLETED)
        if e.get("upload_id") == upload_id
    ]


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        data: bytes = response.read()
    return data


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_replica_killed_mid_upload_the_sender_finishes_through_another(
    cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(64 * MiB))
    spool = tmp_path / "spool"
    # Paced at 4 MiB/s a connection so the upload is still running when 4 chunks have landed
    # (unpaced, a quiet machine can finish before the poll sees them).
    nginx_port = int(cluster.url.rsplit(":", 1)[1])
    proxy = ProxyThread(nginx_port, Fault(bandwidth=4 * MiB))
    request.addfinalizer(proxy.stop)
    proxy.start()
    sender = cluster.harness.send(
        proxy.url, spool, "--chunk-size", "2MiB", "--retry-timeout", "120s", str(source)
    )
    upload_id = sender.wait_for(
        lambda events: next((e["file_id"] for e in events if e.get("file_id")), None),
        "the sender's file id",
    )

    def holder() -> int | None:
        """Once the sender has 4 chunks acknowledged, the replica that took the most of
        them (nginx's hash chose it). Counted from the replicas' log files themselves,
        one reader per file (`Harness.log_file`), whatever process wrote them."""
        if len(sender.named(Event.CHUNK_SENT)) < 4:
            return None
        counts = [puts_in(cluster, i, str(upload_id)) for i in range(len(cluster.replicas))]
        best = max(range(len(counts)), key=counts.__getitem__)
        return best if counts[best] else None

    def counts() -> str:
        per_replica = [puts_in(cluster, i, str(upload_id)) for i in range(len(cluster.replicas))]
        return f"PUTs per replica: {per_replica}\n{sender.report()}"

    victim = wait_until(
        lambda: None if (v := holder()) is None else (v,),
        "4 chunks acknowledged",
        deadline=60,
        alive=sender.alive,
        context=counts,
    )[0]
    assert not completions_of(cluster, str(upload_id))
    cluster.kill_replica(victim)

    assert sender.finish(timeout=180) == 0, sender.report()
    others = [i for i in range(len(cluster.replicas)) if i != victim]
    assert any(puts_in(cluster, i, str(upload_id)) for i in others)  # another took over
    assert len(completions_of(cluster, str(upload_id))) == 1  # published once
    stored = download(f"{cluster.url}/files/{upload_id}")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(source.read_bytes()).digest()
    assert sender.summary()["bytes_sent"] <= 66 * MiB  # at most the chunk in flight again
    verified = run_transfer("verify", "--server", cluster.url, "--spool-dir", str(spool))
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def _lock_held(dsn: str, upload_id: str) -> bool:
    """Some session holds the upload's advisory lock (the key the S3 store takes)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_locks, (SELECT hashtextextended($1, 0) AS k) AS key "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = ((key.k >> 32) & 4294967295) "
            "AND objid::bigint = (key.k & 4294967295)",
            upload_id,
        )
    finally:
        await conn.close()
    return bool(found)


async def _held_body(first: bytes, rest: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    """`first`, then (once `release` is set) `rest`: a chunk arriving slowly."""
    yield first
    await release.wait()
    yield rest


@pytest.mark.timeout(120)
async def test_two_replicas_conflicting_chunks_at_once_one_wins(cluster: Cluster) -> None:
    """Replica 0 is receiving the chunk at offset K (holding the upload's lock) when
    replica 1 gets other bytes for offset K: 409 with the current offset, and the
    upload ends with replica 0's bytes."""
    upload_id, size, k = "race-http", 3 * MiB, MiB
    data, other = os.urandom(size), os.urandom(size)
    a, b = (f"{r.url}/uploads/{upload_id}" for r in cluster.replicas[:2])
    release = asyncio.Event()
    async with new_session() as session:
        head = {"Content-Range": f"bytes 0-{k - 1}/{size}"}
        async with session.put(a, data=data[:k], headers=head) as first:
            assert first.status == 308, await first.text()
        chunk = {"Content-Range": f"bytes {k}-{size - 1}/{size}"}
        body = _held_body(data[k : 2 * k], data[2 * k :], release)
        winner = asyncio.create_task(session.put(a, data=body, headers=chunk))
        await wait_until_async(
            lambda: _lock_held(cluster.dsn, upload_id), "replica 0 locking", interval=0.05
        )
        async with session.put(b, data=other[k:], headers=chunk) as loser:
            assert loser.status == 409, await loser.text()
            problem = await loser.json()
            assert problem["code"] in ("upload_conflict", "offset_mismatch")
            assert loser.headers["Range"] == f"bytes=0-{k - 1}"
        release.set()
        async with await winner as won:
            assert won.status == 200, await won.text()
        async with session.get(f"{cluster.url}/files/{upload_id}") as stored:
            assert await stored.read() == data


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_demo_job_through_nginx(cluster: Cluster, tmp_path: Path) -> None:
    """scripts/demo.sh's sender (100 files, 1 KiB-1 MiB, defaults) through nginx, but
    with files 0-50 ms apart instead of 0-1 s: the pace of generation, not of the
    transfer path, and 50 s of waiting would test nothing more. `transfer verify`."""
    spool = tmp_path / "spool"
    sender = cluster.harness.send(cluster.url, spool, "--max-interval", "50ms")
    assert sender.finish(timeout=240) == 0, sender.report()
    verified = run_transfer("verify", "--server", cluster.url, "--spool-dir", str(spool))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified 100/100" in verified.stdout
    served = [i for i, r in enumerate(cluster.replicas) if r.named(Event.UPLOAD_COMPLETED)]
    assert len(served) == len(cluster.replicas)  # nginx spread the uploads over all


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(420)
def test_chaos_kills_of_the_sender_and_of_replicas_through_nginx(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = ChaosConfig(
        tmp_path / "chaos",
        seed=16,  # 4 kills of the sender, 6 of replicas
        cycles=10,
        count=80,  # 0-1 s apart: time for 10 cycles with replica restarts, on a slow day
        max_size="3MiB",
        chunk_size="256KiB",
        finish_deadline=180.0,
        deadline=240.0,
    )
    report = run_cluster_chaos(cluster, config)
    assert report.ok, report.to_json()
    assert report.kills["sender"] and report.kills["server"], report.to_json()
    assert report.confirmed == 80


def test_docs_quote_the_nginx_configuration() -> None:
    """docs/scaling.md shows the configuration `cluster_conf` really writes."""
    conf = cluster_conf(Path("/tmp/cluster/nginx"), 8080, [8001, 8002, 8003], 64 * MiB)
    shown = "\n".join(line for line in conf.splitlines() if line != "user root;")
    doc = (Path(__file__).parents[1] / "docs" / "scaling.md").read_text()
    assert f"```nginx\n{shown}\n```" in doc


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        missing_piece("nginx is not installed (scripts/test.sh installs nginx-light as root)")
    for sub in TEMP_DIRS:
        (tmp_path / sub).mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(cluster_conf(tmp_path, 8080, [8001, 8002], 16 * MiB))
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_cluster_script_prints_its_url_and_stops_on_sigterm(
    services: Services, tmp_path: Path
) -> None:
    """`python -m transfer.testing.cluster` (what scripts/cluster.sh runs), here on the
    session's SeaweedFS and PostgreSQL: it announces nginx's URL, which answers, and
    SIGTERM stops every replica cleanly."""
    if nginx_binary() is None:
        missing_piece("nginx is not installed (scripts/test.sh installs nginx-light as root)")
    where, dsn = asyncio.run(fresh_place(services))
    work, out = tmp_path / "cluster", tmp_path / "cluster.out"
    argv = [sys.executable, "-m", "transfer.testing.cluster", "--replicas", "2"]
    argv += ["--dir", str(work), "--s3-endpoint", services.endpoint, "--db", dsn]
    argv += ["--bucket", where.bucket, "--prefix", where.prefix]
    with Harness(tmp_path) as harness:
        script = harness.spawn(argv, err=tmp_path / "cluster.err", out=out)
        banner: str = wait_until(
            lambda: out.read_text() if "stop:" in out.read_text() else None,
            "the cluster's banner",
            deadline=90,
            alive=script.alive,
            context=script.report,
        )
        url = banner.split()[1]
        assert f"kill {script.pid}" in banner
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as health:
            assert health.status == 200
        assert script.stop() and script.proc.returncode == 0, script.report()
    assert out.read_text().endswith("cluster: stopped\n")
    for index in range(2):
        log = LogFile(work / f"replica{index}.log")
        assert log.named(Event.SERVER_STOPPED), log.tail()
