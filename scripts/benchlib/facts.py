"""Facts about the machine and the code under test, and the Markdown report around the
table.

The facts are read, never assumed: CPU and memory from /proc, the work dir's filesystem
from `df`, where `python -m transfer` really imports from (which `--transfer-src` may
change), and the repository's HEAD with a note when `transfer/` has uncommitted changes.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from benchlib.context import Bench
from benchlib.plan import SENDER_HASH_PASSES, SERVER_HASH_PASSES, KiB
from transfer.testing.harness import Harness

REPO = Path(__file__).resolve().parents[2]


def machine(work: Path, harness: Harness) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        "unknown",
    )
    mem_kib = next(
        int(ln.split()[1])
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal:")
    )
    df = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True, check=False)
    fs = df.stdout.splitlines()[-1].split() if df.returncode == 0 else ["?", "?"]
    return {
        "cpus (nproc)": str(os.cpu_count()),
        "cpu model": model,
        "memory": f"{mem_kib / KiB / KiB:.1f} GiB",
        "work dir filesystem": f"{fs[1]} on {fs[0]} ({work})",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "repository HEAD": _git_commit(),
        "transfer under test": _package_under_test(harness),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _package_under_test(harness: Harness) -> str:
    """Where `python -m transfer` imports from (and its COMMIT file, if it has one)."""
    found = subprocess.run(
        [sys.executable, "-c", "import transfer; print(transfer.__file__)"],
        capture_output=True,
        text=True,
        env=harness.env,
        cwd=harness.cwd,
        check=False,
    )
    package = Path(found.stdout.strip()).parent
    stamp = package.parent / "COMMIT"
    commit = f" (snapshot of {stamp.read_text().strip()})" if stamp.exists() else ""
    return f"{package}{commit}"


def _git_commit() -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "transfer"],
        capture_output=True,
        text=True,
        check=False,
    )
    suffix = " (+ uncommitted changes under transfer/)" if dirty.stdout.strip() else ""
    return head.stdout.strip() + suffix


def render(facts: dict[str, str], table: str, command: str, notes: list[str]) -> str:
    lines = ["# transfer benchmark", "", f"Command: `{command}`", "", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", table, ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def notes(bench: Bench) -> list[str]:
    notes = [
        "MB = 10^6 bytes. Wall time of `transfer send` runs from process start to exit "
        "(Python start-up included); 'in-process' is send.summary's own figure.",
        "Ratios are ratios of medians. Rounds are interleaved (every measurement once per "
        "round), and os.sync() runs before each measurement.",
        f"Hashing share: R3 speed x passes (server {SERVER_HASH_PASSES}, sender "
        f"{SENDER_HASH_PASSES}) over the fastest S1 wall time.",
    ]
    if bench.nginx_note:
        notes.append(f"nginx: {bench.nginx_note}")
    return notes
