"""A cap on open connections for `transfer serve`.

aiohttp has no such limit: every accepted socket gets a request handler, so enough idle
or half-sent connections exhaust the process's file descriptors and nobody is served.
`LimitedTCPSite` is aiohttp's `TCPSite` with one change: once `max_connections` are
open, a new connection is answered `503 too_many_connections` (problem+json,
`Retry-After`) and closed at once, before any of its bytes are read.

Invariant: the count is aiohttp's own list of live connections, so a connection that
closes (normally, by the keep-alive timeout, or by a kill of the peer) frees its place.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable

from aiohttp import web

from transfer.core.errors import Code

_PROBLEM = json.dumps(
    {
        "type": f"urn:transfer:error:{Code.TOO_MANY_CONNECTIONS}",
        "title": Code.TOO_MANY_CONNECTIONS.problem_title,
        "status": Code.TOO_MANY_CONNECTIONS.status,
        "code": str(Code.TOO_MANY_CONNECTIONS),
        "detail": "the server is at its connection limit; try again shortly",
    }
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/problem+json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_PROBLEM)).encode() + b"\r\n\r\n" + _PROBLEM
)


class _Refuse(asyncio.Protocol):
    """Answers 503 and hangs up, without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(REFUSAL)
        transport.close()


def limited(server: web.Server, max_connections: int) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory: aiohttp's handler while under the cap, a refusal above it."""

    def make() -> asyncio.BaseProtocol:
        if len(server.connections) >= max_connections:
            return _Refuse()
        return server()

    return make


class LimitedTCPSite(web.TCPSite):
    """`web.TCPSite` whose listener refuses connections past `max_connections`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        shutdown_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            runner, host, port, shutdown_timeout=shutdown_timeout, ssl_context=ssl_context
        )
        self.max_connections = max_connections

    async def start(self) -> None:
        # As TCPSite.start, with the protocol factory wrapped (aiohttp offers no hook).
        await web.BaseSite.start(self)
        server = self._runner.server
        assert isinstance(server, web.Server)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            limited(server, self.max_connections),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
