"""UploadClient and Uploader against a real aiohttp server on 127.0.0.1 that answers from
a script, and records every request it saw, so each test states the exact exchange.

The digests the tests expect are computed here with xxhash and base64 directly, not with
`transfer.integrity`, so a bug there cannot hide behind the same bug in the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xxhash
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from support import damage_file

from transfer.common.http import new_session
from transfer.core.errors import Interrupted, RemoteError, TransientError
from transfer.core.filestate import FileState
from transfer.sender.client import Corruptor, Progress, UploadClient
from transfer.sender.journal import JournalEntry
from transfer.sender.retry import RetryPolicy
from transfer.sender.uploader import Uploader
from transfer.testing.harness import free_port

pytestmark = pytest.mark.timeout(20)

FILE_ID = "run1-00000"


# --- the scripted server ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_range(self) -> str | None:
        return self.headers.get("Content-Range")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, Any] | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


Responder = Callable[[Seen], Reply]


class ScriptedServer:
    """Answers every request with `respond(seen)`; keeps what it saw in `seen`."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.seen: list[Seen] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        seen = Seen(request.method, request.path, dict(request.headers), await request.read())
        self.seen.append(seen)
        reply = self.respond(seen)
        if isinstance(reply.body, bytes) or reply.body is None:
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        return web.json_response(dict(reply.body), status=reply.status, headers=reply.headers)

    def puts(self) -> list[Seen]:
        """PUTs that carried bytes (not `bytes */*` queries)."""
        return [s for s in self.seen if s.method == "PUT" and s.body]

    def exchange(self) -> list[str]:
        """`METHOD Content-Range` per request, the shape tests assert on."""
        return [f"{s.method} {s.content_range or ''}".strip() for s in self.seen]


def sequence(*replies: Reply) -> Responder:
    """Answer the n-th request with the n-th reply; a request past the end gets a 418."""
    queue = list(replies)

    def respond(seen: Seen) -> Reply:
        if not queue:
            return problem(418, "script_exhausted", f"unscripted {seen.method} {seen.path}")
        return queue.pop(0)

    return respond


def problem(status: int, code: str, detail: str = "", **headers: str) -> Reply:
    return Reply(status, {"code": code, "detail": detail, "status": status}, headers)


def incomplete(offset: int, size: int) -> Reply:
    return Reply(200, {"id": FILE_ID, "size": size, "offset": offset, "complete": False})


def resume_incomplete(last_byte: int | None) -> Reply:
    """A 308; `last_byte` None: no Range header (nothing stored)."""
    headers = {} if last_byte is None else {"Range": f"bytes=0-{last_byte}"}
    return Reply(308, {"complete": False}, headers)


def record(data: bytes, digest: str | None = None) -> Reply:
    return Reply(200, record_json(data, digest))


def record_json(data: bytes, digest: str | None = None) -> dict[str, Any]:
    return {
        "id": FILE_ID,
        "name": "x.bin",
        "size": len(data),
        "metadata": {"dtype": "int16"},
        "digests": {"xxh3-128": digest or xxhash.xxh3_128_hexdigest(data)},
    }


def digest_field(data: bytes) -> str:
    return f"xxh3-128=:{base64.b64encode(xxhash.xxh3_128_digest(data)).decode()}:"


Start = Callable[[Responder], Awaitable[tuple[ScriptedServer, UploadClient]]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
def start(aiohttp_server: AiohttpServer, session: aiohttp.ClientSession) -> Start:
    """`scripted, client = await start(responder)`: a server on 127.0.0.1 and a client."""

    async def go(respond: Responder) -> tuple[ScriptedServer, UploadClient]:
        scripted = ScriptedServer(respond)
        server = await aiohttp_server(scripted.app(), host="127.0.0.1")
        return scripted, UploadClient(session, str(server.make_url("")))

    return go


# --- UploadClient: one request, one classified answer ----------------------------------


async def test_create_sends_the_declaration_and_reads_the_offset(start: Start) -> None:
    data = b"\x01\x02" * 300
    scripted, client = await start(sequence(incomplete(256, len(data))))
    progress = await client.create(
        FILE_ID,
        name="x.bin",
        size=len(data),
        metadata={"dtype": "int16"},
        digest=xxhash.xxh3_128_digest(data),
    )
    assert progress == Progress(offset=256)
    [seen] = scripted.seen
    assert (seen.method, seen.path) == ("POST", "/uploads")
    assert seen.json() == {
        "id": FILE_ID,
        "name": "x.bin",
        "size": len(data),
        "metadata": {"dtype": "int16"},
    }
    assert seen.headers["Repr-Digest"] == digest_field(data)


async def test_put_chunk_sends_range_digest_and_bytes(start: Start) -> None:
    data = bytes(range(256)) * 4
    scripted, client = await start(sequence(resume_incomplete(1023 + 100)))
    progress = await client.put_chunk(FILE_ID, 100, data, 5000)
    assert progress == Progress(offset=100 + len(data))
    [seen] = scripted.seen
    assert (seen.method, seen.path) == ("PUT", f"/uploads/{FILE_ID}")
    assert seen.content_range == "bytes 100-1123/5000"
    assert seen.headers["Content-Digest"] == digest_field(data)
    assert seen.body == data


async def test_200_record_completes_with_the_servers_digest(start: Start) -> None:
    data = b"payload!" * 10
    _, client = await start(sequence(record(data)))
    progress = await client.put_chunk(FILE_ID, 0, data, len(data))
    assert progress.offset == len(data)
    assert progress.record is not None and progress.record["id"] == FILE_ID
    assert progress.digest == xxhash.xxh3_128_hexdigest(data)


async def test_200_without_digests_has_no_digest(start: Start) -> None:
    _, client = await start(sequence(Reply(200, {"id": FILE_ID, "size": 4})))
    progress = await client.record(FILE_ID)
    assert progress.record is not None
    assert progress.digest is None


@pytest.mark.parametrize(
    ("last_byte", "offset"), [(None, 0), (0, 1), (4095, 4096)], ids=["no-range", "1", "4096"]
)
async def test_308_offset_is_one_past_the_range(
    start: Start, last_byte: int | None, offset: int
) -> None:
    scripted, client = await start(sequence(resume_incomplete(last_byte)))
    assert await client.query(FILE_ID) == Progress(offset=offset)
    assert scripted.seen[0].content_range == "bytes */*"
    assert scripted.seen[0].body == b""


async def test_308_with_a_malformed_range_is_transient(start: Start) -> None:
    _, client = await start(sequence(Reply(308, None, {"Range": "bytes=5-9"})))
    with pytest.raises(TransientError, match="bad Range"):
        await client.query(FILE_ID)


@pytest.mark.parametrize("ask", ["query", "record"])
async def test_404_on_a_query_means_missing(start: Start, ask: str) -> None:
    _, client = await start(sequence(problem(404, "upload_not_found")))
    progress = await (client.query(FILE_ID) if ask == "query" else client.record(FILE_ID))
    assert progress == Progress(offset=0, missing=True)


async def test_404_on_a_chunk_is_a_remote_error(start: Start) -> None:
    _, client = await start(sequence(problem(404, "upload_not_found", "gone")))
    with pytest.raises(RemoteError) as raised:
        await client.put_chunk(FILE_ID, 0, b"ab", 2)
    assert (raised.value.status, raised.value.code) == (404, "upload_not_found")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 507])
async def test_retryable_statuses_are_transient_with_retry_after(start: Start, status: int) -> None:
    _, client = await start(sequence(problem(status, "busy", "later", **{"Retry-After": "7"})))
    with pytest.raises(TransientError) as raised:
        await client.put_chunk(FILE_ID, 0, b"ab", 2)
    assert raised.value.retry_after == 7.0
    assert str(status) in str(raised.value)


@pytest.mark.parametrize("header", [None, "soon", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_retry_after_that_is_not_seconds_is_ignored(start: Start, header: str | None) -> None:
    headers = {} if header is None else {"Retry-After": header}
    _, client = await start(sequence(problem(503, "too_many_uploads", **headers)))
    with pytest.raises(TransientError) as raised:
        await client.query(FILE_ID)
    assert raised.value.retry_after is None


async def test_chunk_digest_mismatch_is_transient(start: Start) -> None:
    _, client = await start(sequence(problem(400, "chunk_digest_mismatch", "damaged")))
    with pytest.raises(TransientError, match="chunk_digest_mismatch"):
        await client.put_chunk(FILE_ID, 0, b"ab", 2)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "repr_digest_mismatch"),
        (400, "invalid_content_range"),
        (409, "offset_gap"),
        (413, "upload_too_large"),
        (416, "range_not_satisfiable"),
    ],
)
async def test_other_4xx_are_remote_errors_with_the_code(
    start: Start, status: int, code: str
) -> None:
    _, client = await start(sequence(problem(status, code, "refused")))
    with pytest.raises(RemoteError) as raised:
        await client.put_chunk(FILE_ID, 0, b"ab", 2)
    assert (raised.value.status, raised.value.code, raised.value.detail) == (
        status,
        code,
        "refused",
    )


async def test_a_4xx_without_a_problem_body_still_refuses(start: Start) -> None:
    _, client = await start(sequence(Reply(403, b"<html>forbidden</html>")))
    with pytest.raises(RemoteError) as raised:
        await client.put_chunk(FILE_ID, 0, b"ab", 2)
    assert (raised.value.status, raised.value.code) == (403, "unknown")
    assert "forbidden" in raised.value.detail


async def test_a_200_that_is_not_json_is_transient(start: Start) -> None:
    _, client = await start(sequence(Reply(200, b"<html>proxy login</html>")))
    with pytest.raises(TransientError, match="not JSON"):
        await client.record(FILE_ID)


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    port = free_port()  # a port that was just free and now has no listener
    client = UploadClient(session, f"http://127.0.0.1:{port}")
    with pytest.raises(TransientError, match="ClientConnectorError"):
        await client.query(FILE_ID)


async def test_finish_empty_declares_a_zero_length_file(start: Start) -> None:
    scripted, client = await start(sequence(record(b"")))
    progress = await client.finish_empty(FILE_ID)
    assert progress.offset == 0 and progress.record is not None
    assert scripted.seen[0].content_range == "bytes */0"


# --- Corruptor -------------------------------------------------------------------------


def bit_flips(a: bytes, b: bytes) -> int:
    assert len(a) == len(b)
    return (int.from_bytes(a) ^ int.from_bytes(b)).bit_count()


@pytest.mark.parametrize("size", [1, 2, 1000, 256 * 1024])
def test_corruptor_flips_exactly_one_bit(size: int) -> None:
    corrupt = Corruptor(1.0, seed=size)
    data = bytes(size)
    for n in range(1, 21):
        damaged = corrupt(data)
        assert bit_flips(data, damaged) == 1
        assert corrupt.flips == n


def test_corruptor_at_rate_zero_never_touches_data() -> None:
    corrupt = Corruptor(0.0, seed=1)
    data = bytes(range(256))
    assert all(corrupt(data) == data for _ in range(100))
    assert corrupt.flips == 0


def test_corruptor_rate_and_seed() -> None:
    data = bytes(64)
    runs = []
    for _ in range(2):
        corrupt = Corruptor(0.3, seed=42)
        runs.append([corrupt(data) for _ in range(1000)])
        assert 200 < corrupt.flips < 400
    assert runs[0] == runs[1]  # reproducible per seed
    assert Corruptor(1.0, seed=1)(b"") == b""


# --- Uploader against a script ---------------------------------------------------------


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def spooled(tmp_path: Path, data: bytes) -> JournalEntry:
    path = tmp_path / f"{FILE_ID}.bin"
    path.write_bytes(data)
    return JournalEntry(
        file_id=FILE_ID,
        name=path.name,
        path=str(path),
        size=len(data),
        dtype="int16",
        digest=xxhash.xxh3_128_hexdigest(data),
        state=FileState.GENERATED,
    )


def uploader(
    client: UploadClient, sleeps: Sleeps, *, attempts: int = 5, mismatch_retries: int = 3
) -> Uploader:
    policy = RetryPolicy(timeout=60.0, max_attempts=attempts, sleep=sleeps)
    # One chunk in flight: these scripts answer in order and test the careful path;
    # the pipelined one is tested against a real server in test_fastpath.py.
    return Uploader(client, 1024, policy, mismatch_retries=mismatch_retries, window=1)


DATA = bytes(range(250)) * 10  # 2500 bytes: chunks 0-1023, 1024-2047, 2048-2499


async def test_uploads_chunk_by_chunk_and_confirms(start: Start, tmp_path: Path) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(
        sequence(
            incomplete(0, len(DATA)),
            resume_incomplete(1023),
            resume_incomplete(2047),
            record(DATA),
        )
    )
    up = uploader(client, Sleeps())
    done = await up.deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert done.server_digest == entry.digest
    assert scripted.exchange() == [
        "POST",
        "PUT bytes 0-1023/2500",
        "PUT bytes 1024-2047/2500",
        "PUT bytes 2048-2499/2500",
    ]
    assert b"".join(s.body for s in scripted.puts()) == DATA
    assert (up.stats.bytes_sent, up.stats.chunks, up.stats.retries) == (2500, 3, 0)


async def test_offset_gap_queries_and_continues_from_the_servers_offset(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(
        sequence(
            incomplete(0, len(DATA)),
            problem(409, "offset_gap", "server holds 2048", Range="bytes=0-2047"),
            resume_incomplete(2047),  # the answer to `bytes */*`
            record(DATA),
        )
    )
    done = await uploader(client, Sleeps()).deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert scripted.exchange() == [
        "POST",
        "PUT bytes 0-1023/2500",
        "PUT bytes */*",
        "PUT bytes 2048-2499/2500",
    ]
    assert scripted.seen[-1].body == DATA[2048:]


async def test_a_308_short_of_what_was_sent_resends_from_the_acknowledged_offset(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(
        sequence(
            incomplete(0, len(DATA)),
            resume_incomplete(499),  # took only 500 of 1024
            resume_incomplete(1523),
            record(DATA),
        )
    )
    done = await uploader(client, Sleeps()).deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert scripted.exchange() == [
        "POST",
        "PUT bytes 0-1023/2500",
        "PUT bytes 500-1523/2500",
        "PUT bytes 1524-2499/2500",
    ]
    assert scripted.puts()[1].body == DATA[500:1524]


async def test_resumes_at_the_offset_the_server_reports_on_create(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(
        sequence(incomplete(2048, len(DATA)), record(DATA)),
    )
    up = uploader(client, Sleeps())
    assert (await up.deliver(entry)).state is FileState.CONFIRMED
    assert scripted.exchange() == ["POST", "PUT bytes 2048-2499/2500"]
    assert up.stats.resumes == 1


async def test_a_file_the_server_already_completed_is_confirmed_without_bytes(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(sequence(Reply(200, {**record_json(DATA), "complete": True})))
    up = uploader(client, Sleeps())
    done = await up.deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert scripted.exchange() == ["POST"]
    assert up.stats.bytes_sent == 0


async def test_a_server_digest_that_differs_fails_the_file(start: Start, tmp_path: Path) -> None:
    entry = spooled(tmp_path, DATA)
    wrong = "0" * 32
    _, client = await start(sequence(incomplete(0, 2500), record(DATA, digest=wrong)))
    up = Uploader(client, 4096, RetryPolicy(max_attempts=2, sleep=Sleeps()))
    done = await up.deliver(entry)
    assert done.state is FileState.FAILED
    assert done.reason is not None and wrong in done.reason and entry.digest in done.reason


def mismatch_until(successes_after: int | None, data: bytes) -> Responder:
    """Every POST: offset 0. The n-th whole-file PUT: repr_digest_mismatch while
    n <= successes_after (None: always), then the record."""
    puts = 0

    def respond(seen: Seen) -> Reply:
        nonlocal puts
        if seen.method == "POST":
            return incomplete(0, len(data))
        puts += 1
        if successes_after is None or puts <= successes_after:
            return problem(400, "repr_digest_mismatch", "reset to 0")
        return record(data)

    return respond


async def test_repr_digest_mismatch_resends_from_zero_at_most_n_times(
    start: Start, tmp_path: Path
) -> None:
    data = DATA[:1000]
    entry = spooled(tmp_path, data)
    scripted, client = await start(mismatch_until(None, data))
    done = await uploader(client, Sleeps(), mismatch_retries=2).deliver(entry)
    assert done.state is FileState.FAILED
    assert done.reason is not None and "400 repr_digest_mismatch" in done.reason
    assert [s.content_range for s in scripted.puts()] == ["bytes 0-999/1000"] * 3
    assert all(s.body == data for s in scripted.puts())


async def test_one_repr_digest_mismatch_then_success(start: Start, tmp_path: Path) -> None:
    data = DATA[:1000]
    entry = spooled(tmp_path, data)
    scripted, client = await start(mismatch_until(1, data))
    done = await uploader(client, Sleeps(), mismatch_retries=2).deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert scripted.exchange() == ["POST", "PUT bytes 0-999/1000"] * 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "delete"])
async def test_a_locally_damaged_file_fails_and_is_never_uploaded(
    start: Start, tmp_path: Path, damage: str
) -> None:
    entry = spooled(tmp_path, DATA)
    path = Path(entry.path)
    damage_file(path, damage)
    scripted, client = await start(sequence(incomplete(0, len(DATA)), record(DATA)))
    done = await uploader(client, Sleeps()).deliver(entry)
    assert done.state is FileState.FAILED
    assert done.reason is not None and str(path) in done.reason
    expected = "No such file" if damage == "delete" else "changed on disk since it was journaled"
    assert expected in done.reason
    assert scripted.seen == []  # not even a POST, let alone a PUT


async def test_transient_errors_are_retried_after_asking_the_server(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA[:1000])
    sleeps = Sleeps()
    scripted, client = await start(
        sequence(
            problem(503, "too_many_uploads", **{"Retry-After": "2"}),
            problem(404, "upload_not_found"),  # the query after the failure: never created
            incomplete(0, 1000),
            problem(400, "chunk_digest_mismatch", "damaged"),
            resume_incomplete(None),
            record(DATA[:1000]),
        )
    )
    up = uploader(client, sleeps)
    done = await up.deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert scripted.exchange() == [
        "POST",
        "PUT bytes */*",
        "POST",
        "PUT bytes 0-999/1000",
        "PUT bytes */*",
        "PUT bytes 0-999/1000",
    ]
    assert up.stats.retries == 2
    assert len(sleeps.delays) == 2
    assert sleeps.delays[0] == 2.0  # Retry-After is the floor


async def test_retries_exhausted_fail_the_file_with_the_last_error(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(lambda seen: problem(500, "storage_error", "EIO"))
    done = await uploader(client, Sleeps(), attempts=3).deliver(entry)
    assert done.state is FileState.FAILED
    assert done.reason is not None and "500 storage_error" in done.reason
    assert len(scripted.seen) == 3
    assert scripted.puts() == []


async def test_a_refusal_fails_the_file_with_the_servers_code_without_retrying(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(
        sequence(incomplete(0, 2500), problem(413, "chunk_too_large", "max 512"))
    )
    sleeps = Sleeps()
    done = await uploader(client, sleeps).deliver(entry)
    assert done.state is FileState.FAILED
    assert done.reason == "413 chunk_too_large: max 512"
    assert len(scripted.seen) == 2
    assert sleeps.delays == []


async def test_stopping_interrupts_between_chunks(start: Start, tmp_path: Path) -> None:
    entry = spooled(tmp_path, DATA)
    scripted, client = await start(
        sequence(incomplete(0, 2500), resume_incomplete(1023), resume_incomplete(2047))
    )
    up = uploader(client, Sleeps())
    up.stopping = lambda: len(scripted.puts()) >= 1
    with pytest.raises(Interrupted):
        await up.deliver(entry)
    assert scripted.exchange() == ["POST", "PUT bytes 0-1023/2500"]


async def test_an_empty_file_is_finished_with_a_total_only_put(
    start: Start, tmp_path: Path
) -> None:
    entry = spooled(tmp_path, b"")
    scripted, client = await start(sequence(incomplete(0, 0), record(b"")))
    done = await uploader(client, Sleeps()).deliver(entry)
    assert done.state is FileState.CONFIRMED
    assert scripted.exchange() == ["POST", "PUT bytes */0"]


async def test_deliveries_run_concurrently_on_one_client(start: Start, tmp_path: Path) -> None:
    """Workers share one Uploader: its stats add up across concurrent deliveries."""
    files = []
    for n in range(4):
        path = tmp_path / f"f{n}.bin"
        data = bytes([n]) * 700
        path.write_bytes(data)
        digest = xxhash.xxh3_128_hexdigest(data)
        entry = JournalEntry(f"run1-0000{n}", path.name, str(path), 700, "int16", digest,
                             FileState.GENERATED)  # fmt: skip
        files.append(entry)

    def respond(seen: Seen) -> Reply:
        n = int(seen.path[-1]) if seen.method == "PUT" else int(seen.json()["id"][-1])
        if seen.method == "POST":
            return incomplete(0, 700)
        return Reply(200, {**record_json(bytes([n]) * 700), "id": f"run1-0000{n}"})

    _, client = await start(respond)
    up = uploader(client, Sleeps())
    results = await asyncio.gather(*(up.deliver(e) for e in files))
    assert [r.state for r in results] == [FileState.CONFIRMED] * 4
    assert (up.stats.bytes_sent, up.stats.chunks) == (2800, 4)
