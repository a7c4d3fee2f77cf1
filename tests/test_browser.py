"""A real browser uploads to `transfer serve` from another origin, and resumes after a reload.

Debian's Chromium (`/usr/bin/chromium`, headless "new") is driven by playwright-core
(tests/browser/driver.mjs). The page (tests/browser/page/) is served by a tiny static
server on its own loopback origin (127.0.0.2 and a port of its own), so every request
to the server at 127.0.0.1 is cross-origin: the browser preflights it and enforces the
answer's CORS headers, exactly as for Uppy or tus-js-client on a real site. The page
uploads bytes it generates itself (xorshift32, regenerated here by `page_bytes`) with
tus-js-client's browser bundle and its default localStorage URL storage.

- Reload between chunks: the page holds its 4th PATCH (a gate, not a timer) once 3 are
  acknowledged; the driver polls `HEAD /uploads/{id}` until the server holds them, then
  reloads. The second page load must find the upload in localStorage and resume it.
- Reload mid-request (`--cors-origin '*'`): Chromium's own network throttling (CDP)
  slows every PATCH; once one is acknowledged and the next is on the wire, the reload
  cuts it. The server keeps what arrived of it (usually nothing: the throttle releases
  a body late); the page resumes from the server's offset.
- A page on an origin that `--cors-origin` does not name is refused: the preflight is
  403 and the browser blocks the upload before a byte is sent.

The published file must equal the page's bytes, and the server's log must show one
creation and no byte stored twice. Chromium, node and tests/browser/node_modules come
from `scripts/test.sh`; when one is missing these tests skip, except under `CI=true`,
where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import StartServer
from support import missing_piece

from transfer.core.events import Event
from transfer.testing.children import ServerProcess
from transfer.testing.harness import free_port
from transfer.testing.logs import LogLine

BROWSER = Path(__file__).parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")
PAGE_HOST = "127.0.0.2"  # the page's origin: another loopback address than the server's
DEADLINE_MS = 30_000  # for each wait inside the driver
DRIVER_TIMEOUT = 90.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

Report = dict[str, Any]


def page_bytes(size: int, seed: int) -> bytes:
    """The page's bytes (tests/browser/page/page.js): xorshift32, little-endian words."""
    x = seed & 0xFFFFFFFF or 1
    words = []
    for _ in range(-(-size // 4)):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        words.append(x)
    return struct.pack(f"<{len(words)}I", *words)[:size]


@pytest.fixture
def node() -> str:
    """node, with Chromium and the driver's npm packages; else skip (fail under CI=true)."""
    node = shutil.which("node")
    missing = [] if node else ["node"]
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (as root: apt-get install -y chromium)")
    packages = ("playwright-core", "tus-js-client")
    if not all((BROWSER / "node_modules" / p / "package.json").exists() for p in packages):
        missing.append("tests/browser/node_modules (npm ci --prefix tests/browser)")
    if missing:
        missing_piece(f"the browser tests need {', '.join(missing)}")
    assert node is not None
    return node


def drive(node: str, server: ServerProcess, page_port: int, **config: Any) -> Report:
    """Run tests/browser/driver.mjs; its JSON report (the test fails if it failed)."""
    config = {
        "pageHost": PAGE_HOST,
        "pagePort": page_port,
        "endpoint": f"{server.url}/tus/",
        "serverUrl": server.url,
        "chromium": str(CHROMIUM),
        "deadlineMs": DEADLINE_MS,
        **config,
    }
    done = subprocess.run(
        [node, str(BROWSER / "driver.mjs"), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        check=False,
        env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
    )
    context = f"driver stdout: {done.stdout}\nstderr: {done.stderr[-3000:]}\n{server.report()}"
    assert done.returncode == 0, context
    report: Report = json.loads(done.stdout)
    return report


def requests_for(server: ServerProcess, upload_id: str, method: str) -> list[LogLine]:
    return [
        line
        for line in server.named(Event.REQUEST)
        if line["method"] == method and line.get("upload_id") == upload_id
    ]


def check_published(server: ServerProcess, report: Report, data: bytes) -> str:
    """The page's bytes (on both loads) are the published file; the upload's id."""
    first, second = report["loads"]
    expected = hashlib.sha256(data).hexdigest()
    assert first["sha256"] == second["sha256"] == expected  # the page made `data`, twice
    assert second["phase"] == "done", second
    upload_id = str(second["url"]).rstrip("/").rsplit("/", 1)[1]
    answer = requests.get(f"{server.url}/files/{upload_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.content == data
    assert report["finalOffset"] == len(data)  # HEAD /uploads/{id} after the page's success
    return upload_id


def check_resumed(server: ServerProcess, report: Report, upload_id: str) -> None:
    """The second load resumed the first's upload: one creation, first PATCH not at 0."""
    first, second = report["loads"]
    assert first["resumedFrom"] is None
    assert second["resumedFrom"] == first["url"]  # found in localStorage after the reload
    assert second["patchOffsets"][0] >= report["reloadedAt"] > 0
    created = [e for e in server.named(Event.UPLOAD_CREATED) if e["upload_id"] == upload_id]
    assert len(created) == 1
    assert len(server.named(Event.UPLOAD_CREATED)) == 1  # no second upload under a new id


def test_a_page_on_another_origin_uploads_and_resumes_after_a_reload(
    node: str, serve_process: StartServer, tmp_path: Path
) -> None:
    page_port = free_port(PAGE_HOST)
    origin = f"http://{PAGE_HOST}:{page_port}"
    server = serve_process(tmp_path / "data", extra=["--cors-origin", origin])
    size, chunk = 1_000_003, 65_536
    report = drive(node, server, page_port, mode="resume", size=size, seed=7, chunk=chunk, hold=3)
    upload_id = check_published(server, report, data := page_bytes(size, 7))
    check_resumed(server, report, upload_id)
    assert report["reloadedAt"] == 3 * chunk  # the gate: exactly 3 chunks before the reload
    assert report["loads"][1]["patchOffsets"][0] == 3 * chunk
    stored = [e["bytes"] for e in requests_for(server, upload_id, "PATCH") if e["status"] == 204]
    assert sum(stored) == len(data)  # every byte sent once: nothing re-sent from 0
    assert not report["console"], report["console"]  # no CORS complaint on the way
    preflights = [e["status"] for e in server.named(Event.REQUEST) if e["method"] == "OPTIONS"]
    assert preflights and set(preflights) == {204}  # the browser asked; the server allowed


def test_a_reload_that_cuts_a_patch_short_resumes_from_the_server_offset(
    node: str, serve_process: StartServer, tmp_path: Path
) -> None:
    page_port = free_port(PAGE_HOST)
    server = serve_process(tmp_path / "data", extra=["--cors-origin", "*"])
    size = 2_000_003  # at 256 KiB/s: seconds of room to land the reload mid-upload
    report = drive(
        node, server, page_port, mode="resume", size=size, seed=8, chunk=200_000,
        throttle=256 * 1024,
    )  # fmt: skip
    upload_id = check_published(server, report, data := page_bytes(size, 8))
    check_resumed(server, report, upload_id)
    aborted = [r for r in report["failedRequests"] if r["method"] == "PATCH"]
    assert [r["failure"] for r in aborted] == ["net::ERR_ABORTED"]  # the reload cut it
    stored = [e["bytes"] for e in requests_for(server, upload_id, "PATCH") if e["status"] == 204]
    kept = [e["received"] for e in server.named(Event.UPLOAD_DISCONNECTED)]
    assert sum(stored) + sum(kept) == len(data)  # the cut PATCH's bytes kept, none twice


def test_a_page_on_an_origin_not_allowed_is_refused_by_the_browser(
    node: str, serve_process: StartServer, tmp_path: Path
) -> None:
    page_port = free_port(PAGE_HOST)
    allowed = page_port + 1 if page_port < 65535 else page_port - 1  # same host, other port
    server = serve_process(
        tmp_path / "data", extra=["--cors-origin", f"http://{PAGE_HOST}:{allowed}"]
    )
    report = drive(node, server, page_port, mode="refused", size=100_000, seed=9, chunk=65_536)
    (load,) = report["loads"]
    assert load["phase"] == "failed" and load["url"] is None, load
    assert any("blocked by CORS policy" in line for line in report["console"]), report
    assert {(r["method"], r["failure"]) for r in report["failedRequests"]} == {
        ("POST", "net::ERR_FAILED")
    }
    preflights = [e for e in server.named(Event.REQUEST) if e["method"] == "OPTIONS"]
    assert [e["status"] for e in preflights] == [403]  # origin_not_allowed
    assert not [e for e in server.named(Event.REQUEST) if e["method"] == "POST"]
    assert not server.named(Event.UPLOAD_CREATED)
