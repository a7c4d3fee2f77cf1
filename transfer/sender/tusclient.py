"""`Client` over tus 1.0.0 (https://tus.io/protocols/resumable-upload): any tus server.

    create       HEAD the adopted URL if there is one; else POST {endpoint} (creation):
                 Upload-Length, Upload-Metadata, and our `Repr-Digest` (a server that
                 does not know it ignores it; `transfer serve` verifies the file with it)
    query        HEAD {url}: Upload-Offset; 404/410 forget the URL (`missing`)
    put_chunk    PATCH {url} at Upload-Offset, with Upload-Checksum when offered; 204
    finish_empty HEAD {url} (an empty upload is complete at creation)

Confirmation. When a PATCH (or HEAD) shows Upload-Offset == Upload-Length, a
`Repr-Digest` carrying xxh3-128 confirms by the whole-file digest: on that answer (what
`transfer serve` adds once a PATCH published the upload), else on one more HEAD.
Without one there either, the client first sends an empty PATCH
at the end (a server killed between the last byte and publication then verifies and
publishes; others answer 204) and HEADs again. A server that offers none is trusted only
as far as the protocol allows: `per-chunk-checksum` when OPTIONS announced the checksum
extension (every PATCH then carried one), else `length-only`. `Progress.verified` says
which; the uploader logs and journals it.

Invariants:
- The server names the upload (`Location`): `create` returns it with `created=True`
  before any byte is sent, so the uploader can journal it first; a restart `adopt`s
  the journaled URL and HEADs it instead of creating a second upload.
- No creation carries the file (`creation-with-upload` is not used, `inline_create`
  False): its URL would be unknown until the answer, so a sender killed after the
  server published the file and before its journal record would leave a published
  copy no journal names (docs/protocol.md, "Sending with `--protocol`").
- PATCHes of one file are sequential (`overlapping_chunks` False): tus allows no gap
  and a tus server may abort a PATCH when the next one takes the upload's lock.
- Status classes follow `client.py`: 408, 429, 5xx and 460 (a body damaged in transit)
  are `TransientError`; a PATCH to a vanished upload (404/410) forgets its URL and is
  transient too, so the retry creates the upload anew; 409 is a `RemoteError` the
  uploader answers with a HEAD; other 4xx are `RemoteError`.
- Like `client.py`, this module decides nothing about retries or resumption.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import aiohttp

from transfer.core import integrity
from transfer.core.errors import BadRequest, RemoteError, TransientError
from transfer.core.tus import CHECKSUMS, OFFSET_OCTET_STREAM, VERSION, format_metadata
from transfer.sender.client import (
    Announce,
    Body,
    Corruptor,
    Progress,
    Verified,
    digest_of,
    payload_of,
)
from transfer.sender.urlbook import Answer, UrlBook, exchange, refusal

_GONE = (404, 410)
# Checksum algorithms we would send, best first (tus names; see core.tus.CHECKSUMS).
_PREFERENCE = ("xxh3-128", "sha256", "sha1", "md5")


@dataclass(frozen=True, slots=True)
class Discovery:
    """What OPTIONS announced that the client uses: the checksum algorithm (tus name)."""

    checksum: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Discovery:
        extensions = _tokens(headers.get("Tus-Extension"))
        offered = _tokens(headers.get("Tus-Checksum-Algorithm"))
        if "checksum" not in extensions:
            return cls(checksum=None)
        return cls(checksum=next((name for name in _PREFERENCE if name in offered), None))

    @property
    def verified(self) -> Verified:
        """What a confirmation without a whole-file digest rests on."""
        return Verified.PER_CHUNK_CHECKSUM if self.checksum else Verified.LENGTH_ONLY


class TusClient(UrlBook):
    """`Client` for a tus 1.0.0 server whose creation URL is `endpoint`."""

    inline_create = False
    overlapping_chunks = False
    checks_chunks = False  # a third-party server may not

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        *,
        corruptor: Corruptor | None = None,
    ) -> None:
        self._session = session
        self._endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self._corrupt = corruptor
        super().__init__()
        self._discovery: Discovery | None = None  # OPTIONS, asked once
        self._discovering = asyncio.Lock()

    async def create(
        self, file_id: str, *, name: str, size: int, metadata: Mapping[str, str], digest: bytes
    ) -> Progress:
        """The adopted upload if the server still has it; else a new one (`created`)."""
        if (known := await self._adopted(file_id)) is not None:
            return known
        headers = {
            "Upload-Length": str(size),
            "Upload-Metadata": format_metadata({"filename": name, **metadata}),
            "Repr-Digest": integrity.format_digest_field({integrity.PREFERRED: digest}),
        }
        answer = await self._send("POST", self._endpoint, headers=headers)
        if answer.status != 201 or "Location" not in answer.headers:
            raise _refusal(answer)
        url = urljoin(self._endpoint, answer.headers["Location"])
        offset = _number(answer.headers, "Upload-Offset", required=False) or 0  # optional here
        self._urls[file_id] = url  # after the last check: a URL known here gets journaled
        if offset >= size:  # an empty file is complete at creation
            return await self._confirmation(url, answer=answer, created=True)
        return Progress(offset=offset, location=url, created=True)

    async def query(self, file_id: str) -> Progress:
        """HEAD the upload: its offset, or `missing` (URL forgotten) if the server has none."""
        url = self._urls.get(file_id)
        if url is None:
            return Progress(offset=0, missing=True)
        answer = await self._send("HEAD", url)
        if answer.status in _GONE:
            self.forget(file_id)
            return Progress(offset=0, missing=True, location=url)
        if answer.status != 200:
            raise _refusal(answer)
        offset, length = _offset(answer.headers), _length(answer.headers)
        if length is not None and offset == length:
            return await self._confirmation(url, answer=answer)
        return Progress(offset=offset, location=url)

    async def put_chunk(
        self, file_id: str, start: int, data: Body, total: int, *, announce: Announce | None = None
    ) -> Progress:
        """PATCH `data` at `start`; the confirmation once the server holds `total` bytes."""
        url = self._url(file_id)
        headers = {"Upload-Offset": str(start), "Content-Type": OFFSET_OCTET_STREAM}
        discovery = await self._discover()
        if discovery.checksum is not None:
            headers["Upload-Checksum"] = await _checksum(discovery.checksum, data)
        body = await payload_of(data, self._corrupt)
        answer = await self._send("PATCH", url, headers=headers, data=body)
        if answer.status in _GONE:
            self.forget(file_id)
            raise TransientError(f"PATCH {url}: the upload is gone ({answer.status}); recreating")
        if answer.status != 204:
            raise _refusal(answer)
        offset = _offset(answer.headers)
        if offset >= total:
            return await self._confirmation(url, answer=answer)
        return Progress(offset=offset, location=url)

    async def finish_empty(self, file_id: str, *, announce: Announce | None = None) -> Progress:
        """An empty upload is complete at creation: confirm it."""
        return await self.query(file_id)

    def _url(self, file_id: str) -> str:
        url = self._urls.get(file_id)
        if url is None:  # the uploader creates (or adopts) before it sends
            raise TransientError(f"no tus upload is known for {file_id}; creating one")
        return url

    async def _discover(self) -> Discovery:
        """OPTIONS {endpoint}, once per client: which checksum, if any, to send."""
        if self._discovery is None:
            async with self._discovering:  # concurrent first files ask once, not each
                if self._discovery is None:
                    answer = await self._send("OPTIONS", self._endpoint)
                    if answer.status not in (200, 204):
                        raise _refusal(answer)
                    self._discovery = Discovery.from_headers(answer.headers)
        return self._discovery

    async def _confirmation(self, url: str, *, answer: Answer, created: bool = False) -> Progress:
        """The completed upload as a record: the server's whole-file digest if it offers
        one (on `answer`, the HEAD, PATCH or creation that showed the upload complete,
        else on a fresh HEAD), else what the protocol allows."""
        digests = _repr_digests(answer.headers.get("Repr-Digest"))
        if integrity.PREFERRED not in digests and answer.status != 200:
            answer = await self._described(url, None)  # not a HEAD: ask one
            digests = _repr_digests(answer.headers.get("Repr-Digest"))
        size = _offset(answer.headers)
        if integrity.PREFERRED not in digests:
            # All bytes are stored but no digest is shown: a server killed between the
            # last byte and publication has not verified the file yet. An empty PATCH at
            # the end finishes it (`transfer serve` verifies and publishes; a server
            # without whole-file digests answers 204 and changes nothing); then look again.
            await self._finish(url, size)
            answer = await self._described(url, None)
            digests = _repr_digests(answer.headers.get("Repr-Digest"))
        record: dict[str, Any] = {"size": size, "digests": digests, "complete": True}
        if integrity.PREFERRED in digests:
            verified = Verified.WHOLE_FILE_DIGEST
        else:
            verified = (await self._discover()).verified
        return Progress(size, record=record, location=url, created=created, verified=verified)

    async def _described(self, url: str, head: Answer | None) -> Answer:
        answer = head or await self._send("HEAD", url)
        if answer.status != 200:
            raise _refusal(answer)
        return answer

    async def _finish(self, url: str, size: int) -> None:
        headers = {"Upload-Offset": str(size), "Content-Type": OFFSET_OCTET_STREAM}
        answer = await self._send("PATCH", url, headers=headers, data=b"")
        if answer.status != 204:
            raise _refusal(answer)

    async def _send(self, method: str, url: str, **kwargs: Any) -> Answer:
        headers = {"Tus-Resumable": VERSION, **kwargs.pop("headers", {})}
        return await exchange(self._session, method, url, headers=headers, **kwargs)


def _refusal(answer: Answer) -> TransientError | RemoteError:
    """The error an unexpected answer stands for (see the module's status classes)."""
    return refusal(answer, transient=(408, 429, 460), expected="the tus headers expected")


def _offset(headers: Mapping[str, str]) -> int:
    """`Upload-Offset`. Raises TransientError when absent or malformed (a broken answer)."""
    return _number(headers, "Upload-Offset", required=True) or 0


def _length(headers: Mapping[str, str]) -> int | None:
    return _number(headers, "Upload-Length", required=False)


def _number(headers: Mapping[str, str], name: str, *, required: bool) -> int | None:
    value = headers.get(name)
    if value is None and not required:
        return None
    if value is None or not value.strip().isdigit():
        raise TransientError(f"server sent no usable {name}: {value!r}")
    return int(value)


def _repr_digests(value: str | None) -> dict[str, str]:
    """The hex digests of a `Repr-Digest` answer; {} when absent.

    Raises:
        TransientError: a malformed field (a broken answer is asked again, never misread).
    """
    if value is None:
        return {}
    try:
        return integrity.to_hex(integrity.parse_digest_field(value))
    except BadRequest as exc:
        raise TransientError(f"server sent a bad Repr-Digest: {exc}") from exc


async def _checksum(name: str, data: Body) -> str:
    """`Upload-Checksum: <tus name> <base64>` of `data`."""
    digest = await digest_of(data, CHECKSUMS[name])
    return f"{name} {base64.b64encode(digest).decode('ascii')}"


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}
