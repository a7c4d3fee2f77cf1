"""Files given on the command line (`transfer send PATH...`): where they are, and how
one is journaled. A given file is sent from its own path, never copied to the spool.

Invariants: directories are walked in sorted order, each file named by its path relative
to the directory given; a path that is neither a file nor a directory is a `ConfigError`
before anything of it is journaled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from transfer.core.errors import ConfigError
from transfer.core.filestate import FileState
from transfer.sender.journal import JournalEntry


def path_entry(file_id: str, path: Path, name: str, size: int, digest: str) -> JournalEntry:
    """A given file as journaled: its own path (no spool copy), dtype `bytes`."""
    return JournalEntry(
        file_id=file_id,
        name=name,
        path=str(path),
        size=size,
        dtype="bytes",
        digest=digest,
        state=FileState.GENERATED,
    )


async def walk(paths: Iterable[Path]) -> AsyncIterator[tuple[Path, str]]:
    """Every file under `paths`, resolved, with the name it is sent under."""
    for root in paths:
        if root.is_file():
            yield root.resolve(), root.name
        elif root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                yield path.resolve(), str(path.relative_to(root))
        else:
            raise ConfigError(f"{root} is not a file or directory")
