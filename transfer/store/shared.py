"""Pieces every store shares, so they keep the same semantics by construction.

- `RunningHash`: the whole-file hash fed as bytes are written, so completion costs no
  second read; valid only while its `position` equals the upload's offset.
- `whole_algorithms`: which digests a completed upload's record carries.
- `ChunkIntake`: one chunk's body taken in: the stored prefix skipped, every byte fed to
  the chunk's digest, the length checked against the range; subclasses store the bytes.
- `InFlight`: refuses a second mutation of an upload while a chunk is being written.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from types import TracebackType
from typing import Self

from transfer.core import integrity
from transfer.core.errors import Code, Conflict
from transfer.core.integrity import Digests, MultiHasher
from transfer.core.protocol import ChunkPlan, check_body_length
from transfer.core.records import UploadSpec


def whole_algorithms(spec: UploadSpec) -> list[str]:
    """xxh3-128 and every declared algorithm; for native uploads md5 too when none was
    declared; for every other front-end (tus) sha-256 too, always."""
    if spec.protocol != "native":
        # tus has no whole-file digest: the record carries a strong one to compare with.
        return sorted({integrity.PREFERRED, "sha-256", *spec.repr_digest})
    algorithms = sorted({integrity.PREFERRED, *spec.repr_digest})
    if not spec.repr_digest:
        algorithms.append("md5")  # GCS clients read md5Hash back; ours declare a digest
    return algorithms


class RunningHash:
    """A whole-file hash fed as bytes are written, valid while `position` == offset."""

    def __init__(self, algorithms: list[str]) -> None:
        self.algorithms = algorithms
        self.hasher = MultiHasher(algorithms)
        self.position = 0

    def feed(self, data: bytes) -> None:
        self.hasher.update(data)
        self.position += len(data)

    def covers(self, spec: UploadSpec, offset: int) -> bool:
        """Whether this hash is of exactly `offset` bytes and has what `spec` declares."""
        wanted = {integrity.PREFERRED, *spec.repr_digest}
        return self.position == offset and wanted <= {*self.algorithms}


class ChunkIntake:
    """One chunk's body: `consume` it, then `check` it; `_write` stores fresh bytes."""

    def __init__(self, plan: ChunkPlan, digest: Digests) -> None:
        self.plan = plan
        self.expected = digest
        self.hasher = MultiHasher(digest)
        self.received = 0
        self.written = 0
        self.body_failed = False  # the body itself raised (timeout, disconnect, cancel)

    async def consume(
        self, body: AsyncIterable[bytes], feed: Callable[[bytes], None] | None
    ) -> None:
        """Take the whole body; `feed` gets the bytes that were written."""
        chunks = aiter(body)
        while True:
            try:
                data = await anext(chunks)
            except StopAsyncIteration:
                return
            except BaseException:
                self.body_failed = True
                raise
            check_body_length(self.plan, self.received + len(data), ended=False)
            self.hasher.update(data)
            fresh = data[max(0, self.plan.skip - self.received) :]
            self.received += len(data)
            if fresh:
                self._write(fresh)
                if feed is not None:
                    feed(fresh)

    def _write(self, data: bytes) -> None:
        """Store `data` at the end of the upload and add its length to `written`."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise unless the body had the range's length and its declared digest.

        Raises:
            BadRequest: `body_too_short` (see `protocol.check_body_length`).
            DigestMismatch: `chunk_digest_mismatch`.
        """
        check_body_length(self.plan, self.received, ended=True)
        integrity.verify(self.expected, self.hasher.digests(), what="chunk")


class InFlight:
    """The ids whose chunk is being written; a second mutation of one is refused."""

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def check(self, upload_id: str) -> None:
        """Raises:
        Conflict: `upload_conflict` while a chunk of `upload_id` is being written.
        """
        if upload_id in self._ids:
            raise Conflict(Code.UPLOAD_CONFLICT, f"a chunk of upload {upload_id} is being written")

    def begin(self, upload_id: str) -> None:
        """Mark `upload_id` busy until `end` (after `check`ing it is not).

        Raises: as `check`.
        """
        self.check(upload_id)
        self._ids.add(upload_id)

    def end(self, upload_id: str) -> None:
        self._ids.discard(upload_id)


class ClosingReader:
    """`async with` for a published-file reader: the reader is closed however the block
    ends. Subclasses implement `close`."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
