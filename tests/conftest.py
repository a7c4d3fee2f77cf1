"""Shared fixtures: a real in-process server, digest headers, a real server subprocess.

- `make_served` / `served`: `make_app(FileStore(dir), ServerConfig(...))` behind
  pytest-aiohttp's `aiohttp_client`, listening on 127.0.0.1.
- `digest_field`: an RFC 9530 field computed independently of `transfer.integrity`, so a
  bug there cannot hide behind the same bug in the test.
- `serve_process`: `python -m transfer serve --port P --data-dir DIR` as a child process;
  its stderr is drained by a thread (so the server never blocks on a full pipe) and the
  URL is read from the JSON `server.started` line. Every child is gone at teardown.

Nothing here sleeps to synchronize: waits are polls or blocking reads with a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import pytest
import xxhash
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from transfer.common.http import without_hidden_retries
from transfer.core.events import Event
from transfer.server.app import ServerConfig, make_app
from transfer.store.filestore import FileStore

HOST = "127.0.0.1"


@pytest.fixture
def aiohttp_client(aiohttp_client: AiohttpClient) -> AiohttpClient:
    """pytest-aiohttp's client, with aiohttp's hidden PUT re-send off as in production."""

    async def make(*args: Any, **kwargs: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(*args, **kwargs)
        without_hidden_retries(client.session)
        return client

    return make


START_DEADLINE = 15.0  # seconds for a child server to announce itself
STOP_DEADLINE = 5.0

_HASHES: dict[str, Callable[[bytes], bytes]] = {
    "xxh3-128": lambda data: xxhash.xxh3_128(data).digest(),
    "sha-256": lambda data: hashlib.sha256(data).digest(),
    "md5": lambda data: hashlib.md5(data).digest(),
}


def raw_digest(data: bytes, algorithm: str = "xxh3-128") -> bytes:
    return _HASHES[algorithm](data)


def digest_field(data: bytes, *algorithms: str) -> str:
    """`Content-Digest` / `Repr-Digest` value for `data` (xxh3-128 when none named)."""
    names = algorithms or ("xxh3-128",)
    return ", ".join(
        f"{name}=:{base64.b64encode(raw_digest(data, name)).decode()}:" for name in names
    )


def content_range(start: int, data: bytes, total: int | None) -> str:
    """`bytes S-E/T` for `data` placed at `start` (`*` when `total` is None)."""
    end = start + len(data) - 1
    return f"bytes {start}-{end}/{'*' if total is None else total}"


# --- in-process server ---------------------------------------------------------------


@dataclass
class Served:
    """A running in-process server and where it keeps its files."""

    client: TestClient[web.Request, web.Application]
    data_dir: Path

    @property
    def port(self) -> int:
        port = self.client.port
        assert port is not None
        return port

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def published(self) -> list[str]:
        return sorted(p.name for p in self.files_dir.iterdir())


class MakeServed(Protocol):
    """Builds a server from `ServerConfig` keyword arguments."""

    def __call__(self, **config: Any) -> Awaitable[Served]: ...


@pytest.fixture
async def make_served(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeServed:
    """`await make_served(max_chunk=..., idle_timeout=...)`: a fresh server and data dir."""
    count = 0

    async def make(**config: Any) -> Served:
        nonlocal count
        count += 1
        data_dir = tmp_path / f"data{count}"
        store = FileStore(data_dir)
        store.open()
        app = make_app(store, ServerConfig(**config))
        client = await aiohttp_client(app, server_kwargs={"host": HOST})
        return Served(client, data_dir)

    return make


@pytest.fixture
async def served(make_served: MakeServed) -> Served:
    """A server with default limits except a short idle timeout."""
    return await make_served(idle_timeout=2.0)


# --- server subprocess ---------------------------------------------------------------


@dataclass
class ServerProcess:
    """One `transfer serve` child. `lines` holds every stderr line read so far."""

    proc: subprocess.Popen[str]
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, exactly like a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_DEADLINE)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server has not exited by the deadline."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.kill()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found


def _drain(stream: IO[str], lines: list[str], announced: queue.Queue[str | None]) -> None:
    with stream:
        for line in stream:
            lines.append(line)
            announced.put(line)
    announced.put(None)


def _await_started(server: ServerProcess, announced: queue.Queue[str | None]) -> str:
    deadline = time.monotonic() + START_DEADLINE
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = announced.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise RuntimeError(f"server exited ({server.proc.wait()}): {''.join(server.lines)}")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == Event.SERVER_STARTED:
            return str(event["url"])
    raise RuntimeError(f"server did not start in {START_DEADLINE} s: {''.join(server.lines)}")


def start_server(data_dir: Path, *, port: int = 0, extra: Sequence[str] = ()) -> ServerProcess:
    command = [sys.executable, "-m", "transfer", "serve", "--host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data_dir), *extra]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = ServerProcess(proc, data_dir)
    announced: queue.Queue[str | None] = queue.Queue()
    threading.Thread(
        target=_drain, args=(proc.stderr, server.lines, announced), daemon=True
    ).start()
    try:
        server.url = _await_started(server, announced)
    except BaseException:
        server.kill()
        raise
    return server


class StartServer(Protocol):
    def __call__(
        self, data_dir: Path, *, port: int = 0, extra: Sequence[str] = ()
    ) -> ServerProcess: ...


@pytest.fixture
def serve_process() -> Iterator[StartServer]:
    """`serve_process(data_dir, port=0, extra=[...])` starts a child; all end at teardown."""
    started: list[ServerProcess] = []

    def start(data_dir: Path, *, port: int = 0, extra: Sequence[str] = ()) -> ServerProcess:
        server = start_server(data_dir, port=port, extra=extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    """`data` as a streamed (chunked-encoding) request body."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
