"""nginx as a reference: a WebDAV PUT sink on 127.0.0.1, started as a child of the bench.

Found on PATH (or in /usr/sbin, /usr/local/sbin); with `--install-nginx`, and as root,
installed with apt-get (nginx-light, else nginx). When it is missing or will not start,
the rows it feeds say why instead of a figure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from transfer.testing.children import Child
from transfer.testing.harness import HOST, Harness, free_port
from transfer.testing.polling import wait_until

START_DEADLINE = 30.0  # seconds for nginx to accept connections


@dataclass(slots=True)
class Nginx:
    child: Child
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


def start_nginx(harness: Harness, binary: str, work: Path) -> Nginx:
    """nginx on a free port, once it accepts connections; `NotReached` if it does not."""
    directory = work / "nginx"
    for sub in ("www", "body", "proxy", "fastcgi"):
        (directory / sub).mkdir(parents=True)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=directory, port=port))
    argv = [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    child = harness.spawn(argv, err=directory / "stderr.log")
    what = f"nginx on port {port}"
    wait_until(lambda: _accepts(port), what, deadline=START_DEADLINE, alive=child.alive)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return Nginx(child, f"http://{HOST}:{port}", directory / "www", version.stderr.strip())


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0
