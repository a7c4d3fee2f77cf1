"""The chaos run against a cluster: `transfer send` through nginx to N replicas, and
seeded SIGKILLs of the sender and of replicas (`scripts/chaos.py --cluster N`).

Each cycle a `random.Random(seed)` picks a side (`sender`, or `server`: one replica)
and a moment: after 1-4 more `chunk.sent` lines, or a delay of 0-1 s. A killed sender
is restarted at once on the same spool; a killed replica stays down until the next
cycle (so the cluster runs short of one meanwhile and nginx must route around it), and
is then restarted on its port. After the cycles every replica is back, the sender is
restarted until it exits 0, and the end state is checked:

- `transfer status --json`: exactly `count` files, every one confirmed with the server's
  digest equal to its own;
- `transfer verify` through nginx exits 0, and every file downloaded through nginx
  (`GET /files/ID`) is byte-identical to the sender's copy;
- no upload was published twice over all replicas' logs, restarts included;
- after each replica kill, the offsets the sender had seen acknowledged are still there
  (`HEAD` through nginx: another replica answers from PostgreSQL), and no chunk was sent
  from below an acknowledged offset (`chaos.offsets`).

The report is the chaos runner's `ChaosReport` ("server" kills are replica kills), its
counters (bytes re-sent, retries, resumes) from `transfer report` over every log.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from pathlib import Path

from transfer.core.events import Event
from transfer.testing.backing import Missing
from transfer.testing.chaos.config import POLL, ChaosConfig, ChaosError, ChaosReport
from transfer.testing.chaos.offsets import acknowledged, check_head, check_sent
from transfer.testing.chaos.run import sender_done
from transfer.testing.children import SenderProcess
from transfer.testing.cluster import Cluster, ClusterConfig
from transfer.testing.harness import run_transfer
from transfer.testing.logs import LogFile, LogLine, completions
from transfer.testing.polling import NotReached, poll

MOMENTS = ("after_chunk", "random")
HEAD_DEADLINE = 15.0  # seconds to get an answer other than nginx's 502 after a kill


class ClusterChaos:
    """One run's sender and kill cycles on a running `Cluster`."""

    def __init__(self, cluster: Cluster, config: ChaosConfig) -> None:
        self.cluster, self.config = cluster, config
        self.spool = config.workdir / "spool"
        self.rng = random.Random(config.seed)
        self.report = ChaosReport(seed=config.seed, cycles_requested=config.cycles)
        self.sender_log = cluster.harness.log_file("sender")
        self.sender: SenderProcess | None = None
        self.down: int | None = None  # the replica killed last cycle, still down
        self.moments: dict[str, int] = {}

    def start_sender(self) -> None:
        self.sender = self.cluster.harness.send(
            self.cluster.url, self.spool, *self.config.sender_args(), name="sender"
        )

    def cycles(self) -> None:
        end = time.monotonic() + self.config.deadline
        while self.report.cycles < self.config.cycles:
            if time.monotonic() > end:
                raise ChaosError(
                    f"only {self.report.cycles} kill cycles in {self.config.deadline} s"
                )
            if self._sender_done():
                raise ChaosError(
                    f"the sender finished after {self.report.cycles} of {self.config.cycles} "
                    "cycles: use a larger --count or --max-interval"
                )
            self.cycle()

    def cycle(self) -> None:
        side = self.rng.choice(self.config.sides)
        moment, after, delay = self.rng.choice(MOMENTS), self.rng.randint(1, 4), self.rng.random()
        if not self._wait(moment, after, delay):
            return  # the sender exited by itself: nothing to kill this time
        key = f"{side}:{moment}"
        self.moments[key] = self.moments.get(key, 0) + 1
        self.report.kills[side] += 1
        self.report.cycles += 1
        if side == "sender":
            assert self.sender is not None
            self.sender.kill()
            self.start_sender()
        else:
            self._kill_replica()

    def _kill_replica(self) -> None:
        self._revive()
        victim = self.rng.randrange(len(self.cluster.replicas))
        acked = acknowledged(self.sender_log.events())
        self.cluster.kill_replica(victim)
        self.down = victim
        for upload_id, offset in acked.items():
            self.report.offset_checks += 1
            if found := self._check_head(upload_id, offset):
                self.report.violations.append(found)

    def _check_head(self, upload_id: str, offset: int) -> str | None:
        """`check_head` through nginx, asked again while nginx answers 502: right after
        a kill every replica may be marked down for nginx's fail_timeout (2 s)."""
        found: list[str | None] = [None]

        def answered() -> bool:
            found[0] = check_head(self.cluster.url, upload_id, offset)
            return found[0] is None or "502" not in found[0]

        poll(answered, deadline=HEAD_DEADLINE, interval=0.1)
        return found[0]

    def _revive(self) -> None:
        if self.down is not None:
            self.cluster.restart_replica(self.down)
            self.down = None

    def _wait(self, moment: str, after: int, delay: float) -> bool:
        """Until the moment comes (True), or the sender exits first (False)."""
        sender = self.sender
        assert sender is not None
        sent = len(sender.named(Event.CHUNK_SENT))
        started = time.monotonic()

        def probe() -> bool:
            if moment == "random":
                return time.monotonic() - started >= delay
            return len(sender.named(Event.CHUNK_SENT)) >= sent + after

        came = poll(probe, deadline=self.config.cycle_deadline, alive=sender.alive, interval=POLL)
        return bool(came) or sender.alive()

    def _sender_done(self) -> bool:
        return sender_done(self.sender, self.report, self.start_sender)

    def finish(self) -> None:
        self._revive()
        if not poll(self._sender_done, deadline=self.config.finish_deadline, interval=0.05):
            raise ChaosError(f"the sender did not finish within {self.config.finish_deadline} s")


def run_cluster_chaos(cluster: Cluster, config: ChaosConfig) -> ChaosReport:
    """The whole run on `cluster` (left running); never raises for a violation."""
    started = time.monotonic()
    config.workdir.mkdir(parents=True, exist_ok=True)
    chaos = ClusterChaos(cluster, config)
    try:
        chaos.start_sender()
        chaos.cycles()
        chaos.finish()
    except (ChaosError, NotReached) as exc:
        chaos.report.violations.append(str(exc))
    finally:
        if chaos.sender is not None:
            chaos.sender.kill()
    chaos.report.moments = dict(sorted(chaos.moments.items()))
    try:
        check_cluster_invariants(chaos)
    except (ChaosError, OSError, KeyError, ValueError) as exc:
        chaos.report.violations.append(f"could not check the invariants: {exc!r}")
    chaos.report.wall_time_s = round(time.monotonic() - started, 3)
    return chaos.report


def run_on_new_cluster(config: ChaosConfig, replicas: int) -> ChaosReport:
    """`run_cluster_chaos` on a cluster of `replicas` started for it in the work dir
    (SeaweedFS, PostgreSQL, nginx: as scripts/cluster.sh), stopped after."""
    serve_args = ("--idle-timeout", config.idle_timeout)
    where = ClusterConfig(config.workdir / "cluster", replicas=replicas, serve_args=serve_args)
    try:
        with Cluster(where) as cluster:
            return run_cluster_chaos(cluster, config)
    except (Missing, NotReached) as exc:
        report = ChaosReport(seed=config.seed, cycles_requested=config.cycles)
        report.violations.append(f"the cluster did not start: {exc}")
        return report


def check_cluster_invariants(chaos: ClusterChaos) -> None:
    report, url = chaos.report, chaos.cluster.url
    report.files_expected = chaos.config.count
    entries = _transfer_json(
        ["status", "--spool-dir", str(chaos.spool), "--json"], chaos.config.workdir
    )
    confirmed = [
        e for e in entries if e["state"] == "confirmed" and e["server_digest"] == e["digest"]
    ]
    report.confirmed = len(confirmed)
    report.lost = max(chaos.config.count - len(confirmed), 0)
    if len(entries) != chaos.config.count or report.lost:
        report.violations.append(f"{len(confirmed)} of {len(entries)} journaled files confirmed")
    verified = run_transfer("verify", "--server", url, "--spool-dir", str(chaos.spool), timeout=300)
    if verified.returncode != 0:
        report.violations.append(
            f"transfer verify exited {verified.returncode}: {verified.stdout[-500:]}"
        )
    for entry in entries:
        _check_bytes(chaos, entry)
    _check_published_once(chaos, [str(e["id"]) for e in entries])
    report.violations.extend(check_sent(chaos.sender_log.events()))
    _count(chaos)


def _check_bytes(chaos: ClusterChaos, entry: LogLine) -> None:
    with urllib.request.urlopen(f"{chaos.cluster.url}/files/{entry['id']}", timeout=60) as got:
        stored: bytes = got.read()
    if stored != Path(str(entry["path"])).read_bytes():
        chaos.report.corrupted += 1
        chaos.report.violations.append(f"files/{entry['id']} differs from the sender's copy")


def _replica_logs(chaos: ClusterChaos) -> list[LogFile]:
    harness = chaos.cluster.harness
    return [harness.log_file(f"replica{i}") for i in range(len(chaos.cluster.replicas))]


def _count(chaos: ClusterChaos) -> None:
    """The report's counters, from `transfer report` over every log of the run."""
    logs = [str(log.path) for log in (chaos.sender_log, *_replica_logs(chaos))]
    summary = _transfer_json(["report", "--json", *logs], chaos.config.workdir)[0]
    report = chaos.report
    report.bytes_resent = int(summary["bytes_resent"])
    report.retries, report.resumes = int(summary["retries"]), int(summary["resumes"])
    report.digest_mismatches = int(summary["digest_mismatches"])


def _check_published_once(chaos: ClusterChaos, ids: list[str]) -> None:
    counts = completions(e for log in _replica_logs(chaos) for e in log.events())
    # Not `== 1`: a replica killed between its commit and its log line published a file
    # it never logged; the bytes are checked above either way.
    for upload_id in ids:
        if counts[upload_id] > 1:
            chaos.report.duplicated += 1
            chaos.report.violations.append(f"{upload_id} was published {counts[upload_id]} times")


def _transfer_json(args: list[str], cwd: Path) -> list[LogLine]:
    done = run_transfer(*args, cwd=cwd, timeout=120)
    if done.returncode != 0:
        raise ChaosError(f"transfer {args[0]} exited {done.returncode}: {done.stderr[-500:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
