"""What a chaos run is asked to do (`ChaosConfig`) and what it found (`ChaosReport`).

The report's fields, in this order, are the JSON object `scripts/chaos.py` prints last
(docs/reliability.md quotes it): renaming or reordering one changes that contract.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer.testing.faultproxy import Plan

HOST = "127.0.0.1"
POLL = 0.002  # seconds between two looks at logs and the uploads directory
START_DEADLINE = 20.0  # for a child to announce itself
STOP_DEADLINE = 25.0  # a stalled body keeps aiohttp lingering up to 10 s after its 408
SIDES = ("sender", "server")
PROTOCOLS = ("native", "tus", "ietf")  # `transfer send --protocol` values the runner drives


class ChaosError(Exception):
    """The run could not go on (a child would not start); reported as a violation."""


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    workdir: Path
    seed: int = 1
    cycles: int = 20
    count: int = 40
    min_size: str = "1KiB"
    max_size: str = "1MiB"
    min_interval: str = "1ms"
    max_interval: str = "1s"
    chunk_size: str = "256KiB"
    concurrency: int = 4
    retry_timeout: str = "120s"
    idle_timeout: str = "5s"
    inject_corruption: float = 0.0
    plan: Plan | None = None  # a FaultProxy plan; None runs without the proxy
    sides: tuple[str, ...] = SIDES
    protocol: str = "native"  # `transfer send --protocol`; the server speaks them all
    journal_compact_at: str | None = None  # `transfer send --journal-compact-at`; None: its default
    cycle_deadline: float = 30.0  # longest wait for one kill moment
    finish_deadline: float = 180.0  # for the sender to finish after the last cycle
    deadline: float = 1800.0  # for the whole run's kill cycles

    def sender_args(self) -> list[str]:
        """`transfer send` flags for this run (the server, spool and log come apart)."""
        return [
            "--seed", str(self.seed), "--count", str(self.count),
            "--min-size", self.min_size, "--max-size", self.max_size,
            "--min-interval", self.min_interval, "--max-interval", self.max_interval,
            "--chunk-size", self.chunk_size, "--concurrency", str(self.concurrency),
            "--retry-timeout", self.retry_timeout,
            "--inject-corruption", str(self.inject_corruption),
            "--protocol", self.protocol,
            *(["--journal-compact-at", self.journal_compact_at] if self.journal_compact_at else []),
        ]  # fmt: skip


@dataclass(slots=True)
class ChaosReport:
    seed: int
    cycles: int = 0
    cycles_requested: int = 0
    kills: dict[str, int] = field(default_factory=lambda: {"sender": 0, "server": 0})
    moments: dict[str, int] = field(default_factory=dict)
    files_expected: int = 0
    confirmed: int = 0
    lost: int = 0
    corrupted: int = 0
    duplicated: int = 0
    bytes_resent: int = 0
    retries: int = 0
    resumes: int = 0
    digest_mismatches: int = 0
    sender_failed_exits: int = 0
    offset_checks: int = 0
    proxy: dict[str, int] | None = None
    wall_time_s: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
