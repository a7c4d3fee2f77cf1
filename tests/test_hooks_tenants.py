"""Every hook event names the upload as its client knows it, on every front-end.

With `--tokens-file` a store knows an upload as `{tenant}~{id}`; the events must not:
`subject` and `data.id` are the public id and `data.tenant` the tenant, for the events
of the native, tus (creation, PATCH, concatenation, termination) and IETF front-ends.
An in-process server over a `FileStore` with its `FileOutbox`, a real HTTP receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from aiohttp.test_utils import TestClient
from hookreceiver import Receiver
from pytest_aiohttp import AiohttpClient
from test_hooks import SECRET, T
from yarl import URL

from transfer.common import tokenfile
from transfer.core.cloudevents import EventType
from transfer.core.tenancy import DEFAULT_SCOPES, Scope
from transfer.core.tokens import Credential, TokenTable, digest_of
from transfer.server.app import ServerConfig, make_app
from transfer.server.hooks import HookConfig
from transfer.store.filestore import FileStore
from transfer.store.outbox import FileOutbox
from transfer.testing.polling import wait_until_async

pytestmark = pytest.mark.timeout(60)
TOKEN = "tt_acme-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TUS = {"Tus-Resumable": "1.0.0", **AUTH}
TUS_BODY = {**TUS, "Content-Type": "application/offset+octet-stream"}
IETF = {"Upload-Draft-Interop-Version": "8", **AUTH}
Client: TypeAlias = TestClient[Any, Any]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path, receiver: Receiver) -> Client:
    tokens = tmp_path / "tokens.json"
    scopes = DEFAULT_SCOPES | {Scope.DELETE}
    tokenfile.save(tokens, TokenTable((Credential("i1", "acme", scopes, digest_of(TOKEN)),)))
    store = FileStore(tmp_path / "d")
    store.open()
    hooks = HookConfig(url=receiver.url, secret=SECRET.encode(), max_backoff=0.2)
    config = ServerConfig(tokens_file=tokens, hooks=hooks)
    return await aiohttp_client(make_app(store, config, outbox=FileOutbox(tmp_path / "d")))


async def _native(client: Client) -> None:
    put = {**AUTH, "Content-Range": "bytes 0-2/3"}
    assert (await client.put("/uploads/nat", data=b"abc", headers=put)).status == 200
    half = {**AUTH, "Content-Range": "bytes 0-0/3"}
    assert (await client.put("/uploads/natdel", data=b"a", headers=half)).status == 308
    assert (await client.delete("/uploads/natdel", headers=AUTH)).status == 204


async def _tus(client: Client) -> list[str]:
    """A whole upload, a concatenation of one partial, a terminated one: their ids."""
    ids = []
    for concat in ("", "partial"):
        extra = {"Upload-Concat": concat} if concat else {}
        made = await client.post("/tus/", headers={**TUS, "Upload-Length": "3", **extra})
        assert made.status == 201, await made.text()
        path = URL(made.headers["Location"]).path
        done = await client.patch(path, data=b"abc", headers={**TUS_BODY, "Upload-Offset": "0"})
        assert done.status == 204, await done.text()
        ids.append(path)
    final = await client.post("/tus/", headers={**TUS, "Upload-Concat": f"final;{ids[1]}"})
    assert final.status == 201, await final.text()
    ids.append(URL(final.headers["Location"]).path)
    doomed = await client.post("/tus/", headers={**TUS, "Upload-Length": "3"})
    ids.append(URL(doomed.headers["Location"]).path)
    assert (await client.delete(ids[-1], headers=TUS)).status == 204
    return [path.rstrip("/").rpartition("/")[2] for path in ids]


async def _ietf(client: Client) -> list[str]:
    whole = await client.post("/resumable/", data=b"abc", headers={**IETF, "Upload-Complete": "?1"})
    assert whole.status in (200, 201), await whole.text()
    doomed = await client.post(
        "/resumable/", headers={**IETF, "Upload-Complete": "?0", "Upload-Length": "3"}
    )
    assert doomed.status == 201, await doomed.text()
    path = URL(doomed.headers["Location"]).path
    assert (await client.delete(path, headers=IETF)).status == 204
    locations = (URL(whole.headers["Location"]).path, path)
    return [p.rstrip("/").rpartition("/")[2] for p in locations]


async def test_every_front_ends_events_carry_the_public_id_and_the_tenant(
    client: Client,
    receiver: Receiver,
) -> None:
    await _native(client)
    ids = ["nat", "natdel", *await _tus(client), *await _ietf(client)]
    wanted = {EventType.COMPLETED: 5, EventType.DELETED: 3}  # nat, tus x3, ietf; deletes

    def arrived() -> bool:
        return all(len(receiver.docs(kind)) >= n for kind, n in wanted.items())

    await wait_until_async(arrived, "every completion and deletion", deadline=T)
    docs = receiver.docs()
    assert {d["subject"] for d in docs} == set(ids)
    for doc in docs:
        assert doc["subject"] == doc["data"]["id"] and "~" not in doc["subject"], doc
        assert doc["data"]["tenant"] == "acme", doc
