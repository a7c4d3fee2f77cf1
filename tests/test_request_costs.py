"""The cheaper forms of per-request work (issue 13) say exactly what the forms they
replaced said: the log processors (context merge, UTC timestamp, JSON renderer) against
structlog's own, the histogram against its cumulative buckets, request ids, and the
untrusted default of `--trusted-proxy`. Real objects throughout, no server needed."""

from __future__ import annotations

import contextvars
import datetime
import re
from collections.abc import Mapping
from typing import Any

import structlog

from transfer.cli.logs import UtcStamp, json_renderer, merge_context
from transfer.common.metrics import Metrics
from transfer.server.connections import ConnLimits, client_address, parse_network
from transfer.server.middleware import new_request_id

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


def _in_fresh_context(bind: Mapping[str, object], unbind: tuple[str, ...]) -> tuple[Any, Any]:
    """(ours, structlog's) merge of the same bindings, in a context of their own."""

    def merged() -> tuple[Any, Any]:
        structlog.contextvars.bind_contextvars(**bind)
        structlog.contextvars.unbind_contextvars(*unbind)
        event = {"event": "x", "upload_id": "given"}  # a key already there is kept
        theirs = structlog.contextvars.merge_contextvars(None, "info", dict(event))
        return merge_context(None, "info", dict(event)), theirs

    return contextvars.Context().run(merged)


def test_the_context_merge_gives_structlogs_keys_and_values() -> None:
    bind = {"request_id": "r1", "upload_id": "u1", "client": "127.0.0.1", "tenant": "t"}
    ours, theirs = _in_fresh_context(bind, unbind=("tenant",))
    assert ours == theirs
    assert ours["upload_id"] == "given" and "tenant" not in ours
    assert ours["request_id"] == "r1" and ours["client"] == "127.0.0.1"


def test_the_context_merge_of_nothing_bound_adds_nothing() -> None:
    ours, theirs = _in_fresh_context({}, unbind=())
    assert ours == theirs == {"event": "x", "upload_id": "given"}


def _stamp() -> str:
    value = UtcStamp()(None, "info", {})["timestamp"]
    assert isinstance(value, str)
    return value


def test_the_timestamp_has_timestampers_form_and_is_now() -> None:
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})
    before = datetime.datetime.now(datetime.UTC)
    ours = [_stamp() for _ in range(50)]
    after = datetime.datetime.now(datetime.UTC)
    assert ISO_UTC.match(theirs["timestamp"])
    for text in ours:
        assert ISO_UTC.match(text), text
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert before <= when <= after
    assert ours == sorted(ours)


class _Described:
    def __structlog__(self) -> str:
        return "described"


class _Plain:
    def __repr__(self) -> str:
        return "<plain>"


def test_the_json_renderer_writes_what_structlogs_writes() -> None:
    event = {
        "event": "upload.completed",
        "size": 28744,
        "ratio": 0.5,
        "name": 'caf\u00e9 "quoted"\n',
        "none": None,
        "nested": {"a": [1, 2, {"b": True}]},
        "described": _Described(),
        "plain": _Plain(),
    }
    theirs = structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert json_renderer()(None, "info", dict(event)) == theirs


def _series(text: str, name: str) -> dict[str, str]:
    """`le` (or the suffix) -> value of one histogram's lines."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None
            found[le.group(1)] = line.rsplit(" ", 1)[1]
        elif line.startswith((name + "_count", name + "_sum")):
            key, value = line.split(" ")
            found[key.split("{")[0].removeprefix(name + "_")] = value
    return found


def test_a_histogram_renders_cumulative_buckets() -> None:
    metrics = Metrics()
    metrics.describe("d", "histogram", "durations")
    for value in (0.0005, 0.003, 0.003, 0.01, 7.0, 20.0):  # 0.01 is a bound: counted in it
        metrics.observe("d", value, method="PUT")
    lines = _series(metrics.render(), "d")
    assert lines["0.001"] == "1"
    assert lines["0.005"] == "3"
    assert lines["0.01"] == lines["0.025"] == lines["5.0"] == "4"
    assert lines["10.0"] == "5"
    assert lines["+Inf"] == lines["count"] == "6"
    assert float(lines["sum"]) == 0.0005 + 0.003 + 0.003 + 0.01 + 7.0 + 20.0


def test_labels_in_any_order_are_one_series() -> None:
    metrics = Metrics()
    metrics.inc("c", method="PUT", route="/uploads")
    metrics.inc("c", route="/uploads", method="PUT")
    metrics.inc("c")
    assert metrics.get("c", method="PUT", route="/uploads") == 2
    assert metrics.get("c") == 1


def test_request_ids_are_16_hex_digits_and_differ() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_without_trusted_proxies_no_address_is_trusted_or_forwarded() -> None:
    limits = ConnLimits()
    assert not limits.trusts("127.0.0.1")
    assert not limits.trusts("not an address")
    assert client_address("192.0.2.1", ["198.51.100.7"], limits) == "192.0.2.1"
    proxy = ConnLimits(trusted=(parse_network("192.0.2.0/24"),))
    assert client_address("192.0.2.1", ["198.51.100.7"], proxy) == "198.51.100.7"
