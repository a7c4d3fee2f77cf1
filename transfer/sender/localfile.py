"""The sender's look at its own copy of a file: size and xxh3-128, read from disk.

Invariant: a file is uploaded only while its bytes still hash to the journaled digest
(`check_local` before every delivery attempt), so a spool file damaged or changed after
it was journaled is never sent as truth. Hashing runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import xxhash

from transfer.common.fsutil import feed_file
from transfer.core.errors import LocalFileDamaged
from transfer.sender.journal import JournalEntry


async def check_local(entry: JournalEntry) -> None:
    """Raise `LocalFileDamaged` unless the file still has its journaled size and digest."""
    try:
        size, digest = await asyncio.to_thread(hash_file, Path(entry.path))
    except OSError as exc:
        raise LocalFileDamaged(f"{entry.path}: {exc.strerror}") from exc
    if size != entry.size or digest != entry.digest:
        raise LocalFileDamaged(
            f"{entry.path} changed on disk since it was journaled (size {size}, digest {digest})"
        )


def hash_file(path: Path) -> tuple[int, str]:
    """A file's size and hex xxh3-128, read from disk."""
    hasher = xxhash.xxh3_128()
    size = feed_file(path, hasher.update)
    return size, hasher.hexdigest()
