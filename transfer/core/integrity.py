"""Digests and their RFC 9530 header form, with no I/O.

`Content-Digest` covers one message body (a chunk); `Repr-Digest` covers the whole file.
Both are Structured Field Dictionaries of byte sequences:

    Repr-Digest: xxh3-128=:b64...:, sha-256=:b64...:

Invariants:
- Parsing is strict about syntax (a malformed field is `BadRequest(Code.INVALID_DIGEST)`)
  and lenient about algorithms: unknown keys are ignored, as RFC 9530 allows, so a
  field naming only unknown algorithms verifies nothing.
- A digest of the wrong length for its algorithm is malformed, not a mismatch.
- `md5` is never accepted from a client (it is not collision resistant); it is only
  computed for GCS clients, which read it back as `md5Hash`. The same goes for `sha1`
  in digest fields: both exist here only as `CHUNK_ONLY` algorithms, which tus's
  per-PATCH `Upload-Checksum` may name (core/tus.py) to guard one chunk, never a file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, Protocol

import xxhash

from transfer.core.errors import BadRequest, Code, DigestMismatch

PREFERRED = "xxh3-128"


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


ALGORITHMS: Mapping[str, Callable[[], Hasher]] = {
    "xxh3-128": xxhash.xxh3_128,
    "sha-256": hashlib.sha256,
}
# Weak algorithms a tus client may use for one chunk's checksum; never whole-file digests.
CHUNK_ONLY: Mapping[str, Callable[[], Hasher]] = {"md5": hashlib.md5, "sha1": hashlib.sha1}
_SIZES = {"xxh3-128": 16, "sha-256": 32, "md5": 16, "sha1": 20}
_FACTORIES: Mapping[str, Callable[[], Hasher]] = {**ALGORITHMS, **CHUNK_ONLY}
_MEMBER = re.compile(r"([a-z*][a-z0-9_.*-]*)=:([A-Za-z0-9+/=]*):((?:;[^,;]*)*)")

Digests = Mapping[str, bytes]


class MultiHasher:
    """Feeds the same bytes to one hasher per algorithm."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self._hashers = {name: _FACTORIES[name]() for name in algorithms}

    def update(self, data: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def digests(self) -> dict[str, bytes]:
        return {name: hasher.digest() for name, hasher in self._hashers.items()}


def digest_of(data: bytes, algorithm: str = PREFERRED) -> bytes:
    hasher = _FACTORIES[algorithm]()
    hasher.update(data)
    return hasher.digest()


def parse_digest_field(value: str) -> dict[str, bytes]:
    """Parse a `Content-Digest` / `Repr-Digest` value into {algorithm: raw digest}.

    Raises:
        BadRequest: `invalid_digest` for a malformed field or a digest of the wrong size.
    """
    if not value.isascii():
        raise BadRequest(Code.INVALID_DIGEST, "digest fields must be ASCII")
    result: dict[str, bytes] = {}
    for member in value.split(","):
        match = _MEMBER.fullmatch(member.strip(" \t"))
        if match is None:
            raise BadRequest(Code.INVALID_DIGEST, f"malformed digest member {member.strip()!r}")
        name, encoded = match.group(1), match.group(2)
        if name not in ALGORITHMS:
            continue
        result[name] = _decode(name, encoded)
    return result


def _decode(name: str, encoded: str) -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise BadRequest(Code.INVALID_DIGEST, f"{name} digest is not valid base64") from exc
    if len(raw) != _SIZES[name]:
        raise BadRequest(Code.INVALID_DIGEST, f"{name} digest must be {_SIZES[name]} bytes")
    return raw


def format_digest_field(digests: Digests) -> str:
    """The header value for `digests`, keeping only algorithms we speak."""
    return ", ".join(
        f"{name}=:{base64.b64encode(raw).decode()}:"
        for name, raw in digests.items()
        if name in ALGORITHMS
    )


_MISMATCH = {"chunk": Code.CHUNK_DIGEST_MISMATCH, "repr": Code.REPR_DIGEST_MISMATCH}


def verify(expected: Digests, actual: Digests, *, what: Literal["chunk", "repr"]) -> None:
    """Compare every algorithm both sides have.

    Raises:
        DigestMismatch: `{what}_digest_mismatch`, naming the first algorithm that differs.
    """
    for name, raw in expected.items():
        if name in actual and actual[name] != raw:
            raise DigestMismatch(_MISMATCH[what], f"{what} {name} digest does not match")


def digest_size(algorithm: str) -> int:
    """Raw digest length in bytes of a known algorithm (KeyError for an unknown one)."""
    return _SIZES[algorithm]


def to_hex(digests: Digests) -> dict[str, str]:
    return {name: raw.hex() for name, raw in digests.items()}


def from_hex(digests: Mapping[str, str]) -> dict[str, bytes]:
    return {name: bytes.fromhex(text) for name, text in digests.items()}


def md5_base64(raw: bytes) -> str:
    """GCS's `md5Hash`: base64 of the raw digest."""
    return base64.b64encode(raw).decode()
