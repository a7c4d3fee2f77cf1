"""The uploader's guard against a step that never moves a file on (`Stall`).

Invariant: after more than `MAX_STALLED` steps in a row that left the server's offset
where it was, the delivery ends in a `TransientError` instead of looping for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

from transfer.core.errors import TransientError

MAX_STALLED = 25


@dataclass(slots=True)
class Stall:
    """Counts steps that moved nothing past `best`: a retry that only re-asks the offset
    "succeeds", so a chunk the server refuses every time must not loop for ever."""

    best: int
    stalled: int = 0

    def observe(self, offset: int) -> None:
        """Raise `TransientError` after more than `MAX_STALLED` steps in a row at `best`."""
        self.stalled = 0 if offset > self.best else self.stalled + 1
        self.best = max(self.best, offset)
        if self.stalled > MAX_STALLED:
            raise TransientError(f"no progress at offset {self.best} after {self.stalled} tries")
