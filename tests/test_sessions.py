"""The session store: ids, tokens, TTL, limits and throttling, with times passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_ws._core.sessions import (
    Found,
    MemorySessionStore,
    SessionLimit,
    SourceLimit,
    Throttled,
    Unknown,
)

SOURCE = "127.0.0.1"


def test_open_gives_unguessable_distinct_ids_and_tokens() -> None:
    store: MemorySessionStore[str] = MemorySessionStore()
    records = [store.open(f"state {i}", now=0.0) for i in range(100)]
    assert len({r.id for r in records}) == 100
    assert len({r.token for r in records}) == 100
    assert all(len(r.token) >= 22 for r in records)  # >= 128 bits in URL-safe base64
    assert len(store) == 100


def test_resume_with_the_right_token() -> None:
    store: MemorySessionStore[str] = MemorySessionStore()
    record = store.open("mine", now=0.0)
    outcome = store.resume(record.id, record.token, now=1.0, source=SOURCE)
    assert isinstance(outcome, Found)
    assert outcome.record.state == "mine"


def test_wrong_token_never_yields_the_session() -> None:
    store: MemorySessionStore[str] = MemorySessionStore()
    record = store.open("secret state", now=0.0)
    # One character off (never the same: a token may end in "x" already).
    forged = record.token[:-1] + ("y" if record.token.endswith("x") else "x")
    wrong = store.resume(record.id, forged, now=1.0, source=SOURCE)
    assert wrong == Unknown("bad_token")
    unknown = store.resume("no-such-session", record.token, now=1.0, source=SOURCE)
    assert unknown == Unknown("unknown")
    # The real owner is unaffected.
    assert isinstance(store.resume(record.id, record.token, now=2.0, source=SOURCE), Found)


def test_detached_session_expires_after_ttl_and_live_ones_never_do() -> None:
    store: MemorySessionStore[str] = MemorySessionStore(ttl=60.0)
    gone = store.open("gone", now=0.0)
    live = store.open("live", now=0.0)
    store.detach(gone.id, now=10.0)
    assert store.expire(now=69.9) == []
    assert store.expire(now=70.0) == [gone]
    assert store.resume(gone.id, gone.token, now=71.0, source=SOURCE) == Unknown("unknown")
    assert store.expire(now=10_000.0) == []
    assert isinstance(store.resume(live.id, live.token, now=10_000.0, source=SOURCE), Found)


def test_reattached_session_stops_expiring() -> None:
    store: MemorySessionStore[str] = MemorySessionStore(ttl=5.0)
    record = store.open("s", now=0.0)
    store.detach(record.id, now=1.0)
    store.attach(record.id)
    assert store.expire(now=100.0) == []
    store.detach(record.id, now=100.0)
    assert store.expire(now=105.0) == [record]


def test_session_limit() -> None:
    store: MemorySessionStore[int] = MemorySessionStore(max_sessions=2, ttl=1.0)
    first = store.open(1, now=0.0)
    store.open(2, now=0.0)
    with pytest.raises(SessionLimit):
        store.open(3, now=0.0)
    store.detach(first.id, now=0.0)
    store.open(3, now=1.0)  # the expired one made room
    assert len(store) == 2


def test_away_sessions_per_source_default_to_a_tenth_of_the_store() -> None:
    """Defaults: an address whose 1,000 sessions are away opens no more (issue 11: one
    address opened all 10,000 sessions, after which every other client got 503). Clients
    that stay connected are not limited (a NAT, a reverse proxy)."""
    store: MemorySessionStore[int] = MemorySessionStore()
    records = [store.open(index, now=0.0, source=SOURCE) for index in range(2000)]
    for record in records[:1000]:  # the rest stay connected: not limited
        store.detach(record.id, now=0.0)
    with pytest.raises(SourceLimit, match="1000 sessions opened from this address are away"):
        store.open(2000, now=0.0, source=SOURCE)
    store.open(2000, now=0.0, source="192.0.2.7")  # another address is not affected
    store.open(2001, now=0.0)  # nor a session of unknown source
    assert len(store) == 2002


def test_an_away_session_stops_counting_when_it_comes_back_ends_or_expires() -> None:
    store: MemorySessionStore[int] = MemorySessionStore(ttl=1.0, max_away_per_source=2)
    first, second, third = (store.open(i, now=0.0, source=SOURCE) for i in range(3))
    store.detach(first.id, now=0.0)
    store.detach(second.id, now=0.0)
    store.detach(second.id, now=0.2)  # again: counted once
    with pytest.raises(SourceLimit):
        store.open(3, now=0.0, source=SOURCE)
    store.attach(first.id)  # back
    store.open(3, now=0.0, source=SOURCE)
    store.detach(first.id, now=0.5)
    store.close(first.id)  # ended while away
    store.detach(third.id, now=0.5)
    with pytest.raises(SourceLimit):
        store.open(4, now=0.5, source=SOURCE)
    assert [record.id for record in store.expire(now=1.2)] == [second.id]
    store.open(4, now=1.2, source=SOURCE)
    store.close(third.id)
    store.close(third.id)  # twice: counted once
    store.detach(store.open(5, now=1.2, source=SOURCE).id, now=1.2)
    store.detach(store.open(6, now=1.2, source=SOURCE).id, now=1.2)
    with pytest.raises(SourceLimit):
        store.open(7, now=1.2, source=SOURCE)


def test_the_limit_per_source_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limits"):
        MemorySessionStore(max_away_per_source=0)


def test_failed_resumes_are_throttled_per_source_never_the_right_token() -> None:
    store: MemorySessionStore[str] = MemorySessionStore(
        failed_resume_limit=3, failed_resume_window=60.0
    )
    record = store.open("s", now=0.0)
    for i in range(3):
        assert store.resume(record.id, "wrong", now=float(i), source="10.0.0.9") == Unknown(
            "bad_token"
        )
    # The attacker's address is throttled, for wrong tokens and unknown ids alike...
    outcome = store.resume(record.id, "wrong", now=10.0, source="10.0.0.9")
    assert isinstance(outcome, Throttled)
    assert outcome.retry_after == pytest.approx(50.0)
    assert isinstance(store.resume("nope", "x", now=10.0, source="10.0.0.9"), Throttled)
    # ... the owner is not locked out, even from the same address ...
    assert isinstance(store.resume(record.id, record.token, now=10.0, source="10.0.0.9"), Found)
    # ... other addresses are not throttled, and the window slides.
    assert store.resume("nope", "x", now=10.0, source="10.0.0.1") == Unknown("unknown")
    assert store.resume("nope", "x", now=60.5, source="10.0.0.9") == Unknown("unknown")


def test_the_right_token_is_never_throttled_at_flap_rates() -> None:
    store: MemorySessionStore[str] = MemorySessionStore()
    record = store.open("s", now=0.0)
    for i in range(10_000):  # a resume every 10 ms for 100 s
        outcome = store.resume(record.id, record.token, now=i * 0.01, source=SOURCE)
        assert isinstance(outcome, Found)


def test_tracked_sources_are_bounded() -> None:
    store: MemorySessionStore[str] = MemorySessionStore(failed_resume_limit=1, max_sources=2)
    for source in ("a", "b", "c"):  # "a" is forgotten when "c" arrives
        assert store.resume("nope", "x", now=0.0, source=source) == Unknown("unknown")
    assert isinstance(store.resume("nope", "x", now=0.0, source="c"), Throttled)
    assert store.resume("nope", "x", now=0.0, source="a") == Unknown("unknown")


def test_closed_session_is_forgotten() -> None:
    store: MemorySessionStore[str] = MemorySessionStore()
    record = store.open("s", now=0.0)
    store.detach(record.id, now=1.0)
    store.close(record.id)
    assert len(store) == 0
    assert store.expire(now=1000.0) == []


@given(st.lists(st.tuples(st.sampled_from(["open", "detach", "attach", "close"]),
                          st.integers(0, 5), st.floats(0, 5)), max_size=60))  # fmt: skip
def test_memory_stays_bounded(ops: list[tuple[str, int, float]]) -> None:
    store: MemorySessionStore[int] = MemorySessionStore(max_sessions=4, ttl=2.0)
    ids: list[str] = []
    now = 0.0
    for op, index, advance in ops:
        now += advance
        if op == "open":
            try:
                ids.append(store.open(index, now).id)
            except SessionLimit:
                assert len(store) == 4
        elif ids:
            session_id = ids[index % len(ids)]
            getattr(store, op)(*((session_id, now) if op == "detach" else (session_id,)))
        store.expire(now)
        assert len(store) <= 4
        assert len(store._detached) <= len(store)
