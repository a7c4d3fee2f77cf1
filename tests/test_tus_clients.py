"""Real third-party tus clients against a real `transfer serve` child.

- tuspy (PyPI): an upload; a resume from its stored URL after the server was killed
  with SIGKILL mid-upload and restarted on the same port and data dir; a checksum that
  does not match the body refused (460) without a byte appended.
- tus-js-client 4 under Node (tests/js/upload.mjs, `protocol: 'tus-v1'`): plain, with
  `uploadDataDuringCreation`, with `uploadLengthDeferred`, with `parallelUploads: 3`.

Every published file is fetched from `GET /files/{id}` and compared byte for byte.
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
from conftest import StartServer
from support import node_with
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from transfer.core.events import Event
from transfer.testing.children import ServerProcess

JS = Path(__file__).parent / "js"
NODE_DEADLINE = 60.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def published(server: ServerProcess, url: str) -> bytes:
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    resp = requests.get(f"{server.url}/files/{upload_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.content


def offset(server: ServerProcess, url: str) -> int:
    resp = requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert resp.status_code == 200
    return int(resp.headers["Upload-Offset"])


# --- tuspy -------------------------------------------------------------------------


def test_tuspy_uploads_a_file_with_checksums(serve_process: StartServer, tmp_path: Path) -> None:
    server = serve_process(tmp_path / "data")
    source = tmp_path / "a.bin"
    source.write_bytes(data := payload(300_000, 1))
    client = tus_client.TusClient(f"{server.url}/tus/")
    uploader = client.uploader(
        file_path=str(source),
        chunk_size=64 * 1024,
        upload_checksum=True,
        metadata={"filename": "a.bin"},
    )
    uploader.upload()
    assert uploader.url is not None
    assert published(server, uploader.url) == data
    record = requests.get(
        f"{server.url}/uploads/{uploader.url.rsplit('/', 1)[1]}", timeout=10
    ).json()
    assert record["name"] == "a.bin"
    assert record["digests"]["sha-256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.chaos
def test_tuspy_resumes_from_its_stored_url_after_a_kill_9(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = serve_process(data_dir)
    source = tmp_path / "b.bin"
    source.write_bytes(data := payload(1_000_000, 2))
    storage = FileStorage(str(tmp_path / "urls.json"))  # type: ignore[no-untyped-call]

    def uploader(url: str) -> Uploader:
        client = tus_client.TusClient(f"{url}/tus/")
        return client.uploader(
            file_path=str(source), chunk_size=100_000, store_url=True, url_storage=storage
        )

    first = uploader(server.url)
    for _ in range(4):
        first.upload_chunk()  # type: ignore[no-untyped-call]
    assert first.url is not None
    assert offset(server, first.url) == 400_000
    server.kill()  # SIGKILL: no chance to flush anything it had not fsynced
    restarted = serve_process(data_dir, port=server.port)
    second = uploader(restarted.url)
    assert second.url == first.url  # found through the URL storage, not created anew
    assert second.offset == 400_000  # asked the server: every acknowledged byte is there
    second.upload()
    assert published(restarted, second.url) == data


def _wrong_sha1(chunk: bytes) -> Any:
    return hashlib.sha1(chunk + b"!")


class _LyingUploader(Uploader):
    """tuspy with a checksum over the wrong bytes: what a corrupted body looks like."""

    CHECKSUM_ALGORITHM_PAIR = ("sha1", _wrong_sha1)  # type: ignore[assignment]


def test_tuspy_checksum_mismatch_is_refused(serve_process: StartServer, tmp_path: Path) -> None:
    server = serve_process(tmp_path / "data")
    source = tmp_path / "c.bin"
    source.write_bytes(payload(50_000, 3))
    client = tus_client.TusClient(f"{server.url}/tus/")
    uploader = _LyingUploader(
        file_path=str(source), client=client, chunk_size=20_000, upload_checksum=True
    )
    with pytest.raises(TusCommunicationError) as excinfo:
        uploader.upload_chunk()  # type: ignore[no-untyped-call]
    assert excinfo.value.status_code == 460
    assert uploader.url is not None
    assert offset(server, uploader.url) == 0  # nothing appended


# --- tus-js-client under Node --------------------------------------------------------


def _node() -> str:
    return node_with(JS, ("tus-js-client",), "tus-js-client tests")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"uploadDataDuringCreation": True},
        {"uploadDataDuringCreation": True, "chunkSize": 100_000},
        {"uploadLengthDeferred": True, "chunkSize": 65_536},
        {"parallelUploads": 3},
    ],
    ids=["plain", "data-during-creation", "creation-then-chunks", "length-deferred", "parallel"],
)
def test_tus_js_client(serve_process: StartServer, tmp_path: Path, options: dict[str, Any]) -> None:
    node = _node()
    server = serve_process(tmp_path / "data")
    source = tmp_path / "d.bin"
    source.write_bytes(data := payload(350_001, 4))
    done = subprocess.run(
        [node, str(JS / "upload.mjs"), f"{server.url}/tus/", str(source), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=NODE_DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    url = json.loads(done.stdout)["url"]
    assert published(server, url) == data
    if options.get("parallelUploads"):
        assert server.named(Event.UPLOAD_CONCATENATED)
