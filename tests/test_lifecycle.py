"""The upload lifecycle table, driven directly: every legal move, every illegal one
refused with its code and without a move, and random histories of a modelled upload
whose stage the table must always agree with (`stage_of` its bytes)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import Code, Conflict, NotFound, ProtocolError
from transfer.core.lifecycle import (
    TRANSITIONS,
    Lifecycle,
    Stage,
    Trigger,
    allows,
    next_stage,
    require,
    stage_of,
)
from transfer.core.protocol import UploadState
from transfer.core.records import FileRecord, UploadInfo, UploadSpec

A, P, C, D = Stage.ABSENT, Stage.PARTIAL, Stage.COMPLETE, Stage.PUBLISHED
T = Trigger

LEGAL = {
    (A, T.CREATE): P,
    (P, T.CREATE): P,
    (P, T.WRITE): P,
    (P, T.DECLARE): P,
    (P, T.FILL): C,
    (P, T.DELETE): A,
    (P, T.EXPIRE): A,
    (C, T.CREATE): C,
    (C, T.WRITE): C,
    (C, T.DECLARE): C,
    (C, T.FILL): C,
    (C, T.FINALIZE): D,
    (C, T.RESET): P,
    (C, T.DELETE): A,
    (C, T.EXPIRE): A,
    (D, T.CREATE): D,
}
ILLEGAL = [pair for pair in itertools.product(Stage, Trigger) if pair not in LEGAL]
REFUSAL_CODE = {A: Code.UPLOAD_NOT_FOUND, D: Code.UPLOAD_COMPLETE, P: Code.INTERNAL_ERROR}


def test_the_table_is_exactly_the_legal_moves() -> None:
    assert dict(TRANSITIONS) == LEGAL


@pytest.mark.parametrize(("stage", "trigger"), list(LEGAL), ids=str)
def test_every_legal_move(stage: Stage, trigger: Trigger) -> None:
    machine = Lifecycle(stage)
    assert allows(stage, trigger)
    assert machine.apply(trigger) is LEGAL[stage, trigger]
    assert machine.stage is LEGAL[stage, trigger]


@pytest.mark.parametrize(("stage", "trigger"), ILLEGAL, ids=str)
def test_an_illegal_move_raises_its_code_and_changes_nothing(
    stage: Stage, trigger: Trigger
) -> None:
    machine = Lifecycle(stage)
    assert not allows(stage, trigger)
    with pytest.raises(ProtocolError) as caught:
        machine.apply(trigger)
    assert caught.value.code == REFUSAL_CODE[stage]
    assert caught.value.status == REFUSAL_CODE[stage].status
    assert machine.stage is stage


def test_refusals_are_the_kinds_clients_and_handlers_catch() -> None:
    with pytest.raises(NotFound):
        next_stage(A, T.DELETE)
    with pytest.raises(Conflict) as caught:
        next_stage(D, T.DELETE)  # DELETE of a published upload: 409 upload_complete
    assert caught.value.problem()["code"] == "upload_complete"


def test_published_is_final_and_absent_is_left_only_by_create() -> None:
    for trigger in Trigger:
        after_published = TRANSITIONS.get((D, trigger), D)
        assert after_published is D
        if trigger is not T.CREATE:
            assert (A, trigger) not in TRANSITIONS


# --- stage_of: what the store says ---------------------------------------------------


def _info(offset: int, total: int | None, published: bool = False) -> UploadInfo:
    record = FileRecord("u", None, offset, {}, {}) if published else None
    return UploadInfo(UploadSpec("u", size=total), UploadState(offset, total), record)


def test_stage_of_reads_the_stored_upload() -> None:
    assert stage_of(None) is A
    assert stage_of(_info(0, None)) is P
    assert stage_of(_info(5, 10)) is P
    assert stage_of(_info(0, 0)) is C
    assert stage_of(_info(10, 10)) is C
    assert stage_of(_info(10, 10, published=True)) is D


def test_require_checks_a_stored_upload_as_delete_does() -> None:
    assert require(_info(5, 10), T.DELETE) is A
    assert require(_info(10, 10), T.DELETE) is A  # complete but unpublished: abortable
    with pytest.raises(NotFound) as missing:
        require(None, T.DELETE)
    assert missing.value.code == Code.UPLOAD_NOT_FOUND
    with pytest.raises(Conflict) as published:
        require(_info(10, 10, published=True), T.DELETE)
    assert published.value.code == Code.UPLOAD_COMPLETE


# --- random histories against a model of the bytes ------------------------------------


@dataclass(frozen=True)
class Model:
    """An upload as bytes: None when absent."""

    offset: int = 0
    total: int | None = None
    published: bool = False

    def info(self) -> UploadInfo:
        return _info(self.offset, self.total, self.published)


Step = tuple[str, int]
TRIGGER_OF = {
    "create": T.CREATE,
    "write": T.WRITE,
    "declare": T.DECLARE,
    "finalize": T.FINALIZE,
    "mismatch": T.RESET,
    "delete": T.DELETE,
    "expire": T.EXPIRE,
}


def _legal(model: Model | None, kind: str) -> bool:
    """Whether a server would let `kind` happen to `model` at all."""
    stage = stage_of(model.info() if model else None)
    if kind == "create":
        return True
    if kind in ("finalize", "mismatch"):
        return stage is C
    return stage in (P, C)


def _after(model: Model | None, kind: str, n: int) -> Model | None:
    """The bytes after a legal step."""
    if kind == "create":
        return model or Model(total=n if n % 3 else None)
    assert model is not None
    if kind == "write":
        top = model.offset + n
        return replace(model, offset=top if model.total is None else min(top, model.total))
    if kind == "declare":
        return replace(model, total=model.offset if model.total is None else model.total)
    if kind == "finalize":
        return replace(model, published=True)
    if kind == "mismatch":
        return replace(model, offset=0)
    return None  # delete, expire


steps = st.lists(st.tuples(st.sampled_from(list(TRIGGER_OF)), st.integers(0, 20)), max_size=40)


@given(steps)
def test_random_histories_keep_the_table_and_the_bytes_in_step(history: list[Step]) -> None:
    model: Model | None = None
    machine = Lifecycle()
    for kind, n in history:
        before = machine.stage
        if not _legal(model, kind):
            with pytest.raises(ProtocolError):
                machine.apply(TRIGGER_OF[kind])
            assert machine.stage is before
            continue
        machine.apply(TRIGGER_OF[kind])
        model = _after(model, kind, n)
        if model is not None and stage_of(model.info()) is C and machine.stage is P:
            machine.apply(T.FILL)  # the step's bytes reached the known total
        assert machine.stage is stage_of(model.info() if model else None)
        assert before is not D or machine.stage is D  # published is final


@given(st.lists(st.sampled_from(list(Trigger)), max_size=60))
def test_random_trigger_sequences_move_only_along_the_table(triggers: list[Trigger]) -> None:
    machine = Lifecycle()
    for trigger in triggers:
        before = machine.stage
        try:
            after = machine.apply(trigger)
        except ProtocolError as exc:
            assert exc.code == REFUSAL_CODE[before]
            assert machine.stage is before
            continue
        assert after is LEGAL[before, trigger]
        if after is D:
            assert (before, trigger) in ((C, T.FINALIZE), (D, T.CREATE))
        if before is A:
            assert trigger is T.CREATE
