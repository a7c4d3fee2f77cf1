"""`Client` over the IETF "Resumable Uploads for HTTP" draft, as `transfer serve` speaks it
under /resumable/ (docs/protocol.md, "IETF resumable uploads").

    create       HEAD the adopted URL if there is one; else POST {endpoint} without
                 content: Upload-Complete ?0 (?1 for an empty file), Upload-Length,
                 Content-Disposition, Repr-Digest; 201 with Location
    query        HEAD {url}: Upload-Offset, Upload-Complete, Repr-Digest once published
    put_chunk    PATCH {url}: Upload-Offset, Upload-Complete (?1 on the last chunk),
                 Content-Digest; 204 (more to come) or 200 (published, Repr-Digest)

Invariants:
- No `Upload-Draft-Interop-Version` is sent: the server then applies the latest rules
  and never answers 104 (an interim response aiohttp's client does not expect).
- The server names the upload: `create` returns its `location` with `created=True`
  before any byte is sent (the uploader journals it first); a restart adopts it.
- A file is confirmed only by the `Repr-Digest` (xxh3-128) of a published upload. An
  upload holding all its bytes unpublished (a server killed before publication) is
  finished with an empty `Upload-Complete: ?1` PATCH.
- Status classes follow `client.py`: 408, 429, 5xx and `chunk_digest_mismatch` are
  `TransientError`; a vanished upload (404) is forgotten and transient, so the retry
  creates it anew; 409 is a `RemoteError` the uploader answers with a HEAD.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

import aiohttp

from transfer.common.http import Piecewise
from transfer.core import integrity
from transfer.core.errors import BadRequest, Code, RemoteError, TransientError
from transfer.core.tus import format_metadata
from transfer.sender.client import Announce, Body, Corruptor, Progress, digest_of, payload_of
from transfer.sender.urlbook import Answer, UrlBook, exchange, refusal

PARTIAL_UPLOAD = "application/partial-upload"
_TRANSIENT_CODES = frozenset({Code.CHUNK_DIGEST_MISMATCH})


class IetfClient(UrlBook):
    """`Client` for the IETF resumable-upload draft at `endpoint`."""

    inline_create = False
    overlapping_chunks = False
    checks_chunks = False  # a third-party server may not

    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, *, corruptor: Corruptor | None = None
    ) -> None:
        self._session = session
        self._endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self._corrupt = corruptor
        super().__init__()

    async def create(
        self, file_id: str, *, name: str, size: int, metadata: Mapping[str, str], digest: bytes
    ) -> Progress:
        """The adopted upload if the server still has it; else a new one (`created`)."""
        if (known := await self._adopted(file_id)) is not None:
            return known
        headers = {
            "Upload-Complete": "?1" if size == 0 else "?0",
            "Upload-Length": str(size),
            # The name and metadata as tus spells them (our server reads them on this
            # endpoint too); Content-Disposition only where a quoted string can hold it.
            "Upload-Metadata": format_metadata({"filename": name, **metadata}),
            **_disposition(name),
            "Repr-Digest": integrity.format_digest_field({integrity.PREFERRED: digest}),
        }
        answer = await self._send("POST", self._endpoint, headers=headers, data=b"")
        if answer.status != 201 or "Location" not in answer.headers:
            raise _refusal(answer)
        url = urljoin(self._endpoint, answer.headers["Location"])
        progress = _progress(answer, url)
        self._urls[file_id] = url  # after the last check: a URL known here gets journaled
        return Progress(progress.offset, progress.record, location=url, created=True)

    async def query(self, file_id: str) -> Progress:
        """HEAD the upload; `missing` (URL forgotten) if the server has none."""
        url = self._urls.get(file_id)
        if url is None:
            return Progress(offset=0, missing=True)
        answer = await self._send("HEAD", url)
        if answer.status == 404:
            self.forget(file_id)
            return Progress(offset=0, missing=True)
        if answer.status not in (200, 204):
            raise _refusal(answer)
        progress = _progress(answer, url)
        length = answer.headers.get("Upload-Length", "")
        if progress.record is None and length.isdigit() and progress.offset == int(length):
            return await self.finish_empty(file_id)  # all bytes, not published yet
        return progress

    async def put_chunk(
        self, file_id: str, start: int, data: Body, total: int, *, announce: Announce | None = None
    ) -> Progress:
        url = self._url(file_id)
        headers = {
            "Upload-Offset": str(start),
            "Upload-Complete": "?1" if start + len(data) >= total else "?0",
            "Content-Type": PARTIAL_UPLOAD,
            "Content-Digest": integrity.format_digest_field(
                {integrity.PREFERRED: await digest_of(data)}
            ),
        }
        body = await payload_of(data, self._corrupt)
        return await self._patch(file_id, url, headers, body)

    async def finish_empty(self, file_id: str, *, announce: Announce | None = None) -> Progress:
        """An empty `Upload-Complete: ?1` PATCH at the end: publishes (or re-answers) it."""
        url = self._url(file_id)
        head = await self._send("HEAD", url)
        offset = head.headers.get("Upload-Offset", "0")
        headers = {"Upload-Offset": offset, "Upload-Complete": "?1", "Content-Type": PARTIAL_UPLOAD}
        return await self._patch(file_id, url, headers, Piecewise(b""))

    async def _patch(
        self, file_id: str, url: str, headers: dict[str, str], body: aiohttp.Payload
    ) -> Progress:
        answer = await self._send("PATCH", url, headers=headers, data=body)
        if answer.status == 404:
            self.forget(file_id)
            raise TransientError(f"PATCH {url}: the upload is gone (404); recreating")
        if answer.status not in (200, 204):
            raise _refusal(answer)
        return _progress(answer, url)

    def _url(self, file_id: str) -> str:
        url = self._urls.get(file_id)
        if url is None:  # the uploader creates (or adopts) before it sends
            raise TransientError(f"no upload is known for {file_id}; creating one")
        return url

    async def _send(self, method: str, url: str, **kwargs: Any) -> Answer:
        return await exchange(self._session, method, url, **kwargs)


def _progress(answer: Answer, url: str) -> Progress:
    """Offset, and the record once `Upload-Complete: ?1` came with a `Repr-Digest`.

    Raises:
        TransientError: no usable `Upload-Offset`, or a malformed `Repr-Digest`.
    """
    value = answer.headers.get("Upload-Offset", "")
    if not value.isdigit():
        raise TransientError(f"server sent no usable Upload-Offset: {value!r}")
    offset = int(value)
    field = answer.headers.get("Repr-Digest")
    if answer.headers.get("Upload-Complete") != "?1" or field is None:
        return Progress(offset, location=url)
    try:
        digests = integrity.to_hex(integrity.parse_digest_field(field))
    except BadRequest as exc:
        raise TransientError(f"server sent a bad Repr-Digest: {exc}") from exc
    record = {"size": offset, "digests": digests, "complete": True}
    return Progress(offset, record=record, location=url)


def _refusal(answer: Answer) -> TransientError | RemoteError:
    return refusal(answer, transient=(408, 429), codes=_TRANSIENT_CODES)


def _disposition(name: str) -> dict[str, str]:
    if name.isascii() and name.isprintable() and not any(c in name for c in '"\\'):
        return {"Content-Disposition": f'attachment; filename="{name}"'}
    return {}
