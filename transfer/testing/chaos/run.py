"""One chaos run: the server and the sender as real processes, killed at chosen moments.

The server starts on `--port 0` and is then always restarted on the port it announced,
so the sender's `--server` URL stays valid; both log into the work directory, appended
across restarts (`server.log`, `sender.log`, and `.out`/`.err` beside them). Optionally a
`FaultProxy` (in a thread) sits between them.

Invariants: a cycle kills exactly one side at a moment `Moments` chose and restarts it
on the same directories; a sender that exits non-zero by itself is restarted and
counted (`sender_failed_exits`); every wait is a poll with a deadline; `close` leaves
no child running.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable

from transfer.core.events import Event
from transfer.testing.chaos.config import (
    HOST,
    POLL,
    START_DEADLINE,
    STOP_DEADLINE,
    ChaosConfig,
    ChaosError,
    ChaosReport,
)
from transfer.testing.chaos.moments import Moments, Probe
from transfer.testing.chaos.offsets import acknowledged, check_head
from transfer.testing.chaos.uploads import Uploads
from transfer.testing.children import SenderProcess, ServerProcess, TransferChild
from transfer.testing.faultproxy import Plan
from transfer.testing.harness import Harness
from transfer.testing.polling import NotReached, poll
from transfer.testing.proxythread import ProxyThread


def sender_done(
    sender: SenderProcess | None, report: ChaosReport, restart: Callable[[], None]
) -> bool:
    """True once `sender` has exited 0; one that exited otherwise is counted in `report`
    and restarted (`restart`), on the same spool."""
    assert sender is not None
    code = sender.proc.poll()
    if code is None or code == 0:
        return code == 0
    report.sender_failed_exits += 1
    restart()
    return False


class Run:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.work = config.workdir.resolve()
        self.data_dir, self.spool = self.work / "data", self.work / "spool"
        self.harness = Harness(
            self.work, cwd=self.work, start_deadline=START_DEADLINE, stop_deadline=STOP_DEADLINE
        )
        self.server_log = self.harness.log_file("server")
        self.sender_log = self.harness.log_file("sender")
        self.report = ChaosReport(seed=config.seed, cycles_requested=config.cycles)
        self.moments: Counter[str] = Counter()
        self.server: ServerProcess | None = None
        self.sender: SenderProcess | None = None
        self.peer_mark = 0  # the server log's length when the running sender started
        self.proxy: ProxyThread | None = None
        self.port = 0
        logs = (self.server_log, self.sender_log)
        rng = random.Random(config.seed)
        compacting = self.spool if config.journal_compact_at else None
        self.chooser = Moments(rng, config.count, logs, Uploads(self.data_dir), compacting)

    # -- processes

    @property
    def server_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start_server(self) -> None:
        """Start the server (on the port it first announced); retry a busy port briefly."""
        end = time.monotonic() + START_DEADLINE
        extra = ("--idle-timeout", self.config.idle_timeout)
        while (left := end - time.monotonic()) > 0:
            try:
                self.server = self.harness.serve(
                    self.data_dir, port=self.port, extra=extra, name="server", deadline=left
                )
            except NotReached:  # it exited (the port is still taken) or never announced
                continue
            self.port = self.server.port
            return
        raise ChaosError(f"the server did not start on port {self.port}; see server.err")

    def start_proxy(self, plan: Plan) -> None:
        self.proxy = ProxyThread(self.port, plan, deadline=START_DEADLINE)
        try:
            self.proxy.start()
        except RuntimeError as exc:
            raise ChaosError(str(exc)) from exc

    def start_sender(self) -> None:
        target = self.proxy.url if self.proxy else self.server_url
        args = self.config.sender_args()
        self.sender = self.harness.send(target, self.spool, *args, name="sender")
        self.peer_mark = self.server_log.count()

    # -- cycles

    def cycles(self) -> None:
        end = time.monotonic() + self.config.deadline
        while self.report.cycles < self.config.cycles:
            if time.monotonic() > end:
                self.violation(
                    f"only {self.report.cycles} kill cycles within {self.config.deadline} s"
                )
                return
            if self._sender_done():
                self.violation(
                    f"the sender finished all files after {self.report.cycles} of "
                    f"{self.config.cycles} cycles: use a larger --count or --max-interval"
                )
                return
            self.cycle()

    def cycle(self) -> None:
        side, moment, delay = self.chooser.choose(self.config.sides)
        victim = self.sender if side == "sender" else self.server
        assert victim is not None
        label = self._wait(victim, self.chooser.probe(side, moment, victim, delay, self.peer_mark))
        if label is None:  # the sender finished or exited by itself: nothing to kill
            return
        acked = acknowledged(self.sender_log.events()) if side == "server" else {}
        victim.kill()
        self.report.kills[side] += 1
        self.report.cycles += 1
        self.moments[f"{side}:{label}"] += 1
        if side == "server":
            self.start_server()
            self.check_offsets(acked)
        else:
            self.start_sender()

    def _sender_done(self) -> bool:
        return sender_done(self.sender, self.report, self.start_sender)

    def _wait(self, victim: TransferChild, probe: Probe) -> str | None:
        """The moment's label; None if a process exited first, "deadline" if it never came."""
        sender = self.sender
        assert sender is not None

        def running() -> bool:
            return sender.alive() and victim.alive()

        label = poll(probe, deadline=self.config.cycle_deadline, alive=running, interval=POLL)
        return "deadline" if label is None and running() else label

    def check_offsets(self, acked: dict[str, int]) -> None:
        for upload_id, offset in acked.items():
            self.report.offset_checks += 1
            found = check_head(self.server_url, upload_id, offset)
            if found is not None:
                self.violation(found)

    def violation(self, text: str) -> None:
        self.report.violations.append(text)

    # -- the end

    def finish(self) -> None:
        """Restart the sender until it exits 0; then SIGTERM the server."""
        deadline = self.config.finish_deadline
        if not poll(self._sender_done, deadline=deadline, interval=0.05):
            assert self.sender is not None
            self.sender.kill()
            self.violation(f"the sender did not finish within {deadline} s")
        assert self.server is not None
        if not self.server.stop() or not self.server.named(Event.SERVER_STOPPED):
            self.violation("the server did not stop cleanly on SIGTERM")

    def close(self) -> None:
        self.harness.close()
        if self.proxy is not None:
            self.proxy.stop()
            self.report.proxy = dataclasses.asdict(self.proxy.stats)
