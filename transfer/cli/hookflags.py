"""`transfer serve`'s hook flags, checked into a `HookConfig`, and the outbox they need.

    --hook-url URL                 each upload event POSTed, signed (CloudEvents 1.0)
    --hook-command CMD             each upload event on a program's stdin
    --hook-secret SECRET           the signing key (prefer $TRANSFER_HOOK_SECRET)
    --hook-timeout DURATION        one POST or one run of the command (default 10s)
    --hook-max-backoff DURATION    longest wait between two attempts (default 1m)
    --pre-create-hook-url URL      asked before an upload is created
    --pre-create-hook-timeout D    how long it may take to answer (default 5s)

Invariant: the secret is never logged, printed or shown in an error (`HookConfig`'s repr
leaves it out); a signed hook without a secret is refused at start-up.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from transfer.core.errors import ConfigError
from transfer.server.hookdelivery import SECRET_ENV
from transfer.server.hooks import HookConfig
from transfer.store.outbox import FileOutbox, Outbox

MIN_SECRET = 16


def add_hook_flags(p: argparse.ArgumentParser, duration: Callable[[str], float]) -> None:
    g = p.add_argument_group("hooks (docs/operations.md, 'Hooks')")
    g.add_argument("--hook-url", metavar="URL", help="POST every upload event here, signed")
    g.add_argument(
        "--hook-command",
        metavar="CMD",
        help="run CMD (split like a shell would, run without one) with every upload event "
        "on stdin; a non-zero exit is retried",
    )
    g.add_argument(
        "--hook-secret",
        metavar="SECRET",
        help=f"signing key (prefer ${SECRET_ENV}: flags show in ps)",
    )
    g.add_argument("--hook-timeout", type=duration, default="10s", help="one delivery attempt")
    g.add_argument(
        "--hook-max-backoff", type=duration, default="1m", help="longest wait between attempts"
    )
    g.add_argument(
        "--pre-create-hook-url",
        metavar="URL",
        help="ask this before creating an upload: 2xx creates, 4xx refuses (403), "
        "anything else 503",
    )
    g.add_argument(
        "--pre-create-hook-timeout", type=duration, default="5s", help="its answer's deadline"
    )


def hook_config(args: argparse.Namespace) -> HookConfig:
    """The checked hook flags.

    Raises:
        ConfigError: a bad URL, command or duration, or a URL hook without a secret.
    """
    url = _url("--hook-url", args.hook_url)
    pre_create = _url("--pre-create-hook-url", args.pre_create_hook_url)
    secret = os.environ.get(SECRET_ENV) or args.hook_secret or None
    if (url or pre_create) and secret is None:
        raise ConfigError(f"--hook-url and --pre-create-hook-url need ${SECRET_ENV} (signing)")
    if secret is not None and len(secret) < MIN_SECRET:
        raise ConfigError(f"the hook secret must be at least {MIN_SECRET} characters")
    if min(args.hook_timeout, args.hook_max_backoff, args.pre_create_hook_timeout) <= 0:
        raise ConfigError("--hook-timeout, --hook-max-backoff and --pre-create-hook-timeout > 0")
    return HookConfig(
        url=url,
        command=_command(args.hook_command),
        secret=secret.encode() if secret else None,
        timeout=args.hook_timeout,
        max_backoff=args.hook_max_backoff,
        pre_create_url=pre_create,
        pre_create_timeout=args.pre_create_hook_timeout,
        source=f"urn:transfer:{socket.gethostname()}",
    )


def _url(flag: str, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag} {value!r}: not an http(s):// URL")
    return value


def _command(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:
        raise ConfigError(f"--hook-command: {exc}") from exc
    if not argv:
        raise ConfigError("--hook-command is empty")
    return argv


def outbox_for(hooks: HookConfig, *, path: Path | None, dsn: str) -> Outbox | None:
    """Where events wait (None when no hook delivers): `DATA_DIR/outbox/` beside a file
    store, always fsynced, even under `--fsync never` (an event is only worth a hook if
    it is never lost); a table in the S3 store's PostgreSQL (`--db`), shared by replicas.
    Nothing is opened here: the app opens it when it starts.
    """
    if not hooks.delivers:
        return None
    if path is not None:
        return FileOutbox(path)
    # Lazily, as the S3 store itself: the default never loads asyncpg.
    from transfer.store.s3.outbox import PgOutbox  # noqa: PLC0415

    return PgOutbox(dsn)


__all__ = ["add_hook_flags", "hook_config", "outbox_for"]
