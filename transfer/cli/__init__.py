"""The `transfer` command. This package (`transfer.cli` with its `serve` and `send`
modules) is the only place that configures logging, reads flags and calls asyncio.run.

Every bad flag ends in one line on stderr and exit status 2; a run that did not do its
job (a file not confirmed, a verify difference) exits 1.

Imports are lazy, because every process pays them: `main` builds in full only the
parser of the subcommand it was asked for (importing its module: aiohttp, rich, the
sender or the server); the others are one-line stubs from `COMMANDS`, so `transfer
--help` imports neither aiohttp nor structlog nor rich (tests/test_perf_guards.py).
A new subcommand is one `COMMANDS` entry whose registrar imports its module inside.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from transfer import __version__
from transfer.core.errors import ConfigError, TransferError
from transfer.core.units import parse_duration, parse_size

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
    import importlib.metadata  # noqa: PLC0415 (~35 ms: only for --version)

    try:
        return importlib.metadata.version("transfer")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return __version__


class _Version(argparse.Action):
    """`--version`, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        print(f"{parser.prog} {_version()}")  # stdout, as argparse's own action
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _report_parser(sub: Sub) -> None:
    p = sub.add_parser("report", help="summarise a run from its JSON log files")
    p.add_argument("logs", nargs="+", type=Path, help="sender and server log files")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    _add_logging(p)
    p.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from transfer.cli import report  # noqa: PLC0415 (lazy: see the module's docstring)

    try:
        summary = report.summarise(report.read_lines(args.logs))
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    print(json.dumps(summary.to_json()) if args.json else report.render(summary))
    return 0


def _serve(sub: Sub) -> None:
    from transfer.cli import serve  # noqa: PLC0415 (lazy: see the module's docstring)

    serve.add_parser(sub, _size, _duration, _add_logging)


def _send(sub: Sub) -> None:
    from transfer.cli import send  # noqa: PLC0415 (lazy: see the module's docstring)

    send.add_parsers(sub, _size, _duration, _add_logging)


def _hooks(sub: Sub) -> None:
    from transfer.cli import hooks  # noqa: PLC0415 (lazy: see the module's docstring)

    hooks.add_parser(sub, _add_logging)


def _token(sub: Sub) -> None:
    from transfer.cli import token  # noqa: PLC0415 (lazy: see the module's docstring)

    token.add_parser(sub, _add_logging)


# Every subcommand, in help order: its one-line help (what `transfer --help` shows
# without importing its module; tests/test_perf_guards.py checks it matches the full
# parser's) and the registrar adding its full parser. A registrar may add several
# subcommands (send: send, status, verify); they are then listed next to each other.
COMMANDS: dict[str, tuple[str, Callable[[Sub], None]]] = {
    "serve": ("receive uploads (the server)", _serve),
    "send": ("generate (or take) files and upload them", _send),
    "status": ("print the sender's journal", _send),
    "verify": ("check every journaled file against the server", _send),
    "report": ("summarise a run from its JSON log files", _report_parser),
    "token": ("manage named credentials for serve --tokens-file", _token),
    "hooks": ("show the hook events waiting in the outbox", _hooks),
}


def build_parser(full: Container[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `full`, only those subcommands get their real
    parsers (and import their modules), the others are stubs that show their help."""
    parser = _Parser(
        prog="transfer", description="Resumable, integrity-checked file transfer over HTTP."
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub: Sub = parser.add_subparsers(dest="command", required=True)
    wanted = {r for n, (_, r) in COMMANDS.items() if full is None or n in full}
    done: set[Callable[[Sub], None]] = set()
    for name, (text, register) in COMMANDS.items():
        if register not in wanted:
            sub.add_parser(name, help=text)
        elif register not in done:
            register(sub)
            done.add(register)
    for each in (parser, *sub.choices.values()):  # one help format for every subcommand
        each.formatter_class = _HelpFormatter
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the top level takes no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(full={_command_of(argv) or ""}).parse_args(argv)
    # Lazy (see the module's docstring): structlog, rich and the sender come with these.
    from transfer.cli import logs, progress  # noqa: PLC0415
    from transfer.cli.common import check_writable_file, exit_status, token_of  # noqa: PLC0415

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
