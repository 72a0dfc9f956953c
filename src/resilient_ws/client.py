"""The client: one long-lived :class:`Connection` that survives reconnects.

This module is the application's surface only. Behind it, three parts with one job each:

- :class:`~resilient_ws._core.client.ClientCore` (sans-I/O) decides: the state table, the
  send queue, the replay session, which URL next and when to give up, every counter, and
  the events that say so;
- :mod:`resilient_ws._io.reconnect` runs the reconnect loop: opens links, watches them,
  sleeps between attempts, feeding the core what happened;
- :class:`~resilient_ws._io.clientlinks.ClientLinks` moves the application's messages over
  whichever link is up (``send()`` and ``recv()`` are its methods).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._core.classify import Classifier, default_classifier
from ._core.client import ClientCore
from ._core.outbox import Message
from ._core.state import State
from ._core.tcpinfo import TcpInfo
from ._io import backend as _backend
from ._io import sockopts as _sockopts
from ._io import taskgroup as _taskgroup
from ._io.clientlinks import ClientLinks
from ._io.history import EventHistory
from ._io.lag import LoopLagMonitor
from ._io.link import Link, OnConnect
from ._io.reconnect import Supervisor
from ._io.signals import MessageIterator, Signal
from ._logging import log_event, redact_url
from .config import Backoff, Failover, Keepalive, Replay, SendQueue
from .events import (
    Event,
)
from .exceptions import (
    ConnectionClosed,
)

__all__ = ["Connection", "ConnectionStats", "Link", "OnConnect", "connect"]

# Options that resilient_ws owns; passing them through would break its guarantees.
_RESERVED_OPTIONS = frozenset({"create_connection", "process_exception", "reconnect_delays"})
# Events kept for subscribers that start iterating late or fall behind.
_EVENT_HISTORY = 256
# Longest a close (flush, closing handshake) may take when leaving ``async with``.
_CLOSE_TIMEOUT = 10.0


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
        self.connection_id = secrets.token_hex(4)
        """Random id of this connection, also in every log event."""
        self.undelivered: list[Message] = []
        """Messages still queued when the connection closed for good, oldest first."""
        self._keepalive = keepalive
        self._core = core = ClientCore(
            checked,
            [redact_url(url) for url in checked],
            backoff=backoff,
            send_queue=send_queue,
            replay=replay,
            classifier=classifier,
        )
        self._changed = Signal()
        self._history = EventHistory(self._changed, _EVENT_HISTORY)
        self._links = links = ClientLinks(
            core, connection_id=self.connection_id, emit=self._emit, changed=self._changed
        )
        self._supervisor = Supervisor(
            core,
            links,
            connection_id=self.connection_id,
            emit=self._emit,
            failover=failover,
            on_connect=on_connect,
            keepalive=keepalive,
            options=options,
        )
        # The application's calls go straight to the links: no extra call per message.
        self.send = links.send  # type: ignore[method-assign]
        self.recv = links.recv  # type: ignore[method-assign]
        # Created in __aenter__: anyio primitives need a running event loop.
        self._task_group: anyio.abc.TaskGroup
        self._finished: anyio.Event

    # ---- public API ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle :class:`~resilient_ws.State`."""
        return self._core.state

    @property
    def stats(self) -> ConnectionStats:
        """A snapshot of the counters."""
        core = self._core
        session = core.session
        return ConnectionStats(
            state=core.state.value,
            url=redact_url(core.url),
            attempts=core.attempts,
            links=core.links,
            reconnects=max(0, core.links - 1),
            failures=core.failures,
            messages_sent=core.sent,
            messages_received=core.received,
            queued=len(core.outbox),
            queued_bytes=core.outbox.size,
            dropped=core.dropped,
            last_error=None if core.last_error is None else str(core.last_error),
            session_id=None if session is None else session.id,
            resent=core.resent,
            gaps=core.gaps,
            unacked=0 if session is None else session.outbound.count,
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
        await self._links.send(message)

    async def recv(self) -> Message:
        """Receive the next message, across reconnects, in order.

        Cancelling ``recv()`` loses no message.

        Raises:
            ConnectionClosedOK: The application closed the connection and every message
                received before that has been returned.
            ConnectionFailed: A fatal error ended the connection.
            ConcurrencyError: Another task is already in ``recv()``.
        """
        return await self._links.recv()

    async def ping(self) -> float | None:
        """Ping the server on the live link and wait for its pong.

        A measurement, not a liveness check: the keepalive watches the link on its own.
        Bound the wait yourself (``anyio.move_on_after``); a link that drops meanwhile
        ends it at once.

        Returns:
            The round trip in seconds, or ``None`` when no link is up or the link closed
            before the pong came.
        """
        raw = self._links.live
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
        raw = self._links.live
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
        if self._core.close(code, reason):
            self._links.refresh_fast()
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
            while self._core.state not in (State.OPEN, State.CLOSED):
                await self._changed.wait()
            if self._core.error is not None:
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
        error = self._core.error
        if error is not None:
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
        self._links.retire()

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

    # ---- the reconnect loop --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._supervisor.run()
        finally:
            # Also on cancellation from outside, so that nobody waits on a dead supervisor.
            self._finish(self._supervisor.outcome)

    def _finish(self, error: ConnectionClosed) -> None:
        self._links.set_live(None)
        closed = self._core.finished(anyio.current_time(), error)
        self.undelivered = self._core.undelivered
        self._emit(closed)
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
