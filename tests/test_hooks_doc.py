"""docs/operations.md's receiver example, run as the real receiver of a real server.

The Python block under "### A receiver" is written to a file and started as a process:
events signed with its secret are printed once each; a server with another secret is
refused (401) and keeps retrying.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from test_hooks import FAST, SECRET, T, upload

from transfer.core.events import Event
from transfer.testing.harness import Harness
from transfer.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def receiver_example() -> str:
    section = DOC.read_text().split("### A receiver", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under '### A receiver'"
    return match.group(1)


def test_the_example_is_twenty_odd_lines() -> None:
    assert len(receiver_example().strip().splitlines()) <= 24


def test_the_documented_receiver_verifies_and_prints_events(tmp_path: Path) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(receiver_example())
    env = {**os.environ, "TRANSFER_HOOK_SECRET": SECRET}
    with Harness(tmp_path, env=env) as harness:
        out = tmp_path / "receiver.out"
        harness.spawn([sys.executable, str(script), "0"], out=out, err=tmp_path / "receiver.err")
        port = wait_until(
            lambda: re.search(r"listening on (\d+)", out.read_text() if out.exists() else ""),
            "the receiver's port",
            deadline=T,
        ).group(1)
        url = f"http://127.0.0.1:{port}/"
        server = harness.serve(tmp_path / "d", extra=[*FAST, "--hook-url", url])
        assert upload(server.url, "doc1", b"hello") == 200

        def printed() -> list[str]:
            return out.read_text().splitlines()

        wait_until(lambda: len(printed()) == 3, "created and completed printed", deadline=T)
        assert printed()[1].startswith("dev.transfer.upload.created doc1 ")
        assert printed()[2].startswith("dev.transfer.upload.completed doc1 ")
        assert '"size": 5' in printed()[2]
        harness.env = {**env, "TRANSFER_HOOK_SECRET": "not-the-receivers-secret"}
        forged = harness.serve(tmp_path / "d2", extra=[*FAST, "--hook-url", url], name="forged")
        assert upload(forged.url, "doc2", b"x") == 200
        wait_until(lambda: forged.named(Event.HOOK_RETRY), "refused, retried", deadline=T)
        assert "HTTP 401" in forged.named(Event.HOOK_RETRY)[0]["error"]
        assert len(printed()) == 3
