"""Sizes, units and limits of the benchmark: the full run and `--quick`.

`FULL` is what docs/benchmarks.md reports; `QUICK` runs every scenario in seconds (the
smoke test in tests/test_bench.py). The hash-pass counts are read off the code and
explained in docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1e6
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
RUN_DEADLINE = 900.0  # no single child may run longer than this
KILL_DELAY = 0.015  # S6: seconds from the threshold ack to the SIGKILL
RSS_POLL = 0.02  # seconds between two looks at a running child's VmHWM
# Hash passes over every byte, read off the code (see docs/benchmarks.md): the server
# hashes each chunk for its Content-Digest and again for the running whole-file digest;
# the sender (PATH mode) hashes the file to journal it, again in check_local before the
# upload, and each chunk for its Content-Digest.
SERVER_HASH_PASSES = 2
SENDER_HASH_PASSES = 3

Sample = dict[str, float]


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes for one benchmark mode."""

    large: int  # the large file of S1/S2/S3/S5 and of the references
    chunks: tuple[int, ...]  # S1/S2 chunk sizes
    many_count: int  # S4 files generated with no interval
    schedule_count: int  # S4 files on the brief's schedule
    schedule_max_interval: str | None  # None: the default (1s)
    concurrent_files: int  # S5: uploads at once
    concurrent_size: int
    concurrent_chunk: int
    resume_size: int  # S6
    resume_chunk: int
    hash_buffer: int  # S3 in-process hashing
    soak_uploads: int = 200_000  # S7: small uploads through one server
    journal_files: int = 100_000  # S8: confirmed files in the sender's spool
    startup_runs: int = 3  # S7: start-ups timed on each data dir (the median is kept)
    cluster_files: int = 1000  # C2: small files through the S3 store (benchlib/cluster.py)


FULL = Plan(
    large=GiB,
    chunks=(256 * KiB, 8 * MiB, 32 * MiB),
    many_count=1000,
    schedule_count=100,
    schedule_max_interval=None,
    concurrent_files=64,
    concurrent_size=16 * MiB,
    concurrent_chunk=8 * MiB,
    resume_size=GiB,
    resume_chunk=8 * MiB,
    hash_buffer=256 * MiB,
)
QUICK = Plan(
    large=8 * MiB,
    chunks=(256 * KiB, 8 * MiB, 32 * MiB),
    many_count=200,
    schedule_count=20,
    schedule_max_interval="50ms",
    concurrent_files=64,
    concurrent_size=256 * KiB,
    concurrent_chunk=256 * KiB,
    resume_size=32 * MiB,
    resume_chunk=256 * KiB,
    hash_buffer=16 * MiB,
    soak_uploads=2000,
    journal_files=2000,
    startup_runs=1,
    cluster_files=40,
)
