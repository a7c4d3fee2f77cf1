"""Bearer-token authentication and scopes for `transfer serve`.

Two modes: one shared `--token` (every holder may do everything, one namespace), or
`--tokens-file` (named credentials, each with a tenant and scopes; `tenants.py`).

Invariants:
- Every route except `/healthz` (and `/metrics` unless it is protected) needs
  `Authorization: Bearer <token>`; a missing, wrong or revoked token is 401
  `unauthorized`, whatever the path (so the answer says nothing about what exists).
- The shared token is compared in constant time (`hmac.compare_digest`); a tokens-file
  token is looked up by its SHA-256 (`core/tokens.py` says why that leaks nothing).
- A credential without the scope a request needs gets 403 `insufficient_scope` only
  for what exists in its own namespace; anything else is the 404 the handler would give,
  so a scope refusal never tells whether an id is taken (docs/security.md, "Scopes").
- With `--tokens-file`, `/metrics` (when protected) needs `admin`: its counters cover
  every tenant.
- No token is ever logged, echoed or put in an error message.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from transfer.core import protocol
from transfer.core.errors import Code, NotFound, ProtocolError, Unauthorized
from transfer.core.tenancy import Scope
from transfer.server.state import STATE
from transfer.server.tenants import PRINCIPAL, SINGLE_TOKEN, Keyring, Principal, scoped_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="transfer"'}
_WRITES = frozenset({"POST", "PUT", "PATCH"})
NONE: frozenset[Scope] = frozenset()


def token_matches(header: str | None, token: str) -> bool:
    """True when `header` is `Bearer <token>` (scheme case-insensitive)."""
    given = _bearer(header)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def _unauthorized() -> Unauthorized:
    return Unauthorized(
        Code.UNAUTHORIZED,
        "a valid 'Authorization: Bearer' token is required",
        headers=_CHALLENGE,
    )


def _open_paths(protect_metrics: bool) -> frozenset[str]:
    return frozenset({"/healthz"} if protect_metrics else {"/healthz", "/metrics"})


def bearer_middleware(token: str, *, protect_metrics: bool) -> Middleware:
    """One shared token: its holder may do everything, in the one namespace."""
    open_paths = _open_paths(protect_metrics)

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in open_paths:
            if not token_matches(request.headers.get("Authorization"), token):
                raise _unauthorized()
            request[PRINCIPAL] = SINGLE_TOKEN
        return await handler(request)

    return check_token


def tokens_middleware(keyring: Keyring, *, protect_metrics: bool) -> Middleware:
    """Named credentials: the principal, bound to the log context, then its scopes."""
    open_paths = _open_paths(protect_metrics)

    @web.middleware
    async def check_credential(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        given = _bearer(request.headers.get("Authorization"))
        principal = None if given is None else keyring.lookup(given)
        if principal is None:
            raise _unauthorized()
        request[PRINCIPAL] = principal
        structlog.contextvars.bind_contextvars(tenant=principal.tenant, credential=principal.name)
        await _check_scopes(request, principal)
        return await handler(request)

    return check_credential


def needed(method: str, path: str, has_id: bool) -> frozenset[Scope]:
    """The scopes of which one is needed for `method` on `path` (see docs/security.md)."""
    if path == "/metrics":
        return frozenset({Scope.ADMIN})
    if method in ("GET", "HEAD"):
        if path.startswith("/files/"):
            return frozenset({Scope.READ})
        if path == "/uploads":
            return frozenset({Scope.ADMIN})  # the cross-tenant listing
        return frozenset({Scope.UPLOAD, Scope.READ}) if has_id else NONE
    if method in _WRITES:
        return frozenset({Scope.UPLOAD})
    return frozenset({Scope.DELETE}) if method == "DELETE" else NONE


async def _check_scopes(request: web.Request, principal: Principal) -> None:
    """Raises 403 `insufficient_scope` for the caller's own resources, else 404."""
    has_id = "upload_id" in request.match_info
    scopes = needed(_method(request), request.path, has_id)
    if not principal.may(scopes):
        if has_id:
            await _must_exist(request)
        raise ProtocolError(
            Code.INSUFFICIENT_SCOPE,
            f"credential {principal.name!r} lacks the scope: {' or '.join(sorted(scopes))}",
        )


def _method(request: web.Request) -> str:
    """The method that runs: under `--tus-path`, `X-HTTP-Method-Override`'s, if sent."""
    tus_path = request.app[STATE].config.tus_path
    override = request.headers.get("X-HTTP-Method-Override")
    if override and tus_path is not None and request.path.startswith(tus_path):
        return override.strip().upper()
    return request.method


async def _must_exist(request: web.Request) -> None:
    """Raises the handler's own 404 when the id names nothing in the caller's namespace."""
    store = request.app[STATE].store
    key = scoped_key(request, protocol.validate_id(request.match_info["upload_id"]))
    if request.path.startswith("/files/"):
        published = await store.open_file(key)
        if published is None:
            raise NotFound(Code.FILE_NOT_FOUND, "no such completed file")
        await published.close()
    elif await store.get(key) is None:
        raise NotFound(Code.UPLOAD_NOT_FOUND, "no such upload")


def auth_middleware(
    token: str | None, keyring: Keyring | None, *, protect_metrics: bool
) -> Middleware | None:
    """The middleware for the configured mode; None without authentication."""
    if keyring is not None:
        return tokens_middleware(keyring, protect_metrics=protect_metrics)
    if token is not None:
        return bearer_middleware(token, protect_metrics=protect_metrics)
    return None
