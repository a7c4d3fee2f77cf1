"""Durable file-system steps, blocking on purpose (callers choose the thread).

Invariants:
- `write_atomic` leaves either the old file or the complete new one at `path`, never a
  mix: temporary name, fsync, `os.replace`, fsync of the directory.
- `fsync_dir` after every create, rename or unlink whose survival matters.
Temporary names end in `.tmp` so recovery can sweep them.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | Path,
    data: bytes,
    *,
    sync: bool = True,
    sync_dir: bool = True,
    mode: int = 0o644,
) -> None:
    """Replace `path` with `data` atomically; durably unless `sync` is False.

    `sync_dir=False` leaves the directory fsync to a caller that renames more entries
    in the same directory and syncs it once afterwards. A `str` path stays a `str`
    (see `transfer.store.ospath` for why names with ids are never made `Path`s).
    `mode` is the new file's (0o600 for secrets: it never exists with wider rights).
    """
    name = os.fspath(path)
    tmp = name + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if not mode & 0o077:
            os.fchmod(fd, mode)  # a stale temp file, reopened, would keep wider rights
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name)
    if sync and sync_dir:
        fsync_dir(os.path.dirname(name))  # noqa: PTH120 (no Path for a name with an id)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """`os.write` until every byte is written (short writes happen on full disks)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_tmp_files(directory: Path) -> list[Path]:
    """Delete leftover `*.tmp` files of interrupted atomic writes; return what was removed."""
    removed = [p for p in directory.glob(f"*{TMP_SUFFIX}") if p.is_file()]
    for path in removed:
        path.unlink()
    if removed:
        fsync_dir(directory)
    return removed
