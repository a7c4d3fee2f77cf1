"""Which store `transfer serve` runs on, and opening it: `--store`, `--data-dir`, `--db`.

    file://PATH  (or --data-dir PATH)   the embedded default, `FileStore`
    s3://BUCKET/PREFIX                  `S3Store`: bytes in S3 (`--s3-endpoint`), records
                                        in PostgreSQL (`--db`); docs/scaling.md

`choose_store` checks the flags before anything starts (one-line `ConfigError`s);
`opened_store` is the one seam `_serve` runs inside: it opens the store (recovering
what a crash interrupted), runs the store's own background work (the S3 store's orphan
sweep) and closes everything on the way out.

Invariants: the S3 store's modules (and with them aiobotocore and asyncpg, the `s3`
extra) are imported only inside `_open_s3`, so the default never loads them; a DSN's
password never appears in a log line or an error (`StoreChoice.url`, `redact_dsn`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from transfer.cli.common import check_dir
from transfer.core.errors import ConfigError
from transfer.store.base import ServerStore
from transfer.store.filestore import FileStore
from transfer.store.s3.location import (
    S3Location,
    check_db_url,
    check_endpoint,
    parse_store,
    redact_dsn,
)

ORPHAN_SWEEP_INTERVAL = 600.0  # seconds between the S3 store's orphan sweeps


@dataclass(frozen=True, slots=True)
class StoreChoice:
    """The checked store flags: a directory, or an S3 location with its database."""

    flag: str  # the flag that named it, for errors: "--data-dir" or "--store"
    path: Path | None = None
    location: S3Location | None = None
    endpoint: str | None = None
    dsn: str = ""

    @property
    def url(self) -> str:
        """The store, for logs: `file://PATH` or `s3://BUCKET/PREFIX`; no credentials."""
        if self.path is not None:
            return f"file://{self.path.absolute()}"
        return str(self.location)


@dataclass(frozen=True, slots=True)
class OpenedStore:
    """A store ready to serve, and what opening it found, for `server.started`."""

    store: ServerStore
    url: str
    recovered: list[str]
    log_fields: dict[str, object]
    migrated: int = 0  # FileStore: flat-layout records moved into records/


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """`--data-dir`, `--store`, `--s3-endpoint`, `--db`: one set for every command that
    opens a store (`serve`, `hooks`), checked by `choose_store`."""
    p.add_argument(
        "--data-dir",
        type=Path,
        help="the local store: uploads/ (unfinished), records/ (completed) and files/ "
        "(published); the same as --store file://PATH",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="file://PATH (the same as --data-dir PATH), or s3://BUCKET/PREFIX: bytes in "
        "S3, records in PostgreSQL (--db), for replicas (docs/scaling.md)",
    )
    p.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (default: AWS); "
        "credentials only from the AWS environment variables and config files",
    )
    p.add_argument(
        "--db",
        metavar="URL",
        help="postgresql://... holding the upload records of an s3:// store",
    )


def choose_store(args: argparse.Namespace, *, reading: bool = False) -> StoreChoice:
    """Exactly one of `--data-dir` and `--store`; `--db` and `--s3-endpoint` only (and
    `--db` always) with an s3:// store. A directory must be writable (or creatable),
    or, `reading` (a read-only command), exist.

    Raises:
        ConfigError: one line naming the flags at fault.
    """
    if (args.data_dir is None) == (args.store is None):
        raise ConfigError("give exactly one of --data-dir PATH and --store URL")
    where = args.data_dir if args.store is None else parse_store(args.store)
    if isinstance(where, Path):
        if args.db is not None or args.s3_endpoint is not None:
            raise ConfigError("--db and --s3-endpoint go with --store s3://BUCKET/PREFIX only")
        flag = "--data-dir" if args.store is None else "--store"
        if reading and not where.is_dir():
            raise ConfigError(f"{flag} {where} is not a directory")
        if not reading:
            check_dir(flag, where, inside=("uploads", "files", "records"))
        return StoreChoice(flag, path=where)
    if args.db is None:
        raise ConfigError(f"--store {where} needs --db postgresql://... (the upload records)")
    endpoint = None if args.s3_endpoint is None else check_endpoint(args.s3_endpoint)
    return StoreChoice("--store", location=where, endpoint=endpoint, dsn=check_db_url(args.db))


@asynccontextmanager
async def opened_store(
    choice: StoreChoice, *, durable: bool, cache_size: int
) -> AsyncIterator[OpenedStore]:
    """The store open (and recovered) for the block; closed, with its work stopped, after.

    Raises:
        ConfigError: the store cannot be opened (a directory refused, S3 or PostgreSQL
            unreachable or refusing, the `s3` extra missing).
    """
    if choice.path is not None:
        yield _open_file(choice, choice.path, durable=durable, cache_size=cache_size)
        return
    async with _open_s3(choice) as opened:
        yield opened


def _open_file(choice: StoreChoice, path: Path, *, durable: bool, cache_size: int) -> OpenedStore:
    store = FileStore(path, durable=durable, cache_size=cache_size)
    try:
        recovered = store.open()
    except OSError as exc:
        raise ConfigError(f"{choice.flag} {path}: {exc.strerror}: {exc.filename}") from exc
    # discarded: never-acknowledged partials start-up removed (docs/reliability.md)
    fields = {"data_dir": str(path), "discarded": store.discarded}
    return OpenedStore(store, choice.url, recovered, fields, store.migrated)


def s3_extra_missing(exc: ImportError) -> ConfigError:
    """The one line for an s3:// store without the `s3` extra installed."""
    return ConfigError(
        f"--store s3:// needs the s3 extra ({exc.name or exc} is missing): "
        "pip install 'transfer[s3]'"
    )


@asynccontextmanager
async def _open_s3(choice: StoreChoice) -> AsyncIterator[OpenedStore]:
    # Lazily, so the embedded default never loads the s3 extra (tests/test_store_s3.py).
    try:
        from transfer.store.s3.connect import open_backend  # noqa: PLC0415
        from transfer.store.s3.store import S3Store  # noqa: PLC0415
        from transfer.store.s3.sweep import sweep_forever  # noqa: PLC0415
    except ImportError as exc:
        raise s3_extra_missing(exc) from exc

    assert choice.location is not None  # choose_store: not a path, so a location
    backend = await open_backend(choice.location, endpoint=choice.endpoint, dsn=choice.dsn)
    sweep = asyncio.create_task(sweep_forever(backend, interval=ORPHAN_SWEEP_INTERVAL))
    fields: dict[str, object] = {"db": redact_dsn(choice.dsn)}
    fields["s3_endpoint"] = choice.endpoint or "aws"
    try:
        yield OpenedStore(S3Store(backend), choice.url, [], fields)
    finally:
        sweep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweep
        await asyncio.shield(backend.close())


__all__ = [
    "ORPHAN_SWEEP_INTERVAL",
    "OpenedStore",
    "StoreChoice",
    "add_store_flags",
    "choose_store",
    "opened_store",
    "s3_extra_missing",
]
