"""The `transfer` command. This package (`transfer.cli` with its `serve` and `send`
modules) is the only place that configures logging, reads flags and calls asyncio.run.

Every bad flag ends in one line on stderr and exit status 2; a run that did not do its
job (a file not confirmed, a verify difference) exits 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import structlog

from transfer import __version__
from transfer.cli import logs, progress, report, send, serve
from transfer.cli.common import check_writable_file, exit_status, token_of
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
    # --log-format has no default here: `progress.choose_output` tells "json" by default
    # from "json" asked for (which keeps the lines on a terminal the display owns).
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="json lines, or console for people (default: json)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        help="append logs here (default: stderr; `send` on a terminal: SPOOL/sender.log)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning"), help="least level"
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless there is none to show (None,
    a store_true's False) or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or "%(default)" in text or "(default: " in text:
            return text
        if default is None or default is False or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    try:
        return importlib.metadata.version("transfer")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return __version__


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="transfer", description="Resumable, integrity-checked file transfer over HTTP."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub: Sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub, _size, _duration, _add_logging)
    send.add_parsers(sub, _size, _duration, _add_logging)
    _report_parser(sub)
    for each in (parser, *sub.choices.values()):  # one help format for every subcommand
        each.formatter_class = _HelpFormatter
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
    args.output = progress.choose_output(args, isatty=sys.stderr.isatty)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if args.output.log_file is not None:
            check_writable_file("--log-file", args.output.log_file)
        logs.configure(
            args.output.log_format,
            log_file=args.output.log_file,
            level=args.log_level,
            secrets=[token or ""],
        )
        return run(args)
    except TransferError as exc:
        print(f"transfer {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except OSError as exc:
        # What no check could foresee (a disk filling up, a file changed underfoot): one
        # line naming the path, never a traceback. The journal is durable as it stands.
        print(f"transfer {args.command}: {_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before `send` took SIGINT over, or in another command
        print(f"transfer {args.command}: interrupted", file=sys.stderr)
        return exit_status(signal.SIGINT)


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{exc.strerror or exc}"
