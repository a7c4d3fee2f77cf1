"""Chaos runner: real `transfer serve` and `transfer send` processes, real SIGKILLs.

    python scripts/chaos.py --cycles 200 --seed 1            # the long run (docs/reliability.md)
    python scripts/chaos.py --cycles 20 --fault-rate 0.2     # with the fault proxy in between

Starts the server (first on `--port 0`, then always on the port it announced, so the
sender's `--server` URL stays valid) and the sender, each logging JSON lines into the work
directory (appended across restarts). Optionally a `FaultProxy` (in a thread) sits between
them. For each of `--cycles` cycles a `random.Random(seed)` picks a side and a moment, the
runner waits for that moment by polling logs and the server's `uploads/` directory (never
by sleeping), SIGKILLs the side and restarts it on the same directories. Moments:

    sender  generation      a `file.generated` line of this run
    sender  mid_chunk       a `.part` growing: a chunk being written (else after 1-4 chunk.sent)
    sender  before_confirm  the server logged `upload.completed` for a file the sender has
                            not logged as confirmed
    server  mid_chunk       as above (else after 1-4 PUTs with bytes in the access log)
    server  publish         a `.part` holding all its bytes, not yet published (else right
                            after an `upload.completed`)
    both    random          a seeded delay of 0-1 s after the process started

Then the sender is restarted until it exits 0 (within a deadline), the server gets SIGTERM,
and these invariants are checked; any failure is a violation and the exit status is 1:

- the journal (`transfer status --json`) holds exactly `--count` files, indices 0..count-1
  of one run, every one confirmed with the server's digest equal to its own;
- every journaled file is in `DATA_DIR/files/`, byte-identical to its spool copy; every
  name there is a journaled file (nothing partial or temporary); no `.part` is left for it;
- no upload id was completed twice (`transfer report --json` over both logs);
- an acknowledged offset never goes backwards: after every server restart each partial
  upload's `HEAD` offset is at least the highest offset the sender logged as acknowledged,
  and no chunk is ever sent from below an offset acknowledged earlier.

The last stdout line is one JSON object: cycles, kills per side, files expected,
confirmed, lost, corrupted, duplicated, bytes re-sent, wall time, violations. Everything
is bounded in time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer.core.events import Event
from transfer.core.units import parse_duration
from transfer.testing.faultproxy import Fault, FaultProxy, Plan, ProxyStats, random_plan

HOST = "127.0.0.1"
POLL = 0.002  # seconds between two looks at logs and the uploads directory
START_DEADLINE = 20.0  # for a child to announce itself
STOP_DEADLINE = 25.0  # a stalled body keeps aiohttp lingering up to 10 s after its 408
LogLine = dict[str, Any]
Probe = Callable[[], str | None]


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
    sides: tuple[str, ...] = ("sender", "server")
    cycle_deadline: float = 30.0  # longest wait for one kill moment
    finish_deadline: float = 180.0  # for the sender to finish after the last cycle
    deadline: float = 1800.0  # for the whole run's kill cycles


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


# --- logs -----------------------------------------------------------------------------


class LogTail:
    """A JSON-lines file other processes append to, read incrementally into `events`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[LogLine] = []
        self._offset = 0

    def refresh(self) -> list[LogLine]:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return self.events
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            event = _parse(line)
            if event is not None:
                self.events.append(event)
        return self.events

    def since(self, mark: int, name: str) -> list[LogLine]:
        return [e for e in self.refresh()[mark:] if e.get("event") == name]


def _parse(line: str) -> LogLine | None:
    """A log line as an object; a killed writer's torn line glued to the next is skipped
    up to the next line's start."""
    start = line.find("{")
    while start != -1:
        try:
            doc = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find("{", start + 1)
            continue
        return doc if isinstance(doc, dict) else None
    return None


# --- children ---------------------------------------------------------------------------


@dataclass(slots=True)
class Child:
    """One `transfer` process; stdout and stderr are appended to files in the work dir."""

    proc: subprocess.Popen[bytes]
    mark: int  # index of this run's first line in its LogTail
    started: float
    peer_mark: int = 0  # the other side's LogTail length when this one started

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_DEADLINE)

    def terminate(self) -> bool:
        """SIGTERM; True if it exited by itself within the deadline (else SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True


def _spawn(workdir: Path, name: str, args: Sequence[str], mark: int) -> Child:
    command = [sys.executable, "-m", "transfer", *args]
    with (workdir / f"{name}.out").open("ab") as out, (workdir / f"{name}.err").open("ab") as err:
        proc = subprocess.Popen(
            command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
    return Child(proc, mark, time.monotonic())


# --- the fault proxy, on its own event loop --------------------------------------------


class ProxyThread:
    """`FaultProxy(HOST, target_port, plan=plan)` served by a daemon thread."""

    def __init__(self, target_port: int, plan: Plan) -> None:
        self._target_port, self._plan = target_port, plan
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0
        self.stats = ProxyStats()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_DEADLINE) or self._error is not None:
            raise ChaosError(f"fault proxy did not start: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_DEADLINE)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); the thread just ends
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with FaultProxy(HOST, self._target_port, plan=self._plan) as proxy:
            self.port, self.stats = proxy.port, proxy.stats
            self._ready.set()
            await self._stop.wait()


# --- the server's uploads directory -----------------------------------------------------


class Uploads:
    """Watches `DATA_DIR/uploads/*.part` for bytes arriving and for complete, unpublished
    files: the server-side view of the kill moments."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "uploads"
        self._totals: dict[str, int] = {}
        self._sizes = self._parts()

    def _parts(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return sizes
        for entry in entries:
            if entry.name.endswith(".part"):
                try:
                    sizes[entry.name[:-5]] = entry.stat().st_size
                except FileNotFoundError:  # published while we looked
                    continue
        return sizes

    def _total(self, upload_id: str) -> int | None:
        if upload_id not in self._totals:
            try:
                doc = json.loads((self.dir / f"{upload_id}.json").read_bytes())
            except (OSError, json.JSONDecodeError):
                return None
            if not isinstance(doc.get("size"), int):
                return None
            self._totals[upload_id] = doc["size"]
        return self._totals[upload_id]

    def look(self) -> tuple[bool, bool]:
        """(a chunk body is arriving now, some upload holds all its bytes unpublished)."""
        before, self._sizes = self._sizes, self._parts()
        arriving = complete = False
        for upload_id, size in self._sizes.items():
            total = self._total(upload_id)
            if total is None or size == 0:
                continue
            if size == total:
                complete = True
            elif size > before.get(upload_id, size):  # a chunk is being written or synced
                arriving = True
        return arriving, complete


# --- one run ----------------------------------------------------------------------------

SENDER_MOMENTS = ("generation", "mid_chunk", "before_confirm", "random")
SERVER_MOMENTS = ("mid_chunk", "publish", "random")


class Run:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.work = config.workdir.resolve()
        self.data_dir, self.spool = self.work / "data", self.work / "spool"
        self.server_log = LogTail(self.work / "server.log")
        self.sender_log = LogTail(self.work / "sender.log")
        self.report = ChaosReport(seed=config.seed, cycles_requested=config.cycles)
        self.moments: Counter[str] = Counter()
        self.server: Child | None = None
        self.sender: Child | None = None
        self.proxy: ProxyThread | None = None
        self.port = 0
        self.uploads = Uploads(self.data_dir)

    # -- processes

    def start_server(self) -> None:
        """Start the server (on the port it first announced); retry a busy port briefly."""
        end = time.monotonic() + START_DEADLINE
        while True:
            mark = len(self.server_log.refresh())
            args = ["serve", "--host", HOST, "--port", str(self.port)]
            args += ["--data-dir", str(self.data_dir), "--idle-timeout", self.config.idle_timeout]
            args += ["--log-file", str(self.server_log.path)]
            child = _spawn(self.work, "server", args, mark)
            started = self._await(child, self.server_log, "server.started", end)
            if started is not None:
                self.server = child
                self.port = int(str(started["url"]).rsplit(":", 1)[1])
                return
            child.kill()
            if time.monotonic() > end:
                raise ChaosError(f"the server did not start on port {self.port}; see server.err")

    def _await(self, child: Child, log: LogTail, name: str, end: float) -> LogLine | None:
        while time.monotonic() < end:
            found = log.since(child.mark, name)
            if found:
                return found[0]
            if not child.alive():
                return None
            time.sleep(POLL)
        return None

    @property
    def server_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start_sender(self) -> None:
        c = self.config
        target = f"http://{HOST}:{self.proxy.port}" if self.proxy else self.server_url
        args = ["send", "--server", target, "--spool-dir", str(self.spool), "--seed", str(c.seed)]
        args += ["--count", str(c.count), "--min-size", c.min_size, "--max-size", c.max_size]
        args += ["--min-interval", c.min_interval, "--max-interval", c.max_interval]
        args += ["--chunk-size", c.chunk_size, "--concurrency", str(c.concurrency)]
        args += ["--retry-timeout", c.retry_timeout, "--progress", "never"]
        args += ["--inject-corruption", str(c.inject_corruption)]
        args += ["--log-file", str(self.sender_log.path)]
        self.sender = _spawn(self.work, "sender", args, len(self.sender_log.refresh()))
        self.sender.peer_mark = len(self.server_log.refresh())

    # -- cycles

    def cycles(self) -> None:
        end = time.monotonic() + self.config.deadline
        while self.report.cycles < self.config.cycles:
            if time.monotonic() > end:
                self.violation(
                    f"only {self.report.cycles} kill cycles within {self.config.deadline} s"
                )
                return
            if not self._sender_running():
                self.violation(
                    f"the sender finished all files after {self.report.cycles} of "
                    f"{self.config.cycles} cycles: use a larger --count or --max-interval"
                )
                return
            self.cycle()

    def _sender_running(self) -> bool:
        """True when the sender is running (restarted if it exited non-zero)."""
        assert self.sender is not None
        code = self.sender.proc.poll()
        if code is None:
            return True
        if code == 0:
            return False
        self.report.sender_failed_exits += 1
        self.start_sender()
        return True

    def cycle(self) -> None:
        side = self.rng.choice(self.config.sides)
        if side == "sender":
            moments = [m for m in SENDER_MOMENTS if m != "generation" or self._generating()]
        else:
            moments = list(SERVER_MOMENTS)
        moment = self.rng.choice(moments)
        delay = self.rng.uniform(0.0, 1.0)
        victim = self.sender if side == "sender" else self.server
        assert victim is not None
        label = self._wait(victim, self._probe(side, moment, victim, delay))
        if label is None:  # the sender finished or exited by itself: nothing to kill
            return
        if side == "server":
            acked = self.acknowledged()
        victim.kill()
        self.report.kills[side] += 1
        self.report.cycles += 1
        self.moments[f"{side}:{label}"] += 1
        if side == "server":
            self.start_server()
            self.check_offsets(acked)
        else:
            self.start_sender()

    def _generating(self) -> bool:
        generated = {
            e.get("file_id")
            for e in self.sender_log.refresh()
            if e.get("event") == Event.FILE_GENERATED
        }
        return len(generated) < self.config.count

    def _wait(self, victim: Child, probe: Probe) -> str | None:
        end = time.monotonic() + self.config.cycle_deadline
        assert self.sender is not None
        while time.monotonic() < end:
            label = probe()
            if label is not None:
                return label
            if not self.sender.alive() or not victim.alive():
                return None
            time.sleep(POLL)
        return "deadline"

    def _probe(self, side: str, moment: str, victim: Child, delay: float) -> Probe:
        if moment == "random":
            return lambda: "random" if time.monotonic() - victim.started >= delay else None
        if moment == "generation":
            return lambda: (
                "generation" if self.sender_log.since(victim.mark, "file.generated") else None
            )
        if moment == "before_confirm":
            return lambda: "before_confirm" if self._unconfirmed_completion(victim) else None
        if moment == "publish":
            return self._publish_probe(victim)
        return self._mid_chunk_probe(side, victim, self.rng.randint(1, 4))

    def _mid_chunk_probe(self, side: str, victim: Child, after: int) -> Probe:
        def probe() -> str | None:
            if self.uploads.look()[0]:
                return "mid_chunk"
            if side == "sender":
                fallback = len(self.sender_log.since(victim.mark, "chunk.sent"))
            else:
                requests = self.server_log.since(victim.mark, "request")
                fallback = sum(1 for e in requests if e.get("method") == "PUT" and e.get("bytes"))
            return "after_chunk" if fallback >= after else None

        return probe

    def _publish_probe(self, victim: Child) -> Probe:
        def probe() -> str | None:
            if self.uploads.look()[1]:
                return "publish"
            return (
                "after_publish" if self.server_log.since(victim.mark, "upload.completed") else None
            )

        return probe

    def _unconfirmed_completion(self, sender: Child) -> bool:
        """The server completed a file after this sender started, and it is not confirmed."""
        completed = {
            e.get("upload_id") for e in self.server_log.since(sender.peer_mark, "upload.completed")
        }
        confirmed = {e.get("file_id") for e in self.sender_log.since(0, "upload.confirmed")}
        return bool(completed - confirmed)

    # -- offsets

    def acknowledged(self) -> dict[str, int]:
        """Per unconfirmed upload, the highest offset the sender logged as acknowledged."""
        acked: dict[str, int] = {}
        done: set[str] = set()
        for event in self.sender_log.refresh():
            file_id = str(event.get("file_id"))
            if event.get("event") == Event.CHUNK_SENT:
                acked[file_id] = max(acked.get(file_id, 0), int(event.get("acknowledged", 0)))
            elif event.get("event") == Event.UPLOAD_MISMATCH:  # the server reset it to 0
                acked.pop(file_id, None)
            elif event.get("event") == Event.UPLOAD_CONFIRMED:
                done.add(file_id)
        return {k: v for k, v in acked.items() if k not in done}

    def check_offsets(self, acked: dict[str, int]) -> None:
        for upload_id, offset in acked.items():
            self.report.offset_checks += 1
            try:
                request = urllib.request.Request(
                    f"{self.server_url}/uploads/{upload_id}", method="HEAD"
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    headers = response.headers
            except (urllib.error.URLError, OSError) as exc:
                self.violation(f"HEAD {upload_id} after a server restart failed: {exc}")
                continue
            if headers.get("Upload-Complete") == "?1":
                continue
            now = int(headers.get("Upload-Offset", "-1"))
            if now < offset:
                self.violation(f"{upload_id}: offset {now} after a restart < acknowledged {offset}")

    def violation(self, text: str) -> None:
        self.report.violations.append(text)

    # -- the end

    def finish(self) -> None:
        """Restart the sender until it exits 0; then SIGTERM the server."""
        end = time.monotonic() + self.config.finish_deadline
        assert self.sender is not None
        while time.monotonic() < end:
            code = self.sender.proc.poll()
            if code == 0:
                break
            if code is not None:
                self.report.sender_failed_exits += 1
                self.start_sender()
            time.sleep(0.05)
        else:
            self.sender.kill()
            self.violation(f"the sender did not finish within {self.config.finish_deadline} s")
        assert self.server is not None
        if not self.server.terminate() or not self.server_log.since(
            self.server.mark, "server.stopped"
        ):
            self.violation("the server did not stop cleanly on SIGTERM")

    def close(self) -> None:
        for child in (self.sender, self.server):
            if child is not None:
                child.kill()
        if self.proxy is not None:
            self.proxy.stop()
            self.report.proxy = dataclasses.asdict(self.proxy.stats)


# --- invariants -------------------------------------------------------------------------


def _transfer_json(args: Sequence[str], cwd: Path) -> list[LogLine]:
    done = subprocess.run(
        [sys.executable, "-m", "transfer", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ChaosError(f"transfer {args[0]} exited {done.returncode}: {done.stderr[-500:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def check_invariants(run: Run) -> None:
    report, count = run.report, run.config.count
    report.files_expected = count
    entries = _transfer_json(["status", "--spool-dir", str(run.spool), "--json"], run.work)
    _check_journal(run, entries)
    _check_published(run, entries)
    summary = _transfer_json(
        ["report", "--json", str(run.server_log.path), str(run.sender_log.path)], run.work
    )[0]
    report.bytes_resent = int(summary["bytes_resent"])
    report.retries, report.resumes = int(summary["retries"]), int(summary["resumes"])
    report.digest_mismatches = int(summary["digest_mismatches"])
    if summary["completed_twice"]:
        report.duplicated += int(summary["completed_twice"])
        run.violation(f"{summary['completed_twice']} upload ids were completed twice on the server")
    _check_offsets_in_log(run)


def _check_journal(run: Run, entries: list[LogLine]) -> None:
    count = run.config.count
    ids = [str(e["id"]) for e in entries]
    runs = {i.rsplit("-", 1)[0] for i in ids}
    indices = sorted(int(i.rsplit("-", 1)[1]) for i in ids)
    if len(runs) > 1 or indices != list(range(count)):
        run.violation(
            f"journal holds {len(ids)} files of runs {sorted(runs)}, not indices 0..{count - 1}"
        )
    confirmed = [
        e for e in entries if e["state"] == "confirmed" and e["server_digest"] == e["digest"]
    ]
    run.report.confirmed = len(confirmed)
    for entry in entries:
        if entry not in confirmed:
            run.violation(f"{entry['id']} ended {entry['state']}: {entry['reason']}")
    if len(confirmed) != count:
        run.violation(f"{len(confirmed)} files confirmed, expected exactly {count}")


def _check_published(run: Run, entries: list[LogLine]) -> None:
    report = run.report
    files = run.data_dir / "files"
    published = {p.name: p for p in files.iterdir()} if files.is_dir() else {}
    journaled = {str(e["id"]): e for e in entries}
    for name, found in sorted(published.items()):
        if name not in journaled or not found.is_file():
            report.duplicated += 1
            run.violation(f"files/{name} is not a journaled file (partial, temporary or extra)")
    for file_id, entry in journaled.items():
        path = published.get(file_id)
        if path is None:
            report.lost += 1
            run.violation(f"{file_id} is not published on the server")
        elif path.read_bytes() != Path(str(entry["path"])).read_bytes():
            report.corrupted += 1
            run.violation(f"files/{file_id} differs from the sender's copy")
        if (run.data_dir / "uploads" / f"{file_id}.part").exists():
            run.violation(f"uploads/{file_id}.part is left beside a published file")
    report.lost += max(run.config.count - len(journaled), 0)


def _check_offsets_in_log(run: Run) -> None:
    """No chunk is ever sent from below an offset the server acknowledged earlier."""
    acked: dict[str, int] = {}
    for event in run.sender_log.refresh():
        file_id = str(event.get("file_id"))
        if event.get("event") == Event.UPLOAD_MISMATCH:
            acked.pop(file_id, None)
        elif event.get("event") == Event.CHUNK_SENT:
            start = int(event.get("offset", 0))
            if start < acked.get(file_id, 0):
                run.violation(
                    f"{file_id}: chunk sent from {start} after {acked[file_id]} was acknowledged"
                )
            acked[file_id] = max(acked.get(file_id, 0), int(event.get("acknowledged", 0)))


# --- entry points -----------------------------------------------------------------------


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run the whole chaos scenario in `config.workdir`; never raises for a violation."""
    started = time.monotonic()
    config.workdir.mkdir(parents=True, exist_ok=True)
    run = Run(config)
    try:
        run.start_server()
        if config.plan is not None:
            run.proxy = ProxyThread(run.port, config.plan)
            run.proxy.start()
        run.start_sender()
        run.cycles()
        run.finish()
    except ChaosError as exc:
        run.violation(str(exc))
    finally:
        run.close()
    run.report.moments = dict(sorted(run.moments.items()))
    try:
        check_invariants(run)
    except (ChaosError, OSError, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
        run.violation(f"could not check the invariants: {exc!r}")
    run.report.wall_time_s = round(time.monotonic() - started, 3)
    return run.report


def _plan(args: argparse.Namespace) -> Plan | None:
    if args.fault_rate <= 0 and not args.latency and not args.bandwidth:
        return None
    kinds = tuple(k for k in args.fault_kinds.split(",") if k)
    base = random_plan(
        args.seed, rate=args.fault_rate, max_offset=args.fault_max_offset, kinds=kinds
    )
    extra = {"latency": args.latency, "bandwidth": args.bandwidth}

    def plan(number: int) -> Fault:
        return dataclasses.replace(base(number), **extra)

    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Kill transfer's server and sender at random moments.")
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=None, help="files (default: 2 x cycles, >= 20)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temporary dir")
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    p.add_argument("--min-size", default="1KiB")
    p.add_argument("--max-size", default="1MiB")
    p.add_argument("--min-interval", default="1ms")
    p.add_argument("--max-interval", default="1s")
    p.add_argument("--chunk-size", default="256KiB")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--idle-timeout", default="5s", help="the server's body idle timeout")
    p.add_argument("--inject-corruption", type=float, default=0.0)
    p.add_argument("--sides", default="sender,server")
    p.add_argument("--fault-rate", type=float, default=0.0, help=">0 puts the fault proxy in")
    p.add_argument("--fault-kinds", default="cut,reset")
    p.add_argument("--fault-max-offset", type=int, default=1 << 20)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--bandwidth", type=int, default=None)
    p.add_argument("--deadline", type=float, default=1800.0, help="seconds for all cycles")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sides = tuple(args.sides.split(","))
    if not sides or not set(sides) <= {"sender", "server"}:
        parser.error("--sides takes sender, server or both, comma-separated")
    if args.cycles < 0:
        parser.error("--cycles must be >= 0")
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    config = ChaosConfig(
        workdir=workdir,
        seed=args.seed,
        cycles=args.cycles,
        count=args.count if args.count is not None else max(20, 2 * args.cycles),
        min_size=args.min_size,
        max_size=args.max_size,
        min_interval=args.min_interval,
        max_interval=args.max_interval,
        chunk_size=args.chunk_size,
        concurrency=args.concurrency,
        idle_timeout=args.idle_timeout,
        inject_corruption=args.inject_corruption,
        plan=_plan(args),
        sides=sides,
        deadline=args.deadline,
    )
    # Whatever is left after the cycles is generated at the sender's own pace.
    finish = 120.0 + config.count * parse_duration(config.max_interval)
    report = run_chaos(dataclasses.replace(config, finish_deadline=finish))
    if args.workdir is None and not args.keep and report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report.ok:
        print(f"work dir kept: {workdir}", file=sys.stderr)
    print(json.dumps(report.to_json()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
