"""The hooks' outbox in PostgreSQL, for the S3 store: one table every replica shares.

    transfer_hook_outbox (seq bigserial, id, type, key, at, data jsonb NULL: unresolved)

The same `Outbox` protocol as `FileOutbox` (store/outbox.py), with what sharing adds:
- `shared` is True: an unresolved row that this process does not hold may be another
  replica's finalize in progress, so the deliverer drops one only after a grace period;
  `resolve` re-inserts a row that was dropped meanwhile (as a new, resolved row), so a
  finalize slower than the grace still gets its event out.
- `pending()` is a snapshot of the table's seqs, refreshed by `refresh()` (the deliverer
  polls it; other replicas append too) and kept up to date with this process's own
  appends and removals.
- `leading()` holds a session advisory lock for as long as one deliverer delivers:
  replicas take turns, never send in parallel (which would break the order), and a
  leader that dies releases the lock with its connection.

Every database call goes through `failures.db_errors`: PostgreSQL away is a 503
`storage_unavailable` (a hooked finalize refused before the store publishes), never a
raw driver error. `read_table` is `transfer hooks`' read-only listing.

Invariants: `append` returns once the row is committed (PostgreSQL's commit is its
fsync); the table is created at `open` (once, under a transaction advisory lock), outside
the store's migrations, so the hooks stay an optional part of the schema. A connection
of its own small pool, never the store's, so a backlog never takes upload connections.
"""

from __future__ import annotations

import bisect
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from transfer.store.outbox import OutboxEntry
from transfer.store.s3.failures import DB_AWAY, db_errors

TABLE = "transfer_hook_outbox"
_LEADER_LOCK = 0x7472_686F_6F6B  # "trhook": the one deliverer across replicas
_SCHEMA_LOCK = 0x7472_686F_6F6C
CONNECT_TIMEOUT = 10.0  # seconds, for `read_table`'s one connection
_SNAPSHOT_LIMIT = 10_000  # seqs read per refresh: the head of the queue is what matters
_INSERT = (
    f"INSERT INTO {TABLE} (id, type, key, at, data) VALUES ($1, $2, $3, $4, $5::jsonb) "
    "RETURNING seq"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq bigserial PRIMARY KEY,
    id text NOT NULL,
    type text NOT NULL,
    key text NOT NULL,
    at double precision NOT NULL,
    data jsonb
)
"""


class PgOutbox:
    """`Outbox` over a PostgreSQL table (see the module docstring)."""

    shared = True

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        self._dsn, self._pool_size = dsn, pool_size
        self._pool: asyncpg.Pool | None = None
        self._pending: list[int] = []

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PgOutbox.open() first"
        return self._pool

    async def open(self) -> None:
        async with db_errors("hook outbox"):
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size)
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(_SCHEMA)
        await self.refresh()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def refresh(self) -> None:
        async with db_errors("hook outbox"):
            rows = await self.pool.fetch(
                f"SELECT seq FROM {TABLE} ORDER BY seq LIMIT $1", _SNAPSHOT_LIMIT
            )
        self._pending = [int(r["seq"]) for r in rows]

    def pending(self) -> Sequence[int]:
        return self._pending

    async def append(
        self, event_id: str, kind: str, key: str, at: float, data: Mapping[str, Any] | None
    ) -> OutboxEntry:
        async with db_errors("hook outbox"):
            seq = await self.pool.fetchval(_INSERT, event_id, kind, key, at, _json(data))
        bisect.insort(self._pending, int(seq))
        return OutboxEntry(int(seq), event_id, kind, key, at, data)

    async def resolve(self, entry: OutboxEntry, data: Mapping[str, Any]) -> OutboxEntry:
        async with db_errors("hook outbox"):
            done = await self.pool.execute(
                f"UPDATE {TABLE} SET data = $2::jsonb WHERE seq = $1", entry.seq, _json(data)
            )
        if done != "UPDATE 0":
            return OutboxEntry(entry.seq, entry.event_id, entry.kind, entry.key, entry.at, data)
        # Dropped meanwhile by a deliverer that waited out the grace: queue it again.
        return await self.append(entry.event_id, entry.kind, entry.key, entry.at, data)

    async def read(self, seq: int) -> OutboxEntry | None:
        async with db_errors("hook outbox"):
            r = await self.pool.fetchrow(f"SELECT * FROM {TABLE} WHERE seq = $1", seq)
        return None if r is None else _entry(r)

    async def remove(self, seq: int) -> None:
        async with db_errors("hook outbox"):
            await self.pool.execute(f"DELETE FROM {TABLE} WHERE seq = $1", seq)
        index = bisect.bisect_left(self._pending, seq)
        if index < len(self._pending) and self._pending[index] == seq:
            del self._pending[index]

    @asynccontextmanager
    async def leading(self) -> AsyncIterator[None]:
        """Wait to be the one deliverer; stay it until the block ends.

        Raises:
            StorageFailure: PostgreSQL away (the deliverer tries to lead again later).
        """
        async with db_errors("hook outbox: lead"):
            conn = await self.pool.acquire()
        try:
            async with db_errors("hook outbox: lead"):
                await conn.execute("SELECT pg_advisory_lock($1)", _LEADER_LOCK)
            try:
                yield
            finally:
                # A broken connection unlocks anyway, as it ends.
                with contextlib.suppress(*DB_AWAY):
                    await conn.execute("SELECT pg_advisory_unlock($1)", _LEADER_LOCK)
        finally:
            await self.pool.release(conn)


async def read_table(dsn: str) -> list[OutboxEntry]:
    """Every row of the table, in seq order, over one short connection of its own
    (`transfer hooks --store s3://...`); no table yet: nothing pending. Read-only.

    Raises:
        StorageFailure: PostgreSQL unreachable or refusing.
    """
    async with db_errors("hook outbox"):
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        try:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE):
                return []
            rows = await conn.fetch(f"SELECT * FROM {TABLE} ORDER BY seq")
        finally:
            await conn.close()
    return [_entry(r) for r in rows]


def _entry(r: asyncpg.Record) -> OutboxEntry:
    data = None if r["data"] is None else json.loads(r["data"])
    return OutboxEntry(int(r["seq"]), r["id"], r["type"], r["key"], float(r["at"]), data)


def _json(data: Mapping[str, Any] | None) -> str | None:
    return None if data is None else json.dumps(dict(data), separators=(",", ":"))


__all__ = ["TABLE", "PgOutbox", "read_table"]
