"""Smoke test of `scripts/bench.py --quick`: it runs every scenario and reports each one.

No figure is asserted: speed, CPU and memory depend on the machine and its neighbours;
the benchmark reports them against its targets, and docs/benchmarks.md discusses them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import missing_piece

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
ROW_IDS = ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "D1", "D2")
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8")
CLUSTER = ("C1", "C2", "C3", "C4")  # a local S3 cluster (scripts/benchlib/cluster.py): ~70 s
PEERS = ("P1", "P2")  # ours and @tus/server (Node); tusd only where $TUSD names a binary


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_quick_bench_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    flags = ["--quick", "--repeat", "1", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(BENCH), *flags],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=320,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert report in result.stdout
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for rid in (*ROW_IDS, *SCENARIOS):
        assert any(row.startswith(f"| {rid} |") for row in rows), f"no {rid} row"
    for scenario in SCENARIOS:
        measured = [r for r in rows if r.startswith(f"| {scenario} |")]
        assert any("n/a" not in r.split("|")[3] for r in measured), f"{scenario} has no figure"
    assert not any((tmp_path / "work").iterdir()), "the work files were not removed"
    cluster = [r for r in rows if r.split("|")[1].strip() in CLUSTER]
    assert {r.split("|")[1].strip() for r in cluster} == set(CLUSTER)
    skipped = [r.split("|")[-2].strip() for r in cluster if "skipped:" in r]
    if skipped:  # no nginx, weed or pgserver here: the rows say which
        missing_piece(f"the cluster rows were {skipped[0]}")
    assert all("n/a" not in r.split("|")[3] for r in cluster), "a cluster row has no figure"
    peers = [r for r in rows if r.split("|")[1].strip() in PEERS and "tusd" not in r]
    assert {r.split("|")[1].strip() for r in peers} == set(PEERS)
    node = [r.split("|")[-2].strip() for r in peers if "skipped:" in r]
    if node:  # no node or no npm packages in tests/node-tus-server: the row says which
        missing_piece(f"the peer rows were {node[0]}")
    assert all("n/a" not in r.split("|")[3] for r in peers), "a peer row has no figure"
