"""The one way `transfer` makes an HTTP client session (the CLI and every test use it),
and the sender's request bodies (`Piecewise` bytes, `RegionPayload` from a file).

Invariant: no session made here re-sends a request on its own. aiohttp silently repeats
an idempotent request (our PUTs) once when a kept-alive connection breaks; the sender's
retry policy must be the only one, so that every retry is logged, counted and resumes
from the server's offset. aiohttp has no public switch for this, only the private
`_retry_connection` attribute: `without_hidden_retries` refuses to run without it (and
tests/test_http.py fails first), and pyproject.toml bounds the aiohttp version, so an
upgrade that renames it cannot silently turn the hidden retry back on.
"""

from __future__ import annotations

import asyncio
import io
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.http_writer import StreamWriter

_PRIVATE_RETRY = "_retry_connection"
PIECE = 1024 * 1024  # bytes of a `Piecewise` body handed to the transport at a time


class HiddenRetryUnknown(RuntimeError):
    """This aiohttp has no `_retry_connection`: check how it retries before using it."""


def without_hidden_retries(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Switch off aiohttp's one silent re-send of idempotent requests; returns `session`.

    Raises:
        HiddenRetryUnknown: the private attribute is gone (an aiohttp this code does not know).
    """
    if not hasattr(session, _PRIVATE_RETRY):
        raise HiddenRetryUnknown(
            f"aiohttp {aiohttp.__version__} has no ClientSession.{_PRIVATE_RETRY}"
        )
    setattr(session, _PRIVATE_RETRY, False)
    return session


def new_session(
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    limit: int = 100,
    timeout: aiohttp.ClientTimeout | None = None,
    force_close: bool = False,
) -> aiohttp.ClientSession:
    """A client session with bearer auth, TLS trust and a connection limit, and no
    hidden retries; `force_close` opens one connection per request. Call it inside a
    running event loop."""
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {token}"} if token else None,
        connector=aiohttp.TCPConnector(
            limit=limit, ssl=ssl_context or True, force_close=force_close
        ),
        timeout=timeout or aiohttp.ClientTimeout(total=None, connect=10, sock_read=60),
    )
    return without_hidden_retries(session)


class Piecewise(aiohttp.BytesPayload):
    """A bytes body written `PIECE` bytes at a time, waiting for the socket to drain
    between pieces (issue 13: sender memory).

    aiohttp hands a plain bytes body to the transport in one write: on Python < 3.12 it
    first joins it with the headers (a copy of the whole body), and asyncio copies what
    the socket did not take at once into its buffer (a second copy): an 8 MiB chunk
    cost 24 MiB while in flight. Here only the first piece is joined with the headers
    and the transport never holds more than about one piece; Content-Length is still
    the body's length (no chunked encoding), and the bytes sent are the same.
    """

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        for start in range(0, len(view), PIECE):
            await writer.write(view[start : start + PIECE])


@dataclass(frozen=True, slots=True)
class Region:
    """`count` bytes of an open file from `offset`, and the digests of those bytes as
    the caller read them before the request (RFC 9530 names; see `RegionPayload`)."""

    file: io.FileIO  # binary, unbuffered; read only at explicit offsets, never its position
    offset: int
    count: int
    digests: Mapping[str, bytes]

    def __len__(self) -> int:
        return self.count

    def read(self) -> bytes:
        """The region's bytes as they are now (blocking: call it in a thread)."""
        return os.pread(self.file.fileno(), self.count, self.offset)


class ShortRegion(OSError):
    """The file ended before the region did: it shrank after its digests were taken."""


class RegionPayload(aiohttp.Payload):
    """A request body sent straight from a file: `sendfile` moves the bytes from the page
    cache to the socket without passing through this process (issue 13: sender memory
    and CPU). Where the transport cannot (TLS), `PIECE` bytes at a time are read in a
    thread, each piece a fresh `bytes`: a transport may keep a view of what it has not
    sent yet, so a buffer is never refilled under it.

    Invariant: the bytes sent are read again from the file, so they equal the bytes
    digested only if the file did not change in between; the caller puts the digests
    taken before the send in the request (Content-Digest, Upload-Checksum) and the
    server refuses a body that differs. A file cut short raises `ShortRegion` (an
    `OSError`: aiohttp fails the request and drops the connection) instead of
    leaving the server waiting for the rest of the announced length.
    """

    _autoclose = True  # the file belongs to whoever made the region

    def __init__(self, region: Region) -> None:
        super().__init__(region, content_type="application/octet-stream")
        self._size = region.count
        self._region = region

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file region is not text")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        region = self._region
        count = region.count if content_length is None else min(region.count, content_length)
        sent = await _sendfile(writer, region, count)
        while sent < count:
            piece = await asyncio.to_thread(
                os.pread, region.file.fileno(), min(PIECE, count - sent), region.offset + sent
            )
            if not piece:
                raise ShortRegion(f"the file ends before byte {region.offset + count}")
            await writer.write(piece)
            sent += len(piece)


async def _sendfile(writer: aiohttp.abc.AbstractStreamWriter, region: Region, count: int) -> int:
    """Send the region with `loop.sendfile` where the transport allows it; the bytes sent
    (0: not possible here, nothing sent, the caller reads pieces instead)."""
    if not isinstance(writer, StreamWriter):
        return 0
    writer.send_headers()  # aiohttp holds them back to join them with the first piece
    transport = writer.transport
    if transport is None or count == 0:
        return 0
    loop = asyncio.get_running_loop()
    try:
        sent = await loop.sendfile(transport, region.file, region.offset, count, fallback=False)
    except (RuntimeError, NotImplementedError):  # no native sendfile: TLS, another loop
        return 0
    if sent < count:
        raise ShortRegion(f"the file ends before byte {region.offset + count}")
    return sent
