"""The `104 (Upload Resumption Supported)` interim response, written by hand.

aiohttp's `StreamResponse` has no API for a 1xx. aiohttp itself sends one, though: its
default `Expect: 100-continue` handler writes `HTTP/1.1 100 Continue\\r\\n\\r\\n` through
`request.writer` before the handler runs. We do the same, once the upload exists and
before its content is read, with the draft's fields:

    HTTP/1.1 104 Upload Resumption Supported
    Location: <the upload's URL>
    Upload-Draft-Interop-Version: <the request's>
    Upload-Limit: <limits>            (interop 6 and 8)

Why this is safe: before `prepare` the writer holds no buffered headers, is not in
chunked mode and compresses nothing, so `write` hands the bytes straight to the
transport, ahead of the final response's status line; aiohttp answers the requests of
one connection one after another, so the bytes cannot land inside another answer.

When it is not sent (the final answer still is):
- the request is not HTTP/1.1 (an HTTP/1.0 client cannot parse a 1xx; aiohttp serves
  no HTTP/2, where this framing would be wrong anyway);
- the request carried no `Upload-Draft-Interop-Version` (the draft: a server MUST NOT
  send 104 when it is missing or mismatching; an unknown one was refused before);
- the connection is gone.

Invariant: at most one 104 per request, always before the final response.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_writer import HttpVersion11

from transfer.core import ietf

STATUS_LINE = "HTTP/1.1 104 Upload Resumption Supported"


def interim_bytes(location: str, interop: ietf.Interop, limits: str | None) -> bytes:
    """The 104's bytes: status line, fields, empty line."""
    lines = [STATUS_LINE, f"Location: {location}", f"Upload-Draft-Interop-Version: {interop.value}"]
    if limits:
        lines.append(f"Upload-Limit: {limits}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def may_offer(request: web.Request) -> bool:
    """Whether the request's headers allow a 104 (the connection may still be gone): a
    creation that may answer one announces its upload before the content is read."""
    interop = ietf.parse_interop(request.headers.get("Upload-Draft-Interop-Version"))
    return interop is not None and request.version == HttpVersion11


async def offer_resumption(request: web.Request, location: str, limits: str | None) -> bool:
    """Send the 104 if the module docstring's conditions allow; whether it was sent."""
    interop = ietf.parse_interop(request.headers.get("Upload-Draft-Interop-Version"))
    if interop is None or not may_offer(request):
        return False
    if request.transport is None or request.transport.is_closing():
        return False
    await request.writer.write(interim_bytes(location, interop, limits))
    return True
