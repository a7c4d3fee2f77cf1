"""The S3 side of the S3 store: objects and multipart uploads under one prefix.

    PREFIX/files/{id}                   a published file: one ordinary object
    PREFIX/files/{id} (multipart)       the partial upload's committed parts, invisible
                                        until CompleteMultipartUpload
    PREFIX/tails/{id}/{offset}-{token}  the incomplete-part object: bytes not yet a part

Invariants:
- Every call returns only once S3 acknowledged it; an S3 acknowledgement is durable.
- Any failure of S3 or of the connection is a `StorageFailure` with the reason:
  `storage_unavailable` (503) when S3 is away, else `storage_error` (`failures.py`);
  cancellation is never caught. botocore's own retries are off: a failed call
  fails the request, and the client (whose retries are logged) tries again.
- No method swallows an error except the `discard_*` ones, which tidy up after the
  record moved on: what they miss, the sweep (`sweep.py`) removes later.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import botocore.exceptions
import structlog

from transfer.core.errors import StorageFailure
from transfer.core.events import Event
from transfer.store.s3.failures import s3_errors as storage_errors
from transfer.store.s3.location import S3Location
from transfer.store.shared import ClosingReader

log = structlog.get_logger("transfer.store.s3")


def error_code(exc: BaseException) -> str:
    """S3's error code of a ClientError ("NoSuchKey", ...), else ""."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@dataclass(frozen=True, slots=True)
class Listed:
    key: str
    upload_id: str  # of a multipart upload; "" for an object
    since: datetime


class Objects:
    """Calls on one bucket and prefix; `client` is an open aiobotocore S3 client."""

    def __init__(self, client: Any, where: S3Location) -> None:
        self._s3 = client
        self.where = where
        self.bucket = where.bucket

    def file_key(self, upload_id: str) -> str:
        return self.where.key("files", upload_id)

    def new_tail_key(self, upload_id: str, offset: int) -> str:
        """A fresh key: a tail is never overwritten, so a row never names changed bytes."""
        return self.where.key("tails", upload_id, f"{offset}-{secrets.token_hex(6)}")

    async def put(self, key: str, data: bytes) -> None:
        async with storage_errors(f"put {key}"):
            await self._s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """The bytes of `key` from `start` (`length` of them, or to the end)."""
        extra = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            extra["Range"] = f"bytes={start}-{end}"
        async with storage_errors(f"get {key}"):
            answer = await self._s3.get_object(Bucket=self.bucket, Key=key, **extra)
            async with answer["Body"] as stream:
                return bytes(await stream.read())

    async def head(self, key: str) -> tuple[int, int] | None:
        """(size, last-modified in ns) of `key`, or None if there is no such object."""
        try:
            async with storage_errors(f"head {key}"):
                answer = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except StorageFailure as exc:
            if error_code(exc.__cause__ or exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        modified: datetime = answer["LastModified"]
        return int(answer["ContentLength"]), int(modified.timestamp() * 1e9)

    async def delete(self, key: str) -> None:
        async with storage_errors(f"delete {key}"):
            await self._s3.delete_object(Bucket=self.bucket, Key=key)

    async def start_multipart(self, upload_id: str) -> str:
        key = self.file_key(upload_id)
        async with storage_errors(f"create multipart upload {key}"):
            answer = await self._s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        return str(answer["UploadId"])

    async def put_part(self, upload_id: str, mpu: str, number: int, data: bytes) -> str:
        """Upload part `number`; returns its ETag."""
        key = self.file_key(upload_id)
        async with storage_errors(f"upload part {number} of {key}"):
            answer = await self._s3.upload_part(
                Bucket=self.bucket, Key=key, UploadId=mpu, PartNumber=number, Body=data
            )
        return str(answer["ETag"])

    async def complete(self, upload_id: str, mpu: str, parts: list[tuple[int, str]]) -> None:
        key = self.file_key(upload_id)
        listed = [{"PartNumber": n, "ETag": etag} for n, etag in parts]
        async with storage_errors(f"complete multipart upload {key}"):
            await self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=mpu, MultipartUpload={"Parts": listed}
            )

    async def abort(self, upload_id: str, mpu: str) -> None:
        """Abort a multipart upload; one that is gone already is fine."""
        key = self.file_key(upload_id)
        try:
            async with storage_errors(f"abort multipart upload {key}"):
                await self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=mpu)
        except StorageFailure as exc:
            if error_code(exc.__cause__ or exc) != "NoSuchUpload":
                raise

    async def discard(self, key: str | None) -> None:
        """Best-effort delete of an object no row names any more (the sweep catches
        what this misses); the failure is logged, cancellation is not caught."""
        if key is None:
            return
        try:
            await self.delete(key)
        except StorageFailure as exc:
            log.warning(Event.STORE_CLEANUP_FAILED, key=key, error=exc.detail)

    async def discard_upload(self, upload_id: str, mpu: str | None) -> None:
        """Best-effort abort of a multipart upload no row names any more (as `discard`)."""
        if mpu is None:
            return
        try:
            await self.abort(upload_id, mpu)
        except StorageFailure as exc:
            log.warning(Event.STORE_CLEANUP_FAILED, mpu=mpu, error=exc.detail)

    async def multipart_uploads(self) -> list[Listed]:
        """Every multipart upload in progress under `PREFIX/files/`."""
        found: list[Listed] = []
        paginator = self._s3.get_paginator("list_multipart_uploads")
        async with storage_errors("list multipart uploads"):
            async for page in paginator.paginate(
                Bucket=self.bucket, Prefix=self.where.key("files", "")
            ):
                found += [
                    Listed(u["Key"], u["UploadId"], u["Initiated"]) for u in page.get("Uploads", [])
                ]
        return found

    async def tails(self) -> list[Listed]:
        """Every tail object under `PREFIX/tails/`."""
        found: list[Listed] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        async with storage_errors("list tail objects"):
            async for page in paginator.paginate(
                Bucket=self.bucket, Prefix=self.where.key("tails", "")
            ):
                found += [Listed(o["Key"], "", o["LastModified"]) for o in page.get("Contents", [])]
        return found


class S3File(ClosingReader):
    """A `PublishedFile` read from `files/{id}` with ranged GETs."""

    def __init__(self, objects: Objects, key: str, size: int, modified_ns: int) -> None:
        self._objects, self._key = objects, key
        self.size, self.modified_ns = size, modified_ns

    async def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        return b"" if length <= 0 else await self._objects.get(self._key, offset, length)

    async def close(self) -> None:
        pass


__all__ = ["Listed", "Objects", "S3File", "error_code", "storage_errors"]
