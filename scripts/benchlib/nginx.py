"""nginx as a reference: a WebDAV PUT sink on 127.0.0.1, started as a child of the bench.

Finding, installing and running nginx is `transfer.testing.nginx` (shared with the
cluster). Found on PATH (or in /usr/sbin, /usr/local/sbin); with `--install-nginx`, and as root,
installed with apt-get (nginx-light, else nginx). When it is missing or will not start,
the rows it feeds say why instead of a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transfer.testing import nginx
from transfer.testing.children import Child
from transfer.testing.harness import HOST, Harness, free_port
from transfer.testing.nginx import find_nginx, preamble, temp_paths

__all__ = ["Nginx", "find_nginx", "start_nginx"]


@dataclass(slots=True)
class Nginx:
    child: Child
    url: str
    root: Path
    version: str


NGINX_CONF = """\
{preamble}
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp_paths}
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


def start_nginx(harness: Harness, binary: str, work: Path) -> Nginx:
    """nginx on a free port, once it accepts connections; `NotReached` if it does not."""
    directory = work / "nginx"
    (directory / "www").mkdir(parents=True)
    port = free_port()
    conf = NGINX_CONF.format(
        preamble=preamble(directory), temp_paths=temp_paths(directory), dir=directory, port=port
    )
    child = nginx.start_nginx(harness, binary, directory, conf, port)
    return Nginx(child, f"http://{HOST}:{port}", directory / "www", nginx.version(binary))
