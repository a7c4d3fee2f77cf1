"""`/metrics` exports a sample for every counter and gauge, zero-valued ones included.

A scraper reads an absent series as "unknown", not 0 (`rate()`, `absent()` alerts), so
`transfer_uploads_expired_total` on a server that never expired anything must say 0.
"""

from __future__ import annotations

import re

from conftest import Served

from transfer.common.metrics import Metrics


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of an exposition."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def test_untouched_counters_and_gauges_render_zero() -> None:
    m = Metrics()
    m.describe("c_total", "counter", "a counter")
    m.describe("g", "gauge", "a gauge")
    m.describe("h_seconds", "histogram", "a histogram")
    got = samples(m.render())
    assert got == {"c_total": 0.0, "g": 0.0}  # a histogram has no single zero sample


def test_a_labelled_series_replaces_the_zero_sample() -> None:
    m = Metrics()
    m.describe("mismatches_total", "counter", "refusals")
    m.inc("mismatches_total", kind="chunk")
    m.set("g", 0.0)  # a gauge set to 0 keeps its own sample
    got = samples(m.render())
    assert got == {'mismatches_total{kind="chunk"}': 1.0, "g": 0.0}


async def test_the_server_exports_every_counter_and_gauge_at_start(served: Served) -> None:
    response = await served.client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert re.search(r"^transfer_uploads_expired_total 0$", text, re.MULTILINE), text
    kinds = re.findall(r"^# TYPE (\S+) (counter|gauge)$", text, re.MULTILINE)
    assert kinds, text
    names = {key.partition("{")[0] for key in samples(text)}
    missing = [name for name, _ in kinds if name not in names]
    assert not missing, f"no sample line for {missing}"
