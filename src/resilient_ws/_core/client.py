"""The client's decisions, without I/O: one :class:`ClientCore` per connection.

It owns the lifecycle state table, the send queue, the replay session and every counter,
and the retry bookkeeping (which URL next, consecutive failures and their forgiveness,
the retry budget). The I/O layer feeds it what happened (an attempt starts, a link opened
with these response headers, a link was lost with this diagnosis, the application closed)
with ``now``; it answers with what to do and the :class:`~resilient_ws.Event` to emit. It
never sends, sleeps or reads the clock, so its rules are tested without a network
(``tests/test_client_core.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..config import Backoff, Replay, SendQueue
from ..events import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Event,
    Gap,
    MessagesDropped,
    Reconnecting,
    Resent,
    Resumed,
    SessionLost,
)
from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionFailed,
    LinkClosed,
    LinkError,
    QueueFull,
    RetryBudgetExhausted,
)
from .backoff import forgive, next_delay
from .classify import Classifier
from .liveness import Diagnosis, Verdict
from .outbox import Message, Outbox, payload_size
from .plainwindow import Resend
from .protocol import SUBPROTOCOL, parse_grant
from .resume import ClientSession, Resumption
from .state import Input, State, StateMachine

__all__ = ["ClientCore", "LinkStart"]

# Close code of a link that ended without a close frame (RFC 6455).
_ABNORMAL_CLOSURE = 1006
# Close code of serve() when the application's handler raised ("handler failed").
_HANDLER_FAILED = 1011
# Sessions lost in a row after a handler failure before the unacknowledged messages are no
# longer resent (Replay.resend_on_loss): a message may be delivered twice, not forever.
_MAX_HANDLER_FAILURES = 2


@dataclass(frozen=True, slots=True)
class LinkStart:
    """What a newly opened link means, from :meth:`ClientCore.link_opened`.

    Attributes:
        session_id: The replay session the link carries, or ``None`` (a plain link).
        resend: Messages to send first, in order, before anything else (a resumed session:
            what the server lacked; they keep their numbers).
        run_hook: Whether ``on_connect`` runs (not on a link that resumed a session: the
            session, with its subscriptions, carried over).
        events: What to emit, in order (a ``Gap``, ``SessionLost``).
        lost_session: The id of the session that was lost, if one was.
        withheld: Unacknowledged messages of the lost session that are not sent again
            because the server's handler failed on them twice in a row (for the log).
    """

    session_id: str | None
    resend: list[Message] = field(default_factory=list)
    run_hook: bool = True
    events: list[Event] = field(default_factory=list)
    lost_session: str | None = None
    withheld: int = 0


class ClientCore:
    """The state, queue, session and counters of one connection, and its rules.

    Args:
        urls: The URLs to try, primary first.
        shown: The same URLs as logged (secrets redacted).
        backoff: Delays between attempts and the retry budget.
        send_queue: Bounds and overflow policy of the send queue.
        replay: The replay protocol's policy, or ``None`` when not offered.
        classifier: Decides whether a link error is fatal.
    """

    def __init__(
        self,
        urls: Sequence[str],
        shown: Sequence[str],
        *,
        backoff: Backoff,
        send_queue: SendQueue,
        replay: Replay | None,
        classifier: Classifier,
    ) -> None:
        self.urls = list(urls)
        self._shown = list(shown)
        self._backoff = backoff
        self._classifier = classifier
        self._replay = replay
        self.machine = StateMachine()
        self.outbox = Outbox(send_queue)
        self.when_full = send_queue.when_full
        self.session = None if replay is None else ClientSession(replay)
        """The replay session, across links; ``None`` when the protocol is not offered."""

        self.url_index = 0
        self.url = self.urls[0]
        """The URL of the current or last attempt."""
        self.attempts = 0
        self.links = 0
        self.failures = 0
        """Consecutive failures (attempts and links' ends), less what links' lives forgave."""
        self.failing_since: float | None = None
        self.last_error: LinkError | None = None
        self.sent = self.received = self.dropped = self.resent = self.gaps = 0
        # Sessions lost in a row after the server closed with 1011 (its handler failed).
        self._handler_failures = 0

        self.error: ConnectionClosed | None = None
        """How the connection ended, once it has: raised by every later call."""
        self.close_code = 1000
        self.close_reason = ""
        self.undelivered: list[Message] = []

    # ---- state ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def closing(self) -> bool:
        """The application asked to close."""
        return self.machine.state is State.CLOSING

    def check_sendable(self) -> None:
        """Raise the error that ended the connection, or ``ConnectionClosedOK`` while it
        closes."""
        if self.error is not None:
            raise self.error
        if self.machine.state is State.CLOSING:
            raise ConnectionClosedOK("the connection is closing")

    def close(self, code: int, reason: str) -> bool:
        """The application asked to close with ``code``; whether that starts the close
        (``False``: it is closing or closed already)."""
        if self.machine.state in (State.CLOSING, State.CLOSED):
            return False
        self.close_code, self.close_reason = code, reason
        self.machine.apply(Input.CLOSE)
        return True

    def finished(self, now: float, error: ConnectionClosed) -> Closed:
        """The reconnect loop ended with ``error``: the connection is closed; what was
        still queued is undelivered."""
        self.error = error
        if isinstance(error, ConnectionFailed):
            self.machine.apply(Input.FAIL)
        else:
            if self.machine.state is not State.CLOSING:
                self.machine.apply(Input.CLOSE)
            self.machine.apply(Input.FINISHED)
        self.undelivered = self.outbox.clear()
        return Closed(at=now, cause=error.cause, undelivered=len(self.undelivered))

    # ---- the send queue ------------------------------------------------------------------

    def full(self, size: int, now: float) -> MessagesDropped | None:
        """The queue has no room for ``size`` bytes (checked by the caller): apply the
        policy. ``None``: wait for room (``when_full="wait"``).

        Raises:
            QueueFull: The policy is ``when_full="raise"``.
        """
        outbox = self.outbox
        if self.when_full == "raise":
            raise QueueFull(f"send queue full ({len(outbox)} messages, {outbox.size} bytes)")
        if self.when_full == "drop_oldest":
            count, dropped = outbox.make_room(size)
            self.dropped += count
            return MessagesDropped(at=now, count=count, size=dropped)
        return None

    def requeue(self, messages: Sequence[Message]) -> None:
        """Put ``messages`` back at the head of the queue, in order."""
        for message in reversed(messages):
            self.outbox.appendleft(message, payload_size(message))

    def resent_plain(self, now: float, link: int, resend: Resend, evidence: str) -> Resent:
        """A plain link ended: queue again, first, what the server never received."""
        self.requeue(resend.messages)
        count = len(resend.messages)
        self.resent += count
        return Resent(at=now, link=link, resent=count, uncertain=resend.uncertain,
                      overflowed=resend.overflowed, evidence=evidence)  # fmt: skip

    # ---- attempts ------------------------------------------------------------------------

    def should_retry(self, error: BaseException) -> bool:
        return isinstance(error, LinkError) and self._classifier(error) == "retry"

    def next_delay(self, draw: float) -> float:
        """The delay before the next attempt; ``draw`` uniform in ``[0, 1)``."""
        retry_after = getattr(self.last_error, "retry_after", None)
        return next_delay(self._backoff, self.failures, draw, retry_after)

    def budget_spent(self, now: float) -> bool:
        policy = self._backoff
        if policy.max_attempts is not None and self.failures >= policy.max_attempts:
            return True
        if policy.max_elapsed is not None and self.failing_since is not None:
            return now - self.failing_since >= policy.max_elapsed
        return False

    def reconnecting(self, now: float, delay: float) -> Reconnecting:
        shown = self._shown[self.url_index]
        return Reconnecting(at=now, attempt=self.failures + 1, delay=delay, url=shown)

    def attempt(self, now: float) -> tuple[str, Connecting]:
        """An attempt starts: the URL to open."""
        self.attempts += 1
        shown = self._shown[self.url_index]
        self.url = self.urls[self.url_index]
        return self.url, Connecting(at=now, url=shown, attempt=self.failures + 1)

    @property
    def on_primary(self) -> bool:
        return self.url_index == 0

    def outcome(self, error: LinkError) -> ConnectionClosed:
        """How the connection ends when the reconnect loop gave up on ``error``."""
        if self._classifier(error) == "fatal":
            return ConnectionFailed(f"connection failed: {error}", error)
        return RetryBudgetExhausted(f"gave up reconnecting: {error}", error)

    # ---- links ---------------------------------------------------------------------------

    def offer(self) -> dict[str, str] | None:
        """The replay protocol's request headers for the next link, or ``None`` when it
        is not offered."""
        return None if self.session is None else self.session.headers()

    def link_opened(
        self, now: float, subprotocol: str | None, headers: Mapping[str, str]
    ) -> LinkStart:
        """A link opened with this subprotocol and response ``headers``: resume the
        session, or report it lost.

        Raises:
            ProtocolViolation: The server's grant is malformed or contradicts the session
                (close the link with its code); nothing changed.
        """
        self.links += 1
        session = self.session
        if session is None:
            return LinkStart(None)
        if subprotocol != SUBPROTOCOL:
            # The server no longer speaks the protocol: the session cannot be resumed.
            lost = session.lost()
            return LinkStart(None) if lost is None else self._lost(now, lost, None)
        resumption = session.grant(parse_grant(headers))
        if not resumption.resumed:
            return self._lost(now, resumption, resumption.session_id)
        events: list[Event] = []
        gap = self._gap(now, resumption, "overflow")
        if gap is not None:
            events.append(gap)
        return LinkStart(resumption.session_id, resumption.resend, False, events)

    def resumed(self, now: float, start: LinkStart) -> Resumed:
        """The resend of a resumed session was written."""
        assert start.session_id is not None
        self.resent += len(start.resend)
        return Resumed(at=now, session_id=start.session_id, link=self.links,
                       resent=len(start.resend))  # fmt: skip

    def _gap(self, now: float, resumption: Resumption, reason: str) -> Gap | None:
        gap = resumption.gap
        if gap is None:
            return None
        self.gaps += 1
        session_id = resumption.lost_session or resumption.session_id
        return Gap(at=now, session_id=session_id, first=gap.first, last=gap.last,
                   reason=reason)  # fmt: skip

    def _lost(self, now: float, resumption: Resumption, session_id: str | None) -> LinkStart:
        """A session was lost: its gap, and its messages of unknown fate (sent again
        first, per ``Replay.resend_on_loss``)."""
        if resumption.lost_session is None:
            return LinkStart(session_id)
        events: list[Event] = []
        gap = self._gap(now, resumption, "session_lost")
        if gap is not None:
            events.append(gap)
        unacked = resumption.unacked
        resend = self._replay is not None and self._replay.resend_on_loss
        cause = self.last_error
        if isinstance(cause, LinkClosed) and cause.code == _HANDLER_FAILED:
            self._handler_failures += 1
        else:
            self._handler_failures = 0
        withheld = 0
        if resend and unacked and self._handler_failures >= _MAX_HANDLER_FAILURES:
            # A message among them made the server's handler fail, again: resent, it would
            # fail the next session too, forever. They are reported instead.
            resend, withheld = False, len(unacked)
        if resend:
            self.requeue(unacked)
        events.append(
            SessionLost(at=now, session_id=resumption.lost_session,
                        unacked=len(unacked) + resumption.overflowed,
                        resent=len(unacked) if resend else 0)
        )  # fmt: skip
        lost = resumption.lost_session
        return LinkStart(session_id, events=events, lost_session=lost, withheld=withheld)

    @property
    def handler_failures(self) -> int:
        """Sessions lost in a row after the server's handler failed (close code 1011)."""
        return self._handler_failures

    def link_up(self, now: float, subprotocol: str | None, flushed: int) -> Connected:
        """The link is set up and the queue flushed: the connection is (again) open."""
        self.failing_since = None
        return Connected(at=now, url=self._shown[self.url_index], link=self.links,
                         subprotocol=subprotocol, flushed=flushed)  # fmt: skip

    def link_down(self) -> None:
        if self.machine.state is not State.CLOSING:
            self.machine.apply(Input.LINK_DOWN)

    def verdict(
        self, error: LinkError, *, opened: bool, diagnosis: Diagnosis | None, failed_back: bool
    ) -> str:
        """Who failed, for :class:`~resilient_ws.Disconnected`."""
        if diagnosis is not None:
            return diagnosis.verdict.value
        if failed_back:
            return "failback"
        if not opened:
            return "unreachable"
        if isinstance(error, LinkClosed) and error.code != _ABNORMAL_CLOSURE:
            return "peer_closed"
        return "connection_lost"

    def link_failed(
        self,
        now: float,
        error: LinkError,
        *,
        verdict: str,
        uptime: float | None,
        timeout: float | None,
    ) -> Disconnected:
        """An attempt failed (``uptime`` ``None``) or a link ended: count the failure and
        choose the next URL."""
        fatal = self._classifier(error) == "fatal"
        stable = uptime is not None and uptime >= self._backoff.stable_after
        self.last_error = error
        if uptime is not None:
            # A link that lived forgives the failures before it (a flap is not a storm).
            self.failures = forgive(self._backoff, self.failures, uptime)
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        shown = self._shown[self.url_index]
        # A failed attempt, a link that did not stay up, or a dead network path moves on to
        # the next URL; another stable link that dropped starts again from the primary.
        if stable and verdict != Verdict.NETWORK_DEAD.value:
            self.url_index = 0
        else:
            self.url_index = (self.url_index + 1) % len(self.urls)
        return Disconnected(at=now, url=shown, cause=error, fatal=fatal, verdict=verdict,
                            uptime=uptime, timeout=timeout)  # fmt: skip
