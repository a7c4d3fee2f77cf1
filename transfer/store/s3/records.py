"""The PostgreSQL side of the S3 store: one row per upload, locks, compare-and-set.

Invariants:
- A row is the truth about an upload: its spec, `stored` (the offset), the multipart
  upload and its committed parts, the tail object, and, once published, the record. For a
  partial upload `stored == sum(part sizes) + tail_size`; every object a row names was
  written (and acknowledged by S3) before the row named it.
- Every change of `stored`, `parts` or `tail` is a compare-and-set on the old `stored`
  (`advance`, `reset`), made on the connection that holds the upload's lock; a row that
  moved meanwhile is left alone and the caller is refused. So two replicas can never
  both append at one offset, even if a lock were lost.
- The per-upload lock is a session advisory lock (`pg_try_advisory_lock`) on a pooled
  connection: PostgreSQL releases it when the holder's connection ends, so a replica
  killed mid-chunk blocks nobody. It is tried, never waited for: a second writer is
  refused at once (`upload_conflict`).
- Migrations run at start-up, in order, each once, under a transaction-level advisory
  lock, so replicas starting together apply them once.
- A completed row whose record `--record-ttl` removed stays, `forgotten`: its id is never
  reused and its file is still served, but it is no upload any more (`get` skips it).
- Every database failure is a `StorageFailure` (`failures.db_errors`): 503
  `storage_unavailable` while PostgreSQL is away, never a raw driver error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from transfer.core import integrity
from transfer.core.errors import Code, Conflict
from transfer.core.records import FileRecord, UploadSpec, spec_from_json, spec_to_json
from transfer.core.tenancy import SEPARATOR
from transfer.store.s3.failures import DB_AWAY, db_errors

# Each entry is one migration, applied once, in order; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE transfer_uploads (
        id text PRIMARY KEY,
        spec jsonb NOT NULL,
        stored bigint NOT NULL DEFAULT 0,
        mpu text,
        parts jsonb NOT NULL DEFAULT '[]'::jsonb,
        tail text,
        tail_size bigint NOT NULL DEFAULT 0,
        record jsonb,
        published_ns bigint,
        modified double precision NOT NULL
    );
    CREATE INDEX transfer_uploads_partial ON transfer_uploads (id) WHERE record IS NULL;
    """,
    """
    ALTER TABLE transfer_uploads ADD COLUMN forgotten boolean NOT NULL DEFAULT false;
    CREATE INDEX transfer_uploads_retained ON transfer_uploads (published_ns)
        WHERE record IS NOT NULL AND NOT forgotten;
    """,
)
ACQUIRE_TIMEOUT = 10.0  # seconds to wait for a pooled connection before answering 503
_MIGRATION_LOCK = 0x7472616E73666572  # "transfer": one key for every replica's start-up
_COLUMNS = "spec, stored, mpu, parts, tail, tail_size, record, published_ns, modified, forgotten"


@dataclass(frozen=True, slots=True)
class Part:
    """One committed part of the multipart upload."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a partial upload's bytes are: committed parts, then the tail object."""

    mpu: str | None = None
    parts: tuple[Part, ...] = ()
    tail: str | None = None
    tail_size: int = 0

    @property
    def stored(self) -> int:
        return sum(p.size for p in self.parts) + self.tail_size


@dataclass(frozen=True, slots=True)
class Row:
    spec: UploadSpec
    stored: int
    layout: Layout
    record: FileRecord | None
    published_ns: int | None
    modified: float
    forgotten: bool = False  # the record was removed (`--record-ttl`); the file stays


def _record_json(record: FileRecord) -> str:
    doc = {"name": record.name, "size": record.size, "metadata": dict(record.metadata)}
    return json.dumps({**doc, "digests": integrity.to_hex(record.digests)})


def _row(upload_id: str, r: asyncpg.Record) -> Row:
    parts = tuple(Part(*p) for p in json.loads(r["parts"]))
    layout = Layout(r["mpu"], parts, r["tail"], r["tail_size"])
    record = None
    if r["record"] is not None:
        doc = json.loads(r["record"])
        digests = integrity.from_hex(doc["digests"])
        record = FileRecord(upload_id, doc["name"], doc["size"], doc["metadata"], digests)
    spec = spec_from_json(json.loads(r["spec"]))
    return Row(spec, r["stored"], layout, record, r["published_ns"], r["modified"], r["forgotten"])


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the migrations this database lacks; returns how many were applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS transfer_migrations"
            " (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await conn.fetchval("SELECT coalesce(max(version), 0) FROM transfer_migrations")
        for version, sql in enumerate(MIGRATIONS[done:], start=done + 1):
            await conn.execute(sql)
            await conn.execute("INSERT INTO transfer_migrations (version) VALUES ($1)", version)
        return len(MIGRATIONS) - int(done)


class Records:
    """Upload rows over an asyncpg pool. Mutations of `stored` take a held connection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, upload_id: str) -> Row | None:
        async with db_errors(f"read upload {upload_id}"):
            r = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM transfer_uploads WHERE id = $1", upload_id
            )
        return None if r is None else _row(upload_id, r)

    async def insert(self, spec: UploadSpec, now: float) -> bool:
        """False if the id exists already (nothing changes then)."""
        async with db_errors(f"create upload {spec.upload_id}"):
            done = await self._pool.execute(
                "INSERT INTO transfer_uploads (id, spec, modified) VALUES ($1, $2, $3)"
                " ON CONFLICT (id) DO NOTHING",
                spec.upload_id,
                json.dumps(spec_to_json(spec)),
                now,
            )
        return bool(done == "INSERT 0 1")

    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection holding the upload's lock, released however the block ends.

        Raises:
            Conflict: `upload_conflict` while another holder (any replica) has it.
        """
        key = "SELECT {}(hashtextextended($1, 0))"
        async with db_errors(f"lock upload {upload_id}"):
            conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT)
        try:
            async with db_errors(f"lock upload {upload_id}"):
                locked = await conn.fetchval(key.format("pg_try_advisory_lock"), upload_id)
            if not locked:
                raise Conflict(
                    Code.UPLOAD_CONFLICT, f"upload {upload_id} is being changed by another request"
                )
            try:
                yield conn
            finally:
                # If this is cancelled (or the connection broke), the pool's reset on
                # release, or the connection's end, unlocks all anyway.
                with contextlib.suppress(*DB_AWAY):
                    await conn.execute(key.format("pg_advisory_unlock"), upload_id)
        finally:
            await self._pool.release(conn)

    @staticmethod
    async def save_spec(conn: asyncpg.Connection, spec: UploadSpec) -> None:
        async with db_errors(f"save upload {spec.upload_id}"):
            await conn.execute(
                "UPDATE transfer_uploads SET spec = $2 WHERE id = $1",
                spec.upload_id,
                json.dumps(spec_to_json(spec)),
            )

    @staticmethod
    async def advance(
        conn: asyncpg.Connection, spec: UploadSpec, old: int, layout: Layout, now: float
    ) -> bool:
        """Compare-and-set: the new layout (and spec) only if `stored` is still `old`."""
        async with db_errors(f"advance upload {spec.upload_id}"):
            done = await conn.execute(
                "UPDATE transfer_uploads SET stored = $3, mpu = $4, parts = $5, tail = $6,"
                " tail_size = $7, spec = $8, modified = $9"
                " WHERE id = $1 AND stored = $2 AND record IS NULL",
                spec.upload_id,
                old,
                layout.stored,
                layout.mpu,
                json.dumps([[p.number, p.etag, p.size] for p in layout.parts]),
                layout.tail,
                layout.tail_size,
                json.dumps(spec_to_json(spec)),
                now,
            )
            return bool(done == "UPDATE 1")

    @staticmethod
    async def publish(
        conn: asyncpg.Connection, record: FileRecord, old: int, published_ns: int
    ) -> bool:
        """Compare-and-set: publish only if `stored` is still `old` and nothing is."""
        async with db_errors(f"publish upload {record.upload_id}"):
            done = await conn.execute(
                "UPDATE transfer_uploads SET record = $3, published_ns = $4, mpu = NULL,"
                " parts = '[]'::jsonb, tail = NULL, tail_size = 0"
                " WHERE id = $1 AND stored = $2 AND record IS NULL",
                record.upload_id,
                old,
                _record_json(record),
                published_ns,
            )
            return bool(done == "UPDATE 1")

    @staticmethod
    async def remove(conn: asyncpg.Connection, upload_id: str) -> None:
        async with db_errors(f"remove upload {upload_id}"):
            await conn.execute(
                "DELETE FROM transfer_uploads WHERE id = $1 AND record IS NULL", upload_id
            )

    async def partials(self) -> list[tuple[str, float]]:
        async with db_errors("list partial uploads"):
            rows = await self._pool.fetch(
                "SELECT id, modified FROM transfer_uploads WHERE record IS NULL ORDER BY id"
            )
            return [(r["id"], r["modified"]) for r in rows]

    async def partial_totals(self) -> tuple[int, int, dict[str, int]]:
        """(how many partial uploads, their bytes, the bytes by tenant), cluster-wide.

        A tenant's uploads are the rows keyed `{tenant}~{id}` (`core.tenancy`); a key
        without `~` belongs to no tenant and counts in the total only.
        """
        async with db_errors("count partial uploads"):
            rows = await self._pool.fetch(
                "SELECT CASE WHEN strpos(id, $1) > 0 THEN split_part(id, $1, 1) END AS tenant,"
                " count(*) AS n, coalesce(sum(stored), 0) AS bytes"
                " FROM transfer_uploads WHERE record IS NULL GROUP BY 1",
                SEPARATOR,
            )
        by_tenant = {r["tenant"]: int(r["bytes"]) for r in rows if r["tenant"] is not None}
        return sum(int(r["n"]) for r in rows), sum(int(r["bytes"]) for r in rows), by_tenant

    async def completed_before(self, cutoff_ns: int) -> list[str]:
        """Ids of published, not forgotten uploads published before `cutoff_ns`."""
        async with db_errors("list completed uploads"):
            rows = await self._pool.fetch(
                "SELECT id FROM transfer_uploads WHERE record IS NOT NULL AND NOT forgotten"
                " AND published_ns < $1 ORDER BY id",
                cutoff_ns,
            )
            return [r["id"] for r in rows]

    async def forget(self, upload_id: str) -> None:
        """Mark a published upload's record removed (the row stays: the id is taken)."""
        async with db_errors(f"forget upload {upload_id}"):
            await self._pool.execute(
                "UPDATE transfer_uploads SET forgotten = true WHERE id = $1 AND record IS NOT NULL",
                upload_id,
            )

    async def owned(self) -> tuple[set[str], set[str]]:
        """(multipart upload ids, tail keys) that some row names."""
        async with db_errors("list owned objects"):
            rows = await self._pool.fetch(
                "SELECT mpu, tail FROM transfer_uploads"
                " WHERE record IS NULL AND (mpu IS NOT NULL OR tail IS NOT NULL)"
            )
            return {r["mpu"] for r in rows if r["mpu"]}, {r["tail"] for r in rows if r["tail"]}


__all__ = ["MIGRATIONS", "Layout", "Part", "Records", "Row", "migrate"]
