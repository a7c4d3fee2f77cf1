"""The `transfer` command. This package (`transfer.cli` with its `serve` and `send`
modules) is the only place that configures logging, reads flags and calls asyncio.run.

Every bad flag ends in one line on stderr and exit status 2; a run that did not do its
job (a file not confirmed, a verify difference) exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import structlog

from transfer.cli import logs, report, send, serve
from transfer.cli.common import token_of
from transfer.core.errors import ConfigError, TransferError
from transfer.core.units import parse_duration, parse_size

log = structlog.get_logger("transfer.cli")
# Any: the subparsers are the CLI's own ArgumentParser subclass.
Sub: TypeAlias = "argparse._SubParsersAction[Any]"


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="transfer", description="Resumable, integrity-checked file transfer over HTTP."
    )
    sub: Sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub, _size, _duration, _add_logging)
    send.add_parsers(sub, _size, _duration, _add_logging)
    _report_parser(sub)
    return parser


def _report_parser(sub: Sub) -> None:
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
    token = token_of(args)
    logs.configure(
        args.log_format, log_file=args.log_file, level=args.log_level, secrets=[token or ""]
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except TransferError as exc:
        print(f"transfer {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
