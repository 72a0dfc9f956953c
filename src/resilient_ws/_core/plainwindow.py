"""The recently sent messages of a plain link, and which of them to send again when it dies.

A plain link (a server without the replay protocol) numbers nothing, but TCP does: the
kernel counts the bytes the server's TCP acknowledged (``tcpi_bytes_acked`` on Linux). With
each message's end offset in the link's byte stream, a message that ends within the
acknowledged count certainly arrived and is never sent twice; the others are sent again on
the next link. The link is dropped with a TCP reset (``SO_LINGER`` 0), so no byte of it can
arrive late on the old connection: nothing is lost and nothing is reordered.

An unacknowledged message may still have arrived, if the path died after it and before its
acknowledgement came back. Only a message whose frame the kernel transmitted in full can
have; one partly unsent (``tcpi_notsent_bytes``) or still in user space cannot. After a
dead network the congestion window has collapsed, so few are in between: those are counted
as possible duplicates, the others are certainly unreceived.

Pure and clock-free: the I/O layer (``client.py``) records messages and offsets, reads the
kernel's counts when the link ends, and asks :meth:`PlainWindow.unreceived` what to resend.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice

from .outbox import Message

__all__ = [
    "DEFAULT_CHECK_EVERY",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MESSAGES",
    "PlainWindow",
    "Resend",
]

# Enough for what a dead path strands in the kernel before the keepalive gives up: Linux
# autotunes the send buffer up to 4 MiB (net.ipv4.tcp_wmem), and a dead network is judged
# within seconds. Offsets count wire bytes (frame headers included).
DEFAULT_MAX_MESSAGES = 4096
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# How often (in bytes of stream) the bounds are enforced and, where the kernel tells, what
# was acknowledged is forgotten: rarely enough to cost nothing per message (one getsockopt
# per 256 KiB), often enough that the window stays small (and hot in the CPU's caches).
DEFAULT_CHECK_EVERY = 256 * 1024


@dataclass(frozen=True, slots=True)
class Resend:
    """What to do with a plain link's recent messages once it ended.

    Attributes:
        messages: To send again on the next link, oldest first.
        uncertain: How many of ``messages`` may have reached the server already: their
            frames were transmitted in full but not acknowledged. An upper bound.
        overflowed: Messages the window had dropped (its bounds) that may not have reached
            the server: an upper bound; 0 when the count proves every one of them arrived.
    """

    messages: list[Message]
    uncertain: int
    overflowed: int


class PlainWindow:
    """Messages sent on one link with the offset where each one's frame ends.

    Bounded by count, and by bytes: it keeps the messages whose frames end within
    ``max_bytes`` of the newest frame's end; the oldest messages leave first. The bounds
    are enforced each time the stream passes :attr:`check_at` (every ``check_every``
    bytes), so between two checks the window may hold ``check_every`` bytes of frames
    more than its bounds.

    The send path is performance-sensitive: recording a message costs two C-level appends
    and one comparison, on two deques of objects the garbage collector does not track::

        window.push(message)                    # before the send
        ...                                     # the send
        end = link.bytes_written                # after it returned
        window.done(end)
        if end > window.check_at:
            window.trim(end)

    The k-th ``done()`` gives its end to the k-th message pushed; messages pushed and not
    done yet are *pending*. ``end`` is the count of bytes written on the link when a send
    returned. It is an upper bound of the k-th message's frame end, even with several
    sending tasks: websockets writes frames in the order their sends started (the order of
    :meth:`push`), so when any send returns, every frame pushed before it is written. An
    upper bound can only make a message count as unacknowledged when it was not (a
    duplicate), never the reverse (a loss).
    """

    __slots__ = (
        "_check_every",
        "_ends",
        "_floor",
        "_max_bytes",
        "_max_messages",
        "_messages",
        "check_at",
        "done",
        "evicted",
        "push",
    )

    def __init__(
        self,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        check_every: int = DEFAULT_CHECK_EVERY,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or check_every < 1:
            raise ValueError("a window holds at least one message and one byte")
        self._messages: deque[Message] = deque()
        self._ends: deque[int] = deque()
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._check_every = check_every
        # End offset of the newest message that left the window (0: none left yet).
        self._floor = 0
        self.check_at = check_every
        """Call :meth:`trim` once a frame ends past this offset."""
        self.evicted = 0
        """Messages that left the window because of its bounds, since it was created."""
        self.push = self._messages.append
        """Record a message before its send starts."""
        self.done = self._ends.append
        """Record the bytes written on the link when a send returned."""

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def pending(self) -> int:
        """Messages pushed whose send has not returned (it failed, or is under way)."""
        return len(self._messages) - len(self._ends)

    def trim(self, end: int) -> None:
        """Drop the oldest messages beyond the bounds; ``end`` is the newest frame's end."""
        self.check_at = end + self._check_every
        messages, ends = self._messages, self._ends
        if not ends:
            return
        # Ends only grow: bisect for the first message that ends within max_bytes of the
        # newest frame's end; every one before it leaves.
        low, high = 0, len(ends) - 1
        while low < high:
            middle = (low + high) // 2
            if end - ends[middle] > self._max_bytes:
                low = middle + 1
            else:
                high = middle
        # Pending messages stay, and so does the newest done one, even alone past
        # max_bytes: they are being sent.
        count = min(max(low, len(messages) - self._max_messages), len(ends) - 1)
        for _ in range(count):
            messages.popleft()
            self._floor = ends.popleft()
        self.evicted += count

    def confirm(self, offset: int) -> None:
        """Forget the messages that certainly arrived: their frames end at or before
        ``offset``, a point the server's TCP acknowledged."""
        messages, ends = self._messages, self._ends
        while ends and ends[0] <= offset:
            messages.popleft()
            ends.popleft()

    def unreceived(self, acked: int | None, transmitted: int | None = None) -> Resend:
        """Which messages to send again, given the link's final count of acknowledged bytes.

        Args:
            acked: Offset up to which the server's TCP acknowledged the link's byte stream
                (the origin of the ends given to :attr:`done`), or ``None`` when it is
                unknown: then every message is sent again, at least once.
            transmitted: Offset up to which the kernel had transmitted the stream at least
                once (beyond it, bytes were never on the wire), or ``None`` if unknown.

        Returns:
            The messages to resend, oldest first, with how many may be duplicates.
        """
        messages, ends = self._messages, self._ends
        if acked is None:
            return Resend(list(messages), len(messages), self.evicted)
        sent_end = transmitted
        resend: list[Message] = []
        uncertain = 0
        for end, message in zip(ends, messages, strict=False):  # pending ones follow
            if end > acked:
                resend.append(message)
                uncertain += sent_end is None or end <= sent_end
        pending = list(islice(messages, len(ends), None))
        if pending:
            resend.extend(pending)
            # Bytes transmitted (or acknowledged) past the last message known done may
            # hold a pending message's frame, or only a ping: then pending ones may have
            # arrived.
            last = ends[-1] if ends else self._floor
            if sent_end is None or max(sent_end, acked) > last:
                uncertain += len(pending)
        overflowed = self.evicted if self._floor > acked else 0
        return Resend(resend, uncertain, overflowed)
