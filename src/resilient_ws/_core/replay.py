"""Replay bookkeeping for one side of one session: numbers, acks, bounded buffers, resume.

Pure: nothing here sleeps, reads a clock or touches a socket. The I/O layer feeds events
(a message sent or received, an ``ack`` read, the peer's resume headers) and ``now``, and
acts on the answers (what to resend, which :class:`LostRange` to report, when an ack is
due).
The rules are those of the replay protocol, ``docs/protocol.md`` sections 2 to 4:

- Each side numbers the data messages it sends: the n-th of the session is n. Numbers are
  implicit, so :class:`Outbound` and the peer's :class:`Inbound` must see the same messages
  in the same order.
- :class:`Outbound` (the sending half) keeps the unacknowledged messages, bounded by count
  and bytes, dropping the oldest; ``replay_from`` is the lowest number it can still resend.
- :class:`Inbound` (the receiving half) counts what arrived and says when a cumulative
  ``ack`` is due (every ``ack_every`` messages or ``ack_delay`` seconds after the first
  unacknowledged one), and when the I/O layer must look (its ack timer): only when an ack
  may be due, never once per message.
- On resume each half compares its numbers with the peer's handshake headers: what the
  peer lacks is resent, and what cannot be resent is a :class:`LostRange`.

A peer that breaks a numbering rule raises :class:`ProtocolViolation`, which carries the
close code the I/O layer closes the link with. It is internal: it never reaches the
application, so it is not part of the :class:`~resilient_ws.ResilientWSError` tree.

The I/O layer must keep one ordering rule: between building its own resume headers
(``RWS-Received``, ``RWS-Replay-From``) and calling :meth:`Inbound.resume` and
:meth:`Outbound.resume`, it must not call :meth:`Inbound.deliver` or
:meth:`Outbound.record`. Messages the application sends while no link is up wait in the
send queue and are recorded when they are actually sent, after the resend.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import cast

from ..config import Replay
from ..exceptions import ProtocolViolation
from .outbox import Message
from .protocol import ACK_OUT_OF_RANGE, MALFORMED

__all__ = [
    "MESSAGE_COST",
    "Budget",
    "LostRange",
    "Inbound",
    "Outbound",
    "buffers",
]


@dataclass(frozen=True, slots=True)
class LostRange:
    """An inclusive range of the peer's message numbers that will never be delivered.

    Attributes:
        first: The first lost number (>= 1).
        last: The last lost number, or ``None`` when the end is unknown: the session was
            lost, and everything the peer sent from ``first`` on is gone.
    """

    first: int
    last: int | None

    def __post_init__(self) -> None:
        if self.first < 1:
            raise ValueError(f"LostRange.first must be >= 1, not {self.first}")
        if self.last is not None and self.last < self.first:
            raise ValueError(f"LostRange.last must be >= first, not {self.last} < {self.first}")


def _check_number(value: int, what: str) -> None:
    """Numbers of messages are integers >= 0 (docs/protocol.md section 3)."""
    if value < 0:
        raise ProtocolViolation(MALFORMED, f"{what}={value} is negative")


class Budget:
    """What the replay buffers of many sessions (a server's) may hold together, in bytes.

    Each buffered message is charged its payload size plus :data:`MESSAGE_COST`, what
    keeping it costs besides (a flood of tiny messages is memory too). An
    :class:`Outbound` that records a message past the budget drops its own oldest
    messages, the new one last, until the budget holds: the session that overflows is
    the one that loses, and its peer is told exactly what (a gap, as past its own bounds).

    Args:
        limit: The bytes all the buffers may hold together (>= 1).

    Raises:
        ValueError: ``limit`` is below 1.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the replay memory budget must be >= 1 byte, not {limit}")
        self.limit = limit
        self.used = 0
        """Bytes charged now."""


MESSAGE_COST = 64
"""Bytes a :class:`Budget` charges per buffered message besides its payload: the message
object's header and its slots in the buffer's list and array (measured: 49-57 bytes for a
``bytes`` message on CPython 3.11)."""


class Outbound:
    """The sending half of a session: numbering, the replay buffer, acks, resume.

    The replay buffer holds the sent messages the peer has not acknowledged, at most
    ``max_messages`` of them and ``max_bytes`` of payload. Recording a message past either
    bound drops the oldest unacknowledged messages: memory stays bounded, and the only
    trace is a higher :attr:`replay_from` (the peer reports the loss as a gap if it turns
    out not to have them, docs/protocol.md section 4).

    The buffer always holds the contiguous numbers ``replay_from .. sent``: a resend can
    have a gap only at its start, which is all the protocol can express. Hence a single
    message larger than ``max_bytes`` is numbered and sent but not kept, and it takes
    every older unacknowledged message with it.

    Recording costs O(1) and no object beyond the message itself; an ack (or an
    overflow) releases its whole range in one step, whatever its length.

    Args:
        max_messages: Most unacknowledged messages kept (>= 1).
        max_bytes: Most payload bytes kept (>= 1; UTF-8 length for ``str``, as given to
            :meth:`record`).
        budget: Shared with other sessions' buffers, if any (see :class:`Budget`).

    Raises:
        ValueError: A bound is below 1.
    """

    __slots__ = (
        "_budget",
        "_byte_limit",
        "_count_limit",
        "_ends",
        "_head",
        "_max_bytes",
        "_max_messages",
        "_messages",
        "_released",
        "_total",
        "acked",
        "overflowed",
        "sent",
    )

    def __init__(self, max_messages: int, max_bytes: int, budget: Budget | None = None) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, not {max_messages}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, not {max_bytes}")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._budget = budget
        # The buffer is _messages[_head:], oldest first (released slots before _head hold
        # None until the lists are compacted), and _ends[i] is the session's payload byte
        # count through _messages[i]. Flat lists, not a (message, size) pair per message:
        # a range is released with one slice operation, and its bytes are a subtraction.
        self._messages: list[Message | None] = []
        self._ends = array("q")
        self._head = 0
        self._total = 0  # payload bytes recorded in the session
        self._released = 0  # of which left the buffer (acknowledged or dropped)
        # record() checks both bounds with one comparison each.
        self._count_limit = max_messages  # _head + max_messages
        self._byte_limit = max_bytes  # _released + max_bytes
        self.sent = 0
        """The number of the last data message sent in this session (0: none yet)."""
        self.acked = 0
        """The highest number the peer acknowledged (by ``ack`` or its resume header)."""
        self.overflowed = 0
        """Unacknowledged messages dropped so far to stay within the bounds."""

    @property
    def count(self) -> int:
        """Messages in the replay buffer."""
        return len(self._messages) - self._head

    @property
    def size(self) -> int:
        """Payload bytes in the replay buffer."""
        return self._total - self._released

    @property
    def replay_from(self) -> int:
        """The lowest number that can still be resent (``sent + 1`` when none can)."""
        return self.sent - len(self._messages) + self._head + 1

    def record(self, message: Message, size: int) -> int:
        """Number a data message being sent and keep it for replay.

        Args:
            message: The payload, as the application gave it.
            size: Its size in bytes (see :func:`resilient_ws._core.outbox.payload_size`).

        Returns:
            The message's number in the session.
        """
        messages = self._messages
        messages.append(message)
        total = self._total = self._total + size
        self._ends.append(total)
        self.sent += 1
        budget = self._budget
        if budget is not None:
            budget.used += size + MESSAGE_COST
        if total > self._byte_limit:
            self._drop_overflow()
        elif len(messages) > self._count_limit:
            # One over max_messages (the common overflow): drop the oldest.
            self.overflowed += 1
            self._release_to(self._head + 1)
        if budget is not None and budget.used > budget.limit and self.count:
            self._drop_over_budget(budget)
        return self.sent

    def ack(self, number: int) -> None:
        """Apply the peer's cumulative ``ack=number``: drop messages ``<= number``.

        An ``ack`` equal to the previous one is legal and changes nothing.

        Args:
            number: The value of the ``ack`` field.

        Raises:
            ProtocolViolation: 4001 if ``number`` is negative; 4002 if it exceeds
                :attr:`sent` or is below an earlier ack (docs/protocol.md section 3).
        """
        _check_number(number, "ack")
        if number > self.sent:
            raise ProtocolViolation(
                ACK_OUT_OF_RANGE, f"ack={number} but only {self.sent} messages were sent"
            )
        if number < self.acked:
            raise ProtocolViolation(
                ACK_OUT_OF_RANGE, f"ack={number} is below the earlier ack={self.acked}"
            )
        self._release_through(number)

    def resume(self, peer_received: int) -> tuple[LostRange | None, list[tuple[int, Message]]]:
        """Resume on a new link, given the peer's ``RWS-Received`` header.

        The peer's ``received`` acknowledges everything up to it, so those messages leave
        the buffer. Call this before recording any new message on the link.

        Args:
            peer_received: How many of our messages the peer has received in order.

        Returns:
            The gap the peer will report (``peer_received + 1 .. replay_from - 1``: those
            messages were dropped on overflow), or ``None``; and the ``(number, message)``
            pairs to resend first, in order (from ``max(peer_received + 1, replay_from)``).

        Raises:
            ProtocolViolation: 4001 if ``peer_received`` is negative; 4002 if it exceeds
                :attr:`sent`, or is below :attr:`acked` (the peer cannot have received
                fewer messages than it acknowledged).
        """
        _check_number(peer_received, "received")
        if peer_received > self.sent:
            raise ProtocolViolation(
                ACK_OUT_OF_RANGE,
                f"peer received={peer_received} but only {self.sent} messages were sent",
            )
        if peer_received < self.acked:
            raise ProtocolViolation(
                ACK_OUT_OF_RANGE,
                f"peer received={peer_received} is below its earlier ack={self.acked}",
            )
        self._release_through(peer_received)
        replay_from = self.replay_from
        gap = (
            LostRange(peer_received + 1, replay_from - 1)
            if peer_received + 1 < replay_from
            else None
        )
        return gap, self.unacked()

    def unacked(self) -> list[tuple[int, Message]]:
        """The ``(number, message)`` pairs in the replay buffer, oldest first."""
        kept = cast("list[Message]", self._messages[self._head :])  # no None from _head on
        return list(enumerate(kept, self.replay_from))

    def clear(self) -> None:
        """The session ended: drop every buffered message (its bytes leave the budget)."""
        if self.count:
            self._release_to(len(self._messages))

    def restart(self) -> list[tuple[int, Message]]:
        """Start a new session after the old one was lost; numbering restarts at 0.

        The messages still buffered are of unknown fate: the application decides (the
        default is to send them again as the first messages of the new session, which
        numbers them anew). Messages ``acked + 1 .. replay_from - 1`` were dropped on
        overflow and are of unknown fate too; read :attr:`acked` and :attr:`replay_from`
        before calling this to report them.

        Returns:
            What :meth:`unacked` returned: ``(old number, message)``, oldest first.
        """
        unacked = self.unacked()
        self.clear()
        self._messages.clear()
        del self._ends[:]
        self._head = self._total = self._released = 0
        self._count_limit, self._byte_limit = self._max_messages, self._max_bytes
        self.sent = 0
        self.acked = 0
        return unacked

    def _release_through(self, number: int) -> None:
        """Record ``number`` as acknowledged; drop buffered messages ``<= number``."""
        self.acked = number
        end = len(self._messages) - (self.sent - number)  # just past message ``number``
        if end > self._head:
            self._release_to(end)

    def _drop_overflow(self) -> None:
        """Drop the fewest oldest messages that bring the buffer within both bounds."""
        ends, head, total = self._ends, self._head, self._total
        end = len(ends) - self._max_messages  # the first kept, by count
        if total > self._byte_limit:
            # Keeping messages i+1.. leaves total - ends[i] bytes: the first i where that
            # is within max_bytes (an oversize last message: none is kept).
            end = max(end, bisect_left(ends, total - self._max_bytes, head) + 1)
        self.overflowed += end - head
        self._release_to(end)

    def _drop_over_budget(self, budget: Budget) -> None:
        """Drop the fewest oldest messages that bring ``budget`` within its limit, or all."""
        head, ends, released = self._head, self._ends, self._released
        over = budget.used - budget.limit
        # Dropping messages head..i frees ends[i] - released bytes and i + 1 - head message
        # costs, growing with i: the first i that covers ``over`` (or the last one).
        low, high = head, len(ends) - 1
        while low < high:
            middle = (low + high) // 2
            if ends[middle] - released + (middle + 1 - head) * MESSAGE_COST >= over:
                high = middle
            else:
                low = middle + 1
        self.overflowed += low + 1 - head
        self._release_to(low + 1)

    def _release_to(self, end: int) -> None:
        """Drop the buffered messages before index ``end`` (at least one), in one slice
        operation: references go at once, and the lists are compacted once at least
        half of them is released (amortized O(1) per message, even one at a time)."""
        messages, head = self._messages, self._head
        previous = self._released
        self._released = released = self._ends[end - 1]
        if self._budget is not None:
            self._budget.used -= released - previous + (end - head) * MESSAGE_COST
        if 2 * end >= len(messages):
            del messages[:end]
            del self._ends[:end]
            end = 0
        elif end - head == 1:
            messages[head] = None
        else:
            messages[head:end] = [None] * (end - head)
        self._head = end
        self._count_limit = end + self._max_messages
        self._byte_limit = released + self._max_bytes


class Inbound:
    """The receiving half of a session: counting, coalesced acks, resume, session loss.

    An ``ack`` is due once ``ack_every`` messages are unacknowledged, or ``ack_delay``
    seconds after the first unacknowledged one arrived. The I/O layer's ack timer waits
    in between: :meth:`deliver` says when it must look now, and :meth:`ack_timer` when it
    must look again at the latest. After an ack the timer stays armed for one
    ``ack_delay`` (messages arriving meanwhile cannot be due before it fires), so on a
    link that keeps receiving the task wakes once per ack: not per message, and not a
    second time to arm a timer for the next one.

    Args:
        ack_every: Send an ``ack`` once this many messages are unacknowledged (>= 1).
        ack_delay: Send an ``ack`` this many seconds after the first unacknowledged
            message arrived, at the latest (>= 0).

    Raises:
        ValueError: ``ack_every`` below 1 or ``ack_delay`` negative.
    """

    __slots__ = (
        "_ack_delay",
        "_ack_every",
        "_first_unacked_at",
        "_linger",
        "_timer",
        "acked",
        "received",
    )

    def __init__(self, ack_every: int = 64, ack_delay: float = 0.2) -> None:
        if ack_every < 1:
            raise ValueError(f"ack_every must be >= 1, not {ack_every}")
        if not ack_delay >= 0:
            raise ValueError(f"ack_delay must be >= 0, not {ack_delay}")
        self._ack_every = ack_every
        self._ack_delay = ack_delay
        # When the first unacknowledged message arrived (meaningless while none is).
        self._first_unacked_at = 0.0
        # The ack timer as last armed by ack_timer() (None: none, until deliver() says to look),
        # and whether an ack was taken since (the timer then stays armed one more delay).
        self._timer: float | None = None
        self._linger = False
        self.received = 0
        """How many of the peer's data messages were received (or reported lost) in order."""
        self.acked = 0
        """The last acknowledged value: sent as ``ack``, or implied by a resume header."""

    @property
    def unacked(self) -> int:
        """Messages received since the last ``ack``."""
        return self.received - self.acked

    def deliver(self, now: float) -> bool:
        """Count the peer's next data message (its number is then :attr:`received`).

        Args:
            now: When it arrived, seconds on a monotonic clock.

        Returns:
            Whether the I/O layer must look now: an ack is due by count, or this is the
            first unacknowledged message and no timer is armed (:meth:`ack_timer`)
            that will look at it in time.
        """
        received = self.received = self.received + 1
        unacked = received - self.acked
        if unacked == 1:
            self._first_unacked_at = now
            return self._timer is None or self._ack_every == 1
        return unacked == self._ack_every

    def ack_deadline(self) -> float | None:
        """When an ``ack`` is due by time, or ``None`` while nothing is unacknowledged."""
        if self.received == self.acked:
            return None
        return self._first_unacked_at + self._ack_delay

    def ack_due(self, now: float) -> bool:
        """Whether an ``ack`` should be sent now (by count or by time)."""
        unacked = self.received - self.acked
        if unacked >= self._ack_every:
            return True
        return unacked > 0 and now >= self._first_unacked_at + self._ack_delay

    def ack_timer(self, now: float) -> float | None:
        """Arm the ack timer: when the I/O layer must look again, at the latest.

        Call it after acting on :meth:`ack_due`, before the task sleeps.

        Returns:
            With messages unacknowledged, when the first one is due by time. Right after
            an ack, ``now + ack_delay``: whatever arrives before then is due no earlier,
            so :meth:`deliver` need not wake the task for it. Otherwise ``None``: sleep
            until :meth:`deliver` says to wake. A timer armed earlier that has not fired
            yet is kept when it is sooner (it still looks in time), so that a busy link
            does not move its timer at every ack.
        """
        if self.received != self.acked:
            timer: float | None = self._first_unacked_at + self._ack_delay
        elif self._linger:
            timer = now + self._ack_delay
        else:
            timer = None
        armed = self._timer
        if timer is not None and armed is not None and now < armed < timer:
            timer = armed
        self._linger = False
        self._timer = timer
        return timer

    def take_ack(self) -> int:
        """The ``ack`` value to send now; it counts as sent.

        Also for a link closing gracefully (docs/protocol.md section 3). Taking it when
        nothing is unacknowledged repeats the previous value, which the peer accepts.
        """
        self._acknowledge()
        self._linger = True
        return self.received

    def resume(self, peer_replay_from: int) -> LostRange | None:
        """Resume on a new link, given the peer's ``RWS-Replay-From`` header.

        If the peer can no longer resend ``received + 1 ..`` (its buffer overflowed),
        those messages are lost: they are returned as a gap, to report to the application
        before the next message, and counted as received so numbering continues. Our own
        ``RWS-Received`` header told the peer what we have, so nothing is left to ``ack``.

        Args:
            peer_replay_from: The lowest number the peer can still resend.

        Returns:
            The gap ``received + 1 .. peer_replay_from - 1``, or ``None``.

        Raises:
            ProtocolViolation: 4001 if ``peer_replay_from`` is negative, 4002 if it is 0
                (the lowest possible value is ``sent + 1 >= 1``).
        """
        _check_number(peer_replay_from, "replay_from")
        if peer_replay_from < 1:
            raise ProtocolViolation(ACK_OUT_OF_RANGE, "replay_from=0: the lowest is 1")
        gap = None
        if self.received + 1 < peer_replay_from:
            gap = LostRange(self.received + 1, peer_replay_from - 1)
            self.received = peer_replay_from - 1
        self._acknowledge()
        self._new_link()
        return gap

    def lost(self) -> LostRange:
        """The session was lost (``RWS-Resumed: 0``): start a new one, numbering from 0.

        Returns:
            The gap to report: from ``received + 1``, end unknown.
        """
        gap = LostRange(self.received + 1, None)
        self.received = 0
        self._acknowledge()
        self._new_link()
        return gap

    def _acknowledge(self) -> None:
        self.acked = self.received

    def _new_link(self) -> None:
        """A resume or a new session: the next link arms its own ack timer."""
        self._timer = None
        self._linger = False


def buffers(policy: Replay, budget: Budget | None = None) -> tuple[Outbound, Inbound]:
    """One side's replay state for a new session, sized by ``policy``: what it sends
    (bounded, charged to ``budget`` if given) and what it receives."""
    return (
        Outbound(policy.max_messages, policy.max_bytes, budget),
        Inbound(policy.ack_every, policy.ack_delay),
    )
