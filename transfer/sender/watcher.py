"""Watching a folder tree for complete files: inotify events plus a periodic rescan.

    inotify (asyncinotify) ──> bounded event buffer ──> Tracker (watch.py) ──> sink.take
    rescan (os.walk, every `rescan` s, and after any overflow) ──┘

Invariants:
- Nothing is lost to missed events: every file under the root is found by the rescan
  that runs at start, every `WatchConfig.rescan` seconds, after the kernel's queue
  overflowed (IN_Q_OVERFLOW) and after our own buffer of `queue_limit` events filled
  up (events are then dropped, not waited for). Events only make things faster.
- A folder created or moved in is watched before it is scanned, so a file created in
  it is seen by one or the other. A folder moved within or out of the tree makes every
  watch's path suspect: all watches are rebuilt and the tree is rescanned.
- Whether a file is complete is `watch.settled`'s decision; this module only reports
  what happened (written, closed, renamed in, found by a scan) and its current stat.
- A file is handed to the sink at most once per sighting, in arrival order; the sink
  (`intake.py`) decides whether it is new, known or changed.
- Only regular files count (symlinks, sockets, fifos are skipped); a file that vanishes
  before it is taken is logged (`watch.vanished`) and forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_module
import time
from pathlib import Path
from typing import Protocol

import structlog
from asyncinotify import Event as InotifyEvent
from asyncinotify import Inotify, Mask

from transfer.core.events import Event
from transfer.sender.watch import Clock, Stat, Tracker, WatchConfig

log = structlog.get_logger("transfer.watch")

_DIR_MASK = (
    Mask.CREATE | Mask.MODIFY | Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM
    | Mask.DELETE | Mask.ONLYDIR
)  # fmt: skip
TICK = 0.05  # seconds between two looks at files that are settling


class Sink(Protocol):
    def wanted(self, rel: str, stat: Stat) -> bool:
        """Whether a file a rescan found should be tracked (False: already delivered)."""
        ...

    async def take(self, ready: list[tuple[str, Stat]]) -> None:
        """Complete files, in arrival order."""
        ...


class Watcher:
    """Runs until cancelled; `tracker` and `rescans` are read by the status server."""

    def __init__(self, config: WatchConfig, sink: Sink, *, clock: Clock = time.monotonic) -> None:
        self.config, self.sink, self.clock = config, sink, clock
        self.root = config.root.absolute()
        self.tracker = Tracker(settle=config.settle, clock=clock, stale=config.rescan)
        self.rescans = 0
        self._events: list[InotifyEvent] = []
        self._overflowed = False
        self._wake = asyncio.Event()
        self._next_rescan = 0.0

    async def run(self) -> None:
        reason = "start"
        while True:  # one round per set of watches; a folder move starts a new one
            with Inotify(cache_size=256) as inotify:
                await asyncio.to_thread(self._add_tree, inotify, self.root)
                await self.rescan(reason)
                reader = asyncio.create_task(self._read(inotify))
                try:
                    await self._follow(inotify)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
            reason = "moved"

    async def rescan(self, reason: str) -> None:
        """Walk the tree; offer every file not yet delivered to the tracker."""
        started = self.clock()
        found = await asyncio.to_thread(scan, self.root, self.config)
        offered = 0
        for rel, stat in found.items():
            if rel not in self.tracker.sightings and self.sink.wanted(rel, stat):
                self.tracker.found(rel, stat)
                offered += 1
        self.rescans += 1
        self._next_rescan = self.clock() + self.config.rescan
        log.info(
            Event.WATCH_RESCAN, reason=reason, files=len(found), new=offered,
            elapsed_ms=round((self.clock() - started) * 1000, 3),
        )  # fmt: skip

    async def _follow(self, inotify: Inotify) -> None:
        """Apply events and look at settling files until a folder moves."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            events, self._events = self._events, []
            if self._overflowed:
                await self._recover()
            if self._apply(inotify, events):
                return
            if self.clock() >= self._next_rescan:
                await self.rescan("periodic")
            await self._hand_over()

    async def _recover(self) -> None:
        self._overflowed = False
        log.warning(Event.WATCH_OVERFLOW, limit=self.config.queue_limit)
        self.tracker.forget_writers()  # their closes may be among the lost events
        await self.rescan("overflow")

    async def _read(self, inotify: Inotify) -> None:
        async for event in inotify:
            if Mask.Q_OVERFLOW in event.mask or len(self._events) >= self.config.queue_limit:
                self._overflowed = True
            else:
                self._events.append(event)
            self._wake.set()

    def _apply(self, inotify: Inotify, events: list[InotifyEvent]) -> bool:
        """Feed `events` to the tracker; True if a folder moved (rebuild every watch)."""
        for event in events:
            if event.path is None or Mask.IGNORED in event.mask:
                continue
            if Mask.ISDIR in event.mask:
                if Mask.MOVED_FROM in event.mask:
                    return True
                if event.mask & (Mask.CREATE | Mask.MOVED_TO):
                    self._new_folder(inotify, event.path)
                continue
            self._file_event(event)
        return False

    def _file_event(self, event: InotifyEvent) -> None:
        assert event.path is not None
        rel = self._relative(event.path)
        if rel is None or self.config.rules.ignored(rel):
            return
        if Mask.MOVED_TO in event.mask:
            self.tracker.renamed_in(rel)
        elif Mask.CLOSE_WRITE in event.mask:
            self.tracker.closed(rel)
        elif event.mask & (Mask.CREATE | Mask.MODIFY):
            self.tracker.written(rel)
        # DELETE and MOVED_FROM: the next stat finds the file gone.

    def _new_folder(self, inotify: Inotify, path: Path) -> None:
        """Watch a new folder, then offer what it already holds (files created in it
        before its watch existed have no events)."""
        self._add_tree(inotify, path)
        for rel, stat in scan(path, self.config, root=self.root).items():
            if self.sink.wanted(rel, stat):
                self.tracker.found(rel, stat)

    async def _hand_over(self) -> None:
        """Stat every settling file; hand the complete ones to the sink in order."""
        order = self.tracker.in_order()
        if not order:
            return
        stats = await asyncio.to_thread(_stat_all, self.root, order)
        ready: list[tuple[str, Stat]] = []
        for rel in order:
            current = stats[rel]
            if current is None and rel in self.tracker.sightings:
                log.info(Event.WATCH_VANISHED, name=rel)
            if self.tracker.observe(rel, current) and current is not None:
                self.tracker.take(rel)
                ready.append((rel, current))
        if ready:
            await self.sink.take(ready)

    def _add_tree(self, inotify: Inotify, top: Path) -> None:
        for folder, dirs, _ in os.walk(top):
            rel = self._relative(Path(folder))
            if rel is not None and rel != "." and self.config.rules.ignored_dir(rel):
                dirs.clear()
                continue
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                inotify.add_watch(folder, _DIR_MASK)

    def _relative(self, path: Path) -> str | None:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return None


def scan(top: Path, config: WatchConfig, *, root: Path | None = None) -> dict[str, Stat]:
    """Every regular, not ignored file under `top`, by path relative to `root` (`top`)."""
    base = (root or top).absolute()
    found: dict[str, Stat] = {}
    for folder, dirs, files in os.walk(top.absolute()):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not config.rules.ignored_dir(d)]
        for name in files:
            rel = (here / name).relative_to(base).as_posix()
            if config.rules.ignored(rel):
                continue
            current = stat_of(here / name)
            if current is not None:
                found[rel] = current
    return found


def stat_of(path: Path) -> Stat | None:
    """A regular file's size and mtime; None if it is gone or not a regular file."""
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat_module.S_ISREG(info.st_mode):
        return None
    return Stat(info.st_size, info.st_mtime_ns)


def _stat_all(root: Path, rels: list[str]) -> dict[str, Stat | None]:
    return {rel: stat_of(root / rel) for rel in rels}
