"""nginx as a child: found (or installed), configured in a directory of its own, started.

Shared by the cluster (`transfer.testing.cluster`: nginx in front of the replicas) and
the benchmarks (`scripts/benchlib/nginx.py`: nginx as a WebDAV reference). nginx comes
from Debian's `nginx-light` (scripts/test.sh installs it when run as root); it is looked
for on PATH and in /usr/sbin, /usr/local/sbin.

Invariants: nginx runs in the foreground (`daemon off`, so the harness owns and kills
it) with every path it writes (pid, error log, temp directories) inside its own
directory, never /var or /run; it listens on 127.0.0.1 only; `start_nginx` returns once
it accepts connections, or raises `NotReached`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from transfer.testing.children import Child
from transfer.testing.harness import HOST, Harness
from transfer.testing.polling import wait_until

START_DEADLINE = 30.0  # seconds for nginx to accept connections
PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")

# The lines every configuration starts with: foreground, one worker, and every path
# nginx would otherwise write under /var or /run moved into DIR. `user root;` only when
# run as root: workers would otherwise drop to nobody and lose access to DIR.
PREAMBLE = """\
daemon off;
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
"""

# Inside `http {}`: the temporary paths, so nothing is written outside DIR.
TEMP_PATHS = """\
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""


def nginx_binary() -> str | None:
    """The nginx binary on this machine, or None."""
    return shutil.which("nginx") or next((p for p in PLACES if Path(p).exists()), None)


def find_nginx(install: bool) -> tuple[str | None, str]:
    """The nginx binary, installing it with apt-get if asked and allowed; or why not."""
    found = nginx_binary()
    if found:
        return found, ""
    if not install:
        return None, "nginx is not installed (Debian: apt-get install nginx-light)"
    if os.geteuid() != 0:
        return None, "nginx is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
    for package in ("nginx-light", "nginx"):
        result = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", package],
            env=env,
            capture_output=True,
            check=False,
        )
        if result.returncode == 0 and (found := nginx_binary()):
            return found, f"installed {package} with apt-get"
    return None, "apt-get could not install nginx-light or nginx"


def preamble(directory: Path) -> str:
    """The top of a configuration whose every written path is inside `directory`."""
    user = "user root;" if os.geteuid() == 0 else ""
    return PREAMBLE.format(user=user, dir=directory)


def temp_paths(directory: Path) -> str:
    """The `http {}` lines putting nginx's temporary files inside `directory`."""
    return TEMP_PATHS.format(dir=directory)


def start_nginx(harness: Harness, binary: str, directory: Path, conf: str, port: int) -> Child:
    """nginx running `conf` (written to DIR/nginx.conf), once it accepts on `port`.

    Raises:
        NotReached: it exited or did not accept within `START_DEADLINE` (its error log
            is in the message).
    """
    for sub in TEMP_DIRS:
        (directory / sub).mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(conf)
    argv = [binary, "-p", str(directory), "-c", str(path), "-e", str(directory / "error.log")]
    child = harness.spawn(argv, err=directory / "stderr.log")
    wait_until(
        lambda: accepts(port),
        f"nginx on port {port}",
        deadline=START_DEADLINE,
        alive=child.alive,
        context=lambda: _tail(directory / "error.log") + _tail(directory / "stderr.log"),
    )
    return child


def version(binary: str) -> str:
    """`nginx -v`'s answer, e.g. "nginx version: nginx/1.22.1"."""
    found = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return found.stderr.strip()


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except FileNotFoundError:
        return ""
