"""The links of one client connection, as the application uses them.

Part of the client's I/O layer. One :class:`ClientLinks` per connection moves the
application's messages over whichever link is up: ``send()`` writes to the live link
directly or queues while none is (the :class:`~resilient_ws._core.client.ClientCore`'s
send queue), ``recv()`` reads the links in order, each to its end. The reconnect loop
(:mod:`resilient_ws._io.reconnect`) hands it each new link (:meth:`ClientLinks.begin`,
:meth:`ClientLinks.go_live`) and tells it when the link is gone (:meth:`ClientLinks.lost`).

Per link it runs one of two ways of losing nothing: the replay protocol
(:class:`~resilient_ws._io.replaylink.ReplayLink`: numbered, acknowledged, resent on
resume), or on a plain link the :class:`~resilient_ws._core.plainwindow.PlainWindow` of
recently sent messages, whose unreceived tail (by the kernel's count of acknowledged bytes)
is queued again when the link dies.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import anyio
import anyio.lowlevel

from .._core.client import ClientCore, LinkStart
from .._core.outbox import Message, payload_size
from .._core.plainwindow import PlainWindow
from .._core.protocol import SUBPROTOCOL
from .._core.state import Input, State
from .._logging import log
from ..events import Event, InboundDropped
from ..exceptions import ConcurrencyError, LinkClosed, LinkError, ProtocolViolation
from . import backend as _backend
from .backend import RawLink
from .link import Link
from .replaylink import ReplayLink, let_go
from .signals import Signal

__all__ = ["ClientLinks"]

# Longest the unread messages of a dropped ended link are drained for (seconds).
_DRAIN_TIMEOUT = 10.0
# Ended links whose unread messages are kept when the application does not call recv().
_MAX_ENDED_LINKS = 8


class ClientLinks:
    """The live link and the ended ones ``recv()`` still reads, for one connection.

    Args:
        core: The connection's state, queue, session and counters.
        connection_id: The connection's id, for the log.
        emit: Records an event (history and log).
        changed: Notified whenever something a waiter may wait for changed.
    """

    def __init__(
        self,
        core: ClientCore,
        *,
        connection_id: str,
        emit: Callable[[Event], None],
        changed: Signal,
    ) -> None:
        self._core = core
        self._outbox = core.outbox
        self._connection_id = connection_id
        self._emit = emit
        self._changed = changed
        # Links whose messages recv() still has to return, oldest first, with their numbers
        # and, on replay links, their ReplayLink.
        self._readable: deque[tuple[RawLink, int, ReplayLink | None]] = deque()
        # The current link's replay protocol, while the link speaks it.
        self._replay: ReplayLink | None = None
        self.live: RawLink | None = None
        """The link that ``send()`` writes to; ``None`` while down or being set up."""
        # On a plain link (no replay protocol): its recently sent messages, to resend
        # what the server never received when it dies, and the link and its number.
        self._window: PlainWindow | None = None
        self._window_raw: RawLink | None = None
        self._window_link = 0
        # The live link while send() may write to it directly, else None (refresh_fast).
        self._fast: RawLink | None = None
        self._flushing = False
        self._receiving = False

    # ---- the application's side ----------------------------------------------------------

    async def send(self, message: Message) -> None:
        """:meth:`Connection.send <resilient_ws.Connection.send>`."""
        # The fast path: one attribute check while a link is up and nothing is queued.
        raw = self._fast
        if raw is None or not (type(message) is str or type(message) is bytes):
            raw = await self._send_slow(message)
            if raw is None:
                return  # queued
        replay = self._replay  # the live link's, if it speaks the protocol
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
            if self.live is raw:
                self.set_live(None)
            elif self.live is not None:
                await self._flush(self.live)  # a new link is already up
            self.refresh_fast()
            return
        if window is not None:
            end = raw.bytes_written
            window.done(end)
            if end > window.check_at:
                _check_window(raw, window, end)
        self._core.sent += 1

    async def _send_slow(self, message: Message) -> RawLink | None:
        """Validate; return the link to write to, or queue (and flush) and return None."""
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"message must be str or bytes, not {type(message).__name__}")
        self._core.check_sendable()
        if self._fast is not None:
            return self._fast
        await self._enqueue(message)
        if self.live is not None:
            await self._flush(self.live)
        else:
            # Queued. Yield all the same: an application that sends in a loop while the
            # link is down must not hold the event loop.
            await anyio.lowlevel.checkpoint()
        return None

    async def _enqueue(self, message: Message) -> None:
        size = payload_size(message)
        outbox = self._outbox
        outbox.check_size(size)
        while not outbox.has_room(size):
            dropped = self._core.full(size, anyio.current_time())
            if dropped is not None:
                self._emit(dropped)
                break
            await self._changed.wait()
            self._core.check_sendable()
        outbox.append(message, size)
        self.refresh_fast()

    async def recv(self) -> Message:
        """:meth:`Connection.recv <resilient_ws.Connection.recv>`."""
        if self._receiving:
            raise ConcurrencyError("recv() is already running in another task")
        self._receiving = True
        try:
            while True:
                if self._readable:
                    raw, _, replay = self._readable[0]
                    try:
                        message = await raw.recv()
                    except _backend.ConnectionClosed:
                        # This link is drained; move on to the next one.
                        if self._readable and self._readable[0][0] is raw:
                            self._readable.popleft()
                        continue
                    if replay is not None:
                        if replay.retired:
                            continue  # not acknowledged: the server resends it
                        replay.delivered()
                    self._core.received += 1
                    return message
                if self._core.error is not None:
                    raise self._core.error
                await self._changed.wait()
        finally:
            self._receiving = False

    def set_live(self, raw: RawLink | None) -> None:
        self.live = raw
        self.refresh_fast()

    def refresh_fast(self) -> None:
        """Keep ``_fast`` equal to the live link exactly when send() may write to it directly:
        a link is live, the connection is open, and nothing is queued or flushing (a direct
        send would overtake queued messages).
        """
        live = self.live
        direct = (
            live is not None
            and not self._outbox
            and not self._flushing
            and self._core.machine.state is State.OPEN
        )
        self._fast = live if direct else None

    def retire(self) -> None:
        """The connection is over: the last link's ack timer goes too (it is on the
        loop's shared timers), so nothing of ours is left pending."""
        if self._replay is not None:
            self._replay.retire()

    # ---- the reconnect loop's side -------------------------------------------------------

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        """websockets options for the next attempt: the replay protocol's offer."""
        offer = self._core.offer()
        if offer is None:
            return options
        return _backend.offer_subprotocol(options, SUBPROTOCOL, offer)

    async def begin(self, raw: RawLink) -> bool:
        """Set up a new link: resume the replay session on it (sending first what the
        server lacks) or report the session lost; whether ``on_connect`` runs.

        Raises:
            LinkClosed: The server broke the protocol (the link is closed with its code),
                or the link died during the resend.
        """
        core = self._core
        now = anyio.current_time()
        try:
            start = core.link_opened(now, raw.subprotocol, _backend.response_headers(raw))
        except ProtocolViolation as exc:
            code, reason = exc.code, exc.reason[:120]
            log("protocol_violated", connection_id=self._connection_id, code=code, reason=reason)
            await _backend.close_link(raw, code, reason)
            raise LinkClosed(code, reason) from exc
        if start.withheld:
            # A message among them made the server's handler fail, again: resent, it would
            # fail the next session too, forever. They are reported instead.
            log("resend_withheld", logging.WARNING, connection_id=self._connection_id,
                session_id=start.lost_session, messages=start.withheld,
                handler_failures=core.handler_failures)  # fmt: skip
        for event in start.events:
            self._emit(event)
        replay = None
        if start.session_id is not None:
            assert core.session is not None
            replay = self._replay = ReplayLink(
                raw,
                core.session.outbound,
                core.session.inbound,
                log_fields={"connection_id": self._connection_id, "session_id": start.session_id},
            )
        if start.events:
            self.refresh_fast()
        if start.run_hook:
            return True
        assert replay is not None  # only a replay session resumes
        await self._resend(replay, start)
        return False

    async def _resend(self, replay: ReplayLink, start: LinkStart) -> None:
        try:
            await replay.resend(start.resend)
        except _backend.ConnectionClosed:
            raise _backend.link_closed_error(replay.raw) from None
        self._emit(self._core.resumed(anyio.current_time(), start))

    def hook_link(self, raw: RawLink, url: str) -> Link:
        """The view of ``raw`` that ``on_connect`` gets."""
        return Link(raw, url, self._core.links, self._replay_of(raw))

    async def go_live(self, raw: RawLink) -> None:
        """The link is set up: let recv() read it, flush the queue on it, then make it
        the link that send() writes to.

        Raises:
            LinkError: The link died during the flush.
        """
        core = self._core
        number = core.links
        # Readable before the flush: the peer's acks and replies arrive on the same
        # stream, and websockets stops reading it while unread messages pile up.
        self._readable.append((raw, number, self._replay_of(raw)))
        self._changed.notify()
        flushed = await self._flush(raw)
        self._emit(core.link_up(anyio.current_time(), raw.subprotocol, flushed))
        if core.closing:
            # close() came while the link was being set up: it cancelled the reconnect
            # loop, which may not have reached a checkpoint since (flushing an empty queue
            # has none). The link is not published; the cancellation ends it.
            await anyio.lowlevel.checkpoint()
            return
        # The flush above had no await since its end: nothing can have been queued in
        # between, so a direct send now keeps order.
        core.machine.apply(Input.LINK_UP)
        self.set_live(raw)
        await self._drop_unread_links()

    def lost(self) -> None:
        """The link (if any was published) is gone."""
        replay, self._replay = self._replay, None
        if replay is not None:
            # What the link still buffers was not acknowledged: the server resends it.
            let_go(replay.raw, replay)
            self._readable = deque(entry for entry in self._readable if entry[2] is not replay)
        self._resend_unreceived()
        self.set_live(None)
        self._core.link_down()
        self._changed.notify()

    async def close_link(self, raw: RawLink) -> None:
        """The application closes: flush what is queued, then close ``raw`` with its code."""
        # What a dying link leaves in the queue is reported as undelivered.
        with suppress(LinkError):
            await self._flush(raw)
        self.set_live(None)
        # The closing handshake delivers what was written; the connection ends here.
        self._window = self._window_raw = None
        code, reason = self._core.close_code, self._core.close_reason
        replay = self._replay_of(raw)
        if replay is not None:
            await replay.close(code, reason)  # with the last ack: the session ends here
        else:
            await _backend.close_link(raw, code, reason)

    # ---- the queue and the link ----------------------------------------------------------

    def _replay_of(self, raw: RawLink) -> ReplayLink | None:
        replay = self._replay
        return replay if replay is not None and replay.raw is raw else None

    async def _flush(self, raw: RawLink) -> int:
        """Send queued messages on ``raw`` in order; return how many.

        Only one task flushes at a time; others leave their messages to it.

        Raises:
            LinkClosed: The link died; the message in flight is back at the queue's head.
        """
        if self._flushing:
            return 0
        self._flushing = True
        self.refresh_fast()
        count = 0
        replay = self._replay_of(raw)
        window = None if replay is not None else self._plain_window(raw)
        outbox = self._outbox
        try:
            while outbox:
                if window is not None and self._window is not window:
                    # The link ended while we sent: what it lacked is back in the queue.
                    raise _backend.link_closed_error(raw)
                message, size = outbox.popleft()
                self._changed.notify()  # room for senders waiting on a full queue
                if replay is not None:
                    replay.record(message, size)
                elif window is not None:
                    window.push(message)
                try:
                    await raw.send(message)
                except _backend.ConnectionClosed:
                    if replay is None and window is None:
                        outbox.appendleft(message, size)
                    if self.live is raw:
                        self.set_live(None)
                    raise _backend.link_closed_error(raw) from None
                if window is not None:
                    end = raw.bytes_written
                    window.done(end)
                    if end > window.check_at:
                        _check_window(raw, window, end)
                count += 1
                self._core.sent += 1
        finally:
            self._flushing = False
            self.refresh_fast()
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
            self._window_link = self._core.links
        return self._window

    def _resend_unreceived(self) -> None:
        """A plain link ended: queue again, first, the messages the server never received.

        The link is closed (its socket sampled just before), except when the reconnect
        loop leaves it for the primary URL: then a closing handshake follows, which
        delivers everything written before it, and nothing is resent.
        """
        window, raw = self._window, self._window_raw
        self._window = self._window_raw = None
        if window is None or raw is None or raw.close_code is None:
            return
        acked, transmitted, evidence = _backend.acked_offset(raw)
        resend = window.unreceived(acked, transmitted)
        if not resend.messages and not resend.overflowed:
            return
        event = self._core.resent_plain(anyio.current_time(), self._window_link, resend, evidence)
        self.refresh_fast()
        self._changed.notify()
        self._emit(event)

    async def _drop_unread_links(self) -> None:
        """Bound the ended links kept for an application that does not call ``recv()``.

        Each ended link holds at most websockets' ``max_queue`` frames; keeping the most
        recent few bounds memory. What is dropped is counted and reported, never silent.
        """
        while len(self._readable) > _MAX_ENDED_LINKS + 1:
            # recv() may be reading the oldest link right now; leave that one to it.
            index = 1 if self._receiving else 0
            raw, number, _ = self._readable[index]
            del self._readable[index]
            count = 0
            # An ended link returns what it buffered at once, then raises.
            with anyio.move_on_after(_DRAIN_TIMEOUT), suppress(_backend.ConnectionClosed):
                while True:
                    await raw.recv()
                    count += 1
            if count:
                self._emit(InboundDropped(at=anyio.current_time(), link=number, count=count))


def _check_window(raw: RawLink, window: PlainWindow, end: int) -> None:
    """Every ``check_every`` bytes of stream (never per message): forget what the server's
    TCP acknowledged, so the window holds only the unacknowledged tail, then enforce its
    bounds."""
    acked = _backend.acked_now(raw)
    if acked is not None:
        window.confirm(acked)
    window.trim(end)
