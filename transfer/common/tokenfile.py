"""Reading and writing the `--tokens-file` (its format and rules: `core/tokens.py`).

Invariants: the file is replaced atomically and durably (`write_atomic`), created with
mode 0600, so a reader (a `transfer serve` reloading on SIGHUP) sees the old table or
the new one, never half of one; two `transfer token` runs editing one file take turns
(`editing` locks its directory: the file itself is replaced, so it cannot hold a lock),
so neither loses the other's change; every failure is a one-line `ConfigError` naming
the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from transfer.common.fsutil import write_atomic
from transfer.core.errors import ConfigError
from transfer.core.tokens import TokenTable, parse, render

MODE = 0o600


def load(path: Path, *, missing_ok: bool = False) -> TokenTable:
    """The file's table (an empty one if it is missing and `missing_ok`).

    Raises:
        ConfigError: unreadable or corrupt, with the path and the reason.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return TokenTable()
        raise ConfigError(f"--tokens-file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--tokens-file {path}: {exc.strerror}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"--tokens-file {path}: {exc}") from None


def save(path: Path, table: TokenTable) -> None:
    """Raises:
    ConfigError: the file or its directory cannot be written."""
    try:
        write_atomic(path, render(table), mode=MODE)
    except OSError as exc:
        raise ConfigError(f"--tokens-file {path}: {exc.strerror}") from None


@contextlib.contextmanager
def editing(path: Path) -> Iterator[None]:
    """Hold the tokens file's directory locked (`flock`) for a load-change-save.

    Raises:
        ConfigError: the directory cannot be opened.
    """
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(f"--tokens-file {path}: {exc.strerror}: {path.parent}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
