"""The client: one long-lived :class:`Connection` that survives reconnects.

This is the client's only module that sleeps, reads the clock or touches websockets
connections (through :mod:`resilient_ws._backend`). The decisions it acts on come from the
pure modules: the state table, the backoff arithmetic, the classifier and the outbox.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from . import _backend
from ._backend import RawLink
from ._backoff import next_delay
from ._classify import Classifier, default_classifier
from ._logging import log, redact_url
from ._outbox import Message, Outbox, payload_size
from ._state import Input, State, StateMachine
from ._sync import Signal
from .config import Backoff, Failover, SendQueue
from .events import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Event,
    EventsMissed,
    InboundDropped,
    MessagesDropped,
    Reconnecting,
)
from .exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionFailed,
    LinkClosed,
    LinkError,
    OnConnectFailed,
    QueueFull,
    RetryBudgetExhausted,
)

__all__ = ["Connection", "ConnectionStats", "Link", "OnConnect", "connect"]

# Options that resilient_ws owns; passing them through would break its guarantees.
_RESERVED_OPTIONS = frozenset({"create_connection", "process_exception", "reconnect_delays"})
# Events kept for subscribers that start iterating late or fall behind.
_EVENT_HISTORY = 256
# Longest a close (flush, closing handshake) may take when leaving ``async with``.
_CLOSE_TIMEOUT = 10.0
# Ended links whose unread messages are kept when the application does not call recv().
_MAX_ENDED_LINKS = 8
# Code used when failing back from a backup URL to the primary (RFC 6455: going away).
_GOING_AWAY = 1001


class Link:
    """One underlying WebSocket link, as seen by the ``on_connect`` hook.

    Use it to authenticate or resubscribe before queued messages flush. Errors are raised
    as :class:`~resilient_ws.LinkError`.

    Attributes:
        url: The URL connected to (not redacted: it is yours).
        number: 1 for the connection's first link, then 2, 3...
        subprotocol: The negotiated subprotocol, if any.
    """

    __slots__ = ("_raw", "number", "subprotocol", "url")

    def __init__(self, raw: RawLink, url: str, number: int) -> None:
        self._raw = raw
        self.url = url
        self.number = number
        self.subprotocol = raw.subprotocol

    async def send(self, message: Message) -> None:
        """Send one message on this link, ahead of anything queued."""
        try:
            await self._raw.send(message)
        except _backend.ConnectionClosed as exc:
            raise _backend.translate(exc) from exc

    async def recv(self) -> Message:
        """Receive one message on this link (a reply to authentication, say)."""
        try:
            return await self._raw.recv()
        except _backend.ConnectionClosed as exc:
            raise _backend.translate(exc) from exc


OnConnect = Callable[[Link], Awaitable[None]]
"""The ``on_connect`` hook: ``async def on_connect(link: Link) -> None``."""


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


class Connection:
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
        options: dict[str, Any],
    ) -> None:
        self._urls = [_backend.check_url(url) for url in urls]
        if not self._urls:
            raise ValueError("connect() needs at least one URL")
        self._backoff = backoff
        self._failover = failover
        self._on_connect = on_connect
        self._classifier = classifier
        self._options = options
        self._outbox = Outbox(send_queue)
        self._when_full = send_queue.when_full
        self._machine = StateMachine()
        self.connection_id = secrets.token_hex(4)
        """Random id of this connection, also in every log event."""
        self.undelivered: list[Message] = []
        """Messages still queued when the connection closed for good, oldest first."""
        self._random = random.Random()

        # Links whose messages recv() still has to return, oldest first, with their numbers.
        self._links: deque[tuple[RawLink, int]] = deque()
        # The link that send() writes to directly; None while down or flushing.
        self._live: RawLink | None = None
        # The live link while send() may write to it directly, else None (_refresh_fast).
        self._fast: RawLink | None = None
        self._flushing = False
        self._receiving = False
        self._error: ConnectionClosed | None = None
        self._close_code = 1000
        self._close_reason = ""

        self._url_index = 0
        self._url = self._urls[0]
        self._failures = 0
        self._failing_since: float | None = None
        self._last_error: LinkError | None = None
        self._attempts = self._link_count = 0
        self._sent = self._received = self._dropped = 0

        self._events: deque[Event] = deque(maxlen=_EVENT_HISTORY)
        self._events_seen = 0  # events ever emitted; index of the next one

        # Created in __aenter__: anyio primitives need a running event loop.
        self._changed: Signal
        self._task_group: anyio.abc.TaskGroup
        self._run_scope: anyio.CancelScope
        self._link_scope: anyio.CancelScope | None = None
        self._finished: anyio.Event

    # ---- public API ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle :class:`~resilient_ws.State`."""
        return self._machine.state

    @property
    def stats(self) -> ConnectionStats:
        """A snapshot of the counters."""
        return ConnectionStats(
            state=self._machine.state.value,
            url=redact_url(self._url),
            attempts=self._attempts,
            links=self._link_count,
            reconnects=max(0, self._link_count - 1),
            failures=self._failures,
            messages_sent=self._sent,
            messages_received=self._received,
            queued=len(self._outbox),
            queued_bytes=self._outbox.size,
            dropped=self._dropped,
            last_error=None if self._last_error is None else str(self._last_error),
        )

    async def send(self, message: Message) -> None:
        """Send a message, or queue it while the link is down.

        Messages from one task are sent in order, across reconnects. Without a replay
        protocol, a message in flight when a link dies is sent again on the next link, so
        the peer may see it twice, and messages already in TCP buffers may be lost (see the
        README).

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
        try:
            await raw.send(message)
        except _backend.ConnectionClosed:
            # The link died under this send: keep the message for the next link.
            self._outbox.appendleft(message, payload_size(message))
            if self._live is raw:
                self._set_live(None)
            elif self._live is not None:
                await self._flush(self._live)  # a new link is already up
            self._refresh_fast()
            return
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
                    raw, _ = self._links[0]
                    try:
                        message = await raw.recv()
                    except _backend.ConnectionClosed:
                        # This link is drained; move on to the next one.
                        if self._links and self._links[0][0] is raw:
                            self._links.popleft()
                        continue
                    self._received += 1
                    return message
                if self._error is not None:
                    raise self._error
                await self._changed.wait()
        finally:
            self._receiving = False

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Message:
        """Next message for ``async for``; the loop ends when the application closed."""
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection for good and wait until it is closed.

        With a link open, queued messages are flushed and the closing handshake sends
        ``code`` and ``reason``. During a reconnect wait it ends at once; messages still
        queued are reported in the :class:`~resilient_ws.Closed` event and
        :attr:`undelivered`.
        """
        if self._machine.state not in (State.CLOSING, State.CLOSED):
            self._close_code, self._close_reason = code, reason
            self._machine.apply(Input.CLOSE)
            self._refresh_fast()
            self._changed.notify()
            if self._link_scope is not None:
                self._link_scope.cancel()  # graceful: the supervisor closes the link
            else:
                self._run_scope.cancel()
        await self._finished.wait()

    def events(self) -> AsyncIterator[Event]:
        """Iterate over lifecycle events, starting from the oldest one still kept.

        The last 256 events are kept. A subscriber that falls further behind gets an
        :class:`~resilient_ws.EventsMissed` event saying how many it missed. Iteration
        ends after the :class:`~resilient_ws.Closed` event.
        """
        return _EventStream(self)

    async def __aenter__(self) -> Connection:
        self._changed = Signal()
        self._finished = anyio.Event()
        self._run_scope = anyio.CancelScope()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run)
        while self._machine.state not in (State.OPEN, State.CLOSED):
            await self._changed.wait()
        if self._error is not None:
            error = self._error
            await self._task_group.__aexit__(None, None, None)
            raise error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Shielded: leaving the block because of a cancellation must still close the link.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_CLOSE_TIMEOUT):
                await self.close()
            self._run_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, traceback)

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
                log("messages_dropped", connection_id=self.connection_id, count=count, size=dropped)
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
        try:
            while self._outbox:
                message, size = self._outbox.popleft()
                self._changed.notify()  # room for senders waiting on a full queue
                try:
                    await raw.send(message)
                except _backend.ConnectionClosed:
                    self._outbox.appendleft(message, size)
                    if self._live is raw:
                        self._set_live(None)
                    raise _backend.link_closed_error(raw) from None
                count += 1
                self._sent += 1
        finally:
            self._flushing = False
            self._refresh_fast()
        return count

    # ---- the supervisor ------------------------------------------------------------------

    async def _run(self) -> None:
        error: ConnectionClosed = ConnectionClosedOK("connection closed by the application")
        try:
            with self._run_scope:
                await self._supervise()
        except LinkError as exc:
            if self._classifier(exc) == "fatal":
                error = ConnectionFailed(f"connection failed: {exc}", exc)
            else:
                error = RetryBudgetExhausted(f"gave up reconnecting: {exc}", exc)
        except Exception as exc:
            # A bug: end the connection visibly (the task group re-raises it) rather than
            # leave send() and recv() waiting for a supervisor that is gone.
            error = ConnectionFailed(f"internal error: {exc!r}", LinkError(repr(exc)))
            raise
        finally:
            # Also on cancellation from outside, so that nobody waits on a dead supervisor.
            self._finish(error)

    async def _supervise(self) -> None:
        """Attempt links until one is closed by the application or a fatal error occurs.

        tenacity drives the loop: it retries transient LinkErrors, sleeps the delays, and
        stops when the budget is spent, re-raising the last error.
        """
        retrying = AsyncRetrying(
            sleep=anyio.sleep,
            retry=retry_if_exception(self._should_retry),
            wait=self._next_delay,
            stop=self._budget_spent,
            before_sleep=self._retry_scheduled,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._attempt()

    def _should_retry(self, error: BaseException) -> bool:
        return isinstance(error, LinkError) and self._classifier(error) == "retry"

    def _next_delay(self, retry_state: RetryCallState) -> float:
        error = self._last_error
        retry_after = getattr(error, "retry_after", None)
        return next_delay(self._backoff, self._failures, self._random.random(), retry_after)

    def _budget_spent(self, retry_state: RetryCallState) -> bool:
        policy = self._backoff
        if policy.max_attempts is not None and self._failures >= policy.max_attempts:
            return True
        if policy.max_elapsed is not None and self._failing_since is not None:
            return anyio.current_time() - self._failing_since >= policy.max_elapsed
        return False

    def _retry_scheduled(self, retry_state: RetryCallState) -> None:
        delay = retry_state.upcoming_sleep
        url = redact_url(self._urls[self._url_index])
        attempt = self._failures + 1
        self._emit(Reconnecting(at=anyio.current_time(), attempt=attempt, delay=delay, url=url))
        log(
            "reconnect_scheduled",
            connection_id=self.connection_id,
            attempt=attempt,
            delay=delay,
            url=url,
        )

    async def _attempt(self) -> None:
        url = self._url = self._urls[self._url_index]
        self._attempts += 1
        attempt = self._failures + 1
        self._emit(Connecting(at=anyio.current_time(), url=redact_url(url), attempt=attempt))
        log(
            "connect_started",
            connection_id=self.connection_id,
            url=redact_url(url),
            attempt=attempt,
        )
        opened_at: float | None = None
        try:
            async with _backend.open_link(url, self._options) as raw:
                opened_at = anyio.current_time()
                await self._serve_link(raw, url)
        except LinkError as error:
            uptime = None if opened_at is None else anyio.current_time() - opened_at
            self._link_failed(error, url, uptime)
            raise

    async def _serve_link(self, raw: RawLink, url: str) -> None:
        """Run ``on_connect``, flush the queue, publish the link, and wait for its end.

        Returns when the application closed the connection; raises LinkError otherwise.
        """
        self._link_count += 1
        number = self._link_count
        if self._on_connect is not None:
            try:
                await self._on_connect(Link(raw, url, number))
            except LinkError:
                raise
            except Exception as exc:
                raise OnConnectFailed(f"on_connect raised {exc!r}") from exc
        flushed = await self._flush(raw)
        # No await between the end of the flush and publishing: nothing can be queued
        # in between, so order is kept.
        self._links.append((raw, number))
        self._machine.apply(Input.LINK_UP)
        self._set_live(raw)
        self._failing_since = None
        self._emit(
            Connected(
                at=anyio.current_time(),
                url=redact_url(url),
                link=number,
                subprotocol=raw.subprotocol,
                flushed=flushed,
            )
        )
        log(
            "link_opened",
            connection_id=self.connection_id,
            url=redact_url(url),
            link=number,
            subprotocol=raw.subprotocol,
            flushed=flushed,
        )
        await self._drop_unread_links()
        await self._wait_link_end(raw)

    async def _drop_unread_links(self) -> None:
        """Bound the ended links kept for an application that does not call ``recv()``.

        Each ended link holds at most websockets' ``max_queue`` frames; keeping the most
        recent few bounds memory. What is dropped is counted and reported, never silent.
        """
        while len(self._links) > _MAX_ENDED_LINKS + 1:
            # recv() may be reading the oldest link right now; leave that one to it.
            index = 1 if self._receiving else 0
            raw, number = self._links[index]
            del self._links[index]
            count = 0
            # An ended link returns what it buffered at once, then raises.
            with anyio.move_on_after(_CLOSE_TIMEOUT), suppress(_backend.ConnectionClosed):
                while True:
                    await raw.recv()
                    count += 1
            if count:
                self._emit(InboundDropped(at=anyio.current_time(), link=number, count=count))
                log("inbound_dropped", connection_id=self.connection_id, link=number, count=count)

    async def _wait_link_end(self, raw: RawLink) -> None:
        """Wait until the link dies (raise), the application closes (return) or failback."""
        while True:
            failback = self._failover.failback_after if self._url_index != 0 else None
            scope = anyio.CancelScope(
                deadline=math.inf if failback is None else anyio.current_time() + failback
            )
            self._link_scope = scope
            try:
                with scope:
                    await _backend.wait_link_closed(raw)
            finally:
                self._link_scope = None
            if self._machine.state is State.CLOSING:
                await self._close_link(raw)
                return
            if not scope.cancelled_caught:
                self._set_live(None)
                raise _backend.link_closed_error(raw)
            # On a backup for failback_after seconds: move back if the primary answers.
            if await self._primary_answers():
                self._set_live(None)
                reason = "failing back to the primary URL"
                await _backend.close_link(raw, _GOING_AWAY, reason)
                raise LinkClosed(_GOING_AWAY, reason)

    async def _primary_answers(self) -> bool:
        try:
            async with _backend.open_link(self._urls[0], self._options):
                return True
        except LinkError:
            return False

    async def _close_link(self, raw: RawLink) -> None:
        # What a dying link leaves in the queue is reported as undelivered.
        with suppress(LinkError):
            await self._flush(raw)
        self._set_live(None)
        await _backend.close_link(raw, self._close_code, self._close_reason)

    def _link_failed(self, error: LinkError, url: str, uptime: float | None) -> None:
        fatal = self._classifier(error) == "fatal"
        stable = uptime is not None and uptime >= self._backoff.stable_after
        self._set_live(None)
        self._last_error = error
        if stable:
            self._failures = 0
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = anyio.current_time()
        # A stable link that dropped starts again from the primary; a failed attempt
        # (or a link that did not stay up) moves on to the next URL.
        self._url_index = 0 if stable else (self._url_index + 1) % len(self._urls)
        if self._machine.state is not State.CLOSING:
            self._machine.apply(Input.LINK_DOWN)
        self._changed.notify()
        self._emit(
            Disconnected(
                at=anyio.current_time(),
                url=redact_url(url),
                cause=error,
                fatal=fatal,
                verdict="unknown",
                uptime=uptime,
            )
        )
        log(
            "link_closed" if uptime is not None else "connect_failed",
            logging.WARNING if fatal else logging.INFO,
            connection_id=self.connection_id,
            url=redact_url(url),
            cause=str(error),
            error_type=type(error).__name__,
            code=getattr(error, "code", None),
            status=getattr(error, "status", None),
            fatal=fatal,
            verdict="unknown",
            uptime=uptime,
        )

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
        log(
            "connection_closed",
            connection_id=self.connection_id,
            cause=None if cause is None else str(cause),
            undelivered=len(self.undelivered),
        )
        self._finished.set()
        self._changed.notify()

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        self._events_seen += 1
        self._changed.notify()


class _EventStream:
    """One subscriber's cursor into a connection's bounded event history.

    A plain iterator object rather than an async generator: it may be dropped
    half-way without finalization trouble on trio.
    """

    __slots__ = ("_connection", "_done", "_index")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        history = connection._events
        self._index = connection._events_seen - len(history)
        self._done = False

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        connection = self._connection
        while not self._done:
            history = connection._events
            oldest = connection._events_seen - len(history)
            if self._index < oldest:
                missed, self._index = oldest - self._index, oldest
                return EventsMissed(at=anyio.current_time(), count=missed)
            if self._index < connection._events_seen:
                event = history[self._index - oldest]
                self._index += 1
                self._done = isinstance(event, Closed)
                return event
            await connection._changed.wait()
        raise StopAsyncIteration


def connect(
    url: str | None = None,
    *,
    urls: Sequence[str] | None = None,
    backoff: Backoff = Backoff(),
    failover: Failover = Failover(),
    send_queue: SendQueue = SendQueue(),
    on_connect: OnConnect | None = None,
    classifier: Classifier = default_classifier,
    compression: str | None = None,
    **websockets_options: Any,
) -> Connection:
    """Create a :class:`Connection`; use it with ``async with``.

    Works under anyio on asyncio and on trio, with ``websockets.asyncio`` or
    ``websockets.trio`` underneath.

    Args:
        url: The server's ``ws://`` or ``wss://`` URL.
        urls: Several URLs, primary first, instead of ``url``: failover in order.
        backoff: Delays between attempts and the retry budget.
        failover: How to return to the primary URL.
        send_queue: Bounds and overflow policy of the queue used while the link is down.
        on_connect: Async hook run after every (re)connect, before queued messages flush.
        classifier: Decides whether a :class:`~resilient_ws.LinkError` is fatal.
        compression: ``None`` (default) or ``"deflate"``. Off by default: permessage-deflate
            costs about 20 times the CPU on 16 KiB messages.
        **websockets_options: Passed to websockets' ``connect`` (``ssl``,
            ``additional_headers``, ``subprotocols``, ``open_timeout``, ``max_size``...).

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
    return Connection(
        [url] if url is not None else list(urls or ()),
        backoff=backoff,
        failover=failover,
        send_queue=send_queue,
        on_connect=on_connect,
        classifier=classifier,
        options={"compression": compression, **websockets_options},
    )
