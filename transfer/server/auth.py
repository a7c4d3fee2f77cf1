"""Bearer-token authentication for `transfer serve`.

Invariants:
- Every route except `/healthz` (and `/metrics` unless it is protected) needs
  `Authorization: Bearer <token>`; a missing or wrong token is 401 `unauthorized`.
- The comparison is constant-time (`hmac.compare_digest` on bytes), so the answer's
  timing does not reveal how much of a guess was right.
- The token is never logged, echoed or put in an error message.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from transfer.core.errors import Code, Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="transfer"'}


def token_matches(header: str | None, token: str) -> bool:
    """True when `header` is `Bearer <token>` (scheme case-insensitive)."""
    if header is None:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def bearer_middleware(token: str, *, protect_metrics: bool) -> Middleware:
    open_paths = {"/healthz"} if protect_metrics else {"/healthz", "/metrics"}

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in open_paths and not token_matches(
            request.headers.get("Authorization"), token
        ):
            raise Unauthorized(
                Code.UNAUTHORIZED,
                "a valid 'Authorization: Bearer' token is required",
                headers=_CHALLENGE,
            )
        return await handler(request)

    return check_token
