"""Which client a request comes from, behind a trusted proxy too; and its fair share.

The connection layer (`connlimit.py`) counts TCP peers. Behind nginx every peer is
nginx, so there the client is read from `X-Forwarded-For`, and only there: a peer
inside a `--trusted-proxy` network. `client_middleware`, outermost in the app:

- binds `client` (the attributed address) to the request's log context, so the access
  line and every event of the request carry it;
- for a request that arrived through a trusted proxy, holds the client to
  `--max-connections-per-ip` requests in flight at once (what the TCP cap does for a
  direct client): past it, 429 `too_many_connections_per_ip` with `Retry-After: 1`.

Invariants: `X-Forwarded-For` from an untrusted peer is never read (a forged one changes
nothing); the in-flight count of a client is released however its request ends,
cancellation included; the counts live in the middleware's closure, one per app.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from transfer.core.errors import Code, ProtocolError
from transfer.server.connections import ConnLimits, client_address
from transfer.server.middleware import Handler, problem_response

CLIENT = web.RequestKey("client", str)


def client_middleware(limits: ConnLimits) -> Middleware:
    in_flight: dict[str, int] = {}

    @web.middleware
    async def client(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        address = request[CLIENT] = client_address(
            peer, request.headers.getall("X-Forwarded-For", ()), limits
        )
        # Not unbound: the access line is written after this returns, in this request's
        # own task, whose context dies with it.
        structlog.contextvars.bind_contextvars(client=address)
        if address == peer:  # a direct client: the TCP-level cap already bounds it
            return await handler(request)
        if in_flight.get(address, 0) >= limits.per_ip:
            return problem_response(_too_many(address))
        in_flight[address] = in_flight.get(address, 0) + 1
        try:
            return await handler(request)
        finally:
            _release(in_flight, address)

    return client


def _too_many(address: str) -> ProtocolError:
    return ProtocolError(
        Code.TOO_MANY_CONNECTIONS_PER_IP,
        f"{address} has too many requests in flight through the proxy",
        headers={"Retry-After": "1"},
    )


def _release(in_flight: dict[str, int], address: str) -> None:
    left = in_flight[address] - 1
    if left:
        in_flight[address] = left
    else:
        del in_flight[address]
