from __future__ import annotations

import itertools

import pytest

from resilient_ws._core.state import Input, State, StateMachine

CONNECTING, OPEN, RECONNECTING = State.CONNECTING, State.OPEN, State.RECONNECTING
CLOSING, CLOSED = State.CLOSING, State.CLOSED

# Written out independently of _state._TABLE: a change to the table must change this too.
EXPECTED: dict[tuple[State, Input], State] = {
    (CONNECTING, Input.LINK_UP): OPEN,
    (CONNECTING, Input.LINK_DOWN): RECONNECTING,
    (CONNECTING, Input.CLOSE): CLOSING,
    (CONNECTING, Input.FAIL): CLOSED,
    (OPEN, Input.LINK_DOWN): RECONNECTING,
    (OPEN, Input.CLOSE): CLOSING,
    (OPEN, Input.FAIL): CLOSED,
    (RECONNECTING, Input.LINK_UP): OPEN,
    (RECONNECTING, Input.LINK_DOWN): RECONNECTING,
    (RECONNECTING, Input.CLOSE): CLOSING,
    (RECONNECTING, Input.FAIL): CLOSED,
    (CLOSING, Input.LINK_DOWN): CLOSING,
    (CLOSING, Input.FAIL): CLOSED,
    (CLOSING, Input.FINISHED): CLOSED,
}

ALL_PAIRS = list(itertools.product(State, Input))


def machine_in(state: State) -> StateMachine:
    machine = StateMachine()
    machine.state = state
    return machine


def test_starts_connecting() -> None:
    assert StateMachine().state is State.CONNECTING


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p in EXPECTED])
def test_allowed_transition(state: State, event: Input) -> None:
    machine = machine_in(state)
    assert machine.apply(event) is EXPECTED[state, event]
    assert machine.state is EXPECTED[state, event]


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p not in EXPECTED])
def test_illegal_transition_raises_and_keeps_state(state: State, event: Input) -> None:
    machine = machine_in(state)
    with pytest.raises(RuntimeError, match=f"{event.value} is not allowed in state {state.value}"):
        machine.apply(event)
    assert machine.state is state


def test_a_normal_life() -> None:
    machine = StateMachine()
    events = [Input.LINK_UP, Input.LINK_DOWN, Input.LINK_DOWN, Input.LINK_UP, Input.CLOSE]
    assert [machine.apply(event) for event in events] == [
        OPEN,
        RECONNECTING,
        RECONNECTING,
        OPEN,
        CLOSING,
    ]
    assert machine.apply(Input.FINISHED) is CLOSED
