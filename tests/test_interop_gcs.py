"""The unmodified Google resumable-upload client against the real server process.

`google.resumable_media.requests.ResumableUpload` speaks GCS's protocol: a JSON POST that
must answer with a `Location`, chunk PUTs that must answer 308 + `Range: bytes=0-N` (and
no `Location`, or `requests` would follow it), a final 200 whose JSON carries `md5Hash`
(checked with `checksum="md5"`), and `recover()`, a `bytes */*` PUT answered with 308.
The client is synchronous, so it runs in the test thread; the server is a child process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from pathlib import Path
from typing import IO, Protocol

import pytest
import requests
from conftest import StartServer, free_port
from google.resumable_media import RetryStrategy
from google.resumable_media.requests import ResumableUpload
from yarl import URL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

CHUNK = 256 * 1024  # the client requires a multiple of 256 KiB
SIZE = 1_363_149  # ~1.3 MiB: five full chunks and a short last one


def payload(size: int, seed: int = 11) -> bytes:
    return random.Random(seed).randbytes(size)


class Upload(Protocol):
    """The part of `ResumableUpload` used here (its functions are unannotated)."""

    _retry_strategy: RetryStrategy

    @property
    def finished(self) -> bool: ...
    @property
    def invalid(self) -> bool: ...
    @property
    def bytes_uploaded(self) -> int: ...
    @property
    def total_bytes(self) -> int | None: ...
    @property
    def resumable_url(self) -> str: ...
    def initiate(
        self,
        transport: requests.Session,
        stream: IO[bytes],
        metadata: dict[str, str],
        content_type: str,
    ) -> requests.Response: ...
    def transmit_next_chunk(self, transport: requests.Session) -> requests.Response: ...
    def recover(self, transport: requests.Session) -> requests.Response: ...


def initiate(transport: requests.Session, url: str, data: bytes, name: str) -> Upload:
    upload: Upload = ResumableUpload(f"{url}/uploads", CHUNK, checksum="md5")  # type: ignore[no-untyped-call]
    upload.initiate(
        transport, io.BytesIO(data), {"name": name}, content_type="application/octet-stream"
    )
    assert upload.total_bytes == len(data)
    return upload


def upload_id(upload: Upload) -> str:
    return URL(upload.resumable_url).name


def transmit_rest(transport: requests.Session, upload: Upload) -> list[requests.Response]:
    responses = []
    while not upload.finished:
        responses.append(upload.transmit_next_chunk(transport))
    return responses


def assert_stored(data_dir: Path, upload: Upload, data: bytes, last: requests.Response) -> None:
    assert (data_dir / "files" / upload_id(upload)).read_bytes() == data
    assert upload.bytes_uploaded == len(data)
    record = last.json()
    assert record["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert record["size"] == len(data)


def test_google_client_uploads_a_multi_chunk_file(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = serve_process(data_dir)
    data = payload(SIZE)

    with requests.Session() as transport:
        upload = initiate(transport, server.url, data, "interop.bin")
        assert URL(upload.resumable_url).origin() == URL(server.url).origin()
        responses = transmit_rest(transport, upload)

    assert [r.status_code for r in responses] == [308] * 5 + [200]
    for done, resp in enumerate(responses[:-1], start=1):
        assert resp.headers["Range"] == f"bytes=0-{done * CHUNK - 1}"
        assert "Location" not in resp.headers
    assert responses[-1].json()["name"] == "interop.bin"
    assert_stored(data_dir, upload, data, responses[-1])


def test_google_client_recovers_after_a_server_crash(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    server = serve_process(data_dir, port=port)
    data = payload(SIZE, seed=12)

    with requests.Session() as transport:
        upload = initiate(transport, server.url, data, "crash.bin")
        for _ in range(2):
            assert upload.transmit_next_chunk(transport).status_code == 308
        assert upload.bytes_uploaded == 2 * CHUNK

        server.kill()
        # Fail at once instead of backing off for minutes (google-cloud-storage does the
        # same when retries are off); the point is the explicit recover() below.
        upload._retry_strategy = RetryStrategy(max_retries=0)  # type: ignore[no-untyped-call]
        with pytest.raises(requests.ConnectionError):
            upload.transmit_next_chunk(transport)

        restarted = serve_process(data_dir, port=port)
        assert restarted.url == server.url  # the resumable URL points at this port
        recovered = upload.recover(transport)
        assert recovered.status_code == 308
        assert upload.bytes_uploaded == 2 * CHUNK
        assert not upload.invalid
        assert list((data_dir / "files").iterdir()) == []

        responses = transmit_rest(transport, upload)

    assert [r.status_code for r in responses] == [308] * 3 + [200]
    assert_stored(data_dir, upload, data, responses[-1])
