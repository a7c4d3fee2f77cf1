"""The one way `transfer` makes an HTTP client session (the CLI and every test use it).

Invariant: no session made here re-sends a request on its own. aiohttp silently repeats
an idempotent request (our PUTs) once when a kept-alive connection breaks; the sender's
retry policy must be the only one, so that every retry is logged, counted and resumes
from the server's offset. aiohttp has no public switch for this, only the private
`_retry_connection` attribute: `without_hidden_retries` refuses to run without it (and
tests/test_http.py fails first), and pyproject.toml bounds the aiohttp version, so an
upgrade that renames it cannot silently turn the hidden retry back on.
"""

from __future__ import annotations

import ssl

import aiohttp

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
