"""Tenant isolation and scopes, over a real in-process server with `--tokens-file`.

The matrix: every endpoint of every front-end (native, tus, IETF), called by tenant
`alpha` with each scope on tenant `beta`'s uploads (always 404, never 403: existence
does not leak) and on its own (403 `insufficient_scope` exactly when the scope is
missing). Plus: two tenants with one id, the `files/{tenant}/{id}` layout, `admin`'s
`?tenant=` and the cross-tenant listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeServed, Served
from yarl import URL

from transfer.common import tokenfile
from transfer.core.tenancy import Scope
from transfer.core.tokens import Credential, TokenTable, digest_of

SIZE = 100
DATA = bytes(range(SIZE))
TUS = {"Tus-Resumable": "1.0.0"}
SCOPES = [Scope.UPLOAD, Scope.READ, Scope.DELETE, Scope.ADMIN]
FOUND_NOT = {"upload_not_found", "file_not_found"}


def _token(name: str) -> str:
    return f"tt_test-token-{name}"


def _credentials(path: Path) -> None:
    creds = [
        Credential(f"alpha-{s}", "alpha", frozenset({s}), digest_of(_token(f"alpha-{s}")))
        for s in SCOPES
    ]
    every = frozenset({Scope.UPLOAD, Scope.READ, Scope.DELETE})
    creds.append(Credential("beta", "beta", every, digest_of(_token("beta"))))
    creds.append(Credential("alpha", "alpha", every, digest_of(_token("alpha"))))
    tokenfile.save(path, TokenTable(tuple(creds)))


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(name)}"}


@dataclass(frozen=True)
class Call:
    """One endpoint: method, path (with `{id}`), headers, body; which scopes allow it."""

    name: str
    method: str
    path: str
    allowed: frozenset[Scope]
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def _either(*scopes: Scope) -> frozenset[Scope]:
    return frozenset({*scopes, Scope.ADMIN})


APPEND = DATA[SIZE // 2 :]  # the second half, onto a half-done upload
CALLS = [
    Call("native HEAD", "HEAD", "/uploads/{id}", _either(Scope.UPLOAD, Scope.READ)),
    Call("native GET", "GET", "/uploads/{id}", _either(Scope.UPLOAD, Scope.READ)),
    Call(
        "native status PUT", "PUT", "/uploads/{id}", _either(Scope.UPLOAD),
        (("Content-Range", "bytes */*"),),
    ),
    Call(
        "native PUT", "PUT", "/uploads/{id}", _either(Scope.UPLOAD),
        (("Content-Range", f"bytes {SIZE // 2}-{SIZE - 1}/{SIZE}"),), APPEND,
    ),
    Call("native DELETE", "DELETE", "/uploads/{id}", _either(Scope.DELETE)),
    Call("files GET", "GET", "/files/{id}", _either(Scope.READ)),
    Call("files HEAD", "HEAD", "/files/{id}", _either(Scope.READ)),
    Call("tus HEAD", "HEAD", "/tus/{id}", _either(Scope.UPLOAD, Scope.READ), tuple(TUS.items())),
    Call(
        "tus PATCH", "PATCH", "/tus/{id}", _either(Scope.UPLOAD),
        (*TUS.items(), ("Upload-Offset", str(SIZE // 2)),
         ("Content-Type", "application/offset+octet-stream")), APPEND,
    ),
    Call("tus DELETE", "DELETE", "/tus/{id}", _either(Scope.DELETE), tuple(TUS.items())),
    Call(
        "tus override DELETE", "POST", "/tus/{id}", _either(Scope.DELETE),
        (*TUS.items(), ("X-HTTP-Method-Override", "DELETE")),
    ),
    Call("ietf HEAD", "HEAD", "/resumable/{id}", _either(Scope.UPLOAD, Scope.READ)),
    Call("ietf GET", "GET", "/resumable/{id}", _either(Scope.UPLOAD, Scope.READ)),
    Call(
        "ietf PATCH", "PATCH", "/resumable/{id}", _either(Scope.UPLOAD),
        (("Upload-Offset", str(SIZE // 2)), ("Upload-Complete", "?1"),
         ("Content-Type", "application/partial-upload")), APPEND,
    ),
    Call("ietf DELETE", "DELETE", "/resumable/{id}", _either(Scope.DELETE)),
]  # fmt: skip


async def _served(make_served: MakeServed, tmp_path: Path, **config: Any) -> Served:
    path = tmp_path / "tokens.json"
    _credentials(path)
    return await make_served(tokens_file=path, **config)


async def _put(served: Served, who: str, upload_id: str, data: bytes, total: int) -> int:
    headers = {**_auth(who), "Content-Range": f"bytes 0-{len(data) - 1}/{total}"}
    resp = await served.client.put(f"/uploads/{upload_id}", data=data, headers=headers)
    return resp.status


async def _prepare(served: Served, who: str) -> None:
    """`done` (published) and `half` (partial, at SIZE // 2) for `who`."""
    assert await _put(served, who, "done", DATA, SIZE) == 200
    assert await _put(served, who, "half", DATA[: SIZE // 2], SIZE) == 308


def _target(call: Call) -> str:
    """Deletes and appends need the partial upload; reads of files the published one."""
    return "done" if call.path.startswith("/files/") or "HEAD" in call.name else "half"


async def _call(served: Served, call: Call, who: str, query: str = "") -> tuple[int, str]:
    path = call.path.format(id=_target(call)) + query
    headers = {**dict(call.headers), **_auth(who)}
    resp = await served.client.request(call.method, path, headers=headers, data=call.body)
    code = ""
    if resp.content_type == "application/problem+json" and call.method != "HEAD":
        code = str((await resp.json())["code"])
    elif resp.status in (403, 404):  # HEAD: no body; the status says it
        code = "insufficient_scope" if resp.status == 403 else "upload_not_found"
    return resp.status, code


async def _state_of(served: Served, who: str, upload_id: str) -> tuple[int, str]:
    resp = await served.client.head(f"/uploads/{upload_id}", headers=_auth(who))
    return resp.status, resp.headers.get("Upload-Offset", "")


@pytest.fixture(params=SCOPES, ids=str)
def scope(request: pytest.FixtureRequest) -> Scope:
    """Each scope alpha's credential may hold."""
    return Scope(request.param)


@pytest.fixture(params=CALLS, ids=lambda c: c.name)
def call(request: pytest.FixtureRequest) -> Call:
    """Each call of every front-end that names an upload."""
    assert isinstance(request.param, Call)
    return request.param


async def _as_alpha(
    make_served: MakeServed, tmp_path: Path, owner: str, call: Call, scope: Scope
) -> tuple[Served, int, str]:
    """`call` by alpha's credential with `scope` on `owner`'s prepared uploads."""
    served = await _served(make_served, tmp_path)
    await _prepare(served, owner)
    return served, *await _call(served, call, f"alpha-{scope}")


async def test_another_tenants_upload_is_not_found(
    make_served: MakeServed, tmp_path: Path, call: Call, scope: Scope
) -> None:
    served, status, code = await _as_alpha(make_served, tmp_path, "beta", call, scope)
    if call.name == "native PUT" and scope in call.allowed:
        # A PUT with a body creates the id in alpha's own namespace, at offset 0, so a
        # chunk at SIZE // 2 leaves a gap there; beta's upload is untouched.
        assert (status, code) == (409, "offset_gap")
    else:
        assert (status, code in FOUND_NOT) == (404, True), (status, code)
    assert await _state_of(served, "beta", "done") == (200, str(SIZE))
    assert await _state_of(served, "beta", "half") == (200, str(SIZE // 2))


async def test_scopes_on_the_tenants_own_uploads(
    make_served: MakeServed, tmp_path: Path, call: Call, scope: Scope
) -> None:
    _, status, code = await _as_alpha(make_served, tmp_path, "alpha", call, scope)
    if scope in call.allowed:
        assert status < 400, (status, code)
    else:
        assert (status, code) == (403, "insufficient_scope")


async def test_two_tenants_may_use_one_id_and_files_are_apart(
    make_served: MakeServed, tmp_path: Path
) -> None:
    served = await _served(make_served, tmp_path)
    other = bytes(reversed(DATA))
    assert await _put(served, "alpha", "same", DATA, SIZE) == 200
    assert await _put(served, "beta", "same", other, SIZE) == 200
    assert (served.files_dir / "alpha" / "same").read_bytes() == DATA
    assert (served.files_dir / "beta" / "same").read_bytes() == other
    assert not (served.files_dir / "same").exists()
    for who, data in (("alpha", DATA), ("beta", other)):
        resp = await served.client.get("/files/same", headers=_auth(who))
        assert await resp.read() == data
        described = await (await served.client.get("/uploads/same", headers=_auth(who))).json()
        assert described["id"] == "same"  # never the store key
    created = await served.client.post("/uploads", json={"name": "n"}, headers=_auth("alpha"))
    assert "~" not in created.headers["Location"]
    tus = await served.client.post("/tus/", headers={**TUS, "Upload-Length": "5", **_auth("alpha")})
    assert tus.status == 201
    assert "~" not in tus.headers["Location"]


async def test_admin_addresses_another_tenant_with_the_query_and_lists_all(
    make_served: MakeServed, tmp_path: Path
) -> None:
    served = await _served(make_served, tmp_path)
    await _prepare(served, "beta")
    await _prepare(served, "alpha")
    admin = _auth("alpha-admin")
    own = await served.client.head("/uploads/half", headers=admin)
    assert own.status == 200  # alpha's own `half`
    assert (await served.client.get("/files/done?tenant=beta", headers=admin)).status == 200
    deleted = await served.client.delete("/uploads/half?tenant=beta", headers=admin)
    assert deleted.status == 204
    assert await _state_of(served, "beta", "half") == (404, "")
    assert await _state_of(served, "alpha", "half") == (200, str(SIZE // 2))
    # Anybody else's ?tenant= is ignored: its own namespace answers.
    ignored = await served.client.head("/uploads/done?tenant=beta", headers=_auth("alpha-read"))
    assert ignored.headers.get("Upload-Offset") == str(SIZE)
    bad = await served.client.head("/uploads/half?tenant=Not/A/Tenant", headers=admin)
    assert bad.status == 400
    listing = await (await served.client.get("/uploads", headers=admin)).json()
    assert listing["uploads"] == [
        {"tenant": "alpha", "id": "half", "modified": listing["uploads"][0]["modified"]}
    ]
    await _put(served, "beta", "again", DATA[:10], SIZE)
    rows = (await (await served.client.get("/uploads", headers=admin)).json())["uploads"]
    assert [(r["tenant"], r["id"]) for r in rows] == [("alpha", "half"), ("beta", "again")]
    only = await served.client.get("/uploads?tenant=beta", headers=admin)
    assert [r["id"] for r in (await only.json())["uploads"]] == ["again"]
    refused = await served.client.get("/uploads", headers=_auth("alpha"))
    assert refused.status == 403


async def test_metrics_need_admin_when_protected(make_served: MakeServed, tmp_path: Path) -> None:
    served = await _served(make_served, tmp_path, protect_metrics=True)
    assert (await served.client.get("/metrics")).status == 401
    assert (await served.client.get("/metrics", headers=_auth("alpha"))).status == 403
    assert (await served.client.get("/metrics", headers=_auth("alpha-admin"))).status == 200
    assert (await served.client.get("/healthz")).status == 200


async def test_tus_concatenation_cannot_reach_another_tenants_partials(
    make_served: MakeServed, tmp_path: Path
) -> None:
    served = await _served(make_served, tmp_path)
    partial = await served.client.post(
        "/tus/",
        headers={**TUS, "Upload-Length": "3", "Upload-Concat": "partial", **_auth("beta")},
    )
    assert partial.status == 201
    url = URL(partial.headers["Location"]).path
    done = await served.client.patch(
        url,
        data=b"abc",
        headers={
            **TUS, "Upload-Offset": "0", **_auth("beta"),
            "Content-Type": "application/offset+octet-stream",
        },
    )  # fmt: skip
    assert done.status == 204
    final = await served.client.post(
        "/tus/", headers={**TUS, "Upload-Concat": f"final;{url}", **_auth("alpha")}
    )
    assert final.status == 404
    mine = await served.client.post(
        "/tus/", headers={**TUS, "Upload-Concat": f"final;{url}", **_auth("beta")}
    )
    assert mine.status == 201
