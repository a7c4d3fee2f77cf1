"""The sink: a minimal aiohttp PUT server, the reference `transfer serve` is compared with.

    python scripts/benchlib/sink.py DIR [--fsync]

Prints its port on stdout, then writes each PUT body to DIR/sink.out with blocking
writes straight from the request's chunks; no hashing; one fsync at the end with
`--fsync`. It runs as a script of its own and imports nothing from `transfer`, so it
starts the same whichever `transfer` a `--transfer-src` run puts on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from aiohttp import web


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
    sock.listen()  # before the port is told: a client may connect before run_app is up
    app = web.Application()
    app.router.add_put("/{name}", put)
    print(sock.getsockname()[1], flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


def main() -> None:
    p = argparse.ArgumentParser(description="A minimal aiohttp PUT sink (the bench's R4/R5).")
    p.add_argument("directory", type=Path)
    p.add_argument("--fsync", action="store_true")
    args = p.parse_args()
    run_sink(args.directory, fsync=args.fsync)


if __name__ == "__main__":
    main()
