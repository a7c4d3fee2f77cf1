"""The sender's file lifecycle: three journaled states and one literal transition table.

    (journaled) -> GENERATED
    GENERATED, FAILED --digest matched | protocol checked--> CONFIRMED     (terminal)
    GENERATED, FAILED --refused | spool damaged | gave up | digest differs--> FAILED
    GENERATED, FAILED --requeued--> unchanged                        (a new run starts)

Invariants:
- `TRANSITIONS` is the whole lifecycle: a (state, event) pair missing from it is an
  illegal move. `next_state` raises `IllegalTransition` for it and changes nothing
  (states are values: the caller still holds the one it had).
- A file enters the lifecycle as GENERATED, journaled once its bytes are durable; no
  event leads back to GENERATED from another state.
- CONFIRMED is terminal: no event leaves it, so a confirmed file is never re-queued and
  never uploaded again. A server digest equal to the journaled one confirms; a server
  that offers no whole-file digest (a third-party tus server) confirms only by what its
  protocol lets the sender check (`protocol checked`), and the journal says which.
- FAILED is not terminal: every run re-queues it, and a later delivery may confirm it.
- Being stopped (`Interrupted`) is not an event: the journal keeps the file's state and
  the next run re-queues it.
- The state values are the journal's on-disk spelling: never rename them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from transfer.core.errors import IllegalTransition


class FileState(enum.Enum):
    """A journaled file's latest state; the value is what the journal stores."""

    GENERATED = "generated"  # durable in the spool (or a journaled path), not yet confirmed
    CONFIRMED = "confirmed"  # the server holds it with the journaled digest
    FAILED = "failed"  # the last delivery gave up; the next run tries again


class FileEvent(enum.Enum):
    """What can happen to a journaled file."""

    REQUEUED = "requeued"  # a run queues an unconfirmed file for delivery
    DIGEST_MATCHED = "digest_matched"  # the server completed it with the journaled digest
    DIGEST_DIFFERS = "digest_differs"  # the server completed it with another digest
    # the server completed it and offers no whole-file digest: length (and per-chunk
    # checksums, where the protocol has them) checked instead
    PROTOCOL_CHECKED = "protocol_checked"
    REFUSED = "refused"  # a refusal retrying will not change (4xx, repeated mismatch)
    SPOOL_DAMAGED = "spool_damaged"  # the local bytes no longer match the journal
    GAVE_UP = "gave_up"  # transient failures outlasted the retry budget


_G, _C, _F = FileState.GENERATED, FileState.CONFIRMED, FileState.FAILED

TRANSITIONS: Final[Mapping[tuple[FileState, FileEvent], FileState]] = MappingProxyType(
    {
        (_G, FileEvent.REQUEUED): _G,
        (_G, FileEvent.DIGEST_MATCHED): _C,
        (_G, FileEvent.PROTOCOL_CHECKED): _C,
        (_G, FileEvent.DIGEST_DIFFERS): _F,
        (_G, FileEvent.REFUSED): _F,
        (_G, FileEvent.SPOOL_DAMAGED): _F,
        (_G, FileEvent.GAVE_UP): _F,
        (_F, FileEvent.REQUEUED): _F,
        (_F, FileEvent.DIGEST_MATCHED): _C,
        (_F, FileEvent.PROTOCOL_CHECKED): _C,
        (_F, FileEvent.DIGEST_DIFFERS): _F,
        (_F, FileEvent.REFUSED): _F,
        (_F, FileEvent.SPOOL_DAMAGED): _F,
        (_F, FileEvent.GAVE_UP): _F,
    }
)


def allows(state: FileState, event: FileEvent) -> bool:
    """Whether `event` is a legal move from `state`."""
    return (state, event) in TRANSITIONS


def next_state(state: FileState, event: FileEvent) -> FileState:
    """The state after `event` happens to a file in `state`.

    Raises:
        IllegalTransition: the table has no move for (state, event).
    """
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(state, event) from None
