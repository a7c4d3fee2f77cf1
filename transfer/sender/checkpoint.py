"""The journal's checkpoint: confirmed files folded into one durable file, so that replay
reads the checkpoint plus the short log written since (docs/architecture.md, "The
sender's disk"). Bytes and files only: `journal.py` gives payloads their meaning.

    file     = MAGIC (b"TJK1") | header length (u32 BE) | crc32(header) (u32 BE) | header
               | ids | folded | live
    header   = ASCII JSON {"generation": k, "source": [g, end], "sections": [[length, crc32]
               x3], "indices": {run: [[first, last + 1], ...]}}
    sections = lines joined by b"\\n": the folded (confirmed) files' ids; their record
               payloads as the log held them; the payloads of every other entry and meta
               setting (the state that is not folded).

Invariants:
- Atomic: written whole to `journal.ckpt.tmp`, fsynced, renamed over `journal.ckpt`, the
  directory fsynced. A reader sees the old checkpoint or the new one, never a mix; a
  stale `.tmp` is never read (and is swept by the next open).
- Checked whole on every read: magic, header checksum, each section's checksum and the
  exact file length. A mismatch is `JournalError`: a checkpoint replaces log records
  only once it is durable, so damage to it would lose acknowledged records; it is
  refused, never dropped.
- Generations: the log that continues checkpoint k starts with the frame
  `{"kind":"log","generation":k}`; a log without one is generation 0 (never compacted).
  `source` (g, end): the checkpoint holds the state of log generation g's first `end`
  bytes. So replay is checkpoint + the whole log when the log's generation is k, and
  checkpoint + the log from byte `end` when it is still g (a crash came between writing
  the checkpoint and swapping the log); anything else is refused.
- Start-up decodes no folded record: the ids (one split) and the runs of generated
  indices are what counting, resuming and generating need. Folded records are read
  (and checked again) only when a caller asks for every entry.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer.common.fsutil import TMP_SUFFIX, fsync_dir, write_all
from transfer.core.errors import JournalError
from transfer.sender.logfile import encode_frame

CKPT_NAME = "journal.ckpt"
MAGIC = b"TJK1"
_HEAD = struct.Struct(">4sII")
_LOG_KIND = b'{"kind":"log",'
Crash = Callable[[str], None]  # called at each step of a compaction; tests raise there


def no_crash(step: str) -> None:
    return None


def log_header(generation: int) -> bytes:
    """The first frame's payload of log generation `generation` (>= 1)."""
    return json.dumps({"kind": "log", "generation": generation}, separators=(",", ":")).encode()


def log_generation(payload: bytes) -> int | None:
    """The generation a log header payload names; None for any other payload."""
    if not payload.startswith(_LOG_KIND):
        return None
    generation = json.loads(payload).get("generation")
    if not isinstance(generation, int) or generation < 1:
        raise ValueError(f"invalid log generation {generation!r}")
    return generation


@dataclass(slots=True)
class Folded:
    """What start-up knows of the folded files: their ids and, per run, the generated
    indices among them (ids `{run}-{digits}`) as sorted [first, last + 1) runs."""

    ids: set[str] = field(default_factory=set)
    indices: dict[str, list[list[int]]] = field(default_factory=dict)

    def indices_for(self, run: str) -> set[int]:
        return {i for first, end in self.indices.get(run, ()) for i in range(first, end)}

    def plus(self, ids: Iterable[str]) -> Folded:
        """A new `Folded` with `ids` added (self is unchanged: a thread builds it)."""
        new = [i for i in ids if i not in self.ids]
        found: dict[str, list[int]] = {}
        for file_id in new:
            run, _, tail = file_id.rpartition("-")
            if run and "-" not in run and tail.isdigit():
                found.setdefault(run, []).append(int(tail))
        indices = dict(self.indices)
        for run, numbers in found.items():
            indices[run] = _merge(self.indices.get(run, []), numbers)
        return Folded(self.ids | set(new), indices)


def _merge(runs: list[list[int]], numbers: list[int]) -> list[list[int]]:
    merged: list[list[int]] = []
    for first, end in sorted([*runs, *([n, n + 1] for n in numbers)]):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([first, end])
    return merged


@dataclass(frozen=True, slots=True)
class Loaded:
    generation: int
    source: tuple[int, int]
    folded: Folded
    live: list[bytes]  # payloads of the entries and meta settings not folded
    size: int  # bytes on disk


def read(directory: Path) -> Loaded | None:
    """The checkpoint in `directory`, checked whole; None if there is none.

    Raises:
        JournalError: it is damaged (see the module's invariants).
    """
    path = directory / CKPT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header, (ids, _, live) = _parse(data, path)
    names = ids.decode("ascii").split("\n") if ids else []
    indices = {run: [list(r) for r in runs] for run, runs in header["indices"].items()}
    source = header["source"]
    return Loaded(
        generation=header["generation"],
        source=(source[0], source[1]),
        folded=Folded(set(names), indices),
        live=live.split(b"\n") if live else [],
        size=len(data),
    )


def folded_payloads(directory: Path) -> list[bytes]:
    """Every folded record's payload, in folding order (a later one for the same id
    supersedes an earlier one). Raises JournalError as `read` does."""
    path = directory / CKPT_NAME
    _, (_, folded, _) = _parse(path.read_bytes(), path)
    return folded.split(b"\n") if folded else []


def _parse(data: bytes, path: Path) -> tuple[dict[str, Any], tuple[bytes, bytes, bytes]]:
    if len(data) < _HEAD.size:
        raise JournalError(f"{path} is damaged: {len(data)} bytes, shorter than its header")
    magic, length, crc = _HEAD.unpack_from(data)
    raw = data[_HEAD.size : _HEAD.size + length]
    if magic != MAGIC or len(raw) != length or zlib.crc32(raw) != crc:
        raise JournalError(f"{path} is damaged in its header; refusing to lose its records")
    header = json.loads(raw)
    offset, parts = _HEAD.size + length, []
    for size, check in header["sections"]:
        part = data[offset : offset + size]
        if len(part) != size or zlib.crc32(part) != check:
            raise JournalError(f"{path} is damaged at byte {offset}; refusing to lose records")
        parts.append(part)
        offset += size
    if offset != len(data) or len(parts) != 3:
        raise JournalError(f"{path} is damaged: {len(data) - offset} bytes past its end")
    return header, (parts[0], parts[1], parts[2])


@dataclass(frozen=True, slots=True)
class Fold:
    """One compaction's checkpoint: what is folded now, on top of the current one."""

    generation: int
    source: tuple[int, int]
    previous: Folded
    folded: list[tuple[str, bytes]]  # (id, payload) of the confirmed entries folded now
    live: list[bytes]


def write(directory: Path, fold: Fold, crash: Crash = no_crash) -> tuple[Folded, int]:
    """Write the checkpoint `fold` describes atomically and durably (blocking: run it
    in a thread); the folded state it holds and its size in bytes."""
    old = folded_payloads(directory) if fold.previous.ids else []
    folded = fold.previous.plus(file_id for file_id, _ in fold.folded)
    sections = [
        "\n".join(sorted(folded.ids)).encode("ascii"),
        b"\n".join([*old, *(payload for _, payload in fold.folded)]),
        b"\n".join(fold.live),
    ]
    header = json.dumps(
        {
            "generation": fold.generation,
            "source": list(fold.source),
            "sections": [[len(s), zlib.crc32(s)] for s in sections],
            "indices": folded.indices,
        },
        separators=(",", ":"),
    ).encode("ascii")
    head = _HEAD.pack(MAGIC, len(header), zlib.crc32(header))
    size = _replace(directory / CKPT_NAME, [head, header, *sections], "checkpoint", crash)
    return folded, size


def swap_log(log: Path, fd: int, cut: int, end: int, generation: int, *, crash: Crash) -> int:
    """Replace the log with generation `generation`'s: its header frame, then the bytes
    `cut..end` of the current one (appended after the snapshot). Blocking; the caller
    holds every append back meanwhile. Returns the new log's length."""
    tail = b""
    while len(tail) < end - cut:
        piece = os.pread(fd, end - cut - len(tail), cut + len(tail))
        if not piece:
            raise JournalError(f"{log} is shorter than the {end} bytes acknowledged")
        tail += piece
    head = encode_frame(log_header(generation))
    return _replace(log, [head, tail], "log", crash)


def _replace(path: Path, parts: list[bytes], what: str, crash: Crash) -> int:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for part in parts:
            write_all(fd, part)
        crash(f"{what}.written")
        os.fsync(fd)
    finally:
        os.close(fd)
    crash(f"{what}.synced")
    os.replace(tmp, path)
    crash(f"{what}.renamed")
    fsync_dir(path.parent)
    crash(f"{what}.durable")
    return sum(len(part) for part in parts)


def sweep(directory: Path) -> None:
    """Remove the temporary files of a compaction a crash interrupted."""
    stale = [directory / f"{name}{TMP_SUFFIX}" for name in (CKPT_NAME, "journal.log")]
    removed = [path for path in stale if path.exists()]
    for path in removed:
        path.unlink()
    if removed:
        fsync_dir(directory)
