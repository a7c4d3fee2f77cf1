"""The sender's file lifecycle table, driven directly: every legal move, every illegal one,
and random event sequences (Hypothesis) against the invariants of `core.filestate`."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import IllegalTransition, TransferError
from transfer.core.filestate import TRANSITIONS, FileEvent, FileState, allows, next_state

G, C, F = FileState.GENERATED, FileState.CONFIRMED, FileState.FAILED
_FAILING = (FileEvent.DIGEST_DIFFERS, FileEvent.REFUSED, FileEvent.SPOOL_DAMAGED, FileEvent.GAVE_UP)

# The table restated by hand, so an accidental edit of TRANSITIONS fails here.
LEGAL = {
    (G, FileEvent.REQUEUED): G,
    (F, FileEvent.REQUEUED): F,
    (G, FileEvent.DIGEST_MATCHED): C,
    (F, FileEvent.DIGEST_MATCHED): C,
    (G, FileEvent.PROTOCOL_CHECKED): C,
    (F, FileEvent.PROTOCOL_CHECKED): C,
    **{(G, event): F for event in _FAILING},
    **{(F, event): F for event in _FAILING},
}
ILLEGAL = [pair for pair in itertools.product(FileState, FileEvent) if pair not in LEGAL]


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    assert dict(TRANSITIONS) == LEGAL


@pytest.mark.parametrize(("state", "event"), sorted(LEGAL, key=str))
def test_every_legal_move(state: FileState, event: FileEvent) -> None:
    assert allows(state, event)
    assert next_state(state, event) is LEGAL[state, event]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_every_illegal_move_raises_and_changes_nothing(state: FileState, event: FileEvent) -> None:
    current = state
    assert not allows(current, event)
    with pytest.raises(IllegalTransition) as caught:
        current = next_state(current, event)
    assert current is state
    assert (caught.value.state, caught.value.event) == (state, event)
    assert str(state) in str(caught.value) and str(event) in str(caught.value)
    assert isinstance(caught.value, TransferError)


def test_confirmed_has_no_way_out() -> None:
    assert [event for event in FileEvent if allows(C, event)] == []


def test_the_table_cannot_be_edited_at_run_time() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[C, FileEvent.REQUEUED] = G  # type: ignore[index]


def test_state_values_are_the_journals_spelling() -> None:
    assert {s.value for s in FileState} == {"generated", "confirmed", "failed"}


class Walk:
    """A file driven through events: illegal ones raise and leave `state` as it was."""

    def __init__(self) -> None:
        self.state = FileState.GENERATED
        self.history = [self.state]

    def apply(self, event: FileEvent) -> None:
        before = self.state
        try:
            self.state = next_state(self.state, event)
        except IllegalTransition:
            assert self.state is before
            assert not allows(before, event)
            return
        self.history.append(self.state)


@given(st.lists(st.sampled_from(FileEvent), max_size=40))
def test_random_event_sequences_keep_the_invariants(events: list[FileEvent]) -> None:
    walk = Walk()
    for event in events:
        walk.apply(event)
    confirmed_at = walk.history.index(C) if C in walk.history else len(walk.history)
    # CONFIRMED is terminal: once reached, every later state is CONFIRMED.
    assert all(state is C for state in walk.history[confirmed_at:])
    # Nothing leads back to GENERATED: it is only ever a prefix of the history.
    generated = [state is G for state in walk.history]
    assert generated == sorted(generated, reverse=True)
    # Only a matching digest, or the checks a protocol without one allows, confirms.
    confirming = {FileEvent.DIGEST_MATCHED, FileEvent.PROTOCOL_CHECKED}
    assert (C in walk.history) == bool(confirming & set(events))


@given(st.sampled_from(FileState), st.lists(st.sampled_from(FileEvent), max_size=20))
def test_every_state_reached_is_a_state_the_table_knows(
    start: FileState, events: list[FileEvent]
) -> None:
    state = start
    for event in events:
        if allows(state, event):
            state = next_state(state, event)
            assert state in FileState
        else:
            with pytest.raises(IllegalTransition):
                next_state(state, event)
