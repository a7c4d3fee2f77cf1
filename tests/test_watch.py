"""Watch mode's pure decisions (`transfer.sender.watch`), the after-confirm flag and the
journal's watched-file fields: no processes, no real time (the tracker's clock is a
number the test moves)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from transfer.core.errors import ConfigError
from transfer.sender.afterconfirm import Action, AfterConfirm
from transfer.sender.intake import LAST_DELIVERED, WATCHED_DIR, watch_summary
from transfer.sender.journal import (
    FileJournal,
    FileState,
    JournalEntry,
    decode_record,
    encode_record,
)
from transfer.sender.watch import (
    Known,
    OnChange,
    Rules,
    Stat,
    Tracker,
    Verdict,
    classify,
    watch_id,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- what is watched ----------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [".hidden", "a/.git/config", "x.tmp", "x.part", "~lock.dat", "x.dat~", "a/b/.x.swp"],
)
def test_dotfiles_and_temporary_names_are_ignored_by_default(rel: str) -> None:
    assert Rules().ignored(rel)


@pytest.mark.parametrize("rel", ["x.dat", "a/b/c.bin", "tmp/x.dat", "partial.dat"])
def test_ordinary_names_are_watched(rel: str) -> None:
    assert not Rules().ignored(rel)


def test_include_and_exclude_match_the_relative_path_from_the_right() -> None:
    rules = Rules(include=("*.dat", "raw/*.bin"), exclude=("*/skip/*",))
    assert not rules.ignored("a/b/x.dat")
    assert not rules.ignored("raw/x.bin")
    assert rules.ignored("x.bin")  # not under raw/
    assert rules.ignored("a/skip/x.dat")  # excluded wins
    assert rules.ignored("x.txt")  # matches no include


# --- when a file is complete --------------------------------------------------------


def test_a_file_renamed_into_place_is_complete_at_once() -> None:
    tracker = Tracker(settle=2.0, clock=Clock())
    tracker.renamed_in("a.dat")
    assert tracker.observe("a.dat", Stat(10, 1))


def test_a_file_being_written_is_never_complete_until_closed_and_settled() -> None:
    clock = Clock()
    tracker = Tracker(settle=2.0, clock=clock, stale=60.0)
    tracker.written("a.dat")
    assert not tracker.observe("a.dat", Stat(10, 1))
    clock.now += 10  # a long pause, still open: not complete
    assert not tracker.observe("a.dat", Stat(10, 1))
    tracker.closed("a.dat")
    assert not tracker.observe("a.dat", Stat(20, 2))
    clock.now += 1.9
    assert not tracker.observe("a.dat", Stat(20, 2))
    clock.now += 0.2
    assert tracker.observe("a.dat", Stat(20, 2))


def test_a_change_after_close_restarts_the_settle_time() -> None:
    clock = Clock()
    tracker = Tracker(settle=2.0, clock=clock)
    tracker.closed("a.dat")
    assert not tracker.observe("a.dat", Stat(5, 1))
    clock.now += 1.5
    assert not tracker.observe("a.dat", Stat(6, 2))  # grew: settle again from here
    clock.now += 1.5
    assert not tracker.observe("a.dat", Stat(6, 2))
    clock.now += 0.6
    assert tracker.observe("a.dat", Stat(6, 2))


def test_a_renamed_file_that_changes_afterwards_must_settle() -> None:
    clock = Clock()
    tracker = Tracker(settle=2.0, clock=clock)
    tracker.renamed_in("a.dat")
    tracker.sightings["a.dat"].stat = Stat(1, 1)  # seen at the rename
    assert not tracker.observe("a.dat", Stat(2, 2))
    clock.now += 2.0
    assert tracker.observe("a.dat", Stat(2, 2))


def test_a_file_found_by_a_rescan_settles_by_stat() -> None:
    clock = Clock()
    tracker = Tracker(settle=2.0, clock=clock)
    tracker.found("a.dat", Stat(3, 3))
    assert not tracker.observe("a.dat", Stat(3, 3))
    clock.now += 2.0
    assert tracker.observe("a.dat", Stat(3, 3))


def test_a_lost_close_is_given_up_after_stale_seconds_or_an_overflow() -> None:
    clock = Clock()
    tracker = Tracker(settle=1.0, clock=clock, stale=30.0)
    tracker.written("a.dat")
    tracker.written("b.dat")
    tracker.observe("a.dat", Stat(1, 1))
    clock.now += 30.0
    assert not tracker.observe("a.dat", Stat(1, 1))  # stops counting as open now
    clock.now += 1.0
    assert tracker.observe("a.dat", Stat(1, 1))
    tracker.forget_writers()  # overflow: b's close may be lost
    clock.now += 1.0
    tracker.observe("b.dat", Stat(1, 1))
    clock.now += 1.0
    assert tracker.observe("b.dat", Stat(1, 1))


def test_a_vanished_file_is_forgotten_and_order_is_arrival() -> None:
    tracker = Tracker(settle=0.0, clock=Clock())
    for name in ("c", "a", "b"):
        tracker.found(name, Stat(1, 1))
    assert tracker.in_order() == ["c", "a", "b"]
    assert not tracker.observe("a", None)
    assert tracker.in_order() == ["c", "b"]


# --- journal verdicts, ids ------------------------------------------------------------


def test_classify() -> None:
    v1 = Known(version=1, size=3, digest="aa")
    assert classify(None, 3, "aa", OnChange.VERSION) is Verdict.NEW
    assert classify(None, 3, "aa", OnChange.VERSION, moved=True) is Verdict.MOVED
    assert classify(v1, 3, "aa", OnChange.VERSION) is Verdict.KNOWN
    assert classify(v1, 3, "bb", OnChange.VERSION) is Verdict.VERSION
    assert classify(v1, 4, "aa", OnChange.VERSION) is Verdict.VERSION
    assert classify(v1, 3, "bb", OnChange.REFUSE) is Verdict.REFUSED
    assert classify(v1, 3, "aa", OnChange.REFUSE) is Verdict.KNOWN


def test_ids_are_distinct_per_path_and_version_and_follow_the_server_rule() -> None:
    rels = ["a.dat", "b/a.dat", "a/b.dat", "ä/" + "x" * 4000, "A.dat"]
    ids = {watch_id("1234abcd", rel, version) for rel in rels for version in (1, 2, 1000)}
    assert len(ids) == len(rels) * 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)


def test_after_confirm_flag() -> None:
    assert AfterConfirm.parse("keep").action is Action.KEEP
    assert AfterConfirm.parse("delete").action is Action.DELETE
    moved = AfterConfirm.parse("move:done/here")
    assert moved.action is Action.MOVE
    assert moved.target == Path("done/here").absolute()
    for bad in ("move:", "remove", ""):
        with pytest.raises(ConfigError, match="--after-confirm"):
            AfterConfirm.parse(bad)


# --- the journal keeps what recognises a watched file -------------------------------------


def entry(**extra: object) -> JournalEntry:
    fields: dict[str, object] = {
        "file_id": "f1", "name": "a.bin", "path": "/tmp/a.bin", "size": 3, "dtype": "int16",
        "digest": "00" * 16, "state": FileState.GENERATED,
    }  # fmt: skip
    return JournalEntry(**{**fields, **extra})  # type: ignore[arg-type]


def test_a_plain_entry_encodes_exactly_as_before_the_watch_fields() -> None:
    payload = json.loads(encode_record(entry()))
    assert set(payload) == {
        "kind", "file_id", "name", "path", "size", "dtype", "digest", "state",
        "server_digest", "reason",
    }  # fmt: skip


def test_a_watched_entry_round_trips_and_an_old_frame_still_reads() -> None:
    watched = entry(rel="sub/a.bin", mtime_ns=123, version=2)
    assert decode_record(encode_record(watched)) == watched
    old = b'{"kind":"file","file_id":"f1","name":"a.bin","path":"/tmp/a.bin","size":3,'
    old += b'"dtype":"int16","digest":"' + b"00" * 16 + b'","state":"generated",'
    old += b'"server_digest":null,"reason":null}'
    assert decode_record(old) == entry()


async def test_watched_entries_survive_a_reopen(tmp_path: Path) -> None:
    watched = entry(rel="sub/a.bin", mtime_ns=123, version=2)
    with FileJournal.open(tmp_path) as journal:
        await journal.record(watched)
        await journal.record(entry(file_id="f2"))
    with FileJournal.open(tmp_path) as journal:
        assert journal.get("f1") == watched
        assert journal.get("f2") == entry(file_id="f2")


def test_the_status_line_reports_the_backlog_and_the_last_delivered() -> None:
    meta = {WATCHED_DIR: "/in", LAST_DELIVERED: "b c.dat f2 2026-01-01T00:00:00.000+00:00"}
    entries = [
        entry(file_id="f1", rel="a.dat", mtime_ns=1, version=1),
        entry(file_id="f2", rel="b.dat", mtime_ns=1, version=1, state=FileState.CONFIRMED),
        entry(file_id="f3", rel="a.dat", mtime_ns=2, version=2),
    ]
    line = watch_summary(meta, entries)
    assert "watching /in: 2 files journaled, backlog 1" in line
    assert "last delivered: b c.dat (f2) at 2026-01-01T00:00:00.000+00:00" in line
