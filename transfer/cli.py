"""The `transfer` command: the only place that configures logging and calls asyncio.run.

Every bad flag ends in one line on stderr and exit status 2; a run that did not do its
job (a file not confirmed, a verify difference) exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from transfer import logs, report, sending
from transfer.errors import ConfigError, TransferError
from transfer.server import AccessLogger, ServerConfig, make_app
from transfer.storage import FileStore
from transfer.units import parse_duration, parse_size

log = structlog.get_logger("transfer.cli")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-file", type=Path, help="append logs here instead of stderr")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="receive uploads (the server)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--max-chunk", type=_size, default="64MiB", help="largest chunk body")
    p.add_argument("--max-upload", type=_size, default="64GiB", help="largest upload")
    p.add_argument("--idle-timeout", type=_duration, default="30s", help="per-read body timeout")
    p.add_argument("--max-active", type=int, default=64, help="most uploads receiving at once")
    p.add_argument(
        "--fsync",
        choices=("always", "never"),
        default="always",
        help="'never' skips fsync: faster, and UNSAFE (a crash can lose acknowledged bytes)",
    )
    _add_logging(p)
    p.set_defaults(run=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfer", description="Resumable, integrity-checked file transfer over HTTP."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sending.add_parsers(sub, _size, _duration, _add_logging)
    _report_parser(sub)
    return parser


def _report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="summarise a run from its JSON log files")
    p.add_argument("logs", nargs="+", type=Path, help="sender and server log files")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    _add_logging(p)
    p.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    try:
        summary = report.summarise(report.read_lines(args.logs))
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    print(json.dumps(summary.to_json()) if args.json else report.render(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_format, log_file=args.log_file, level=args.log_level)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except TransferError as exc:
        print(f"transfer {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    if args.max_active < 1:
        raise ConfigError("--max-active must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be 0-65535")
    config = ServerConfig(
        max_chunk=args.max_chunk,
        max_upload=args.max_upload,
        idle_timeout=args.idle_timeout,
        max_active=args.max_active,
    )
    store = FileStore(args.data_dir, durable=args.fsync == "always")
    asyncio.run(_run_server(store, config, args.host, args.port))
    return 0


async def _run_server(store: FileStore, config: ServerConfig, host: str, port: int) -> None:
    try:
        recovered = store.open()
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {store.files_dir.parent}: {exc}") from exc
    runner = web.AppRunner(make_app(store, config), access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=10.0)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = runner.addresses[0][1]
    url = f"http://{host}:{bound}"
    log.info("server.started", url=url, data_dir=str(store.files_dir.parent), recovered=recovered)
    await _until_signalled()
    log.info("server.stopping")
    await runner.cleanup()
    log.info("server.stopped")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
