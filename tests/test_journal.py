"""The journal: durable round trips, torn-tail recovery at every byte, refusal of damage."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import IllegalTransition, JournalError
from transfer.core.filestate import FileEvent, FileState
from transfer.sender import journal as journal_module
from transfer.sender.journal import (
    LOG_NAME,
    MAGIC,
    MAX_PAYLOAD,
    FileJournal,
    Journal,
    JournalEntry,
    MetaRecord,
    decode_frame,
    decode_record,
    encode_frame,
    encode_record,
    scan_frames,
)


def entry(n: int, state: FileState = FileState.GENERATED) -> JournalEntry:
    return JournalEntry(
        file_id=f"file-{n}",
        name=f"data_{n}.bin",
        path=f"/spool/data_{n}.bin",
        size=1000 * n,
        dtype="int16",
        digest=f"{n:032x}",
        state=state,
    )


def frame_offsets(log: Path) -> list[int]:
    """Start offset of every frame in a healthy log, plus its end."""
    frames, end = scan_frames(log.read_bytes())
    return [offset for offset, _ in frames] + [end]


async def write_journal(directory: Path, count: int) -> list[JournalEntry]:
    entries = [entry(n) for n in range(count)]
    with FileJournal.open(directory) as journal:
        for e in entries:
            await journal.record(e)
    return entries


# -- frames and records: pure -------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_frame_round_trip(payload: bytes) -> None:
    frame = encode_frame(payload)
    assert frame.startswith(MAGIC)
    assert decode_frame(b"junk" + frame + b"more", 4) == (payload, 4 + len(frame))


@given(st.binary(max_size=200), st.data())
def test_any_prefix_of_a_frame_is_not_a_frame(payload: bytes, data: st.DataObject) -> None:
    frame = encode_frame(payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert decode_frame(frame[:cut]) is None


@given(st.binary(min_size=1, max_size=200), st.data())
def test_a_changed_byte_in_the_payload_is_detected(payload: bytes, data: st.DataObject) -> None:
    frame = bytearray(encode_frame(payload))
    index = data.draw(st.integers(len(frame) - len(payload), len(frame) - 1))
    frame[index] ^= data.draw(st.integers(1, 255))
    assert decode_frame(bytes(frame)) is None


def test_oversized_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(b"x" * (MAX_PAYLOAD + 1))


_text = st.text(max_size=40)


@given(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    _text,
    st.integers(0, 2**63),
    st.sampled_from(FileState),
    st.none() | _text,
)
def test_record_round_trip(
    file_id: str, name: str, size: int, state: FileState, reason: str | None
) -> None:
    e = JournalEntry(file_id, name, "/p/" + name, size, "int16", "ab" * 16, state, None, reason)
    payload = encode_record(e)
    assert payload.isascii()  # keeps frames from hiding inside payloads
    assert decode_record(payload) == e
    assert decode_record(encode_record(MetaRecord(name, file_id))) == MetaRecord(name, file_id)


@pytest.mark.parametrize("file_id", ["", "a" * 65, "has space", "slash/", "dot."])
def test_invalid_file_id_is_refused(file_id: str) -> None:
    with pytest.raises(ValueError, match="file_id"):
        JournalEntry(file_id, "n", "/n", 1, "int16", "00", FileState.GENERATED)


def test_after_moves_by_the_table_and_replaces_the_details() -> None:
    failed = entry(1).after(FileEvent.DIGEST_DIFFERS, reason="digest mismatch")
    assert (failed.state, failed.server_digest, failed.reason) == (
        FileState.FAILED,
        None,
        "digest mismatch",
    )
    confirmed = failed.after(FileEvent.DIGEST_MATCHED, server_digest="ff")
    assert (confirmed.state, confirmed.server_digest, confirmed.reason) == (
        FileState.CONFIRMED,
        "ff",
        None,
    )
    assert confirmed.size == entry(1).size


def test_after_refuses_an_illegal_move_and_leaves_the_entry_as_it_was() -> None:
    confirmed = entry(1).after(FileEvent.DIGEST_MATCHED, server_digest="ff")
    before = (confirmed.state, confirmed.server_digest, confirmed.reason)
    with pytest.raises(IllegalTransition, match="CONFIRMED"):
        confirmed.after(FileEvent.REFUSED, reason="late refusal")
    assert (confirmed.state, confirmed.server_digest, confirmed.reason) == before


def test_file_state_is_re_exported_for_older_callers() -> None:
    assert journal_module.FileState is FileState


# Frames written before the lifecycle moved to core/filestate.py: the format is unchanged.
_GOLDEN = {
    FileState.GENERATED: (
        b'TJ1\x00\x00\x00\xc2\x91W\xa8Y{"kind":"file","file_id":"run-00001","name":"a.bin",'
        b'"path":"/s/a.bin","size":4,"dtype":"int16","digest":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",'
        b'"state":"generated","server_digest":null,"reason":null}'
    ),
    FileState.CONFIRMED: (
        b'TJ1\x00\x00\x00\xe0\x90j^\xfb{"kind":"file","file_id":"run-00001","name":"a.bin",'
        b'"path":"/s/a.bin","size":4,"dtype":"int16","digest":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",'
        b'"state":"confirmed","server_digest":"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee","reason":null}'
    ),
    FileState.FAILED: (
        b'TJ1\x00\x00\x00\xce\xe8\xbce\x16{"kind":"file","file_id":"run-00001","name":"a.bin",'
        b'"path":"/s/a.bin","size":4,"dtype":"int16","digest":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",'
        b'"state":"failed","server_digest":null,"reason":"409 offset_gap: x"}'
    ),
}


def test_frames_of_every_state_are_byte_identical_to_the_old_format() -> None:
    generated = JournalEntry(
        "run-00001", "a.bin", "/s/a.bin", 4, "int16", "0f" * 16, FileState.GENERATED
    )
    written = {
        FileState.GENERATED: generated,
        FileState.CONFIRMED: generated.after(FileEvent.DIGEST_MATCHED, server_digest="ee" * 16),
        FileState.FAILED: generated.after(FileEvent.REFUSED, reason="409 offset_gap: x"),
    }
    for state, record in written.items():
        assert encode_frame(encode_record(record)) == _GOLDEN[state]
        frame = decode_frame(_GOLDEN[state])
        assert frame is not None and decode_record(frame[0]) == record


# -- round trips ----------------------------------------------------------------------------


async def test_round_trip_latest_state_wins_and_order_is_kept(tmp_path: Path) -> None:
    journal: Journal = FileJournal.open(tmp_path)
    try:
        for n in range(3):
            await journal.record(entry(n))
        await journal.record(entry(1).after(FileEvent.DIGEST_MATCHED, server_digest="aa"))
        await journal.record(entry(0).after(FileEvent.REFUSED, reason="gone"))
        await journal.set_meta("run_id", "r1")
        await journal.set_meta("seed", "7")
        await journal.set_meta("run_id", "r2")
        expected = journal.entries()
    finally:
        journal.close()

    assert [e.file_id for e in expected] == ["file-0", "file-1", "file-2"]
    assert [e.state for e in expected] == [
        FileState.FAILED,
        FileState.CONFIRMED,
        FileState.GENERATED,
    ]
    with FileJournal.open(tmp_path) as reopened:
        assert reopened.entries() == expected
        assert reopened.get("file-1") == expected[1]
        assert reopened.get("missing") is None
        assert reopened.meta() == {"run_id": "r2", "seed": "7"}
        assert reopened.recovery.records == 8
        assert reopened.recovery.dropped_bytes == 0


async def test_unicode_names_survive(tmp_path: Path) -> None:
    e = JournalEntry(
        "u1", "données_é漢字.bin", "/spool/données_é漢字.bin", 3, "int16", "0f", FileState.GENERATED
    )
    with FileJournal.open(tmp_path) as journal:
        await journal.record(e)
    with FileJournal.open(tmp_path) as journal:
        assert journal.entries() == [e]


async def test_fresh_directory_is_created_empty(tmp_path: Path) -> None:
    with FileJournal.open(tmp_path / "spool" / "deep") as journal:
        assert journal.entries() == []
        assert journal.meta() == {}
        assert journal.recovery.records == 0
    assert (tmp_path / "spool" / "deep" / LOG_NAME).read_bytes() == b""


# -- torn tails -----------------------------------------------------------------------------


async def test_every_truncation_of_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    source = tmp_path / "source"
    entries = await write_journal(source, 3)
    data = (source / LOG_NAME).read_bytes()
    last_start, end = frame_offsets(source / LOG_NAME)[-2:]
    assert end == len(data)

    for cut in range(last_start, end):
        spool = tmp_path / f"cut-{cut}"
        spool.mkdir()
        (spool / LOG_NAME).write_bytes(data[:cut])
        with FileJournal.open(spool) as journal:
            assert journal.entries() == entries[:2], cut
            assert journal.recovery.dropped_bytes == cut - last_start
            assert (spool / LOG_NAME).stat().st_size == last_start
            await journal.record(entry(9))
        with FileJournal.open(spool) as journal:
            assert journal.entries() == [*entries[:2], entry(9)], cut
            assert journal.recovery.dropped_bytes == 0


async def test_a_tail_of_zeros_is_dropped(tmp_path: Path) -> None:
    entries = await write_journal(tmp_path, 2)
    log = tmp_path / LOG_NAME
    good_size = log.stat().st_size
    with log.open("ab") as f:
        f.write(b"\0" * 4096)
    with FileJournal.open(tmp_path) as journal:
        assert journal.entries() == entries
        assert journal.recovery.dropped_bytes == 4096
    assert log.stat().st_size == good_size


async def test_a_torn_record_followed_by_zeros_is_dropped(tmp_path: Path) -> None:
    entries = await write_journal(tmp_path, 3)
    log = tmp_path / LOG_NAME
    last_start = frame_offsets(log)[-2]
    data = log.read_bytes()
    log.write_bytes(data[: last_start + 15] + b"\0" * 512)
    with FileJournal.open(tmp_path) as journal:
        assert journal.entries() == entries[:2]
        assert journal.recovery.dropped_bytes == 15 + 512


# -- damage in the middle -------------------------------------------------------------------


async def test_every_flipped_byte_in_a_middle_record_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await write_journal(source, 3)
    data = (source / LOG_NAME).read_bytes()
    starts = frame_offsets(source / LOG_NAME)
    middle, after = starts[1], starts[2]

    for index in range(middle, after):
        spool = tmp_path / f"flip-{index}"
        spool.mkdir()
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        (spool / LOG_NAME).write_bytes(damaged)
        with pytest.raises(JournalError, match=f"damaged at byte {middle} ") as caught:
            FileJournal.open(spool)
        assert "\n" not in str(caught.value)
        assert (spool / LOG_NAME).read_bytes() == damaged  # nothing dropped or truncated
        with pytest.raises(JournalError):  # the failed open released its lock
            FileJournal.open(spool)


async def test_garbage_between_records_is_refused(tmp_path: Path) -> None:
    await write_journal(tmp_path, 2)
    log = tmp_path / LOG_NAME
    first_end = frame_offsets(log)[1]
    data = log.read_bytes()
    log.write_bytes(data[:first_end] + b"\0" * 64 + data[first_end:])
    with pytest.raises(JournalError, match=f"damaged at byte {first_end} "):
        FileJournal.open(tmp_path)


async def test_a_valid_frame_with_an_unreadable_payload_is_refused(tmp_path: Path) -> None:
    await write_journal(tmp_path, 1)
    log = tmp_path / LOG_NAME
    size = log.stat().st_size
    with log.open("ab") as f:
        f.write(encode_frame(b'{"kind":"mystery"}'))
    with pytest.raises(JournalError, match=f"unreadable record at byte {size}:"):
        FileJournal.open(tmp_path)
    assert log.stat().st_size > size


# -- locking, closing, concurrency ----------------------------------------------------------


def test_a_second_open_is_refused_while_the_first_is_open(tmp_path: Path) -> None:
    first = FileJournal.open(tmp_path)
    with pytest.raises(JournalError, match="another sender is using"):
        FileJournal.open(tmp_path)
    first.close()
    FileJournal.open(tmp_path).close()


async def test_record_after_close_is_refused(tmp_path: Path) -> None:
    journal = FileJournal.open(tmp_path)
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        await journal.record(entry(1))


async def test_concurrent_records_all_land_and_survive_reopen(tmp_path: Path) -> None:
    entries = [entry(n) for n in range(50)]
    with FileJournal.open(tmp_path) as journal:
        await asyncio.gather(*(journal.record(e) for e in entries))
        assert journal.entries() == entries
    with FileJournal.open(tmp_path) as journal:
        assert journal.entries() == entries
        assert journal.recovery.records == 50


async def test_concurrent_updates_of_one_file_apply_in_call_order(tmp_path: Path) -> None:
    states = [entry(1), entry(1).after(FileEvent.GAVE_UP, reason="x"), entry(1)]
    states.append(entry(1).after(FileEvent.DIGEST_MATCHED, server_digest="d"))
    with FileJournal.open(tmp_path) as journal:
        await asyncio.gather(*(journal.record(e) for e in states))
        assert journal.entries() == [states[-1]]
    with FileJournal.open(tmp_path) as journal:
        assert journal.entries() == [states[-1]]


async def test_close_while_writing_lets_accepted_records_finish(tmp_path: Path) -> None:
    journal = FileJournal.open(tmp_path)
    tasks = [asyncio.create_task(journal.record(entry(n))) for n in range(5)]
    await asyncio.sleep(0)  # a yield, not a wait: every task has queued its record
    journal.close()
    await asyncio.gather(*tasks)
    with pytest.raises(JournalError, match="closed"):
        await journal.record(entry(9))
    with FileJournal.open(tmp_path) as reopened:  # the lock was released after the flush
        assert reopened.entries() == [entry(n) for n in range(5)]


async def test_a_cancelled_caller_does_not_lose_the_shared_write(tmp_path: Path) -> None:
    journal = FileJournal.open(tmp_path)
    first = asyncio.create_task(journal.record(entry(0)))
    second = asyncio.create_task(journal.record(entry(1)))
    await asyncio.sleep(0)
    first.cancel()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    journal.close()
    with FileJournal.open(tmp_path) as reopened:
        assert reopened.entries() == [entry(0), entry(1)]


async def test_a_failed_write_stops_the_journal_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection on the journal's own write step (real file, real partial write):
    # a part of the batch's first frame reaches the disk, then the disk is "full".
    def part_then_enospc(fd: int, data: bytes) -> None:
        os.write(fd, data[:40])
        raise OSError(errno.ENOSPC, "No space left on device")

    journal = FileJournal.open(tmp_path)
    await journal.record(entry(0))
    monkeypatch.setattr(journal_module, "write_durably", part_then_enospc)
    with pytest.raises(JournalError, match="write failed"):
        await asyncio.gather(journal.record(entry(1)), journal.record(entry(2)))
    monkeypatch.undo()
    with pytest.raises(JournalError, match="reopen"):
        await journal.record(entry(3))  # appending after a partial frame would be damage
    assert journal.entries() == [entry(0)]
    journal.close()
    with FileJournal.open(tmp_path) as reopened:
        assert reopened.entries() == [entry(0)]
        assert reopened.recovery.dropped_bytes == 40
        await reopened.record(entry(3))
    with FileJournal.open(tmp_path) as reopened:
        assert reopened.entries() == [entry(0), entry(3)]
