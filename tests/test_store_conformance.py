"""The store conformance suite (tests/store_conformance.py) over every store we have.

`stores` opens a store over fresh storage, and reopens it over the same storage to
simulate a restart after a crash: a new `FileStore` on the same directory (its `open()`
runs recovery), a new `MemoryStore` on the same `MemoryBacking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from store_conformance import StoreConformance, StoreFactory

from transfer.store.filestore import FileStore
from transfer.store.memory import MemoryBacking, MemoryStore

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


@pytest.fixture(params=["file", "memory"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "file":
        return FileStores(tmp_path / "data")
    return MemoryStores()


class TestStores(StoreConformance):
    """Every conformance test, once per store."""
