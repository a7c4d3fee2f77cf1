"""Blocking file steps on `str` paths, for names that carry an upload id.

Why not `pathlib`: on Python 3.11 every `Path` built from a new name interns each of its
parts (`sys.intern` in `PurePath._parse_args`), and the interpreter's table of interned
strings, resized as ids come and go, fragments the heap: measured, a server's RSS grew
by about 0.4 KiB per upload, forever (docs/benchmarks.md, "Server soak"). Directory
paths, of which there are few, stay `Path`s; a name with an id in it is only ever a
`str` joined here.

Invariant: `write_atomic` leaves the old file or the whole new one, never a mix
(temporary name ending `.tmp`, fsync, rename, fsync of the directory), as
`transfer.common.fsutil.write_atomic` does for `Path`s.
"""

# ruff: noqa: PTH108, PTH116, PTH120  -- os on str paths is this module's point (above)

from __future__ import annotations

import os
from collections.abc import Callable

from transfer.common.fsutil import TMP_SUFFIX, write_all


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, sync: bool, sync_dir: bool = True) -> None:
    """Replace `path` with `data` atomically; durably unless `sync` is False."""
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync and sync_dir:
        fsync_dir(os.path.dirname(path))


def read(path: str) -> bytes | None:
    """The file's bytes; None if there is no such file."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def unlink(path: str) -> bool:
    """Remove the file; False if there was none."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def feed(path: str, update: Callable[[bytes], None], block: int = 4 * 1024 * 1024) -> None:
    """Feed the file's bytes to `update` (a hasher's) in blocks."""
    with open(path, "rb") as stream:
        while data := stream.read(block):
            update(data)
