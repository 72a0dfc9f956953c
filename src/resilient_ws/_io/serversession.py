"""The logical session that ``serve()``'s handler sees: one per client, across its links.

Part of the server's I/O layer. A replay session (the client negotiated the replay
protocol) outlives its links: while the client is away, :meth:`ServerSession.send` keeps
messages in the bounded replay buffer, and the next link resends what the client lacks. A
plain client gets a one-link session with the same interface.

A session is in one of three link states:

- live: a link is attached, ``send()`` writes to it;
- away: no link; ``send()`` numbers and buffers (the replay buffer is the away buffer,
  so overflow is an exact gap the client learns on resume);
- resuming: a resume was granted but the new link is not serving yet; ``send()`` waits,
  because the grant told the client where the buffer starts and must stay true.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any, Literal

import anyio
from anyio.lowlevel import checkpoint

from .._core.outbox import Message, payload_size
from .._core.replay import Budget, LostRange, buffers
from .._logging import log, log_event
from ..config import Replay
from ..events import Gap
from ..exceptions import ConnectionClosed, ConnectionClosedOK, ConnectionFailed, LinkClosed
from . import backend as _backend
from .backend import RawLink
from .replaylink import ReplayLink, let_go
from .signals import MessageIterator, Signal

__all__ = ["LinkOutcome", "ServerSession"]

# Gaps kept per session for the application to inspect.
_MAX_GAPS = 64
# Close code of a link taken over by a newer one (docs/protocol.md section 6).
TAKEN_OVER = 4003
# Close code of an internal error (RFC 6455): serve()'s when the handler raised.
_INTERNAL_ERROR = 1011

LinkOutcome = Literal["ended", "detached", "superseded"]
"""What a link's end meant for its session: the session ``"ended"`` (a normal close, or a
plain client), is ``"detached"`` (waiting for the client to resume), or the link had been
``"superseded"`` by a newer one."""


class ServerSession(MessageIterator):
    """One client's session, as ``serve()``'s handler sees it.

    Iterate over it (or call :meth:`recv`) to receive messages and call :meth:`send` to
    send them. With a resilient_ws client (replay protocol) the session survives the
    client's reconnects: no message is lost or duplicated in either direction, and the
    handler never sees the blip. With any other client it lasts one connection.

    Attributes:
        id: The session id (``None`` for a plain client).
        replay: Whether the client speaks the replay protocol.
        request: The opening handshake request of the session's first link
            (``request.path``, ``request.headers``).
    """

    def __init__(
        self,
        *,
        session_id: str | None,
        policy: Replay | None,
        request: Any,
        budget: Budget | None = None,
    ) -> None:
        self.id = session_id
        self.replay = policy is not None
        self.request = request
        policy = policy or Replay()
        self.outbound, self.inbound = buffers(policy, budget)
        self._raw: RawLink | None = None
        self._link: ReplayLink | None = None
        # The link a resume was granted to, until it serves (or gives up).
        self._resuming: object | None = None
        self._error: ConnectionClosed | None = None
        self._changed = Signal()
        self._receiving = False
        self._gaps: deque[Gap] | None = None  # made at the first gap (~0.6 KiB each)
        # Overflow is logged once per link or absence: when the count passes this mark.
        self._overflow_mark = 0
        self.links = 0
        """Links the session has had."""
        self.resent = 0
        """Messages sent again on resumed links because the client lacked them."""

    # ---- the handler's API ---------------------------------------------------------------

    @property
    def remote_address(self) -> Any:
        """The current link's remote address, or ``None`` while the client is away."""
        return None if self._raw is None else _backend.peer_address(self._raw)

    @property
    def connected(self) -> bool:
        """Whether a link is attached now."""
        return self._raw is not None

    @property
    def gaps(self) -> tuple[Gap, ...]:
        """The client's messages that will never arrive (its replay buffer overflowed
        while it was away), as :class:`~resilient_ws.Gap` events with reason
        ``"overflow"``, oldest first; the last 64 are kept."""
        return () if self._gaps is None else tuple(self._gaps)

    async def send(self, message: Message) -> None:
        """Send a message; while the client is away, buffer it for the next link.

        It never waits for the client's acks: past the replay buffer's bounds (messages
        the client has not acknowledged, or sent while it was away) the oldest are
        dropped, logged (``resilient_ws.replay_overflowed``), and reported to the client
        as an exact ``Gap`` if it turns out to lack them when it resumes.

        Raises:
            TypeError: ``message`` is neither ``str`` nor ``bytes``.
            ConnectionClosed: The session ended.
        """
        if (
            self._resuming is not None
            or self._error is not None
            or not (type(message) is str or type(message) is bytes)
        ):
            await self._before_send(message)
        raw = self._raw
        if not self.replay:
            assert raw is not None
            try:
                await raw.send(message)
            except _backend.ConnectionClosed as exc:
                # Over, but recv() may still return what the client sent before it left.
                raise self._ending(raw) from exc
            return
        outbound = self.outbound
        # payload_size() inlined for bytes: this is the one per-message call of replay.
        outbound.record(message, len(message) if type(message) is bytes else payload_size(message))
        if outbound.overflowed > self._overflow_mark:
            self._overflowed()
        if raw is None:
            # Buffered for the next link. Yield all the same: a handler that sends in a
            # loop while its client is away must not hold the event loop.
            await checkpoint()
            return
        try:
            await raw.send(message)
        except _backend.ConnectionClosed:
            # The replay buffer still has the message for the next link. websockets
            # raised without yielding (the link was closed already): yield, so that the
            # link's own task can detach it, or this loop would spin on the dead link.
            await checkpoint()

    async def _before_send(self, message: Message) -> None:
        """Validate; wait while a resume is being granted; raise if the session ended."""
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"message must be str or bytes, not {type(message).__name__}")
        while self._resuming is not None and self._error is None:
            await self._changed.wait()
        if self._error is not None:
            raise self._error

    async def recv(self) -> Message:
        """Receive the client's next message, across its reconnects, in order.

        Raises:
            ConnectionClosedOK: The client closed the session normally (code 1000/1001)
                or :meth:`close` was called.
            ConnectionFailed: The session ended otherwise: a plain client's connection
                failed, or a replay client did not come back within the session TTL.
        """
        while True:
            raw, link = self._raw, self._link
            if raw is None:
                if self._error is not None:
                    raise self._error
                await self._changed.wait()
                continue
            try:
                message = await raw.recv()
            except _backend.ConnectionClosed as exc:
                if not self.replay:
                    error = self._ending(raw)
                    self._detach()
                    raise error from exc
                while self._raw is raw:  # until the link is detached or replaced
                    await self._changed.wait()
                continue
            if link is not None:
                if link.retired:
                    continue  # not acknowledged: the client resends it
                # ReplayLink.delivered() inlined: one call per message, not two.
                if self.inbound.deliver(raw.last_inbound):
                    link.wake()
            return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session and close its link (if one is attached) with ``code``.

        Every message received so far is acknowledged first, so the client does not count
        them as lost or send them again; except with code 1011 (internal error, what
        ``serve()`` sends when the handler raised): what the handler was handed may not
        have been processed, and a client that resends into a new session sends it again
        (``docs/protocol.md`` section 5).
        """
        raw, link = self._raw, self._link
        self._end(ConnectionClosedOK("the session was closed by the server"))
        if link is not None and code != _INTERNAL_ERROR:
            await link.close(code, reason)
        elif raw is not None:
            await _backend.close_link(raw, code, reason)

    def _overflowed(self) -> None:
        # Unacknowledged messages were dropped: the client gets a Gap if it lacks them
        # when it resumes; say so here too, once per link or absence.
        self._overflow_mark = sys.maxsize
        log("replay_overflowed", logging.WARNING, session_id=self.id,
            dropped_through=self.outbound.replay_from - 1)  # fmt: skip

    # ---- driven by the server ------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether the session is over."""
        return self._error is not None

    def ended_by(self, error: BaseException) -> bool:
        """Whether ``error`` is the exception with which :meth:`recv` and :meth:`send`
        report the session's end: a handler that lets it out ended normally."""
        return error is self._error

    @property
    def resuming(self) -> bool:
        """Whether a resume was granted to a link that does not serve yet."""
        return self._resuming is not None

    def granted(self, resuming: object, gap: LostRange | None) -> RawLink | None:
        """A resume was granted to the link ``resuming``: detach the live link (if any,
        returned, to be closed with 4003) and hold sends until :meth:`attach`."""
        self._resuming = resuming
        if gap is not None:
            assert self.id is not None  # only replay sessions resume
            if self._gaps is None:
                self._gaps = deque(maxlen=_MAX_GAPS)
            lost = Gap(at=anyio.current_time(), session_id=self.id, first=gap.first,
                       last=gap.last, reason="overflow")  # fmt: skip
            self._gaps.append(lost)
            log_event(lost)
        old = self._raw
        self._detach()
        return old

    def abandon_grant(self, resuming: object) -> None:
        """The link a resume was granted to never served: sends may buffer again."""
        if self._resuming is resuming:
            self._resuming = None
            self._changed.notify()

    async def attach(self, raw: RawLink, resuming: object | None) -> ReplayLink | None:
        """Make ``raw`` the session's link; resend what the client lacks, in order.

        Returns:
            The link's replay protocol (``None`` for a plain client).

        Raises:
            LinkClosed: The link was superseded (another resume was granted since) or
                closed during the resend. A client that closed it normally (1000, 1001)
                ended the session, as on a link that served (:meth:`link_ended`).
        """
        self.links += 1
        if not self.replay:
            self._raw = raw
            self._changed.notify()
            return None
        if resuming is not None and self._resuming is not resuming:
            raise LinkClosed(TAKEN_OVER, "superseded by a newer resume")
        link = ReplayLink(raw, self.outbound, self.inbound, log_fields={"session_id": self.id})
        resend = self.outbound.unacked()
        try:
            await link.resend(message for _, message in resend)
        except _backend.ConnectionClosed:
            let_go(raw, link)
            self.abandon_grant(resuming)
            # A close frame fails the next send at once, before the close is over and
            # its code known: wait for it (bounded) to tell an end from a loss.
            with anyio.move_on_after(_backend.EXIT_TIMEOUT):
                await raw.wait_closed()
            self._closed(raw)
            raise _backend.link_closed_error(raw) from None
        self.resent += len(resend)
        self._overflow_mark = self.outbound.overflowed
        self._raw, self._link, self._resuming = raw, link, None
        self._changed.notify()
        return link

    def link_ended(self, raw: RawLink) -> LinkOutcome:
        """``raw`` closed: the session ``"ended"`` (a normal close, or a plain client),
        is ``"detached"`` (waiting for the client to resume) or the link was already
        ``"superseded"`` by a newer one."""
        if self._raw is not raw:
            return "superseded"
        self._detach()
        return self._closed(raw)

    def grant_closed(self, resuming: RawLink) -> LinkOutcome:
        """The link a resume was granted to closed before it served: websockets runs no
        handler for a link closed during its opening handshake. The session ``"ended"`` if
        the client closed it normally, is ``"detached"`` otherwise, or the grant was
        already ``"superseded"`` by a newer one."""
        if self._resuming is not resuming:
            return "superseded"
        self.abandon_grant(resuming)
        return self._closed(resuming)

    def _closed(self, raw: RawLink) -> Literal["ended", "detached"]:
        """``raw``, the session's link or one granted to it, closed: whether that ended
        the session or leaves it waiting for the client."""
        code = _backend.end_code(raw)
        if code in (1000, 1001):
            self._end(ConnectionClosedOK("the client closed the session"))
            return "ended"
        # A message too big or not UTF-8, either way: a resume would carry it again.
        if not self.replay or code in _backend.POISONED:
            self._end(self._link_ended_error(raw))
            return "ended"
        return "detached"

    def release(self) -> None:
        """The handler is done: let reference counting free the session at once.

        The error that ended the session was raised into the handler: its traceback's
        frames refer to the session, a cycle that only the cyclic garbage collector would
        free, with the session's replay buffer (issue 11: 412 MB of 300 expired sessions).
        """
        if self._error is not None:
            self._error.__traceback__ = None

    def expired(self) -> None:
        """The client did not come back within the session store's TTL."""
        self._end(
            ConnectionFailed(
                "session expired: the client did not resume within the session TTL",
                LinkClosed(_backend.ABNORMAL_CLOSURE, "session expired"),
            )
        )

    def _detach(self) -> None:
        if self._raw is not None:
            let_go(self._raw, self._link)
        self._raw = self._link = None
        self._changed.notify()

    def _end(self, error: ConnectionClosed) -> None:
        if self._error is None:
            self._error = error
        self._detach()
        self.outbound.clear()  # nothing will be resent: free it (and the budget) now

    def _ending(self, raw: RawLink) -> ConnectionClosed:
        """A plain session's link closed: the session is over; the one error that
        reports it (raised again by every later call)."""
        if self._error is None:
            self._error = self._link_ended_error(raw)
        return self._error

    @staticmethod
    def _link_ended_error(raw: RawLink) -> ConnectionClosed:
        error = _backend.link_closed_error(raw)
        if error.code in (1000, 1001):
            return ConnectionClosedOK("the client closed the connection")
        return ConnectionFailed(f"the connection failed: {error}", error)
