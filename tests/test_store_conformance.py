"""The store conformance suite (tests/store_conformance.py) over every store we have.

`stores` opens a store over fresh storage, and reopens it over the same storage to
simulate a restart after a crash: a new `FileStore` on the same directory (its `open()`
runs recovery), a new `MemoryStore` on the same `MemoryBacking`, a new `S3Store` on the
same bucket prefix and PostgreSQL schema (SeaweedFS and PostgreSQL started by
tests/services.py; tests/test_store_s3.py adds races and real multipart uploads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from store_conformance import StoreConformance, StoreFactory

from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryBacking, MemoryStore

# The S3 store's services and its `s3_stores` factory, registered once for the session
# (importing the fixtures into two modules would start each service twice).
pytestmark = pytest.mark.timeout(30)


@dataclass
class FileStores:
    data_dir: Path

    def open(self) -> FileStore:
        store = FileStore(self.data_dir)
        store.open()
        return store


@dataclass
class MemoryStores:
    backing: MemoryBacking = field(default_factory=MemoryBacking)

    def open(self) -> MemoryStore:
        return MemoryStore(self.backing)


@pytest.fixture(params=["file", "memory", "s3"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "file":
        return FileStores(tmp_path / "data")
    if request.param == "s3":
        factory: StoreFactory = request.getfixturevalue("s3_stores")
        return factory
    return MemoryStores()


class TestStores(StoreConformance):
    """Every conformance test, once per store."""
