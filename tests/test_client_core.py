"""The client's decisions (``_core.client.ClientCore``) without I/O: which URL next, what a
link's life forgives, when the budget is spent, what a new link means for the replay
session, the send queue's overflow policies, and how the connection ends. The reconnect
loop feeds it exactly these inputs; here they come from the test, with ``now``."""

from __future__ import annotations

import pytest

from resilient_ws import (
    Backoff,
    Closed,
    ConnectionClosedOK,
    ConnectionFailed,
    Gap,
    LinkClosed,
    LinkError,
    MessagesDropped,
    ProtocolViolation,
    QueueFull,
    Replay,
    RetryBudgetExhausted,
    SendQueue,
    SessionLost,
    State,
)
from resilient_ws._core.classify import default_classifier
from resilient_ws._core.client import ClientCore
from resilient_ws._core.outbox import payload_size
from resilient_ws._core.protocol import SUBPROTOCOL, grant_headers, parse_resume
from resilient_ws._core.replay import buffers
from resilient_ws._core.resume import accept_resume, grant_of
from resilient_ws._core.state import Input

URLS = ["ws://primary/", "ws://backup/"]


DEFAULT_BACKOFF, DEFAULT_QUEUE, DEFAULT_REPLAY = Backoff(), SendQueue(), Replay()


def core(
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    send_queue: SendQueue = DEFAULT_QUEUE,
    replay: Replay | None = DEFAULT_REPLAY,
) -> ClientCore:
    return ClientCore(
        URLS, URLS, backoff=backoff, send_queue=send_queue, replay=replay,
        classifier=default_classifier,
    )  # fmt: skip


def lose(client: ClientCore, now: float, uptime: float | None, verdict: str = "") -> None:
    error = LinkClosed(1006, "gone")
    verdict = verdict or client.verdict(
        error, opened=uptime is not None, diagnosis=None, failed_back=False
    )
    client.link_failed(now, error, verdict=verdict, uptime=uptime, timeout=None)


class Server:
    """The server's half of the session, as ``serve()`` keeps it, without the I/O."""

    def __init__(self) -> None:
        self.outbound, self.inbound = buffers(Replay())

    def grant(self, request: dict[str, str] | None, *, resumed: bool) -> dict[str, str]:
        assert request is not None
        parsed = parse_resume(request)
        if parsed is not None and resumed:  # (a server that lost the session ignores it)
            accept_resume(self.outbound, self.inbound, parsed)
        grant = grant_of("s1", "t" * 22, resumed=resumed, outbound=self.outbound,
                         inbound=self.inbound)  # fmt: skip
        return grant_headers(grant)


# ---- attempts, URLs and the budget ---------------------------------------------------------


def test_a_failed_attempt_moves_to_the_next_url_and_a_stable_link_returns_to_the_primary() -> None:
    client = core()
    url, connecting = client.attempt(0.0)
    assert (url, connecting.attempt) == (URLS[0], 1)
    lose(client, 0.1, None)  # never opened
    url, connecting = client.attempt(0.2)
    assert (url, connecting.attempt, client.attempts) == (URLS[1], 2, 2)
    lose(client, 100.0, uptime=90.0)  # a stable link that dropped
    assert client.attempt(100.1)[0] == URLS[0]


def test_a_dead_network_moves_on_even_after_a_stable_link() -> None:
    client = core()
    client.attempt(0.0)
    lose(client, 100.0, uptime=90.0, verdict="network_dead")
    assert client.attempt(100.1)[0] == URLS[1]


def test_a_links_life_forgives_the_failures_before_it() -> None:
    client = core(backoff=Backoff(stable_after=10.0))
    for n in range(4):
        client.attempt(float(n))
        lose(client, float(n), None)
    assert client.failures == 4
    client.attempt(5.0)
    lose(client, 10.0, uptime=5.0)  # half of stable_after: half forgiven, plus its own end
    assert client.failures == 3
    client.attempt(11.0)
    lose(client, 30.0, uptime=15.0)  # a stable link forgives all
    assert client.failures == 1


def test_the_budget_counts_failures_and_time_since_they_began() -> None:
    client = core(backoff=Backoff(max_attempts=2, max_elapsed=30.0))
    assert not client.budget_spent(0.0)
    client.attempt(0.0)
    lose(client, 1.0, None)
    assert not client.budget_spent(20.0)
    assert client.budget_spent(31.0)  # 30 s since the first failure
    client.attempt(2.0)
    lose(client, 2.0, None)
    assert client.budget_spent(2.0)  # two failures


def test_a_link_that_comes_up_restarts_the_elapsed_clock() -> None:
    client = core(backoff=Backoff(max_elapsed=30.0))
    client.attempt(0.0)
    lose(client, 1.0, None)
    client.attempt(2.0)
    client.link_opened(2.0, None, {})
    client.link_up(2.0, None, 0)
    lose(client, 40.0, uptime=0.5)
    assert not client.budget_spent(45.0)


def test_retry_after_is_a_floor_on_the_delay() -> None:
    client = core()
    client.attempt(0.0)
    error = LinkError("503")
    error.retry_after = 7.0  # type: ignore[attr-defined]
    client.link_failed(0.0, error, verdict="unreachable", uptime=None, timeout=None)
    assert client.next_delay(0.0) == 7.0
    assert 7.0 <= client.next_delay(0.99) < 8.0


def test_how_the_connection_ends_depends_on_the_classifier() -> None:
    client = core()
    assert isinstance(client.outcome(LinkClosed(1008, "policy")), ConnectionFailed)
    assert isinstance(client.outcome(LinkClosed(1006, "gone")), RetryBudgetExhausted)
    assert client.should_retry(LinkClosed(1006, "gone"))
    assert not client.should_retry(LinkClosed(1008, "policy"))


@pytest.mark.parametrize(
    ("error", "opened", "verdict"),
    [
        (LinkClosed(1006, "gone"), False, "unreachable"),
        (LinkClosed(1006, "gone"), True, "connection_lost"),
        (LinkClosed(1001, "bye"), True, "peer_closed"),
    ],
)
def test_the_verdict_without_a_diagnosis(error: LinkError, opened: bool, verdict: str) -> None:
    assert core().verdict(error, opened=opened, diagnosis=None, failed_back=False) == verdict
    assert core().verdict(error, opened=opened, diagnosis=None, failed_back=True) == "failback"


# ---- what a new link means for the replay session --------------------------------------------


def test_a_plain_connection_runs_the_hook_on_every_link() -> None:
    client = core(replay=None)
    assert client.offer() is None
    start = client.link_opened(0.0, None, {})
    assert (start.session_id, start.run_hook, start.events) == (None, True, [])
    assert client.links == 1


def test_a_resumed_session_resends_what_the_server_lacks_and_skips_the_hook() -> None:
    client, server = core(), Server()
    client.link_opened(0.0, SUBPROTOCOL, server.grant(client.offer(), resumed=False))
    assert client.session is not None
    for n in range(1, 4):
        client.session.outbound.record(f"c{n}", 2)
    server.inbound.deliver(0.0)  # the server got c1
    start = client.link_opened(1.0, SUBPROTOCOL, server.grant(client.offer(), resumed=True))
    assert (start.session_id, start.resend, start.run_hook, start.events) == (
        "s1", ["c2", "c3"], False, []
    )  # fmt: skip
    resumed = client.resumed(1.1, start)
    assert (resumed.link, resumed.resent, client.resent) == (2, 2, 2)


def test_a_lost_session_is_an_exact_gap_and_its_unacked_messages_are_queued_first() -> None:
    client, server = core(), Server()
    client.link_opened(0.0, SUBPROTOCOL, server.grant(client.offer(), resumed=False))
    assert client.session is not None
    client.session.outbound.record("c1", 2)
    client.session.inbound.deliver(0.0)  # we got the server's 1
    client.outbox.append("later", payload_size("later"))
    fresh = Server()  # restarted: the session is gone
    start = client.link_opened(2.0, SUBPROTOCOL, fresh.grant(client.offer(), resumed=False))
    gap, lost = start.events
    assert isinstance(gap, Gap)
    assert (gap.first, gap.last, gap.reason) == (2, None, "session_lost")
    assert isinstance(lost, SessionLost)
    assert (lost.unacked, lost.resent) == (1, 1)
    assert (start.run_hook, start.withheld) == (True, 0)
    assert client.outbox.clear() == ["c1", "later"]
    assert client.gaps == 1


def test_after_two_handler_failures_in_a_row_the_unacked_messages_are_withheld() -> None:
    client = core()
    withheld = []
    for _ in range(3):
        server = Server()
        client.link_opened(0.0, SUBPROTOCOL, server.grant(client.offer(), resumed=False))
        assert client.session is not None
        client.session.outbound.record("poison", 6)
        client.attempt(0.0)
        client.link_failed(0.0, LinkClosed(1011, "handler failed"), verdict="peer_closed",
                           uptime=1.0, timeout=None)  # fmt: skip
        start = client.link_opened(1.0, SUBPROTOCOL, Server().grant(client.offer(),
                                                                    resumed=False))  # fmt: skip
        withheld.append(start.withheld)
        client.outbox.clear()
    assert withheld == [0, 1, 1]


def test_a_server_that_stops_speaking_the_protocol_loses_the_session() -> None:
    client, server = core(), Server()
    client.link_opened(0.0, SUBPROTOCOL, server.grant(client.offer(), resumed=False))
    start = client.link_opened(1.0, None, {})
    assert (start.session_id, start.run_hook) == (None, True)
    assert [type(event) for event in start.events] == [Gap, SessionLost]
    assert client.offer() == {}  # the next link asks for a new session


def test_a_grant_that_contradicts_the_session_changes_nothing() -> None:
    client, server = core(), Server()
    client.link_opened(0.0, SUBPROTOCOL, server.grant(client.offer(), resumed=False))
    request = client.offer()
    other = grant_of("s2", "u" * 22, resumed=True, outbound=server.outbound,
                     inbound=server.inbound)  # fmt: skip
    with pytest.raises(ProtocolViolation):
        client.link_opened(1.0, SUBPROTOCOL, grant_headers(other))
    assert client.offer() == request


# ---- the send queue and the end ---------------------------------------------------------


@pytest.mark.parametrize("when_full", ["raise", "drop_oldest", "wait"])
def test_a_full_queue_follows_its_policy(when_full: str) -> None:
    client = core(send_queue=SendQueue(max_messages=2, when_full=when_full))  # type: ignore[arg-type]
    for message in ("a", "b"):
        client.outbox.append(message, 1)
    assert not client.outbox.has_room(1)
    if when_full == "raise":
        with pytest.raises(QueueFull):
            client.full(1, 0.0)
    elif when_full == "drop_oldest":
        dropped = client.full(1, 0.0)
        assert isinstance(dropped, MessagesDropped)
        assert (dropped.count, dropped.size, client.dropped) == (1, 1, 1)
        assert client.outbox.clear() == ["b"]
    else:
        assert client.full(1, 0.0) is None  # wait for room
        assert len(client.outbox) == 2


def test_closing_refuses_sends_and_the_end_reports_what_was_never_sent() -> None:
    client = core()
    client.link_opened(0.0, None, {})
    client.machine.apply(Input.LINK_UP)
    client.outbox.append("unsent", 6)
    assert client.close(1000, "bye")
    assert not client.close(1001, "again")  # already closing: the first code stands
    assert (client.state, client.close_code) == (State.CLOSING, 1000)
    with pytest.raises(ConnectionClosedOK):
        client.check_sendable()
    closed = client.finished(5.0, ConnectionClosedOK("closed by the application"))
    assert isinstance(closed, Closed)
    assert closed.undelivered == 1
    assert (client.undelivered, client.state) == (["unsent"], State.CLOSED)


def test_a_fatal_end_fails_the_connection_from_any_state() -> None:
    client = core()
    error = ConnectionFailed("connection failed: policy", LinkClosed(1008, "policy"))
    closed = client.finished(1.0, error)
    assert (client.state, closed.cause) == (State.CLOSED, error.cause)
    with pytest.raises(ConnectionFailed):
        client.check_sendable()
