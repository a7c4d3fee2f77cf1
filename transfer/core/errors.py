"""The one error hierarchy of `transfer`.

    TransferError                      root: everything this package raises on purpose
    ├── ProtocolError                  a refused request: carries HTTP status + stable code
    │   ├── BadRequest (400)           malformed headers, bodies, ids
    │   ├── Unauthorized (401)         missing or wrong bearer token
    │   ├── DigestMismatch (400)       a chunk or a whole file did not match its declared digest
    │   ├── NotFound (404)
    │   ├── Conflict (409)             offset gaps, conflicting creation parameters, size changes
    │   ├── RequestTimeout (408)       a request body stalled longer than the idle timeout
    │   ├── PayloadTooLarge (413)
    │   ├── RangeNotSatisfiable (416)
    │   ├── StorageFailure (500)       the disk failed (EIO); nothing was acknowledged; 503
    │   │                              with Retry-After while a store's service is away
    │   ├── ServiceUnavailable (503)   too many uploads at once (carries Retry-After)
    │   └── InsufficientStorage (507)  the disk is full; nothing was acknowledged
    ├── RemoteError                    a 4xx refusal that retrying will not change
    ├── TransientError                 the only thing the sender retries
    ├── JournalError                   the sender's journal is damaged beyond its torn tail
    ├── LocalFileDamaged               a spool file no longer matches its journaled digest
    ├── Interrupted                    the sender was asked to stop between two chunks
    ├── IllegalTransition              a lifecycle table has no move for (state, event): a bug
    └── ConfigError                    a bad flag or setting; the CLI prints it and exits 2

Invariants: a `ProtocolError`'s `code` is a `Code` member, stable (clients and tests
match on it), snake_case, and its `status` and `title` are the code's, wherever it is
raised. The subclasses are the kinds callers catch; `Code` is the one registry.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Code(enum.StrEnum):
    """Every stable error code, once, with the HTTP status and title it is answered with.

    A member is a `str` (its code), so clients compare codes read off the wire with it
    directly. docs/protocol.md lists the same table; tests/test_errors.py checks both
    agree.
    """

    status: int
    problem_title: str

    def __new__(cls, code: str, status: int, title: str) -> Code:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.problem_title = title
        return member

    # 400: the request itself is wrong
    INVALID_BODY = "invalid_body", 400, "Bad Request"
    INVALID_ID = "invalid_id", 400, "Bad Request"
    SIZE_MISMATCH = "size_mismatch", 400, "Bad Request"
    INVALID_DIGEST = "invalid_digest", 400, "Bad Request"
    INVALID_METADATA = "invalid_metadata", 400, "Bad Request"
    INVALID_CONTENT_RANGE = "invalid_content_range", 400, "Bad Request"
    INVALID_RANGE = "invalid_range", 400, "Bad Request"
    MISSING_CONTENT_RANGE = "missing_content_range", 400, "Bad Request"
    UNEXPECTED_BODY = "unexpected_body", 400, "Bad Request"
    LENGTH_MISMATCH = "length_mismatch", 400, "Bad Request"
    BODY_TOO_LONG = "body_too_long", 400, "Bad Request"
    BODY_TOO_SHORT = "body_too_short", 400, "Bad Request"
    BODY_INCOMPLETE = "body_incomplete", 400, "Bad Request"
    CHUNK_DIGEST_MISMATCH = "chunk_digest_mismatch", 400, "Digest Mismatch"
    REPR_DIGEST_MISMATCH = "repr_digest_mismatch", 400, "Digest Mismatch"
    # 401, 404, 405
    UNAUTHORIZED = "unauthorized", 401, "Unauthorized"
    # --tokens-file: a credential without the scope asked for, on its own upload (403);
    # an admin's `?tenant=` that is no tenant name (400)
    INSUFFICIENT_SCOPE = "insufficient_scope", 403, "Forbidden"
    INVALID_TENANT = "invalid_tenant", 400, "Bad Request"
    UPLOAD_NOT_FOUND = "upload_not_found", 404, "Not Found"
    FILE_NOT_FOUND = "file_not_found", 404, "Not Found"
    NOT_FOUND = "not_found", 404, "Not Found"
    METHOD_NOT_ALLOWED = "method_not_allowed", 405, "Method Not Allowed"
    # 408: the body stopped or crawled
    BODY_STALLED = "body_stalled", 408, "Request Timeout"
    BODY_TOO_SLOW = "body_too_slow", 408, "Request Timeout"
    # cut below --min-rate, after --stall-grace, to give its slot to a waiting upload
    BODY_PREEMPTED = "body_preempted", 408, "Request Timeout"
    # 409: the request disagrees with what is stored
    OFFSET_GAP = "offset_gap", 409, "Conflict"
    TOTAL_MISMATCH = "total_mismatch", 409, "Conflict"
    UPLOAD_CONFLICT = "upload_conflict", 409, "Conflict"
    UPLOAD_COMPLETE = "upload_complete", 409, "Conflict"
    # 413, 416
    CHUNK_TOO_LARGE = "chunk_too_large", 413, "Payload Too Large"
    UPLOAD_TOO_LARGE = "upload_too_large", 413, "Payload Too Large"
    REQUEST_ENTITY_TOO_LARGE = "request_entity_too_large", 413, "Request Entity Too Large"
    RANGE_PAST_TOTAL = "range_past_total", 416, "Range Not Satisfiable"
    # tus 1.0 (core/tus.py, server/tus.py): with the statuses the tus protocol text names
    INVALID_UPLOAD_OFFSET = "invalid_upload_offset", 400, "Bad Request"
    INVALID_UPLOAD_LENGTH = "invalid_upload_length", 400, "Bad Request"
    INVALID_UPLOAD_CONCAT = "invalid_upload_concat", 400, "Bad Request"
    INVALID_CHECKSUM = "invalid_checksum", 400, "Bad Request"
    CHECKSUM_ALGORITHM_UNSUPPORTED = "checksum_algorithm_unsupported", 400, "Bad Request"
    INVALID_METHOD_OVERRIDE = "invalid_method_override", 400, "Bad Request"
    CONCAT_NOT_PARTIAL = "concat_not_partial", 400, "Bad Request"
    CONCAT_PARTIAL_INCOMPLETE = "concat_partial_incomplete", 400, "Bad Request"
    UPLOAD_IS_FINAL = "upload_is_final", 403, "Forbidden"
    OFFSET_MISMATCH = "offset_mismatch", 409, "Conflict"
    LENGTH_REQUIRED = "length_required", 411, "Length Required"
    TUS_VERSION_UNSUPPORTED = "tus_version_unsupported", 412, "Precondition Failed"
    UPLOAD_LENGTH_EXCEEDED = "upload_length_exceeded", 413, "Payload Too Large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", 415, "Unsupported Media Type"
    CHECKSUM_MISMATCH = "checksum_mismatch", 460, "Checksum Mismatch"
    # IETF resumable uploads (core/ietf.py, server/ietf.py)
    UPLOAD_COMPLETE_REQUIRED = "upload_complete_required", 400, "Bad Request"
    INTEROP_VERSION_UNSUPPORTED = "interop_version_unsupported", 400, "Bad Request"
    INCONSISTENT_UPLOAD_LENGTH = "inconsistent_upload_length", 400, "Bad Request"
    UPLOAD_CONCAT_UNSUPPORTED = "upload_concat_unsupported", 400, "Bad Request"
    # CORS (server/cors.py): a preflight from an origin not given to --cors-origin
    ORIGIN_NOT_ALLOWED = "origin_not_allowed", 403, "Forbidden"
    # hooks (server/precreate.py): the pre-create hook said no (4xx), or did not answer
    REJECTED_BY_HOOK = "rejected_by_hook", 403, "Forbidden"
    HOOK_UNAVAILABLE = "hook_unavailable", 503, "Service Unavailable"
    # 5xx: the server could not, this time
    STORAGE_ERROR = "storage_error", 500, "Storage Failure"
    # The S3 store's S3 or PostgreSQL is unreachable or restarting (with Retry-After).
    STORAGE_UNAVAILABLE = "storage_unavailable", 503, "Service Unavailable"
    INTERNAL_ERROR = "internal_error", 500, "Internal Server Error"
    TOO_MANY_UPLOADS = "too_many_uploads", 503, "Service Unavailable"
    TOO_MANY_CONNECTIONS = "too_many_connections", 503, "Service Unavailable"
    # 429: one address holds --max-connections-per-ip connections (or, through a trusted
    # proxy, requests) already; retried like any 429.
    TOO_MANY_CONNECTIONS_PER_IP = "too_many_connections_per_ip", 429, "Too Many Requests"
    # 429: the tenant holds --tenant-max-active bodies already (others may still send)
    TENANT_TOO_MANY_UPLOADS = "tenant_too_many_uploads", 429, "Too Many Requests"
    INSUFFICIENT_STORAGE = "insufficient_storage", 507, "Insufficient Storage"
    TENANT_QUOTA_EXCEEDED = "tenant_quota_exceeded", 507, "Insufficient Storage"
    PARTIAL_QUOTA_EXCEEDED = "partial_quota_exceeded", 507, "Insufficient Storage"
    # Never answered by a server: the sender's own name for an untrusted certificate.
    CERTIFICATE_VERIFY_FAILED = "certificate_verify_failed", 0, "Certificate Verify Failed"


class TransferError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(TransferError):
    """A refused request: rendered as `application/problem+json` (RFC 9457).

    The subclasses are the kinds a caller catches; the status and title always come
    from the `Code`, so a code answers the same wherever it is raised.
    """

    def __init__(
        self,
        code: Code,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        # A str, not only a Code: the server's generic refusals carry aiohttp's reasons.
        self.code: str = code
        self.status = code.status
        self.title = code.problem_title
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})

    def problem(self) -> dict[str, object]:
        """The problem+json body for this error."""
        return {
            "type": f"urn:transfer:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "code": str(self.code),
            "detail": self.detail,
        }


class BadRequest(ProtocolError):
    """Malformed headers, bodies or ids (400)."""


class Unauthorized(ProtocolError):
    """A missing or wrong bearer token (401)."""


class DigestMismatch(ProtocolError):
    """A chunk or a whole file did not match its declared digest (400)."""


class NotFound(ProtocolError):
    """No such upload or file (404)."""


class Conflict(ProtocolError):
    """The request disagrees with what is stored: gaps, totals, parameters (409)."""


class RequestTimeout(ProtocolError):
    """A request body stalled or crawled (408); the connection is closed."""


class PayloadTooLarge(ProtocolError):
    """A chunk or upload over the configured limits (413)."""


class RangeNotSatisfiable(ProtocolError):
    """A range past a known total (416)."""


class StorageFailure(ProtocolError):
    """The disk or store failed (500; 503 `storage_unavailable` while the S3 store's
    services are away); nothing was acknowledged."""


class ServiceUnavailable(ProtocolError):
    """Too busy right now (503, with Retry-After)."""


class InsufficientStorage(ProtocolError):
    """No room: disk reserve or partial quota (507); nothing was acknowledged."""


class RemoteError(TransferError):
    """A server's refusal that retrying will not change (most 4xx)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class TransientError(TransferError):
    """A failure worth retrying: connection trouble, timeouts, 408/429/5xx. `status` is
    the HTTP status when a server answered (None: no answer, or a broken one)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class JournalError(TransferError):
    """The journal is damaged somewhere other than its torn last record."""


class LocalFileDamaged(TransferError):
    """A spool file's bytes no longer match the digest journaled for it."""


class Interrupted(TransferError):
    """The sender is stopping: the file stays unconfirmed and resumes next run."""


class IllegalTransition(TransferError):
    """A lifecycle table (e.g. `filestate.TRANSITIONS`) has no move for this (state, event).

    Raised before anything changes, so the caller still holds the state it had. It marks
    a bug in the caller, never a server's or a user's mistake.
    """

    def __init__(self, state: object, event: object) -> None:
        super().__init__(f"no transition from {state!s} on {event!s}")
        self.state = state
        self.event = event


class ConfigError(TransferError):
    """A bad flag, size, duration or URL given by the user."""
