"""The connection layer of `transfer serve`: caps, the header timeout, eviction.

aiohttp has no such limits: every accepted socket gets a request handler, so enough idle
or half-sent connections exhaust the process's file descriptors and nobody is served.
`LimitedTCPSite` is aiohttp's `TCPSite` whose protocol factory wraps each connection's
`RequestHandler` in `_Connection`, a thin proxy that passes every call through and
tells the `Tracker` (`connections.py`, the rules) what the connection is doing:

- refused before any byte is read when its address holds `--max-connections-per-ip`
  already (429 `too_many_connections_per_ip`) or when the server is full and nothing
  can be evicted (503 `too_many_connections`); both problem+json, `Retry-After: 1`,
  then closed;
- closed when it has not completed a request's headers `--header-timeout` after it
  opened, or after the first byte of its next request on a kept-alive connection
  (the idle wait between requests is aiohttp's keep-alive timeout, not this one);
- evicted to make room for a newcomer while it is still reading headers (oldest
  first) or idle between requests; never once its headers are complete.

The state is read off aiohttp's `RequestHandler` (private attributes, aiohttp pinned
<3.15; tests/test_connlimit.py fails if they move): `_request_count` grows when a
request's headers have been parsed, and `_waiter` is pending only while the handler
waits for the next request. Invariant: every admitted connection leaves the tracker
exactly once (closed, evicted or expired), so the counts never drift.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from transfer.core.errors import Code, ConfigError
from transfer.core.events import Event
from transfer.server.connections import (
    DEFAULT_MAX_CONNECTIONS,
    ConnLimits,
    ConnState,
    Tracker,
    Verdict,
)

log = structlog.get_logger("transfer.server")

# File descriptors the server needs beside its connections: listener, logs, the data
# files of uploads being written and files being downloaded, aiohttp's and asyncio's own.
FD_HEADROOM = 256


def _refusal(code: Code, detail: str) -> bytes:
    problem = json.dumps(
        {
            "type": f"urn:transfer:error:{code}",
            "title": code.problem_title,
            "status": code.status,
            "code": str(code),
            "detail": detail,
        }
    ).encode()
    return (
        f"HTTP/1.1 {code.status} {code.problem_title}\r\n"
        "Content-Type: application/problem+json\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(problem)}\r\n\r\n"
    ).encode() + problem


REFUSAL = _refusal(
    Code.TOO_MANY_CONNECTIONS, "the server is at its connection limit; try again shortly"
)
REFUSAL_PER_IP = _refusal(
    Code.TOO_MANY_CONNECTIONS_PER_IP, "too many connections from your address; close some"
)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler behind a proxy that reports its state."""

    def __init__(self, server: web.Server, tracker: Tracker, header_timeout: float) -> None:
        self._server, self._tracker, self._timeout = server, tracker, header_timeout
        self.handler: RequestHandler | None = None
        self.peer = ""
        self._since: float | None = None  # when the current request headers began
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = _host(transport.get_extra_info("peername"))
        verdict = self._tracker.admit(self)
        if verdict is not Verdict.ADMIT:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSAL_PER_IP if verdict is Verdict.PER_IP else REFUSAL)
            transport.close()
            return
        self.handler = self._server()
        self.handler.connection_made(transport)
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            return
        parsed = handler._request_count
        handler.data_received(data)
        if handler._request_count != parsed:
            self._headers_done()
        elif data and self._since is None and _waiting(handler):
            self._start_header_clock()  # the first byte of the next request

    def eof_received(self) -> None:
        # aiohttp's handler ignores a half-close (returns None: the transport closes);
        # passed on in case a later version does otherwise.
        if self.handler is not None:
            self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self._tracker.gone(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def state(self) -> ConnState:
        assert self.handler is not None  # only admitted connections are asked
        if self._since is not None:
            return ConnState.READING_HEADERS
        if _waiting(self.handler) and not self.handler._messages:
            return ConnState.IDLE_KEEPALIVE
        return ConnState.IN_BODY

    def evict(self) -> None:
        self._stop_clock()
        if self.handler is not None:
            self.handler.force_close()

    def _start_header_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self._since = since = loop.time()
        self._timer = loop.call_later(self._timeout, self._header_deadline, since)
        self._tracker.reading(self)

    def _headers_done(self) -> None:
        self._stop_clock()
        self._tracker.headers_done(self)

    def _stop_clock(self) -> None:
        self._since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_deadline(self, since: float) -> None:
        if self._since == since:  # still the same unfinished header block
            self._tracker.expired(self)


def _waiting(handler: RequestHandler) -> bool:
    """Is aiohttp's handler waiting for the next request (not handling one)?"""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


def _host(peername: object) -> str:
    """The peer's address, an IPv4-mapped IPv6 one as plain IPv4."""
    host = peername[0] if isinstance(peername, tuple) and peername else ""
    text = str(host)
    return text.removeprefix("::ffff:") if "." in text else text


def tracked(server: web.Server, tracker: Tracker) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory: aiohttp's handler behind the tracker's rules."""
    timeout = tracker.limits.header_timeout
    return lambda: _Connection(server, tracker, timeout)


def default_max_connections() -> int:
    """`DEFAULT_MAX_CONNECTIONS`, or fewer where the hard descriptor limit cannot hold
    it: a default must never stop the server from starting."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, hard - FD_HEADROOM))


def ensure_fd_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE so `max_connections` can be held; the limit now.

    Raises:
        ConfigError: the hard limit is too low (one line: what to change).
    """
    needed = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"--max-connections {max_connections} needs {needed} file descriptors but the "
            f"hard limit (ulimit -Hn) is {hard}: lower --max-connections to at most "
            f"{max(hard - FD_HEADROOM, 0)} or raise the limit (LimitNOFILE= in systemd)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info(Event.FD_LIMIT_RAISED, soft_was=soft, soft=needed, hard=hard)
    return needed


class LimitedTCPSite(web.TCPSite):
    """`web.TCPSite` whose connections obey `ConnLimits` (see the module docstring)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        tracker: Tracker,
        shutdown_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            runner, host, port, shutdown_timeout=shutdown_timeout, ssl_context=ssl_context
        )
        self.tracker = tracker

    @property
    def limits(self) -> ConnLimits:
        return self.tracker.limits

    async def start(self) -> None:
        # As TCPSite.start, with the protocol factory wrapped (aiohttp offers no hook).
        await web.BaseSite.start(self)
        server = self._runner.server
        assert isinstance(server, web.Server)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            tracked(server, self.tracker),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            # The TLS handshake precedes the headers: the same clock bounds it.
            ssl_handshake_timeout=self.limits.header_timeout if self._ssl_context else None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
