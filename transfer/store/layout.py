"""`FileStore`'s files under DATA_DIR, as blocking steps that callers run in a thread.

    uploads/{id}.json        an unfinished upload's parameters
    uploads/{id}.part        the bytes received so far: its length IS the upload's offset
    records/ab/cd/{id}.json  a completed upload's record (`recordtree.py`: sharded by hash)
    files/{id}               published files, complete and verified; nothing partial ever lands here
    files/{tenant}/{id}      the same for a tenant (store key `{tenant}~{id}`: core/tenancy)

`uploads/` holds only what is unfinished (partial uploads, and publications a crash
interrupted), so start-up reads that and nothing of history: records are read one at
a time, when asked for.

Invariants:
- `.part` before `.json` on creation and `.json` before `.part` on removal: a crash in
  between leaves an orphan `.part` (never acknowledged: `recover` removes it), never a
  `.json` whose `.part` is missing.
- A `.json` is written atomically and durably (temporary name, fsync, rename, directory
  fsync), before anything about its upload is acknowledged. A provisional upload
  (`create(provisional=True)`, for `FileStore.deferred`) has no `.json` at first, only
  its `.part`, not fsynced into `uploads/`: its `.json` is written (`save_spec`) before
  anything about it is acknowledged, or the upload is published first and its record
  holds every parameter. So a `.part` with neither a `.json` nor a record was never
  acknowledged, whatever a crash cut short, and `recover` removes it.
- Publication writes the record into `records/` (durably) before the `.part` is renamed
  into `files/`, and unlinks `uploads/{id}.json` last. So `files/{id}` exists only for
  verified uploads whose record is durable, and an interrupted publication is an entry
  of `uploads/` whose id has a record: `recover` finishes it (one stat per unfinished
  upload), never putting a `.part` over a file already in `files/`.
- A data dir of the flat layout (completed records as `uploads/{id}.json` with
  `complete: true`) is migrated by the same `recover`, once: each record is written into
  `records/` durably (keeping its mtime) before its old `.json` is unlinked, so a crash
  mid-way loses nothing and the next start-up carries on where it stopped.
- A read never leaves a file behind for an upload that is being removed meanwhile.
Every method here blocks; `FileStore` calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer.common.fsutil import fsync_dir, remove_tmp_files
from transfer.core import integrity
from transfer.core.errors import Code, Conflict
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
from transfer.core.tenancy import SEPARATOR
from transfer.store import ospath
from transfer.store.recordtree import RecordTree
from transfer.store.shared import ClosingReader

MIGRATION_BATCH = 1000  # records made durable by one flush during a migration


@dataclass(slots=True)
class Recovery:
    """What start-up found in `uploads/`: the unfinished set."""

    recovered: list[str] = field(default_factory=list)  # publications finished now
    discarded: list[str] = field(default_factory=list)  # never acknowledged: removed
    migrated: int = 0  # flat-layout records moved into records/
    sizes: dict[str, int] = field(default_factory=dict)  # every partial upload's `.part`


class DiskLayout:
    """Paths and blocking file-system steps of one data directory."""

    def __init__(self, data_dir: Path, *, durable: bool) -> None:
        self.uploads_dir = data_dir / "uploads"
        self.files_dir = data_dir / "files"
        self.records = RecordTree(data_dir / "records", durable=durable)
        self.durable = durable
        self.reads = 0  # JSON documents read (start-up and cache misses), for `counts`

    # Names with an id in them are `str`s, never `Path`s: see `ospath` for why.

    def meta(self, upload_id: str) -> str:
        return f"{self.uploads_dir}/{upload_id}.json"

    def part(self, upload_id: str) -> str:
        return f"{self.uploads_dir}/{upload_id}.part"

    def published(self, upload_id: str) -> str:
        tenant, _, name = upload_id.rpartition(SEPARATOR)
        return f"{self.files_dir}/{tenant}/{name}" if tenant else f"{self.files_dir}/{upload_id}"

    def published_dir(self, upload_id: str) -> str:
        """The directory `published(upload_id)` is in: `files/`, or `files/{tenant}`."""
        return os.path.dirname(self.published(upload_id))  # noqa: PTH120 (a str name)

    def _make_published_dir(self, upload_id: str) -> None:
        """Create a tenant's `files/{tenant}` on its first publication, durably."""
        directory = self.published_dir(upload_id)
        if directory == str(self.files_dir):
            return
        try:
            os.mkdir(directory)  # noqa: PTH102 (a str name)
        except FileExistsError:
            return
        self.sync_dirs(self.files_dir)

    def _load(self, path: str) -> dict[str, Any] | None:
        data = ospath.read(path)
        if data is None:
            return None
        self.reads += 1
        doc: dict[str, Any] = json.loads(data)
        return doc

    # --- start-up -----------------------------------------------------------------------

    def recover(self) -> Recovery:
        """Create the layout, finish interrupted publications, migrate a flat layout.

        Reads only `uploads/`: work proportional to what is unfinished."""
        for directory in (self.uploads_dir, self.files_dir, self.records.root):
            directory.mkdir(parents=True, exist_ok=True)
        # Only `uploads/` holds temporary files (of `.json` writes). `files/` is never
        # listed: it holds every file ever published (and an id may end in `.tmp`);
        # records/ shards' leftovers are swept by `RecordTree.older_than`.
        remove_tmp_files(self.uploads_dir)
        found, pending = Recovery(), []
        for upload_id, names in sorted(self._unfinished().items()):
            if self._recover_one(upload_id, names, found):
                pending.append((upload_id, names))
            if len(pending) >= MIGRATION_BATCH:
                self._settle(pending, found)
                pending = []
        self._settle(pending, found)
        return found

    def _unfinished(self) -> dict[str, set[str]]:
        """id -> the suffixes (".json", ".part") it has in `uploads/`."""
        ids: dict[str, set[str]] = {}
        with os.scandir(self.uploads_dir) as entries:
            for entry in entries:
                stem, dot, suffix = entry.name.rpartition(".")
                if dot and suffix in ("json", "part"):
                    ids.setdefault(stem, set()).add(suffix)
        return ids

    def _recover_one(self, upload_id: str, names: set[str], found: Recovery) -> bool:
        """True if the id's publication is to be finished (`_settle`); a partial
        upload's size goes into `found`, a never acknowledged one is removed."""
        doc = self._load(self.meta(upload_id)) if "json" in names else None
        if doc is not None and doc.get("complete"):
            self._migrate(upload_id, doc)
            found.migrated += 1
            return True
        if self.records.exists(upload_id):
            return True
        if doc is None:
            # A `.part` alone: a creation or a removal cut short, or a provisional upload
            # (see the module's invariants). None was acknowledged.
            self._discard(upload_id)
            found.discarded.append(upload_id)
            return False
        part = ospath.stat(self.part(upload_id)) if "part" in names else None
        if part is not None:
            found.sizes[upload_id] = part.st_size
        return False

    def _discard(self, upload_id: str) -> None:
        """Remove the `.part` of an upload never acknowledged. No fsync: if the unlink
        is lost, the next start removes it again."""
        ospath.unlink(self.part(upload_id))

    def _migrate(self, upload_id: str, doc: dict[str, Any]) -> None:
        """A flat-layout record into `records/`, with its old mtime; made durable by
        `_settle`'s one flush for the whole batch (two fsyncs per record measured 7 ms
        a record: two hours for a million)."""
        if self.records.exists(upload_id):
            return  # a migration cut short after this record: the copy is whole
        meta = ospath.stat(self.meta(upload_id))
        mtime = None if meta is None else meta.st_mtime
        self.records.write(upload_id, json.dumps(doc).encode(), mtime=mtime, sync=False)

    def _settle(self, pending: list[tuple[str, set[str]]], found: Recovery) -> None:
        """Make the batch's records durable (one `sync`), then finish each rename and
        unlink each old `.json`: never before its record is on disk."""
        if not pending:
            return
        if self.durable:
            os.sync()
        for upload_id, names in pending:
            if "part" in names and self._finish(upload_id):
                found.recovered.append(upload_id)
            ospath.unlink(self.meta(upload_id))
        tenant_dirs = {self.published_dir(upload_id) for upload_id, _ in pending}
        self.sync_dirs(self.uploads_dir, self.files_dir, *tenant_dirs)

    def _finish(self, upload_id: str) -> bool:
        """The rename a crash interrupted; False if the file was published already (the
        `.part` is then a leftover, and never put over the published file)."""
        if ospath.stat(self.published(upload_id)) is not None:
            ospath.unlink(self.part(upload_id))
            return False
        self._make_published_dir(upload_id)
        os.replace(self.part(upload_id), self.published(upload_id))
        return True

    # --- one upload -----------------------------------------------------------------------

    def read(self, upload_id: str) -> UploadInfo | None:
        """The upload as the disk has it: an unfinished one from `uploads/` (offset from
        `.part`), else its record from `records/`; None if neither knows the id."""
        doc = self._load(self.meta(upload_id))
        if doc is not None:
            info = self._info(doc)
            if info is not None:
                return info
        record = self._load(self.records.path(upload_id))
        return None if record is None else self._info(record)

    def _info(self, doc: dict[str, Any]) -> UploadInfo | None:
        """None for a `.json` whose publication just finished (its record is the truth)."""
        spec = spec_from_json(doc)
        if doc.get("complete"):
            record = record_from_json(doc)
            return UploadInfo(spec, UploadState(record.size, record.size), record)
        part = ospath.stat(self.part(spec.upload_id))
        if part is not None:
            return UploadInfo(spec, UploadState(part.st_size, spec.size))
        if self.records.exists(spec.upload_id):
            return None  # published meanwhile
        return self._without_part(spec)

    def _without_part(self, spec: UploadSpec) -> UploadInfo | None:
        """A `.json` whose `.part` is missing. Stores written before `create` made the
        `.part` first could crash between the two files: an upload with no bytes yet,
        whose `.part` is made now. Or a `remove` is running (it unlinks the `.json`
        first): then the upload is gone, and so is the `.part` made here."""
        part = self.part(spec.upload_id)
        ospath.touch(part)
        if ospath.stat(self.meta(spec.upload_id)) is None:
            ospath.unlink(part)
            return None
        return UploadInfo(spec, UploadState(0, spec.size))

    def read_or_create(
        self, spec: UploadSpec, *, provisional: bool, known_absent: bool = False
    ) -> tuple[UploadInfo | None, int | None]:
        """(what the disk has, None) if the id exists; else it is created (`create`):
        (None, its `.part` open for writing at 0 if `provisional`, else None). One
        thread hop for both steps of a creation. `known_absent`: the caller read the id
        as missing under a lock that nothing creating it could pass, so it is not read
        again (`create`'s check of `files/` still runs).

        Raises: as `create`.
        """
        found = None if known_absent else self.read(spec.upload_id)
        if found is not None:
            return found, None
        return None, self.create(spec, provisional=provisional)

    def create(self, spec: UploadSpec, *, provisional: bool = False) -> int | None:
        """A new upload: `.part` first, then its `.json`, durably. A `provisional` one
        gets no `.json` (see the module's invariants): its `.part`'s descriptor is
        returned, open for writing at 0, and the caller closes it.

        Raises:
        Conflict: `upload_complete` when the id's file is published (its record was
            removed by `--record-ttl`): an id is never reused, a published file never
            replaced.
        """
        if ospath.stat(self.published(spec.upload_id)) is not None:
            raise Conflict(
                Code.UPLOAD_COMPLETE,
                f"upload {spec.upload_id} is complete and its file published; ids are never reused",
            )
        fd = os.open(self.part(spec.upload_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if provisional:
            return fd
        os.close(fd)
        self.save_spec(spec)  # its one directory fsync makes both entries durable
        return None

    def save_spec(self, spec: UploadSpec) -> None:
        """Write the `.json` atomically and durably; its directory fsync also makes a
        provisional upload's `.part` durable in `uploads/`."""
        ospath.write_atomic(self.meta(spec.upload_id), _spec_bytes(spec), sync=self.durable)

    def reset(self, upload_id: str) -> None:
        """Cut the upload's bytes back to none, durably."""
        fd = os.open(self.part(upload_id), os.O_WRONLY)
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def publish(self, spec: UploadSpec, record: FileRecord) -> None:
        """The record, durable, first; then the rename, made durable by one fsync of the
        file's directory; then the `.json` leaves `uploads/`. One thread hop.

        `uploads/` is not fsynced, neither for the rename out of it nor for the unlink:
        what a crash brings back there (the `.part`, the `.json`) has a durable record,
        and `recover` removes it again; the `.part` is never put over `files/{id}`."""
        doc = spec_to_json(spec)
        doc.update(complete=True, size=record.size, digests=integrity.to_hex(record.digests))
        self.records.write(spec.upload_id, json.dumps(doc).encode())
        self._make_published_dir(spec.upload_id)
        os.replace(self.part(spec.upload_id), self.published(spec.upload_id))
        self.sync_dirs(self.published_dir(spec.upload_id))
        ospath.unlink(self.meta(spec.upload_id))

    def remove(self, upload_id: str) -> None:
        """Unlink a partial upload's files, the `.json` first; then sync the directory."""
        for path in (self.meta(upload_id), self.part(upload_id)):
            ospath.unlink(path)
        self.sync_dirs(self.uploads_dir)

    def sync_dirs(self, *directories: str | Path) -> None:
        if self.durable:
            for directory in directories:
                fsync_dir(directory)

    def partials(self) -> list[tuple[str, float]]:
        """(id, last modification) of every `.part` on disk (`uploads/` holds only the
        unfinished set, so this costs no more than what is unfinished)."""
        result = []
        with os.scandir(self.uploads_dir) as entries:
            for entry in entries:
                if not entry.name.endswith(".part"):
                    continue
                try:
                    result.append((entry.name.removesuffix(".part"), entry.stat().st_mtime))
                except FileNotFoundError:
                    continue  # completed or deleted meanwhile
        return result

    def modified(self, upload_id: str) -> float | None:
        found = ospath.stat(self.part(upload_id))
        return None if found is None else found.st_mtime

    def hash_part(self, upload_id: str, algorithms: list[str]) -> dict[str, bytes]:
        hasher = MultiHasher(algorithms)
        ospath.feed(self.part(upload_id), hasher.update)
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


def _spec_bytes(spec: UploadSpec) -> bytes:
    return json.dumps(spec_to_json(spec)).encode()


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
