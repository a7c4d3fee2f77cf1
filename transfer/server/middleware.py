"""Cross-cutting HTTP concerns of the server: the request's log context, problem+json
rendering, request timing, and aiohttp's access log as one structured line per request.

Invariants:
- Every request gets a fresh `request_id`, bound in structlog's context for everything
  logged while it is handled and answered as `X-Request-Id`; a handler binds the
  `upload_id` once it knows it (`bind_upload_id`). Both are unbound when the request
  ends. aiohttp runs each request in its own task (a copy of the connection's context),
  so concurrent requests never see each other's bindings either.
- Every refusal leaves as `application/problem+json` with a stable `code`: our
  `ProtocolError`s, aiohttp's own HTTP errors (404 for unknown routes, 405 with `Allow`,
  413 for an oversized JSON body) and, as a last resort, bugs (500 `internal_error`,
  logged whole, nothing internal in the answer).
- `asyncio.CancelledError` is never caught (it is not an `Exception`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from transfer.common.metrics import Metrics
from transfer.core.errors import Code, DigestMismatch, ProtocolError
from transfer.core.events import Event
from transfer.core.tenancy import tenant_of
from transfer.server.tenants import PRINCIPAL, scoped_key

log = structlog.get_logger("transfer.server")
access_log = structlog.get_logger("transfer.access")

PROBLEM = "application/problem+json"
UPLOAD_ID = web.RequestKey("upload_id", str)
REQUEST_ID = web.RequestKey("request_id", str)
BYTES = web.RequestKey("bytes", int)
REQUEST_ID_HEADER = "X-Request-Id"
_CONTEXT_KEYS = ("request_id", "upload_id", "tenant", "credential")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Methods timed under their own name; any other is "other". aiohttp's pure-Python parser
# accepts any token as a method, so a label taken from the request would let a client add
# a histogram series (memory, and /metrics lines) per made-up method.
_TIMED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _Generic(ProtocolError):
    """A refusal that did not come from our code: aiohttp's (a registered `Code` where
    its reason is one, e.g. `not_found`, `method_not_allowed`), or a bug."""

    def __init__(self, status: int, title: str, code: str, detail: str) -> None:
        super().__init__(Code.INTERNAL_ERROR, detail)
        self.status, self.title, self.code = status, title, code


_NAMED_STATUSES = frozenset(status.value for status in HTTPStatus)


def problem_response(exc: ProtocolError) -> web.Response:
    response = web.Response(
        status=exc.status,
        # A status HTTP does not name (tus's 460) would go out with an empty reason phrase.
        reason=None if exc.status in _NAMED_STATUSES else exc.title,
        text=json.dumps(exc.problem()),
        content_type=PROBLEM,
        headers=exc.headers,
    )
    if exc.status == 408:
        # RFC 9110 15.5.9: a 408 closes the connection. Kept alive, a client would send its
        # next request down the same stalled path, behind the unread rest of the body.
        response.force_close()
    return response


def new_request_id() -> str:
    """Short (16 hex digits), random: unique enough to find one request in the logs.
    Not a secret, so not from the OS (a `getrandom` call per request, issue 13)."""
    return f"{random.getrandbits(64):016x}"


def bind_upload_id(request: web.Request, upload_id: str) -> str:
    """Name the request's upload: in the access line and in every event logged after.

    Returns the upload's store key: the one place a client's id enters the caller's
    tenant namespace (`tenants.scoped_key`; the id itself without tenancy)."""
    request[UPLOAD_ID] = upload_id
    key = scoped_key(request, upload_id)
    structlog.contextvars.bind_contextvars(upload_id=upload_id)
    tenant = tenant_of(key)
    if tenant is not None:  # an admin's `?tenant=` may name another than the credential's
        structlog.contextvars.bind_contextvars(tenant=tenant)
    return key


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind `request_id` (and, via the handler, `upload_id`) for the request's logs;
    answer it as `X-Request-Id`. Outermost, so even a crash's log line carries it."""
    request_id = request[REQUEST_ID] = new_request_id()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a non-error one (a redirect) re-raised as is
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        structlog.contextvars.unbind_contextvars(*_CONTEXT_KEYS)
    if not response.prepared:  # a streamed answer's headers are already sent
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def problems_middleware(metrics: Metrics) -> Middleware:
    """Render refusals as problem+json; time every request into `metrics`."""

    @web.middleware
    async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await _answer(request, handler, metrics)
        finally:
            route = request.match_info.route.resource
            metrics.observe(
                "transfer_request_duration_seconds",
                time.perf_counter() - started,
                method=request.method if request.method in _TIMED_METHODS else "other",
                route=route.canonical if route is not None else "unmatched",
            )

    return problems


async def _answer(request: web.Request, handler: Handler, metrics: Metrics) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as exc:
        _count_mismatch(metrics, exc)
        return problem_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        generic = _Generic(exc.status, exc.reason, code, exc.text or exc.reason)
        if "Allow" in exc.headers:
            generic.headers["Allow"] = exc.headers["Allow"]
        return problem_response(generic)
    except Exception:
        log.exception(Event.REQUEST_CRASHED, method=request.method, path=request.path)
        return problem_response(
            _Generic(
                500, Code.INTERNAL_ERROR.problem_title, Code.INTERNAL_ERROR, "the server hit a bug"
            )
        )


def _count_mismatch(metrics: Metrics, exc: ProtocolError) -> None:
    if isinstance(exc, DigestMismatch):
        kind = "file" if exc.code.startswith("repr") else "chunk"
        metrics.inc("transfer_digest_mismatches_total", kind=kind)
        log.warning(Event.DIGEST_MISMATCH, kind=kind, code=exc.code, detail=exc.detail)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log, as one structured line per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        access_log.info(
            Event.REQUEST,
            method=request.method,
            path=request.path,
            status=response.status,
            upload_id=request.get(UPLOAD_ID),
            request_id=request.get(REQUEST_ID),
            bytes=request.get(BYTES, 0),
            duration_ms=round(time * 1000, 3),
            **_who(request),
        )


def _who(request: web.BaseRequest) -> dict[str, str]:
    """With `--tokens-file`: the credential's name and tenant (never its token)."""
    principal = request.get(PRINCIPAL)
    if principal is None or principal.tenant is None:
        return {}
    return {"credential": principal.name, "tenant": principal.tenant}
