"""tus-js-client 4 under Node (tests/js/ietf.mjs) against a real `transfer serve` child,
speaking the IETF resumable-upload draft: `protocol: 'ietf-draft-03'` (interop 5) and
`'ietf-draft-05'` (interop 6); plain, with `uploadDataDuringCreation` (whole file, or a
first chunk then PATCHes), with `uploadLengthDeferred` (the length told by the last
PATCH's `Upload-Complete: ?1`). Every published file is fetched from `GET /files/{id}`
and compared byte for byte, and the upload is the engine's: native `HEAD`, xxh3-128 and
sha-256 in its record, `protocol="ietf"` in /metrics.

`parallelUploads > 1`: tus-js-client does not refuse it for the IETF protocols; it sends
tus's `Upload-Concat: partial`, which the draft does not have ("this protocol does not
support transferring an upload as multiple requests in parallel"), so the server
refuses it (400 `upload_concat_unsupported`) before creating anything, and the client
fails. Shown below.

Node and tests/js/node_modules come from `scripts/test.sh` (`npm ci --prefix tests/js`);
when either is missing these tests skip, except under `CI=true`, where they fail.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import xxhash
from conftest import StartServer
from support import node_with

from transfer.core.errors import Code
from transfer.core.events import Event
from transfer.testing.children import ServerProcess

JS = Path(__file__).parent / "js"
NODE_DEADLINE = 60.0
PROTOCOLS = ("ietf-draft-03", "ietf-draft-05")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _node() -> str:
    return node_with(JS, ("tus-js-client",), "tus-js-client tests")


def upload(
    server: ServerProcess, source: Path, protocol: str, options: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _node(),
            str(JS / "ietf.mjs"),
            f"{server.url}/resumable/",
            str(source),
            protocol,
            json.dumps(options),
        ],
        capture_output=True,
        text=True,
        timeout=NODE_DEADLINE,
        check=False,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"uploadDataDuringCreation": True},
        {"uploadDataDuringCreation": True, "chunkSize": 100_000},
        {"uploadLengthDeferred": True, "chunkSize": 65_536},
    ],
    ids=["plain", "data-during-creation", "creation-then-chunks", "length-deferred"],
)
def test_tus_js_client_ietf(
    serve_process: StartServer, tmp_path: Path, protocol: str, options: dict[str, Any]
) -> None:
    server = serve_process(tmp_path / "data")
    source = tmp_path / "d.bin"
    source.write_bytes(data := random.Random(5).randbytes(350_001))
    done = upload(server, source, protocol, options)
    assert done.returncode == 0, done.stderr
    upload_id = json.loads(done.stdout)["url"].rsplit("/", 1)[1]
    got = requests.get(f"{server.url}/files/{upload_id}", timeout=10)
    assert got.status_code == 200
    assert got.content == data
    record = requests.get(f"{server.url}/uploads/{upload_id}", timeout=10).json()
    assert record["digests"]["sha-256"] == hashlib.sha256(data).hexdigest()
    assert record["digests"]["xxh3-128"] == xxhash.xxh3_128_hexdigest(data)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'transfer_uploads_completed_total{protocol="ietf"} 1' in metrics
    assert [e["protocol"] for e in server.named(Event.UPLOAD_COMPLETED)] == ["ietf"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parallel_uploads_are_refused_before_anything_is_created(
    serve_process: StartServer, tmp_path: Path, protocol: str
) -> None:
    server = serve_process(tmp_path / "data")
    source = tmp_path / "p.bin"
    source.write_bytes(random.Random(6).randbytes(100_000))
    done = upload(server, source, protocol, {"parallelUploads": 3})
    assert done.returncode == 1
    assert Code.UPLOAD_CONCAT_UNSUPPORTED in done.stderr
    assert not server.named(Event.UPLOAD_CREATED)
    assert not list((tmp_path / "data" / "uploads").glob("*.json"))
