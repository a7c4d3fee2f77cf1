"""A file given to `transfer send PATH` is read once before its first byte: the pass that
hashes it for the journal also takes its chunks' digests, and the first attempt sends
with them (sender/localfile.py, "One pass"). Counted by the kernel: `rchar` of the real
sender process (/proc/PID/io: bytes read by read, pread and sendfile), not by a stand-in
reader. A file resumed by a later process is checked in full; a file changed after its
journaling pass is never published and is reported damaged. And before that first byte,
`send PATH` loads no folder watcher (inotify's binding runs `ldconfig` at import)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import StartServer
from support import read_journal

from transfer.common.http import new_session
from transfer.core.filestate import FileState
from transfer.sender.client import UploadClient
from transfer.sender.journal import JournalEntry
from transfer.sender.localfile import hash_for_journal, identity
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader
from transfer.testing.children import SenderProcess
from transfer.testing.harness import Harness
from transfer.testing.polling import wait_until

MiB = 1024 * 1024
SIZE = 32 * MiB  # four chunks of the default 8 MiB: sent in chunks, from the file
CHUNK = 64 * 1024


def rchar_at_exit(sender: SenderProcess) -> int:
    """Bytes the sender process read in its life, taken once it has exited but before
    it is reaped (`WNOWAIT` leaves /proc/PID in place)."""
    flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
    wait_until(lambda: os.waitid(os.P_PID, sender.pid, flags), "the sender's exit")
    fields = dict(
        line.split(": ") for line in Path(f"/proc/{sender.pid}/io").read_text().split("\n") if line
    )
    return int(fields["rchar"])


def send_once(launch: Harness, url: str, spool: Path, path: Path, *args: str) -> tuple[int, int]:
    """`transfer send PATH` to the end: its exit status and the bytes it read."""
    sender = launch.send(url, spool, *args, str(path))
    read = rchar_at_exit(sender)
    return sender.finish(), read


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def baseline(launch: Harness, url: str, where: Path) -> int:
    """What a sender reads besides the file it sends (interpreter, modules, journal):
    a 1 KiB file sent twice, fresh each time; the second run's count (the first may
    compile modules, and read their source)."""
    tiny = random_file(where / "tiny.bin", 1024)
    reads = [send_once(launch, url, where / f"spool-tiny{run}", tiny) for run in range(2)]
    assert [status for status, _ in reads] == [0, 0]
    return reads[1][1]


def test_a_given_file_is_read_once_before_it_is_sent(launch: Harness, tmp_path: Path) -> None:
    """A fresh file: one hashing pass (journal + chunk digests) and the sendfile pass;
    the check before the first attempt used to read it a third time."""
    server = launch.serve(tmp_path / "data")
    others = baseline(launch, server.url, tmp_path)
    big = random_file(tmp_path / "big.bin", SIZE)
    status, read = send_once(launch, server.url, tmp_path / "spool", big)
    assert status == 0
    (entry,) = read_journal(tmp_path / "spool")
    assert entry.state is FileState.CONFIRMED
    passes = (read - others) / SIZE
    assert 1.8 < passes < 2.5, f"{passes:.2f} passes over the file"


def test_a_resumed_file_is_checked_in_full(launch: Harness, tmp_path: Path) -> None:
    """Journaled by an earlier process (which could not reach any server), the file is
    checked from disk before it is sent: three passes in the second process (the new
    journaling pass, which finds it journaled; the check; sendfile)."""
    big = random_file(tmp_path / "big.bin", SIZE)
    status, _ = send_once(
        launch,
        f"http://127.0.0.1:{closed_port()}",
        tmp_path / "spool",
        big,
        "--retry-timeout",
        "0.2s",
    )
    assert status == 1
    (failed,) = read_journal(tmp_path / "spool")
    assert failed.state is FileState.FAILED
    server = launch.serve(tmp_path / "data")
    others = baseline(launch, server.url, tmp_path)
    status, read = send_once(launch, server.url, tmp_path / "spool", big)
    assert status == 0
    (entry,) = read_journal(tmp_path / "spool")
    assert entry.state is FileState.CONFIRMED and entry.file_id == failed.file_id
    passes = (read - others) / SIZE
    assert 2.8 < passes < 3.5, f"{passes:.2f} passes over the file"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def rewrite(path: Path, offset: int, data: bytes) -> None:
    """Change bytes in place: the same file (inode), other content."""
    with path.open("r+b") as stream:
        stream.seek(offset)
        stream.write(data)


def journaled(path: Path, size: int, digest: str) -> JournalEntry:
    return JournalEntry(
        "run-p00000", path.name, str(path), size, "bytes", digest, FileState.GENERATED
    )


async def test_a_change_no_time_shows_is_refused_by_the_server(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """The identity check is a shortcut, not the guarantee: a change it cannot see (as
    bytes written through an already dirty shared mapping, which move no time) reaches
    the first attempt with the journaling pass's digests. The server refuses the changed
    chunk, the retry reads it again and finds it changed: reported damaged, never
    published."""
    server = serve_process(tmp_path / "data")
    path = random_file(tmp_path / "a.bin", 3 * CHUNK)
    async with new_session() as session:
        uploader = Uploader(UploadClient(session, server.url), CHUNK, RetryPolicy(timeout=10))
        hashed = hash_for_journal(path, uploader.journal_chunk)
        assert hashed.reusable and hashed.chunk == CHUNK
        rewrite(path, CHUNK + 10, b"changed")
        hashed = dataclasses.replace(hashed, identity=identity(path.stat()))  # time stood still
        entry = journaled(path, hashed.size, hashed.digest)
        done = await uploader.deliver(entry, fresh=True, hashed=hashed)
        held = await UploadClient(session, server.url).query(entry.file_id)
    assert done.state is FileState.FAILED
    assert done.reason is not None and "changed on disk since it was journaled" in done.reason
    assert held.record is None and held.offset < entry.size
    refused = [e for e in server.events() if e.get("code") == "chunk_digest_mismatch"]
    assert refused, "the changed chunk reached the server and was not refused"
    assert not any((tmp_path / "data" / "files").rglob("*")), "something was published"


async def test_a_change_after_journaling_is_found_before_any_request(
    serve_process: StartServer, tmp_path: Path
) -> None:
    """A change the identity shows (ctime moves with any write, even one whose mtime is
    set back) sends the first attempt through the full check: damaged, nothing sent."""
    server = serve_process(tmp_path / "data")
    path = random_file(tmp_path / "a.bin", 3 * CHUNK)
    async with new_session() as session:
        uploader = Uploader(UploadClient(session, server.url), CHUNK, RetryPolicy(timeout=10))
        hashed = hash_for_journal(path, uploader.journal_chunk)
        before = path.stat()
        rewrite(path, CHUNK + 10, b"changed")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back
        entry = journaled(path, hashed.size, hashed.digest)
        done = await uploader.deliver(entry, fresh=True, hashed=hashed)
    assert done.state is FileState.FAILED
    assert done.reason is not None and "changed on disk since it was journaled" in done.reason
    assert uploader.stats.bytes_sent == 0


PROBE = (
    "import json, sys\n"
    "from transfer.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "print(json.dumps([status, sorted(sys.modules)]), file=sys.stderr)\n"
)


def test_sending_files_loads_no_folder_watcher(launch: Harness, tmp_path: Path) -> None:
    server = launch.serve(tmp_path / "data")
    path = random_file(tmp_path / "a.bin", 1024)
    argv = ["send", "--server", server.url, "--spool-dir", str(tmp_path / "spool"),
            "--progress", "never", "--log-file", str(tmp_path / "send.log"), str(path)]  # fmt: skip
    command = [sys.executable, "-c", PROBE, *argv]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, modules = json.loads(done.stderr.splitlines()[-1])
    assert status == 0
    assert "transfer.sender.pipeline" in modules  # it did send (the guard is not vacuous)
    assert not {"asyncinotify", "ctypes", "transfer.sender.watcher"} & set(modules)
