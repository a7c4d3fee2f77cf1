"""One HTTP exchange at a time with a `transfer serve` (or any GCS-style) server.

Every method sends one request and turns the answer into a `Progress` or an error:

    200            Progress(offset=size, record=...)      the upload is complete
    308            Progress(offset=Range end + 1)
    404            Progress(offset=0, missing=True)       (queries only)
    408, 429, 5xx  TransientError (with Retry-After)      retried by the caller
    400 chunk_digest_mismatch  TransientError              the chunk was damaged in transit
    other 4xx      RemoteError(status, code)              not retried
    connection errors and timeouts: TransientError

Invariant: this module decides nothing about retries or resumption; the sender does.

`Client` is the seam between the uploader and a protocol: one implementation per
protocol module (native: `UploadClient` here; tus: `tusclient.TusClient`), chosen by
the CLI (`send --protocol`). The uploader speaks only `Client` and `Progress`:

- a `Progress` with a `record` means complete; its `verified` says what the protocol let
  the client check (`whole-file-digest` when the server returned the file's xxh3-128);
- `location` is the upload's URL where the server assigns one (tus), and `created` marks
  the answer that created it: the uploader journals such a URL before sending a byte;
- `inline_create`: the first chunk may create the upload (native only);
  `overlapping_chunks`: chunks of one file may be in flight at once (native only: a
  tus server may abort a PATCH when the next one takes the upload's lock);
  `checks_chunks`: the server verifies every chunk's Content-Digest and the Repr-Digest
  before it publishes (native only), so the sender's journaling pass may stand in for
  the first attempt's check (sender/localfile.py, "One pass").
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import aiohttp

from transfer.common.http import Piecewise, Region, RegionPayload
from transfer.core import integrity, protocol
from transfer.core.errors import BadRequest, Code, RemoteError, TransientError
from transfer.sender.reasons import Reason

_TRANSIENT_CODES = frozenset({Code.CHUNK_DIGEST_MISMATCH})
# A chunk: its bytes (a view of a file read whole, sender/localfile.py), or a region of
# a file, sent from the file (`http.RegionPayload`) with the digest taken as it was read.
Body = bytes | memoryview | Region


async def digest_of(data: Body, algorithm: str = integrity.PREFERRED) -> bytes:
    """The digest of a chunk's bytes: for a region, the one taken when it was read (its
    xxh3-128) or, for another algorithm (a tus server's checksum), one more read; a view
    is hashed in place (the hashers read any buffer; `integrity.digest_of`'s annotation
    only says bytes)."""
    if not isinstance(data, Region):
        return integrity.digest_of(cast(bytes, data), algorithm)
    known = data.digests.get(algorithm)
    if known is None:
        known = integrity.digest_of(await asyncio.to_thread(data.read), algorithm)
    return known


def announced_digest(data: Body, start: int, total: int, announce: Announce | None) -> bytes | None:
    """A chunk's xxh3-128 without hashing it again, where it is known: bytes that are the
    whole file have the file's digest, which `announce` carries (the journaled digest,
    which those very bytes were checked against: sender/localfile.py). Saves a pass over
    every small file (~25 us for 0.5 MiB). Were the bytes anything else, the server
    would refuse them for this Content-Digest (`chunk_digest_mismatch`): never accepted.
    None: hash the chunk (`digest_of`)."""
    if announce is None or isinstance(data, Region) or start != 0 or len(data) != total:
        return None
    return announce.digest


async def payload_of(data: Body, corrupt: Corruptor | None) -> aiohttp.Payload:
    """A chunk's request body: a region straight from its file, bytes a piece at a time;
    with the chaos demo's corruptor, a copy of the bytes it may have damaged."""
    if corrupt is None:
        return RegionPayload(data) if isinstance(data, Region) else Piecewise(data)
    raw = await asyncio.to_thread(data.read) if isinstance(data, Region) else bytes(data)
    return Piecewise(corrupt(raw))


class Verified(enum.StrEnum):
    """What a confirmation rests on; logged as `verified` and journaled when it is less
    than the whole-file digest. Values are read back from logs and journals: never rename."""

    WHOLE_FILE_DIGEST = "whole-file-digest"  # the server's xxh3-128 of the whole file
    PER_CHUNK_CHECKSUM = "per-chunk-checksum"  # every PATCH body's checksum, and the length
    LENGTH_ONLY = "length-only"  # only the byte count: the server offers no checksum


@dataclass(frozen=True, slots=True)
class Progress:
    """What the server said about an upload."""

    offset: int
    record: Mapping[str, Any] | None = None
    missing: bool = False
    location: str | None = None  # the upload's URL, where the server assigns it (tus)
    created: bool = False  # this answer created the upload at `location`
    verified: Verified = Verified.WHOLE_FILE_DIGEST  # what a `record` was checked by

    @property
    def digest(self) -> str | None:
        """The server's hex xxh3-128 of the completed file."""
        if self.record is None:
            return None
        digests = self.record.get("digests") or {}
        value = digests.get(integrity.PREFERRED)
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Announce:
    """What a creating PUT says about its upload: `Upload-Metadata` and `Repr-Digest`."""

    name: str
    metadata: Mapping[str, str]
    digest: bytes

    def headers(self) -> dict[str, str]:
        return {
            "Upload-Metadata": protocol.format_upload_metadata(self.name, dict(self.metadata)),
            "Repr-Digest": integrity.format_digest_field({integrity.PREFERRED: self.digest}),
        }


class Corruptor:
    """Flips one bit in a chunk with probability `rate` (seeded): the chaos demo."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._rng = random.Random(seed)
        self.flips = 0

    def __call__(self, data: bytes) -> bytes:
        if not data or self._rng.random() >= self.rate:
            return data
        damaged = bytearray(data)
        position = self._rng.randrange(len(damaged))
        damaged[position] ^= 1 << self._rng.randrange(8)
        self.flips += 1
        return bytes(damaged)


class Client(Protocol):
    """One upload protocol, one request per call (see the module docstring)."""

    @property
    def inline_create(self) -> bool: ...
    @property
    def overlapping_chunks(self) -> bool: ...
    @property
    def checks_chunks(self) -> bool: ...
    def adopt(self, file_id: str, location: str | None) -> None:
        """Continue the journaled upload at `location` (None: none is known)."""

    def forget(self, file_id: str) -> None:
        """The delivery of `file_id` ended: drop what was kept for it."""

    async def create(
        self, file_id: str, *, name: str, size: int, metadata: Mapping[str, str], digest: bytes
    ) -> Progress: ...
    async def query(self, file_id: str) -> Progress: ...
    async def put_chunk(
        self, file_id: str, start: int, data: Body, total: int, *, announce: Announce | None = None
    ) -> Progress: ...
    async def finish_empty(self, file_id: str, *, announce: Announce | None = None) -> Progress: ...


class UploadClient:
    """The native protocol (`POST /uploads`, `PUT` with `Content-Range`): `Client`."""

    inline_create = True
    overlapping_chunks = True
    checks_chunks = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        corruptor: Corruptor | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._corrupt = corruptor

    def adopt(self, file_id: str, location: str | None) -> None:
        """Nothing to adopt: the client names its uploads (`/uploads/{file_id}`)."""

    def forget(self, file_id: str) -> None:
        """Nothing is kept per file."""

    def upload_url(self, file_id: str) -> str:
        return f"{self._base}/uploads/{file_id}"

    async def create(
        self, file_id: str, *, name: str, size: int, metadata: Mapping[str, str], digest: bytes
    ) -> Progress:
        """Start (or find) the upload; idempotent for the same parameters."""
        body = {"id": file_id, "name": name, "size": size, "metadata": dict(metadata)}
        headers = {"Repr-Digest": integrity.format_digest_field({integrity.PREFERRED: digest})}
        return await self._send("POST", f"{self._base}/uploads", json=body, headers=headers)

    async def query(self, file_id: str) -> Progress:
        """How far the upload is (`Content-Range: bytes */*`)."""
        headers = {"Content-Range": "bytes */*"}
        return await self._send("PUT", self.upload_url(file_id), headers=headers, query=True)

    async def put_chunk(
        self, file_id: str, start: int, data: Body, total: int, *, announce: Announce | None = None
    ) -> Progress:
        """Send `data` as bytes start..start+len-1 of a `total`-byte file. With `announce`,
        the PUT also creates the upload if the server does not know it (no POST needed)."""
        rng = protocol.ChunkRange(start, start + len(data) - 1, total)
        digest = announced_digest(data, start, total, announce) or await digest_of(data)
        headers = {
            "Content-Range": protocol.format_content_range(rng),
            "Content-Digest": integrity.format_digest_field({integrity.PREFERRED: digest}),
            "Content-Type": "application/octet-stream",
            **(announce.headers() if announce else {}),
        }
        body = await payload_of(data, self._corrupt)
        return await self._send("PUT", self.upload_url(file_id), data=body, headers=headers)

    async def finish_empty(self, file_id: str, *, announce: Announce | None = None) -> Progress:
        """Complete a zero-byte file (`bytes */0`)."""
        headers = {"Content-Range": "bytes */0", **(announce.headers() if announce else {})}
        return await self._send("PUT", self.upload_url(file_id), headers=headers)

    async def record(self, file_id: str) -> Progress:
        """`GET /uploads/{id}`: the record if complete; `missing` if unknown."""
        return await self._send("GET", self.upload_url(file_id), query=True)

    async def _send(self, method: str, url: str, *, query: bool = False, **kwargs: Any) -> Progress:
        try:
            async with self._session.request(method, url, allow_redirects=False, **kwargs) as resp:
                payload = await resp.read()
                return _classify(resp.status, resp.headers, payload, query=query)
        except aiohttp.ClientConnectorCertificateError as exc:
            # Waiting will not make an untrusted certificate trusted: fail at once.
            raise RemoteError(0, Code.CERTIFICATE_VERIFY_FAILED, str(exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc


def _classify(status: int, headers: Mapping[str, str], payload: bytes, *, query: bool) -> Progress:
    if status == 200:
        doc = _json(payload)
        if doc.get("complete") is False:
            return Progress(offset=int(doc.get("offset") or 0))
        return Progress(offset=int(doc.get("size") or 0), record=doc)
    if status == 308:
        try:
            return Progress(offset=protocol.parse_range_reply(headers.get("Range")))
        except BadRequest as exc:
            raise TransientError(f"server sent a bad Range: {exc}") from exc
    if status == 404 and query:
        return Progress(offset=0, missing=True)
    code, detail = problem_of(payload)
    if status in (408, 429) or status >= 500 or code in _TRANSIENT_CODES:
        raise TransientError(
            f"server answered {status} {code}: {detail}",
            retry_after=retry_after(headers),
            status=status,
        )
    raise RemoteError(status, code, detail)


def _json(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransientError("server sent a body that is not JSON") from exc
    if not isinstance(doc, dict):
        raise TransientError("server sent JSON that is not an object")
    return doc


def problem_of(payload: bytes) -> tuple[str, str]:
    try:
        doc = json.loads(payload)
        return str(doc.get("code", Reason.UNKNOWN)), str(doc.get("detail", ""))
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return Reason.UNKNOWN, payload[:200].decode("utf-8", "replace")


def retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None or not value.strip().isdigit():
        return None
    return float(value)
