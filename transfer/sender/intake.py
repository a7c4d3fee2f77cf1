"""Watch mode's source for the pipeline: complete files in, journaled entries out.

    Watcher ──(rel, stat), complete──> hash ──> classify (watch.py) ──> journal ──> queue
    pipeline worker ──confirmed──> `delivered`: after-confirm action, last delivered

Invariants:
- A file is queued only once its record is durable: relative path, size, mtime_ns,
  digest and version (journal `rel`, `mtime_ns`, `version`), state GENERATED. The
  upload then reads the file in place; the uploader checks its digest against this
  record before every attempt, and the server checks the whole-file digest, so a file
  changed after journaling is never confirmed as a mixture of two versions.
- A path whose latest version has the same size and mtime is never hashed again
  (`wanted` is False), unless it is confirmed and the after-confirm action still has
  to run (a crash between confirmation and deletion): then it is taken again, found
  KNOWN, and the action re-checks it before acting.
- The same content is never journaled twice for one path (KNOWN); a confirmed file
  found under a new path with the same size, mtime and digest while its old path is
  gone is recognised as moved (a renamed folder) and not sent again.
- Superseded versions (a newer version of the same path is journaled) are not
  re-queued on restart: their bytes are gone from disk.
- Files are journaled in arrival order, concurrently (so the journal's group commit
  shares fsyncs) but recorded and queued in that order.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender import afterconfirm
from transfer.sender.afterconfirm import Action
from transfer.sender.journal import Journal, JournalEntry
from transfer.sender.uploader import hash_file
from transfer.sender.watch import Known, Stat, Verdict, WatchConfig, classify, watch_id
from transfer.sender.watcher import Watcher

log = structlog.get_logger("transfer.watch")
Enqueue = Callable[[JournalEntry], None]
LAST_DELIVERED = "watch_last_delivered"  # journal meta keys, read by `transfer status`
WATCHED_DIR = "watch_dir"


@dataclass(slots=True)
class WatchTally:
    taken: int = 0
    versions: int = 0
    refused: int = 0
    moved: int = 0
    last_delivered: dict[str, object] | None = None
    declined: set[tuple[str, Stat]] = field(default_factory=set)  # refused or unreadable


class WatchSource:
    """Feeds a `Sender` from a watched folder (see the module's invariants)."""

    def __init__(
        self,
        config: WatchConfig,
        journal: Journal,
        run: str,
        enqueue: Enqueue,
    ) -> None:
        self.config, self.journal, self.run_id = config, journal, run
        self.root = config.root.absolute()
        self.after = config.after_confirm
        self._enqueue = enqueue
        self.tally = WatchTally()
        self._latest: dict[str, JournalEntry] = {}
        self._by_content: dict[tuple[int, int, str], JournalEntry] = {}
        for entry in journal.entries():
            self._index(entry)
        self.watcher = Watcher(config, self)

    async def run(self) -> None:
        await self.journal.set_meta(WATCHED_DIR, str(self.root))
        log.info(
            Event.WATCH_STARTED, dir=str(self.root), settle=self.config.settle,
            include=list(self.config.rules.include), exclude=list(self.config.rules.exclude),
            rescan=self.config.rescan, after_confirm=self.after.action.value,
        )  # fmt: skip
        await self.watcher.run()

    def resumes(self, entry: JournalEntry) -> bool:
        """Whether a restart re-queues `entry`: not if a newer version superseded it."""
        latest = self._latest.get(entry.rel) if entry.rel is not None else None
        return latest is None or latest.file_id == entry.file_id

    def wanted(self, rel: str, stat: Stat) -> bool:
        if (rel, stat) in self.tally.declined:
            return False
        latest = self._current(rel)
        if latest is None or (latest.size, latest.mtime_ns) != (stat.size, stat.mtime_ns):
            return True
        return latest.state is FileState.CONFIRMED and self.after.action is not Action.KEEP

    async def take(self, ready: list[tuple[str, Stat]]) -> None:
        hashed = await asyncio.to_thread(_hash_all, self.root, ready)
        decided = [await self._decide(rel, stat, digest) for rel, stat, digest in hashed]
        entries = [entry for entry in decided if entry is not None]
        await asyncio.gather(*(self.journal.record(entry) for entry in entries))
        for entry in entries:
            self._index(entry)
            self.tally.taken += 1
            log.info(
                Event.WATCH_TAKEN, file_id=entry.file_id, name=entry.rel, size=entry.size,
                version=entry.version,
            )  # fmt: skip
            self._enqueue(entry)

    async def delivered(self, entry: JournalEntry) -> None:
        """After a pipeline worker recorded `entry`'s outcome durably."""
        if entry.rel is None or entry.state is not FileState.CONFIRMED:
            return
        self._index(entry)
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self.tally.last_delivered = {"name": entry.rel, "file_id": entry.file_id, "at": when}
        await self.journal.set_meta(LAST_DELIVERED, f"{entry.rel} {entry.file_id} {when}")
        await afterconfirm.apply(self.after, entry)

    def status(self) -> dict[str, object]:
        """What /status shows about the watch."""
        unconfirmed = sum(1 for e in self._latest.values() if e.state is not FileState.CONFIRMED)
        return {
            "dir": str(self.root),
            "settling": len(self.watcher.tracker.sightings),
            "backlog": len(self.watcher.tracker.sightings) + unconfirmed,
            "taken_this_run": self.tally.taken,
            "versions_this_run": self.tally.versions,
            "refused_this_run": self.tally.refused,
            "rescans": self.watcher.rescans,
            "last_delivered": self.tally.last_delivered,
        }

    async def _decide(self, rel: str, stat: Stat, digest: str | None) -> JournalEntry | None:
        """The entry to journal for this content, or None (known, refused, unreadable)."""
        if digest is None:
            self.tally.declined.add((rel, stat))
            return None
        latest = self._current(rel)
        known = Known(latest.version or 1, latest.size, latest.digest) if latest else None
        moved = self._moved_from(rel, stat, digest) if latest is None else None
        verdict = classify(known, stat.size, digest, self.config.on_change, moved=moved is not None)
        return await self._act(verdict, rel, stat, digest=digest, latest=latest, moved=moved)

    async def _act(
        self,
        verdict: Verdict,
        rel: str,
        stat: Stat,
        *,
        digest: str,
        latest: JournalEntry | None,
        moved: JournalEntry | None,
    ) -> JournalEntry | None:
        if verdict is Verdict.KNOWN:
            assert latest is not None
            if stat.mtime_ns != latest.mtime_ns:  # touched, same bytes: do not hash again
                self.tally.declined.add((rel, stat))
            if latest.state is FileState.CONFIRMED:
                await afterconfirm.apply(self.after, latest)
            return None
        if verdict is Verdict.MOVED:
            assert moved is not None
            self.tally.moved += 1
            log.info(Event.WATCH_MOVED, name=rel, was=moved.rel, file_id=moved.file_id)
            self.tally.declined.add((rel, stat))
            return None
        version = 1 if latest is None else (latest.version or 1) + 1
        if verdict is Verdict.REFUSED:
            self.tally.refused += 1
            self.tally.declined.add((rel, stat))
            log.warning(Event.WATCH_CHANGE_REFUSED, name=rel, version=version, size=stat.size)
            return None
        if verdict is Verdict.VERSION:
            self.tally.versions += 1
            log.warning(Event.WATCH_CHANGED, name=rel, version=version, size=stat.size)
        return self._entry(rel, stat, digest, version)

    def _entry(self, rel: str, stat: Stat, digest: str, version: int) -> JournalEntry:
        return JournalEntry(
            file_id=watch_id(self.run_id, rel, version),
            name=rel,
            path=str(self.root / rel),
            size=stat.size,
            dtype="bytes",
            digest=digest,
            state=FileState.GENERATED,
            rel=rel,
            mtime_ns=stat.mtime_ns,
            version=version,
        )

    def _current(self, rel: str) -> JournalEntry | None:
        """The latest version of `rel`, in its latest journaled state."""
        latest = self._latest.get(rel)
        return None if latest is None else (self.journal.get(latest.file_id) or latest)

    def _moved_from(self, rel: str, stat: Stat, digest: str) -> JournalEntry | None:
        """A confirmed entry with this exact size, mtime and digest whose file is gone."""
        twin = self._by_content.get((stat.size, stat.mtime_ns, digest))
        if twin is None or twin.rel == rel:
            return None
        twin = self.journal.get(twin.file_id) or twin
        if twin.state is not FileState.CONFIRMED or os.path.lexists(twin.path):
            return None
        return twin

    def _index(self, entry: JournalEntry) -> None:
        if entry.rel is None or entry.mtime_ns is None:
            return
        latest = self._latest.get(entry.rel)
        if latest is None or (entry.version or 1) >= (latest.version or 1):
            self._latest[entry.rel] = entry
        self._by_content[(entry.size, entry.mtime_ns, entry.digest)] = entry


def _hash_all(root: Path, ready: list[tuple[str, Stat]]) -> list[tuple[str, Stat, str | None]]:
    """Each file's digest, None if it cannot be read (logged). A file whose size or mtime
    moved while it was hashed is left to settle again: None, and not declined."""
    result: list[tuple[str, Stat, str | None]] = []
    for rel, stat in ready:
        try:
            size, digest = hash_file(root / rel)
            after = (root / rel).stat()
        except OSError as exc:
            log.warning(Event.WATCH_ERROR, name=rel, error=str(exc))
            result.append((rel, stat, None))
            continue
        if (size, after.st_size, after.st_mtime_ns) != (stat.size, stat.size, stat.mtime_ns):
            continue  # changed under us: a later event or rescan brings it back
        result.append((rel, stat, digest))
    return result


def watch_summary(meta: dict[str, str], entries: list[JournalEntry]) -> str:
    """`transfer status`'s watch line, from the journal alone (no sender need run)."""
    latest: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.rel is not None and (entry.version or 1) >= (
            latest[entry.rel].version or 1 if entry.rel in latest else 0
        ):
            latest[entry.rel] = entry
    backlog = sum(e.state is not FileState.CONFIRMED for e in latest.values())
    last = meta.get(LAST_DELIVERED, "").rsplit(" ", 2)  # the name may hold spaces
    delivered = f"{last[0]} ({last[1]}) at {last[2]}" if len(last) == 3 else "none yet"
    return (
        f"watching {meta[WATCHED_DIR]}: {len(latest)} files journaled, backlog {backlog}"
        f" (journaled, not confirmed); last delivered: {delivered}"
    )
