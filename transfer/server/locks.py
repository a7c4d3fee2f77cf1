"""Per-key asyncio locks that disappear when nobody holds or waits for them.

Owned by `admission.Admission` (handlers ask it for `upload(id)`); the expiry sweep is
handed the same instance.

Invariant: at most one holder per key at a time; the table holds only keys in use, so a
server that saw a million upload ids keeps no million locks. A holder or waiter leaves
the table however its block ends, cancellation while waiting included.

`hold` is a plain class, not an `@asynccontextmanager`: every request takes one, and a
generator-based manager costs an async generator, its registration with the loop's
hooks and a lock built even when the key has one (issue 13).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: str) -> _Hold:
        """`async with locks.hold(key):` the key's lock, held for the block."""
        return _Hold(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


class _Hold:
    """One holder (or waiter) of one key's lock; counted in the table while it is."""

    __slots__ = ("_key", "_lock", "_table")

    def __init__(self, table: dict[str, tuple[asyncio.Lock, int]], key: str) -> None:
        self._table, self._key = table, key
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        entry = self._table.get(self._key)
        lock, users = entry if entry is not None else (asyncio.Lock(), 0)
        self._table[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting: no longer a user
            self._leave(lock)
            raise
        self._lock = lock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock, self._lock = self._lock, None
        assert lock is not None, "exit without enter"
        lock.release()
        self._leave(lock)

    def _leave(self, lock: asyncio.Lock) -> None:
        users = self._table[self._key][1]
        if users == 1:
            del self._table[self._key]
        else:
            self._table[self._key] = (lock, users - 1)
