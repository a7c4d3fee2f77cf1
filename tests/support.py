"""Shared helpers for the sender's end-to-end and kill -9 tests.

The process harness is `transfer.testing` (re-exported here under the names these tests
have always used): `Launcher` (`Harness`) starts `transfer serve` (`ServerProcess`) and
`transfer send` (`SenderProcess`) children that log JSON lines to files and kills them
all when it closes; `wait_until` polls with a deadline; `LogFile` follows a log;
`ProxyThread` puts a `FaultProxy` between them from synchronous code.

What is left here is about the sender's state: readers of its journal and of the
server's `/metrics`, and `assert_delivered`: every journaled file confirmed and
byte-identical on the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import pytest

from transfer.sender.journal import FileJournal, FileState, Journal, JournalEntry
from transfer.testing.harness import (
    HOST,
    SenderProcess,
    ServerProcess,
    free_port,
    run_transfer,
    transfer_command,
)
from transfer.testing.harness import Harness as Launcher
from transfer.testing.logs import LogFile, LogLine, completions, named
from transfer.testing.polling import wait_until
from transfer.testing.proxythread import ProxyThread

__all__ = [
    "HOST",
    "Launcher",
    "LogFile",
    "LogLine",
    "ProxyThread",
    "SenderProcess",
    "ServerProcess",
    "assert_delivered",
    "completions",
    "free_port",
    "metric",
    "missing_piece",
    "named",
    "node_with",
    "read_journal",
    "read_meta",
    "run_transfer",
    "transfer_command",
    "wait_until",
]


# --- journal, server state -----------------------------------------------------------


def read_journal(spool: Path) -> list[JournalEntry]:
    """The journal's entries (takes the journal's lock: no sender may be running)."""
    with FileJournal.open(spool) as journal:
        return journal.entries()


def read_meta(spool: Path) -> dict[str, str]:
    with FileJournal.open(spool) as journal:
        return journal.meta()


def metric(url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample from a server's `/metrics`; 0 when the series does not exist yet."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    wanted = name
    if labels:
        wanted += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def assert_delivered(spool: Path, data_dir: Path, count: int) -> list[JournalEntry]:
    """Exactly `count` journaled files, all confirmed, each byte-identical on the server."""
    entries = read_journal(spool)
    assert len(entries) == count, [e.file_id for e in entries]
    unconfirmed = [(e.file_id, e.state.value, e.reason) for e in entries]
    unconfirmed = [u for u in unconfirmed if u[1] != FileState.CONFIRMED.value]
    assert not unconfirmed
    for entry in entries:
        stored = data_dir / "files" / entry.file_id
        assert stored.is_file(), f"{entry.file_id} is not published on the server"
        assert stored.read_bytes() == Path(entry.path).read_bytes(), entry.file_id
        assert entry.server_digest == entry.digest
    return entries


# --- external pieces ---------------------------------------------------------------


def missing_piece(reason: str) -> NoReturn:
    """A test cannot run here for want of something outside Python: skip it, except
    under CI=true, where a missing piece fails the run instead of hiding."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def node_with(folder: Path, packages: Iterable[str], needs: str) -> str:
    """The path of `node`, once it and `folder`'s npm `packages` are installed; else
    `missing_piece`, naming what `needs` them and how to install them."""
    node = shutil.which("node")
    missing = [] if node else ["node"]
    if not all((folder / "node_modules" / p / "package.json").exists() for p in packages):
        missing.append(f"{folder.name}/node_modules (run `npm ci --prefix tests/{folder.name}`)")
    if missing or node is None:
        missing_piece(f"{needs} need {', '.join(missing)}")
    return node


def damage_file(path: Path, how: str) -> None:
    """Change a spooled file after it was journaled: flip a bit (at byte 1234), truncate,
    append, or delete it."""
    if how == "flip":
        changed = bytearray(path.read_bytes())
        changed[1234] ^= 0x10
        path.write_bytes(bytes(changed))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:-2])
    elif how == "append":
        path.write_bytes(path.read_bytes() + b"\0\0")
    else:
        path.unlink()


@contextlib.contextmanager
def small_tmpfs(where: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of `mib` MiB mounted at `where/disk`, unmounted (lazily if busy) at the
    end; a machine that cannot mount one is a missing piece (a failure under CI)."""
    mount = where / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(mount)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing_piece(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        missing_piece(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


class JournalWrapper:
    """A `Journal` that hands every call to `inner`; a test double overrides `record`."""

    def __init__(self, inner: Journal) -> None:
        self.inner = inner

    def entries(self) -> list[JournalEntry]:
        return self.inner.entries()

    def get(self, file_id: str) -> JournalEntry | None:
        return self.inner.get(file_id)

    async def record(self, entry: JournalEntry) -> None:
        await self.inner.record(entry)

    def meta(self) -> dict[str, str]:
        return self.inner.meta()

    async def set_meta(self, key: str, value: str) -> None:
        await self.inner.set_meta(key, value)

    def close(self) -> None:
        self.inner.close()
