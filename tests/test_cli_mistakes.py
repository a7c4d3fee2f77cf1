"""Every user mistake of the first ten minutes is one line on stderr, a non-zero exit,
no traceback, and nothing created or changed.

Each row of `MISTAKES` runs `python -m transfer ...` as a real child process against a
real directory tree: a read-only directory, a file where a directory should be, an
unreadable file, a spool another sender holds, a typo'd spool for `status`/`verify`, a
URL with a path. The tree is snapshotted (every path, type, mode, size and mtime) before
and after, so a command that "only" made a directory fails the test.

Read-only is real only for an unprivileged user: as root the children drop to `nobody`
(uid 65534) first, once the CLI is loaded. Where that is impossible the test skips, and
fails with CI=true.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import missing_piece

from transfer.sender.journal import FileJournal
from transfer.testing.harness import HOST, Harness, free_port, run_transfer

NOBODY = 65534
# As root: load the whole CLI, drop to nobody, then run the same `main` as `python -m
# transfer`. Loading comes first because this interpreter's own files may live where
# nobody cannot read them (a pyenv under /root); a late import would fail loudly. The CLI
# imports a subcommand's modules lazily (transfer.cli), so every parser is built here
# first; `locale` is what argparse's messages import when they are first needed.
DROP = (
    "import os, sys, locale; from transfer.cli import build_parser, logs, main, report; "
    "build_parser(); "
    "os.setgroups([]); os.setgid({uid}); os.setuid({uid}); sys.exit(main(sys.argv[1:]))"
)
TIMEOUT = 30.0


@dataclass(frozen=True)
class Mistake:
    args: tuple[str, ...]  # {B} is the tree's root, {URL} a server nobody listens on
    named: tuple[str, ...]  # what the one line must name (flags, paths, a hint)
    status: int = 2


MISTAKES = {
    "send: spool in a read-only dir": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/ro/spool"), ("--spool-dir", "{B}/ro")
    ),
    "send: spool is a read-only dir": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/ro"), ("--spool-dir", "not writable")
    ),
    "send: spool's parent missing under a read-only dir": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/ro/gone/spool"), ("--spool-dir",)
    ),
    "send: a file where the spool should be": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/file"), ("--spool-dir", "directory")
    ),
    "send: a file where the spool's parent should be": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/file/spool"), ("{B}/file", "directory")
    ),
    "send: a spool another sender holds": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/busy"), ("{B}/busy",), status=1
    ),
    "send: an unreadable PATH": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/w/spool", "{B}/secret"),
        ("{B}/secret", "Permission denied"),
    ),
    "send: a missing PATH": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/w/spool", "{B}/w/nothing"),
        ("{B}/w/nothing",),
    ),
    "send: --server with the uploads path": Mistake(
        ("send", "--server", "{URL}/uploads", "--spool-dir", "{B}/w/spool"),
        ("--server", "base URL", "try --server {URL}"),
    ),
    "send: --log-file in a read-only dir": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/w/spool", "--log-file", "{B}/ro/s.log"),
        ("--log-file", "{B}/ro"),
    ),
    "send: --log-file in a missing dir under a read-only one": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/w/spool", "--log-file", "{B}/ro/l/s.log"),
        ("--log-file", "{B}/ro"),
    ),
    "send: --log-file is a directory": Mistake(
        ("send", "--server", "{URL}", "--spool-dir", "{B}/w/spool", "--log-file", "{B}/w"),
        ("--log-file", "directory"),
    ),
    "status: a typo'd spool": Mistake(
        ("status", "--spool-dir", "{B}/w/typo"), ("--spool-dir", "{B}/w/typo", "does not exist")
    ),
    "status: a spool that cannot exist": Mistake(
        ("status", "--spool-dir", "{B}/ro/typo"), ("--spool-dir", "{B}/ro/typo")
    ),
    "status: a file where the spool should be": Mistake(
        ("status", "--spool-dir", "{B}/file"), ("--spool-dir", "not a directory")
    ),
    "status: a directory with no journal": Mistake(
        ("status", "--spool-dir", "{B}/w"), ("--spool-dir", "journal")
    ),
    "verify: a typo'd spool": Mistake(
        ("verify", "--server", "{URL}", "--spool-dir", "{B}/w/typo"), ("--spool-dir", "{B}/w/typo")
    ),
    "verify: --server with a files path": Mistake(
        ("verify", "--server", "{URL}/files/x", "--spool-dir", "{B}/w"), ("try --server {URL}",)
    ),
    "serve: a read-only data dir": Mistake(
        ("serve", "--port", "0", "--data-dir", "{B}/ro"), ("--data-dir", "not writable")
    ),
    "serve: a data dir that cannot be made": Mistake(
        ("serve", "--port", "0", "--data-dir", "{B}/ro/data"), ("--data-dir", "{B}/ro")
    ),
    "serve: a file where the data dir should be": Mistake(
        ("serve", "--port", "0", "--data-dir", "{B}/file"), ("--data-dir", "not a directory")
    ),
    "serve: --log-file in a read-only dir": Mistake(
        ("serve", "--port", "0", "--data-dir", "{B}/w/data", "--log-file", "{B}/ro/s.log"),
        ("--log-file", "{B}/ro"),
    ),
}


# --- the tree and its snapshot -------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[Path]:
    """ro/ (read-only), w/ (writable by all), file, secret (unreadable), busy/ (a spool
    whose lock this test holds). Under /tmp, not pytest's 0700 dir, so nobody reaches it."""
    base = Path(tempfile.mkdtemp(prefix="transfer-mistakes-"))
    base.chmod(0o755)
    try:
        (base / "ro").mkdir(mode=0o555)
        (base / "ro").chmod(0o555)
        (base / "w").mkdir()
        (base / "w").chmod(0o777)
        (base / "file").write_bytes(b"in the way\n")
        (base / "secret").write_bytes(b"not yours\n")
        (base / "secret").chmod(0o000)
        with FileJournal.open(base / "busy"):
            _open_to_all(base / "busy")
            yield base
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


def _open_to_all(spool: Path) -> None:
    """So that only the lock (not the modes) can stop a child running as nobody."""
    spool.chmod(0o777)
    for path in spool.iterdir():
        path.chmod(0o666)


def snapshot(base: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `base`: its mode (type included), size and mtime."""
    found = {}
    for path in [base, *base.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(base))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


# --- running a child, as nobody when we are root ---------------------------------------


def command(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return [sys.executable, "-m", "transfer", *args]
    return [sys.executable, "-c", DROP.format(uid=NOBODY), *args]


Run = Callable[[list[str]], tuple[int, str]]


def runner(launch: Harness, workdir: Path) -> Run:
    """Runs `transfer ARGS` through the one harness: (exit status, stderr)."""

    def go(args: list[str]) -> tuple[int, str]:
        err = workdir / f"mistake{len(launch.children)}.err"
        child = launch.spawn(command(args), err=err, out=workdir / f"{err.stem}.out")
        status = child.proc.wait(TIMEOUT)
        return status, err.read_text()

    return go


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Once per module: can a child run transfer as this test wants it to?"""
    workdir = tmp_path_factory.mktemp("probe")
    with Harness(workdir) as launch:
        status, err = runner(launch, workdir)(["--help"])
    if status == 0:
        return
    missing_piece(f"cannot run transfer as an unprivileged user here: {err.strip()[-300:]}")


@pytest.fixture
def run(tmp_path: Path, unprivileged: None) -> Iterator[Run]:
    with Harness(tmp_path) as launch:
        yield runner(launch, tmp_path)


# --- the test ------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_a_mistake_is_one_line_a_non_zero_exit_and_no_change(
    case: str, tree: Path, run: Run
) -> None:
    mistake = MISTAKES[case]
    url = f"http://{HOST}:{free_port()}"

    def fill(text: str) -> str:
        return text.replace("{B}", str(tree)).replace("{URL}", url)

    before = snapshot(tree)

    status, err = run([fill(a) for a in mistake.args])

    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"transfer {mistake.args[0]}: "), lines[0]
    for name in mistake.named:
        assert fill(name) in lines[0], (name, lines[0])
    assert "Traceback" not in err
    assert status == mistake.status, err
    assert snapshot(tree) == before


@pytest.mark.slow
def test_a_256_mib_file_is_no_mistake_any_more(tmp_path: Path) -> None:
    # It used to die in the generator (OverflowError); now only the server is missing.
    # --retry-timeout 0s: the one file fails at once instead of waiting out the server.
    with Harness(tmp_path) as launch:
        args = ["--count", "1", "--min-size", "256MiB", "--max-size", "256MiB"]
        server = f"http://{HOST}:{free_port()}"
        sender = launch.send(server, tmp_path / "spool", *args, "--retry-timeout", "0s")
        status = sender.finish(TIMEOUT)
    assert status == 1, sender.report()
    assert "Traceback" not in sender.err.read_text()
    [spooled] = (tmp_path / "spool" / "files").iterdir()
    assert spooled.stat().st_size == 256 * 1024 * 1024


def test_status_reads_a_spool_without_changing_it(tmp_path: Path) -> None:
    # The read side of the rule: a real spool is read, while its sender holds the lock.
    with Harness(tmp_path) as launch:
        spool = tmp_path / "spool"
        done = launch.send(f"http://{HOST}:{free_port()}", spool, "--count", "0")
        assert done.finish(TIMEOUT) == 0, done.report()
        before = snapshot(spool)
        with FileJournal.open(spool):  # as a running sender would
            result = run_transfer("status", "--spool-dir", str(spool), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 generated, 0 confirmed, 0 failed"
    assert snapshot(spool) == before
