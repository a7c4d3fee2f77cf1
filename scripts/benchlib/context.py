"""`Bench`: one benchmark run's inputs, its children and the samples it has taken.

Every timed `transfer` process is started through `bench.harness` (the one process
harness, children in their own session); `server()` and `send()` are the two ways a
scenario runs `transfer`, and `path()` names each file a run leaves in the work dir.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from benchlib.measure import Finished, run_measured
from benchlib.nginx import Nginx
from benchlib.plan import MiB, Plan, Sample
from transfer.core.events import Event
from transfer.testing.children import ServerProcess
from transfer.testing.harness import Harness, transfer_command
from transfer.testing.logs import LogFile, LogLine


@dataclass(slots=True)
class Bench:
    plan: Plan
    work: Path
    harness: Harness
    source: Path
    source_digest: str  # RFC 9530 xxh3-128 field value of `source`
    many_dir: Path
    curl: str | None
    nginx: Nginx | None = None
    nginx_note: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    runs: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it has no figure

    def path(self, name: str) -> Path:
        self.runs += 1
        return self.work / f"{self.runs:04d}-{name}"

    @contextlib.contextmanager
    def server(self, *extra: str) -> Iterator[ServerProcess]:
        """`transfer serve --port 0` on a fresh data dir; stopped and removed after."""
        data = self.path("data")
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, data, ignore_errors=True)
            server = self.harness.serve(data, extra=extra, name=self.path("server").name)
            cleanup.callback(server.stop)
            yield server

    def send(self, server: ServerProcess, *args: str) -> tuple[Finished, Path]:
        """`transfer send` to `server`, run to its end and measured; its log's path."""
        log = self.path("sender.log")
        argv = transfer_command("send", "--server", server.url, "--log-file", str(log), *args)
        done = run_measured(
            self.harness,
            [*argv, "--progress", "never"],
            err=self.path("sender.stderr"),
            out=self.path("sender.stdout"),
        )
        if done.returncode != 0:
            raise RuntimeError(f"transfer send exited {done.returncode}; see {log}")
        return done, log


def summary(log: Path) -> LogLine:
    found = LogFile(log).named(Event.SEND_SUMMARY)
    if not found:
        raise RuntimeError(f"no send.summary in {log}")
    return found[-1]


def make_source(path: Path, size: int) -> str:
    """Random bytes (a random 64 MiB block repeated); returns its Repr-Digest field."""
    block = os.urandom(min(size, 64 * MiB))
    hasher = xxhash.xxh3_128()
    with path.open("wb") as out:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            hasher.update(piece)
            left -= len(piece)
    return f"xxh3-128=:{base64.b64encode(hasher.digest()).decode()}:"


def make_many(directory: Path, count: int, size: int) -> None:
    directory.mkdir()
    block = os.urandom(size)
    for i in range(count):
        (directory / f"f{i:03d}.bin").write_bytes(i.to_bytes(4, "little") + block[4:])
