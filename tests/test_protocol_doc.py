"""The curl examples of docs/protocol.md, run against a real `transfer serve` child.

What this guarantees, for every ```console block of the page:

- Each `$ ...` line (with its `\\`-continued lines) is run by bash, in document order,
  in a fresh temporary directory; blocks under the same heading form one group that
  shares one shell script, one working directory and one server (fresh data dir), since
  later blocks use the files, shell functions and uploads of earlier ones. One test per
  group, named after its heading.
- The server is started with the flags of the `transfer serve ...` command quoted in the
  group's section (minus `--host`, `--port`, `--data-dir` and redirections); its stderr
  is written to `server.log`, and its URL is exported as `$URL`. The page's example URL
  is replaced by the real one in the documented output.
- HTTP output (curl `-i` / `-I`): every status line matches exactly, `100 Continue`
  included; every documented header is present (names compared case-insensitively) with
  exactly the documented value, except Date, Etag, Last-Modified, Upload-Expires,
  X-Request-Id and Server, whose documented and real values must both have the right
  shape (a regex). Headers the page does not show are tolerated. Bodies match exactly,
  JSON bodies as parsed JSON.
- Any other output (`echo`, `wc`, `curl -s`) matches exactly; a command the page shows
  without output must print nothing. A final newline is not significant: the page cannot
  show whether output ended with one.

Every mismatch of a group is collected and reported at once, each with the block (its
line and lead-in sentence), the command and a unified diff. Deadlines are subprocess
timeouts; nothing sleeps. Without bash, curl or openssl the test skips, except under
`CI=true`, where it fails.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ServerProcess, StartServer
from support import missing_piece

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
DOC_URL = "http://127.0.0.1:37001"  # the URL the page's example output shows
TOOLS = ("bash", "curl", "openssl", "base64", "head", "tail", "wc")
SCRIPT_DEADLINE = 60.0  # seconds for one group's whole script
SEP = "\x1f"  # written around each command's exit status, between command outputs

_HTTP_DATE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"
VARYING: dict[str, re.Pattern[str]] = {
    "date": re.compile(_HTTP_DATE),
    "last-modified": re.compile(_HTTP_DATE),
    "upload-expires": re.compile(_HTTP_DATE),
    "etag": re.compile(r'(W/)?"[0-9a-f]+-[0-9a-f]+"'),  # "<mtime ns hex>-<size hex>"
    "x-request-id": re.compile(r"[!-~]{1,200}"),
    "server": re.compile(r"\S.*"),
}

# About 1.5 s for the whole page: not `slow`.
pytestmark = pytest.mark.timeout(SCRIPT_DEADLINE + 30)


# --- the page ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    text: str  # the shell command, without `$ `
    expected: str  # the documented output, lines joined by "\n"


@dataclass(frozen=True, slots=True)
class Block:
    heading: str
    heading_line: int  # 1-based; 0 when the block precedes every heading
    line: int  # 1-based line of the opening fence
    intro: str  # the first line of the paragraph before the fence
    commands: tuple[Command, ...]

    @property
    def name(self) -> str:
        return f"block at docs/protocol.md:{self.line} ({self.heading}: {self.intro!r})"


Step = tuple[Block, Command]


def _commands(lines: list[str]) -> tuple[Command, ...]:
    """Split a console block into `$ ` commands and the lines each one printed."""
    found: list[tuple[list[str], list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            found.append(([line[2:]], []))
        elif found and not found[-1][1] and found[-1][0][-1].endswith("\\"):
            found[-1][0].append(line)
        elif found:
            found[-1][1].append(line)
    return tuple(Command("\n".join(cmd), "\n".join(out)) for cmd, out in found)


def _console_blocks(text: str) -> list[Block]:
    lines, blocks, heading, prose = text.splitlines(), [], (0, ""), ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = (i + 1, line.lstrip("#").strip())
        elif line.startswith("```"):
            end = lines.index("```", i + 1)
            if line.strip() == "```console":
                commands = _commands(lines[i + 1 : end])
                blocks.append(Block(heading[1], heading[0], i + 1, prose, commands))
            i = end
        elif line.strip() and not lines[i - 1].strip():
            prose = line.strip()  # the first line of a paragraph
        i += 1
    return blocks


def _groups() -> dict[str, list[Block]]:
    """Blocks by heading: the blocks of one section share state, in document order."""
    groups: dict[str, list[Block]] = {}
    for block in _console_blocks(DOC.read_text(encoding="utf-8")):
        groups.setdefault(block.heading, []).append(block)
    return groups


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def _server_flags(block: Block) -> list[str]:
    """Flags of the `transfer serve ...` quoted between `block`'s heading and itself."""
    lines = DOC.read_text(encoding="utf-8").splitlines()[block.heading_line : block.line]
    quoted = re.search(r"`transfer serve ([^`]*)`", "\n".join(lines))
    words = shlex.split(quoted.group(1)) if quoted else []
    flags: list[str] = []
    while words:
        word = words.pop(0)
        if word in ("--host", "--port", "--data-dir"):
            words.pop(0)
        elif not word.startswith(("&", ">", "2>", "<", "|")):
            flags.append(word)
    return flags


# --- running -------------------------------------------------------------------------


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    missing_piece(f"the curl examples need {', '.join(missing)} on PATH")


def _shell_env(workdir: Path, url: str) -> dict[str, str]:
    """The caller's environment minus proxies and curlrc; `python3` is this Python."""
    bin_dir = workdir / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(URL=url, HOME=str(workdir), CURL_HOME=str(workdir), LC_ALL="C")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _script(commands: list[Command]) -> str:
    """One script; each command's exit status is printed between SEP marks after it."""
    steps = [f"{c.text}\nprintf '\\037%s\\037' \"$?\"" for c in commands]
    return "\n".join(["exec </dev/null", *steps, ""])


def _run(script: str, workdir: Path, env: dict[str, str]) -> tuple[str, str]:
    """stdout and stderr of the script; its whole process group dies at the deadline."""
    proc = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-c", script],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SCRIPT_DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[killed after {SCRIPT_DEADLINE} s]".encode()
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _outputs(stdout: str, count: int) -> list[tuple[str, str]]:
    """(output, exit status) per command, also when the script was killed mid-way."""
    parts = stdout.split(SEP)
    pairs = list(zip(parts[0::2], parts[1::2], strict=False))  # the commands that ended
    pairs.append((parts[-1], "none: did not finish"))  # the one that was running, if any
    return (pairs + [("", "none: never ran")] * count)[:count]


# --- comparing -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    statuses: tuple[str, ...]  # every status line, interim (1xx) ones included
    headers: tuple[tuple[str, str], ...]  # the final response's, names lower-cased
    body: str


_HEAD_END = re.compile(r"\r?\n\r?\n|\Z")


def _parse_http(text: str) -> Response:
    statuses: list[str] = []
    headers: list[tuple[str, str]] = []
    rest = text
    while rest.startswith("HTTP/"):
        end = _HEAD_END.search(rest)
        assert end is not None  # \Z always matches
        status, *fields = rest[: end.start()].splitlines()
        statuses.append(status.strip())
        split = [f.partition(":") for f in fields]
        headers = [(name.strip().lower(), value.strip()) for name, _, value in split]
        rest = rest[end.end() :]
    return Response(tuple(statuses), tuple(headers), rest)


def _header_problems(expected: Response, actual: Response) -> list[str]:
    problems = []
    for name, value in expected.headers:
        got = [v for n, v in actual.headers if n == name]
        shape = VARYING.get(name)
        ok = [v for v in got if (shape.fullmatch(v) if shape else v == value)]
        if not ok:
            want = f"shape /{shape.pattern}/" if shape else repr(value)
            problems.append(f"header {name}: expected {want}, got {got or 'nothing'}")
        if shape and not shape.fullmatch(value):
            problems.append(f"header {name}: documented {value!r} lacks shape /{shape.pattern}/")
    return problems


def _same_body(expected: str, actual: str) -> bool:
    expected, actual = expected.removesuffix("\n"), actual.removesuffix("\n")
    if expected.startswith(("{", "[")):
        try:
            return bool(json.loads(expected) == json.loads(actual))
        except json.JSONDecodeError:
            pass
    return expected == actual


def _problems(expected: str, actual: str) -> list[str]:
    """What differs between documented and real output (empty when they match)."""
    if not expected.startswith("HTTP/"):
        same = expected.removesuffix("\n") == actual.removesuffix("\n")
        return [] if same else ["output differs"]
    want, got = _parse_http(expected), _parse_http(actual)
    problems = []
    if want.statuses != got.statuses:
        problems.append(f"status lines: expected {want.statuses}, got {got.statuses}")
    problems += _header_problems(want, got)
    if not _same_body(want.body, got.body):
        problems.append("body differs")
    return problems


def _report(step: Step, actual: str, status: str, url: str) -> str | None:
    """A readable account of one command's mismatch, or None when it matches the page."""
    block, command = step
    expected = command.expected.replace(DOC_URL, url)
    problems = _problems(expected, actual)
    if status != "0":
        problems.append(f"exit status {status}")
    if not problems:
        return None
    diff = difflib.unified_diff(
        expected.splitlines(),
        actual.replace("\r\n", "\n").splitlines(),
        "documented",
        "actual",
        lineterm="",
    )
    lines = [block.name, f"$ {command.text}", *(f"  - {p}" for p in problems), *diff]
    return "\n".join(lines)


# --- the test ------------------------------------------------------------------------

GROUPS = _groups()


def test_page_has_console_examples() -> None:
    assert GROUPS, f"no ```console block in {DOC}"


def _run_group(heading: str, server: ServerProcess, workdir: Path) -> list[str]:
    """Run a group's commands in `workdir`; one report per command that differs."""
    (workdir / "server.log").write_text("".join(server.lines), encoding="utf-8")
    steps = [(block, command) for block in GROUPS[heading] for command in block.commands]
    script = _script([command for _, command in steps])
    stdout, stderr = _run(script, workdir, _shell_env(workdir, server.url))
    outputs = _outputs(stdout, len(steps))
    reports = [_report(s, out, rc, server.url) for s, (out, rc) in zip(steps, outputs, strict=True)]
    failures = [r for r in reports if r is not None]
    if failures:
        failures.insert(0, f"{len(failures)} of {len(steps)} commands differ from the page")
        failures += [f"stderr of the shell:\n{stderr}"] if stderr else []
        failures += _server_errors(server)
    return failures


def _server_errors(server: ServerProcess) -> list[str]:
    """The first error the server has logged so far (the traceback of a 500), if any."""
    errors = [e for e in server.events() if e.get("level") == "error"]
    if not errors:
        return []
    first = errors[0]
    detail = first.get("exception", json.dumps(first))
    return [f"the server logged {len(errors)} error(s); the first, {first['event']}:\n{detail}"]


@pytest.mark.parametrize("heading", list(GROUPS), ids=[_slug(h) for h in GROUPS])
def test_console_examples(heading: str, serve_process: StartServer, tmp_path: Path) -> None:
    _require_tools()
    server = serve_process(tmp_path / "data", extra=_server_flags(GROUPS[heading][0]))
    workdir = tmp_path / "work"
    workdir.mkdir()
    failures = _run_group(heading, server, workdir)
    if failures:
        pytest.fail(f"{heading}:\n\n" + "\n\n".join(failures), pytrace=False)
