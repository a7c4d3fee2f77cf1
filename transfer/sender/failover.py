"""Client-side fail-over: one `Client` over several servers (`send --server` given twice or more).

The servers are replicas over one shared store (docs/scaling.md): any of them answers for
any upload, so moving between them loses nothing but the chunks in flight (at most the
uploader's window, 2 chunks, of each file being sent).

Policy: *stick until failure*. Every request goes to the current server. When one finds
it unreachable (see `moves_on`), the failure is noted and the error goes on up as the
`TransientError` it is: the uploader's retry policy backs off as always (tenacity,
jittered exponential, `Retry-After` as a floor, `upload.retry` and `server.unreachable`
logged). The next request (the retry) goes to the next server in the order given
(wrapping round), `server.switched` is logged and counted, and that request asks the new
server where the upload stands (`query`, or `create` if it does not know it) before a
byte is sent, so the sender resumes from the offset *that* replica reports, never from
one the old one reported. A server that comes back is used again when the rotation reaches it
(the others failed); it is not preferred on its return, so a flapping replica cannot pull
senders back and forth, and nothing probes servers in the background.

Moves on (the server is unreachable or cannot serve):
- no connection (refused, no route, DNS failure, TLS handshake failure, connect
  timeout); a connection reset or closed mid-exchange; no answer within the session's
  read timeout;
- 502, 503, 504: a proxy in front could not reach its replica (after its own retries),
  or the replica refuses work (too many uploads, its store unreachable). Another
  replica may well serve; when the shared store itself is down every replica answers
  503 and the back-off (at least `Retry-After`) paces the round.
Stays (an answer about the upload, not the server): every other status, 500 and 507
included, a damaged chunk, a malformed answer; an untrusted certificate stays fatal
(`RemoteError`): a replica whose certificate we do not trust may be an impostor, and an
operator must see it rather than have it skipped.

Upload URLs (tus, IETF): a URL a server assigned is kept per file as it was given (and
journaled so); a request to server k uses it *rebased* onto k's origin (scheme, host,
port; same path and query). Replicas must therefore serve the same `--tus-path` and
`--ietf-path`, behind the same path prefix if a proxy adds one.

Invariants:
- Workers share one `Servers`: a switch happens only if the server that failed is still
  the current one (compare and switch), so N workers meeting one dead server move the
  sender once, not N times past the good ones.
- This module decides no retry: it only changes where the next request goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from transfer.core.errors import TransientError
from transfer.core.events import Event
from transfer.sender.client import Announce, Body, Client, Progress

log = structlog.get_logger("transfer.failover")
SWITCH_STATUSES = frozenset({502, 503, 504})
T = TypeVar("T")


def moves_on(error: BaseException) -> bool:
    """Whether `error` says the server it came from is unreachable (module docstring)."""
    if not isinstance(error, TransientError):
        return False
    if error.status is not None:
        return error.status in SWITCH_STATUSES
    cause = error.__cause__
    return isinstance(
        cause, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError
    )


def rebase(url: str, server: str) -> str:
    """`url` with the scheme, host and port of `server` (path, query kept)."""
    parts, origin = urlsplit(url), urlsplit(server)
    return urlunsplit((origin.scheme, origin.netloc, parts.path, parts.query, parts.fragment))


@dataclass(slots=True)
class Servers:
    """The servers in the order given, which one is current, and how often it changed.

    A failure is noted (`failed`) and acted on by the next `pick`: the retry between the
    two still logs the outage of the server that failed (`server.unreachable` names the
    current server), and the switch is logged where the next request starts.
    """

    urls: tuple[str, ...]
    index: int = 0
    switches: int = 0
    _failure: tuple[int, BaseException] | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one server")

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def failed(self, index: int, error: BaseException) -> None:
        """`urls[index]` was found unreachable: the next `pick` moves on from it."""
        if len(self.urls) > 1 and index == self.index:
            self._failure = (index, error)

    def pick(self) -> int:
        """The index of the server the next request goes to (a noted failure moves on)."""
        if self._failure is not None:
            index, error = self._failure
            self._failure = None
            self.switch_from(index, error)
        return self.index

    def switch_from(self, index: int, error: BaseException) -> bool:
        """Make the server after `urls[index]` current, if `index` still is; logged.
        False (nothing changed) with one server, or when another worker moved first."""
        if len(self.urls) < 2 or index != self.index:
            return False
        self.index = (index + 1) % len(self.urls)
        self.switches += 1
        reason = str(error.__cause__ or error)
        log.warning(
            Event.SERVER_SWITCHED,
            previous=self.urls[index],
            server=self.current,
            reason=reason,
            switches=self.switches,
        )
        return True

    def describe(self) -> dict[str, object]:
        """What the sender's status server shows (`GET /servers`)."""
        return {"current": self.current, "servers": list(self.urls), "switches": self.switches}


class FailoverClient:
    """`Client` over one client per server (same protocol), following `servers`."""

    def __init__(self, servers: Servers, clients: Sequence[Client]) -> None:
        if len(clients) != len(servers.urls):
            raise ValueError("one client per server")
        self.servers = servers
        self._clients = tuple(clients)
        self._urls: dict[str, str] = {}  # file id -> its upload URL, as a server gave it

    @property
    def inline_create(self) -> bool:
        return self._clients[0].inline_create

    @property
    def overlapping_chunks(self) -> bool:
        return self._clients[0].overlapping_chunks

    @property
    def checks_chunks(self) -> bool:
        return self._clients[0].checks_chunks

    def adopt(self, file_id: str, location: str | None) -> None:
        if location is not None:
            self._urls[file_id] = location

    def forget(self, file_id: str) -> None:
        self._urls.pop(file_id, None)
        for client in self._clients:
            client.forget(file_id)

    async def create(
        self, file_id: str, *, name: str, size: int, metadata: Mapping[str, str], digest: bytes
    ) -> Progress:
        return await self._call(
            file_id,
            lambda c: c.create(file_id, name=name, size=size, metadata=metadata, digest=digest),
        )

    async def query(self, file_id: str) -> Progress:
        return await self._call(file_id, lambda c: c.query(file_id))

    async def put_chunk(
        self, file_id: str, start: int, data: Body, total: int, *, announce: Announce | None = None
    ) -> Progress:
        return await self._call(
            file_id, lambda c: c.put_chunk(file_id, start, data, total, announce=announce)
        )

    async def finish_empty(self, file_id: str, *, announce: Announce | None = None) -> Progress:
        return await self._call(file_id, lambda c: c.finish_empty(file_id, announce=announce))

    async def _call(
        self, file_id: str, request: Callable[[Client], Awaitable[Progress]]
    ) -> Progress:
        """`request` on the current server's client, the file's URL rebased onto it; a
        failure that `moves_on` switches servers, then goes on up unchanged."""
        index = self.servers.pick()
        client = self._clients[index]
        known = self._urls.get(file_id)
        client.adopt(file_id, rebase(known, self.servers.urls[index]) if known else None)
        try:
            progress = await request(client)
        except TransientError as exc:
            if moves_on(exc):
                self.servers.failed(index, exc)
            raise
        if progress.missing:
            self._urls.pop(file_id, None)
        elif progress.location is not None:
            self._urls[file_id] = progress.location
        return progress


async def ask_any(servers: Servers, call: Callable[[int], Awaitable[T]]) -> T:
    """`call(index)` on the current server, moving on (as `FailoverClient` does) until
    one answers or every server has failed once; then the last failure is raised.
    For requests any replica answers alike (`transfer verify`)."""
    for _ in range(len(servers.urls) - 1):
        index = servers.pick()
        try:
            return await call(index)
        except TransientError as exc:
            if not moves_on(exc):
                raise
            servers.failed(index, exc)
    return await call(servers.pick())
