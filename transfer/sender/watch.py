"""Watch mode's decisions (`transfer send --watch DIR`), as small pure functions and values.

What is watched, when a file is complete, what a complete file is to the journal, and
the id it is uploaded under. No I/O here: `watcher.py` feeds these with file-system
events and stats, `intake.py` with the journal; tests drive them with an injected clock.

Invariants:
- Ignored: any path component starting with "." (dotfiles, dot folders), names matching
  `TEMPORARY` (`*.tmp`, `*.part`, `~*`, ...), anything matching an `--exclude` glob and,
  when `--include` globs are given, anything matching none of them. Globs match the
  path relative to the watched folder from the right (`pathlib.PurePath.match`), so
  `*.dat` matches `a/b/x.dat`, and `raw/*.dat` only files directly in a `raw` folder.
- Complete (`settled`): a file renamed into place is complete at once, as long as its
  size and mtime are still those seen at the rename. A file written in place is
  complete once no writer is known to hold it open (inotify's close-after-write came
  after its last modification, or nothing is known, as for files found by a rescan)
  and its size and mtime have not changed for `settle` seconds of the injected clock.
  A file modified and never closed counts as open until it has not changed for `stale`
  seconds (a lost close, or a file linked into place, which no writer ever opened).
- A sighting's `order` is its arrival order; files become ready in that order.
- Journal verdicts (`classify`): a path's content equal (size and digest) to its latest
  journaled version is KNOWN, never sent again; other content at a known path is a new
  VERSION (or REFUSED with `--on-change refuse`); content found under a new path whose
  size, mtime and digest equal a confirmed file that is gone from its own path is that
  file MOVED (a renamed folder), not a new delivery.
- Ids (`watch_id`) are `{run}-w{128-bit hash of the relative path}-{version}`: distinct
  per path and version, within the server's id rule ([A-Za-z0-9_-]{1,64}).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transfer.sender.afterconfirm import AfterConfirm

TEMPORARY = ("*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp", "*~", "~*", "#*#")
Clock = Callable[[], float]


class OnChange(enum.Enum):
    """What happens to a file whose content changed after a version was journaled."""

    VERSION = "version"  # deliver the new content as the next version
    REFUSE = "refuse"  # log it and deliver nothing


@dataclass(frozen=True, slots=True)
class Rules:
    """Which relative paths are watched (see the module's invariants)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def ignored(self, rel: str) -> bool:
        path = PurePosixPath(rel)
        if any(part.startswith(".") for part in path.parts):
            return True
        if any(path.match(glob) for glob in (*TEMPORARY, *self.exclude)):
            return True
        return bool(self.include) and not any(path.match(glob) for glob in self.include)

    def ignored_dir(self, rel: str) -> bool:
        """A folder never looked into: a dot folder (excludes apply to files only)."""
        return any(part.startswith(".") for part in PurePosixPath(rel).parts)


@dataclass(frozen=True, slots=True)
class WatchConfig:
    root: Path
    rules: Rules = Rules()
    settle: float = 2.0  # seconds a file written in place must stay unchanged
    rescan: float = 30.0  # seconds between two safety-net rescans
    on_change: OnChange = OnChange.VERSION
    queue_limit: int = 4096  # events buffered before falling back to a rescan
    after_confirm: AfterConfirm = field(default_factory=AfterConfirm)


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    mtime_ns: int


@dataclass(slots=True)
class Sighting:
    """What is known of one not-yet-taken file."""

    order: int  # arrival order
    since: float  # clock time when `stat` was first seen (or a writer last touched it)
    stat: Stat | None = None  # None: not stat'ed since the last event
    writing: bool = False  # modified and not closed since
    renamed: bool = False  # arrived by a rename into place


def settled(sighting: Sighting, now_stat: Stat, now: float, settle: float) -> bool:
    """Whether a file whose stat is `now_stat` at `now` is complete (module invariants)."""
    if sighting.stat != now_stat or sighting.writing:
        return False
    return sighting.renamed or now - sighting.since >= settle


@dataclass(slots=True)
class Tracker:
    """The files seen and not yet taken, with the evidence about each."""

    settle: float
    clock: Clock
    stale: float = 30.0  # seconds an unchanged file stays "being written" without a close
    sightings: dict[str, Sighting] = field(default_factory=dict)
    _arrivals: int = 0

    def _get(self, rel: str) -> Sighting:
        found = self.sightings.get(rel)
        if found is None:
            self._arrivals += 1
            found = self.sightings[rel] = Sighting(order=self._arrivals, since=self.clock())
        return found

    def written(self, rel: str) -> None:
        """A writer created or modified `rel`: not complete until closed and settled."""
        sighting = self._get(rel)
        sighting.writing, sighting.renamed, sighting.stat = True, False, None
        sighting.since = self.clock()

    def closed(self, rel: str) -> None:
        """A writer closed `rel`: it settles from now on."""
        sighting = self._get(rel)
        sighting.writing, sighting.stat, sighting.since = False, None, self.clock()

    def renamed_in(self, rel: str) -> None:
        """`rel` appeared by a rename: complete as soon as it is stat'ed."""
        sighting = self._get(rel)
        sighting.writing, sighting.renamed, sighting.stat = False, True, None

    def found(self, rel: str, stat: Stat) -> None:
        """A rescan saw `rel` with `stat` (nothing known about writers)."""
        sighting = self._get(rel)
        if sighting.stat is None and not sighting.writing:
            self.observe(rel, stat)

    def forget_writers(self) -> None:
        """Events were lost (overflow): no close can be trusted to come; settle by stat."""
        for sighting in self.sightings.values():
            if sighting.writing:
                sighting.writing, sighting.since = False, self.clock()

    def observe(self, rel: str, stat: Stat | None) -> bool:
        """Record `rel`'s current stat (None: gone); True if it is complete now."""
        sighting = self.sightings.get(rel)
        if sighting is None:
            return False
        if stat is None:
            del self.sightings[rel]
            return False
        now = self.clock()
        if sighting.stat is not None and sighting.stat != stat:
            sighting.renamed, sighting.since = False, now
        elif sighting.writing and sighting.stat == stat and now - sighting.since >= self.stale:
            # No close in `stale` seconds and no change: a close was lost, or the file was
            # linked into place (no open at all); settle by stat from now on.
            sighting.writing, sighting.since = False, now
        sighting.stat = stat
        return settled(sighting, stat, now, self.settle)

    def take(self, rel: str) -> None:
        self.sightings.pop(rel, None)

    def in_order(self) -> list[str]:
        """Every tracked path, by arrival."""
        return sorted(self.sightings, key=lambda rel: self.sightings[rel].order)


class Verdict(enum.Enum):
    NEW = "new"  # first version of a path
    KNOWN = "known"  # the latest journaled version: never sent again
    VERSION = "version"  # changed content at a known path: the next version
    REFUSED = "refused"  # changed content, `--on-change refuse`
    MOVED = "moved"  # a confirmed file found under a new path


@dataclass(frozen=True, slots=True)
class Known:
    """A journaled version of a watched path, as `classify` needs it."""

    version: int
    size: int
    digest: str


def classify(
    latest: Known | None, size: int, digest: str, on_change: OnChange, *, moved: bool = False
) -> Verdict:
    """The verdict for content (`size`, `digest`) found at a path whose latest journaled
    version is `latest`; `moved`: a confirmed file that left its own path has exactly
    this size, mtime and digest."""
    if latest is None:
        return Verdict.MOVED if moved else Verdict.NEW
    if latest.size == size and latest.digest == digest:
        return Verdict.KNOWN
    return Verdict.REFUSED if on_change is OnChange.REFUSE else Verdict.VERSION


def watch_id(run: str, rel: str, version: int) -> str:
    """The upload id of version `version` of the file at `rel` (module invariants)."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=16)
    return f"{run}-w{digest.hexdigest()}-{version}"


def relative(root: Path, path: Path) -> str:
    """`path` under `root` as a POSIX relative path (the record's name on the server)."""
    return path.relative_to(root).as_posix()


def parse_globs(values: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(values or ())
