"""The journal's files at the byte level: frames, the valid-prefix scan, the lock and
durable appends. No records here: `journal.py` gives payloads their meaning.

    frame = MAGIC (b"TJ1") | payload length (u32 BE) | crc32(payload) (u32 BE) | payload

Invariants:
- A frame is valid only whole: magic, a length up to `MAX_PAYLOAD`, every byte present
  and the checksum right. Any prefix of a frame is not a frame.
- `scan_frames` returns the valid prefix; it raises `JournalError` when a valid frame
  follows damage (acknowledged records were corrupted: never dropped silently).
- `write_durably` returns only once the bytes are fsynced; `wait_through` never lets a
  cancelled caller close a file while a thread still writes it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from transfer.common.fsutil import write_all
from transfer.core.errors import JournalError

MAGIC = b"TJ1"
MAX_PAYLOAD = 1 << 20
LOCK_NAME = "journal.lock"
_HEADER = struct.Struct(">3sII")


def encode_frame(payload: bytes) -> bytes:
    """One frame around `payload`. Raises ValueError if it exceeds `MAX_PAYLOAD`."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"journal payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_frame(data: bytes, offset: int = 0) -> tuple[bytes, int] | None:
    """The payload of the valid frame at `offset` and the offset just past it; None if no
    complete frame with the right magic, length and checksum starts there."""
    if len(data) - offset < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    end = start + length
    if magic != MAGIC or length > MAX_PAYLOAD or end > len(data):
        return None
    payload = data[start:end]
    return (payload, end) if zlib.crc32(payload) == crc else None


def scan_frames(data: bytes, *, source: str = "journal") -> tuple[list[tuple[int, bytes]], int]:
    """(offset, payload) of each frame of the valid prefix, and where that prefix ends.

    Raises JournalError if a valid frame follows a damaged one (not a torn tail).
    """
    frames: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        frame = decode_frame(data, offset)
        if frame is None:
            _refuse_middle_damage(data, offset, source)
            break
        frames.append((offset, frame[0]))
        offset = frame[1]
    return frames, offset


def _refuse_middle_damage(data: bytes, damaged: int, source: str) -> None:
    later = data.find(MAGIC, damaged + 1)
    while later != -1:
        if decode_frame(data, later) is not None:
            raise JournalError(
                f"{source} is damaged at byte {damaged} and a valid record follows at byte"
                f" {later}; refusing to drop acknowledged records"
            )
        later = data.find(MAGIC, later + 1)


def write_durably(fd: int, data: bytes) -> None:
    write_all(fd, data)
    os.fsync(fd)


async def wait_through(future: asyncio.Future[Any]) -> None:
    """Wait for `future` even if cancelled meanwhile, then re-raise the cancellation: the
    work runs in a thread that cannot be stopped, and the file must not close under it."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def lock(directory: Path) -> int:
    """An exclusive, non-blocking flock on `directory/journal.lock`: one sender per spool."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"another sender is using {directory}") from None
    return fd
