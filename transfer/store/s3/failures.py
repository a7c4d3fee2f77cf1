"""What an S3 or PostgreSQL failure becomes: `StorageFailure`, and which kind.

    storage_unavailable (503, Retry-After)   the service could not be reached or refused
                                             for now: connection refused or reset, a
                                             timeout, a server restarting or shutting
                                             down, S3's 5xx and throttling
    storage_error (500)                      anything else the service said: a bug, or a
                                             store changed behind our back

Invariants: cancellation is never caught; nothing is retried here (the client retries,
and its retries are logged); an outage is never an acknowledgement, because every
acknowledgement comes after both services answered. A DSN never appears in a detail.
Also `run_to_end`, the shield a commit or clean-up runs under.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import botocore.exceptions

from transfer.core.errors import Code, StorageFailure

T = TypeVar("T")
RETRY_AFTER = 2  # seconds a client is asked to wait while a service is away

# PostgreSQL unreachable, restarting, out of connections: worth waiting for.
DB_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # A pooled connection the server dropped mid-exchange ("another operation is in
    # progress"); the pool replaces it, so it is the outage, not a bug of ours.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P01-3: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
)
_S3_AWAY = (
    OSError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ResponseStreamingError,
)
_S3_FAILURES = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)
# S3 error codes that mean "not now" rather than "no".
_S3_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}


def unavailable(detail: str) -> StorageFailure:
    """A 503 `storage_unavailable` with `Retry-After`."""
    headers = {"Retry-After": str(RETRY_AFTER)}
    return StorageFailure(Code.STORAGE_UNAVAILABLE, detail, headers=headers)


def s3_is_away(exc: BaseException) -> bool:
    """True for a connection failure, a timeout, a 5xx or throttling: not S3's last word."""
    if isinstance(exc, _S3_AWAY):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _S3_BUSY or int(status or 0) >= 500
    return False


@asynccontextmanager
async def s3_errors(what: str) -> AsyncIterator[None]:
    """S3 and connection failures as `StorageFailure`, with what was being done."""
    try:
        yield
    except _S3_FAILURES as exc:
        detail = f"object store: {what}: {exc}"
        if s3_is_away(exc):
            raise unavailable(detail) from exc
        raise StorageFailure(Code.STORAGE_ERROR, detail) from exc


@asynccontextmanager
async def db_errors(what: str) -> AsyncIterator[None]:
    """PostgreSQL failures as `StorageFailure`: 503 while it is away, else 500."""
    try:
        yield
    except DB_AWAY as exc:
        raise unavailable(f"database: {what}: {_reason(exc)}") from exc
    except asyncpg.PostgresError as exc:
        raise StorageFailure(Code.STORAGE_ERROR, f"database: {what}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def run_to_end(step: Coroutine[Any, Any, T]) -> T:
    """Run `step` to its end even if the caller is cancelled meanwhile; the cancellation
    is raised afterwards (the step holds a database connection the caller must not
    release under it)."""
    task = asyncio.ensure_future(step)
    interrupted: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise
            interrupted = exc
            continue
        except BaseException as exc:
            if interrupted is not None:
                raise interrupted from exc
            raise
        if interrupted is not None:
            raise interrupted
        return result


__all__ = [
    "DB_AWAY",
    "RETRY_AFTER",
    "db_errors",
    "run_to_end",
    "s3_errors",
    "s3_is_away",
    "unavailable",
]
