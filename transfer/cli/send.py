"""The sender's subcommands: `transfer send`, `transfer status`, `transfer verify`.

Flag parsing and process wiring only (session, journal, signals, status server); the
pipeline is `transfer.sender`. Called from `transfer.cli`, which owns logging set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import structlog
from aiohttp import web

from transfer.cli import progress
from transfer.cli.common import (
    Signals,
    add_token,
    check_dir,
    check_readable,
    check_server_url,
    exit_status,
    freeze_heap,
    read_spool,
    token_of,
    view_spool,
)
from transfer.cli.servers import (
    check_protocol,
    check_servers,
    client_for,
    record_at,
    upload_id_of,
)
from transfer.cli.servers import tus_endpoint as tus_endpoint  # noqa: PLC0414 (tests import it here)
from transfer.cli.watchflags import add_watch_flags, watch_config
from transfer.common.http import new_session
from transfer.common.tls import client_context
from transfer.core.errors import ConfigError, TransferError
from transfer.core.events import Event
from transfer.core.filestate import FileState
from transfer.sender import status
from transfer.sender.client import UploadClient
from transfer.sender.failover import Servers, ask_any
from transfer.sender.generator import GeneratorConfig
from transfer.sender.journal import FileJournal, JournalEntry
from transfer.sender.pipeline import Sender, SenderConfig, prepare_journal
from transfer.sender.reasons import Reason
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader

log = structlog.get_logger("transfer.send")
KiB = 1024
_SPOOL_HELP = "the sender's journal and generated files live here"
PROTOCOLS = ("native", "tus", "ietf")
# Any: the subparsers are the CLI's own ArgumentParser subclass.
Sub: TypeAlias = "argparse._SubParsersAction[Any]"


def add_parsers(
    sub: Sub,
    size: Callable[[str], int],
    duration: Callable[[str], float],
    add_logging: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("send", help="generate (or take) files and upload them")
    p.add_argument("paths", nargs="*", type=Path, help="send these files/directories instead")
    p.add_argument(
        "--server",
        required=True,
        action="append",
        help="e.g. http://127.0.0.1:8000; give it again for replicas over one store: the"
        " sender moves on to the next when one is unreachable (docs/scaling.md)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="native",
        help="upload protocol; tus, ietf: the endpoint is --server's path, else /tus/ or"
        " /resumable/",
    )
    _add_connection(p)
    p.add_argument("--spool-dir", type=Path, required=True, help=_SPOOL_HELP)
    p.add_argument(
        "--count", type=int, default=100, metavar="N", help="files in the journal, over all runs"
    )
    p.add_argument("--min-size", type=size, default="1KiB", metavar="SIZE", help="smallest file")
    p.add_argument("--max-size", type=size, default="1MiB", metavar="SIZE", help="largest file")
    p.add_argument(
        "--min-interval", type=duration, default="1ms", metavar="DURATION", help="shortest wait"
    )
    p.add_argument(
        "--max-interval",
        type=duration,
        default="1s",
        metavar="DURATION",
        help="longest wait before each file (uniform between the two)",
    )
    p.add_argument(
        "--max-duration",
        type=duration,
        default=None,
        metavar="DURATION",
        help="stop generating after this long, e.g. 10m (default: no bound)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="same seed, same files (default: random, then kept in the journal)",
    )
    p.add_argument(
        "--chunk-size",
        type=lambda text: None if text == "auto" else size(text),
        default="auto",
        help="a multiple of 256KiB, or auto (whole file up to 8MiB, else 8MiB chunks)",
    )
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="uploads at once")
    p.add_argument(
        "--retry-timeout",
        type=duration,
        default="300s",
        metavar="DURATION",
        help="keep retrying this long without progress before a file fails",
    )
    p.add_argument(
        "--status-port", type=int, default=0, help="the sender's /status port; 0 picks a free one"
    )
    p.add_argument("--status-host", default="127.0.0.1", help="the sender's /status address")
    p.add_argument(
        "--inject-corruption",
        type=float,
        default=0.0,
        metavar="RATE",
        help="flip a bit in this fraction of chunks (a demo of the integrity checks)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress display on stderr (auto: when it is a terminal; logs then go to a file)",
    )
    p.add_argument(
        "--journal-compact-at",
        type=size,
        default="4MiB",
        metavar="SIZE",
        help="compact the journal (fold confirmed files into journal.ckpt) past this log size",
    )
    add_watch_flags(p, duration)
    add_logging(p)
    p.set_defaults(run=run_send)

    p = sub.add_parser("status", help="print the sender's journal")
    p.add_argument("--spool-dir", type=Path, required=True, help=_SPOOL_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    add_logging(p)
    p.set_defaults(run=run_status)

    p = sub.add_parser("verify", help="check every journaled file against the server")
    p.add_argument("--spool-dir", type=Path, required=True, help=_SPOOL_HELP)
    p.add_argument(
        "--server",
        required=True,
        action="append",
        help="the server's URL, e.g. http://127.0.0.1:8000; again for replicas (any answers)",
    )
    _add_connection(p)
    add_logging(p)
    p.set_defaults(run=run_verify)


def _add_connection(p: argparse.ArgumentParser) -> None:
    add_token(p)
    p.add_argument("--ca-file", type=Path, help="trust this CA (PEM) for an https server")


def _check_send_args(args: argparse.Namespace) -> None:
    if args.chunk_size is not None and (args.chunk_size <= 0 or args.chunk_size % (256 * KiB)):
        raise ConfigError("--chunk-size must be a positive multiple of 256KiB")
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    if args.journal_compact_at < 1:
        raise ConfigError("--journal-compact-at must be at least 1 byte")
    if not 0.0 <= args.inject_corruption <= 1.0:
        raise ConfigError("--inject-corruption must be between 0 and 1")
    check_servers(args.server, lambda url: check_protocol(args.protocol, url))
    if not 0 <= args.status_port <= 65535:
        raise ConfigError("--status-port must be 0-65535")
    check_readable(args.paths)
    check_dir("--spool-dir", args.spool_dir, inside=("files",))


def run_send(args: argparse.Namespace) -> int:
    _check_send_args(args)
    generator = None
    if not args.paths and args.watch is None:
        generator = GeneratorConfig(
            count=args.count,
            min_size=args.min_size,
            max_size=args.max_size,
            min_interval=args.min_interval,
            max_interval=args.max_interval,
            max_duration=args.max_duration,
        )
    config = SenderConfig(
        spool_dir=args.spool_dir,
        generator=generator,
        paths=tuple(args.paths),
        concurrency=args.concurrency,
        watch=watch_config(args),
    )
    return asyncio.run(_send(args, config))


def _session(args: argparse.Namespace, concurrency: int) -> aiohttp.ClientSession:
    https = any(url.startswith("https://") for url in args.server)
    context = client_context(args.ca_file) if https else None
    return new_session(token=token_of(args), ssl_context=context, limit=concurrency * 2)


async def _send(args: argparse.Namespace, config: SenderConfig) -> int:
    signals = Signals(config.spool_dir)
    signals.install()  # first, so that no signal finds the default handlers
    with _open_journal(config.spool_dir, args.journal_compact_at) as journal:
        seed = await prepare_journal(journal, args.seed)
        async with _session(args, config.concurrency) as session:
            servers = Servers(tuple(args.server))
            client = client_for(args, session, seed, servers)
            uploader = Uploader(client, args.chunk_size, RetryPolicy(timeout=args.retry_timeout))
            sender = Sender(config, journal, uploader)
            freeze_heap()
            signals.attach(lambda sig: sender.request_stop(Reason.SIGNAL, signal=sig.name))
            runner = await _start_status(sender, args.status_host, args.status_port, servers)
            try:
                ok = await _run_with_signals(sender, _display(args, sender, runner, servers))
            finally:
                await runner.cleanup()
    snap = status.snapshot(sender)
    log.info(Event.SEND_SUMMARY, ok=ok, server=servers.current, switches=servers.switches, **snap)
    print(status.summary_line(sender), flush=True)
    if signals.received is not None:
        return exit_status(signals.received)
    return 0 if ok else 1


def _open_journal(spool: Path, compact_at: int) -> FileJournal:
    try:
        return FileJournal.open(spool, compact_at=compact_at)
    except OSError as exc:
        raise ConfigError(f"--spool-dir {spool}: {exc.strerror}: {exc.filename}") from exc


async def _start_status(sender: Sender, host: str, port: int, servers: Servers) -> web.AppRunner:
    app = status.make_status_app(sender)
    app.router.add_get("/servers", _servers_view(servers))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    url = f"http://{host}:{runner.addresses[0][1]}"
    log.info(
        Event.SENDER_STARTED,
        status_url=url,
        server=servers.current,
        servers=list(servers.urls),
        spool_dir=str(sender.config.spool_dir),
    )
    return runner


def _servers_view(servers: Servers) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /servers`: the current --server, all of them, and how often it changed."""

    async def view(request: web.Request) -> web.Response:
        return web.json_response(servers.describe())

    return view


def _display(
    args: argparse.Namespace, sender: Sender, runner: web.AppRunner, servers: Servers
) -> tuple[progress.Display, str] | None:
    """The progress display and its header, when `transfer.cli.main` chose one."""
    output: progress.Output | None = getattr(args, "output", None)
    if output is None or not output.display:
        return None
    target = None if args.paths or args.watch else args.count
    header = progress.header(args, output.log_file, runner.addresses[0][1])
    return progress.Display(sender, target, lambda: servers.current), header


async def _run_with_signals(sender: Sender, display: tuple[progress.Display, str] | None) -> bool:
    # The signals are `_send`'s (`Signals`): they reach `sender.request_stop`.
    if display is None:
        return await sender.run()
    async with display[0].shown(display[1]):
        return await sender.run()


def run_status(args: argparse.Namespace) -> int:
    view = view_spool(args.spool_dir)  # never creates, locks or changes a spool
    if args.json:  # every file, folded ones too
        for e in view.entries():
            print(json.dumps(_entry_json(e)))
        return 0
    print(f"{'id':<24} {'state':<10} {'size':>10}  name / reason")
    for e in view.live:
        print(f"{e.file_id:<24} {e.state.value:<10} {e.size:>10}  {e.reason or e.name}")
    if view.folded:
        print(f"{view.folded} confirmed files folded into journal.ckpt (--json lists them)")
    counts = {s.value: sum(e.state is s for e in view.live) for s in FileState}
    counts[FileState.CONFIRMED.value] += view.folded
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    from transfer.sender.intake import WATCHED_DIR, watch_summary  # noqa: PLC0415 (inotify)

    if WATCHED_DIR in view.meta:
        print(watch_summary(view.meta, view.entries()))
    return 0


def _entry_json(entry: JournalEntry) -> dict[str, object]:
    return {
        "id": entry.file_id,
        "name": entry.name,
        "path": entry.path,
        "size": entry.size,
        "dtype": entry.dtype,
        "digest": entry.digest,
        "state": entry.state.value,
        "server_digest": entry.server_digest,
        "reason": entry.reason,
        **({"rel": entry.rel, "version": entry.version} if entry.rel is not None else {}),
        **({"upload_url": entry.upload_url} if entry.upload_url is not None else {}),
        **({"verified": entry.verified} if entry.verified is not None else {}),
    }


def run_verify(args: argparse.Namespace) -> int:
    check_servers(args.server, check_server_url)
    entries, _ = read_spool(args.spool_dir)  # never creates, locks or changes a spool
    problems = asyncio.run(_verify(entries, args))
    for line in problems:
        print(line)
    print(
        f"verified {len(entries) - len(problems)}/{len(entries)} files: "
        f"{'OK' if not problems else f'{len(problems)} missing or different'}"
    )
    return 0 if not problems else 1


async def _verify(entries: list[JournalEntry], args: argparse.Namespace) -> list[str]:
    problems: list[str] = []
    async with _session(args, 4) as session:
        servers = Servers(tuple(args.server))  # replicas over one store: any may answer
        clients = [UploadClient(session, url) for url in servers.urls]
        for entry in entries:
            try:
                progress = await ask_any(servers, partial(record_at, clients, upload_id_of(entry)))
            except TransferError as exc:
                problems.append(f"{entry.file_id}: {exc}")
                continue
            if progress.record is None:
                problems.append(
                    f"{entry.file_id}: missing on the server (offset {progress.offset})"
                )
            elif progress.digest != entry.digest:
                problems.append(
                    f"{entry.file_id}: server digest {progress.digest} != {entry.digest}"
                )
    return problems
