"""What the tus and IETF clients share: the book of upload URLs a server assigned, one
request read whole (`exchange`), and the error an unexpected answer stands for (`refusal`).

Invariant: a URL is in the book only once it may be journaled (the server answered its
creation), or because the journal handed it back (`adopt`) after a restart; `create`
first asks whether an adopted upload still exists before making a second one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from transfer.core.errors import Code, RemoteError, TransientError
from transfer.sender.client import Progress, problem_of, retry_after


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's whole answer, read before the connection went back to the pool."""

    status: int
    headers: Mapping[str, str]
    payload: bytes


async def exchange(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    """One request (no redirects followed), read whole.

    Raises:
        RemoteError: an untrusted certificate (waiting will not make it trusted).
        TransientError: any other failure to get an answer.
    """
    try:
        async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
            return Answer(resp.status, resp.headers, await resp.read())
    except aiohttp.ClientConnectorCertificateError as exc:
        raise RemoteError(0, Code.CERTIFICATE_VERIFY_FAILED, str(exc)) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc


def refusal(
    answer: Answer,
    *,
    transient: Collection[int],
    codes: Collection[str] = (),
    expected: str = "the headers expected",
) -> TransientError | RemoteError:
    """The error an unexpected answer stands for: transient for the `transient` statuses,
    any 5xx and the problem `codes`; a 2xx without what the caller needed is transient
    too (a broken answer); anything else is the server's final word."""
    code, detail = problem_of(answer.payload)
    status = answer.status
    if status in transient or status >= 500 or code in codes:
        return TransientError(
            f"server answered {status} {code}: {detail}",
            retry_after=retry_after(answer.headers),
            status=status,
        )
    if 200 <= status < 300:
        return TransientError(f"server answered {status} without {expected}")
    return RemoteError(status, code, detail)


class UrlBook:
    """File id -> upload URL, while a file is delivered. Subclasses define `query`."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    def adopt(self, file_id: str, location: str | None) -> None:
        if location is not None:
            self._urls[file_id] = location

    def forget(self, file_id: str) -> None:
        self._urls.pop(file_id, None)

    async def query(self, file_id: str) -> Progress:
        raise NotImplementedError

    async def _adopted(self, file_id: str) -> Progress | None:
        """The adopted upload's state if the server still has it, else None."""
        if file_id in self._urls:
            known = await self.query(file_id)
            if not known.missing:
                return known
        return None
