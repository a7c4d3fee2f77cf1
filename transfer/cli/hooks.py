"""`transfer hooks (--data-dir D | --store URL [--db URL]) [--json]`: the hook events
waiting in the outbox.

The store flags are `serve`'s (`cli/stores.py`): a file store's outbox is
`DATA_DIR/outbox/`, an s3:// store's is the `transfer_hook_outbox` table in `--db`
(`--s3-endpoint` is accepted and unused: the events are all in PostgreSQL).

One line per pending event, oldest first (`seq`, time, type, upload, event id, and
`unresolved` for a completion whose record the server still has to read), then the
totals by type. Read-only and lock-free: it works beside running servers (an event
delivered meanwhile is simply not shown). A missing data dir, or a database that cannot
be reached, is an error (exit 2); a store without an outbox has nothing pending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from transfer.cli.stores import StoreChoice, add_store_flags, choose_store, s3_extra_missing
from transfer.core import cloudevents, tenancy
from transfer.core.errors import ConfigError, StorageFailure
from transfer.store.outbox import OutboxEntry, read_outbox

# Any: the subparsers are the CLI's own ArgumentParser subclass.
Sub: TypeAlias = "argparse._SubParsersAction[Any]"
_PREFIX = "dev.transfer.upload."


def add_parser(sub: Sub, add_logging: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("hooks", help="show the hook events waiting in the outbox")
    add_store_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    add_logging(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    choice = choose_store(args, reading=True)
    entries = _read_dir(choice.path) if choice.path is not None else _read_table(choice)
    now = time.time()
    print(json.dumps(summary(entries, now)) if args.json else render(entries, now))
    return 0


def _read_dir(data_dir: Path) -> list[OutboxEntry]:
    try:
        return read_outbox(data_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read {data_dir}/outbox: {exc}") from exc


def _read_table(choice: StoreChoice) -> list[OutboxEntry]:
    # Lazily, as `serve` does: only an s3:// store loads the s3 extra.
    try:
        from transfer.store.s3.outbox import read_table  # noqa: PLC0415
    except ImportError as exc:
        raise s3_extra_missing(exc) from exc
    try:
        return asyncio.run(read_table(choice.dsn))
    except StorageFailure as exc:  # the detail never holds the DSN
        raise ConfigError(f"cannot read the hooks' outbox: {exc.detail}") from exc


def summary(entries: list[OutboxEntry], now: float) -> dict[str, object]:
    return {
        "pending": len(entries),
        "by_type": dict(Counter(entry.kind for entry in entries)),
        "oldest_age_s": round(now - min(e.at for e in entries), 3) if entries else None,
        "events": [_event(entry) for entry in entries],
    }


def _event(entry: OutboxEntry) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "id": entry.event_id,
        "type": entry.kind,
        "upload_id": tenancy.public_id(entry.key),
        "tenant": tenancy.tenant_of(entry.key),
        "time": cloudevents.rfc3339(entry.at),
        "resolved": entry.data is not None,
    }


def render(entries: list[OutboxEntry], now: float) -> str:
    lines = [_line(entry) for entry in entries]
    counts = Counter(entry.kind.removeprefix(_PREFIX) for entry in entries)
    by_type = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    total = f"{len(entries)} pending" + (f" ({by_type})" if by_type else "")
    if entries:
        total += f", oldest {now - min(e.at for e in entries):.0f}s ago"
    return "\n".join([*lines, total])


def _line(entry: OutboxEntry) -> str:
    tenant = tenancy.tenant_of(entry.key)
    upload = f"{tenant}/{tenancy.public_id(entry.key)}" if tenant else entry.key
    state = "" if entry.data is not None else "  unresolved"
    kind = entry.kind.removeprefix(_PREFIX)
    when = cloudevents.rfc3339(entry.at)
    return f"{entry.seq:>8}  {when}  {kind:<15}  {upload}  {entry.event_id}{state}"


__all__ = ["add_parser", "render", "run", "summary"]
