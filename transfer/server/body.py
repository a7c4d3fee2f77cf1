"""A request body as every front-end reads it: bounded in time, and in rate.

Invariants: each read waits at most `idle_timeout` (408 `body_stalled`); once that much
time has passed the body must average `min_rate` bytes/s (408 `body_too_slow`), so a
client trickling a byte at a time cannot hold an upload slot for ever; a client that
goes away mid-body ends it with 400 `body_incomplete` (nobody hears it, but the log says
what happened instead of reporting a crash). The rate clock is `config.monotonic`, so
tests drive it by hand. Given the body's admission `Slot`, the reader reports its
progress there and lets admission cut it when its slot is wanted (408
`body_preempted`: the next read fails at once, whatever it was waiting for).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from transfer.core.errors import BadRequest, Code, RequestTimeout
from transfer.core.events import Event
from transfer.server.admission import Slot
from transfer.server.state import ServerConfig

log = structlog.get_logger("transfer.server")


class _Preempted(TimeoutError):
    """Set on the body's stream by admission: its slot was given away.

    A `TimeoutError` because aiohttp, draining the unread body after the 408, takes
    that one as the end of its lingering read, not as a crash of the connection."""


async def request_body(
    request: web.Request, config: ServerConfig, slot: Slot | None = None
) -> AsyncIterator[bytes]:
    """The request's body, piece by piece, under the rules of the module docstring."""
    idle, min_rate, clock = config.idle_timeout, config.min_rate, config.monotonic
    started, received = clock(), 0
    if slot is not None:
        slot.cut_by(lambda: request.content.set_exception(_Preempted()))
    while data := await _read_some(request, idle, received):
        received += len(data)
        if slot is not None:
            slot.progress(len(data))
            slot.ended = received == request.content_length  # all in: nothing to cut
        elapsed = clock() - started
        if elapsed > idle and received < min_rate * elapsed:
            log.warning(Event.UPLOAD_TOO_SLOW, received=received)
            raise RequestTimeout(Code.BODY_TOO_SLOW, f"the body is slower than {min_rate} B/s")
        yield data
    if slot is not None:
        slot.ended = True


async def _read_some(request: web.Request, idle: float, received: int) -> bytes:
    """The next bytes of the body (b"" at its end), within `idle` seconds."""
    try:
        async with asyncio.timeout(idle):
            return await request.content.readany()
    except _Preempted as exc:
        log.warning(Event.UPLOAD_PREEMPTED, received=received)
        raise RequestTimeout(
            Code.BODY_PREEMPTED, "the body was too slow while other uploads waited for its slot"
        ) from exc
    except TimeoutError as exc:
        log.warning(Event.UPLOAD_STALLED, idle=idle)
        raise RequestTimeout(Code.BODY_STALLED, f"no body bytes for {idle} s") from exc
    except (ConnectionError, aiohttp.ClientPayloadError) as exc:
        # The client went away mid-body: nobody hears the answer, but the log should say
        # what happened, not report a crash.
        log.info(Event.UPLOAD_DISCONNECTED, received=received)
        raise BadRequest(Code.BODY_INCOMPLETE, "the connection closed mid-body") from exc
