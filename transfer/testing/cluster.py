"""A whole cluster on one machine: SeaweedFS, PostgreSQL, N replicas and nginx in front.

`Cluster(ClusterConfig(...)).start()` starts, through one `Harness` (logs in `workdir`):

    SeaweedFS      `weed server -s3` and the bucket (unless `s3_endpoint` names one)
    PostgreSQL     pgserver (unless `db` names a server)
    replicas       `transfer serve --store s3://BUCKET/PREFIX --s3-endpoint URL --db DSN
                   --trusted-proxy 127.0.0.1/32`, each on port 0, its URL read from its
                   `server.started` line (logs `replicaN.log`)
    nginx          in front (`cluster_nginx`: config in `workdir/nginx/nginx.conf`)

`scripts/cluster.sh` runs `python -m transfer.testing.cluster` (`main`, below), which
prints the URL and how to stop it; tests/test_cluster.py drives the class directly and
kills replicas (`kill_replica`, `restart_replica`).

Invariants: a restarted replica listens on the port it first announced, since nginx's
upstream list is fixed; the S3 credentials reach the replicas only through the AWS_*
environment variables; `close` leaves no child running (nginx and the replicas get
SIGTERM first, SeaweedFS and PostgreSQL are stopped last). A cluster killed with
SIGKILL cannot close: the PostgreSQL it started is reaped by the next start
(`cluster_reap`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from transfer.core.units import parse_size
from transfer.store.s3.location import redact_dsn
from transfer.testing import cluster_reap
from transfer.testing.backing import (
    Missing,
    Postgres,
    aws_env,
    create_bucket,
    start_postgres,
    start_seaweedfs,
)
from transfer.testing.children import Child, ServerProcess
from transfer.testing.cluster_nginx import cluster_conf
from transfer.testing.harness import HOST, Harness, free_port
from transfer.testing.nginx import nginx_binary, start_nginx
from transfer.testing.polling import NotReached

START_DEADLINE = 30.0  # for a replica to announce itself (it migrates the schema first)
STOP_DEADLINE = 15.0  # for a signalled child to exit
TRUSTED = f"{HOST}/32"  # nginx's address, whose X-Forwarded-For the replicas believe


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    workdir: Path
    replicas: int = 3
    db: str | None = None  # postgresql://...; None starts PostgreSQL (pgserver)
    s3_endpoint: str | None = None  # an S3 endpoint (keys in AWS_*); None starts SeaweedFS
    bucket: str = "transfer"
    prefix: str = "cluster"
    max_chunk: str = "64MiB"
    serve_args: tuple[str, ...] = ()  # more `transfer serve` flags for every replica

    @property
    def store(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class Cluster:
    """The running cluster; `url` is nginx's, `replicas[i].url` each replica's."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.work = config.workdir.resolve()
        self.env = dict(os.environ) if config.s3_endpoint else {**os.environ, **aws_env()}
        self.harness = Harness(
            self.work, env=self.env, new_session=True, stop_deadline=STOP_DEADLINE
        )
        self.endpoint = config.s3_endpoint or ""
        self.dsn = config.db or ""
        self.postgres: Postgres | None = None
        self._weed: Child | None = None
        self.replicas: list[ServerProcess] = []
        self.ports: list[int] = []
        self.nginx: Child | None = None
        self.url = ""

    def start(self) -> Self:
        """Start what is missing, then the replicas, then nginx (`close` on failure).

        Raises:
            Missing: weed, pgserver or nginx is not installed.
            NotReached: a child did not start (its log tail in the message).
        """
        binary = nginx_binary()  # before anything starts: nothing to undo
        if binary is None:
            raise Missing("nginx is not installed (Debian: apt-get install nginx-light)")
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            self._start_backing()
            for index in range(self.config.replicas):
                self.replicas.append(self._serve(index, port=0))
                self.ports.append(self.replicas[-1].port)
            self._start_nginx(binary)
        except BaseException:
            self.close()
            raise
        return self

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica `index`: exactly a crash."""
        self.replicas[index].kill()

    def restart_replica(self, index: int) -> ServerProcess:
        """Replica `index` again, on its port (retried while the port is still taken)."""
        end = time.monotonic() + START_DEADLINE
        while True:
            try:
                self.replicas[index] = self._serve(index, port=self.ports[index])
            except NotReached:
                if time.monotonic() > end:
                    raise
                continue
            return self.replicas[index]

    def close(self) -> None:
        """Stop nginx and the replicas (SIGTERM), then SeaweedFS, then PostgreSQL."""
        try:
            for child in [c for c in self.harness.children if c is not self._weed]:
                child.stop()
            self.harness.close()
        finally:
            if self.postgres is not None:
                self.postgres.stop()
                self.postgres = None
                cluster_reap.unmark(self.work)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_backing(self) -> None:
        if not self.endpoint:
            weed = start_seaweedfs(self.harness, self.work / "seaweedfs")
            self._weed, self.endpoint = weed.child, weed.endpoint
        create_bucket(self.endpoint, self.config.bucket, self.env)
        if not self.dsn:
            for orphan in cluster_reap.reap(self.work):  # left by a SIGKILLed cluster
                print(f"cluster: stopped the orphaned PostgreSQL in {orphan}", file=sys.stderr)
            self.postgres = start_postgres()
            cluster_reap.mark(self.work, self.postgres.root)
            self.dsn = self.postgres.uri

    def _serve(self, index: int, *, port: int) -> ServerProcess:
        extra = ["--s3-endpoint", self.endpoint, "--db", self.dsn]
        extra += ["--trusted-proxy", TRUSTED, "--max-chunk", self.config.max_chunk]
        return self.harness.serve(
            self.work,  # only names it: the replica keeps nothing on local disk
            port=port,
            store=self.config.store,
            extra=[*extra, *self.config.serve_args],
            name=f"replica{index}",
            deadline=START_DEADLINE,
        )

    def _start_nginx(self, binary: str) -> None:
        port = free_port()
        directory = self.work / "nginx"
        directory.mkdir(exist_ok=True)
        conf = cluster_conf(directory, port, self.ports, parse_size(self.config.max_chunk))
        self.nginx = start_nginx(self.harness, binary, directory, conf, port)
        self.url = f"http://{HOST}:{port}"


# --- scripts/cluster.sh --------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/cluster.sh",
        description="A local cluster: SeaweedFS, PostgreSQL, N `transfer serve` replicas "
        "on one s3:// store, nginx in front. Runs until Ctrl-C (or SIGTERM).",
    )
    p.add_argument("--db", metavar="URL", help="postgresql://... (default: start pgserver)")
    p.add_argument("--replicas", type=int, default=3, help="replicas (default: 3)")
    p.add_argument("--dir", type=Path, help="work directory: logs, SeaweedFS data, nginx")
    p.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="an existing S3 endpoint, keys in AWS_* (default: start SeaweedFS)",
    )
    p.add_argument("--bucket", default="transfer", help="bucket (created if missing)")
    p.add_argument("--prefix", default="cluster", help="key prefix in the bucket")
    p.add_argument("--max-chunk", default="64MiB", help="the replicas' --max-chunk")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replicas < 1:
        print("cluster: --replicas must be at least 1", file=sys.stderr)
        return 2
    work = args.dir or Path(tempfile.mkdtemp(prefix="transfer-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    config = ClusterConfig(
        work, args.replicas, args.db, args.s3_endpoint, args.bucket, args.prefix, args.max_chunk
    )
    # SIGTERM as Ctrl-C: either ends the wait below (or a start) and stops everything.
    signal.signal(signal.SIGTERM, _interrupt)
    cluster = Cluster(config)
    try:
        cluster.start()
        print(banner(cluster), flush=True)
        while True:
            signal.pause()
    except (Missing, NotReached) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cluster: stopping", flush=True)
    finally:
        cluster.close()
    print("cluster: stopped", flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def banner(cluster: Cluster) -> str:
    """What is running, where, and how to stop it."""
    config, work = cluster.config, cluster.work
    keys = "" if config.s3_endpoint else " (SeaweedFS; keys: " + _keys() + ")"
    db = "pgserver, removed on stop" if cluster.postgres else "given"
    lines = [
        f"cluster: {cluster.url}  (nginx in front of {len(cluster.replicas)} replicas)",
        f"  store: {config.store} on {cluster.endpoint}{keys}",
        f"  db:    {redact_dsn(cluster.dsn)} ({db})",
        *(f"  replica{i}: {r.url}  log {r.log.path}" for i, r in enumerate(cluster.replicas)),
        f"  nginx: {work}/nginx/nginx.conf, access log {work}/nginx/access.log",
        f"  try:   .venv/bin/transfer send --server {cluster.url} --spool-dir {work}/spool",
        f"  stop:  Ctrl-C, or kill {os.getpid()}",
    ]
    return "\n".join(lines)


def _keys() -> str:
    return " ".join(f"{name}={value}" for name, value in aws_env().items())


if __name__ == "__main__":
    sys.exit(main())
