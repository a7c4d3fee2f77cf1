"""`transfer send --protocol ietf` against our own `transfer serve` at /resumable/: every
file published once under the server's id, confirmed by the whole-file digest, and
chunks damaged on the way refused by their `Content-Digest` and re-sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import StartServer
from support import read_journal

from transfer.core.events import Event
from transfer.sender.client import Verified
from transfer.sender.journal import FileState
from transfer.testing.harness import run_transfer
from transfer.testing.logs import LogFile, named


@pytest.mark.slow
def test_ietf_delivers_and_confirms_by_the_whole_file_digest(
    serve_process: StartServer, tmp_path: Path
) -> None:
    data_dir, spool, log = tmp_path / "data", tmp_path / "spool", tmp_path / "send.log"
    server = serve_process(data_dir)
    done = run_transfer(
        "send", "--protocol", "ietf", "--server", server.url, "--spool-dir", str(spool),
        "--progress", "never", "--log-file", str(log), "--count", "6", "--seed", "3",
        "--min-size", "300KiB", "--max-size", "1MiB", "--max-interval", "20ms",
        "--chunk-size", "256KiB", "--inject-corruption", "0.3",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-2000:]
    entries = read_journal(spool)
    published = {p.name: p.read_bytes() for p in (data_dir / "files").iterdir()}
    assert len(entries) == 6 and all(e.state is FileState.CONFIRMED for e in entries)
    by_upload = {str(e.upload_url).rsplit("/", 1)[-1]: e for e in entries}
    assert set(by_upload) == set(published)  # one upload per file, under the server's id
    for upload_id, entry in by_upload.items():
        assert published[upload_id] == Path(entry.path).read_bytes()
        assert entry.server_digest == entry.digest and entry.verified is None
    confirmed = LogFile(log).named(Event.UPLOAD_CONFIRMED)
    assert {e["verified"] for e in confirmed} == {Verified.WHOLE_FILE_DIGEST}
    mismatches = named(server.events(), Event.DIGEST_MISMATCH)
    assert mismatches, "no chunk was damaged: the test proved nothing"
    assert {e["protocol"] for e in named(server.events(), Event.UPLOAD_COMPLETED)} == {"ietf"}
