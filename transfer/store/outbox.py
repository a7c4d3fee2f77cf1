"""The hooks' outbox: upload events written durably before anyone is told, then delivered.

    Outbox       the seam: append (durable on return), resolve, read, remove, pending
    FileOutbox   `DATA_DIR/outbox/{seq:016d}.json`, one small JSON file per event

An entry is an event to deliver: its stable event id, its type, the store key of its
upload, when it happened and its `data` (the upload's record). A `completed` entry is
appended *before* the store publishes, with `data` None ("unresolved"), and resolved
with the record right after; an entry still unresolved after a crash is resolved from
the store (`store.get(key)`) by the deliverer, or dropped if the upload never completed.
So no instant exists at which an upload is published and its `completed` event is not on
disk: the hole between publishing and writing the event is closed by writing first.

Invariants:
- `append` returns only once the entry is durable (file and directory fsynced), and
  `pending()` lists it from then on, in `seq` order; `seq` grows with every append, and
  the appends of one upload are made one after another (under its lock), so the order of
  an upload's events is their `seq` order.
- `remove` is the only way an entry leaves; delivered entries are removed, so the
  directory holds the backlog, never the history. A removal a crash undoes means one
  duplicate delivery (at least once), never a loss.
- A torn write leaves a `*.tmp` file (swept at `open`), never a half entry.

The S3 + PostgreSQL store's outbox is `store/s3/outbox.py`'s `PgOutbox`: the same
protocol over a table that replicas share (`shared`: polled, one leader, unresolved rows
dropped only after a grace period).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from transfer.common.fsutil import TMP_SUFFIX, remove_tmp_files, write_atomic

OUTBOX_DIR = "outbox"
_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event waiting to be delivered."""

    seq: int
    event_id: str  # made once; the receiver's key for dropping duplicates
    kind: str  # a `core.cloudevents.EventType` value
    key: str  # the store's id of the upload (`{tenant}~{id}` with tenancy)
    at: float  # when it happened, Unix time
    data: Mapping[str, Any] | None  # None: a completion not resolved yet

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.event_id,
            "type": self.kind,
            "key": self.key,
            "time": self.at,
            "data": None if self.data is None else dict(self.data),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> OutboxEntry:
        return cls(doc["seq"], doc["id"], doc["type"], doc["key"], doc["time"], doc["data"])


class Outbox(Protocol):
    """Durable, ordered events (see the module docstring)."""

    # True when other processes append and deliver too (a table replicas share): an
    # unresolved entry may then be another process's finalize in progress.
    shared: bool

    async def open(self) -> None:
        """Load what is pending (after a crash too); call once, before anything else."""
        ...

    async def close(self) -> None: ...

    async def refresh(self) -> None:
        """Re-read what is pending (what other processes appended); no-op unshared."""
        ...

    def leading(self) -> AbstractAsyncContextManager[None]:
        """Held by the one deliverer for as long as it delivers."""
        ...

    def pending(self) -> Sequence[int]:
        """The seqs of the entries not yet removed, ascending; a live view: read it, do
        not keep it across an await."""
        ...

    async def append(
        self, event_id: str, kind: str, key: str, at: float, data: Mapping[str, Any] | None
    ) -> OutboxEntry:
        """Write a new entry durably, with the next seq, and return it."""
        ...

    async def resolve(self, entry: OutboxEntry, data: Mapping[str, Any]) -> OutboxEntry:
        """Give an unresolved entry its data (no directory fsync needed: if a crash
        undoes it, the entry is resolved from the store again)."""
        ...

    async def read(self, seq: int) -> OutboxEntry | None:
        """The entry, or None if it was removed."""
        ...

    async def remove(self, seq: int) -> None: ...


class FileOutbox:
    """`DATA_DIR/outbox/`: one JSON file per pending event, named by its seq. One
    process owns a data dir, so it is never shared and its process always leads."""

    shared = False

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.directory = data_dir / OUTBOX_DIR
        self._durable = durable
        self._pending: list[int] = []
        self._next = 0

    async def open(self) -> None:
        self._pending = await asyncio.to_thread(self._load)
        self._next = self._pending[-1] + 1 if self._pending else 0

    def _load(self) -> list[int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_tmp_files(self.directory)
        return sorted(_seqs(self.directory))

    async def close(self) -> None:
        pass

    async def refresh(self) -> None:
        pass  # this process is the only writer: `pending` is always current

    def leading(self) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    def pending(self) -> Sequence[int]:
        return self._pending

    async def append(
        self, event_id: str, kind: str, key: str, at: float, data: Mapping[str, Any] | None
    ) -> OutboxEntry:
        seq, self._next = self._next, self._next + 1  # taken before the hop: append order
        entry = OutboxEntry(seq, event_id, kind, key, at, data)
        await asyncio.to_thread(self._write, entry, True)
        bisect.insort(self._pending, seq)
        return entry

    async def resolve(self, entry: OutboxEntry, data: Mapping[str, Any]) -> OutboxEntry:
        resolved = replace(entry, data=dict(data))
        await asyncio.to_thread(self._write, resolved, False)
        return resolved

    def _write(self, entry: OutboxEntry, sync_dir: bool) -> None:
        body = json.dumps(entry.to_json(), separators=(",", ":")).encode()
        write_atomic(self._name(entry.seq), body, sync=self._durable, sync_dir=sync_dir)

    async def read(self, seq: int) -> OutboxEntry | None:
        return await asyncio.to_thread(_read_entry, self._name(seq))

    async def remove(self, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._name(seq))
        index = bisect.bisect_left(self._pending, seq)
        if index < len(self._pending) and self._pending[index] == seq:
            del self._pending[index]

    def _name(self, seq: int) -> str:
        return os.path.join(self.directory, f"{seq:016d}{_SUFFIX}")  # noqa: PTH118 (a str)


def read_outbox(data_dir: Path) -> list[OutboxEntry]:
    """Every pending entry of `DATA_DIR/outbox/`, in seq order, read without a lock (a
    running server may remove some meanwhile: those are skipped). Blocking."""
    directory = data_dir / OUTBOX_DIR
    if not directory.is_dir():
        return []
    entries = (_read_entry(str(directory / f"{seq:016d}{_SUFFIX}")) for seq in _seqs(directory))
    return sorted((e for e in entries if e is not None), key=lambda e: e.seq)


def _seqs(directory: Path) -> list[int]:
    listed = os.listdir(directory)  # noqa: PTH208 (names, not Paths: see store/ospath.py)
    names = (name for name in listed if not name.endswith(TMP_SUFFIX))
    stems = (name.removesuffix(_SUFFIX) for name in names if name.endswith(_SUFFIX))
    return [int(stem) for stem in stems if stem.isdigit()]


def _read_entry(name: str) -> OutboxEntry | None:
    try:
        with open(name, "rb") as stream:
            return OutboxEntry.from_json(json.loads(stream.read()))
    except FileNotFoundError:
        return None


__all__ = ["OUTBOX_DIR", "FileOutbox", "Outbox", "OutboxEntry", "read_outbox"]
