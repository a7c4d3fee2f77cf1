"""`FileStore`'s files under DATA_DIR, as blocking steps that callers run in a thread.

    uploads/{id}.json   the upload's parameters; on completion also its record (digests)
    uploads/{id}.part   the bytes received so far: its length IS the upload's offset
    files/{id}          published files, complete and verified; nothing partial ever lands here

Invariants:
- `.part` before `.json` on creation and `.json` before `.part` on removal: a crash in
  between leaves an orphan `.part` (the id is unknown and a new create truncates it),
  never a `.json` whose `.part` is missing.
- Publication rewrites the `.json` with `complete: true` (atomically) before the `.part`
  is renamed into `files/`; `recover` finishes a rename that a crash interrupted. So
  `files/{id}` exists only for verified uploads whose record is durable.
- A read never leaves a file behind for an upload that is being removed meanwhile.
Every method here blocks; `FileStore` calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

from transfer.common.fsutil import feed_file, fsync_dir, remove_tmp_files, write_atomic
from transfer.core import integrity
from transfer.core.integrity import MultiHasher
from transfer.core.protocol import UploadState
from transfer.core.records import (
    FileRecord,
    UploadInfo,
    UploadSpec,
    record_from_json,
    spec_from_json,
    spec_to_json,
)
from transfer.store.shared import ClosingReader


class DiskLayout:
    """Paths and blocking file-system steps of one data directory."""

    def __init__(self, data_dir: Path, *, durable: bool) -> None:
        self.uploads_dir = data_dir / "uploads"
        self.files_dir = data_dir / "files"
        self.durable = durable

    def meta(self, upload_id: str) -> Path:
        return self.uploads_dir / f"{upload_id}.json"

    def part(self, upload_id: str) -> Path:
        return self.uploads_dir / f"{upload_id}.part"

    def published(self, upload_id: str) -> Path:
        return self.files_dir / upload_id

    def recover(self) -> tuple[list[str], dict[str, int]]:
        """Create the layout and finish interrupted publications.

        Returns the ids recovered and the size of every partial upload's `.part`.
        """
        for directory in (self.uploads_dir, self.files_dir):
            directory.mkdir(parents=True, exist_ok=True)
            remove_tmp_files(directory)
        recovered = []
        for meta in sorted(self.uploads_dir.glob("*.json")):
            doc = json.loads(meta.read_bytes())
            part = meta.with_suffix(".part")
            if doc.get("complete") and part.exists():
                os.replace(part, self.published(doc["id"]))
                recovered.append(doc["id"])
        if recovered:
            self.sync_dirs(self.uploads_dir, self.files_dir)
        sizes = {part.stem: part.stat().st_size for part in self.uploads_dir.glob("*.part")}
        return recovered, sizes

    def read(self, upload_id: str) -> UploadInfo | None:
        """The upload as the disk has it: parameters from `.json`, offset from `.part`."""
        try:
            doc = json.loads(self.meta(upload_id).read_bytes())
        except FileNotFoundError:
            return None
        return self._info(doc)

    def _info(self, doc: dict[str, Any]) -> UploadInfo | None:
        spec = spec_from_json(doc)
        if doc.get("complete"):
            record = record_from_json(doc)
            return UploadInfo(spec, UploadState(record.size, record.size), record)
        try:
            offset = self.part(spec.upload_id).stat().st_size
        except FileNotFoundError:
            return self._without_part(spec)
        return UploadInfo(spec, UploadState(offset, spec.size))

    def _without_part(self, spec: UploadSpec) -> UploadInfo | None:
        """A `.json` whose `.part` is missing. Stores written before `create` made the
        `.part` first could crash between the two files: an upload with no bytes yet,
        whose `.part` is made now. Or a `remove` is running (it unlinks the `.json`
        first): then the upload is gone, and so is the `.part` made here."""
        part = self.part(spec.upload_id)
        part.touch()
        if not self.meta(spec.upload_id).exists():
            part.unlink(missing_ok=True)
            return None
        return UploadInfo(spec, UploadState(0, spec.size))

    def create(self, spec: UploadSpec) -> None:
        # The one directory fsync inside `save_spec` makes both entries durable.
        fd = os.open(self.part(spec.upload_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        self.save_spec(spec)

    def save_spec(
        self, spec: UploadSpec, record: FileRecord | None = None, *, sync_dir: bool = True
    ) -> None:
        doc = spec_to_json(spec)
        if record is not None:
            doc.update(complete=True, size=record.size, digests=integrity.to_hex(record.digests))
        write_atomic(
            self.meta(spec.upload_id),
            json.dumps(doc).encode(),
            sync=self.durable,
            sync_dir=sync_dir,
        )

    def reset(self, upload_id: str) -> None:
        """Cut the upload's bytes back to none, durably."""
        fd = os.open(self.part(upload_id), os.O_WRONLY)
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def publish(self, spec: UploadSpec, record: FileRecord) -> None:
        """Record first, then the rename; the caller syncs both directories."""
        self.save_spec(spec, record, sync_dir=False)
        os.replace(self.part(spec.upload_id), self.published(spec.upload_id))

    def remove(self, upload_id: str) -> None:
        """Unlink a partial upload's files, the `.json` first; then sync the directory."""
        for path in (self.meta(upload_id), self.part(upload_id)):
            path.unlink(missing_ok=True)
        self.sync_dirs(self.uploads_dir)

    def sync_dirs(self, *directories: Path) -> None:
        if self.durable:
            for directory in directories:
                fsync_dir(directory)

    def partials(self) -> list[tuple[str, float]]:
        """(id, last modification) of every `.part` on disk."""
        result = []
        for part in self.uploads_dir.glob("*.part"):
            try:
                result.append((part.stem, part.stat().st_mtime))
            except FileNotFoundError:
                continue  # completed or deleted meanwhile
        return result

    def modified(self, upload_id: str) -> float | None:
        try:
            return self.part(upload_id).stat().st_mtime
        except FileNotFoundError:
            return None

    def hash_part(self, upload_id: str, algorithms: list[str]) -> dict[str, bytes]:
        hasher = MultiHasher(algorithms)
        feed_file(self.part(upload_id), hasher.update)
        return hasher.digests()

    def open_published(self, upload_id: str) -> DiskFile | None:
        """The published file, open; None if there is none (or it is not a file)."""
        try:
            fd = os.open(self.published(upload_id), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return DiskFile(fd, info.st_size, info.st_mtime_ns)


class DiskFile(ClosingReader):
    """A `PublishedFile` on disk: an open descriptor; reads and close run in a thread."""

    def __init__(self, fd: int, size: int, modified_ns: int) -> None:
        self._fd: int | None = fd
        self.size = size
        self.modified_ns = modified_ns

    async def read(self, offset: int, length: int) -> bytes:
        assert self._fd is not None, "read after close"
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            await asyncio.to_thread(os.close, fd)
