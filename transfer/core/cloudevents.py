"""Upload events as CloudEvents 1.0 JSON documents, and their HMAC-SHA256 signature.

An event goes out in structured mode (`Content-Type: application/cloudevents+json`):

    {"specversion": "1.0", "id": "...", "source": "urn:transfer:HOST",
     "type": "dev.transfer.upload.completed", "time": "2026-11-30T12:00:00.000000Z",
     "subject": "UPLOAD-ID", "datacontenttype": "application/json",
     "data": {"id", "tenant", "name", "size", "offset", "digests", "metadata", "protocol"}}

The signature header (`Transfer-Signature: t=<unix seconds>,v1=<hex>`) is
HMAC-SHA256(secret, b"<t>." + body) over the exact bytes sent; a receiver recomputes it,
compares in constant time and refuses a `t` too far from its own clock (replays).

Invariants: pure (no I/O, no clock read: times are passed in); an event's `id` is made
once, when it enters the outbox, and never changes, so a receiver drops duplicates by
it; the upload id in `subject` and `data.id` is the id the client knows (never a store
key), with `data.tenant` beside it (None without tenancy).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from transfer.core import integrity, tenancy
from transfer.core.records import UploadInfo, UploadSpec

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
SIGNATURE_HEADER = "Transfer-Signature"
DEFAULT_TOLERANCE = 300.0  # seconds a receiver accepts between `t` and its clock


class EventType(enum.StrEnum):
    """Every event type sent to hooks; names are a contract (docs/operations.md)."""

    CREATED = "dev.transfer.upload.created"
    COMPLETED = "dev.transfer.upload.completed"
    EXPIRED = "dev.transfer.upload.expired"
    DELETED = "dev.transfer.upload.deleted"
    DIGEST_MISMATCH = "dev.transfer.upload.digest_mismatch"  # whole file; reset to 0
    PRE_CREATE = "dev.transfer.upload.pre_create"  # asked, never queued


class SignatureError(ValueError):
    """A `Transfer-Signature` that is malformed, stale or does not match."""


def upload_data(info: UploadInfo) -> dict[str, Any]:
    """An upload as an event's `data`: its record's values once it has one."""
    data = spec_data(info.spec)
    data["offset"] = info.state.offset
    record = info.record
    if record is not None:
        data.update(name=record.name, size=record.size, metadata=dict(record.metadata))
        data["digests"] = integrity.to_hex(
            {k: v for k, v in record.digests.items() if k in integrity.ALGORITHMS}
        )
    return data


def spec_data(spec: UploadSpec) -> dict[str, Any]:
    """What a client declared, as an event's `data` (the pre-create question)."""
    return {
        "id": tenancy.public_id(spec.upload_id),
        "tenant": tenancy.tenant_of(spec.upload_id),
        "name": spec.name,
        "size": spec.size,
        "digests": {},
        "metadata": dict(spec.metadata),
        "protocol": spec.protocol,
    }


def document(
    kind: EventType, event_id: str, source: str, at: float, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode document; `at` is a Unix timestamp."""
    return {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": str(kind),
        "time": rfc3339(at),
        "subject": data["id"],
        "datacontenttype": "application/json",
        "data": dict(data),
    }


def encode(doc: Mapping[str, Any]) -> bytes:
    """The bytes sent (and signed): compact JSON, keys in a stable order."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def rfc3339(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The `Transfer-Signature` value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: bytes, body: bytes, header: str, *, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> None:
    """Check a `Transfer-Signature` against `body`, at the receiver's time `now`.

    Raises:
        SignatureError: malformed, older or newer than `tolerance` seconds, or no `v1`
            matches (several `v1` are accepted, for a secret being rotated).
    """
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    macs = [value for key, _, value in fields if key == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        raise SignatureError("malformed signature header")
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        raise SignatureError("signature timestamp outside the tolerance")
    expected = sign(secret, body, timestamp).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise SignatureError("signature does not match")


__all__ = [
    "CONTENT_TYPE",
    "SIGNATURE_HEADER",
    "EventType",
    "SignatureError",
    "document",
    "encode",
    "rfc3339",
    "sign",
    "spec_data",
    "upload_data",
    "verify",
]
