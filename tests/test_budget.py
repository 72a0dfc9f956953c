"""The replay memory budget shared by a server's sessions (issue 11): pure, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_ws._core.replay import MESSAGE_COST, Budget, Outbound

COST = MESSAGE_COST


def test_a_budget_must_hold_a_byte() -> None:
    with pytest.raises(ValueError, match="budget"):
        Budget(0)


def test_the_session_that_records_past_the_budget_drops_its_own_oldest() -> None:
    budget = Budget(3 * (100 + COST))
    away, live = Outbound(100, 10_000, budget), Outbound(100, 10_000, budget)
    away.record(b"a" * 100, 100)
    away.record(b"b" * 100, 100)
    live.record(b"c" * 100, 100)
    assert budget.used == budget.limit
    live.record(b"d" * 100, 100)  # over: live drops its own oldest, not away's
    assert [number for number, _ in away.unacked()] == [1, 2]
    assert [number for number, _ in live.unacked()] == [2]
    assert live.overflowed == 1
    assert live.replay_from == 2  # the peer gets an exact gap of message 1 if it lacks it
    assert budget.used == budget.limit


def test_with_nothing_older_the_new_message_itself_is_dropped() -> None:
    budget = Budget(2 * (100 + COST))
    full, late = Outbound(100, 10_000, budget), Outbound(100, 10_000, budget)
    full.record(b"a" * 100, 100)
    full.record(b"b" * 100, 100)
    assert late.record(b"c" * 100, 100) == 1  # numbered and sent, not kept
    assert late.count == 0
    assert late.replay_from == 2
    assert budget.used == budget.limit


def test_acks_and_the_end_of_a_session_return_its_bytes() -> None:
    budget = Budget(1_000_000)
    outbound = Outbound(100, 10_000, budget)
    for index in range(10):
        outbound.record(b"x" * index, index)
    assert budget.used == sum(range(10)) + 10 * COST
    outbound.ack(4)
    assert budget.used == sum(range(4, 10)) + 6 * COST
    outbound.clear()
    assert budget.used == 0
    outbound.clear()  # twice: nothing more
    assert budget.used == 0
    outbound.record(b"again", 5)
    outbound.restart()
    assert budget.used == 0


def test_a_flood_of_tiny_messages_is_charged_for_what_it_costs() -> None:
    budget = Budget(1000 * COST)
    outbound = Outbound(1_000_000, 1_000_000, budget)
    for _ in range(5000):
        outbound.record(b"", 0)
    assert outbound.count == 1000
    assert budget.used == 1000 * COST


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 300), st.booleans()),
        max_size=200,
    ),
    st.integers(1, 3000),
)
def test_the_budget_holds_and_is_exact_whatever_the_sessions_do(
    steps: list[tuple[int, int, bool]], limit: int
) -> None:
    """Any mix of records, acks and ends across sessions: the budget is never exceeded
    after a record, what it charges is exactly what the buffers hold, and every buffer
    still holds the contiguous tail replay_from..sent (what a resume resends)."""
    budget = Budget(limit)
    sessions = [Outbound(8, 1000, budget) for _ in range(4)]
    for which, size, ack in steps:
        outbound = sessions[which]
        if ack and outbound.sent:
            outbound.ack(outbound.sent - outbound.count // 2)
        elif ack:
            outbound.clear()
        else:
            outbound.record(b"x" * size, size)
            assert budget.used <= budget.limit
        held = sum(o.size + o.count * COST for o in sessions)
        assert budget.used == held
        for o in sessions:
            numbers = [number for number, _ in o.unacked()]
            assert numbers == list(range(o.replay_from, o.sent + 1))
