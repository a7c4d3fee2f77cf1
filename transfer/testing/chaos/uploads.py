"""The server-side view of the kill moments: `DATA_DIR/uploads/*.part` files watched for
bytes arriving (a chunk body being written) and for complete, unpublished files (the
moment between the last byte and publication).

Invariants: it only reads (`scandir`, `stat`, the upload's `.json` record); a file that
disappears while it looks (published, deleted) is simply not seen this time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Uploads:
    """Watches `DATA_DIR/uploads/` between two looks."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "uploads"
        self._totals: dict[str, int] = {}
        self._sizes = self._parts()

    def look(self) -> tuple[bool, bool]:
        """(a chunk body is arriving now, some upload holds all its bytes unpublished)."""
        before, self._sizes = self._sizes, self._parts()
        arriving = complete = False
        for upload_id, size in self._sizes.items():
            total = self._total(upload_id)
            if total is None or size == 0:
                continue
            if size == total:
                complete = True
            elif size > before.get(upload_id, size):  # a chunk is being written or synced
                arriving = True
        return arriving, complete

    def _parts(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return sizes
        for entry in entries:
            if entry.name.endswith(".part"):
                try:
                    sizes[entry.name[:-5]] = entry.stat().st_size
                except FileNotFoundError:  # published while we looked
                    continue
        return sizes

    def _total(self, upload_id: str) -> int | None:
        if upload_id not in self._totals:
            try:
                doc = json.loads((self.dir / f"{upload_id}.json").read_bytes())
            except (OSError, json.JSONDecodeError):
                return None
            if not isinstance(doc.get("size"), int):
                return None
            self._totals[upload_id] = doc["size"]
        return self._totals[upload_id]
