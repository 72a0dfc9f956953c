"""The pure replay core (docs/protocol.md sections 2-4), driven without sockets or clocks."""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from resilient_ws import ProtocolViolation
from resilient_ws._core.outbox import Message, payload_size
from resilient_ws._core.protocol import ACK_OUT_OF_RANGE, MALFORMED
from resilient_ws._core.replay import Inbound, LostRange, Outbound


def recorded(outbound: Outbound, *messages: Message) -> list[int]:
    return [outbound.record(message, payload_size(message)) for message in messages]


def state(outbound: Outbound) -> tuple[int, int, int, int, int, list[tuple[int, Message]]]:
    return (
        outbound.sent,
        outbound.acked,
        outbound.replay_from,
        outbound.count,
        outbound.size,
        outbound.unacked(),
    )


# ---- LostRange -----------------------------------------------------------------------------------


def test_gap_is_an_inclusive_range_or_open_ended() -> None:
    assert LostRange(3, 3) == LostRange(3, 3)
    assert LostRange(1, None).last is None
    with pytest.raises(ValueError, match="first"):
        LostRange(0, 1)
    with pytest.raises(ValueError, match="last"):
        LostRange(5, 4)


def test_gap_is_frozen() -> None:
    gap = LostRange(1, 2)
    with pytest.raises(AttributeError):
        gap.first = 2  # type: ignore[misc]


def test_protocol_violation_carries_code_and_reason() -> None:
    error = ProtocolViolation(ACK_OUT_OF_RANGE, "ack=9 but only 2 messages were sent")
    assert error.code == 4002
    assert error.reason == "ack=9 but only 2 messages were sent"
    assert "4002" in str(error)
    assert MALFORMED == 4001


# ---- Outbound: numbering and bounds -------------------------------------------------------


def test_outbound_starts_empty() -> None:
    outbound = Outbound(max_messages=4, max_bytes=100)
    assert state(outbound) == (0, 0, 1, 0, 0, [])


@pytest.mark.parametrize(("max_messages", "max_bytes"), [(0, 10), (10, 0), (-1, 10)])
def test_outbound_refuses_bounds_below_one(max_messages: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        Outbound(max_messages=max_messages, max_bytes=max_bytes)


def test_record_numbers_from_one_and_keeps_for_replay() -> None:
    outbound = Outbound(max_messages=4, max_bytes=100)
    assert recorded(outbound, "a", b"bb", "€") == [1, 2, 3]
    assert state(outbound) == (3, 0, 1, 3, 6, [(1, "a"), (2, b"bb"), (3, "€")])


def test_record_drops_oldest_past_max_messages() -> None:
    outbound = Outbound(max_messages=2, max_bytes=100)
    recorded(outbound, "a", "b", "c")
    assert outbound.replay_from == 2
    assert outbound.unacked() == [(2, "b"), (3, "c")]
    assert (outbound.count, outbound.size) == (2, 2)


def test_record_drops_oldest_past_max_bytes() -> None:
    outbound = Outbound(max_messages=10, max_bytes=5)
    recorded(outbound, "aa", "bb", "ccc")
    assert outbound.unacked() == [(2, "bb"), (3, "ccc")]
    assert outbound.size == 5


def test_message_larger_than_max_bytes_is_numbered_not_kept_and_clears_older() -> None:
    outbound = Outbound(max_messages=10, max_bytes=5)
    recorded(outbound, "a", "b")
    assert outbound.record("toolarge", 8) == 3
    # Keeping 1 and 2 behind the hole at 3 could not help a resend.
    assert state(outbound) == (3, 0, 4, 0, 0, [])
    assert outbound.record("c", 1) == 4
    assert outbound.unacked() == [(4, "c")]


def test_message_exactly_max_bytes_is_kept() -> None:
    outbound = Outbound(max_messages=10, max_bytes=5)
    recorded(outbound, "a")
    outbound.record("fiver", 5)
    assert outbound.unacked() == [(2, "fiver")]


def test_record_past_max_bytes_drops_just_enough_oldest_messages() -> None:
    outbound = Outbound(max_messages=10, max_bytes=6)
    recorded(outbound, "a", "", "bb", "c")  # 4 bytes; an empty message counts too
    outbound.record("dddd", 4)  # 8 bytes: "a", "" and "bb" must go, not "c"
    assert state(outbound) == (5, 0, 4, 2, 5, [(4, "c"), (5, "dddd")])
    assert outbound.overflowed == 3


def test_steady_overflow_keeps_the_newest_and_holds_no_dropped_message() -> None:
    outbound = Outbound(max_messages=4, max_bytes=10**6)
    messages = [bytes([n % 256]) * 3 + str(n).encode() for n in range(1, 201)]

    def references() -> list[int]:
        return [sys.getrefcount(message) for message in messages]

    baseline = references()
    for message in messages:
        outbound.record(message, len(message))
    del message  # the loop's own reference
    assert outbound.unacked() == list(zip(range(197, 201), messages[-4:], strict=True))
    assert outbound.overflowed == 196
    # What was dropped is no longer referenced: memory is bounded by the buffer's bounds.
    held = [now - before for now, before in zip(references(), baseline, strict=True)]
    assert held == [0] * 196 + [1] * 4
    outbound.ack(200)
    assert references() == baseline


# ---- Outbound: acks -----------------------------------------------------------------------


def test_ack_drops_acknowledged_messages() -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    recorded(outbound, "a", "bb", "ccc")
    outbound.ack(2)
    assert state(outbound) == (3, 2, 3, 1, 3, [(3, "ccc")])
    outbound.ack(3)
    assert state(outbound) == (3, 3, 4, 0, 0, [])


def test_one_ack_releases_a_long_range_and_its_bytes() -> None:
    outbound = Outbound(max_messages=1000, max_bytes=10**6)
    recorded(outbound, *(f"m{n}" for n in range(1, 101)))
    outbound.ack(90)
    assert outbound.unacked() == [(n, f"m{n}") for n in range(91, 101)]
    assert (outbound.count, outbound.size) == (10, 9 * 3 + 4)
    recorded(outbound, "x")
    outbound.ack(101)
    assert state(outbound) == (101, 101, 102, 0, 0, [])


def test_equal_ack_is_idempotent() -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    recorded(outbound, "a", "b")
    outbound.ack(1)
    before = state(outbound)
    outbound.ack(1)
    assert state(outbound) == before


def test_ack_zero_before_anything_sent_is_legal() -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    outbound.ack(0)
    assert state(outbound) == (0, 0, 1, 0, 0, [])


def test_ack_of_messages_already_dropped_on_overflow() -> None:
    outbound = Outbound(max_messages=1, max_bytes=100)
    recorded(outbound, "a", "b", "c")
    outbound.ack(1)
    assert (outbound.acked, outbound.replay_from) == (1, 3)
    outbound.ack(3)
    assert (outbound.acked, outbound.replay_from, outbound.count) == (3, 4, 0)


@pytest.mark.parametrize(
    ("earlier", "number", "code", "reason"),
    [
        (None, 4, ACK_OUT_OF_RANGE, "only 3 messages were sent"),
        (2, 1, ACK_OUT_OF_RANGE, "below the earlier ack=2"),
        (None, -1, MALFORMED, "negative"),
    ],
)
def test_bad_ack_is_a_violation_and_changes_nothing(
    earlier: int | None, number: int, code: int, reason: str
) -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    recorded(outbound, "a", "b", "c")
    if earlier is not None:
        outbound.ack(earlier)
    before = state(outbound)
    with pytest.raises(ProtocolViolation, match=reason) as caught:
        outbound.ack(number)
    assert caught.value.code == code
    assert state(outbound) == before


# ---- Outbound: resume and restart ---------------------------------------------------------


def test_resume_resends_what_the_peer_lacks() -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    recorded(outbound, "a", "b", "c")
    assert outbound.resume(1) == (None, [(2, "b"), (3, "c")])
    # The peer's received acknowledges: message 1 is released.
    assert (outbound.acked, outbound.replay_from, outbound.count) == (1, 2, 2)


def test_resume_when_the_peer_has_everything() -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    recorded(outbound, "a", "b")
    assert outbound.resume(2) == (None, [])
    assert (outbound.acked, outbound.replay_from) == (2, 3)


def test_resume_of_an_empty_session() -> None:
    assert Outbound(max_messages=10, max_bytes=100).resume(0) == (None, [])


def test_resume_past_overflow_reports_the_peers_gap() -> None:
    outbound = Outbound(max_messages=2, max_bytes=100)
    recorded(outbound, "a", "b", "c", "d", "e")
    assert outbound.replay_from == 4
    assert outbound.resume(1) == (LostRange(2, 3), [(4, "d"), (5, "e")])


def test_resume_just_at_replay_from_has_no_gap() -> None:
    outbound = Outbound(max_messages=2, max_bytes=100)
    recorded(outbound, "a", "b", "c")
    assert outbound.resume(1) == (None, [(2, "b"), (3, "c")])


def test_resume_after_an_oversize_message_reports_it_lost() -> None:
    outbound = Outbound(max_messages=10, max_bytes=4)
    recorded(outbound, "a", "hugemessage")
    assert outbound.resume(0) == (LostRange(1, 2), [])


@pytest.mark.parametrize(
    ("peer_received", "code", "reason"),
    [
        (4, ACK_OUT_OF_RANGE, "only 3 messages were sent"),
        (0, ACK_OUT_OF_RANGE, "below its earlier ack=1"),
        (-1, MALFORMED, "negative"),
    ],
)
def test_bad_resume_is_a_violation_and_changes_nothing(
    peer_received: int, code: int, reason: str
) -> None:
    outbound = Outbound(max_messages=10, max_bytes=100)
    recorded(outbound, "a", "b", "c")
    outbound.ack(1)
    before = state(outbound)
    with pytest.raises(ProtocolViolation, match=reason) as caught:
        outbound.resume(peer_received)
    assert caught.value.code == code
    assert state(outbound) == before


def test_restart_returns_unacked_and_numbers_from_one_again() -> None:
    outbound = Outbound(max_messages=2, max_bytes=100)
    recorded(outbound, "a", "b", "c", "d")
    outbound.ack(2)
    assert outbound.restart() == [(3, "c"), (4, "d")]
    assert state(outbound) == (0, 0, 1, 0, 0, [])
    assert outbound.record("c", 1) == 1


# ---- Inbound: counting and acks -----------------------------------------------------------


def test_inbound_starts_empty() -> None:
    inbound = Inbound()
    assert (inbound.received, inbound.acked, inbound.unacked) == (0, 0, 0)
    assert inbound.ack_deadline() is None
    assert not inbound.ack_due(1e9)


@pytest.mark.parametrize(("ack_every", "ack_delay"), [(0, 0.2), (1, -0.1), (1, float("nan"))])
def test_inbound_refuses_bad_settings(ack_every: int, ack_delay: float) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        Inbound(ack_every=ack_every, ack_delay=ack_delay)


def test_deliver_numbers_from_one() -> None:
    inbound = Inbound()
    numbers = []
    for _ in range(3):
        inbound.deliver(0.0)
        numbers.append(inbound.received)
    assert numbers == [1, 2, 3]
    assert (inbound.received, inbound.unacked) == (3, 3)


def test_ack_due_by_time_after_the_first_unacked_message() -> None:
    inbound = Inbound(ack_every=64, ack_delay=0.2)
    inbound.deliver(10.0)
    inbound.deliver(10.15)  # a later message does not move the deadline
    assert inbound.ack_deadline() == pytest.approx(10.2)
    assert not inbound.ack_due(10.19)
    assert inbound.ack_due(10.2)


def test_ack_due_by_count() -> None:
    inbound = Inbound(ack_every=3, ack_delay=100.0)
    inbound.deliver(0.0)
    inbound.deliver(0.0)
    assert not inbound.ack_due(0.0)
    inbound.deliver(0.0)
    assert inbound.ack_due(0.0)


def test_take_ack_returns_received_and_clears_what_is_due() -> None:
    inbound = Inbound(ack_every=2, ack_delay=0.2)
    inbound.deliver(0.0)
    inbound.deliver(0.0)
    assert inbound.take_ack() == 2
    assert (inbound.acked, inbound.unacked) == (2, 0)
    assert inbound.ack_deadline() is None
    assert not inbound.ack_due(100.0)


def test_deadline_restarts_from_the_next_message_after_an_ack() -> None:
    inbound = Inbound(ack_delay=0.2)
    inbound.deliver(1.0)
    inbound.take_ack()
    inbound.deliver(5.0)
    assert inbound.ack_deadline() == pytest.approx(5.2)


def test_take_ack_with_nothing_new_repeats_the_last_value() -> None:
    inbound = Inbound()
    inbound.deliver(0.0)
    assert inbound.take_ack() == 1
    assert inbound.take_ack() == 1


def test_zero_ack_delay_is_due_at_once() -> None:
    inbound = Inbound(ack_delay=0.0)
    inbound.deliver(3.0)
    assert inbound.ack_due(3.0)


# ---- Inbound: when the ack task wakes ------------------------------------------------------


def test_first_message_wakes_an_idle_ack_task_to_arm_its_timer() -> None:
    inbound = Inbound(ack_every=64, ack_delay=0.2)
    assert inbound.ack_timer(0.0) is None  # nothing to acknowledge: sleep until woken
    assert inbound.deliver(1.0)
    assert not inbound.ack_due(1.0)
    assert inbound.ack_timer(1.0) == pytest.approx(1.2)
    assert not inbound.deliver(1.1)  # the armed timer covers it


def test_a_busy_link_wakes_the_ack_task_once_per_ack() -> None:
    inbound = Inbound(ack_every=4, ack_delay=0.2)
    inbound.ack_timer(0.0)
    wakes, acks = [], []
    for n in range(1, 13):
        now = 0.001 * n
        wakes.append(inbound.deliver(now))
        if wakes[-1]:  # the task runs
            if inbound.ack_due(now):
                acks.append(inbound.take_ack())
            inbound.ack_timer(now)
    # Woken for the first message (the task was idle), then only at each 4th: the timer
    # stays armed after an ack, so the next message needs no wake to arm it.
    assert wakes == [True, False, False, True] + [False, False, False, True] * 2
    assert acks == [4, 8, 12]


def test_after_an_ack_the_timer_lingers_once_then_sleeps() -> None:
    inbound = Inbound(ack_every=64, ack_delay=0.2)
    inbound.deliver(0.0)
    inbound.take_ack()
    assert inbound.ack_timer(1.0) == pytest.approx(1.2)
    assert inbound.ack_timer(1.2) is None  # nothing arrived: no timer
    assert inbound.deliver(2.0)


def test_a_message_during_the_linger_is_due_its_own_delay_later() -> None:
    inbound = Inbound(ack_every=64, ack_delay=0.2)
    inbound.deliver(0.0)
    inbound.take_ack()
    assert inbound.ack_timer(1.0) == pytest.approx(1.2)
    assert not inbound.deliver(1.1)  # no wake: the linger fires before it is due
    assert not inbound.ack_due(1.2)
    assert inbound.ack_timer(1.2) == pytest.approx(1.3)


def test_a_busy_link_keeps_its_armed_timer_across_acks() -> None:
    inbound = Inbound(ack_every=2, ack_delay=0.2)
    inbound.deliver(0.0)
    assert inbound.ack_timer(0.0) == pytest.approx(0.2)
    for now in (0.01, 0.05, 0.1):
        inbound.deliver(now)
        inbound.deliver(now)
        assert inbound.ack_due(now)
        inbound.take_ack()
        # Sooner than now + 0.2 and not fired yet: kept, the scope's deadline unmoved.
        assert inbound.ack_timer(now) == pytest.approx(0.2)
    assert inbound.ack_timer(0.2) is None  # fired with nothing unacknowledged


def test_ack_every_one_wakes_for_every_message() -> None:
    inbound = Inbound(ack_every=1, ack_delay=0.2)
    inbound.ack_timer(0.0)
    for now in (0.0, 0.01, 0.02):
        assert inbound.deliver(now)
        assert inbound.ack_due(now)
        inbound.take_ack()
        inbound.ack_timer(now)


def test_a_resume_disarms_the_old_links_timer() -> None:
    inbound = Inbound(ack_every=64, ack_delay=0.2)
    inbound.deliver(0.0)
    inbound.ack_timer(0.0)
    inbound.resume(peer_replay_from=1)
    assert inbound.deliver(5.0)  # the new link's task has no timer yet


# ---- Inbound: resume and loss -------------------------------------------------------------


def test_inbound_resume_without_gap_counts_as_acknowledged() -> None:
    inbound = Inbound()
    inbound.deliver(0.0)
    inbound.deliver(0.0)
    assert inbound.resume(2) is None
    assert inbound.resume(3) is None
    # Our RWS-Received header told the peer: nothing is left to ack.
    assert (inbound.received, inbound.acked, inbound.ack_deadline()) == (2, 2, None)


def test_inbound_resume_after_the_peer_overflowed_reports_the_gap() -> None:
    inbound = Inbound()
    inbound.deliver(0.0)
    assert inbound.resume(5) == LostRange(2, 4)
    assert (inbound.received, inbound.acked) == (4, 4)
    inbound.deliver(1.0)
    assert inbound.received == 5


def test_inbound_resume_of_a_peer_that_sent_nothing() -> None:
    inbound = Inbound()
    assert inbound.resume(1) is None
    assert inbound.received == 0


@pytest.mark.parametrize(("replay_from", "code"), [(0, ACK_OUT_OF_RANGE), (-3, MALFORMED)])
def test_inbound_resume_with_an_impossible_replay_from(replay_from: int, code: int) -> None:
    inbound = Inbound()
    inbound.deliver(0.0)
    with pytest.raises(ProtocolViolation) as caught:
        inbound.resume(replay_from)
    assert caught.value.code == code
    assert (inbound.received, inbound.acked) == (1, 0)
    assert inbound.ack_deadline() == pytest.approx(0.2)


def test_lost_session_reports_an_open_gap_and_restarts_numbering() -> None:
    inbound = Inbound()
    inbound.deliver(0.0)
    inbound.deliver(0.0)
    assert inbound.lost() == LostRange(3, None)
    assert (inbound.received, inbound.acked, inbound.ack_deadline()) == (0, 0, None)
    inbound.deliver(1.0)
    assert inbound.received == 1


# ---- Properties ---------------------------------------------------------------------------


@given(
    st.integers(1, 6),
    st.integers(1, 30),
    st.lists(st.one_of(st.integers(0, 12), st.just(-1)), max_size=40),
)
def test_outbound_buffer_is_bounded_and_contiguous(
    max_messages: int, max_bytes: int, script: list[int]
) -> None:
    """record (size >= 0) or ack (-1) in any order: bounds hold, buffer = replay_from..sent."""
    outbound = Outbound(max_messages=max_messages, max_bytes=max_bytes)
    for step in script:
        if step < 0:
            outbound.ack(outbound.sent)
        else:
            message = "x" * step
            assert outbound.record(message, step) == outbound.sent
        numbers = [number for number, _ in outbound.unacked()]
        assert numbers == list(range(outbound.replay_from, outbound.sent + 1))
        assert outbound.count <= max_messages
        assert outbound.size <= max_bytes
        assert outbound.size == sum(len(m) for _, m in outbound.unacked())
        assert outbound.acked < outbound.replay_from <= outbound.sent + 1


@given(
    st.integers(1, 8),
    st.floats(0.0, 1.0),
    st.lists(st.tuples(st.floats(0.0, 0.5), st.booleans()), max_size=50),
)
def test_acks_are_monotonic_bounded_and_timely(
    ack_every: int, ack_delay: float, script: list[tuple[float, bool]]
) -> None:
    """Deliver with delays; ack whenever due: acks never decrease nor pass received, and no
    message waits past ack_delay or ack_every once checked."""
    inbound = Inbound(ack_every=ack_every, ack_delay=ack_delay)
    now, last_ack = 0.0, 0
    for delay, arrives in script:
        now += delay
        if arrives:
            inbound.deliver(now)
        if inbound.ack_due(now):
            value = inbound.take_ack()
            assert last_ack <= value == inbound.received
            last_ack = value
        assert inbound.unacked < ack_every
        deadline = inbound.ack_deadline()
        assert (deadline is None) == (inbound.unacked == 0)
        assert deadline is None or deadline > now


@given(
    st.integers(1, 8),
    st.floats(0.0, 1.0),
    st.lists(st.floats(0.0, 0.5), max_size=60),
)
def test_an_ack_task_woken_only_when_told_acks_every_message_in_time(
    ack_every: int, ack_delay: float, gaps: list[float]
) -> None:
    """Messages arrive after the given gaps; the ack task runs only when deliver() says
    so or its timer fires. Every message is acknowledged within ack_delay of its arrival,
    never more than ack_every wait, and a task that wakes acks or re-arms."""
    inbound = Inbound(ack_every=ack_every, ack_delay=ack_delay)
    arrivals: list[float] = []
    acks: list[tuple[float, int]] = []
    timer = inbound.ack_timer(0.0)

    def task_runs(now: float) -> float | None:
        if inbound.ack_due(now):
            acks.append((now, inbound.take_ack()))
        return inbound.ack_timer(now)

    now = 0.0
    for gap in gaps:
        now += gap
        while timer is not None and timer <= now:
            timer = task_runs(timer)
        arrivals.append(now)
        if inbound.deliver(now):
            timer = task_runs(now)
        assert inbound.unacked < ack_every
    for _ in range(3):  # after the last message: due, then linger, then sleep
        if timer is None:
            break
        timer = task_runs(timer)
    assert timer is None
    assert inbound.unacked == 0
    for number, arrived in enumerate(arrivals, 1):
        acked_at = next(at for at, value in acks if value >= number)
        assert acked_at <= arrived + ack_delay + 1e-9


# ---- A model of two peers over a lossy link -----------------------------------------------


@dataclass
class Side:
    """One peer: its replay halves, what its application received, what it sent."""

    outbound: Outbound
    inbound: Inbound
    # What the application saw, per session: ("msg", number) or ("gap", first, last).
    log: list[list[tuple[object, ...]]] = field(default_factory=lambda: [[]])
    # Payloads recorded, per session: sent[session][n - 1] is message n.
    sent: list[list[Message]] = field(default_factory=lambda: [[]])
    # Accepted by send() while no link was up; recorded when one is.
    waiting: deque[Message] = field(default_factory=deque)


@dataclass(frozen=True)
class Data:
    message: Message


@dataclass(frozen=True)
class Ack:
    number: int


Frame = Data | Ack


class TwoPeers(RuleBasedStateMachine):
    """A client and a server exchanging data and acks; the link dies and resumes at will.

    A dying link loses every frame still in flight (TCP delivers a prefix, then nothing);
    messages sent while it is down wait, and are recorded after the resend. Each
    application must see, per session: the very payloads the peer numbered, in order, no
    duplicates, and every missing number in a gap reported before the next message.
    """

    overflow = True  # whether bounds are small enough to overflow
    sessions_lost = False  # whether the server may forget the session (a subclass rule)

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.link_up = True
        self.forgotten = False  # the server lost the session while the link was down
        self.payloads = 0
        self.max_messages = 0
        self.max_bytes = 0
        self.ack_every = 1
        self.ack_delay = 0.0
        self.sides: dict[str, Side] = {}
        # In flight, per direction, named by the receiving side.
        self.wire: dict[str, deque[Frame]] = {"client": deque(), "server": deque()}

    @initialize(
        max_messages=st.integers(1, 3),
        max_bytes=st.integers(4, 24),
        ack_every=st.integers(1, 5),
        ack_delay=st.floats(0.0, 1.0),
    )
    def setup(self, max_messages: int, max_bytes: int, ack_every: int, ack_delay: float) -> None:
        if self.overflow:
            self.max_messages, self.max_bytes = max_messages, max_bytes
        else:
            self.max_messages, self.max_bytes = 10**9, 10**12
        self.ack_every, self.ack_delay = ack_every, ack_delay
        self.sides = {"client": self.new_side(), "server": self.new_side()}

    def new_side(self) -> Side:
        return Side(
            Outbound(max_messages=self.max_messages, max_bytes=self.max_bytes),
            Inbound(ack_every=self.ack_every, ack_delay=self.ack_delay),
        )

    @staticmethod
    def peer(name: str) -> str:
        return "server" if name == "client" else "client"

    # -- sending ------------------------------------------------------------------------

    def transmit(self, name: str, message: Message) -> None:
        side = self.sides[name]
        number = side.outbound.record(message, payload_size(message))
        side.sent[-1].append(message)
        assert number == len(side.sent[-1])
        self.wire[self.peer(name)].append(Data(message))

    @rule(
        name=st.sampled_from(["client", "server"]),
        pads=st.lists(st.integers(0, 12), min_size=1, max_size=5),
        binary=st.booleans(),
    )
    def app_sends(self, name: str, pads: list[int], binary: bool) -> None:
        """A burst of unique payloads, text or binary, 0 to 12 padding bytes each."""
        for pad in pads:
            self.payloads += 1
            text = f"{name[0]}{self.payloads}:" + "é" * (pad // 2) + "x" * (pad % 2)
            message: Message = text.encode() if binary else text
            if self.link_up:
                self.transmit(name, message)
            else:
                self.sides[name].waiting.append(message)

    def send_ack_if_due(self, name: str) -> None:
        inbound = self.sides[name].inbound
        if self.link_up and inbound.ack_due(self.now):
            self.wire[self.peer(name)].append(Ack(inbound.take_ack()))

    # -- receiving ----------------------------------------------------------------------

    # Rules are no-ops when they do not apply, rather than preconditions: hypothesis
    # then never gives up on a step.
    @rule(name=st.sampled_from(["client", "server"]))
    def frame_arrives(self, name: str) -> None:
        if not self.wire[name]:
            name = self.peer(name)
        if not self.wire[name]:
            return
        side = self.sides[name]
        frame = self.wire[name].popleft()
        if isinstance(frame, Ack):
            side.outbound.ack(frame.number)
        else:
            side.inbound.deliver(self.now)
            number = side.inbound.received
            # The implicit number matches the one the sender gave this very payload.
            assert self.sides[self.peer(name)].sent[-1][number - 1] == frame.message
            side.log[-1].append(("msg", number))
        self.send_ack_if_due(name)

    @rule(delay=st.floats(0.0, 0.5))
    def time_passes(self, delay: float) -> None:
        self.now += delay
        for name in self.sides:
            self.send_ack_if_due(name)

    # -- link failures and resume -------------------------------------------------------

    @rule()
    def link_dies(self) -> None:
        self.link_up = False
        for frames in self.wire.values():
            frames.clear()

    @rule(server_received_after_gap=st.booleans())
    def link_resumes(self, server_received_after_gap: bool) -> None:
        if self.link_up:
            return
        client, server = self.sides["client"], self.sides["server"]
        # The client's request headers.
        client_received = client.inbound.received
        client_replay_from = client.outbound.replay_from
        if self.forgotten:
            self.forgotten = False
            self.session_lost(client)
        else:
            server_received = server.inbound.received
            server_replay_from = server.outbound.replay_from
            server_gap = server.inbound.resume(client_replay_from)
            if server_received_after_gap:
                # docs/protocol.md does not say whether RWS-Received is taken before or
                # after the server applied the client's RWS-Replay-From: both must work.
                server_received = server.inbound.received
            self.report_gap(server, server_gap)
            client_gap = client.inbound.resume(server_replay_from)
            self.report_gap(client, client_gap)
            predicted_for_client, server_resend = server.outbound.resume(client_received)
            predicted_for_server, client_resend = client.outbound.resume(server_received)
            assert predicted_for_client == client_gap
            if not server_received_after_gap:
                assert predicted_for_server == server_gap
            for _, message in server_resend:
                self.wire["client"].append(Data(message))
            for _, message in client_resend:
                self.wire["server"].append(Data(message))
        self.link_up = True
        for name, side in self.sides.items():
            while side.waiting:
                self.transmit(name, side.waiting.popleft())

    def session_lost(self, client: Side) -> None:
        """The server answered RWS-Resumed: 0: the client starts a new session too."""
        self.report_gap(client, client.inbound.lost())
        client.log.append([])
        client.sent.append([])
        unacked = client.outbound.restart()
        # By default they are sent again, first, in the new session.
        client.waiting.extendleft(message for _, message in reversed(unacked))

    @staticmethod
    def report_gap(side: Side, gap: LostRange | None) -> None:
        if gap is not None:
            event("open-ended gap" if gap.last is None else "gap")
            side.log[-1].append(("gap", gap.first, gap.last))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def each_session_is_delivered_in_order_or_reported_lost(self) -> None:
        for name, side in self.sides.items():
            *closed, current = side.log
            for session in closed:
                _, last = self.coverage(session)
                if name == "client":
                    assert last is None, "a lost session ends with an open-ended gap"
            covered, last = self.coverage(current)
            assert last is not None
            assert covered == side.inbound.received

    @staticmethod
    def coverage(session: list[tuple[object, ...]]) -> tuple[int, int | None]:
        """Check messages and gaps tile ``1..n`` exactly, in order.

        Returns:
            ``n`` and ``n + 1``, or ``None`` for the end if the session ended in an
            open-ended gap (which must then be its last entry).
        """
        expected = 1
        for index, entry in enumerate(session):
            if entry[0] == "msg":
                assert entry[1] == expected
                expected += 1
                continue
            _, first, last = entry
            assert first == expected
            if last is None:
                assert index == len(session) - 1, "nothing may follow an open-ended gap"
                return expected - 1, None
            assert isinstance(last, int)
            assert last >= first
            expected = last + 1
        return expected - 1, expected

    @invariant()
    def buffers_stay_within_bounds(self) -> None:
        for side in self.sides.values():
            outbound = side.outbound
            assert outbound.count <= self.max_messages
            assert outbound.size <= self.max_bytes
            assert outbound.size == sum(payload_size(m) for _, m in outbound.unacked())
            assert outbound.acked < outbound.replay_from <= outbound.sent + 1
            assert outbound.sent == len(side.sent[-1])
            assert 0 <= side.inbound.acked <= side.inbound.received

    @invariant()
    def no_gap_without_overflow_or_session_loss(self) -> None:
        if self.overflow or self.sessions_lost:
            return
        for side in self.sides.values():
            assert all(entry[0] == "msg" for session in side.log for entry in session)

    def drain(self) -> None:
        while self.wire["client"] or self.wire["server"]:
            self.frame_arrives("client")

    def teardown(self) -> None:
        """Once the link is up and quiet, each side has everything the other sent."""
        if not self.sides:
            return
        if not self.link_up:
            self.link_resumes(server_received_after_gap=False)
        self.drain()
        # Past ack_delay every pending ack goes out, and releases every buffered message.
        self.time_passes(self.ack_delay + 1.0)
        self.drain()
        for name, side in self.sides.items():
            peer = self.sides[self.peer(name)]
            assert side.inbound.received == peer.outbound.sent
            # (acked itself may stay below a gap the peer skipped after a resume.)
            assert peer.outbound.count == 0
            assert not side.waiting
            if not (self.overflow or self.sessions_lost):
                assert side.log == [[("msg", n) for n in range(1, len(peer.sent[0]) + 1)]]


class ForgetfulServer(TwoPeers):
    """As :class:`TwoPeers`, and the server may also forget the session (restart, TTL)."""

    sessions_lost = True

    @rule(roll=st.integers(0, 3))
    def server_forgets_session(self, roll: int) -> None:
        if roll:  # one time in four: frequent enough, and sessions still grow long
            return
        self.link_dies()
        old = self.sides["server"]
        # A new handler, new halves; the old session's logs stay for the invariants.
        self.sides["server"] = new = self.new_side()
        new.log, new.sent = [*old.log, []], [*old.sent, []]
        self.forgotten = True


class ExactlyOnce(TwoPeers):
    """Large bounds, a server that keeps its sessions: never a gap, every message once."""

    overflow = False


TestTwoPeers = TwoPeers.TestCase
TestTwoPeers.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestForgetfulServer = ForgetfulServer.TestCase
TestForgetfulServer.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestExactlyOnce = ExactlyOnce.TestCase
TestExactlyOnce.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
