"""Shared fixtures: a real in-process server, digest headers, a real server subprocess.

- `make_served` / `served`: `make_app(FileStore(dir), ServerConfig(...))` behind
  pytest-aiohttp's `aiohttp_client`, listening on 127.0.0.1.
- `digest_field`: an RFC 9530 field computed independently of `transfer.integrity`, so a
  bug there cannot hide behind the same bug in the test.
- `serve_process`: `python -m transfer serve --port P --data-dir DIR` as a child process,
  started by the one harness (`transfer.testing.harness`): its log, stdout and stderr go
  to files (so it never blocks on a full pipe) and the URL is read from the JSON
  `server.started` line. Every child is gone at teardown.
- `launch` / `server`: the same harness per test (tmp_path), and one `transfer serve` on
  tmp_path/data started by it.

Nothing here sleeps to synchronize: waits are polls or blocking reads with a deadline.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import xxhash
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from transfer.common.http import without_hidden_retries
from transfer.server.app import ServerConfig, make_app
from transfer.store.filestore import FileStore
from transfer.testing.harness import HOST, Harness, ServerProcess, free_port

__all__ = ["HOST", "ServerProcess", "free_port"]  # for the tests that import them from here
# The S3 and PostgreSQL session fixtures (tests/services.py), registered once for all.
pytest_plugins = ["services"]


@pytest.fixture
def aiohttp_client(aiohttp_client: AiohttpClient) -> AiohttpClient:
    """pytest-aiohttp's client, with aiohttp's hidden PUT re-send off as in production."""

    async def make(*args: Any, **kwargs: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(*args, **kwargs)
        without_hidden_retries(client.session)
        return client

    return make


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


class StartServer(Protocol):
    def __call__(
        self, data_dir: Path, *, port: int = 0, extra: Sequence[str] = ()
    ) -> ServerProcess: ...


@pytest.fixture
def serve_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """`serve_process(data_dir, port=0, extra=[...])` starts a child; all end at teardown."""
    with Harness(tmp_path_factory.mktemp("children")) as harness:
        yield harness.serve
        harness.close(gracefully=True)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Harness]:
    """The test's own harness: its children (`serve`, `send`, `spawn`) end at teardown."""
    with Harness(tmp_path) as harness:
        yield harness


@pytest.fixture
def server(launch: Harness, tmp_path: Path) -> ServerProcess:
    """`transfer serve` on tmp_path/data, a child of `launch`."""
    return launch.serve(tmp_path / "data")


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    """`data` as a streamed (chunked-encoding) request body."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
