"""The server's log context: every request gets a `request_id` (answered as
`X-Request-Id`) that every event logged while it is handled carries, with the
`upload_id` once the handler knows it; concurrent requests never mix their contexts,
and nothing stays bound after a request. Real in-process servers on 127.0.0.1; logs
captured with `structlog.testing.capture_logs` (through `merge_contextvars`, as the
CLI's configuration does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import HOST, MakeServed, Served, content_range, digest_field
from pytest_aiohttp import AiohttpClient

from transfer.core.events import Event
from transfer.server.app import ServerConfig, make_app
from transfer.server.middleware import REQUEST_ID_HEADER, AccessLogger
from transfer.store.filestore import FileStore
from transfer.testing.polling import wait_until_async

pytestmark = pytest.mark.timeout(30)

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured


def _named(logs: Logs, event: Event) -> Logs:
    return [e for e in logs if e["event"] == event]


def _one(logs: Logs, event: Event, **fields: object) -> MutableMapping[str, Any]:
    found = [e for e in _named(logs, event) if all(e.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, (event, fields, logs)
    return found[0]


async def test_created_and_completed_carry_the_upload_id_and_request_id(
    served: Served, logs: Logs
) -> None:
    data = b"the quick brown fox"
    created = await served.client.post("/uploads", json={"id": "fox", "size": len(data)})
    assert created.status == 200
    post_id = created.headers[REQUEST_ID_HEADER]

    done = await served.client.put(
        "/uploads/fox", data=data, headers={"Content-Range": content_range(0, data, len(data))}
    )
    assert done.status == 200
    put_id = done.headers[REQUEST_ID_HEADER]

    assert post_id != put_id
    assert len(post_id) == 16
    event = _one(logs, Event.UPLOAD_CREATED)
    assert event == {
        "event": Event.UPLOAD_CREATED,
        "log_level": "info",
        "upload_id": "fox",
        "request_id": post_id,
        "size": len(data),
        "name": None,
    }
    completed = _one(logs, Event.UPLOAD_COMPLETED)
    assert (completed["upload_id"], completed["request_id"]) == ("fox", put_id)
    assert completed["size"] == len(data)


async def test_a_creating_put_and_a_reset_carry_the_upload_id(served: Served, logs: Logs) -> None:
    data = b"not what was declared"
    resp = await served.client.put(
        "/uploads/bad",
        data=data,
        headers={"Repr-Digest": digest_field(b"something else")},
    )
    assert resp.status == 400
    request_id = resp.headers[REQUEST_ID_HEADER]
    created = _one(logs, Event.UPLOAD_CREATED, via="put")
    reset = _one(logs, Event.UPLOAD_RESET)
    for event in (created, reset):
        assert (event["upload_id"], event["request_id"]) == ("bad", request_id)
    assert reset["reason"] == "repr_digest_mismatch"
    mismatch = _one(logs, Event.DIGEST_MISMATCH)
    assert (mismatch["upload_id"], mismatch["request_id"]) == ("bad", request_id)


async def test_every_answer_has_its_own_request_id_refusals_too(served: Served) -> None:
    answers = [
        await served.client.get("/healthz"),
        await served.client.get("/healthz"),
        await served.client.get("/uploads/nope"),  # 404 problem
        await served.client.get("/no/such/route"),  # aiohttp's 404, as a problem
        await served.client.put("/uploads/nope", headers={"Content-Range": "bytes */*"}),
    ]
    ids = [resp.headers[REQUEST_ID_HEADER] for resp in answers]
    assert len(set(ids)) == len(ids)
    assert [resp.status for resp in answers] == [200, 200, 404, 404, 404]
    assert structlog.contextvars.get_contextvars() == {}


async def test_concurrent_requests_do_not_mix_their_contexts(served: Served, logs: Logs) -> None:
    """Two PUTs held mid-body at once, released in the opposite order: each one's events
    carry its own upload id and request id."""
    data = {name: name.encode() * 100 for name in ("left", "right")}
    release = {name: asyncio.Event() for name in data}
    started = {name: asyncio.Event() for name in data}

    async def held(name: str) -> AsyncIterator[bytes]:
        yield data[name][:10]
        started[name].set()
        await release[name].wait()
        yield data[name][10:]

    async def put(name: str) -> tuple[int, str]:
        body = data[name]
        resp = await served.client.put(
            f"/uploads/{name}",
            data=held(name),
            headers={"Content-Range": content_range(0, body, len(body))},
        )
        return resp.status, resp.headers[REQUEST_ID_HEADER]

    tasks = {name: asyncio.create_task(put(name)) for name in data}
    async with asyncio.timeout(10):
        await asyncio.gather(*(event.wait() for event in started.values()))
        release["right"].set()
        right = await tasks["right"]
        release["left"].set()
        left = await tasks["left"]

    assert left[0] == right[0] == 200
    for name, (_, request_id) in (("left", left), ("right", right)):
        for event in (Event.UPLOAD_CREATED, Event.UPLOAD_COMPLETED):
            assert _one(logs, event, upload_id=name)["request_id"] == request_id
    assert left[1] != right[1]


class FakeClock:
    """A monotonic clock that moves only when told; it counts how often it was read."""

    def __init__(self) -> None:
        self.now, self.reads = 1000.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


async def test_a_too_slow_body_is_logged_with_its_upload(
    make_served: MakeServed, logs: Logs
) -> None:
    clock = FakeClock()
    served = await make_served(idle_timeout=5.0, monotonic=clock)
    data = b"x" * 100

    async def crawling() -> AsyncIterator[bytes]:
        yield data[:10]
        # Read twice: when the body started, and after its first bytes arrived.
        await wait_until_async(lambda: clock.reads >= 2, "the server to read 10 bytes")
        clock.now += 60.0  # a minute for 10 bytes: far under --min-rate
        yield data[10:]

    resp = await served.client.put(
        "/uploads/slow", data=crawling(), headers={"Content-Range": content_range(0, data, None)}
    )
    assert resp.status == 408
    assert (await resp.json())["code"] == "body_too_slow"
    event = _one(logs, Event.UPLOAD_TOO_SLOW)
    assert (event["upload_id"], event["request_id"]) == ("slow", resp.headers[REQUEST_ID_HEADER])


async def test_the_access_line_keeps_its_fields_and_names_the_request(
    aiohttp_client: AiohttpClient, tmp_path: Path, logs: Logs
) -> None:
    store = FileStore(tmp_path)
    store.open()
    server = TestServer(make_app(store, ServerConfig()), host=HOST)
    await server.start_server(access_log_class=AccessLogger)  # as `transfer serve` runs it
    client: TestClient[web.Request, None] = await aiohttp_client(server)
    data = b"0123456789"
    resp = await client.put(
        "/uploads/acc", data=data, headers={"Content-Range": content_range(0, data, None)}
    )
    assert resp.status == 308

    # The access line is written just after the answer is sent.
    [line] = await wait_until_async(lambda: _named(logs, Event.REQUEST), "the access line")
    assert line["request_id"] == resp.headers[REQUEST_ID_HEADER]
    assert {k: line[k] for k in ("method", "path", "status", "upload_id", "bytes")} == {
        "method": "PUT",
        "path": "/uploads/acc",
        "status": 308,
        "upload_id": "acc",
        "bytes": 10,
    }
    assert isinstance(line["duration_ms"], float)
