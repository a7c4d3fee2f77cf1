"""The pure event document and signature (core/cloudevents.py), and the file outbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer.core import cloudevents
from transfer.core.cloudevents import EventType, SignatureError
from transfer.core.protocol import UploadState
from transfer.core.records import FileRecord, UploadInfo, UploadSpec
from transfer.server.precreate import REASON_LIMIT, reason_of
from transfer.store.outbox import FileOutbox, read_outbox

SECRET = b"s3cret-s3cret-s3cret"
NOW = 1_800_000_000


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"id":"1"}'
    header = cloudevents.sign(SECRET, body, NOW)
    assert header.startswith(f"t={NOW},v1=")
    cloudevents.verify(SECRET, body, header, now=NOW + 10)
    with pytest.raises(SignatureError, match="does not match"):
        cloudevents.verify(SECRET, body + b" ", header, now=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        cloudevents.verify(b"another-secret-xx", body, header, now=NOW)
    with pytest.raises(SignatureError, match="tolerance"):
        cloudevents.verify(SECRET, body, header, now=NOW + 301)
    for bad in ("", "v1=ab", f"t={NOW}", "t=x,v1=ab", f"t={NOW},t={NOW},v1=ab"):
        with pytest.raises(SignatureError, match="malformed"):
            cloudevents.verify(SECRET, body, bad, now=NOW)


def test_a_rotated_secret_verifies_with_either_signature() -> None:
    body = b"{}"
    old, new = (
        cloudevents.sign(b"old-secret-old-secret", body, NOW),
        cloudevents.sign(SECRET, body, NOW),
    )
    both = f"{new},v1={old.partition(',v1=')[2]}"
    cloudevents.verify(b"old-secret-old-secret", body, both, now=NOW)
    cloudevents.verify(SECRET, body, both, now=NOW)


def test_the_document_names_the_public_id_and_the_tenant() -> None:
    spec = UploadSpec("acme~u1", "a.txt", 3, {"k": "v"}, protocol="tus")
    record = FileRecord("acme~u1", "a.txt", 3, {"k": "v"}, {"xxh3-128": b"\x01" * 16})
    info = UploadInfo(spec, UploadState(3, 3), record)
    doc = cloudevents.document(
        EventType.COMPLETED, "e1", "urn:transfer:h", NOW, cloudevents.upload_data(info)
    )
    assert doc["specversion"] == "1.0" and doc["type"] == "dev.transfer.upload.completed"
    assert doc["subject"] == "u1" and doc["time"] == "2027-01-15T08:00:00.000000Z"
    assert doc["data"] == {
        "id": "u1", "tenant": "acme", "name": "a.txt", "size": 3, "offset": 3,
        "digests": {"xxh3-128": "01" * 16}, "metadata": {"k": "v"}, "protocol": "tus",
    }  # fmt: skip
    assert cloudevents.encode(doc) == cloudevents.encode(dict(reversed(doc.items())))


def test_a_refusal_reason_is_one_short_line() -> None:
    assert reason_of(b'{"detail": "no\\n executables"}') == "no executables"
    assert reason_of(b'{"reason": "quota"}') == "quota"
    assert reason_of(b"plain\r\n text") == "plain text"
    assert len(reason_of(b"x" * 5000)) == REASON_LIMIT


async def test_the_outbox_keeps_order_and_survives_a_reopen(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    await outbox.open()
    first = await outbox.append("a", EventType.CREATED, "k1", 1.0, {"id": "k1"})
    second = await outbox.append("b", EventType.COMPLETED, "k1", 2.0, None)
    assert outbox.pending() == [first.seq, second.seq] == [0, 1]
    (tmp_path / "outbox" / "0000000000000009.json.tmp").write_text("torn")
    reopened = FileOutbox(tmp_path)
    await reopened.open()
    assert reopened.pending() == [0, 1]
    assert not list((tmp_path / "outbox").glob("*.tmp"))
    unresolved = await reopened.read(1)
    assert unresolved is not None and unresolved.data is None
    await reopened.resolve(unresolved, {"id": "k1", "size": 1})
    await reopened.remove(0)
    third = await reopened.append("c", EventType.DELETED, "k2", 3.0, {"id": "k2"})
    assert third.seq == 2 and reopened.pending() == [1, 2]
    listed = read_outbox(tmp_path)
    assert [(e.seq, e.event_id, e.data) for e in listed] == [
        (1, "b", {"id": "k1", "size": 1}), (2, "c", {"id": "k2"}),
    ]  # fmt: skip
    await reopened.remove(1)
    await reopened.remove(2)
    assert reopened.pending() == [] and read_outbox(tmp_path) == []
