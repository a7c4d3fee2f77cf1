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
