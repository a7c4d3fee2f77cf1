"""Named credentials end to end: `transfer token add|list|revoke` as real subprocesses,
a real `transfer serve --tokens-file` using them, SIGHUP reloading them (with an upload
in flight), and the file never holding a token.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import StartServer

from transfer.common import tokenfile
from transfer.core import tokens
from transfer.core.errors import ConfigError
from transfer.core.events import Event
from transfer.core.tenancy import Scope
from transfer.testing.harness import run_transfer, transfer_command
from transfer.testing.logs import LogLine
from transfer.testing.polling import wait_until_async

HOST = "127.0.0.1"
GUARD = 20.0
DATA = bytes(range(256)) * 40  # 10 KiB


def _add(path: Path, name: str, tenant: str, *scopes: str) -> str:
    flags = [a for s in scopes for a in ("--scope", s)]
    done = run_transfer(
        "token", "add", name, "--tenant", tenant, *flags, "--tokens-file", str(path)
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith(tokens.TOKEN_PREFIX)
    return token


def _fails(*args: str) -> str:
    done = run_transfer("token", *args)
    assert done.returncode == 2, done.stdout
    assert done.stderr.count("\n") == 1, done.stderr  # one line
    return done.stderr


# --- the token command ----------------------------------------------------------------


def test_add_prints_a_token_once_and_the_file_keeps_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first = _add(path, "cam-1", "lab")
    second = _add(path, "cam-2", "lab", "upload", "delete")
    text = path.read_text()
    assert first not in text and second not in text
    assert first[len(tokens.TOKEN_PREFIX) :] not in text
    assert tokens.digest_of(first) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listing = run_transfer("token", "list", "--tokens-file", str(path))
    assert listing.returncode == 0
    assert first not in listing.stdout
    lines = listing.stdout.splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        ["cam-1", "tenant=lab", "scopes=read,upload"],
        ["cam-2", "tenant=lab", "scopes=delete,upload"],
    ]


def test_mistakes_are_one_line_and_leave_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _add(path, "cam-1", "lab")
    before = path.read_bytes()
    file = ("--tokens-file", str(path))
    assert "exists already" in _fails("add", "cam-1", "--tenant", "lab", *file)
    assert "bad tenant name" in _fails("add", "cam-2", "--tenant", "Lab/..", *file)
    assert "bad scope" in _fails("add", "cam-2", "--tenant", "lab", "--scope", "root", *file)
    assert "bad credential name" in _fails("add", "x/y", "--tenant", "lab", *file)
    assert "no credential named 'nope'" in _fails("revoke", "nope", *file)
    assert path.read_bytes() == before
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    assert "not a tokens file" in _fails("list", "--tokens-file", str(corrupt))
    assert "no such file" in _fails("list", "--tokens-file", str(tmp_path / "absent.json"))


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    names = [f"cam-{i}" for i in range(6)]
    runs = [
        subprocess.Popen(
            transfer_command("token", "add", n, "--tenant", "lab", "--tokens-file", str(path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in names
    ]
    assert [run.wait(GUARD) for run in runs] == [0] * len(names)
    for run in runs:
        assert run.stdout is not None and run.stderr is not None
        run.stdout.close()
        run.stderr.close()
    assert sorted(c.name for c in tokenfile.load(path).credentials) == names


def test_the_table_refuses_what_breaks_a_rule() -> None:
    table = tokens.TokenTable()
    cred = tokens.Credential("a", "lab", frozenset({Scope.READ}), tokens.digest_of("t"))
    table = table.added(cred)
    assert table.lookup("t") == cred
    assert table.lookup("u") is None
    with pytest.raises(ConfigError, match="exists already"):
        table.added(cred)
    assert tokens.parse(tokens.render(table)) == table
    doc = json.loads(tokens.render(table))
    doc["credentials"].append(doc["credentials"][0])
    with pytest.raises(ConfigError, match="duplicate"):
        tokens.parse(json.dumps(doc).encode())
    doc["credentials"] = [{**doc["credentials"][0], "sha256": "xyz"}]
    with pytest.raises(ConfigError, match="bad sha256"):
        tokens.parse(json.dumps(doc).encode())


def test_serve_refuses_token_with_tokens_file_and_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _add(path, "cam-1", "lab")
    common = ["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]
    both = run_transfer(*common, "--tokens-file", str(path), "--token", "x" * 20)
    assert both.returncode == 2
    assert "exclusive" in both.stderr
    path.write_text("[]")
    corrupt = run_transfer(*common, "--tokens-file", str(path))
    assert corrupt.returncode == 2
    assert "not a tokens file" in corrupt.stderr


# --- a real server: use, revoke, SIGHUP -----------------------------------------------


async def _request(port: int, method: str, path: str, token: str, body: bytes = b"") -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    head = [
        f"{method} {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {token}",
        f"Content-Length: {len(body)}", "Connection: close",
    ]  # fmt: skip
    if method == "PUT" and body:
        head.append(f"Content-Range: bytes 0-{len(body) - 1}/{len(body)}")
    try:
        async with asyncio.timeout(GUARD):
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            return int((await reader.readline()).split()[1])
    finally:
        writer.close()


def _reloads(events: list[LogLine], event: Event) -> int:
    return sum(1 for line in events if line.get("event") == event)


async def test_revoke_and_sighup_refuse_the_token_without_dropping_an_upload_in_flight(
    serve_process: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    token = _add(path, "cam-1", "lab")
    other = _add(path, "cam-2", "lab")
    server = serve_process(tmp_path / "data", extra=["--tokens-file", str(path)])
    port = server.port
    assert await _request(port, "PUT", "/uploads/first", token, DATA) == 200
    assert await _request(port, "PUT", "/uploads/first", "tt_wrong", DATA) == 401

    # An upload in flight: headers and half the body sent with the token to be revoked.
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        (
            f"PUT /uploads/inflight HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Range: bytes 0-{len(DATA) - 1}/{len(DATA)}\r\n"
            f"Content-Length: {len(DATA)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + DATA[:1000]
    )
    await writer.drain()
    revoked = run_transfer("token", "revoke", "cam-1", "--tokens-file", str(path))
    assert revoked.returncode == 0, revoked.stderr
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(lambda ev: _reloads(ev, Event.TOKENS_RELOADED) == 1, "the reload")
    writer.write(DATA[1000:])
    await writer.drain()
    async with asyncio.timeout(GUARD):
        status = int((await reader.readline()).split()[1])
    writer.close()
    assert status == 200  # authenticated before the reload: it finishes
    assert (tmp_path / "data" / "files" / "lab" / "inflight").read_bytes() == DATA

    # From now on the revoked token is refused; the other credential still works.
    assert await _request(port, "HEAD", "/uploads/first", token) == 401
    assert await _request(port, "HEAD", "/uploads/first", other) == 200

    # A corrupt file on SIGHUP: the old table stays (cam-2 works), an error is logged.
    path.write_text("{torn")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(lambda ev: _reloads(ev, Event.TOKENS_RELOAD_FAILED) == 1, "the failure")
    assert await _request(port, "HEAD", "/uploads/first", other) == 200
    assert server.alive()

    # A token added later works after the next SIGHUP, not before.
    path.unlink()
    third = _add(path, "cam-3", "lab")
    assert await _request(port, "HEAD", "/uploads/first", third) == 401

    async def reloaded() -> bool:
        return _reloads(server.events(), Event.TOKENS_RELOADED) == 2

    server.proc.send_signal(signal.SIGHUP)
    await wait_until_async(reloaded, "the second reload", deadline=GUARD)
    assert await _request(port, "HEAD", "/uploads/first", third) == 200
    assert await _request(port, "HEAD", "/uploads/first", other) == 401  # gone with the file
    logged = "".join(server.lines)
    assert all(t not in logged for t in (token, other, third))
    assert '"credential": "cam-3"' in logged  # who asked is logged: the name, not the token


@pytest.mark.parametrize("protocol", ["native", "tus", "ietf"])
def test_the_sender_needs_only_its_token(
    serve_process: StartServer, tmp_path: Path, protocol: str
) -> None:
    path = tmp_path / "tokens.json"
    token = _add(path, "cam-1", "lab", "upload")  # upload alone: the sender's needs
    server = serve_process(tmp_path / "data", extra=["--tokens-file", str(path)])
    source = tmp_path / "photo.bin"
    source.write_bytes(DATA)
    spool = tmp_path / "spool"
    done = run_transfer(
        "send", "--server", server.url, "--protocol", protocol, "--spool-dir", str(spool),
        "--progress", "never", str(source),
        env={**os.environ, "TRANSFER_TOKEN": token},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    published = list((tmp_path / "data" / "files" / "lab").iterdir())
    assert [p.read_bytes() for p in published] == [DATA]
    assert not (tmp_path / "data" / "files" / published[0].name).exists()
