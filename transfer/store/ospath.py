"""Blocking file steps on `str` paths, for names that carry an upload id.

Why not `pathlib`: on Python 3.11 every `Path` built from a new name interns each of its
parts (`sys.intern` in `PurePath._parse_args`), and the interpreter's table of interned
strings, resized as ids come and go, fragments the heap: measured, a server's RSS grew
by about 0.4 KiB per upload, forever (docs/benchmarks.md, "Server soak"). Directory
paths, of which there are few, stay `Path`s; a name with an id in it is only ever a
`str` joined here.

`fsync_dir` and `write_atomic` are `transfer.common.fsutil`'s, which take `str` paths
as they are.
"""

# ruff: noqa: PTH108, PTH116  -- os on str paths is this module's point (above)

from __future__ import annotations

import os
from collections.abc import Callable

# Re-exported: both take `str` paths and never build a `Path` from one.
from transfer.common.fsutil import fsync_dir as fsync_dir  # noqa: PLC0414
from transfer.common.fsutil import write_atomic as write_atomic  # noqa: PLC0414


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
