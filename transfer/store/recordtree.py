"""Completed uploads' records, sharded so that no directory grows without bound.

    records/{h[0:2]}/{h[2:4]}/{id}.json    h = blake2b(id, digest_size=2), in hex

256 x 256 = 65,536 leaf directories, filled evenly by the hash: a million records put
about 15 entries in each, a hundred million about 1,500. The hash is of the id alone
(stable across processes and versions), so a record is found with one `open`, never a
listing.

Invariants:
- A record is written once, atomically and durably (temporary name, fsync, rename,
  fsync of its directory, and of the parent of every shard directory it needed made),
  and never rewritten. It is written before its file appears in `files/` (`layout.py`),
  so the order of those fsyncs does not matter; the parents come last, where the
  journal of most file systems has committed their new entries already.
- A shard directory is durable in its parent before any record in it is: a writer
  that finds a shard another thread made and has not fsynced into its parent yet
  fsyncs that parent itself (`_unsynced`).
- Its mtime is the publication time (a record migrated from an old data dir keeps the
  old `.json`'s mtime): `--record-ttl` reads it, so no date is parsed from JSON.
- Removing a record (`--record-ttl`) unlinks only the record; `files/{id}` stays.
- Reads, lookups and walks never create anything.
Every method blocks; callers run them in a thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from transfer.common.fsutil import TMP_SUFFIX
from transfer.store import ospath


def shard_of(upload_id: str) -> tuple[str, str]:
    """The two directory names under `records/` that hold `upload_id`'s record."""
    digest = hashlib.blake2b(upload_id.encode(), digest_size=2).hexdigest()
    return digest[:2], digest[2:]


class RecordTree:
    """The `records/` directory of one data dir."""

    def __init__(self, root: Path, *, durable: bool) -> None:
        self.root = root
        self.durable = durable
        # Shard directories made whose parent is not fsynced yet -> that parent. Writers
        # run in threads: the lock guards the dict, never an fsync.
        self._unsynced: dict[str, str] = {}
        self._lock = threading.Lock()

    def shard(self, upload_id: str) -> str:
        """The leaf directory (a `str`: see `ospath` for why no `Path` names an id)."""
        top, leaf = shard_of(upload_id)
        return f"{self.root}/{top}/{leaf}"

    def path(self, upload_id: str) -> str:
        return f"{self.shard(upload_id)}/{upload_id}.json"

    def exists(self, upload_id: str) -> bool:
        return ospath.stat(self.path(upload_id)) is not None

    def read(self, upload_id: str) -> bytes | None:
        return ospath.read(self.path(upload_id))

    def write(
        self, upload_id: str, data: bytes, *, mtime: float | None = None, sync: bool = True
    ) -> None:
        """Write the record, durably unless `sync` is False (a migration flushes a whole
        batch at once); `mtime` (a migration's) replaces the time stamp. The shard is
        made when the first write into it finds it missing (no `stat` per record)."""
        path, shard = self.path(upload_id), self.shard(upload_id)
        durable = self.durable and sync
        try:
            ospath.write_atomic(path, data, sync=durable)
        except FileNotFoundError:
            self._make_shard(shard, durable)
            ospath.write_atomic(path, data, sync=durable)
        if durable:
            self._sync_parents(shard)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def _make_shard(self, leaf: str, durable: bool) -> None:
        """Create `records/ab/cd`; each directory made is noted in `_unsynced` if it is
        to be durable (a migration's one `sync` covers its own)."""
        top = leaf.rpartition("/")[0]
        for directory, parent in ((top, str(self.root)), (leaf, top)):
            with self._lock:
                try:
                    os.mkdir(directory)  # noqa: PTH102 (a str: see `ospath`)
                except FileExistsError:
                    continue
                if durable:
                    self._unsynced[directory] = parent

    def _sync_parents(self, leaf: str) -> None:
        """Fsync the parents of `leaf` and of its top directory if either was made and
        not yet fsynced into its parent (by this writer or another one)."""
        top = leaf.rpartition("/")[0]
        for directory in (top, leaf):
            with self._lock:
                parent = self._unsynced.get(directory)
            if parent is None:
                continue
            ospath.fsync_dir(parent)
            with self._lock:
                self._unsynced.pop(directory, None)

    def remove(self, upload_id: str) -> bool:
        """Unlink the record (durably); False if there was none."""
        if not ospath.unlink(self.path(upload_id)):
            return False
        if self.durable:
            ospath.fsync_dir(self.shard(upload_id))
        return True

    def modified(self, upload_id: str) -> float | None:
        found = ospath.stat(self.path(upload_id))
        return None if found is None else found.st_mtime

    def older_than(self, cutoff: float) -> list[str]:
        """Ids whose record was written before `cutoff` (a Unix time). A walk of every
        record: the record-ttl sweep's cost, proportional to the records it retains.
        Temporary files of writes a crash cut off, older than `cutoff`, are removed."""
        found = []
        for entry in self._entries():
            try:
                modified = entry.stat().st_mtime
            except FileNotFoundError:
                continue  # removed meanwhile
            if modified >= cutoff:
                continue
            if entry.name.endswith(TMP_SUFFIX):
                ospath.unlink(entry.path)
            elif entry.name.endswith(".json"):
                found.append(entry.name.removesuffix(".json"))
        return found

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        for top in _subdirs(self.root):
            for leaf in _subdirs(top.path):
                with os.scandir(leaf.path) as entries:
                    yield from entries

    def count(self) -> int:
        """How many records there are: a walk, for benchmarks and tests, never start-up."""
        return sum(1 for e in self._entries() if e.name.endswith(".json"))


def _subdirs(directory: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return [e for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
