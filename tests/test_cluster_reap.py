"""A cluster killed with SIGKILL leaves pgserver's PostgreSQL running (a daemon); the
next start reaps it (`transfer.testing.cluster_reap`), and never a live cluster's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import missing_piece

from transfer.testing import cluster_reap
from transfer.testing.backing import Missing, Postgres, start_postgres

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def orphan() -> Iterator[Postgres]:
    """A PostgreSQL as a cluster starts it (removed at the end if the test did not)."""
    try:
        server = start_postgres()
    except Missing as exc:
        missing_piece(str(exc))
        raise AssertionError from None  # unreachable: missing_piece raises
    yield server
    server.stop()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running(pgdata: Path) -> bool:
    return (pgdata / "postmaster.pid").exists()


def _gone(pid: int) -> bool:
    """Exited (a zombie, if it was a child of this process: pgserver started it here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _mark(work: Path, pgdata: Path, pid: int) -> None:
    (work / cluster_reap.MARKER).write_text(json.dumps({"pgdata": str(pgdata), "pid": pid}))


def test_a_dead_clusters_postgres_is_stopped_and_removed(orphan: Postgres, tmp_path: Path) -> None:
    cluster_reap.mark(tmp_path, orphan.root)
    assert cluster_reap.reap(tmp_path) == []  # this process runs it: not an orphan
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as live:
        _mark(tmp_path, orphan.root, live.pid)  # another cluster, still running
        assert cluster_reap.reap(tmp_path) == []
        live.communicate(b"\n")
    assert _running(orphan.root)
    postmaster = int((orphan.root / "postmaster.pid").read_text().split()[0])
    _mark(tmp_path, orphan.root, _dead_pid())
    assert cluster_reap.reap(tmp_path) == [orphan.root]
    assert _gone(postmaster)  # pg_ctl -w waited for its exit
    assert not orphan.root.exists() and not (tmp_path / cluster_reap.MARKER).exists()
