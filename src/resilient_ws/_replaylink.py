"""One replay-protocol link of a session: numbering on it, the peer's acks, our acks.

Part of the I/O layer of both the client and the server (it sleeps and sends pongs). The
session's bookkeeping is the pure :class:`~resilient_ws._replay.Outbound` and
:class:`~resilient_ws._replay.Inbound`, shared by every link of the session; a
:class:`ReplayLink` applies them to one websockets connection:

- the connection's frame hook (``_backend._Recording``) hands it every control message,
  and it applies the peer's ``ack``;
- :meth:`ReplayLink.delivered` counts a data message the application received;
- :meth:`ReplayLink.run` sends our coalesced ``ack`` when due, and closes the link with
  4001/4002 when the peer broke the protocol.

When a link ends it is *retired*: the session moves to the next link, and messages the old
link still buffered are not delivered (the peer resends them on the next link, because we
never acknowledged them).
"""

from __future__ import annotations

import logging
import math
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


class ReplayLink:
    """The replay protocol on one link.

    Args:
        raw: The websockets connection; it negotiated the replay subprotocol.
        outbound: The session's sending half.
        inbound: The session's receiving half.
        ack_every: Wake the ack task as soon as this many messages are unacknowledged.
        log_fields: Fields added to this link's log events (``connection_id``,
            ``session_id``...).
    """

    __slots__ = (
        "_ack_every",
        "_inbound",
        "_log_fields",
        "_outbound",
        "_overflow_logged",
        "_wake",
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
        ack_every: int,
        log_fields: Mapping[str, Any],
    ) -> None:
        self.raw = raw
        self._outbound = outbound
        self._inbound = inbound
        self._ack_every = ack_every
        self._log_fields = dict(log_fields)
        self._wake = anyio.Event()
        self._overflow_logged = False
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
        overflowed = outbound.overflowed
        number = outbound.record(message, payload_size(message) if size is None else size)
        if outbound.overflowed != overflowed and not self._overflow_logged:
            self._overflow_logged = True  # once per link
            log("replay_overflowed", logging.WARNING, **self._log_fields,
                dropped_through=outbound.replay_from - 1)  # fmt: skip
        return number

    def delivered(self) -> int:
        """Count a data message of this link that the application received; its number."""
        inbound = self._inbound
        # The frame hook stamped the arrival: cheaper than reading the clock again.
        number = inbound.deliver(self.raw.last_inbound)
        unacked = number - inbound.acked
        # The ack task sleeps until the first unacknowledged message arms its timer, or
        # until enough of them are due by count.
        if unacked == 1 or unacked == self._ack_every:
            self._wake.set()
        return number

    def retire(self) -> None:
        """The link ended (or was taken over): deliver nothing more from it."""
        self.retired = True
        self._wake.set()

    async def run(self) -> None:
        """Send acks when due, until the link closes; close it on a protocol violation."""
        inbound = self._inbound
        while not self.retired:
            wake = self._wake = anyio.Event()
            if self.violation is not None:
                await self._close_for(self.violation)
                return
            if inbound.ack_due(anyio.current_time()) and not await self.send_ack():
                return
            deadline = inbound.ack_deadline()
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
                await wake.wait()

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
