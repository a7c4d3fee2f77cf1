"""A request body as every front-end reads it: bounded in time, and in rate.

Invariants: each read waits at most `idle_timeout` (408 `body_stalled`); once that much
time has passed the body must average `min_rate` bytes/s (408 `body_too_slow`), so a
client trickling a byte at a time cannot hold an upload slot for ever; a client that
goes away mid-body ends it with 400 `body_incomplete` (nobody hears it, but the log says
what happened instead of reporting a crash). The rate clock is `config.monotonic`, so
tests drive it by hand. Given the body's admission `Slot`, the reader reports its
progress there and lets admission cut it when its slot is wanted (408
`body_preempted`: the next read fails at once, whatever it was waiting for).

What a read costs (issue 13): a body has one idle timer (`_IdleWatch`), re-armed only
when it fires, not a timer per read; a large body is read from the socket `READ_SIZE`
bytes at a time instead of asyncio's 256 KiB, so a GiB makes about a third of the trips
through the event loop, aiohttp's parser and this generator (~1,650 `recv`s instead of
~4,700); and `tune_allocator` keeps glibc from handing the heap back to the kernel
between those megabyte pieces, which made each piece fault its pages in anew. Callers
close the generator (`contextlib.aclosing`), which stops its timer and restores the
socket's read size however the body ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import AsyncGenerator, Iterator

import aiohttp
import structlog
from aiohttp import web

from transfer.core.errors import BadRequest, Code, RequestTimeout
from transfer.core.events import Event
from transfer.server.admission import Slot
from transfer.server.state import ServerConfig

log = structlog.get_logger("transfer.server")

READ_SIZE = 1024 * 1024  # bytes per socket read for a large body
WIDE_FROM = 4 * READ_SIZE  # bodies at least this long are read READ_SIZE at a time

# glibc's mallopt parameters, and the values its dynamic thresholds reach on their own
# once a 32 MiB block has been freed (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * READ_SIZE
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


class _Preempted(TimeoutError):
    """Set on the body's stream by admission: its slot was given away.

    A `TimeoutError` because aiohttp, draining the unread body after the 408, takes
    that one as the end of its lingering read, not as a crash of the connection."""


class _Stalled(TimeoutError):
    """Set on the body's stream by `_IdleWatch`: a read waited `idle` seconds (a
    `TimeoutError` for the reason `_Preempted` is one)."""


class _IdleWatch:
    """One timer for a whole body: a read pending for `idle` seconds fails the stream.

    `reading()` before each read and `idle()` after it only store a time; a read arms the
    timer when none is armed. When it fires it fails the pending read if that began
    `idle` seconds ago or more, re-arms for the pending read's deadline otherwise, and
    lapses between reads. So a read fails no later than `idle` seconds after it began
    (plus the loop's latency), at the cost of about one timer per `idle` seconds of
    reading instead of one per read; `close` (or an abandoned body) leaves none."""

    def __init__(self, content: aiohttp.StreamReader, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content, self._idle = content, idle
        self._since: float | None = None  # when the pending read began; None between reads
        self._timer: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def reading(self) -> None:
        self._since = now = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._idle, self._fire)

    def idle(self) -> None:
        self._since = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer, since = None, self._since
        if since is None:
            return
        if self._loop.time() - since >= self._idle:
            self._content.set_exception(_Stalled())
        else:
            self._timer = self._loop.call_at(since + self._idle, self._fire)


async def request_body(
    request: web.Request, config: ServerConfig, slot: Slot | None = None
) -> AsyncGenerator[bytes, None]:
    """The request's body, piece by piece, under the rules of the module docstring."""
    idle, min_rate, clock = config.idle_timeout, config.min_rate, config.monotonic
    started, received, content = clock(), 0, request.content
    pieces = request.content_length is not None  # see `_read_some`
    if slot is not None:
        slot.cut_by(lambda: content.set_exception(_Preempted()))
    watch = _IdleWatch(content, idle)
    try:
        with _wide_reads(request):
            while data := await _read_some(content, watch, idle, received, pieces):
                received += len(data)
                if slot is not None:
                    slot.progress(len(data))
                    slot.ended = received == request.content_length  # all in: nothing to cut
                elapsed = clock() - started
                if elapsed > idle and received < min_rate * elapsed:
                    log.warning(Event.UPLOAD_TOO_SLOW, received=received)
                    raise RequestTimeout(
                        Code.BODY_TOO_SLOW, f"the body is slower than {min_rate} B/s"
                    )
                yield data
    finally:
        watch.close()
    if slot is not None:
        slot.ended = True


async def _read_some(
    content: aiohttp.StreamReader, watch: _IdleWatch, idle: float, received: int, pieces: bool
) -> bytes:
    """The next bytes of the body (b"" at its end), within `idle` seconds.

    With `pieces` (a body of known length, so not chunked), one received piece at a
    time (`readchunk`), never `readany`'s join of every piece buffered: that join copied
    each small file's body once more (13 % of the server's instructions in the S4 job,
    issue 13). A chunked body is still joined: piece by piece, a client sending one-byte
    HTTP chunks would cost a pass through the store per byte."""
    watch.reading()
    try:
        return (await content.readchunk())[0] if pieces else await content.readany()
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
    finally:
        watch.idle()


@contextlib.contextmanager
def _wide_reads(request: web.Request) -> Iterator[None]:
    """Read a body of `WIDE_FROM` bytes or more `READ_SIZE` bytes per socket read; the
    connection's later requests read as before.

    asyncio's selector transport reads `max_size` bytes per `recv` (256 KiB, a class
    attribute; uvloop's and the TLS transport have none and are left alone), and
    aiohttp's stream pauses the socket past twice its chunk size: both are raised."""
    transport = request.transport
    before = getattr(transport, "max_size", None)
    widen = getattr(request.content, "set_read_chunk_size", None)  # not in every aiohttp
    if (request.content_length or 0) < WIDE_FROM or not isinstance(before, int) or not widen:
        yield
        return
    widen(READ_SIZE)
    transport.max_size = max(before, READ_SIZE)  # type: ignore[union-attr]
    try:
        yield
    finally:
        transport.max_size = before  # type: ignore[union-attr]


async def tune_allocator(_app: web.Application) -> None:
    """On start-up (an `on_startup` hook): set glibc's malloc thresholds to the ceiling
    its own dynamic rule reaches, so the megabyte pieces of large bodies come from the
    heap and the freed heap is not returned (`brk`) and faulted in again for the next
    piece. Measured per GiB received in 8 MiB chunks: 45,000-118,000 page faults with
    1 MiB reads and glibc's defaults, ~1,500 with this (256 KiB reads: 5,000-27,000).
    Peak memory is unchanged; memory freed after a peak is kept for reuse instead of
    returned. Elsewhere than glibc, nothing is done."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
