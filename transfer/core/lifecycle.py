"""The upload lifecycle: one literal transition table, pure.

    ABSENT ─create─▶ PARTIAL ─fill─▶ COMPLETE ─finalize─▶ PUBLISHED
                     PARTIAL ◀─reset─ COMPLETE
    PARTIAL, COMPLETE ─delete, expire─▶ ABSENT
    (create on any existing stage, write/declare on PARTIAL and COMPLETE: no move)

- `ABSENT`: no such upload (never created, deleted or expired); the id answers 404 and
  may be created again.
- `PARTIAL`: bytes are missing, or the total is not known yet.
- `COMPLETE`: every byte of a known total is stored, nothing is published yet (the
  completing request, or a crash between the last byte and publication).
- `PUBLISHED`: verified and published. Final: it takes no bytes, is never reset,
  deleted or expired; re-creating it is idempotent.

A `Trigger` names what happened (or is about to), decided by the caller from the bytes:
`write` a chunk was stored and bytes are still missing (or nothing new arrived),
`declare` the total became known, bytes still missing, `fill` the stored bytes reached
the known total (by a chunk, a declared total, or a size given at creation), `finalize`
the whole file verified and was published, `reset` it did not verify and was truncated
to 0 (an empty file is then `fill`ed again at once).

Invariants: `TRANSITIONS` is the whole lifecycle; a pair missing from it is illegal, and
`next_stage` raises the coded refusal for it (`upload_not_found`, `upload_complete`)
without changing anything. The store, not this module, is the truth about where an
upload stands: `stage_of` reads it off an `UploadInfo`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from transfer.core.errors import Code, Conflict, NotFound, ProtocolError
from transfer.core.records import UploadInfo


class Stage(enum.StrEnum):
    ABSENT = "absent"
    PARTIAL = "partial"
    COMPLETE = "complete"  # all bytes stored, not published
    PUBLISHED = "published"


class Trigger(enum.StrEnum):
    CREATE = "create"
    WRITE = "write"
    DECLARE = "declare"
    FILL = "fill"
    FINALIZE = "finalize"
    RESET = "reset"
    DELETE = "delete"
    EXPIRE = "expire"


_A, _P, _C, _D = Stage.ABSENT, Stage.PARTIAL, Stage.COMPLETE, Stage.PUBLISHED
_T = Trigger

TRANSITIONS: Final[Mapping[tuple[Stage, Trigger], Stage]] = MappingProxyType(
    {
        (_A, _T.CREATE): _P,
        (_P, _T.CREATE): _P,  # a re-POST: idempotent
        (_P, _T.WRITE): _P,
        (_P, _T.DECLARE): _P,
        (_P, _T.FILL): _C,
        (_P, _T.DELETE): _A,
        (_P, _T.EXPIRE): _A,
        (_C, _T.CREATE): _C,
        (_C, _T.WRITE): _C,  # a chunk wholly below the offset: nothing new
        (_C, _T.DECLARE): _C,  # the same total again
        (_C, _T.FILL): _C,
        (_C, _T.FINALIZE): _D,
        (_C, _T.RESET): _P,
        (_C, _T.DELETE): _A,
        (_C, _T.EXPIRE): _A,
        (_D, _T.CREATE): _D,  # a re-POST answers the record
    }
)

# Why a pair is missing from the table, by the stage it starts from.
_REFUSALS: Final[Mapping[Stage, tuple[Code, str]]] = MappingProxyType(
    {
        _A: (Code.UPLOAD_NOT_FOUND, "no such upload"),
        _D: (Code.UPLOAD_COMPLETE, "the upload is complete and published"),
        # Only a bug finalizes or resets an upload whose bytes are missing.
        _P: (Code.INTERNAL_ERROR, "the upload's bytes are not all stored"),
    }
)


def next_stage(stage: Stage, trigger: Trigger) -> Stage:
    """The stage after `trigger` happens to an upload in `stage`.

    Raises:
        NotFound: `upload_not_found`, for anything but `create` on an absent upload.
        Conflict: `upload_complete`, for anything but `create` on a published upload.
        ProtocolError: `internal_error`, for `finalize` or `reset` on a partial upload.
    """
    after = TRANSITIONS.get((stage, trigger))
    if after is None:
        raise refusal(stage, trigger)
    return after


def allows(stage: Stage, trigger: Trigger) -> bool:
    return (stage, trigger) in TRANSITIONS


def refusal(stage: Stage, trigger: Trigger) -> ProtocolError:
    """The coded error for an illegal pair (a `NotFound`, a `Conflict` or, for a bug, a
    plain `ProtocolError`)."""
    code, why = _REFUSALS[stage]
    detail = f"{why}: '{trigger}' is not allowed"
    if code.status == 404:
        return NotFound(code, detail)
    if code.status == 409:
        return Conflict(code, detail)
    return ProtocolError(code, detail)


def stage_of(info: UploadInfo | None) -> Stage:
    """Where a stored upload stands (`None`: the store has no such upload)."""
    if info is None:
        return Stage.ABSENT
    if info.record is not None:
        return Stage.PUBLISHED
    return Stage.COMPLETE if info.state.complete else Stage.PARTIAL


def require(info: UploadInfo | None, trigger: Trigger) -> Stage:
    """`next_stage` for a stored upload: where `trigger` would take it, or its refusal.

    E.g. before a DELETE: `require(await store.get(upload_id), Trigger.DELETE)` raises
    404 `upload_not_found` or 409 `upload_complete`.

    Raises:
        ProtocolError: as `next_stage`.
    """
    return next_stage(stage_of(info), trigger)


class Lifecycle:
    """One upload's stage, moved only through `TRANSITIONS` (for models and tests)."""

    __slots__ = ("stage",)

    def __init__(self, stage: Stage = Stage.ABSENT) -> None:
        self.stage = stage

    def apply(self, trigger: Trigger) -> Stage:
        """Move on `trigger`; an illegal one raises (see `next_stage`) and moves nothing."""
        self.stage = next_stage(self.stage, trigger)
        return self.stage
