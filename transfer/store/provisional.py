"""What `FileStore.deferred` keeps of an upload created inside its scope (see
`filestore.py`): the parameters that are not on disk yet, and the `.part` held open for
the first chunk.

Invariant: a descriptor is closed exactly once, by whoever holds it last: the first
chunk's writer (which takes `fd`), `Provisional.close`, or `close_created` when the
creating call was cancelled after it opened the file.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from transfer.core.records import UploadInfo, UploadSpec


@dataclass(slots=True)
class Provisional:
    """An upload created inside `deferred`: it has no `.json` yet."""

    spec: UploadSpec  # as created: what `save_spec` makes durable
    fd: int | None  # its `.part`, open at 0, until the first chunk takes it

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # no I/O to wait for: the writes went to the page cache


def close_created(call: asyncio.Future[tuple[UploadInfo | None, int | None]]) -> None:
    """Done-callback of a creating call nobody awaits any more: close what it opened."""
    fd = None if call.cancelled() or call.exception() else call.result()[1]
    if fd is not None:
        os.close(fd)
