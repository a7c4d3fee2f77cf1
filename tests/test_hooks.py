"""Hooks end to end: a real `transfer serve` process, real HTTP receivers on 127.0.0.1.

Every event type reaches the receiver signed; a receiver that is down gets the events
later, in order; `--hook-command` runs a real script (retried after a failure); the
pre-create hook accepts, refuses (403 `rejected_by_hook`) and fails closed (503
`hook_unavailable`); `transfer hooks` lists the backlog.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import digest_field
from hookreceiver import Receiver
from support import metric

from transfer.core import cloudevents
from transfer.core.cloudevents import EventType
from transfer.core.errors import Code
from transfer.core.events import Event
from transfer.testing.harness import Harness, ServerProcess, run_transfer
from transfer.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "hook-secret-0123456789abcdef"
FAST = ["--hook-max-backoff", "0.2s", "--hook-timeout", "2s"]
T = 10.0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    env = {**os.environ, "TRANSFER_HOOK_SECRET": SECRET}
    with Harness(tmp_path, env=env, new_session=True) as h:  # kills hook commands too
        yield h


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def serve(harness: Harness, data_dir: Path, *extra: str, name: str = "serve") -> ServerProcess:
    return harness.serve(data_dir, extra=[*FAST, *extra], name=name)


def upload(base: str, upload_id: str, data: bytes, *, digest: bytes | None = None) -> int:
    """Create and finish a native upload in one PUT; returns the PUT's status."""
    resp = requests.post(f"{base}/uploads", json={"id": upload_id, "name": f"{upload_id}.bin"},
                         timeout=T)  # fmt: skip
    assert resp.status_code == 200, resp.text
    headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}",
               "Repr-Digest": digest_field(digest if digest is not None else data)}  # fmt: skip
    return requests.put(
        f"{base}/uploads/{upload_id}", data=data, headers=headers, timeout=T
    ).status_code


def types_of(docs: list[dict[str, Any]], subject: str) -> list[str]:
    return [d["type"].removeprefix("dev.transfer.upload.") for d in docs if d["subject"] == subject]


def test_every_event_type_arrives_signed(
    harness: Harness, receiver: Receiver, tmp_path: Path
) -> None:
    server = serve(harness, tmp_path / "d", "--hook-url", receiver.url, "--partial-ttl", "1s")
    assert upload(server.url, "done", b"hello") == 200
    assert upload(server.url, "bad", b"hello", digest=b"other") == 400
    requests.post(f"{server.url}/uploads", json={"id": "gone"}, timeout=T)
    assert requests.delete(f"{server.url}/uploads/gone", timeout=T).status_code == 204
    requests.post(f"{server.url}/uploads", json={"id": "idle"}, timeout=T)

    def expired() -> list[str]:
        return [d["subject"] for d in receiver.docs(EventType.EXPIRED)]

    wait_until(lambda: "idle" in expired() and "bad" in expired(), "expiries", deadline=T)
    docs = receiver.docs()
    assert types_of(docs, "done") == ["created", "completed"]
    assert types_of(docs, "bad")[:2] == ["created", "digest_mismatch"]  # then it expires too
    assert types_of(docs, "gone") == ["created", "deleted"]
    assert types_of(docs, "idle") == ["created", "expired"]
    for item in receiver.received:
        item.verify(SECRET.encode(), time.time())
        assert item.headers["Content-Type"] == cloudevents.CONTENT_TYPE
    done = receiver.docs(EventType.COMPLETED)[0]
    assert done["specversion"] == "1.0" and done["source"].startswith("urn:transfer:")
    assert done["data"]["size"] == 5 and done["data"]["name"] == "done.bin"
    assert done["data"]["digests"]["xxh3-128"] and done["data"]["protocol"] == "native"
    assert done["data"]["tenant"] is None
    assert SECRET not in (tmp_path / "serve.log").read_text()


def test_tus_and_ietf_completions_are_events(
    harness: Harness, receiver: Receiver, tmp_path: Path
) -> None:
    server = serve(harness, tmp_path / "d", "--hook-url", receiver.url)
    tus = requests.post(f"{server.url}/tus/", data=b"abc", timeout=T, headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "3",
        "Content-Type": "application/offset+octet-stream"})  # fmt: skip
    assert tus.status_code == 201, tus.text
    # No Upload-Draft-Interop-Version: no 104 interim answer, which requests cannot skip.
    complete = {"Upload-Complete": "?1"}
    ietf = requests.post(f"{server.url}/resumable/", data=b"abcd", timeout=T, headers=complete)
    assert ietf.status_code in (200, 201), ietf.text
    wait_until(lambda: len(receiver.docs(EventType.COMPLETED)) == 2, "two completions", deadline=T)
    protocols = sorted(d["data"]["protocol"] for d in receiver.docs(EventType.COMPLETED))
    assert protocols == ["ietf", "tus"]


def test_receiver_down_then_up_gets_everything_in_order(
    harness: Harness, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.stop()
    data_dir = tmp_path / "d"
    server = serve(harness, data_dir, "--hook-url", receiver.url)
    for i in range(5):
        assert upload(server.url, f"u{i}", b"x" * (i + 1)) == 200
    wait_until(lambda: server.named(Event.HOOK_RETRY), "a retry logged", deadline=T)
    assert metric(server.url, "transfer_hook_backlog") == 10
    assert metric(server.url, "transfer_hook_failures_total", {"target": "url"}) >= 1
    listing = run_transfer("hooks", "--data-dir", str(data_dir))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 11 and "10 pending (5 completed, 5 created)" in lines[-1]
    assert "completed" in lines[1] and "u0" in lines[1]
    as_json = json.loads(run_transfer("hooks", "--data-dir", str(data_dir), "--json").stdout)
    assert as_json["pending"] == 10 and as_json["by_type"][EventType.COMPLETED] == 5
    receiver.start()
    wait_until(lambda: len(receiver.docs()) >= 10, "the backlog delivered", deadline=T)
    for i in range(5):
        assert types_of(receiver.docs(), f"u{i}") == ["created", "completed"]
    wait_until(lambda: metric(server.url, "transfer_hook_backlog") == 0, "empty", deadline=T)
    assert not list((data_dir / "outbox").iterdir())  # delivered entries are removed
    assert "0 pending" in run_transfer("hooks", "--data-dir", str(data_dir)).stdout


def test_hook_command_runs_a_script_and_is_retried(harness: Harness, tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys, pathlib\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "flag = out.with_suffix('.failed')\n"
        "if not flag.exists():\n"
        "    flag.touch(); sys.exit(3)  # the first run fails\n"
        "with out.open('a') as f:\n"
        "    f.write(os.environ['TRANSFER_EVENT_TYPE'] + ' ' + sys.stdin.read() + '\\n')\n"
    )
    out = tmp_path / "events.txt"
    command = f"{sys.executable} {script} {out}"
    server = harness.serve(tmp_path / "d", extra=[*FAST, "--hook-command", command])
    assert upload(server.url, "cmd", b"data") == 200
    wait_until(
        lambda: out.exists() and len(out.read_text().splitlines()) == 2, "2 runs", deadline=T
    )
    lines = out.read_text().splitlines()
    assert lines[0].startswith(EventType.CREATED) and lines[1].startswith(EventType.COMPLETED)
    assert json.loads(lines[1].split(" ", 1)[1])["data"]["id"] == "cmd"
    retry = server.named(Event.HOOK_RETRY)
    assert retry and "exit status 3" in retry[0]["error"]


def _precreate(doc: dict[str, Any]) -> tuple[int, bytes]:
    if doc["data"]["name"].endswith(".exe"):
        return 422, json.dumps({"detail": "no executables here"}).encode()
    return 200, b""


def test_pre_create_hook_accepts_refuses_and_fails_closed(harness: Harness, tmp_path: Path) -> None:
    with Receiver(_precreate) as hook:
        server = serve(harness, tmp_path / "d", "--pre-create-hook-url", hook.url,
                       "--pre-create-hook-timeout", "1s")  # fmt: skip
        ok = requests.post(f"{server.url}/uploads", json={"id": "a", "name": "a.txt"}, timeout=T)
        assert ok.status_code == 200
        asked = hook.received[0]
        asked.verify(SECRET.encode(), time.time())
        assert asked.doc["type"] == EventType.PRE_CREATE and asked.doc["data"]["id"] == "a"
        no = requests.post(f"{server.url}/uploads", json={"id": "b", "name": "b.exe"}, timeout=T)
        assert no.status_code == 403 and no.json()["code"] == Code.REJECTED_BY_HOOK
        assert "no executables here" in no.json()["detail"]
        assert requests.head(f"{server.url}/uploads/b", timeout=T).status_code == 404
        exe = {
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "3",
            "Upload-Metadata": "filename eC5leGU=",
        }  # fmt: skip  (x.exe)
        tus = requests.post(f"{server.url}/tus/", timeout=T, headers=exe)
        assert tus.status_code == 403 and tus.json()["code"] == Code.REJECTED_BY_HOOK
        hook.hold()  # answers nothing within the timeout
        slow = requests.post(f"{server.url}/uploads", json={"id": "c"}, timeout=T)
        assert slow.status_code == 503 and slow.json()["code"] == Code.HOOK_UNAVAILABLE
        assert slow.headers["Retry-After"] == "5"
        hook.release()
    down = requests.post(f"{server.url}/uploads", json={"id": "d"}, timeout=T)
    assert down.status_code == 503 and down.json()["code"] == Code.HOOK_UNAVAILABLE
    outcomes = {o: metric(server.url, "transfer_hook_pre_create_total", {"outcome": o})
                for o in ("accepted", "rejected", "unavailable")}  # fmt: skip
    assert outcomes == {"accepted": 1, "rejected": 2, "unavailable": 2}


def test_a_url_hook_needs_a_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFER_HOOK_SECRET"}
    result = run_transfer("serve", "--data-dir", str(tmp_path), "--hook-url", "http://127.0.0.1:9/",
                          env=env)  # fmt: skip
    assert result.returncode == 2 and "TRANSFER_HOOK_SECRET" in result.stderr
    bad = run_transfer("serve", "--data-dir", str(tmp_path), "--hook-url", "ftp://x/", env=env)
    assert bad.returncode == 2 and "not an http(s):// URL" in bad.stderr
    empty = run_transfer("serve", "--data-dir", str(tmp_path), "--hook-command", " ", env=env)
    assert empty.returncode == 2 and "--hook-command is empty" in empty.stderr


def test_events_name_the_tenant(harness: Harness, receiver: Receiver, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    added = run_transfer("token", "add", "inst1", "--tenant", "acme", "--tokens-file", str(tokens))
    assert added.returncode == 0, added.stderr
    auth = {"Authorization": f"Bearer {added.stdout.strip()}"}
    server = serve(
        harness, tmp_path / "d", "--hook-url", receiver.url, "--tokens-file", str(tokens)
    )
    created = requests.post(f"{server.url}/uploads", json={"id": "t1"}, headers=auth, timeout=T)
    assert created.status_code == 200, created.text
    headers = {**auth, "Content-Range": "bytes 0-2/3"}
    done = requests.put(f"{server.url}/uploads/t1", data=b"abc", headers=headers, timeout=T)
    assert done.status_code == 200, done.text
    wait_until(lambda: receiver.docs(EventType.COMPLETED), "completed", deadline=T)
    (event,) = receiver.docs(EventType.COMPLETED)
    assert event["subject"] == "t1" and event["data"]["id"] == "t1"
    assert event["data"]["tenant"] == "acme"


def test_a_hook_command_that_hangs_is_killed_and_retried(harness: Harness, tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text("import sys, threading\nsys.stdin.read()\nthreading.Event().wait()\n")
    command = f"{sys.executable} {script}"
    extra = ["--hook-command", command, "--hook-timeout", "0.3s", "--hook-max-backoff", "0.2s"]
    server = harness.serve(tmp_path / "d", extra=extra)
    assert upload(server.url, "hang", b"data") == 200
    wait_until(lambda: len(server.named(Event.HOOK_RETRY)) >= 2, "two timeouts", deadline=T)
    assert "timed out after 0.3s" in server.named(Event.HOOK_RETRY)[0]["error"]
    assert metric(server.url, "transfer_hook_backlog") == 2
