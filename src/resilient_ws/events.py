"""Typed lifecycle events yielded by :meth:`resilient_ws.Connection.events`.

Each event is a frozen dataclass. ``at`` is the event loop's clock
(:func:`anyio.current_time`) when the event happened, so intervals between events are
meaningful; it is not wall-clock time.

A normal life::

    Connecting -> Connected -> Disconnected -> Reconnecting -> Connecting -> Connected
    ... -> Closed
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .exceptions import LinkError

__all__ = [
    "Closed",
    "Connected",
    "Connecting",
    "Disconnected",
    "Event",
    "EventsMissed",
    "Gap",
    "InboundDropped",
    "MessagesDropped",
    "PeerRecovered",
    "PeerStalled",
    "Reconnecting",
    "Resent",
    "Resumed",
    "SessionLost",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every lifecycle event.

    Each event is also one log event (``docs/events.md``): :attr:`log_name`,
    :attr:`log_level` and :meth:`log_fields` say which, so that one emit feeds both.

    Attributes:
        at: Event-loop time of the event, in seconds.
    """

    at: float

    _log_name: ClassVar[str | None] = None

    @property
    def log_name(self) -> str | None:
        """The log event's name after ``resilient_ws.``, or ``None`` for an event that is
        not logged (:class:`EventsMissed`: one subscriber's view, not the connection's)."""
        return self._log_name

    @property
    def log_level(self) -> int:
        """The log event's level (``logging.INFO`` unless the event is a warning)."""
        return logging.INFO

    def log_fields(self) -> dict[str, Any]:
        """The log event's fields: the event's own but ``at``, in order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "at"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Connecting(Event):
    """A connection attempt started.

    Attributes:
        url: The URL tried, secrets redacted.
        attempt: 1 for the first attempt; each failed attempt or dropped link adds one. A
            link's life forgives the count in proportion (see :class:`~resilient_ws.Backoff`):
            after a link that stayed up for ``Backoff.stable_after``, the first reconnect is
            attempt 2.
    """

    _log_name = "connect_started"

    url: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected(Event):
    """A link is open, ``on_connect`` has run and the send queue has been flushed.

    Attributes:
        url: The URL connected to, secrets redacted.
        link: 1 for the first link of this connection, then 2, 3...
        subprotocol: The negotiated subprotocol, if any.
        flushed: Messages sent from the send queue when the link came up.
    """

    _log_name = "link_opened"

    url: str
    link: int
    subprotocol: str | None
    flushed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected(Event):
    """A link ended or an attempt failed.

    Attributes:
        url: The URL of the link, secrets redacted.
        cause: Why, as a :class:`~resilient_ws.LinkError`.
        fatal: Whether the classifier judged it fatal (no reconnect follows).
        verdict: Who failed. From the keepalive when it gave up on the link:
            ``"network_dead"``, ``"server_stalled"`` (past ``max_server_stall``) or
            ``"unknown"`` (no TCP evidence, past ``unknown_timeout``). Otherwise
            ``"peer_closed"`` (a close frame came), ``"connection_lost"`` (the TCP
            connection ended without one), ``"failback"`` (closed by the client to return
            to the primary URL) or ``"unreachable"`` (the attempt never opened).
        uptime: Seconds the link had been open, ``None`` if it never opened.
        timeout: The keepalive's pong timeout on the link when it ended, seconds (``None``
            if it never opened or without ``keepalive``).
    """

    @property
    def log_name(self) -> str:
        """``link_closed`` for a link that was open, ``connect_failed`` for an attempt."""
        return "link_closed" if self.uptime is not None else "connect_failed"

    @property
    def log_level(self) -> int:
        """A warning when fatal."""
        return logging.WARNING if self.fatal else logging.INFO

    def log_fields(self) -> dict[str, Any]:
        """The fields, with the cause as text and its type, close code and HTTP status."""
        cause = self.cause
        return dict(
            url=self.url, cause=str(cause), error_type=type(cause).__name__,
            code=getattr(cause, "code", None), status=getattr(cause, "status", None),
            fatal=self.fatal, verdict=self.verdict, uptime=self.uptime, timeout=self.timeout,
        )  # fmt: skip

    url: str
    cause: LinkError
    fatal: bool
    verdict: str
    uptime: float | None
    timeout: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnecting(Event):
    """The next attempt is scheduled.

    Attributes:
        attempt: Number of the attempt that follows the delay.
        delay: Seconds until it starts.
        url: The URL it will try, secrets redacted.
    """

    _log_name = "reconnect_scheduled"

    attempt: int
    delay: float
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStalled(Event):
    """A pong is overdue and the evidence says the server is alive but not answering.

    The link is kept for up to ``Keepalive.max_server_stall`` seconds.

    Attributes:
        url: The URL of the link, secrets redacted.
        evidence: What the verdict rests on: ``"tcp_acked"`` (the server's kernel ACKed our
            probe), ``"zero_window"`` or ``"peer_lag"`` (the server reported loop lag).
        timeout: The pong wait that ran out, seconds.
    """

    _log_name = "peer_stalled"

    @property
    def log_level(self) -> int:
        """A warning."""
        return logging.WARNING

    url: str
    evidence: str
    timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRecovered(Event):
    """A server judged stalled answered again.

    Attributes:
        url: The URL of the link, secrets redacted.
        stalled_for: Seconds from the stall verdict to the first frame after it.
    """

    _log_name = "peer_recovered"

    url: str
    stalled_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesDropped(Event):
    """Queued outbound messages were dropped to make room (``when_full="drop_oldest"``).

    Attributes:
        count: Messages dropped.
        size: Their total payload bytes.
    """

    _log_name = "messages_dropped"

    count: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundDropped(Event):
    """Unread inbound messages of an ended link were dropped to bound memory.

    The client keeps the unread messages of the 8 most recent ended links for ``recv()``;
    an application that does not call ``recv()`` loses older ones, and is told here.

    Attributes:
        link: Number of the link whose messages were dropped.
        count: Messages dropped.
    """

    _log_name = "inbound_dropped"

    link: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """The connection is closed for good. It is the last event.

    Attributes:
        cause: The fatal link error, or ``None`` when the application closed it.
        undelivered: Queued messages never sent; also in ``Connection.undelivered``.
    """

    _log_name = "connection_closed"

    def log_fields(self) -> dict[str, Any]:
        """The fields, with the cause as text."""
        return dict(cause=None if self.cause is None else str(self.cause),
                    undelivered=self.undelivered)  # fmt: skip

    cause: LinkError | None
    undelivered: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsMissed(Event):
    """This subscriber fell behind the bounded event history and missed events.

    Attributes:
        count: Number of events it missed.
    """

    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed(Event):
    """A new link resumed the replay session: each side resends what the other lacks.

    Attributes:
        session_id: The server's id of the session.
        link: The link number (as in :class:`Connected`).
        resent: How many of our messages were sent again because the server lacked them.
    """

    _log_name = "session_resumed"

    session_id: str
    link: int
    resent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap(Event):
    """Messages from the server that will never arrive: replay could not cover them.

    Emitted before the first message after the gap is returned by ``recv()``. Messages
    are numbered per session from 1 (see ``docs/protocol.md``): ``first`` is the number
    after the last message ``recv()`` returned in the session.

    Attributes:
        session_id: The session the lost messages belonged to.
        first: The first lost message number.
        last: The last lost message number, or ``None`` when the end is unknown: the
            server lost the session (see :class:`SessionLost`) and a new one starts.
        reason: ``"overflow"`` (the server's replay buffer dropped them) or
            ``"session_lost"``.
    """

    _log_name = "messages_lost"

    @property
    def log_level(self) -> int:
        """A warning."""
        return logging.WARNING

    session_id: str
    first: int
    last: int | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLost(Event):
    """The server no longer had the replay session; a new session started.

    The server restarted, the session expired (``ttl``), or it refused the resume token.
    A :class:`Gap` with an unknown end precedes this event.

    Attributes:
        session_id: The lost session's id.
        unacked: Messages we sent that the server had not acknowledged: they may or may
            not have reached the application on the server.
        resent: How many of them are sent again in the new session
            (``Replay.resend_on_loss``); the others were already dropped from the replay
            buffer on overflow.
    """

    _log_name = "session_lost"

    @property
    def log_level(self) -> int:
        """A warning."""
        return logging.WARNING

    session_id: str
    unacked: int
    resent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Resent(Event):
    """A plain link ended (the server does not speak the replay protocol): the messages it
    left unreceived are sent again on the next link, first in the send queue, in order.

    The link is dropped with a TCP reset, so none of its bytes can reach the server after
    the next link's. Which messages the server's TCP acknowledged comes from the kernel
    (see ``docs/protocol.md``, "What plain mode loses").

    Attributes:
        link: The link that ended (1 for the first).
        resent: Messages queued to be sent again.
        uncertain: How many of ``resent`` may have reached the server already, and may
            arrive twice. 0 when the kernel's count of acknowledged bytes proved each one
            unreceived (Linux, ``ws://``).
        overflowed: Older messages, beyond the bounds of what a link keeps, that may not
            have reached the server and are not sent again (an upper bound; normally 0).
        evidence: ``"tcp_acked"`` (the kernel's exact count of acknowledged bytes),
            ``"send_queue"`` (the link was dropped with nothing unsent or unacknowledged)
            or ``"none"`` (unknown: every message the link kept is sent again).
    """

    _log_name = "messages_resent"

    @property
    def log_level(self) -> int:
        """A warning when messages may be lost (``overflowed``)."""
        return logging.WARNING if self.overflowed else logging.INFO

    link: int
    resent: int
    uncertain: int
    overflowed: int
    evidence: str
