"""CORS for browser uploads: `--cors-origin ORIGIN` (repeatable, `*` for any).

A page on another origin (Uppy, tus-js-client) may call the upload endpoints (native
`/uploads`, `/files`, the tus and the IETF base paths) only if the answers say so:

- An actual request with an allowed `Origin` gets `Access-Control-Allow-Origin` (the
  origin itself, or `*` when any is allowed), `Vary: Origin`, and
  `Access-Control-Expose-Headers` naming every header an upload client must read
  (`EXPOSED`), on success and refusal alike, so a page can read a problem's answer.
- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
  answered here, before authentication (a browser never sends credentials on a
  preflight): 204 with the allowed methods, the requested headers and a max age; from
  an origin not allowed, 403 `origin_not_allowed`.

Invariants: without `--cors-origin` this middleware is not installed and nothing
changes; no CORS header is ever sent to an origin that was not allowed; credentials
(cookies) are never allowed, so `*` never widens what a bearer token protects.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from transfer.core.errors import Code, ConfigError, ProtocolError
from transfer.server.middleware import Handler, problem_response

EXPOSED = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Complete",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Limit",
    "Upload-Draft-Interop-Version",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Repr-Digest",
    "Range",
    "Retry-After",
    "X-Request-Id",
)
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
MAX_AGE = "86400"  # browsers cap it lower (Chromium: 2 h); fewer preflights either way


def cors_origins(values: Sequence[str]) -> tuple[str, ...]:
    """Validated `--cors-origin` values: `*` or `scheme://host[:port]`, no path.

    Raises:
        ConfigError: for anything else.
    """
    for value in values:
        if value == "*":
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--cors-origin {value!r} is not '*' or scheme://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ConfigError(f"--cors-origin {value!r} must be an origin: no path or query")
    return tuple(dict.fromkeys(v.rstrip("/") for v in values))


def cors_middleware(origins: Sequence[str], prefixes: Sequence[str]) -> Middleware:
    """CORS on paths under `prefixes` for `origins` (see the module docstring)."""
    allowed = frozenset(origins)

    def allow_value(origin: str) -> str | None:
        if "*" in allowed:
            return "*"
        return origin if origin in allowed else None

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith(tuple(prefixes)):
            return await handler(request)
        value = allow_value(origin)
        if _is_preflight(request):
            return _preflight(request, value)
        response = await handler(request)
        if value is not None and not response.prepared:
            _decorate(response, value)
        return response

    return cors


def _is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _preflight(request: web.Request, value: str | None) -> web.StreamResponse:
    if value is None:
        origin = request.headers["Origin"]
        return problem_response(
            ProtocolError(Code.ORIGIN_NOT_ALLOWED, f"origin {origin!r} may not upload here")
        )
    response = web.Response(status=204)
    response.headers.update(
        {
            "Access-Control-Allow-Origin": value,
            "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        }
    )
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        # Any header: the origin is what is checked; which headers a page may send
        # protects nothing a non-browser client could not send anyway.
        response.headers["Access-Control-Allow-Headers"] = requested
    return response


def _decorate(response: web.StreamResponse, value: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = value
    response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED)
    vary = response.headers.get("Vary")
    response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
