"""Help that answers: every flag of every subcommand explains itself and shows its
default, `--version` works, and `python -m transfer` under a Python without the
project's dependencies is one clear line, not a traceback."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from transfer.cli import build_parser
from transfer.testing.harness import run_transfer

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(found) == 1
    choices: dict[str, argparse.ArgumentParser] = found[0].choices
    return {"": parser, **choices}


def option_texts(help_text: str) -> dict[str, str]:
    """Each option's whole entry in a help screen (first option string -> its text,
    wrapped lines joined)."""
    entries: dict[str, str] = {}
    current = ""
    for line in help_text.splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = ""
    return {k: " ".join(v.split()) for k, v in entries.items()}


def shown_default(action: argparse.Action) -> str | None:
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS:
        return None
    return str(default)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_flag_has_help_and_shows_its_default(name: str) -> None:
    parser = subcommands()[name]
    entries = option_texts(parser.format_help())
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        flag = action.option_strings[0]
        assert action.help and action.help.strip(), f"transfer {name} {flag} has no help"
        default = shown_default(action)
        if default is not None and action.help is not argparse.SUPPRESS:
            assert f"(default: {default})" in entries[flag], (name, flag, entries[flag])


def test_report_and_serve_and_send_are_all_there() -> None:
    assert {"serve", "send", "status", "verify", "report"} <= set(subcommands())


def test_send_help_shows_real_defaults_in_a_real_process() -> None:
    done = run_transfer("send", "--help")
    assert done.returncode == 0, done.stderr
    entries = option_texts(done.stdout)
    assert entries["--count"].endswith("(default: 100)")
    assert "(default: 300s)" in entries["--retry-timeout"]
    assert "(default: 1KiB)" in entries["--min-size"]


def test_version() -> None:
    done = run_transfer("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"transfer {importlib.metadata.version('transfer')}\n"
    import transfer

    assert importlib.metadata.version("transfer") == transfer.__version__


@pytest.mark.slow
def test_a_python_without_the_dependencies_gets_one_line(tmp_path: Path) -> None:
    # A fresh venv without pip or packages: what `python3 -m transfer` in a clone with
    # the system Python meets. The package itself is found on the cwd (the clone).
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(bare)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [str(bare / "bin" / "python"), "-m", "transfer", "send", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("transfer is not installed for this Python (")
    assert "source .venv/bin/activate" in lines[0]
    assert sys.executable not in lines[0]  # it names the Python that was used


def test_the_readme_says_how_transfer_gets_on_path() -> None:
    readme = (ROOT / "README.md").read_text()
    using = readme.split("## Using it", 1)[1]
    assert "source .venv/bin/activate" in using
    assert "pipx install ." in using
    assert "python -m transfer" in using


def test_the_license_is_an_spdx_string() -> None:
    # A `license = { text = ... }` table makes setuptools warn on every install.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


@pytest.mark.slow
def test_the_demo_banner_states_the_real_parameters_and_locations(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's mktemp work dir goes here
    args = ("--count", "3", "--max-size", "8KiB", "--max-interval", "20ms", "--progress", "never")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "sender: 3 files of int16 samples, 1.0 KiB to 8.0 KiB, one every 1ms to 20ms" in out
    assert "100 files" not in out and "about 50 s" not in out
    spool = re.search(r"^  spool: (\S+)$", out, re.MULTILINE)
    files = re.search(r"^  files: (\S+)", out, re.MULTILINE)
    logs = re.findall(r"^  log:   (\S+)$", out, re.MULTILINE)
    assert spool and files and len(logs) == 2, out
    assert Path(spool[1]).is_relative_to(tmp_path)
    assert (Path(spool[1]) / "journal.log").is_file()
    assert len(list(Path(files[1]).iterdir())) == 3
    assert all(Path(log).stat().st_size > 0 for log in logs)
    assert "verified 3/3 files: OK" in out
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr
