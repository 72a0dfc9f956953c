"""One replay-protocol link of a session: numbering on it, the peer's acks, our acks.

Part of the I/O layer of both the client and the server (it sleeps and sends pongs). The
session's bookkeeping is the pure :class:`~resilient_ws._replay.Outbound` and
:class:`~resilient_ws._replay.Inbound`, shared by every link of the session; a
:class:`ReplayLink` applies them to one websockets connection:

- the connection's frame hook (``_backend._Recording``) hands it every control message,
  and it applies the peer's ``ack``;
- :meth:`ReplayLink.delivered` counts a data message the application received (and on
  asyncio writes an ``ack`` due by count at once);
- :meth:`ReplayLink.run` sends our coalesced ``ack`` when due by time (and on trio by
  count), and closes the link with 4001/4002 when the peer broke the protocol.

Nothing here costs more than O(1) per message: acks release their whole range at once
(:class:`~resilient_ws._replay.Outbound`), and the ack task wakes only when an ack may be
due, never per message.

When a link ends it is *retired*: the session moves to the next link, and messages the old
link still buffered are not delivered (the peer resends them on the next link, because we
never acknowledged them).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

import anyio

from . import _backend
from ._backend import RawLink
from ._logging import log
from ._outbox import Message, payload_size
from ._protocol import ControlError, ack_of, encode_ack
from ._replay import Inbound, Outbound, ProtocolViolation

__all__ = ["ReplayLink"]

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
        "_inbound",
        "_log_fields",
        "_outbound",
        "_overflow_mark",
        "_wake",
        "_write_now",
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
        self._wake = anyio.Event()
        self._write_now = not _backend.is_trio()  # see wake()
        # Overflow is logged once per link: when the count passes this mark.
        self._overflow_mark = outbound.overflowed
        self.retired = False
        """The session moved on: messages still read from this link are not delivered."""
        self.violation: ProtocolViolation | None = None
        """How the peer broke the protocol on this link, if it did."""
        raw.control = self

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
        """:meth:`Inbound.deliver` said the ack task must look (for callers that count
        deliveries on the session's :class:`Inbound` themselves).

        On asyncio an ack due now is written at once instead, into the transport's
        buffer: a busy link then acknowledges without a task switch. (trio's writes
        wait for the socket: there the task sends it.)
        """
        inbound = self._inbound
        if self._write_now and inbound.ack_due(self.raw.last_inbound):
            _backend.pong_nowait(self.raw, encode_ack(inbound.take_ack()))
        else:
            self._wake.set()

    def retire(self) -> None:
        """The link ended (or was taken over): deliver nothing more from it."""
        self.retired = True
        self._wake.set()

    async def run(self) -> None:
        """Send acks when due, until the link closes; close it on a protocol violation.

        The task sleeps until :meth:`wake` wakes it (a message arrived that no timer
        covers; on trio also an ack due by count, which asyncio writes in :meth:`wake`
        itself) or until the timer :meth:`Inbound.ack_timer` armed. On a busy link it
        so wakes once per ack on trio, and on asyncio only when the timer fires (at most
        once per ``ack_delay``). The timer is the deadline of a cancel scope kept across
        wakes, not a new scope per wait: a new one is needed only after one expired.
        """
        # An expiring timer must not cancel an ack halfway: on trio a cancelled write can
        # leave half a frame on the wire. (asyncio writes the frame before any await.)
        guard = _backend.is_trio()
        done = False
        while not done:
            with anyio.CancelScope() as timer:
                done = await self._serve(timer, guard)
        if self.violation is not None:
            await self._close_for(self.violation)

    async def _serve(self, timer: anyio.CancelScope, guard: bool) -> bool:
        """Acknowledge and sleep inside ``timer``; ``True`` once the task is done (the
        link retired or closed, or the peer broke the protocol). Returns only then:
        otherwise ``timer`` expires, cancelling the sleep. ``guard``: lift the deadline
        while an ack is written."""
        inbound = self._inbound
        while not self.retired and self.violation is None:
            # A fresh event before looking: a wake during the ack below is not lost.
            wake = self._wake = anyio.Event()
            now = anyio.current_time()
            if inbound.ack_due(now):
                if guard:
                    timer.deadline = math.inf
                if not await self.send_ack():
                    return True
            deadline = inbound.ack_timer(now)
            deadline = math.inf if deadline is None else deadline
            if timer.deadline != deadline:
                timer.deadline = deadline
            await wake.wait()
        return True

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
        except ControlError as exc:
            self._violated(ProtocolViolation(exc.code, str(exc)))
        except ProtocolViolation as exc:
            self._violated(exc)

    def malformed(self, error: ControlError) -> None:
        """The frame hook could not decode a control message."""
        if self.violation is None:
            self._violated(ProtocolViolation(error.code, str(error)))

    def _violated(self, violation: ProtocolViolation) -> None:
        self.violation = violation
        self._wake.set()

    async def _close_for(self, violation: ProtocolViolation) -> None:
        log(
            "protocol_violated",
            logging.WARNING,
            **self._log_fields,
            code=violation.code,
            reason=violation.reason,
        )
        await _backend.close_link(self.raw, violation.code, violation.reason[:120])
