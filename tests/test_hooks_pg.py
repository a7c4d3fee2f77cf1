"""The hooks' outbox in PostgreSQL (store/s3/outbox.py), and hooks on `serve --store s3://`.

- `PgOutbox` keeps the `Outbox` contract (order, resolve, remove, what a second process
  sees), re-inserts a resolved row that was dropped meanwhile, and lets one leader
  deliver at a time.
- A real `transfer serve --store s3://` (SeaweedFS + PostgreSQL, tests/services.py):
  killed after the acknowledgement with the receiver down, the event arrives after the
  restart; two replicas share one outbox and every event arrives once per upload.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from hookreceiver import Receiver
from pytest_aiohttp import AiohttpClient
from services import S3Stores, Services, fresh_place, started
from test_hooks import FAST, SECRET, T, types_of, upload

from transfer.core.cloudevents import EventType
from transfer.server.app import ServerConfig, make_app
from transfer.server.hooks import HookConfig
from transfer.store.s3.outbox import PgOutbox
from transfer.testing.backing import Postgres, start_postgres
from transfer.testing.harness import Harness, ServerProcess, run_transfer
from transfer.testing.polling import wait_until, wait_until_async

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
async def dsn(postgres: str) -> str:
    """A DSN on a schema of this test's own."""
    schema = f"h_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(postgres)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return f"{postgres}{'&' if '?' in postgres else '?'}search_path={schema}"


@pytest.fixture
async def outbox(dsn: str) -> AsyncIterator[PgOutbox]:
    box = PgOutbox(dsn)
    await box.open()
    yield box
    await box.close()


async def test_the_table_keeps_the_outbox_contract(outbox: PgOutbox, dsn: str) -> None:
    first = await outbox.append("a", EventType.CREATED, "t~k1", 1.0, {"id": "k1"})
    second = await outbox.append("b", EventType.COMPLETED, "t~k1", 2.0, None)
    assert list(outbox.pending()) == [first.seq, second.seq] and first.seq < second.seq
    other = PgOutbox(dsn)  # another replica, or this one restarted
    await other.open()
    try:
        assert list(other.pending()) == [first.seq, second.seq]
        unresolved = await other.read(second.seq)
        assert unresolved is not None and unresolved.data is None and unresolved.key == "t~k1"
        resolved = await other.resolve(unresolved, {"id": "k1", "size": 3})
        assert resolved.seq == second.seq
        assert (await outbox.read(second.seq)) == resolved
        await other.remove(first.seq)
        await outbox.refresh()
        assert list(outbox.pending()) == [second.seq]
    finally:
        await other.close()


async def test_a_row_dropped_before_its_resolution_is_queued_again(outbox: PgOutbox) -> None:
    entry = await outbox.append("c", EventType.COMPLETED, "k2", 3.0, None)
    await outbox.remove(entry.seq)  # another replica's deliverer gave up on it
    again = await outbox.resolve(entry, {"id": "k2"})
    assert again.seq > entry.seq and again.event_id == "c"
    assert (await outbox.read(again.seq)) == again


async def test_one_leader_at_a_time(outbox: PgOutbox, dsn: str) -> None:
    other = PgOutbox(dsn)
    await other.open()
    entered = asyncio.Event()

    async def follow() -> None:
        async with other.leading():
            entered.set()

    try:
        async with outbox.leading():
            task = asyncio.create_task(follow())
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            await wait_until_async(
                lambda: outbox.pool.fetchval(waiting), "the follower waits", deadline=T
            )
            assert not entered.is_set()
        await asyncio.wait_for(task, T)
        assert entered.is_set()
    finally:
        await other.close()


async def test_transfer_hooks_lists_the_table(outbox: PgOutbox, dsn: str, postgres: str) -> None:
    await outbox.append("e1", EventType.CREATED, "lab~k1", 1.0, {"id": "k1"})
    await outbox.append("e2", EventType.COMPLETED, "lab~k1", 2.0, None)
    flags = ["--store", "s3://bucket/prefix", "--db"]
    listing = await asyncio.to_thread(run_transfer, "hooks", *flags, dsn)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "created" in lines[0] and "lab/k1" in lines[0] and "e1" in lines[0]
    assert lines[1].endswith("unresolved") and "2 pending (1 completed, 1 created)" in lines[2]
    as_json = json.loads(
        (await asyncio.to_thread(run_transfer, "hooks", *flags, dsn, "--json")).stdout
    )
    assert [(e["id"], e["tenant"], e["resolved"]) for e in as_json["events"]] == [
        ("e1", "lab", True),
        ("e2", "lab", False),
    ]
    empty = f"{postgres}{'&' if '?' in postgres else '?'}search_path=h_none_{secrets.token_hex(4)}"
    assert "0 pending" in (await asyncio.to_thread(run_transfer, "hooks", *flags, empty)).stdout
    away = await asyncio.to_thread(run_transfer, "hooks", *flags, "postgresql://u:pw@127.0.0.1:9/x")
    assert away.returncode == 2 and "database" in away.stderr and "pw" not in away.stderr
    assert len(away.stderr.strip().splitlines()) == 1


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own, to stop and start (the session's is shared)."""
    own = started(start_postgres)
    yield own
    own.stop()


async def test_postgresql_away_during_a_hooked_finalize_is_a_503(
    aiohttp_client: AiohttpClient,
    s3_stores: S3Stores,
    receiver: Receiver,
    own_postgres: Postgres,
) -> None:
    """The `completed` row cannot be written: 503 `storage_unavailable` with Retry-After,
    nothing published; once PostgreSQL is back the same chunk completes the upload."""
    hooks = HookConfig(url=receiver.url, secret=SECRET.encode(), max_backoff=0.2)
    outbox = PgOutbox(own_postgres.uri)
    app = make_app(s3_stores.open(), ServerConfig(hooks=hooks), outbox=outbox)
    client = await aiohttp_client(app)
    put = {"Content-Range": "bytes 0-7/8"}
    assert (await client.post("/uploads", json={"id": "pgaway"})).status == 200
    await asyncio.to_thread(own_postgres.pause)
    refused = await client.put("/uploads/pgaway", data=b"precious", headers=put)
    assert refused.status == 503, await refused.text()
    assert (await refused.json())["code"] == "storage_unavailable"
    assert "Retry-After" in refused.headers
    assert (await client.get("/files/pgaway")).status == 404
    await asyncio.to_thread(own_postgres.resume)
    done = await client.put("/uploads/pgaway", data=b"precious", headers=put)
    assert done.status == 200, await done.text()
    await asyncio.to_thread(
        wait_until, lambda: receiver.docs(EventType.COMPLETED), "completed", deadline=T
    )


# --- serve --store s3:// ----------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


async def _place(services: Services, tmp_path: Path) -> tuple[Harness, list[str]]:
    where, dsn = await fresh_place(services)
    env = {**os.environ, "TRANSFER_HOOK_SECRET": SECRET}
    flags = ["--store", str(where), "--s3-endpoint", services.endpoint, "--db", dsn]
    return Harness(tmp_path, env=env), flags


def _serve(harness: Harness, flags: list[str], url: str, name: str) -> ServerProcess:
    store = flags[1]
    extra = [*flags[2:], *FAST, "--hook-url", url]
    return harness.serve(harness.workdir / "unused", store=store, extra=extra, name=name)


async def test_s3_kill_after_the_ack_delivers_after_restart(
    services: Services, receiver: Receiver, tmp_path: Path
) -> None:
    harness, flags = await _place(services, tmp_path)
    with harness:
        receiver.stop()
        server = _serve(harness, flags, receiver.url, "s3a")
        assert await asyncio.to_thread(upload, server.url, "s3acked", b"precious") == 200
        server.kill()
        listing = await asyncio.to_thread(run_transfer, "hooks", *flags, "--json")
        assert listing.returncode == 0, listing.stderr
        pending = json.loads(listing.stdout)
        assert pending["pending"] == 2 and pending["by_type"] == {
            EventType.CREATED: 1,
            EventType.COMPLETED: 1,
        }
        assert {e["upload_id"] for e in pending["events"]} == {"s3acked"}
        receiver.start()
        _serve(harness, flags, receiver.url, "s3a")
        await asyncio.to_thread(
            wait_until, lambda: receiver.docs(EventType.COMPLETED), "completed", deadline=T
        )
        assert types_of(receiver.docs(), "s3acked") == ["created", "completed"]


async def test_two_replicas_share_one_outbox(
    services: Services, receiver: Receiver, tmp_path: Path
) -> None:
    harness, flags = await _place(services, tmp_path)
    with harness:
        one = _serve(harness, flags, receiver.url, "r1")
        two = _serve(harness, flags, receiver.url, "r2")
        for i, server in enumerate([one, two, one, two]):
            assert await asyncio.to_thread(upload, server.url, f"rep{i}", b"x" * 10) == 200

        def all_completed() -> bool:
            return len(receiver.docs(EventType.COMPLETED)) >= 4

        await asyncio.to_thread(wait_until, all_completed, "four completions", deadline=T)
        for i in range(4):
            assert types_of(receiver.docs(), f"rep{i}") == ["created", "completed"]
