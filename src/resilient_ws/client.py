"""The client: one long-lived :class:`Connection` that survives reconnects.

The client's I/O layer is this module (what the application sees: sending, the send queue,
receiving across links, closing, events) and :mod:`resilient_ws._supervisor` (the reconnect
loop). Only they sleep, read the clock or touch websockets connections, through
:mod:`resilient_ws._io.backend`. The decisions they act on come from the pure modules: the
state table, the backoff arithmetic, the classifier and the outbox.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._core.classify import Classifier, default_classifier
from ._core.outbox import Message, Outbox, payload_size
from ._core.plainwindow import PlainWindow
from ._core.protocol import SUBPROTOCOL, parse_grant
from ._core.resume import ClientSession, Resumption
from ._core.state import Input, State, StateMachine
from ._core.tcpinfo import TcpInfo
from ._io import backend as _backend
from ._io import sockopts as _sockopts
from ._io import taskgroup as _taskgroup
from ._io.backend import RawLink
from ._io.history import EventHistory
from ._io.lag import LoopLagMonitor
from ._io.link import Link, OnConnect
from ._io.replaylink import ReplayLink
from ._io.signals import MessageIterator, Signal
from ._logging import log, log_event, redact_url
from ._supervisor import Supervisor
from .config import Backoff, Failover, Keepalive, Replay, SendQueue
from .events import (
    Closed,
    Event,
    Gap,
    InboundDropped,
    MessagesDropped,
    Resent,
    Resumed,
    SessionLost,
)
from .exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionFailed,
    LinkClosed,
    LinkError,
    ProtocolViolation,
    QueueFull,
)

__all__ = ["Connection", "ConnectionStats", "Link", "OnConnect", "connect"]

# Options that resilient_ws owns; passing them through would break its guarantees.
_RESERVED_OPTIONS = frozenset({"create_connection", "process_exception", "reconnect_delays"})
# Events kept for subscribers that start iterating late or fall behind.
_EVENT_HISTORY = 256
# Longest a close (flush, closing handshake) may take when leaving ``async with``.
_CLOSE_TIMEOUT = 10.0
# Ended links whose unread messages are kept when the application does not call recv().
# Close code of serve() when the application's handler raised ("handler failed").
_HANDLER_FAILED = 1011
# Sessions lost after a handler failure in a row before the unacknowledged messages are no
# longer resent (Replay.resend_on_loss): a message may be delivered twice, not forever.
_MAX_HANDLER_FAILURES = 2
_MAX_ENDED_LINKS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStats:
    """A snapshot of a connection's counters (see :attr:`Connection.stats`).

    Attributes:
        state: Lifecycle state name: connecting, open, reconnecting, closing or closed.
        url: The URL of the current or last link, secrets redacted.
        attempts: Connection attempts made.
        links: Links opened (the first connect and every reconnect).
        reconnects: Links opened after the first one.
        failures: Consecutive failed attempts since the last stable link.
        messages_sent: Messages written to a link.
        messages_received: Messages returned by ``recv()``.
        queued: Messages in the send queue now.
        queued_bytes: Their payload bytes.
        dropped: Messages dropped from the queue (``when_full="drop_oldest"``).
        last_error: Description of the last link error, if any.
        srtt: Smoothed round-trip time of the current link, seconds (RFC 6298): the
            larger of the pongs' estimate and the kernel's estimate of the TCP path
            (``tcpi_rtt``, known from the handshake on where the platform gives it), or
            ``None`` before either or without ``keepalive``.
        srtt_source: Which estimate ``srtt`` is: ``"pong"`` (the pongs': the path plus the
            server's own latency), ``"kernel"`` (the kernel's of the TCP path: before any
            pong, or while the path is slower than the last pongs), or ``None``.
        rttvar: Its variation, seconds.
        timeout: The current wait for a pong, seconds, or ``None`` without ``keepalive``.
        verdict: The keepalive's current diagnosis of the link: ``"healthy"``,
            ``"client_stalled"``, ``"server_stalled"``, ``"pending"``, ``"network_dead"``
            or ``"unknown"``.
        stalled_for: Seconds the server has been judged stalled, or ``None``.
        peer_lag: Event-loop lag the server last reported, seconds, or ``None``.
        peer_stall: How long the server's last loop stall lasted, by its own report
            (``resilient_ws.serve()`` beacons), seconds, or ``None``.
        session_id: The replay session's id, or ``None`` while the server does not speak
            the replay protocol (or ``replay=None``).
        resent: Messages sent again on new links because the server lacked them
            (resumed replay sessions, and plain links: :class:`~resilient_ws.Resent`).
        gaps: :class:`~resilient_ws.Gap` events reported.
        unacked: Sent messages the server has not acknowledged yet (replay buffer).
    """

    state: str
    url: str
    attempts: int
    links: int
    reconnects: int
    failures: int
    messages_sent: int
    messages_received: int
    queued: int
    queued_bytes: int
    dropped: int
    last_error: str | None
    srtt: float | None
    srtt_source: str | None
    rttvar: float | None
    timeout: float | None
    verdict: str
    stalled_for: float | None
    peer_lag: float | None
    peer_stall: float | None
    session_id: str | None
    resent: int
    gaps: int
    unacked: int


class Connection(MessageIterator):
    """A WebSocket connection that reconnects by itself and stays one object.

    Create it with :func:`connect` and use it as an async context manager::

        async with resilient_ws.connect("wss://feed.example/ws") as ws:
            await ws.send("hello")
            async for message in ws:
                ...

    Entering waits until the first link is open (retrying per the :class:`Backoff` policy)
    and raises :class:`~resilient_ws.ConnectionFailed` if it cannot be opened.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        backoff: Backoff,
        failover: Failover,
        send_queue: SendQueue,
        on_connect: OnConnect | None,
        classifier: Classifier,
        keepalive: Keepalive | None,
        replay: Replay | None,
        options: dict[str, Any],
    ) -> None:
        checked = [_backend.check_url(url) for url in urls]
        if not checked:
            raise ValueError("connect() needs at least one URL")
        self._supervisor = Supervisor(
            self,
            checked,
            backoff=backoff,
            failover=failover,
            classifier=classifier,
            on_connect=on_connect,
            keepalive=keepalive,
            options=options,
        )
        self._keepalive = keepalive
        self._outbox = Outbox(send_queue)
        self._when_full = send_queue.when_full
        self._machine = StateMachine()
        self.connection_id = secrets.token_hex(4)
        """Random id of this connection, also in every log event."""
        self.undelivered: list[Message] = []
        """Messages still queued when the connection closed for good, oldest first."""

        # Links whose messages recv() still has to return, oldest first, with their numbers
        # and, on replay links, their ReplayLink.
        self._links: deque[tuple[RawLink, int, ReplayLink | None]] = deque()
        self._replay_policy = replay
        self._session = None if replay is None else ClientSession(replay)
        # The current link's replay protocol, while the link speaks it.
        self._replay_link: ReplayLink | None = None
        self._resent = self._gaps = 0
        # Sessions lost in a row after the server closed with 1011 (its handler failed).
        self._handler_failures = 0
        # The link that send() writes to directly; None while down or flushing.
        self._live: RawLink | None = None
        # On a plain link (no replay protocol): its recently sent messages, to resend
        # what the server never received when it dies, and the link and its number.
        self._window: PlainWindow | None = None
        self._window_raw: RawLink | None = None
        self._window_link = 0
        # The live link while send() may write to it directly, else None (_refresh_fast).
        self._fast: RawLink | None = None
        self._flushing = False
        self._receiving = False
        self._error: ConnectionClosed | None = None
        self._close_code = 1000
        self._close_reason = ""

        self._sent = self._received = self._dropped = 0

        # Created in __aenter__: anyio primitives need a running event loop.
        self._changed: Signal
        self._history: EventHistory
        self._task_group: anyio.abc.TaskGroup
        self._finished: anyio.Event

    # ---- public API ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle :class:`~resilient_ws.State`."""
        return self._machine.state

    @property
    def stats(self) -> ConnectionStats:
        """A snapshot of the counters."""
        supervisor = self._supervisor
        return ConnectionStats(
            state=self._machine.state.value,
            url=redact_url(supervisor.url),
            attempts=supervisor.attempts,
            links=supervisor.links,
            reconnects=max(0, supervisor.links - 1),
            failures=supervisor.failures,
            messages_sent=self._sent,
            messages_received=self._received,
            queued=len(self._outbox),
            queued_bytes=self._outbox.size,
            dropped=self._dropped,
            last_error=None if supervisor.last_error is None else str(supervisor.last_error),
            session_id=None if self._session is None else self._session.id,
            resent=self._resent,
            gaps=self._gaps,
            unacked=0 if self._session is None else self._session.outbound.count,
            **self._liveness_stats(),
        )

    def _liveness_stats(self) -> dict[str, Any]:
        keepalive = self._supervisor.keepalive
        if keepalive is None:
            return dict(
                srtt=None, srtt_source=None, rttvar=None, timeout=None, verdict="unknown",
                stalled_for=None, peer_lag=None, peer_stall=None,
            )  # fmt: skip
        return keepalive.stats()

    async def send(self, message: Message) -> None:
        """Send a message, or queue it while the link is down.

        Messages from one task are sent in order, across reconnects. When the server
        speaks the replay protocol each message is delivered exactly once, or reported lost
        (:class:`~resilient_ws.SessionLost`). Without it, a message in flight when a link
        dies, with the messages the server's TCP never acknowledged, is sent again on the
        next link (:class:`~resilient_ws.Resent`): exactly those on Linux over ``ws://``,
        at least once elsewhere (see ``docs/protocol.md``, "What plain mode loses").

        Args:
            message: ``str`` for a text frame, ``bytes`` for a binary frame.

        Raises:
            TypeError: ``message`` is neither ``str`` nor ``bytes``.
            ValueError: ``message`` is larger than ``SendQueue.max_bytes``.
            QueueFull: The queue is full and its policy is ``when_full="raise"``.
            ConnectionClosed: The connection is closed or closing.
        """
        # The fast path: one attribute check while a link is up and nothing is queued.
        raw = self._fast
        if raw is None or not (type(message) is str or type(message) is bytes):
            raw = await self._send_slow(message)
            if raw is None:
                return  # queued
        replay = self._replay_link  # the live link's, if it speaks the protocol
        window = self._window  # the live link's, if it is plain
        if replay is not None:
            replay.record(message)
            window = None
        elif window is not None:
            window.push(message)
        try:
            await raw.send(message)
        except _backend.ConnectionClosed:
            # The link died under this send: the replay buffer or the plain link's
            # window has the message (resent if the server lacks it), or keep it for
            # the next link.
            if replay is None and window is None:
                self._outbox.appendleft(message, payload_size(message))
            if self._live is raw:
                self._set_live(None)
            elif self._live is not None:
                await self._flush(self._live)  # a new link is already up
            self._refresh_fast()
            return
        if window is not None:
            end = raw.bytes_written
            window.done(end)
            if end > window.check_at:
                self._check_window(raw, window, end)
        self._sent += 1

    async def _send_slow(self, message: Message) -> RawLink | None:
        """Validate; return the link to write to, or queue (and flush) and return None."""
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"message must be str or bytes, not {type(message).__name__}")
        self._check_sendable()
        if self._fast is not None:
            return self._fast
        await self._enqueue(message)
        if self._live is not None:
            await self._flush(self._live)
        else:
            # Queued. Yield all the same: an application that sends in a loop while the
            # link is down must not hold the event loop.
            await anyio.lowlevel.checkpoint()
        return None

    def _set_live(self, raw: RawLink | None) -> None:
        self._live = raw
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        """Keep ``_fast`` equal to the live link exactly when send() may write to it directly:
        a link is live, the connection is open, and nothing is queued or flushing (a direct
        send would overtake queued messages).
        """
        live = self._live
        direct = (
            live is not None
            and not self._outbox
            and not self._flushing
            and self._machine.state is State.OPEN
        )
        self._fast = live if direct else None

    async def recv(self) -> Message:
        """Receive the next message, across reconnects, in order.

        Cancelling ``recv()`` loses no message.

        Raises:
            ConnectionClosedOK: The application closed the connection and every message
                received before that has been returned.
            ConnectionFailed: A fatal error ended the connection.
            ConcurrencyError: Another task is already in ``recv()``.
        """
        if self._receiving:
            raise ConcurrencyError("recv() is already running in another task")
        self._receiving = True
        try:
            while True:
                if self._links:
                    raw, _, replay = self._links[0]
                    try:
                        message = await raw.recv()
                    except _backend.ConnectionClosed:
                        # This link is drained; move on to the next one.
                        if self._links and self._links[0][0] is raw:
                            self._links.popleft()
                        continue
                    if replay is not None:
                        if replay.retired:
                            continue  # not acknowledged: the server resends it
                        replay.delivered()
                    self._received += 1
                    return message
                if self._error is not None:
                    raise self._error
                await self._changed.wait()
        finally:
            self._receiving = False

    async def ping(self) -> float | None:
        """Ping the server on the live link and wait for its pong.

        A measurement, not a liveness check: the keepalive watches the link on its own.
        Bound the wait yourself (``anyio.move_on_after``); a link that drops meanwhile
        ends it at once.

        Returns:
            The round trip in seconds, or ``None`` when no link is up or the link closed
            before the pong came.
        """
        raw = self._live
        if raw is None:
            return None
        sent = anyio.current_time()
        try:
            wait = await _backend.ping(raw)
        except _backend.ConnectionClosed:
            return None
        return anyio.current_time() - sent if await wait() else None

    def tcp_info(self) -> TcpInfo | None:
        """The kernel's view of the live link's TCP connection now (one ``getsockopt``).

        Returns:
            A sample (see :class:`~resilient_ws.TcpInfo`), or ``None`` when no link is up,
            or on a platform that gives no TCP state (Linux and macOS do).
        """
        raw = self._live
        sock = None if raw is None else _sockopts.raw_socket(raw)
        return None if sock is None else _sockopts.read(sock)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection for good and wait until it is closed.

        With a link open, queued messages are flushed and the closing handshake sends
        ``code`` and ``reason``. During a reconnect wait it ends at once; messages still
        queued are reported in the :class:`~resilient_ws.Closed` event and
        :attr:`undelivered`.

        Cancelling ``close()`` (a timeout around it) drops the link at once, without
        waiting for the closing handshake; the connection still ends closed.
        """
        if self._machine.state not in (State.CLOSING, State.CLOSED):
            self._close_code, self._close_reason = code, reason
            self._machine.apply(Input.CLOSE)
            self._refresh_fast()
            self._changed.notify()
            self._supervisor.stop()  # with a link up, the supervisor closes it gracefully
        try:
            await self._finished.wait()
        except BaseException:
            self._supervisor.cancel()  # the link is dropped as the supervisor unwinds
            raise

    def events(self) -> AsyncIterator[Event]:
        """Iterate over lifecycle events, starting from the oldest one still kept.

        The last 256 events are kept. A subscriber that falls further behind gets an
        :class:`~resilient_ws.EventsMissed` event saying how many it missed. Iteration
        ends after the :class:`~resilient_ws.Closed` event.
        """
        return self._history.stream()

    async def __aenter__(self) -> Connection:
        self._changed = Signal()
        self._history = EventHistory(self._changed, _EVENT_HISTORY)
        self._finished = anyio.Event()
        # The group spans the application's block: _taskgroup.leave() exits it so that
        # the block's exceptions and cancellations stay its own (docs/cancellation.md).
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            if self._keepalive is not None:
                # Our own loop's lag: evidence that a late pong is our fault, not the
                # server's. One monitor per event loop, shared by its connections.
                self._supervisor.monitor = LoopLagMonitor.acquire()
            self._task_group.start_soon(self._run)
            while self._machine.state not in (State.OPEN, State.CLOSED):
                await self._changed.wait()
            if self._error is not None:
                # The caller's cancellation also ends our tasks, and their end may wake
                # this wait first: then the cancellation is what leaves, not the outcome.
                await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            # Cancelled (or failed) while waiting for the first link: never leave the
            # group open on the caller's stack of cancel scopes.
            self._supervisor.cancel()
            try:
                await _taskgroup.leave(self._task_group, exc)
            finally:
                self._release_monitor()
            raise
        if self._error is not None:
            error = self._error
            try:
                await _taskgroup.leave(self._task_group, None)
            finally:
                self._release_monitor()
            raise error
        return self

    def _release_monitor(self) -> None:
        """Once our tasks are done: a released monitor stops ticking, and its last tick
        growing old would read as our own loop stalling. The last link's ack timer (on
        the loop's shared timers) goes too: nothing of ours is left pending."""
        monitor, self._supervisor.monitor = self._supervisor.monitor, None
        if monitor is not None:
            monitor.release()
        if self._replay_link is not None:
            self._replay_link.retire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Leaving normally or on an exception: close gracefully (flush, closing handshake),
        # unless the caller's cancellation cuts it short. Leaving on a cancellation: drop the
        # link at once, as anyio's streams do; a cancelled caller cannot wait for a peer.
        interrupted: BaseException | None = None
        if not _taskgroup.is_cancellation(exc):
            try:
                with anyio.move_on_after(_CLOSE_TIMEOUT):
                    await self.close()
            except BaseException as error:
                interrupted = exc = error
        self._supervisor.cancel()
        # The block's own exception, if not a cancellation, propagates as itself.
        try:
            swallowed = await _taskgroup.leave(self._task_group, exc)
        finally:
            self._release_monitor()
        if interrupted is not None and not swallowed:
            raise interrupted
        return swallowed

    # ---- sending -------------------------------------------------------------------------

    def _check_sendable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._machine.state is State.CLOSING:
            raise ConnectionClosedOK("the connection is closing")

    async def _enqueue(self, message: Message) -> None:
        size = payload_size(message)
        self._outbox.check_size(size)
        while not self._outbox.has_room(size):
            if self._when_full == "raise":
                raise QueueFull(
                    f"send queue full ({len(self._outbox)} messages, {self._outbox.size} bytes)"
                )
            if self._when_full == "drop_oldest":
                count, dropped = self._outbox.make_room(size)
                self._dropped += count
                self._emit(MessagesDropped(at=anyio.current_time(), count=count, size=dropped))
                break
            await self._changed.wait()
            self._check_sendable()
        self._outbox.append(message, size)
        self._refresh_fast()

    async def _flush(self, raw: RawLink) -> int:
        """Send queued messages on ``raw`` in order; return how many.

        Only one task flushes at a time; others leave their messages to it.

        Raises:
            LinkClosed: The link died; the message in flight is back at the queue's head.
        """
        if self._flushing:
            return 0
        self._flushing = True
        self._refresh_fast()
        count = 0
        replay = self._numbering(raw)
        window = None if replay is not None else self._plain_window(raw)
        try:
            while self._outbox:
                if window is not None and self._window is not window:
                    # The link ended while we sent: what it lacked is back in the queue.
                    raise _backend.link_closed_error(raw)
                message, size = self._outbox.popleft()
                self._changed.notify()  # room for senders waiting on a full queue
                if replay is not None:
                    replay.record(message, size)
                elif window is not None:
                    window.push(message)
                try:
                    await raw.send(message)
                except _backend.ConnectionClosed:
                    if replay is None and window is None:
                        self._outbox.appendleft(message, size)
                    if self._live is raw:
                        self._set_live(None)
                    raise _backend.link_closed_error(raw) from None
                if window is not None:
                    end = raw.bytes_written
                    window.done(end)
                    if end > window.check_at:
                        self._check_window(raw, window, end)
                count += 1
                self._sent += 1
        finally:
            self._flushing = False
            self._refresh_fast()
        return count

    def _plain_window(self, raw: RawLink) -> PlainWindow | None:
        """The window of plain link ``raw``, made on its first flush (before any send on
        it; ``on_connect``'s messages are not kept: the hook runs again on the next link).
        ``None`` for a link that already ended."""
        if self._window_raw is not raw:
            if raw.close_code is not None:
                return None
            self._window = PlainWindow()
            self._window_raw = raw
            self._window_link = self._supervisor.links
        return self._window

    @staticmethod
    def _check_window(raw: RawLink, window: PlainWindow, end: int) -> None:
        """Every ``check_every`` bytes of stream (never per message): forget what the
        server's TCP acknowledged, so the window holds only the unacknowledged tail, then
        enforce its bounds."""
        acked = _backend.acked_now(raw)
        if acked is not None:
            window.confirm(acked)
        window.trim(end)

    def _resend_unreceived(self) -> None:
        """A plain link ended: queue again, first, the messages the server never received.

        The link is closed (its socket sampled just before), except when the supervisor
        leaves it for the primary URL: then a closing handshake follows, which delivers
        everything written before it, and nothing is resent.
        """
        window, raw = self._window, self._window_raw
        self._window = self._window_raw = None
        if window is None or raw is None or raw.close_code is None:
            return
        acked, transmitted, evidence = _backend.acked_offset(raw)
        resend = window.unreceived(acked, transmitted)
        if not resend.messages and not resend.overflowed:
            return
        for message in reversed(resend.messages):
            self._outbox.appendleft(message, payload_size(message))
        count = len(resend.messages)
        self._resent += count
        self._refresh_fast()
        self._changed.notify()
        link = self._window_link
        self._emit(
            Resent(at=anyio.current_time(), link=link, resent=count, uncertain=resend.uncertain,
                   overflowed=resend.overflowed, evidence=evidence)
        )  # fmt: skip

    # ---- serving the supervisor (the Session protocol) -----------------------------------

    async def _run(self) -> None:
        try:
            await self._supervisor.run()
        finally:
            # Also on cancellation from outside, so that nobody waits on a dead supervisor.
            self._finish(self._supervisor.outcome)

    @property
    def _closing(self) -> bool:
        return self._machine.state is State.CLOSING

    def _link_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            return options
        return _backend.offer_subprotocol(options, SUBPROTOCOL, self._session.headers())

    def _numbering(self, raw: RawLink) -> ReplayLink | None:
        replay = self._replay_link
        return replay if replay is not None and replay.raw is raw else None

    async def _begin_link(self, raw: RawLink, number: int) -> bool:
        session = self._session
        if session is None:
            return True
        if raw.subprotocol != SUBPROTOCOL:
            # The server no longer speaks the protocol: the session cannot be resumed.
            lost = session.lost()
            if lost is not None:
                self._report_loss(lost)
            return True
        try:
            resumption = session.grant(parse_grant(_backend.response_headers(raw)))
        except ProtocolViolation as exc:
            code, reason = exc.code, exc.reason[:120]
            log("protocol_violated", connection_id=self.connection_id, code=code, reason=reason)
            await _backend.close_link(raw, code, reason)
            raise LinkClosed(code, reason) from exc
        assert self._replay_policy is not None
        replay = self._replay_link = ReplayLink(
            raw,
            session.outbound,
            session.inbound,
            ack_every=self._replay_policy.ack_every,
            log_fields={"connection_id": self.connection_id, "session_id": resumption.session_id},
        )
        if not resumption.resumed:
            self._report_loss(resumption)
            return True
        self._report_gap(resumption, "overflow")
        for message in resumption.resend:
            try:
                await raw.send(message)
            except _backend.ConnectionClosed:
                raise _backend.link_closed_error(raw) from None
        resent = len(resumption.resend)
        self._resent += resent
        self._emit(
            Resumed(at=anyio.current_time(), session_id=resumption.session_id, link=number,
                    resent=resent)
        )  # fmt: skip
        assert replay.raw is raw
        return False

    def _report_gap(self, resumption: Resumption, reason: str) -> None:
        gap = resumption.gap
        if gap is None:
            return
        session_id = resumption.lost_session or resumption.session_id
        self._gaps += 1
        self._emit(
            Gap(at=anyio.current_time(), session_id=session_id, first=gap.first,
                last=gap.last, reason=reason)
        )  # fmt: skip

    def _report_loss(self, resumption: Resumption) -> None:
        """A session was lost: report the gap and the messages of unknown fate."""
        if resumption.lost_session is None:
            return
        self._report_gap(resumption, "session_lost")
        unacked = resumption.unacked
        resend = self._replay_policy is not None and self._replay_policy.resend_on_loss
        cause = self._supervisor.last_error
        if isinstance(cause, LinkClosed) and cause.code == _HANDLER_FAILED:
            self._handler_failures += 1
        else:
            self._handler_failures = 0
        if resend and unacked and self._handler_failures >= _MAX_HANDLER_FAILURES:
            # A message among them made the server's handler fail, again: resent, it would
            # fail the next session too, forever. They are reported instead.
            resend = False
            log("resend_withheld", logging.WARNING, connection_id=self.connection_id,
                session_id=resumption.lost_session, messages=len(unacked),
                handler_failures=self._handler_failures)  # fmt: skip
        if resend:
            for message in reversed(unacked):
                self._outbox.appendleft(message, payload_size(message))
            self._refresh_fast()
        count = len(unacked) + resumption.overflowed
        resent = len(unacked) if resend else 0
        self._emit(
            SessionLost(at=anyio.current_time(), session_id=resumption.lost_session,
                        unacked=count, resent=resent)
        )  # fmt: skip

    def _readable(self, raw: RawLink, number: int) -> None:
        self._links.append((raw, number, self._numbering(raw)))
        self._changed.notify()

    async def _publish(self, raw: RawLink, number: int) -> None:
        if self._machine.state is State.CLOSING:
            # close() came while the link was being set up: it cancelled the supervisor,
            # which may not have reached a checkpoint since (flushing an empty queue has
            # none). The link is not published; the cancellation ends it.
            await anyio.lowlevel.checkpoint()
            return
        # The caller flushed the queue without an await since: nothing can have been
        # queued in between, so a direct send now keeps order.
        self._machine.apply(Input.LINK_UP)
        self._set_live(raw)
        await self._drop_unread_links()

    def _link_lost(self) -> None:
        replay, self._replay_link = self._replay_link, None
        if replay is not None:
            # What the link still buffers was not acknowledged: the server resends it.
            replay.retire()
            self._links = deque(entry for entry in self._links if entry[2] is not replay)
        self._resend_unreceived()
        self._set_live(None)
        if self._machine.state is not State.CLOSING:
            self._machine.apply(Input.LINK_DOWN)
        self._changed.notify()

    async def _close_link(self, raw: RawLink) -> None:
        # What a dying link leaves in the queue is reported as undelivered.
        with suppress(LinkError):
            await self._flush(raw)
        self._set_live(None)
        # The closing handshake delivers what was written; the connection ends here.
        self._window = self._window_raw = None
        replay = self._numbering(raw)
        if replay is not None:
            await replay.send_ack()  # the last ack: the session ends with the link
        await _backend.close_link(raw, self._close_code, self._close_reason)

    async def _drop_unread_links(self) -> None:
        """Bound the ended links kept for an application that does not call ``recv()``.

        Each ended link holds at most websockets' ``max_queue`` frames; keeping the most
        recent few bounds memory. What is dropped is counted and reported, never silent.
        """
        while len(self._links) > _MAX_ENDED_LINKS + 1:
            # recv() may be reading the oldest link right now; leave that one to it.
            index = 1 if self._receiving else 0
            raw, number, _ = self._links[index]
            del self._links[index]
            count = 0
            # An ended link returns what it buffered at once, then raises.
            with anyio.move_on_after(_CLOSE_TIMEOUT), suppress(_backend.ConnectionClosed):
                while True:
                    await raw.recv()
                    count += 1
            if count:
                self._emit(InboundDropped(at=anyio.current_time(), link=number, count=count))

    def _finish(self, error: ConnectionClosed) -> None:
        self._error = error
        self._set_live(None)
        if isinstance(error, ConnectionFailed):
            self._machine.apply(Input.FAIL)
        else:
            if self._machine.state is not State.CLOSING:
                self._machine.apply(Input.CLOSE)
            self._machine.apply(Input.FINISHED)
        self.undelivered = self._outbox.clear()
        cause = error.cause
        self._emit(Closed(at=anyio.current_time(), cause=cause, undelivered=len(self.undelivered)))
        self._finished.set()
        self._changed.notify()

    def _emit(self, event: Event) -> None:
        """One lifecycle step: into the event history and the log."""
        self._history.append(event)
        log_event(event, connection_id=self.connection_id)


def connect(
    url: str | None = None,
    *,
    urls: Sequence[str] | None = None,
    backoff: Backoff = Backoff(),
    failover: Failover = Failover(),
    send_queue: SendQueue = SendQueue(),
    keepalive: Keepalive | None = Keepalive(),
    replay: Replay | None = Replay(),
    on_connect: OnConnect | None = None,
    classifier: Classifier = default_classifier,
    compression: str | None = None,
    **websockets_options: Any,
) -> Connection:
    """Create a :class:`Connection`; use it with ``async with``.

    Works under anyio on asyncio and on trio, with ``websockets.asyncio`` or
    ``websockets.trio`` underneath. It behaves as a plain context manager: a timeout or
    cancellation anywhere around it (connecting, in the block, closing) is caught by the
    scope that set it, and the block's exceptions come out as themselves, never in an
    ``ExceptionGroup`` (``docs/cancellation.md``).

    Args:
        url: The server's ``ws://`` or ``wss://`` URL.
        urls: Several URLs, primary first, instead of ``url``: failover in order.
        backoff: Delays between attempts and the retry budget.
        failover: How to return to the primary URL.
        send_queue: Bounds and overflow policy of the queue used while the link is down.
        keepalive: Adaptive probing and the stall/dead-network verdict; it replaces
            websockets' fixed ping interval and timeout. ``None`` leaves websockets' own
            keepalive (``ping_interval``, ``ping_timeout``) in charge.
        replay: The replay protocol, offered to the server on every link: against
            ``resilient_ws.serve()`` the session survives reconnects with nothing lost or
            duplicated, or every loss reported (:class:`~resilient_ws.Gap`). A server that
            does not speak it gets an ordinary connection. ``None`` does not offer it.
        on_connect: Async hook run after every (re)connect, before queued messages flush.
            On a link that resumed a replay session it does not run: the session, with
            its subscriptions, carried over.
        classifier: Decides whether a :class:`~resilient_ws.LinkError` is fatal.
        compression: ``None`` (default) or ``"deflate"``. Off by default: permessage-deflate
            costs about 20 times the CPU on 16 KiB messages.
        **websockets_options: Passed to websockets' ``connect`` (``ssl``,
            ``additional_headers``, ``subprotocols``, ``open_timeout``, ``max_size``,
            ``proxy``...). With the default ``proxy=True`` the proxy settings of the
            environment (``wss_proxy``, ``https_proxy``, ``no_proxy``...) are read at the
            first connect of each URL, not at every reconnect; ``proxy=None`` connects
            directly, a proxy URL is used as given.

    Raises:
        InvalidURL: A URL is not a valid ``ws://`` or ``wss://`` URL.
        ValueError: No URL, or both ``url`` and ``urls``.
        TypeError: An option that resilient_ws manages itself.
    """
    if (url is None) == (urls is None):
        raise ValueError("pass exactly one of url= or urls=")
    reserved = _RESERVED_OPTIONS & websockets_options.keys()
    if reserved:
        raise TypeError(f"resilient_ws manages these options itself: {sorted(reserved)}")
    _backend.keepalive_off(websockets_options, keepalive)
    return Connection(
        [url] if url is not None else list(urls or ()),
        backoff=backoff,
        failover=failover,
        send_queue=send_queue,
        on_connect=on_connect,
        classifier=classifier,
        keepalive=keepalive,
        replay=replay,
        options={"compression": compression, **websockets_options},
    )
