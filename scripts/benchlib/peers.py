"""Peer servers side by side with `transfer serve`, fed by the same client (issue 13).

`transfer send --protocol tus` uploads the S4 job (many small files, zero interval) and
the large file to each server in turn, in the same round:
- `@tus/server` with `@tus/file-store` under Node (tests/node-tus-server, installed by
  scripts/test.sh): it never fsyncs, so it is compared with `transfer serve` both with
  its durability on (`--fsync always`, the default) and off (`--fsync never`);
- `transfer serve` through its tus front-end (`/tus/`), fsync always and never;
- tusd, when a `tusd` binary is on PATH or named by `$TUSD` (see `tusd_note`).

Invariants: each peer starts on a fresh directory and port 0 and is stopped and removed
after its measurement; the peer's CPU comes from /proc before and after the send (the
same way as `transfer serve`'s); nothing is asserted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchlib.context import Bench, summary
from benchlib.measure import Finished, cpu_seconds, peak_rss, run_measured
from benchlib.plan import FULL, MB, GiB, MiB, Sample
from benchlib.rows import Figures, Row, label, num
from transfer.testing.harness import HOST, transfer_command
from transfer.testing.nodetus import announced_port, node_argv, node_missing
from transfer.testing.polling import wait_until

START_DEADLINE = 30.0  # seconds for a peer to announce its port
QUICK_MANY = 50  # P1 files with --quick


@dataclass(frozen=True, slots=True)
class Peer:
    endpoint: str  # the tus creation URL
    pid: int


def tusd_binary() -> str | None:
    return os.environ.get("TUSD") or shutil.which("tusd")


def tusd_note() -> str:
    """Why there is no tusd row figure on this machine (when there is no binary)."""
    return (
        "no tusd binary (set $TUSD): tusd 2.x needs Go >= 1.25 (its go.mod) and Debian 12 "
        "has Go 1.19; tusd 1.13 accepts Go 1.19, but its modules could not be downloaded "
        "(the Go module proxy is not reachable from this machine)"
    )


def node_tus(bench: Bench) -> contextlib.AbstractContextManager[Peer]:
    """`@tus/server` + `@tus/file-store` on 127.0.0.1, port 0 (announced on stdout)."""
    store = bench.path("node-store")
    return _running(
        bench, "node", node_argv(store), store,
        port_of=lambda out, _: announced_port(out), what="@tus/server's port",
    )  # fmt: skip


def tusd(bench: Bench) -> contextlib.AbstractContextManager[Peer]:
    """tusd with its file store, port 0 is not offered: a free port is picked first."""
    binary = tusd_binary()
    assert binary is not None
    store, port = bench.path("tusd-store"), _free_port()
    argv = [binary, "-host", HOST, "-port", str(port), "-upload-dir", str(store)]

    def listening(_: Path, err: Path) -> int | None:
        return port if "listening" in err.read_text().lower() else None

    return _running(bench, "tusd", argv, store, port_of=listening, what="tusd to listen")


@contextlib.contextmanager
def _running(
    bench: Bench,
    name: str,
    argv: list[str],
    store: Path,
    *,
    port_of: Callable[[Path, Path], int | None],
    what: str,
) -> Iterator[Peer]:
    """`argv` spawned, its output in `{name}.out` and `.err`; the peer once `port_of`
    (given those two files) names its port. Stopped, and its `store` removed, after."""
    out, err = bench.path(f"{name}.out"), bench.path(f"{name}.err")
    child = bench.harness.spawn(argv, err=err, out=out)
    try:
        port = wait_until(
            lambda: port_of(out, err), what, deadline=START_DEADLINE, alive=child.alive
        )
        yield Peer(f"http://{HOST}:{port}/files/", child.pid)
    finally:
        child.stop()
        shutil.rmtree(store, ignore_errors=True)


@contextlib.contextmanager
def ours(bench: Bench, *, fsync: bool) -> Iterator[Peer]:
    """`transfer serve` (its tus front-end at /tus/), fsync always or never."""
    with bench.server("--fsync", "always" if fsync else "never") as server:
        yield Peer(f"{server.url}/tus/", server.pid)


def _free_port() -> int:
    import socket  # tusd only

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


Start = Callable[[Bench], contextlib.AbstractContextManager[Peer]]


def _send(bench: Bench, peer: Peer, *args: str) -> tuple[Finished, Path, float]:
    """`transfer send --protocol tus` to `peer`; also the peer's CPU seconds meanwhile."""
    log, spool = bench.path("sender.log"), bench.path("spool")
    argv = transfer_command(
        "send", "--protocol", "tus", "--server", peer.endpoint, "--spool-dir", str(spool),
        "--log-file", str(log), "--progress", "never", *args,
    )  # fmt: skip
    before = cpu_seconds(peer.pid)
    done = run_measured(bench.harness, argv, err=bench.path("sender.stderr"))
    peer_cpu = cpu_seconds(peer.pid) - before
    shutil.rmtree(spool, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"transfer send --protocol tus exited {done.returncode}; see {log}")
    return done, log, peer_cpu


def many(start: Start) -> Callable[[Bench], Sample]:
    """The S4 job (zero interval) through tus to the server `start` runs."""

    def measure(bench: Bench) -> Sample:
        with start(bench) as peer:
            count = _many_count(bench)
            job = ("--count", str(count), "--min-interval", "0", "--max-interval", "0")
            _, log, peer_cpu = _send(bench, peer, *job, "--seed", "5")
        doc = summary(log)
        return {
            "files_per_s": doc["confirmed_this_run"] / doc["elapsed_s"],
            "p50_ms": float(doc["latency_p50_ms"]),
            "server_cpu_ms_per_file": 1000 * peer_cpu / count,
        }

    return measure


def _many_count(bench: Bench) -> int:
    """S4's count; `--quick` sends 50 (three servers' worth must fit the smoke test)."""
    return bench.plan.many_count if bench.plan is FULL else QUICK_MANY


def large(start: Start) -> Callable[[Bench], Sample]:
    """The large file (default chunking) through tus to the server `start` runs."""

    def measure(bench: Bench) -> Sample:
        size = bench.plan.large
        with start(bench) as peer:
            done, _, peer_cpu = _send(bench, peer, str(bench.source))
            server_hwm = peak_rss(peer.pid)
        return {
            "mbps": size / done.wall / MB,
            "server_cpu_per_gib": peer_cpu * GiB / size,
            "server_rss_mib": server_hwm / MiB,
        }

    return measure


def measurements() -> list[tuple[str, Callable[[Bench], Sample]]]:
    """The peer measurements this machine can run, in round order."""
    servers: list[tuple[str, Start]] = [
        ("ours", lambda b: ours(b, fsync=True)),
        ("ours-nofsync", lambda b: ours(b, fsync=False)),
    ]
    if node_missing() is None:
        servers.append(("node", node_tus))
    if tusd_binary() is not None:
        servers.append(("tusd", tusd))
    found: list[tuple[str, Callable[[Bench], Sample]]] = []
    for name, start in servers:
        found += [(f"p-many-{name}", many(start)), (f"p-large-{name}", large(start))]
    return found


PEERS = (
    ("ours", "transfer serve (tus), fsync always"),
    ("ours-nofsync", "transfer serve (tus), --fsync never"),
    ("node", "@tus/server + @tus/file-store (Node; never fsyncs)"),
    ("tusd", "tusd (file store; never fsyncs)"),
)


def peer_rows(f: Figures, bench: Bench) -> list[Row]:
    """P1 (many files) and P2 (the large file) per server; ratios against ours (fsync)."""
    rows: list[Row] = []
    for name, what in PEERS:
        rows.append(_many_row(f, bench, name, what))
    for name, what in PEERS:
        rows.append(_large_row(f, bench, name, what))
    return rows


def _skipped(name: str) -> str:
    if name == "node":
        return f"skipped: {node_missing()}" if node_missing() else ""
    if name == "tusd" and tusd_binary() is None:
        return f"skipped: {tusd_note()}"
    return ""


@dataclass(frozen=True, slots=True)
class _Shown:
    """What a P row shows: its id, what was sent, its scenarios' key prefix, the metric."""

    row: str
    sent: str
    prefix: str
    unit: str
    metric: str


def _many_row(f: Figures, bench: Bench, name: str, what: str) -> Row:
    key = f"p-many-{name}"
    cpu, p50 = f.median(key, "server_cpu_ms_per_file"), f.median(key, "p50_ms")
    shown = _Shown("P1", f"{_many_count(bench)} files", "p-many", "files/s", "files_per_s")
    note = f"server CPU {num(cpu)} ms/file; latency p50 {num(p50)} ms"
    return _peer_row(f, shown, name, what, note)


def _large_row(f: Figures, bench: Bench, name: str, what: str) -> Row:
    key = f"p-large-{name}"
    cpu, rss = f.median(key, "server_cpu_per_gib"), f.median(key, "server_rss_mib")
    shown = _Shown("P2", label(bench.plan.large), "p-large", "MB/s", "mbps")
    note = f"server CPU {num(cpu)} s/GiB, peak RSS {num(rss)} MiB"
    return _peer_row(f, shown, name, what, note)


def _peer_row(f: Figures, shown: _Shown, name: str, what: str, note: str) -> Row:
    """`name`'s figures, against ours (fsync) unless they are ours; skipped: why."""
    theirs = name != "ours"
    return Row(
        shown.row,
        f"{shown.sent} via `send --protocol tus` -> {what}",
        shown.unit,
        f.values(f"{shown.prefix}-{name}", shown.metric),
        reference="(ours, fsync)" if theirs else "",
        ref_median=f.median(f"{shown.prefix}-ours", shown.metric) if theirs else None,
        note=_skipped(name) or note,
    )
