"""Partial uploads and published files on the server's disk.

Layout under DATA_DIR:

    uploads/{id}.json   the upload's parameters; on completion also its record (digests)
    uploads/{id}.part   the bytes received so far: its length IS the upload's offset
    files/{id}          published files, complete and verified; nothing partial ever lands here

Invariants:
- The offset is the `.part` file's length on disk, read at first use; afterwards this
  process is its only writer, so the cached number always equals the disk.
- Bytes are fsynced before `write_chunk` returns, so everything acknowledged survives
  a crash. A chunk that fails (digest mismatch, full disk, EIO, wrong length) is cut back
  to the old offset before anyone sees a larger one. Only when the *body* broke off (idle
  timeout, disconnect) and the chunk carried no `Content-Digest` are the bytes received
  kept, fsynced: they are valid bytes at their offsets, and the whole-file digest still
  guards them. A crash mid-chunk may leave unacknowledged bytes; they count as stored.
- Publication: the `.json` is rewritten with `complete: true` (atomically) before the
  `.part` is renamed into `files/`; recovery finishes a rename that a crash interrupted.
  So `files/{id}` exists only for verified uploads whose record is durable.
- Blocking writes go to the page cache on the event loop (cheap); fsync and whole-file
  hashing run in a thread so they never stall other requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from transfer.common.fsutil import feed_file, fsync_dir, remove_tmp_files, write_atomic
from transfer.core import integrity
from transfer.core.errors import DigestMismatch
from transfer.core.integrity import Digests, MultiHasher
from transfer.core.protocol import ChunkPlan, UploadState, check_total
from transfer.core.records import (
    FileRecord,
    UploadInfo,
    UploadSpec,
    check_same,
    record_from_json,
    spec_from_json,
    spec_to_json,
)
from transfer.store.chunkwriter import ChunkWriter


class UploadStore(Protocol):
    """The seam between the HTTP layer and the disk. Callers serialize per upload id."""

    partial_bytes: int  # bytes held by all partial uploads

    async def get(self, upload_id: str) -> UploadInfo | None: ...
    async def create(self, spec: UploadSpec) -> UploadInfo: ...
    async def declare(
        self, upload_id: str, *, size: int | None, repr_digest: Digests
    ) -> UploadInfo: ...
    async def write_chunk(
        self,
        upload_id: str,
        plan: ChunkPlan,
        body: AsyncIterable[bytes],
        content_digest: Digests,
    ) -> UploadInfo: ...
    async def finalize(self, upload_id: str) -> UploadInfo: ...
    async def delete(self, upload_id: str) -> None: ...
    def file_path(self, upload_id: str) -> Path: ...
    def free_bytes(self) -> int: ...
    def partials(self) -> list[tuple[str, float]]: ...
    def modified(self, upload_id: str) -> float | None: ...


class _Running:
    """A whole-file hash fed as bytes are written, valid while `position` == offset."""

    def __init__(self, algorithms: list[str]) -> None:
        self.algorithms = algorithms
        self.hasher = MultiHasher(algorithms)
        self.position = 0

    def feed(self, data: bytes) -> None:
        self.hasher.update(data)
        self.position += len(data)


class FileStore:
    """`UploadStore` on a local file system (see the module docstring for the layout)."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.uploads_dir = data_dir / "uploads"
        self.files_dir = data_dir / "files"
        self._durable = durable
        self._cache: dict[str, UploadInfo] = {}
        self._partial: dict[str, int] = {}  # offsets of incomplete uploads, for the quota
        self.partial_bytes = 0
        self._running: dict[str, _Running] = {}

    def open(self) -> list[str]:
        """Create the layout and finish interrupted publications; returns ids recovered."""
        for directory in (self.uploads_dir, self.files_dir):
            directory.mkdir(parents=True, exist_ok=True)
            remove_tmp_files(directory)
        recovered = []
        for meta in sorted(self.uploads_dir.glob("*.json")):
            doc = json.loads(meta.read_bytes())
            part = meta.with_suffix(".part")
            if doc.get("complete") and part.exists():
                os.replace(part, self.files_dir / doc["id"])
                recovered.append(doc["id"])
        if recovered:
            self._sync_dirs()
        for part in self.uploads_dir.glob("*.part"):
            self._partial[part.stem] = part.stat().st_size
        self.partial_bytes = sum(self._partial.values())
        return recovered

    def file_path(self, upload_id: str) -> Path:
        return self.files_dir / upload_id

    def _remember(self, info: UploadInfo) -> None:
        """Cache `info` and keep the partial-bytes total in step with it."""
        upload_id = info.spec.upload_id
        self._cache[upload_id] = info
        size = 0 if info.record is not None else info.state.offset
        self.partial_bytes += size - self._partial.get(upload_id, 0)
        self._partial[upload_id] = size

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.uploads_dir).free

    def partials(self) -> list[tuple[str, float]]:
        """(id, last modification) of every partial upload on disk."""
        result = []
        for part in self.uploads_dir.glob("*.part"):
            try:
                result.append((part.stem, part.stat().st_mtime))
            except FileNotFoundError:
                continue  # completed or deleted meanwhile
        return result

    def modified(self, upload_id: str) -> float | None:
        """When the upload last received bytes (or was created), None if not partial."""
        try:
            return self._part(upload_id).stat().st_mtime
        except FileNotFoundError:
            return None

    def _meta(self, upload_id: str) -> Path:
        return self.uploads_dir / f"{upload_id}.json"

    def _part(self, upload_id: str) -> Path:
        return self.uploads_dir / f"{upload_id}.part"

    async def get(self, upload_id: str) -> UploadInfo | None:
        if upload_id in self._cache:
            return self._cache[upload_id]
        try:
            doc = json.loads(self._meta(upload_id).read_bytes())
        except FileNotFoundError:
            return None
        info = self._load(doc)
        self._remember(info)
        return info

    def _load(self, doc: dict[str, Any]) -> UploadInfo:
        spec = spec_from_json(doc)
        if doc.get("complete"):
            record = record_from_json(doc)
            return UploadInfo(spec, UploadState(record.size, record.size), record)
        try:
            offset = self._part(spec.upload_id).stat().st_size
        except FileNotFoundError:
            # Stores written before `create` made the .part first could crash between
            # the two files; an upload with no bytes yet is exactly that.
            self._part(spec.upload_id).touch()
            offset = 0
        return UploadInfo(spec, UploadState(offset, spec.size))

    async def create(self, spec: UploadSpec) -> UploadInfo:
        existing = await self.get(spec.upload_id)
        if existing is not None:
            check_same(existing.spec, spec)
            return await self.declare(spec.upload_id, size=spec.size, repr_digest=spec.repr_digest)
        await asyncio.to_thread(self._create_files, spec)
        info = UploadInfo(spec, UploadState(0, spec.size))
        self._remember(info)
        self._start_running(info)
        return info

    async def declare(
        self, upload_id: str, *, size: int | None, repr_digest: Digests
    ) -> UploadInfo:
        """Record a total or a whole-file digest learned after creation."""
        info = await self._require(upload_id)
        spec = info.spec
        new_size = check_total(info.state, size)  # Conflict before anything is saved
        new_digest = dict(repr_digest) if repr_digest else dict(spec.repr_digest)
        if new_size == spec.size and new_digest == dict(spec.repr_digest):
            return info
        spec = replace(spec, size=new_size, repr_digest=new_digest)
        if info.record is None:
            await asyncio.to_thread(self._save_spec, spec)
        info = replace(info, spec=spec, state=UploadState(info.state.offset, new_size))
        self._remember(info)
        return info

    async def _require(self, upload_id: str) -> UploadInfo:
        info = await self.get(upload_id)
        if info is None:
            raise KeyError(upload_id)
        return info

    def _create_files(self, spec: UploadSpec) -> None:
        # The .part first: a crash between the two leaves an orphan .part (the id is still
        # unknown and a new create truncates it), never a .json whose .part is missing.
        # The one directory fsync inside `_save_spec` makes both entries durable.
        fd = os.open(self._part(spec.upload_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        self._save_spec(spec)

    def _save_spec(
        self, spec: UploadSpec, record: FileRecord | None = None, *, sync_dir: bool = True
    ) -> None:
        doc = spec_to_json(spec)
        if record is not None:
            doc.update(complete=True, size=record.size, digests=integrity.to_hex(record.digests))
        write_atomic(
            self._meta(spec.upload_id),
            json.dumps(doc).encode(),
            sync=self._durable,
            sync_dir=sync_dir,
        )

    def _start_running(self, info: UploadInfo) -> None:
        algorithms = sorted({integrity.PREFERRED, *info.spec.repr_digest})
        if not info.spec.repr_digest:
            algorithms.append("md5")  # GCS clients read md5Hash back; ours declare a digest
        self._running[info.spec.upload_id] = _Running(algorithms)

    async def write_chunk(
        self,
        upload_id: str,
        plan: ChunkPlan,
        body: AsyncIterable[bytes],
        content_digest: Digests,
    ) -> UploadInfo:
        """Write a chunk's body per `plan`, fsync it, and return the new state.

        Raises:
            DigestMismatch: `chunk_digest_mismatch`; nothing of the chunk is kept.
            BadRequest: `body_too_long` / `body_too_short` when the body and range disagree.
            InsufficientStorage / StorageFailure: the disk refused; nothing is acknowledged.
            Whatever `body` raises (timeouts, disconnects), after keeping or dropping the
            received bytes as the module docstring says.
        """
        info = await self._require(upload_id)
        writer = ChunkWriter(
            self._part(upload_id), info.state.offset, plan, content_digest, durable=self._durable
        )
        running = self._running.get(upload_id)
        if running is not None and running.position != info.state.offset:
            running = None
        try:
            await writer.consume(body, running.feed if running else None)
            writer.check()
            await writer.sync()
        except BaseException:
            self._forget_running(upload_id, writer)
            kept = await writer.settle(keep=writer.body_failed and not content_digest)
            self._remember(replace(info, state=UploadState(kept, plan.total)))
            raise
        finally:
            await writer.close()
        return self._advanced(info, plan, writer.written)

    def _forget_running(self, upload_id: str, writer: ChunkWriter) -> None:
        if writer.written:
            self._running.pop(upload_id, None)

    def _advanced(self, info: UploadInfo, plan: ChunkPlan, written: int) -> UploadInfo:
        state = UploadState(info.state.offset + written, plan.total)
        spec = info.spec if info.spec.size == plan.total else replace(info.spec, size=plan.total)
        new = replace(info, spec=spec, state=state)
        self._remember(new)
        return new

    async def finalize(self, upload_id: str) -> UploadInfo:
        """Verify the whole file against its declared digest, then publish it.

        Raises:
            DigestMismatch: `repr_digest_mismatch`; the upload is reset to offset 0.
        """
        info = await self._require(upload_id)
        if info.record is not None:
            return info
        digests = await self._whole_digests(info)
        try:
            integrity.verify(info.spec.repr_digest, digests, what="repr")
        except DigestMismatch:
            await asyncio.to_thread(self._reset, upload_id)
            self._remember(replace(info, state=UploadState(0, info.spec.size)))
            self._start_running(self._cache[upload_id])
            raise
        record = FileRecord(
            upload_id, info.spec.name, info.state.offset, info.spec.metadata, digests
        )
        await self._publish(info.spec, record)
        self._running.pop(upload_id, None)
        done = UploadInfo(info.spec, info.state, record)
        self._remember(done)
        return done

    async def _whole_digests(self, info: UploadInfo) -> dict[str, bytes]:
        wanted = {integrity.PREFERRED, *info.spec.repr_digest}
        running = self._running.get(info.spec.upload_id)
        if running and running.position == info.state.offset and wanted <= {*running.algorithms}:
            return running.hasher.digests()
        if not info.spec.repr_digest:
            wanted.add("md5")
        return await asyncio.to_thread(_hash_file, self._part(info.spec.upload_id), wanted)

    def _reset(self, upload_id: str) -> None:
        fd = os.open(self._part(upload_id), os.O_WRONLY)
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _publish(self, spec: UploadSpec, record: FileRecord) -> None:
        """Record first, then the rename; one fsync per directory, both at once."""
        await asyncio.to_thread(self._rename_published, spec, record)
        if self._durable:
            await asyncio.gather(
                asyncio.to_thread(fsync_dir, self.uploads_dir),
                asyncio.to_thread(fsync_dir, self.files_dir),
            )

    def _rename_published(self, spec: UploadSpec, record: FileRecord) -> None:
        self._save_spec(spec, record, sync_dir=False)
        os.replace(self._part(spec.upload_id), self.file_path(spec.upload_id))

    async def delete(self, upload_id: str) -> None:
        """Abort a partial upload: its bytes and parameters are removed."""
        # The .json first, for the same reason as in `create`.
        for path in (self._meta(upload_id), self._part(upload_id)):
            path.unlink(missing_ok=True)
        self._cache.pop(upload_id, None)
        self.partial_bytes -= self._partial.pop(upload_id, 0)
        self._running.pop(upload_id, None)
        await self._sync_dir_async()

    def _sync_dirs(self) -> None:
        if self._durable:
            fsync_dir(self.uploads_dir)
            fsync_dir(self.files_dir)

    async def _sync_dir_async(self) -> None:
        if self._durable:
            await asyncio.to_thread(fsync_dir, self.uploads_dir)


def _hash_file(path: Path, algorithms: set[str]) -> dict[str, bytes]:
    hasher = MultiHasher(sorted(algorithms))
    feed_file(path, hasher.update)
    return hasher.digests()


__all__ = ["FileRecord", "FileStore", "UploadInfo", "UploadSpec", "UploadStore"]
