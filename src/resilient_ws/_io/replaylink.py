"""One replay-protocol link of a session: numbering on it, the peer's acks, our acks.

Part of the I/O layer of both the client and the server (it sleeps and sends pongs). The
session's bookkeeping is the pure :class:`~resilient_ws._core.replay.Outbound` and
:class:`~resilient_ws._core.replay.Inbound`, shared by every link of the session; a
:class:`ReplayLink` applies them to one websockets connection:

- the connection's frame hook (``_io.hooks._Recording``) hands it every control message,
  and it applies the peer's ``ack``;
- :meth:`ReplayLink.delivered` counts a data message the application received, and sends
  our coalesced ``ack`` when due by count (at once on asyncio, from a task on trio) or
  sets the loop's shared timer (:mod:`~resilient_ws._io.timers`) for when it is due by time;
- a peer that broke the protocol gets its link closed with 4001/4002.

Nothing here costs more than O(1) per message: acks release their whole range at once
(:class:`~resilient_ws._core.replay.Outbound`), and the ack timer is set only when an ack may
fall due, never per message. A link has no task of its own.

When a link ends it is *retired*: the session moves to the next link, and messages the old
link still buffered are not delivered (the peer resends them on the next link, because we
never acknowledged them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .._core.outbox import Message, payload_size
from .._core.protocol import ack_of, encode_ack
from .._core.replay import Inbound, Outbound
from .._logging import log
from ..exceptions import ProtocolViolation
from . import backend as _backend
from .backend import RawLink
from .timers import Timer, Timers

__all__ = ["ReplayLink", "let_go"]

# An overflow mark no count reaches: the overflow of this link was logged.
_NEVER = sys.maxsize


class ReplayLink:
    """The replay protocol on one link.

    Args:
        raw: The websockets connection; it negotiated the replay subprotocol.
        outbound: The session's sending half.
        inbound: The session's receiving half.
        ack_every: Ignored (``inbound`` has its own); accepted for older callers.
        log_fields: Fields added to this link's log events (``connection_id``,
            ``session_id``...).
    """

    __slots__ = (
        "_deadline",
        "_inbound",
        "_log_fields",
        "_outbound",
        "_overflow_mark",
        "_timer",
        "_timers",
        "raw",
        "retired",
        "violation",
    )

    def __init__(
        self,
        raw: RawLink,
        outbound: Outbound,
        inbound: Inbound,
        *,
        ack_every: int | None = None,
        log_fields: Mapping[str, Any],
    ) -> None:
        del ack_every  # the inbound half's own setting decides (Inbound.deliver)
        self.raw = raw
        self._outbound = outbound
        self._inbound = inbound
        self._log_fields = dict(log_fields)
        self._timers = Timers.current()
        # The ack timer, and when it fires.
        self._timer: Timer | None = None
        self._deadline = 0.0
        # Overflow is logged once per link: when the count passes this mark.
        self._overflow_mark = outbound.overflowed
        self.retired = False
        """The session moved on: messages still read from this link are not delivered."""
        self.violation: ProtocolViolation | None = None
        """How the peer broke the protocol on this link, if it did."""
        raw.control = self
        # What the session's previous link left: an ack due, the timer to set for one.
        self._look(self._timers.now())

    def record(self, message: Message, size: int | None = None) -> int:
        """Number a data message about to be sent on this link; keep it for replay.

        Sending never waits for acks: they travel behind data, and a sender that waited
        for them could deadlock against a peer whose application is not reading. A full
        buffer drops its oldest messages instead; the peer learns of any it lacks, as an
        exact gap, when it resumes.
        """
        outbound = self._outbound
        if size is None:
            size = len(message) if type(message) is bytes else payload_size(message)
        number = outbound.record(message, size)
        if outbound.overflowed > self._overflow_mark:
            self._overflow_mark = _NEVER  # once per link
            log("replay_overflowed", logging.WARNING, **self._log_fields,
                dropped_through=outbound.replay_from - 1)  # fmt: skip
        return number

    def delivered(self) -> int:
        """Count a data message of this link that the application received; its number."""
        inbound = self._inbound
        # The frame hook stamped the arrival: cheaper than reading the clock again.
        if inbound.deliver(self.raw.last_inbound):
            self.wake()
        return inbound.received

    def wake(self) -> None:
        """:meth:`Inbound.deliver` said an ack may be due (for callers that count
        deliveries on the session's :class:`Inbound` themselves): send it if due now,
        else set the timer for when it will be.

        The ack is written without waiting (:func:`~resilient_ws._io.backend.send_control`):
        a busy link acknowledges without a task switch.
        """
        self._look(self.raw.last_inbound)

    def retire(self) -> None:
        """The link ended (or was taken over): deliver nothing more from it."""
        self.retired = True
        self._disarm()

    def _look(self, now: float) -> None:
        """Send the ack if due; set the timer for the next one."""
        if self.retired or self.violation is not None:
            return
        inbound = self._inbound
        if inbound.ack_due(now):
            _backend.send_control(self.raw, encode_ack(inbound.take_ack()))
        deadline = inbound.ack_timer(now)
        if deadline is None or (self._timer is not None and self._deadline <= deadline):
            return
        self._disarm()
        self._deadline = deadline
        self._timer = self._timers.call_at(deadline, self._due)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        self._look(self._timers.now())

    async def resend(self, messages: Iterable[Message]) -> None:
        """Send again, before anything else, what the peer lacks (a resumed session); they
        keep their numbers.

        Raises:
            websockets.exceptions.ConnectionClosed: The link closed during the resend.
        """
        raw = self.raw
        for message in messages:
            await raw.send(message)

    async def close(self, code: int, reason: str) -> None:
        """The session ends with this link: acknowledge everything delivered, then close
        the link with ``code``."""
        await self.send_ack()
        await _backend.close_link(self.raw, code, reason)

    async def send_ack(self) -> bool:
        """Acknowledge every message delivered so far; ``False`` if the link is closed."""
        try:
            await _backend.pong(self.raw, encode_ack(self._inbound.take_ack()))
        except _backend.ConnectionClosed:
            return False
        return True

    def on_control(self, fields: Mapping[str, float]) -> None:
        """A control message arrived (called from the connection's frame hook)."""
        if self.violation is not None:
            return
        try:
            ack = ack_of(fields)
            if ack is not None:
                self._outbound.ack(ack)
        except ProtocolViolation as exc:
            self._violated(exc)

    def malformed(self, error: ProtocolViolation) -> None:
        """The frame hook could not decode a control message."""
        if self.violation is None:
            self._violated(error)

    def _violated(self, violation: ProtocolViolation) -> None:
        self.violation = violation
        self._disarm()
        self._timers.spawn(self._close_for, violation)

    async def _close_for(self, violation: ProtocolViolation) -> None:
        log(
            "protocol_violated",
            logging.WARNING,
            **self._log_fields,
            code=violation.code,
            reason=violation.reason,
        )
        await _backend.close_link(self.raw, violation.code, violation.reason[:120])


def let_go(raw: RawLink, replay: ReplayLink | None) -> None:
    """A session stops using ``raw`` (it ended, was taken over, or failed its resend):
    what it still delivers is not the session's (the peer resends what we did not
    acknowledge), and since nobody reads it any more websockets must: its trio connection
    stops reading once its buffer fills, and would never see the link end. Client and
    server both leave a link this way."""
    if replay is not None:
        replay.retire()
    _backend.resume_reading(raw)
