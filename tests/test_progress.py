"""What a person sees: `transfer send` on a real pseudo-terminal against a real server.

On a terminal the progress display owns it (no JSON there; the JSON goes to
SPOOL/sender.log, whose path is printed), an unreachable server is one human line, and
the summary speaks one unit family. Off a terminal (pipes) stderr stays JSON lines. The
pure parts (`choose_output`, `human_line`, `clock_text`) are checked directly.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from transfer.cli.progress import LOG_NAME, choose_output, clock_text, human_line
from transfer.core.events import Event
from transfer.testing.harness import Harness, free_port, run_transfer, transfer_command

FAST = ("--count", "5", "--min-size", "1KiB", "--max-size", "4KiB", "--max-interval", "10ms")
DEADLINE = 60.0


def run_on_terminal(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a new 120x40 pseudo-terminal; its exit
    status and everything it wrote there. Reads until the child closes the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    end = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], end - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: the child side is closed
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        status = proc.wait(timeout=max(end - time.monotonic(), 1.0))
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


def plain(screen: str) -> str:
    """The terminal text without colours, each redraw and cursor move a line break."""
    uncoloured = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    return re.sub(r"(?:\x1b\[[0-9;?]*[A-Za-z]|\r)+", "\n", uncoloured)


def json_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_on_a_terminal_the_display_owns_it_and_json_goes_to_the_spool(tmp_path: Path) -> None:
    with Harness(tmp_path) as harness:
        server = harness.serve(tmp_path / "data")
        spool = tmp_path / "spool"
        argv = transfer_command("send", "--server", server.url, "--spool-dir", str(spool), *FAST)
        status, screen = run_on_terminal(argv, tmp_path)
    text = plain(screen)
    assert status == 0, text
    log_file = spool / LOG_NAME
    assert f"logs: {log_file}" in text
    bars = [ln for ln in text.splitlines() if re.match(r"sending ━+ \d/5 files ", ln)]
    assert bars and "5/5 files" in bars[-1]  # the display's last state stays on screen
    assert '{"' not in text, "a JSON log line reached the terminal"
    assert re.search(r"5/5 files confirmed, 0 failed; [0-9.]+ KiB sent .* MiB/s\)", text)
    assert " MB/s" not in text
    events = [line["event"] for line in json_lines(log_file)]
    assert Event.SENDER_STARTED in events and Event.SEND_SUMMARY in events


@pytest.mark.slow
def test_an_unreachable_server_is_one_human_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    argv = transfer_command(
        "send", "--server", url, "--spool-dir", str(tmp_path / "spool"), "--count", "2",
        "--max-interval", "1ms", "--retry-timeout", "2s",
    )  # fmt: skip
    status, screen = run_on_terminal(argv, tmp_path)
    text = plain(screen)
    assert status == 1, text
    lines = [ln for ln in text.splitlines() if ln.startswith("server unreachable at ")]
    assert len(lines) == 1, text  # once per outage, not once per retry or per file
    assert re.fullmatch(
        rf"server unreachable at {re.escape(url)}, retrying for up to [0-2]s: .*\S", lines[0]
    )
    assert '{"' not in text
    log = json_lines(tmp_path / "spool" / LOG_NAME)
    assert [e["event"] for e in log].count(Event.SERVER_UNREACHABLE) == 1


@pytest.mark.slow
def test_off_a_terminal_stderr_stays_json(tmp_path: Path) -> None:
    with Harness(tmp_path) as harness:
        server = harness.serve(tmp_path / "data")
        spool = tmp_path / "spool"
        done = run_transfer("send", "--server", server.url, "--spool-dir", str(spool), *FAST)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert {Event.SENDER_STARTED, Event.SEND_SUMMARY} <= {line["event"] for line in lines}
    assert not (spool / LOG_NAME).exists()
    assert done.stdout.startswith("5/5 files confirmed") and "MiB/s" in done.stdout


def _args(**given: object) -> argparse.Namespace:
    flags = {"log_format": None, "log_file": None, "progress": "auto", "spool_dir": "sp"}
    return argparse.Namespace(**{**flags, **given})


def test_choose_output_follows_the_rules() -> None:
    on, off = (lambda: True), (lambda: False)
    chosen = choose_output(_args(), isatty=on)
    assert chosen.display and chosen.chosen and chosen.log_format == "json"
    assert chosen.log_file == Path("sp").absolute() / LOG_NAME
    assert choose_output(_args(), isatty=off) == choose_output(_args(progress="never"), isatty=on)
    assert not choose_output(_args(), isatty=off).display
    assert choose_output(_args(), isatty=off).log_file is None
    given = choose_output(_args(log_file=Path("x.log")), isatty=on)
    assert given.display and given.log_file == Path("x.log") and not given.chosen
    console = choose_output(_args(log_format="console"), isatty=on)
    assert console.display and console.log_file is None and console.log_format == "console"
    assert choose_output(_args(progress="always"), isatty=off).display
    serve = argparse.Namespace(log_format=None, log_file=None)  # no --progress at all
    assert not choose_output(serve, isatty=on).display


def test_human_lines() -> None:
    unreachable = {"event": Event.SERVER_UNREACHABLE, "retry_for": 298.4, "reason": "refused"}
    assert human_line(unreachable, "http://h:1") == (
        "server unreachable at http://h:1, retrying for up to 4m58s: refused"
    )
    assert human_line({"event": Event.SERVER_REACHABLE}, "http://h:1") == (
        "server reachable again at http://h:1"
    )
    failed = {"event": Event.UPLOAD_FAILED, "file_id": "f1", "reason": "413 too_large: x"}
    assert human_line(failed, "u") == "f1 failed: 413 too_large: x"
    assert human_line({"event": Event.CHUNK_SENT}, "u") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (45, "45s"), (60, "1m0s"), (298.4, "4m58s"), (3725, "1h2m5s")],
)
def test_clock_text(seconds: float, text: str) -> None:
    assert clock_text(seconds) == text
