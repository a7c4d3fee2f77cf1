"""Running a child to its end and measuring it: wall time, CPU and peak RSS.

Invariants: CPU comes from wait4's rusage of that child alone; peak RSS is the last
VmHWM seen in /proc while it ran (wait4's ru_maxrss is no use: exec folds the forking
parent's high-water mark into the child's, so every child would "peak" at our size); no
child runs longer than RUN_DEADLINE.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib.plan import KiB
from transfer.testing.children import Child
from transfer.testing.harness import Harness

CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN_DEADLINE = 900.0  # no single child may run longer than this
RSS_POLL = 0.02  # seconds between two looks at a running child's VmHWM


@dataclass(frozen=True, slots=True)
class Finished:
    """A child that ran to its end: exit status, wall time and its own rusage."""

    returncode: int
    wall: float
    cpu: float
    maxrss: int  # bytes: the last VmHWM seen before it exited


def run_measured(
    harness: Harness, argv: Sequence[str], *, err: Path, out: Path | None = None
) -> Finished:
    """Run `argv` to its end; CPU and peak RSS come from wait4's rusage and /proc."""
    started = time.perf_counter()
    return reap(harness.spawn(argv, err=err, out=out), started)


def reap(child: Child, started: float) -> Finished:
    """Wait for `child`, sampling its VmHWM every RSS_POLL seconds until it exits."""
    hwm = 0
    deadline = time.monotonic() + RUN_DEADLINE
    while not _wait_exit(child.pid, RSS_POLL):
        hwm = max(hwm, peak_rss(child.pid, missing_ok=True))
        if time.monotonic() > deadline:
            child.stop()
            raise RuntimeError(f"{child.proc.args!r} ran longer than {RUN_DEADLINE} s")
    wall = time.perf_counter() - started
    _, status, usage = os.wait4(child.pid, 0)
    child.proc.returncode = os.waitstatus_to_exitcode(status)
    return Finished(child.proc.returncode, wall, usage.ru_utime + usage.ru_stime, hwm)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Block until `pid` exits (a pidfd turns readable) without reaping it."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return bool(ready)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss(pid: int, *, missing_ok: bool = False) -> int:
    """VmHWM of a running process, in bytes (0 for an exiting one if `missing_ok`)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KiB
    if missing_ok:
        return 0  # a zombie has no memory left to report
    raise RuntimeError(f"no VmHWM for pid {pid}")
