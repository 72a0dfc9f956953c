"""The connection's lifecycle state machine: states, inputs and the table between them.

Pure: no I/O, no clock. An illegal transition raises and leaves the state unchanged
(the h11 ``_state.py`` pattern).
"""

from __future__ import annotations

import enum

__all__ = ["Input", "State", "StateMachine"]


class State(enum.Enum):
    """Lifecycle state of a :class:`~resilient_ws.Connection`."""

    CONNECTING = "connecting"
    """Before the first link is open."""
    OPEN = "open"
    """A link is open and the send queue has been flushed."""
    RECONNECTING = "reconnecting"
    """The link is down; waiting for or making the next attempt."""
    CLOSING = "closing"
    """The application asked to close; flushing and closing the link."""
    CLOSED = "closed"
    """Closed for good: by the application, a fatal error or an exhausted retry budget."""


class Input(enum.Enum):
    LINK_UP = "link_up"
    LINK_DOWN = "link_down"
    CLOSE = "close"
    FAIL = "fail"
    FINISHED = "finished"


_TABLE: dict[State, dict[Input, State]] = {
    State.CONNECTING: {
        Input.LINK_UP: State.OPEN,
        Input.LINK_DOWN: State.RECONNECTING,
        Input.CLOSE: State.CLOSING,
        Input.FAIL: State.CLOSED,
    },
    State.OPEN: {
        Input.LINK_DOWN: State.RECONNECTING,
        Input.CLOSE: State.CLOSING,
        Input.FAIL: State.CLOSED,
    },
    State.RECONNECTING: {
        Input.LINK_UP: State.OPEN,
        Input.LINK_DOWN: State.RECONNECTING,
        Input.CLOSE: State.CLOSING,
        Input.FAIL: State.CLOSED,
    },
    State.CLOSING: {
        Input.LINK_DOWN: State.CLOSING,
        Input.FAIL: State.CLOSED,
        Input.FINISHED: State.CLOSED,
    },
    State.CLOSED: {},
}


class StateMachine:
    """Holds the current :class:`State` and applies inputs through the table."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.CONNECTING

    def apply(self, event: Input) -> State:
        """Move to the state the table gives for ``event`` and return it.

        Raises:
            RuntimeError: ``event`` is not allowed in the current state; the state is unchanged.
        """
        try:
            self.state = _TABLE[self.state][event]
        except KeyError:
            message = f"{event.value} is not allowed in state {self.state.value}"
            raise RuntimeError(message) from None
        return self.state
