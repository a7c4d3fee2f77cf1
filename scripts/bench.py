"""Benchmark `transfer` against references measured in the same run (issue 5).

    python scripts/bench.py [--quick] [--repeat N] [--out FILE] [--install-nginx]

Every scenario runs on loopback (127.0.0.1) with real `transfer serve` / `transfer send`
processes. The repeats are interleaved: each round runs every reference and every
scenario once, so a slow spell of the (virtual) disk or a busy neighbour hits references
and scenarios alike; the table shows medians of the rounds and ratios of medians.

References: `dd` with and without `conv=fsync`; in-process xxh3-128; a minimal aiohttp
PUT sink fed by `curl -T` (with and without one fsync at the end); nginx WebDAV PUT fed
by `curl -T` (with and without a `sync` inside the timing) when nginx is installed.

Scenarios (issue 5's targets): S1 one large file with fsync, by chunk size; S2 the same
with `--fsync never`; S3 CPU per GiB and the hashing share; S4 many small files and the
brief's schedule; S5 peak RSS; S6 bytes re-sent after a `kill -9` of the sender.

Invariants:
- `os.sync()` runs before every timed run, so no run pays for its predecessor's writeback.
- Every child is started through `Children`, which SIGTERMs and then SIGKILLs (by pid or
  by the child's own process group) whatever is still running when the script ends.
- Nothing is asserted: figures and targets are reported, never enforced.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import xxhash
from aiohttp import web

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1e6
TRANSFER = (sys.executable, "-m", "transfer")
CLK_TCK = os.sysconf("SC_CLK_TCK")
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
)


# --- children ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finished:
    """A child that ran to its end: exit status, wall time and its own rusage."""

    returncode: int
    wall: float
    cpu: float
    maxrss: int  # bytes: the last VmHWM seen before it exited


@dataclass(slots=True)
class Children:
    """Every process this script started; `close` leaves none running."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] | None = None  # None: this process's environment
    # Children run in the work dir: `python -m` puts the cwd first on sys.path, and the
    # cwd must not decide which `transfer` is measured.
    cwd: Path | None = None

    def spawn(
        self, argv: Sequence[str], *, stderr: Path, stdout: int | Path = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        out: Any = stdout.open("wb") if isinstance(stdout, Path) else stdout
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        if isinstance(stdout, Path):
            out.close()
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, stderr: Path, stdout: int | Path) -> Finished:
        """Run `argv` to its end; CPU and peak RSS come from wait4's rusage."""
        started = time.perf_counter()
        proc = self.spawn(argv, stderr=stderr, stdout=stdout)
        return self.reap(proc, started)

    def reap(self, proc: subprocess.Popen[bytes], started: float) -> Finished:
        """Wait for `proc`, sampling its VmHWM every RSS_POLL seconds until it exits.

        wait4's ru_maxrss is no use here: exec folds the forking parent's (this script's)
        high-water mark into the child's, so every child would "peak" at our size.
        """
        hwm = 0
        deadline = time.monotonic() + RUN_DEADLINE
        while not _wait_exit(proc.pid, RSS_POLL):
            hwm = max(hwm, peak_rss(proc.pid, missing_ok=True))
            if time.monotonic() > deadline:
                self.stop(proc)
                raise RuntimeError(f"{proc.args!r} ran longer than {RUN_DEADLINE} s")
        wall = time.perf_counter() - started
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Finished(proc.returncode, wall, usage.ru_utime + usage.ru_stime, hwm)

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """`sig`, then SIGKILL to the child's process group after STOP_GRACE seconds."""
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        self.procs.clear()


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


# --- logs ----------------------------------------------------------------------------


def events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Complete JSON lines of a structlog file, optionally only one event."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        with contextlib.suppress(json.JSONDecodeError):
            doc = json.loads(line)
            if isinstance(doc, dict) and (name is None or doc.get("event") == name):
                found.append(doc)
    return found


def wait_for(
    probe: Callable[[], Any], what: str, proc: subprocess.Popen[bytes], deadline: float = 30.0
) -> Any:
    """Poll `probe` (5 ms apart) until truthy; fail if `proc` exits or time runs out."""
    end = time.monotonic() + deadline
    while not (value := probe()):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return value


def summary(log: Path) -> dict[str, Any]:
    found = events(log, "send.summary")
    if not found:
        raise RuntimeError(f"no send.summary in {log}")
    return found[-1]


# --- the bench -----------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@dataclass(slots=True)
class Bench:
    plan: Plan
    work: Path
    children: Children
    source: Path
    source_digest: str  # RFC 9530 xxh3-128 field value of `source`
    many_dir: Path
    curl: str | None
    nginx: Nginx | None = None
    nginx_note: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    runs: int = 0

    def path(self, name: str) -> Path:
        self.runs += 1
        return self.work / f"{self.runs:04d}-{name}"

    @contextlib.contextmanager
    def server(self, *extra: str) -> Iterator[Server]:
        data, log = self.path("data"), self.path("server.log")
        argv = [*TRANSFER, "serve", "--port", "0", "--data-dir", str(data), "--log-file", str(log)]
        stderr = self.path("server.stderr")
        proc = self.children.spawn([*argv, *extra], stderr=stderr)
        try:
            try:
                started = wait_for(lambda: events(log, "server.started"), "server.started", proc)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{stderr.read_text()[-2000:]}") from exc
            yield Server(proc, started[0]["url"], log)
        finally:
            self.children.stop(proc)
            shutil.rmtree(data, ignore_errors=True)

    def send(self, server: Server, *args: str) -> tuple[Finished, Path]:
        log = self.path("sender.log")
        argv = [*TRANSFER, "send", "--server", server.url, "--log-file", str(log), *args]
        done = self.children.run(
            [*argv, "--progress", "never"],
            stderr=self.path("sender.stderr"),
            stdout=self.path("sender.stdout"),
        )
        if done.returncode != 0:
            raise RuntimeError(f"transfer send exited {done.returncode}; see {log}")
        return done, log


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


# --- references ----------------------------------------------------------------------


def ref_dd(bench: Bench, *, fsync: bool) -> Sample:
    out = bench.path("dd.out")
    argv = ["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={bench.plan.large // MiB}"]
    done = bench.children.run(
        [*argv, *(["conv=fsync"] if fsync else [])],
        stderr=bench.path("dd.stderr"),
        stdout=subprocess.DEVNULL,
    )
    out.unlink()
    if done.returncode:
        raise RuntimeError(f"dd exited {done.returncode}")
    return {"mbps": bench.plan.large / done.wall / MB}


def ref_hash(bench: Bench) -> Sample:
    data = os.urandom(bench.plan.hash_buffer)
    best = min(_timed(lambda: xxhash.xxh3_128(data).digest()) for _ in range(3))
    return {"mbps": len(data) / best / MB}


def ref_startup(bench: Bench) -> Sample:
    """`transfer --help`: what every `transfer send` pays before its first byte."""
    done = bench.children.run(
        [*TRANSFER, "--help"], stderr=bench.path("help.stderr"), stdout=subprocess.DEVNULL
    )
    return {"wall": done.wall, "cpu": done.cpu}


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def curl_put(
    bench: Bench, url: str, *headers: str, then: Callable[[], None] | None = None
) -> float:
    """Wall seconds of `curl -T source url` (plus `then`, e.g. a sync)."""
    assert bench.curl is not None
    argv = [bench.curl, "-sS", "-f", "-o", "/dev/null", "-H", "Expect:", "-T", str(bench.source)]
    for header in headers:
        argv += ["-H", header]
    started = time.perf_counter()
    done = bench.children.run(
        [*argv, url], stderr=bench.path("curl.stderr"), stdout=subprocess.DEVNULL
    )
    if then is not None:
        then()
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"curl exited {done.returncode} for {url}")
    return wall


def ref_sink(bench: Bench, *, fsync: bool) -> Sample:
    directory = bench.path("sink")
    directory.mkdir()
    argv = [sys.executable, __file__, "--sink", str(directory), *(["--sink-fsync"] * fsync)]
    port_file = bench.path("sink.port")
    proc = bench.children.spawn(argv, stderr=bench.path("sink.stderr"), stdout=port_file)
    try:
        port = wait_for(lambda: port_file.read_text().strip(), "the sink's port", proc)
        before = cpu_seconds(proc.pid)
        wall = curl_put(bench, f"http://127.0.0.1:{port}/sink")
        cpu = cpu_seconds(proc.pid) - before
    finally:
        bench.children.stop(proc)
        shutil.rmtree(directory, ignore_errors=True)
    return {"mbps": bench.plan.large / wall / MB, "cpu_per_gib": cpu * GiB / bench.plan.large}


def ref_nginx(bench: Bench, *, sync: bool) -> Sample:
    nginx = bench.nginx
    assert nginx is not None
    target = nginx.root / "upload.bin"
    wall = curl_put(bench, f"{nginx.url}/upload.bin", then=os.sync if sync else None)
    target.unlink()
    return {"mbps": bench.plan.large / wall / MB}


def diag_curl_transfer(bench: Bench, *, fsync: bool) -> Sample:
    """`transfer serve` fed the whole file as one curl PUT: the server without our client.

    The upload is created first (`POST` with the file's xxh3 `Repr-Digest`, untimed), as
    `transfer send` does, so the server keeps only the xxh3 running digest; a bare PUT
    would also compute MD5 for GCS clients.
    """
    extra = ["--max-chunk", str(bench.plan.large), "--fsync", "always" if fsync else "never"]
    with bench.server(*extra) as server:
        upload_id = f"curl-{bench.runs}"
        _create(server.url, upload_id, bench.plan.large, bench.source_digest)
        before = cpu_seconds(server.proc.pid)
        wall = curl_put(bench, f"{server.url}/uploads/{upload_id}")
        cpu = cpu_seconds(server.proc.pid) - before
        hwm = peak_rss(server.proc.pid)
    return {
        "mbps": bench.plan.large / wall / MB,
        "cpu_per_gib": cpu * GiB / bench.plan.large,
        "server_rss_mib": hwm / MiB,
    }


def _create(url: str, upload_id: str, size: int, digest: str) -> None:
    body = json.dumps({"id": upload_id, "size": size}).encode()
    request = urllib.request.Request(
        f"{url}/uploads",
        data=body,
        headers={"Content-Type": "application/json", "Repr-Digest": digest},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


# --- nginx ---------------------------------------------------------------------------


@dataclass(slots=True)
class Nginx:
    proc: subprocess.Popen[bytes]
    url: str
    root: Path
    version: str


NGINX_CONF = """\
daemon off;
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
"""


def find_nginx(install: bool) -> tuple[str | None, str]:
    """The nginx binary, installing it with apt-get if asked and allowed; or why not."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found:
        return found, ""
    if not install:
        return None, "nginx is not installed (--install-nginx, as root, installs it)"
    if os.geteuid() != 0:
        return None, "nginx is not installed and --install-nginx needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
    for package in ("nginx-light", "nginx"):
        result = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", package],
            env=env,
            capture_output=True,
            check=False,
        )
        if result.returncode == 0 and shutil.which("nginx"):
            return shutil.which("nginx"), f"installed {package} with apt-get"
    return None, "apt-get could not install nginx-light or nginx"


def start_nginx(children: Children, binary: str, work: Path) -> Nginx:
    directory = work / "nginx"
    for sub in ("www", "body", "proxy", "fastcgi"):
        (directory / sub).mkdir(parents=True)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=directory, port=port))
    argv = [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    proc = children.spawn(argv, stderr=directory / "stderr.log")
    wait_for(lambda: _accepts(port), f"nginx on port {port}", proc)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return Nginx(proc, f"http://127.0.0.1:{port}", directory / "www", version.stderr.strip())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- scenarios -----------------------------------------------------------------------


def send_large(bench: Bench, *, fsync: bool, chunk: int) -> Sample:
    """S1/S2/S3/S5: one large file through `transfer send PATH`."""
    size = bench.plan.large
    with bench.server("--fsync", "always" if fsync else "never") as server:
        before = cpu_seconds(server.proc.pid)
        spool = bench.path("spool")
        done, log = bench.send(
            server, "--spool-dir", str(spool), "--chunk-size", str(chunk), str(bench.source)
        )
        server_cpu = cpu_seconds(server.proc.pid) - before
        server_hwm = peak_rss(server.proc.pid)
    shutil.rmtree(spool)
    return {
        "mbps": size / done.wall / MB,
        "mbps_inproc": float(summary(log)["mb_per_s"]),
        "server_cpu_per_gib": server_cpu * GiB / size,
        "sender_cpu_per_gib": done.cpu * GiB / size,
        "server_rss_mib": server_hwm / MiB,
        "sender_rss_mib": done.maxrss / MiB,
    }


def many_files(bench: Bench) -> Sample:
    """S4: `many_count` generated files with no interval, journal and fsync on."""
    with bench.server() as server:
        spool = bench.path("spool")
        done, log = bench.send(
            server,
            *("--spool-dir", str(spool), "--count", str(bench.plan.many_count)),
            *("--min-interval", "0", "--max-interval", "0", "--seed", "5"),
        )
    shutil.rmtree(spool)
    doc = summary(log)
    return {
        "files_per_s": doc["confirmed_this_run"] / doc["elapsed_s"],
        "files_per_s_wall": doc["confirmed_this_run"] / done.wall,
        "p50_ms": float(doc["latency_p50_ms"]),
        "p99_ms": float(doc["latency_p99_ms"]),
    }


def schedule(bench: Bench) -> Sample:
    """S4: the brief's schedule (intervals 1 ms to 1 s); latency generated -> confirmed."""
    interval = bench.plan.schedule_max_interval
    with bench.server() as server:
        spool = bench.path("spool")
        _, log = bench.send(
            server,
            *("--spool-dir", str(spool), "--count", str(bench.plan.schedule_count)),
            *(("--max-interval", interval) if interval else ()),
        )
    shutil.rmtree(spool)
    doc = summary(log)
    return {"p50_ms": float(doc["latency_p50_ms"]), "p99_ms": float(doc["latency_p99_ms"])}


def concurrent(bench: Bench) -> Sample:
    """S5: `concurrent_files` uploads at once; peak RSS of both sides."""
    plan = bench.plan
    with bench.server() as server:
        spool = bench.path("spool")
        done, _ = bench.send(
            server,
            *("--spool-dir", str(spool), "--concurrency", str(plan.concurrent_files)),
            *("--chunk-size", str(plan.concurrent_chunk), str(bench.many_dir)),
        )
        server_hwm = peak_rss(server.proc.pid)
    shutil.rmtree(spool)
    total = plan.concurrent_files * plan.concurrent_size
    return {
        "server_rss_mib": server_hwm / MiB,
        "sender_rss_mib": done.maxrss / MiB,
        "mbps": total / done.wall / MB,
    }


def resume(bench: Bench) -> Sample:
    """S6: SIGKILL the sender once the server holds ~30% of the file, then rerun it."""
    plan = bench.plan
    source = bench.path("resume.bin")
    make_source(source, plan.resume_size)
    os.sync()
    with bench.server() as server:
        spool = bench.path("spool")
        args = ["--spool-dir", str(spool), "--chunk-size", str(plan.resume_chunk), str(source)]
        first = bench.path("sender.log")
        argv = [*TRANSFER, "send", "--server", server.url, "--log-file", str(first), *args]
        proc = bench.children.spawn([*argv, "--progress", "never"], stderr=bench.path("stderr"))
        killed = _kill_after(bench, proc, server.log, plan.resume_size * 3 // 10)
        _, second = bench.send(server, *args)
        written = sum(int(e.get("bytes", 0)) for e in events(server.log, "request"))
    report = _report(bench, first, second)
    shutil.rmtree(spool)
    source.unlink()
    return _resume_figures(plan, report, (first, second), killed=killed, written=written)


def _kill_after(bench: Bench, proc: subprocess.Popen[bytes], log: Path, threshold: int) -> float:
    """SIGKILL `proc` once the server logged `threshold` bytes; returns the bytes then."""

    def received() -> int:
        return sum(int(e.get("bytes", 0)) for e in events(log, "request"))

    with contextlib.suppress(RuntimeError):  # the sender may finish first: no kill then
        wait_for(lambda: received() >= threshold, "the server to receive bytes", proc, 300)
        time.sleep(KILL_DELAY)  # into the next chunk's body, not right after an ack
    at = received()
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return float(at)


def _report(bench: Bench, *logs: Path) -> dict[str, Any]:
    result = subprocess.run(
        [*TRANSFER, "report", "--json", *map(str, logs)],
        cwd=bench.work,
        env=bench.children.env,
        capture_output=True,
        text=True,
        check=True,
    )
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _resume_figures(
    plan: Plan, report: dict[str, Any], logs: tuple[Path, Path], *, killed: float, written: int
) -> Sample:
    first, second = logs
    acked = sum(int(e["bytes"]) for e in events(first, "chunk.sent"))
    resumed = events(second, "upload.resumed")
    offset = int(resumed[0]["offset"]) if resumed else 0
    return {
        "bytes_resent": float(report["bytes_resent"]),
        "chunks_resent": report["bytes_resent"] / plan.resume_chunk,
        "killed_at_mib": killed / MiB,
        "unacked_kept_mib": (offset - acked) / MiB,  # the server had it; run 1 never heard
        "server_rewritten": float(written - plan.resume_size),
        "confirmed": float(report["confirmed"]),
    }


# --- rows ----------------------------------------------------------------------------

Op = Literal["<=", ">="]


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    on: Literal["value", "ratio"]
    op: Op
    limit: float

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None:
            return None
        return subject <= self.limit if self.op == "<=" else subject >= self.limit


@dataclass(frozen=True, slots=True)
class Row:
    rid: str
    what: str
    unit: str
    values: tuple[float, ...]
    reference: str = ""
    ref_median: float | None = None
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ratio(self) -> float | None:
        if self.median is None or not self.ref_median:
            return None
        return self.median / self.ref_median

    def cells(self) -> list[str]:
        met = self.target.met(self.median, self.ratio) if self.target else None
        runs = " / ".join(_num(v) for v in self.values) or "skipped"
        ratio = f"{self.ratio:.2f}" if self.ratio is not None else ""
        verdict = {True: "**met**", False: "**missed**", None: ""}[met]
        return [
            self.rid,
            self.what,
            _num(self.median) if self.median is not None else "n/a",
            self.unit,
            runs,
            f"{ratio} {self.reference}".strip(),
            self.target.text if self.target else "",
            verdict,
            self.note,
        ]


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


HEADER = ["id", "what", "median", "unit", "runs", "ratio (vs)", "target", "met", "notes"]


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def label(size: int) -> str:
    if size >= GiB and size % GiB == 0:
        return f"{size // GiB}GiB"
    return f"{size // MiB}MiB" if size % MiB == 0 else f"{size // KiB}KiB"


# --- the run -------------------------------------------------------------------------

Measure = Callable[[Bench], Sample]


def measurements(bench: Bench) -> list[tuple[str, Measure]]:
    """Every timed thing, in the order each round runs them."""
    found: list[tuple[str, Measure]] = [
        ("dd-fsync", lambda b: ref_dd(b, fsync=True)),
        ("dd-cache", lambda b: ref_dd(b, fsync=False)),
        ("xxh3", ref_hash),
        ("startup", ref_startup),
    ]
    if bench.curl:
        found += [
            ("sink", lambda b: ref_sink(b, fsync=False)),
            ("sink-fsync", lambda b: ref_sink(b, fsync=True)),
            ("curl-transfer-fsync", lambda b: diag_curl_transfer(b, fsync=True)),
            ("curl-transfer", lambda b: diag_curl_transfer(b, fsync=False)),
        ]
    if bench.curl and bench.nginx:
        found += [
            ("nginx", lambda b: ref_nginx(b, sync=False)),
            ("nginx-sync", lambda b: ref_nginx(b, sync=True)),
        ]
    for chunk in bench.plan.chunks:
        found.append((f"s1-{chunk}", _bind_large(fsync=True, chunk=chunk)))
        found.append((f"s2-{chunk}", _bind_large(fsync=False, chunk=chunk)))
    found += [
        ("s4-many", many_files),
        ("s4-schedule", schedule),
        ("s5-concurrent", concurrent),
        ("s6-resume", resume),
    ]
    return found


def _bind_large(*, fsync: bool, chunk: int) -> Measure:
    return lambda b: send_large(b, fsync=fsync, chunk=chunk)


def run_rounds(bench: Bench, repeat: int, only: set[str] | None) -> None:
    todo = [(k, m) for k, m in measurements(bench) if only is None or k in only]
    for round_no in range(1, repeat + 1):
        for key, measure in todo:
            os.sync()
            started = time.perf_counter()
            sample = measure(bench)
            bench.samples.setdefault(key, []).append(sample)
            shown = ", ".join(f"{k}={_num(v)}" for k, v in sample.items())
            took = time.perf_counter() - started
            print(f"[round {round_no}/{repeat}] {key}: {shown} ({took:.1f} s)", file=sys.stderr)


# --- building the table --------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """Sample lookups by measurement key and figure name."""

    samples: dict[str, list[Sample]]

    def values(self, key: str, name: str) -> tuple[float, ...]:
        return tuple(s[name] for s in self.samples.get(key, []) if name in s)

    def median(self, key: str, name: str) -> float | None:
        found = self.values(key, name)
        return statistics.median(found) if found else None


def reference_rows(f: Figures, bench: Bench) -> list[Row]:
    size = label(bench.plan.large)
    no_curl = "" if bench.curl else "skipped: no curl"
    nginx_note = bench.nginx.version if bench.nginx else f"skipped: {bench.nginx_note}"
    sink_cpu = f.median("sink", "cpu_per_gib")
    return [
        Row("R1", f"dd bs=1M {size} conv=fsync (disk)", "MB/s", f.values("dd-fsync", "mbps")),
        Row("R2", f"dd bs=1M {size}, page cache only", "MB/s", f.values("dd-cache", "mbps")),
        Row("R3", "xxh3-128 in-process, one thread", "MB/s", f.values("xxh3", "mbps")),
        Row(
            "R4",
            f"curl -T {size} -> minimal aiohttp sink, no fsync",
            "MB/s",
            f.values("sink", "mbps"),
            note=no_curl or f"sink CPU {_num(sink_cpu)} s/GiB",
        ),
        Row(
            "R5",
            f"curl -T {size} -> minimal aiohttp sink, one fsync at the end",
            "MB/s",
            f.values("sink-fsync", "mbps"),
            note=no_curl,
        ),
        Row(
            "R6",
            f"curl -T {size} -> nginx WebDAV PUT",
            "MB/s",
            f.values("nginx", "mbps"),
            note=nginx_note,
        ),
        Row(
            "R7",
            f"curl -T {size} -> nginx WebDAV PUT, then sync (timed)",
            "MB/s",
            f.values("nginx-sync", "mbps"),
            note=nginx_note,
        ),
        Row(
            "R8",
            "`transfer --help` (Python + imports: start-up of every transfer process)",
            "s",
            f.values("startup", "wall"),
            note=f"CPU {_num(f.median('startup', 'cpu'))} s",
        ),
    ]


def diagnostic_rows(f: Figures, bench: Bench) -> list[Row]:
    size = label(bench.plan.large)
    rows = []
    for rid, key, what, ref_key, ref_name in (
        ("D1", "curl-transfer-fsync", "fsync always", "sink-fsync", "R5"),
        ("D2", "curl-transfer", "--fsync never", "sink", "R4"),
    ):
        cpu = f.median(key, "cpu_per_gib")
        rss = f.median(key, "server_rss_mib")
        rows.append(
            Row(
                rid,
                f"curl -T {size} as one PUT -> transfer serve ({what}; no chunking, no sender)",
                "MB/s",
                f.values(key, "mbps"),
                reference=ref_name,
                ref_median=f.median(ref_key, "mbps"),
                note=f"server CPU {_num(cpu)} s/GiB, peak RSS {_num(rss)} MiB"
                if cpu is not None
                else "skipped: no curl",
            )
        )
    return rows


def large_rows(f: Figures, bench: Bench) -> list[Row]:
    size = label(bench.plan.large)
    dd = f.median("dd-fsync", "mbps")
    nginx, nginx_sync = f.median("nginx", "mbps"), f.median("nginx-sync", "mbps")
    rows: list[Row] = []
    for chunk in bench.plan.chunks:
        key = f"s1-{chunk}"
        rows.append(
            Row(
                "S1",
                f"send {size}, fsync always, chunk {label(chunk)}",
                "MB/s",
                f.values(key, "mbps"),
                reference="R1",
                ref_median=dd,
                target=Target(">= 0.8 x R1", "ratio", ">=", 0.8),
                note=_large_note(f, key, nginx_sync, "R7"),
            )
        )
    for chunk in bench.plan.chunks:
        key = f"s2-{chunk}"
        rows.append(
            Row(
                "S2",
                f"send {size}, --fsync never, chunk {label(chunk)}",
                "MB/s",
                f.values(key, "mbps"),
                reference="R6",
                ref_median=nginx,
                target=Target(">= 0.75 x R6", "ratio", ">=", 0.75),
                note=_large_note(f, key, None, ""),
            )
        )
    return rows


def _large_note(f: Figures, key: str, other: float | None, other_name: str) -> str:
    parts = [f"in-process {_num(f.median(key, 'mbps_inproc'))} MB/s"]
    mbps = f.median(key, "mbps")
    if other and mbps:
        verdict = "faster" if mbps > other else "slower"
        parts.append(f"{mbps / other:.2f} x {other_name} ({verdict}; target: faster)")
    elif other_name:
        parts.append(f"{other_name} not measured")
    return "; ".join(parts)


def cpu_rows(f: Figures, bench: Bench) -> list[Row]:
    size = bench.plan.large
    rows = []
    for chunk in bench.plan.chunks:
        key = f"s1-{chunk}"
        sender = f.median(key, "sender_cpu_per_gib")
        rows.append(
            Row(
                "S3",
                f"server CPU per GiB received, fsync always, chunk {label(chunk)}",
                "s/GiB",
                f.values(key, "server_cpu_per_gib"),
                target=Target("<= 1.3 s/GiB", "value", "<=", 1.3),
                note=f"sender CPU {_num(sender)} s/GiB",
            )
        )
    xxh3 = f.median("xxh3", "mbps")
    best = max(bench.plan.chunks, key=lambda c: f.median(f"s1-{c}", "mbps") or 0.0)
    wall_values = [size / (v * MB) for v in f.values(f"s1-{best}", "mbps")]
    if xxh3:
        one_pass = size / (xxh3 * MB)
        for name, passes in (
            ("server", SERVER_HASH_PASSES),
            ("end to end", SERVER_HASH_PASSES + SENDER_HASH_PASSES),
        ):
            rows.append(
                Row(
                    "S3",
                    f"hashing share of transfer time, {name} ({passes} xxh3 passes), "
                    f"chunk {label(best)}",
                    "%",
                    tuple(100 * passes * one_pass / w for w in wall_values),
                    target=Target("<= 5 %", "value", "<=", 5.0),
                    note=f"{passes} x {label(size)} at R3 speed = "
                    f"{passes * one_pass * 1000:.0f} ms",
                )
            )
    return rows


def small_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    interval = plan.schedule_max_interval or "1s"
    wall = f.median("s4-many", "files_per_s_wall")
    return [
        Row(
            "S4",
            f"{plan.many_count} files 1KiB-1MiB, zero interval, journal + fsync both sides",
            "files/s",
            f.values("s4-many", "files_per_s"),
            target=Target(">= 250 files/s", "value", ">=", 250.0),
            note=f"send.summary confirmed/elapsed; {_num(wall)} files/s incl. process start; "
            f"latency p50 {_num(f.median('s4-many', 'p50_ms'))} ms",
        ),
        Row(
            "S4",
            f"latency generated->confirmed p50, {plan.schedule_count} files, 1ms-{interval}",
            "ms",
            f.values("s4-schedule", "p50_ms"),
            target=Target("<= 10 ms", "value", "<=", 10.0),
        ),
        Row(
            "S4",
            f"latency generated->confirmed p99, {plan.schedule_count} files, 1ms-{interval}",
            "ms",
            f.values("s4-schedule", "p99_ms"),
            target=Target("<= 50 ms", "value", "<=", 50.0),
        ),
    ]


def memory_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    size = label(plan.large)
    worst = max(plan.chunks, key=lambda c: f.median(f"s1-{c}", "server_rss_mib") or 0.0)
    rows = [
        Row(
            "S5",
            f"server peak RSS, one {size} file (worst chunk size: {label(worst)})",
            "MiB",
            f.values(f"s1-{worst}", "server_rss_mib"),
            target=Target("<= 64 MiB", "value", "<=", 64.0),
            note=", ".join(
                f"{label(c)}: {_num(f.median(f's1-{c}', 'server_rss_mib'))}" for c in plan.chunks
            ),
        ),
        Row(
            "S5",
            f"server peak RSS, {plan.concurrent_files} uploads at once "
            f"({label(plan.concurrent_size)} files, chunk {label(plan.concurrent_chunk)})",
            "MiB",
            f.values("s5-concurrent", "server_rss_mib"),
            target=Target("<= 128 MiB", "value", "<=", 128.0),
            note=f"{_num(f.median('s5-concurrent', 'mbps'))} MB/s",
        ),
    ]
    for chunk in plan.chunks:
        budget = 64 + 4 * chunk / MiB
        rows.append(
            Row(
                "S5",
                f"sender peak RSS, one {size} file, chunk {label(chunk)}, concurrency 4",
                "MiB",
                f.values(f"s1-{chunk}", "sender_rss_mib"),
                target=Target(f"<= 64 MiB + 4 x chunk = {budget:.0f}", "value", "<=", budget),
            )
        )
    budget = 64 + plan.concurrent_files * plan.concurrent_chunk / MiB
    rows.append(
        Row(
            "S5",
            f"sender peak RSS, {plan.concurrent_files} uploads at once, "
            f"chunk {label(plan.concurrent_chunk)}",
            "MiB",
            f.values("s5-concurrent", "sender_rss_mib"),
            target=Target(
                f"<= 64 MiB + {plan.concurrent_files} x chunk = {budget:.0f}",
                "value",
                "<=",
                budget,
            ),
        )
    )
    return rows


def resume_rows(f: Figures, bench: Bench) -> list[Row]:
    plan = bench.plan
    key = "s6-resume"
    return [
        Row(
            "S6",
            f"bytes re-sent after kill -9 of the sender, {label(plan.resume_size)} file, "
            f"chunk {label(plan.resume_chunk)}",
            "chunks",
            f.values(key, "chunks_resent"),
            target=Target("<= 1 chunk (1 upload in flight)", "value", "<=", 1.0),
            note=f"killed at {_num(f.median(key, 'killed_at_mib'))} MiB received; server held "
            f"{_num(f.median(key, 'unacked_kept_mib'))} MiB the killed sender never saw "
            f"acknowledged; server wrote {_num(f.median(key, 'server_rewritten'))} bytes twice; "
            "bytes cut off mid-body at the kill are not in chunk.sent (at most 1 chunk)",
        )
    ]


def build_rows(bench: Bench) -> list[Row]:
    f = Figures(bench.samples)
    return [
        *reference_rows(f, bench),
        *diagnostic_rows(f, bench),
        *large_rows(f, bench),
        *cpu_rows(f, bench),
        *small_rows(f, bench),
        *memory_rows(f, bench),
        *resume_rows(f, bench),
    ]


# --- machine facts and output --------------------------------------------------------


def machine(work: Path, children: Children) -> dict[str, str]:
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
        "transfer under test": _package_under_test(children),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _package_under_test(children: Children) -> str:
    """Where `python -m transfer` imports from (and its COMMIT file, if it has one)."""
    found = subprocess.run(
        [sys.executable, "-c", "import transfer; print(transfer.__file__)"],
        capture_output=True,
        text=True,
        env=children.env,
        cwd=children.cwd,
        check=False,
    )
    package = Path(found.stdout.strip()).parent
    stamp = package.parent / "COMMIT"
    commit = f" (snapshot of {stamp.read_text().strip()})" if stamp.exists() else ""
    return f"{package}{commit}"


def _git_commit() -> str:
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", "transfer"],
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


# --- the sink (a reference server, run as a child of this script) --------------------


def run_sink(directory: Path, *, fsync: bool) -> None:
    """Blocking writes straight from the request's chunks; no hashing; fsync once."""

    async def put(request: web.Request) -> web.Response:
        fd = os.open(directory / "sink.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async for data in request.content.iter_any():
                os.write(fd, data)  # blocking on purpose: the page cache absorbs it
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return web.Response(status=201)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = web.Application()
    app.router.add_put("/{name}", put)
    print(sock.getsockname()[1], flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: every scenario in seconds")
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--out", type=Path, help="write the Markdown report here")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp"), help="the disk under test")
    p.add_argument("--install-nginx", action="store_true", help="apt-get install nginx (root)")
    p.add_argument("--keep", action="store_true", help="keep the work files and logs")
    p.add_argument(
        "--transfer-src",
        type=Path,
        help="benchmark the `transfer` package under this directory (e.g. a `git archive` "
        "snapshot) instead of the installed one",
    )
    p.add_argument("--only", help="comma-separated measurement keys (for debugging)")
    p.add_argument("--sink", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sink-fsync", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def _child_env(source: Path | None) -> dict[str, str] | None:
    if source is None:
        return None
    if not (source / "transfer" / "__init__.py").exists():
        raise SystemExit(f"--transfer-src {source}: no transfer/__init__.py there")
    path = os.pathsep.join(filter(None, [str(source.resolve()), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def prepare(args: argparse.Namespace, children: Children, work: Path) -> Bench:
    plan = QUICK if args.quick else FULL
    source = work / "source.bin"
    digest = make_source(source, plan.large)
    many = work / "concurrent"
    make_many(many, plan.concurrent_files, plan.concurrent_size)
    curl = shutil.which("curl") or ("/usr/bin/curl" if Path("/usr/bin/curl").exists() else None)
    bench = Bench(plan, work, children, source, digest, many, curl)
    binary, bench.nginx_note = find_nginx(args.install_nginx)
    if binary is not None:
        try:
            bench.nginx = start_nginx(children, binary, work)
        except RuntimeError as exc:
            bench.nginx_note = f"nginx did not start: {exc}"
    os.sync()
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sink is not None:
        run_sink(args.sink, fsync=args.sink_fsync)
        return 0
    # SIGTERM ends the run through `finally`, so every child is stopped and reaped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="transfer-bench-", dir=args.work_dir))
    children = Children(env=_child_env(args.transfer_src), cwd=work)
    facts = machine(work, children)
    try:
        bench = prepare(args, children, work)
        only = set(args.only.split(",")) if args.only else None
        run_rounds(bench, args.repeat, only)
    finally:
        children.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["nginx"] = bench.nginx.version if bench.nginx else bench.nginx_note
    command = " ".join(["python", "scripts/bench.py", *(argv or sys.argv[1:])])
    table = render_table(build_rows(bench))
    report = render(facts, table, command, _notes(bench))
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return 0


def _notes(bench: Bench) -> list[str]:
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


if __name__ == "__main__":
    sys.exit(main())
