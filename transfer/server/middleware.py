"""Cross-cutting HTTP concerns of the server: problem+json rendering, request timing,
and aiohttp's access log as one structured line per request.

Invariants:
- Every refusal leaves as `application/problem+json` with a stable `code`: our
  `ProtocolError`s, aiohttp's own HTTP errors (404 for unknown routes, 405 with `Allow`,
  413 for an oversized JSON body) and, as a last resort, bugs (500 `internal_error`,
  logged whole, nothing internal in the answer).
- `asyncio.CancelledError` is never caught (it is not an `Exception`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from transfer.common.metrics import Metrics
from transfer.core.errors import Code, DigestMismatch, ProtocolError
from transfer.core.events import Event

log = structlog.get_logger("transfer.server")

PROBLEM = "application/problem+json"
UPLOAD_ID = web.RequestKey("upload_id", str)
BYTES = web.RequestKey("bytes", int)
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


def problem_response(exc: ProtocolError) -> web.Response:
    response = web.Response(
        status=exc.status,
        text=json.dumps(exc.problem()),
        content_type=PROBLEM,
        headers=exc.headers,
    )
    if exc.status == 408:
        # RFC 9110 15.5.9: a 408 closes the connection. Kept alive, a client would send its
        # next request down the same stalled path, behind the unread rest of the body.
        response.force_close()
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
        structlog.get_logger("transfer.access").info(
            Event.REQUEST,
            method=request.method,
            path=request.path,
            status=response.status,
            upload_id=request.get(UPLOAD_ID),
            bytes=request.get(BYTES, 0),
            duration_ms=round(time * 1000, 3),
        )
