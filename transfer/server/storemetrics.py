"""The store's sizes on /metrics: records read, unfinished uploads, the record cache.

Read off the store when `/metrics` is scraped (`Metrics.collect`), not kept in step on
every request. Only stores that are a `CountedStore` report them. Invariant: no label
carries an id, so the number of series is fixed whatever the number of uploads.
"""

from __future__ import annotations

from transfer.common.metrics import Metrics
from transfer.store.base import CountedStore, ServerStore


def describe_store_metrics(metrics: Metrics, store: ServerStore) -> None:
    """Describe the store's gauges and read them before every render."""
    metrics.describe(
        "transfer_store_records_read_total", "counter", "Upload records read from storage"
    )
    metrics.describe("transfer_store_partial_uploads", "gauge", "Unfinished uploads tracked")
    metrics.describe(
        "transfer_store_cache_entries", "gauge", "Completed uploads' records held in memory"
    )
    metrics.describe("transfer_store_cache_capacity", "gauge", "The bound on that (--cache-size)")
    metrics.describe(
        "transfer_records_expired_total", "counter", "Completed records removed by --record-ttl"
    )
    if isinstance(store, CountedStore):
        metrics.collect(lambda: _refresh(metrics, store))


def _refresh(metrics: Metrics, store: CountedStore) -> None:
    counts = store.counts()
    metrics.set("transfer_store_records_read_total", counts.records_read)
    metrics.set("transfer_store_partial_uploads", counts.partials)
    metrics.set("transfer_store_cache_entries", counts.cached)
    metrics.set("transfer_store_cache_capacity", counts.cache_capacity)
