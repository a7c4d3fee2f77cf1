"""`GET /files/{id}` (and `HEAD`): a published file, whole or one range, with validators.

The answers are exactly those aiohttp's `FileResponse` gave when this endpoint served a
path (docs/protocol.md; tests/test_download.py compares the two side by side), but the
bytes come from the store's `PublishedFile`, so any store can serve downloads:

- `ETag: "<mtime ns hex>-<size hex>"` (a validator, not a content digest),
  `Last-Modified` (the mtime rounded up to the second), `Accept-Ranges: bytes`,
  `Content-Type: application/octet-stream`.
- Preconditions in RFC 9110 section 13.2.2 order: `If-Match` (strong comparison), else
  `If-Unmodified-Since`, failing: 412 with an empty body; then `If-None-Match` (weak
  comparison), else `If-Modified-Since`, matching: 304. Dates compare with the exact
  mtime, not the rounded `Last-Modified`.
- `If-Range` is read as an HTTP date: a file modified after it is sent whole (200); an
  `If-Range` that is no date (an ETag) is ignored and the range applies, as aiohttp did.
- `Range` per `transfer.core.ranges`; an unsatisfiable one is 416 with
  `Content-Range: bytes */size` and an empty body (not problem+json).

Invariant: the `PublishedFile` handed to `FileDownload` is closed once the answer is
sent or has failed.
"""

from __future__ import annotations

import enum

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETAG_ANY, ETag

from transfer.core.errors import BadRequest
from transfer.core.ranges import Span, parse_range_header, select_span, unsatisfied_range
from transfer.store.base import PublishedFile

PIECE = 256 * 1024  # bytes read from the store per write, as aiohttp's chunk size
OCTETS = "application/octet-stream"


class Verdict(enum.Enum):
    SEND = "send"
    NOT_MODIFIED = "not_modified"  # 304
    FAILED = "precondition_failed"  # 412


class Whole(enum.Enum):
    FILE = "file"  # no range asked for (or If-Range said the file changed): 200
    UNSATISFIABLE = "unsatisfiable"  # 416


def etag_of(published: PublishedFile) -> str:
    return f"{published.modified_ns:x}-{published.size:x}"


def seconds(modified_ns: int) -> float:
    """A nanosecond timestamp as `os.stat`'s float `st_mtime` computes it."""
    whole, fraction = divmod(modified_ns, 1_000_000_000)
    return whole + fraction * 1e-9


def preconditions(request: web.BaseRequest, etag: str, mtime: float) -> Verdict:
    """Evaluate the conditional headers against the file's validators."""
    if_match = request.if_match
    if if_match is not None and not _matches(etag, if_match, weak=False):
        return Verdict.FAILED
    since = request.if_unmodified_since
    if since is not None and if_match is None and mtime > since.timestamp():
        return Verdict.FAILED
    if_none_match = request.if_none_match
    if if_none_match is not None and _matches(etag, if_none_match, weak=True):
        return Verdict.NOT_MODIFIED
    since = request.if_modified_since
    if since is not None and if_none_match is None and mtime <= since.timestamp():
        return Verdict.NOT_MODIFIED
    return Verdict.SEND


def _matches(etag: str, candidates: tuple[ETag, ...], *, weak: bool) -> bool:
    if len(candidates) == 1 and candidates[0].value == ETAG_ANY:
        return True
    return any(c.value == etag for c in candidates if weak or not c.is_weak)


def requested(request: web.BaseRequest, size: int, mtime: float) -> Span | Whole:
    """The span the `Range` header selects, or what to answer instead."""
    header = request.headers.get(hdrs.RANGE)
    if_range = request.if_range
    if header is None or (if_range is not None and mtime > if_range.timestamp()):
        return Whole.FILE
    try:
        span = select_span(parse_range_header(header), size)
    except BadRequest:
        return Whole.UNSATISFIABLE
    return Whole.UNSATISFIABLE if span is None else span


class FileDownload(web.StreamResponse):
    """The answer to `GET`/`HEAD /files/{id}` for one open `PublishedFile`."""

    def __init__(self, published: PublishedFile) -> None:
        super().__init__(headers={hdrs.CONTENT_TYPE: OCTETS})
        self._file = published

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        try:
            return await self._answer(request)
        finally:
            await self._file.close()

    async def _answer(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        size, etag, mtime = self._file.size, etag_of(self._file), seconds(self._file.modified_ns)
        verdict = preconditions(request, etag, mtime)
        if verdict is Verdict.FAILED:
            self.set_status(412)
            self.content_length = 0
            return await super().prepare(request)
        if verdict is Verdict.NOT_MODIFIED:
            self.set_status(304)
            self.etag, self.last_modified = etag, mtime
            return await super().prepare(request)
        span = requested(request, size, mtime)
        if span is Whole.UNSATISFIABLE:
            self.headers[hdrs.CONTENT_RANGE] = unsatisfied_range(size)
            self.set_status(416)
            return await super().prepare(request)
        if span is Whole.FILE:
            return await self._send(request, Span(0, size), ranged=False)
        return await self._send(request, span, ranged=True)

    async def _send(
        self, request: web.BaseRequest, span: Span, *, ranged: bool
    ) -> AbstractStreamWriter | None:
        """200 or 206 with the span's bytes (none for HEAD)."""
        if ranged:
            self.set_status(206)
        self.etag = etag_of(self._file)
        self.last_modified = seconds(self._file.modified_ns)
        self.content_length = span.count
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        if ranged:
            self.headers[hdrs.CONTENT_RANGE] = span.content_range(self._file.size)
        writer = await super().prepare(request)
        if span.count and request.method != hdrs.METH_HEAD:
            await self._stream(span)
        return writer

    async def _stream(self, span: Span) -> None:
        position, end = span.start, span.start + span.count
        while position < end:
            data = await self._file.read(position, min(PIECE, end - position))
            if not data:
                break  # published files never shrink; aiohttp reports the short body
            await self.write(data)
            position += len(data)
