"""`transfer serve`: flags, TLS, signals; the app itself is `transfer.server`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import structlog
from aiohttp import web

from transfer.cli.common import add_token, freeze_heap, token_of
from transfer.cli.hookflags import add_hook_flags, hook_config, outbox_for
from transfer.cli.stores import OpenedStore, add_store_flags, choose_store, opened_store
from transfer.cli.tenantflags import add_tenant_flags, tenant_config
from transfer.common.tls import server_context
from transfer.core.errors import ConfigError
from transfer.core.events import Event
from transfer.server.app import STATE, ServerConfig, make_app
from transfer.server.connections import (
    DEFAULT_MAX_CONNECTIONS,
    ConnLimits,
    Tracker,
    parse_network,
)
from transfer.server.connlimit import LimitedTCPSite, default_max_connections, ensure_fd_limit
from transfer.server.cors import cors_origins
from transfer.server.forwarded import client_middleware
from transfer.server.ietf_request import ietf_base_path
from transfer.server.middleware import AccessLogger
from transfer.server.tenants import Keyring
from transfer.server.tus import tus_base_path
from transfer.store.filestore import DEFAULT_CACHE_SIZE
from transfer.store.outbox import Outbox

log = structlog.get_logger("transfer.serve")
# Any: the subparsers are the CLI's own ArgumentParser subclass.
Sub: TypeAlias = "argparse._SubParsersAction[Any]"


def add_parser(
    sub: Sub,
    size: Callable[[str], int],
    duration: Callable[[str], float],
    add_logging: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("serve", help="receive uploads (the server)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    add_store_flags(p)
    p.add_argument("--max-chunk", type=size, default="64MiB", help="largest chunk body")
    p.add_argument("--max-upload", type=size, default="64GiB", help="largest upload")
    p.add_argument("--idle-timeout", type=duration, default="30s", help="per-read body timeout")
    p.add_argument("--min-rate", type=size, default="1KiB", help="slowest body, bytes/s")
    p.add_argument("--max-active", type=int, default=64, help="most uploads receiving at once")
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help=f"open connections; when full, one still sending headers (or idle) is closed "
        f"to make room, else 503 (default: {DEFAULT_MAX_CONNECTIONS}, or what the hard "
        "file-descriptor limit allows)",
    )
    p.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=64,
        help="open connections from one address (429 past it; trusted proxies exempt)",
    )
    p.add_argument(
        "--header-timeout",
        type=duration,
        default="10s",
        help="a connection must complete a request's headers within this (and TLS handshake)",
    )
    p.add_argument(
        "--trusted-proxy",
        type=_network,
        action="append",
        metavar="CIDR",
        help="X-Forwarded-For from this network names the client (repeatable; none by default)",
    )
    p.add_argument("--max-partial", type=size, default="256GiB", help="all partial bytes")
    p.add_argument("--reserve", type=size, default="256MiB", help="disk space kept free")
    p.add_argument("--partial-ttl", type=duration, default="24h", help="idle partials expire")
    p.add_argument(
        "--record-ttl",
        type=_keep_or(duration),
        default=None,
        metavar="DURATION",
        help="remove the records of uploads completed longer ago than this (HEAD answers 404 "
        "after); their files stay in files/ (default: keep)",
    )
    p.add_argument(
        "--cache-size",
        type=int,
        default=DEFAULT_CACHE_SIZE,
        help="completed uploads' records kept in memory, least recently used dropped first "
        f"(default: {DEFAULT_CACHE_SIZE})",
    )
    p.add_argument(
        "--fsync",
        choices=("always", "never"),
        default="always",
        help="'never' skips fsync: faster, and UNSAFE (a crash can lose acknowledged bytes)",
    )
    add_token(p)
    p.add_argument("--protect-metrics", action="store_true", help="/metrics needs the token")
    add_tenant_flags(p, size, duration)
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument(
        "--tus-path",
        default="/tus/",
        metavar="PATH",
        help="base path of the tus 1.0 front-end (default: /tus/)",
    )
    p.add_argument("--no-tus", action="store_true", help="switch the tus 1.0 front-end off")
    p.add_argument(
        "--ietf-path",
        default="/resumable/",
        metavar="PATH",
        help="base path of the IETF resumable-upload (draft) front-end (default: /resumable/)",
    )
    p.add_argument(
        "--no-ietf", action="store_true", help="switch the IETF resumable-upload front-end off"
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin allowed to upload, e.g. https://app.example (repeatable; "
        "'*' allows any; default: none, no CORS headers)",
    )
    add_hook_flags(p, duration)
    add_logging(p)
    p.set_defaults(run=run)


def _config(args: argparse.Namespace) -> ServerConfig:
    if args.max_active < 1:
        raise ConfigError("--max-active must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be 0-65535")
    if args.idle_timeout <= 0 or args.partial_ttl <= 0:
        raise ConfigError("--idle-timeout and --partial-ttl must be positive")
    if args.record_ttl is not None and args.record_ttl <= 0:
        raise ConfigError("--record-ttl must be positive (or 'keep')")
    if args.cache_size < 0:
        raise ConfigError("--cache-size must be 0 or more")
    tenancy = tenant_config(args)
    token = None if args.tokens_file is not None else token_of(args)
    if token is not None and len(token) < 16:
        raise ConfigError("the token must be at least 16 characters")
    tus_path = None if args.no_tus else tus_base_path(args.tus_path)
    return ServerConfig(
        max_chunk=args.max_chunk,
        max_upload=args.max_upload,
        idle_timeout=args.idle_timeout,
        min_rate=args.min_rate,
        max_active=args.max_active,
        max_partial=args.max_partial,
        reserve=args.reserve,
        partial_ttl=args.partial_ttl,
        record_ttl=args.record_ttl,
        token=token,
        protect_metrics=args.protect_metrics,
        **tenancy,
        tus_path=tus_path,
        ietf_path=None if args.no_ietf else ietf_base_path(args.ietf_path, tus_path=tus_path),
        cors_origins=cors_origins(args.cors_origin or []),
        hooks=hook_config(args),
    )


def _keep_or(duration: Callable[[str], float]) -> Callable[[str], float | None]:
    """`keep` (None: never removed) or a duration."""

    def parse(text: str) -> float | None:
        return None if text == "keep" else duration(text)

    return parse


def _network(text: str) -> object:
    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an address or CIDR network: {exc}") from exc


def _limits(args: argparse.Namespace) -> ConnLimits:
    if args.max_connections is None:  # the default adapts; an explicit value must fit
        args.max_connections = default_max_connections()
    if args.max_connections < 1 or args.max_connections_per_ip < 1:
        raise ConfigError("--max-connections and --max-connections-per-ip must be at least 1")
    if args.header_timeout <= 0:
        raise ConfigError("--header-timeout must be positive")
    ensure_fd_limit(args.max_connections)
    return ConnLimits(
        max_connections=args.max_connections,
        per_ip=args.max_connections_per_ip,
        header_timeout=args.header_timeout,
        trusted=tuple(args.trusted_proxy or ()),
    )


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    return server_context(args.tls_cert, args.tls_key)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    context = _tls(args)
    choice = choose_store(args)
    outbox = outbox_for(config.hooks, path=choice.path, dsn=choice.dsn)
    store = partial(
        opened_store, choice, durable=args.fsync == "always", cache_size=args.cache_size
    )
    listening = Listening(args.host, args.port, context, _limits(args))
    asyncio.run(_serve(store, config, listening, outbox=outbox))
    return 0


@dataclass(frozen=True, slots=True)
class Listening:
    """Where and how `serve` listens: address, TLS (None: plain HTTP), connection limits."""

    host: str
    port: int
    context: ssl.SSLContext | None
    limits: ConnLimits


async def _serve(
    opening: Callable[[], AbstractAsyncContextManager[OpenedStore]],
    config: ServerConfig,
    listening: Listening,
    outbox: Outbox | None = None,
) -> None:
    """Open the store (`transfer.cli.stores`), serve until signalled, close it."""
    async with opening() as opened:
        await _serve_store(opened, config, listening, outbox=outbox)


async def _serve_store(
    opened: OpenedStore, config: ServerConfig, at: Listening, outbox: Outbox | None = None
) -> None:
    store = opened.store
    if opened.migrated:
        log.info(Event.STORE_MIGRATED, records=opened.migrated)
    # keepalive_timeout: an idle kept-alive connection is closed after 75 s instead of
    # aiohttp's AppRunner default of an hour, so idle sockets cannot pile up.
    app = make_app(store, config, outbox=outbox)
    # Outermost: the client is known (and held to its share) before anything else runs.
    app.middlewares.insert(0, client_middleware(at.limits))
    runner = web.AppRunner(app, access_log_class=AccessLogger, keepalive_timeout=75.0)
    await runner.setup()
    freeze_heap()
    tracker = Tracker(at.limits, app[STATE].metrics)
    site = LimitedTCPSite(
        runner, at.host, at.port, tracker=tracker, shutdown_timeout=10.0, ssl_context=at.context
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {at.host}:{at.port}: {exc.strerror}") from exc
    scheme = "https" if at.context else "http"
    url = f"{scheme}://{at.host}:{runner.addresses[0][1]}"
    log.info(
        Event.SERVER_STARTED,
        url=url,
        store=opened.url,
        **opened.log_fields,
        recovered=opened.recovered,
        auth=config.token is not None or config.tokens_file is not None,
    )
    await _until_signalled(app[STATE].keyring)
    log.info(Event.SERVER_STOPPING)
    await runner.cleanup()
    log.info(Event.SERVER_STOPPED)


async def _until_signalled(keyring: Keyring | None = None) -> None:
    """Until SIGINT or SIGTERM; SIGHUP re-reads `--tokens-file` (uploads carry on)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if keyring is not None:
        loop.add_signal_handler(signal.SIGHUP, keyring.reload)
    await stop.wait()
