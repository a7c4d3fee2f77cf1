"""Issue 12's figures: the S3 store through one replica and through three behind nginx,
against the local store and a standard S3 client, and the cost of a fail-over (C1-C4).

One measurement per round (`c-cluster`) starts a whole local cluster
(`transfer.testing.cluster`: SeaweedFS, PostgreSQL, three `transfer serve --store s3://`
replicas, nginx in front) in the work dir and, on the same bytes:

- C1, the large file (`Plan.large`, one `transfer send PATH`, `--chunk-size auto`):
  a `transfer serve --data-dir` (local store, fsync always); one replica on S3 (its own
  URL); nginx in front of the three; and boto3's multipart `upload_file` of the same file
  to the same SeaweedFS (8 MiB parts, 2 threads: the sender's 8 MiB chunks, 2 in flight).
- C2, `Plan.cluster_files` small files (`CLUSTER_FILE` bytes each, one directory, `transfer
  send DIR`, 4 uploads at once): the same four ways (boto3: `put_object`, 4 threads).
- C4, a fail-over behind nginx: `transfer send --server NGINX` of `Plan.resume_size`
  bytes in `Plan.resume_chunk` chunks (through a fault-free proxy that counts the bytes
  sent); once ~30 % is acknowledged, the replica that received the upload's latest
  request is kill -9'd; nginx sends the retry to another replica.
- C3, a client-side fail-over: the same file with `--server R0 --server R1` on the two
  replicas still alive (R0 through the counting proxy, R1 directly); R0 is kill -9'd
  once ~30 % is acknowledged and the sender moves on to R1.
  Figures of both: seconds from the kill to the first chunk acknowledged after it (the
  sender's log timestamps against the kill's wall clock), and bytes sent beyond the
  file's size (re-sent: through the proxy, headers included, plus the chunks R1
  acknowledged after the switch).

Rates are the sender's own (`send.summary`: bytes or files over `elapsed_s`, start-up of
the interpreter excluded) and boto3's in-process time, so the two compare. Invariants:
the cluster is stopped (`Cluster.close`) however the round ends; nothing is asserted;
without nginx, weed or pgserver the rows say why instead of a figure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchlib.context import Bench, make_source, summary
from benchlib.measure import run_measured
from benchlib.plan import MB, KiB, MiB, Sample
from benchlib.rows import Figures, Row, label, num
from transfer.core.events import Event
from transfer.testing.backing import ACCESS_KEY, REGION, SECRET_KEY, Missing
from transfer.testing.cluster import Cluster, ClusterConfig
from transfer.testing.faultproxy import NO_FAULT
from transfer.testing.harness import transfer_command
from transfer.testing.logs import LogFile
from transfer.testing.polling import NotReached, poll
from transfer.testing.proxythread import ProxyThread

CLUSTER_FILE = 64 * KiB  # each small file of C2
KILL_AT = 0.3  # C3: the share of the file acknowledged before replica 0 is killed
KILL_DEADLINE = 600.0
WAYS = ("local", "s3-one", "s3-nginx", "boto3")
KEY = "c-cluster"  # the measurement's key (scripts/benchlib/cli.py)


def cluster_bench(bench: Bench) -> Sample:
    """C1-C3 in one round (see the module docstring); {} when a piece is missing."""
    small = _small_files(bench)
    work = bench.path("cluster")
    try:
        with Cluster(ClusterConfig(work, replicas=3, max_chunk="64MiB")) as cluster:
            sample = _measure_all(bench, cluster, small)
    except (Missing, NotReached) as exc:
        bench.skipped[KEY] = f"skipped: {str(exc).splitlines()[0]}"
        return {}
    finally:
        shutil.rmtree(small, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return sample


def _measure_all(bench: Bench, cluster: Cluster, small: Path) -> Sample:
    sample: Sample = {}
    with bench.server() as local:
        urls = {"local": local.url, "s3-one": cluster.replicas[0].url, "s3-nginx": cluster.url}
        for way, url in urls.items():
            sample[f"large_{way}"] = _send_rate(bench, url, bench.source, "mbps")
            sample[f"small_{way}"] = _send_rate(bench, url, small, "files_per_s")
    client = _boto3(cluster.endpoint)
    sample["large_boto3"] = _boto3_large(client, cluster.config.bucket, bench.source)
    sample["small_boto3"] = _boto3_small(client, cluster.config.bucket, small)
    sample.update(_failover(bench, cluster))
    return sample


def _small_files(bench: Bench) -> Path:
    directory = bench.path("cluster-small")
    directory.mkdir()
    block = os.urandom(CLUSTER_FILE)
    for i in range(bench.plan.cluster_files):
        (directory / f"f{i:04d}.bin").write_bytes(i.to_bytes(4, "little") + block[4:])
    return directory


def _send_rate(bench: Bench, url: str, what: Path, figure: str) -> float:
    """`transfer send --server URL WHAT`: MB/s (`mbps`) or confirmed files per second."""
    spool, log = bench.path("spool"), bench.path("sender.log")
    argv = transfer_command(
        "send", "--server", url, "--log-file", str(log), "--spool-dir", str(spool),
        "--progress", "never", str(what),
    )  # fmt: skip
    done = run_measured(bench.harness, argv, err=bench.path("sender.stderr"))
    shutil.rmtree(spool, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"transfer send to {url} exited {done.returncode}; see {log}")
    doc = summary(log)
    if figure == "mbps":
        return float(doc["bytes_sent"]) / float(doc["elapsed_s"]) / MB
    return float(doc["confirmed_this_run"]) / float(doc["elapsed_s"])


def _boto3(endpoint: str) -> Any:
    import boto3  # type: ignore[import-untyped]  # the dev extra, only for these rows

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def _boto3_large(client: Any, bucket: str, source: Path) -> float:
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=2
    )
    started = time.perf_counter()
    client.upload_file(str(source), bucket, "boto3/large.bin", Config=config)
    return source.stat().st_size / (time.perf_counter() - started) / MB


def _boto3_small(client: Any, bucket: str, directory: Path) -> float:
    files = sorted(directory.iterdir())

    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=f"boto3/small/{path.name}", Body=path.read_bytes())

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(put, files))
    return len(files) / (time.perf_counter() - started)


def _failover(bench: Bench, cluster: Cluster) -> Sample:
    """C4 then C3 (module docstring): the replica holding the upload behind nginx is
    killed first; then the first of the two still alive, reached through a fault-free
    proxy (whose byte count includes what the kill cut off in flight)."""
    front = ProxyThread(_port(cluster.url), NO_FAULT)
    with front:
        log, killed_at, dead = _send_and_kill(bench, cluster, [front.url], None)
        behind = front.stats.bytes_up
    sample = _figures(log, killed_at, bench.plan.resume_size, behind, key="nginx")
    first, second = (i for i in range(len(cluster.replicas)) if i != dead)
    with ProxyThread(cluster.replicas[first].port, NO_FAULT) as proxy:
        urls = [proxy.url, cluster.replicas[second].url]
        log, killed_at, _ = _send_and_kill(bench, cluster, urls, first)
        to_first = proxy.stats.bytes_up
    return sample | _figures(log, killed_at, bench.plan.resume_size, to_first, key="client")


def _send_and_kill(
    bench: Bench, cluster: Cluster, servers: list[str], victim: int | None
) -> tuple[Path, float, int]:
    """`transfer send` of `Plan.resume_size` to `servers`; replica `victim` (None: the one
    holding the upload) is kill -9'd once `KILL_AT` of the file is acknowledged. The
    sender's log, the kill's wall-clock time and the replica killed."""
    size, chunk = bench.plan.resume_size, bench.plan.resume_chunk
    source = bench.path("failover.bin")
    make_source(source, size)
    spool, log = bench.path("spool"), bench.path("sender.log")
    flags = [arg for url in servers for arg in ("--server", url)]
    argv = transfer_command(
        "send", *flags, "--log-file", str(log), "--spool-dir", str(spool),
        "--chunk-size", str(chunk), "--progress", "never", str(source),
    )  # fmt: skip
    sender = bench.harness.spawn(argv, err=bench.path("sender.stderr"))
    try:
        reached = poll(lambda: _acked(log) >= size * KILL_AT, deadline=KILL_DEADLINE,
                       alive=sender.alive)  # fmt: skip
        victim = _holder(cluster, log) if victim is None else victim
        killed_at = time.time()
        cluster.kill_replica(victim)
        finished = poll(lambda: not sender.alive(), deadline=KILL_DEADLINE)
        if not reached or not finished or sender.proc.returncode != 0:
            raise RuntimeError(f"the fail-over run did not finish well; see {log}")
    finally:
        sender.kill()
        source.unlink(missing_ok=True)
        shutil.rmtree(spool, ignore_errors=True)
    return log, killed_at, victim


def _holder(cluster: Cluster, log: Path) -> int:
    """The replica that received the latest request on the sender's upload."""
    file_id = LogFile(log).named(Event.CHUNK_SENT)[-1]["file_id"]
    latest = {
        i: max((_when(e) for e in r.named(Event.REQUEST) if e.get("upload_id") == file_id),
               default=0.0)
        for i, r in enumerate(cluster.replicas)
    }  # fmt: skip
    return max(latest, key=lambda i: latest[i])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _acked(log: Path) -> int:
    sent = LogFile(log).named(Event.CHUNK_SENT)
    return max((int(e["acknowledged"]) for e in sent), default=0)


def _figures(log: Path, killed_at: float, size: int, counted: int, *, key: str) -> Sample:
    """Seconds from the kill to the next acknowledged chunk; MiB sent beyond the file:
    `counted` bytes through the proxy (headers included), plus, after a switch, every
    chunk the other server acknowledged."""
    events = LogFile(log).events()
    switched = [_when(e) for e in events if e.get("event") == Event.SERVER_SWITCHED]
    after = [e for e in events if e.get("event") == Event.CHUNK_SENT and _when(e) > killed_at]
    if not after or (key == "client" and not switched):
        raise RuntimeError(f"no switch, or no chunk after the kill; see {log}")
    elsewhere = sum(int(e["bytes"]) for e in after if switched and _when(e) >= switched[0])
    return {
        f"failover_{key}_s": _when(after[0]) - killed_at,
        f"failover_{key}_resent_mib": (counted + elsewhere - size) / MiB,
    }


def _when(event: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def cluster_rows(f: Figures, bench: Bench) -> list[Row]:
    """C1-C4 (row ids and wording are quoted by docs/benchmarks.md)."""
    note = bench.skipped.get(KEY, "")
    large, files = label(bench.plan.large), bench.plan.cluster_files
    what = {"local": "local store (--data-dir)", "s3-one": "S3 store, one replica",
            "s3-nginx": "S3 store, three replicas behind nginx",
            "boto3": "boto3 straight to SeaweedFS (reference)"}  # fmt: skip
    rows = [
        Row("C1", f"send {large}: {what[way]}", "MB/s", f.values(KEY, f"large_{way}"),
            reference="boto3" if way != "boto3" else "",
            ref_median=f.median(KEY, "large_boto3") if way != "boto3" else None,
            note=note)
        for way in WAYS
    ]  # fmt: skip
    rows += [
        Row("C2", f"send {files} x {label(CLUSTER_FILE)}: {what[way]}", "files/s",
            f.values(KEY, f"small_{way}"),
            reference="boto3" if way != "boto3" else "",
            ref_median=f.median(KEY, "small_boto3") if way != "boto3" else None,
            note=note)
        for way in WAYS
    ]  # fmt: skip
    size, chunk = label(bench.plan.resume_size), label(bench.plan.resume_chunk)
    for rid, key, how in (
        ("C3", "client", "`--server R0 --server R1`, R0 killed: the sender moves on"),
        ("C4", "nginx", "one URL (nginx), the replica holding the upload killed"),
    ):
        resent = f.median(KEY, f"failover_{key}_resent_mib")
        rows.append(
            Row(
                rid,
                f"fail-over, {size} in {chunk} chunks, {how}: seconds from the kill -9 "
                "to the next acknowledged chunk",
                "s",
                f.values(KEY, f"failover_{key}_s"),
                note=note or f"re-sent {num(resent)} MiB",
            )
        )
    return rows
