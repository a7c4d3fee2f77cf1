"""`/metrics` on both sides, scraped from real processes mid-run: the server shows its
record cache (size and bound) and record counts, the sender its journal and checkpoint
counts and compactions; and no label value on either side carries an id (bounded
cardinality, whatever the number of files)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from support import read_journal

from transfer.testing.harness import Harness
from transfer.testing.polling import wait_until

CACHE = 8  # the server's --cache-size: far below the number of uploads
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# What an id looks like here: a generated file id (`{run}-{digits}`), a long hex digest or
# uuid-like token, or any string with a long run of digits.
_ID_LIKE = re.compile(r"[A-Za-z0-9_]+-\d{3,}|[0-9a-f]{16,}|[0-9a-f-]{32,}|\d{7,}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, labels) -> value for every sample of `url`/metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = tuple(_LABEL.findall(match[2] or ""))
            found[(match[1], labels)] = float(match[3])
    return found


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return samples[(name, ())]


def status(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
        files: dict[str, int] = json.loads(response.read())["files"]
    return files


def id_labels(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], ids: set[str]
) -> list[str]:
    """Every `name{label="value"}` whose value is, holds or looks like an id."""
    bad = []
    for name, labels in samples:
        for label, text in labels:
            if label == "le":
                continue  # a histogram bucket's bound
            if any(i in text for i in ids) or _ID_LIKE.search(text):
                bad.append(f'{name}{{{label}="{text}"}}')
    return bad


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_both_sides_show_cache_and_journal_counts_and_no_label_carries_an_id(
    tmp_path: Path,
) -> None:
    with Harness(tmp_path) as launch:
        server = launch.serve(tmp_path / "data", extra=["--cache-size", str(CACHE)])
        sender = launch.send(
            server.url, tmp_path / "spool", "--count", "2000", "--min-size", "1KiB",
            "--max-size", "2KiB", "--min-interval", "0s", "--max-interval", "30ms",
            "--journal-compact-at", "1KiB", "--status-port", "0",
        )  # fmt: skip
        url = sender.status_url()

        def folded() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            got = scrape(url)
            enough = value(got, "transfer_sender_compactions_total") >= 3
            return (
                got if enough and value(got, "transfer_sender_checkpoint_entries") >= 40 else None
            )

        mid_run = wait_until(folded, "three compactions of 40 confirmed files", deadline=120.0)
        counts = status(url)  # the totals stay whole: folded files are counted too
        assert counts["confirmed"] >= value(mid_run, "transfer_sender_checkpoint_entries")
        sender_samples = scrape(url)
        served = scrape(server.url)
        sender.stop()
    ids = {e.file_id for e in read_journal(tmp_path / "spool")}
    ids |= {p.name for p in (tmp_path / "data" / "files").iterdir()}
    assert len(ids) >= 40

    for name in ("transfer_sender_journal_records", "transfer_sender_journal_bytes",
                 "transfer_sender_checkpoint_bytes"):  # fmt: skip
        assert (name, ()) in sender_samples
    assert value(sender_samples, "transfer_sender_checkpoint_bytes") > 0
    assert value(served, "transfer_store_cache_capacity") == CACHE
    assert 0 < value(served, "transfer_store_cache_entries") <= CACHE
    assert value(served, "transfer_store_records_read_total") >= 0
    assert ("transfer_store_partial_uploads", ()) in served
    assert id_labels(sender_samples, ids) == []
    assert id_labels(served, ids) == []
    assert id_labels({("x", (("upload", sorted(ids)[0]),)): 1.0}, ids)  # the check can fail
