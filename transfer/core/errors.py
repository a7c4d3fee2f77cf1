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
    │   ├── UnsupportedMediaType (415)
    │   ├── StorageFailure (500)       the disk failed (EIO); nothing was acknowledged
    │   ├── ServiceUnavailable (503)   too many uploads at once (carries Retry-After)
    │   └── InsufficientStorage (507)  the disk is full; nothing was acknowledged
    ├── RemoteError                    a 4xx refusal that retrying will not change
    ├── TransientError                 the only thing the sender retries
    ├── JournalError                   the sender's journal is damaged beyond its torn tail
    ├── LocalFileDamaged               a spool file no longer matches its journaled digest
    ├── Interrupted                    the sender was asked to stop between two chunks
    └── ConfigError                    a bad flag or setting; the CLI prints it and exits 2

Invariants: a `ProtocolError`'s `code` is stable (clients and tests match on it) and
its `status` is the HTTP status the server answers with. Codes are snake_case.
"""

from __future__ import annotations

from collections.abc import Mapping


class TransferError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(TransferError):
    """A refused request: rendered as `application/problem+json` (RFC 9457)."""

    status: int = 400
    title: str = "Bad Request"

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})

    def problem(self) -> dict[str, object]:
        """The problem+json body for this error."""
        return {
            "type": f"urn:transfer:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }


class BadRequest(ProtocolError):
    status = 400
    title = "Bad Request"


class Unauthorized(ProtocolError):
    status = 401
    title = "Unauthorized"


class DigestMismatch(ProtocolError):
    status = 400
    title = "Digest Mismatch"


class NotFound(ProtocolError):
    status = 404
    title = "Not Found"


class Conflict(ProtocolError):
    status = 409
    title = "Conflict"


class RequestTimeout(ProtocolError):
    status = 408
    title = "Request Timeout"


class PayloadTooLarge(ProtocolError):
    status = 413
    title = "Payload Too Large"


class RangeNotSatisfiable(ProtocolError):
    status = 416
    title = "Range Not Satisfiable"


class UnsupportedMediaType(ProtocolError):
    status = 415
    title = "Unsupported Media Type"


class StorageFailure(ProtocolError):
    status = 500
    title = "Storage Failure"


class ServiceUnavailable(ProtocolError):
    status = 503
    title = "Service Unavailable"


class InsufficientStorage(ProtocolError):
    status = 507
    title = "Insufficient Storage"


class RemoteError(TransferError):
    """A server's refusal that retrying will not change (most 4xx)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class TransientError(TransferError):
    """A failure worth retrying: connection trouble, timeouts, 408/429/5xx."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JournalError(TransferError):
    """The journal is damaged somewhere other than its torn last record."""


class LocalFileDamaged(TransferError):
    """A spool file's bytes no longer match the digest journaled for it."""


class Interrupted(TransferError):
    """The sender is stopping: the file stays unconfirmed and resumes next run."""


class ConfigError(TransferError):
    """A bad flag, size, duration or URL given by the user."""
