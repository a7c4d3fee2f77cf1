"""Guards of performance work that a test can hold without timing anything (issue 13):
`transfer --help` stays cheap because it imports no heavy module, and the lazy top-level
help says what the full parsers say."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import aiohttp
import aiohttp.http_writer
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from transfer.cli import COMMANDS, build_parser
from transfer.common.http import PIECE, Piecewise

HEAVY = ("aiohttp", "structlog", "rich", "xxhash", "tenacity", "transfer.sender", "transfer.server")
PROBE = (
    "import json, sys\n"
    "from transfer.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
)


def imported_by(*argv: str) -> set[str]:
    """The modules a real `transfer ARGV...` process has loaded when it exits."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    modules: list[str] = json.loads(done.stderr.splitlines()[-1])
    return set(modules)


@pytest.mark.parametrize("argv", [("--help",), ("--version",), ("bogus",)])
def test_top_level_help_imports_no_heavy_module(argv: tuple[str, ...]) -> None:
    loaded = imported_by(*argv)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert not heavy, f"transfer {' '.join(argv)} imported {heavy}"


def test_a_subcommand_still_imports_what_it_runs() -> None:
    # The guard above must not pass because nothing is ever imported.
    assert "aiohttp" in imported_by("send", "--help")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, str]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {action.dest: action.help or "" for action in found[0]._choices_actions}


def test_the_stubs_show_the_full_parsers_help() -> None:
    full = _subcommands(build_parser())
    lazy = _subcommands(build_parser(full=()))
    assert lazy == full
    assert list(full) == list(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_one_full_subcommand_builds_beside_the_stubs(name: str) -> None:
    lazy, full = _choices(build_parser(full={name})), _choices(build_parser())
    assert list(lazy) == list(COMMANDS)
    assert lazy[name].format_help() == full[name].format_help()


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    choices: dict[str, argparse.ArgumentParser] = found[0].choices
    return choices


# --- Piecewise: a bytes body handed to the transport a piece at a time ------------------


@pytest.mark.parametrize("size", [0, 1, PIECE - 1, PIECE, 3 * PIECE + 17])
async def test_a_piecewise_body_arrives_whole_with_its_length(
    aiohttp_client: AiohttpClient, size: int
) -> None:
    seen: dict[str, object] = {}

    async def put(request: web.Request) -> web.Response:
        seen.update(body=await request.read(), length=request.content_length,
                    chunked="chunked" in request.headers.get("Transfer-Encoding", ""))  # fmt: skip
        return web.Response(status=204)

    app = web.Application(client_max_size=4 * PIECE)
    app.router.add_put("/sink", put)
    client = await aiohttp_client(app)
    data = os.urandom(size)
    async with client.put("/sink", data=Piecewise(data)) as response:
        assert response.status == 204
    assert seen == {"body": data, "length": size, "chunked": False}


async def test_a_piecewise_body_never_reaches_the_transport_whole(
    aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The point of it: no single write of the whole body (no joined copy, no transport
    # buffer of the whole). Every write the client's writer makes is recorded.
    sizes: list[int] = []
    writer = aiohttp.http_writer.StreamWriter
    write, writelines = writer._write, writer._writelines

    def record(self: aiohttp.http_writer.StreamWriter, chunk: bytes) -> None:
        sizes.append(len(chunk))
        write(self, chunk)

    def record_lines(self: aiohttp.http_writer.StreamWriter, chunks: list[bytes]) -> None:
        sizes.append(sum(len(c) for c in chunks))  # joined into one write on Python 3.11
        writelines(self, chunks)

    monkeypatch.setattr(writer, "_write", record)
    monkeypatch.setattr(writer, "_writelines", record_lines)
    monkeypatch.setattr(aiohttp.http_writer, "SKIP_WRITELINES", True)  # as on Python 3.11

    async def put(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application(client_max_size=8 * PIECE)
    app.router.add_put("/sink", put)
    client = await aiohttp_client(app)
    async with client.put("/sink", data=Piecewise(bytes(4 * PIECE))) as response:
        assert response.status == 204
    assert sum(s for s in sizes if s >= PIECE) >= 4 * PIECE
    assert max(sizes) < 2 * PIECE
