"""Folding confirmed entries into a checkpoint, and reading them back: the values and
blocking steps `FileJournal`'s compaction runs in a thread (see journal.py's docstring
for the order of durability and checkpoint.py for the format).

Invariants: a snapshot is taken at a byte offset already durable and applied; the
checkpoint holds every confirmed entry whole (verify and watch recognition need them)
and every other entry and meta setting as an ordinary record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transfer.core.errors import JournalError
from transfer.core.filestate import FileState
from transfer.sender import checkpoint
from transfer.sender.checkpoint import CKPT_NAME, Crash, Folded
from transfer.sender.entries import JournalEntry, MetaRecord, Record, decode_record, encode_record


@dataclass(frozen=True, slots=True)
class JournalStats:
    """What `/metrics` shows of the journal."""

    log_records: int  # records in journal.log (since the last compaction)
    log_bytes: int
    checkpoint_entries: int  # confirmed files folded into journal.ckpt
    checkpoint_bytes: int
    compactions: int  # finished by this process


@dataclass(frozen=True, slots=True)
class Snapshot:
    cut: int  # log bytes durable and applied when it was taken
    records: int  # log records among them
    entries: list[JournalEntry]  # every entry not folded yet
    meta: dict[str, str]
    folded: Folded
    generation: int  # of the log
    started: float


def write_checkpoint(
    directory: Path, snap: Snapshot, crash: Crash
) -> tuple[Folded, int, list[JournalEntry]]:
    """Checkpoint generation+1 for `snap` (blocking; in a thread): the confirmed entries
    folded, the others and the meta settings as records."""
    confirmed = [e for e in snap.entries if e.state is FileState.CONFIRMED]
    live = [encode_record(e) for e in snap.entries if e.state is not FileState.CONFIRMED]
    live += [encode_record(MetaRecord(key, value)) for key, value in snap.meta.items()]
    fold = checkpoint.Fold(
        generation=snap.generation + 1,
        source=(snap.generation, snap.cut),
        previous=snap.folded,
        folded=[(e.file_id, encode_record(e)) for e in confirmed],
        live=live,
    )
    folded, size = checkpoint.write(directory, fold, crash)
    return folded, size, confirmed


def folded_entries(directory: Path, folded: Folded) -> dict[str, JournalEntry]:
    """Every folded entry, decoded from the checkpoint, by id in folding order."""
    path = directory / CKPT_NAME
    result: dict[str, JournalEntry] = {}
    for payload in checkpoint.folded_payloads(directory):
        record = decode_at(path, 0, payload)
        if isinstance(record, JournalEntry) and record.file_id in folded.ids:
            result[record.file_id] = record
    return result


def decode_at(path: Path, offset: int, payload: bytes) -> Record:
    try:
        return decode_record(payload)
    except (ValueError, TypeError) as exc:
        raise JournalError(f"{path}: unreadable record at byte {offset}: {exc}") from exc
