"""Opening an `S3Backend`: the S3 client, the PostgreSQL pool, the schema, checked once.

Everything that can be wrong with `--store s3://`, `--s3-endpoint` or `--db` is found
here, at start-up, and said in one line (`ConfigError`): no credentials, an endpoint or
database that cannot be reached (with the reason), a bucket that is missing or refused.
Credentials come only from the standard AWS sources (environment, `~/.aws/` files,
profiles), never from flags. botocore's own retries are off (see `objects.py`).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from transfer.core.errors import ConfigError
from transfer.store.s3.location import S3Location, redact_dsn
from transfer.store.s3.objects import Objects, error_code
from transfer.store.s3.records import Records, migrate
from transfer.store.s3.store import S3Backend

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0  # no query of ours takes long: a hang is an outage (503), not a wait


async def open_backend(
    where: S3Location, *, endpoint: str | None, dsn: str, pool_size: int = 80
) -> S3Backend:
    """Connect to both, check the bucket, migrate the schema.

    Raises:
        ConfigError: one line saying what is wrong and why.
    """
    exits = AsyncExitStack()
    try:
        client = await exits.enter_async_context(await _client(endpoint, pool_size))
        await _check_bucket(client, where, endpoint)
        pool = await _pool(dsn, pool_size)
        exits.push_async_callback(pool.close)
        backend = S3Backend(Objects(client, where), Records(pool), exits)
        await backend.refresh()
    except BaseException:
        await exits.aclose()
        raise
    return backend


async def _client(endpoint: str | None, pool_size: int) -> Any:
    session = get_session()
    if await session.get_credentials() is None:
        raise ConfigError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE with ~/.aws/credentials (credentials are never taken from flags)"
        )
    region = os.environ.get("AWS_REGION") or session.get_config_variable("region")
    config = AioConfig(
        retries={"total_max_attempts": 1, "mode": "standard"},  # the client retries, logged
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=60,
        max_pool_connections=pool_size,
        s3={"addressing_style": "path"},  # MinIO, SeaweedFS, Ceph: no bucket DNS names
    )
    return session.create_client(
        "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config
    )


async def _check_bucket(client: Any, where: S3Location, endpoint: str | None) -> None:
    """Raises: ConfigError if the endpoint cannot be reached or the bucket not used."""
    name = endpoint or "the default AWS endpoint"
    try:
        await client.head_bucket(Bucket=where.bucket)
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        why = {"404": "no such bucket", "NoSuchBucket": "no such bucket"}.get(code)
        why = why or {"403": "access denied (check the credentials)"}.get(code, str(exc))
        raise ConfigError(f"--store {where}: {why}") from exc
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise ConfigError(f"--s3-endpoint: cannot reach {name}: {exc}") from exc


async def _pool(dsn: str, pool_size: int) -> Any:
    """A migrated pool. Raises: ConfigError with the reason the database refused."""
    where = redact_dsn(dsn)  # never print a password
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=pool_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ConfigError(f"--db {where}: cannot connect: {reason}") from exc
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except BaseException:
        await asyncio.shield(pool.close())
        raise
    return pool


__all__ = ["open_backend"]
