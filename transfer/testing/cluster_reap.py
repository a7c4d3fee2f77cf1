"""What a SIGKILLed `scripts/cluster.sh` leaves behind, reaped at the next start.

pgserver starts PostgreSQL as a daemon (`pg_ctl start`), so it outlives a cluster
process killed with SIGKILL (no `finally` runs): it would keep its socket, its shared
memory and its `/tmp/transfer-pg-*` directory for ever. So while a cluster's PostgreSQL
runs, the cluster's work directory holds `postgres.json` (`{"pgdata", "pid"}`); at
start, every such marker (in this work directory and in `$TMPDIR/transfer-cluster-*`,
the default work directories) whose `pid` is gone names an orphan, which is stopped
(`pg_ctl stop -m fast`) and removed. By hand, the same is (as the directory's owner):

    .venv/lib/python3*/site-packages/pgserver/pginstall/bin/pg_ctl -D PGDATA -m fast stop

Invariants: a marker whose process still runs (another cluster) is never touched; only
directories a marker names are removed, never the tests' own PostgreSQL servers (they
write no marker).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from transfer.testing.backing import stop_postgres_at

MARKER = "postgres.json"


def mark(work: Path, pgdata: Path) -> None:
    """Record that this process runs the PostgreSQL in `pgdata` for the cluster in `work`."""
    (work / MARKER).write_text(json.dumps({"pgdata": str(pgdata), "pid": os.getpid()}))


def unmark(work: Path) -> None:
    (work / MARKER).unlink(missing_ok=True)


def reap(work: Path) -> list[Path]:
    """Stop and remove the PostgreSQL of every dead cluster's marker; the data dirs."""
    markers = {work / MARKER, *Path(tempfile.gettempdir()).glob(f"transfer-cluster-*/{MARKER}")}
    reaped = []
    for marker in sorted(m for m in markers if m.is_file()):
        pgdata = _orphan(marker)
        if pgdata is not None:
            stop_postgres_at(pgdata)
            shutil.rmtree(pgdata, ignore_errors=True)
            marker.unlink(missing_ok=True)
            reaped.append(pgdata)
    return reaped


def _orphan(marker: Path) -> Path | None:
    """The data directory a marker names, if the process that wrote it is gone."""
    try:
        doc = json.loads(marker.read_text())
        pid, pgdata = int(doc["pid"]), Path(doc["pgdata"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or _alive(pid):
        return None
    return pgdata


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


__all__ = ["MARKER", "mark", "reap", "unmark"]
