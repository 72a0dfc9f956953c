"""Frozen policy objects that group the settings of :func:`resilient_ws.connect`.

Every field is keyword-only and validated on construction, so a bad setting fails where it
is written, not at the first reconnect. Replace a field with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Failover", "Keepalive", "Replay", "SendQueue", "WhenFull"]

WhenFull = Literal["wait", "raise", "drop_oldest"]
"""What ``send()`` does when the send queue is full (see :class:`SendQueue`)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How long to wait between reconnection attempts, and when to give up.

    The n-th consecutive failure is followed by a delay drawn uniformly from
    ``[0, min(max_delay, first_delay * multiplier ** (n - 1))]`` ("full jitter", tenacity's
    ``wait_random_exponential``, which spreads a crowd of clients that lost the same
    server). The growth is gentle at first, so that an outage of a second or two is
    noticed to be over within a fraction of a second.

    What counts as a failure is a failed attempt, and a link's end. A link's useful life
    forgives the failures before it in proportion: one that stayed up ``stable_after``
    seconds forgives all of them, so the next retry is fast again; one that lived half as
    long forgives half; one closed at once (a server that accepts and then closes) forgives
    none, so the delays keep growing instead of causing a reconnect storm.

    Attributes:
        first_delay: Upper bound of the delay before the first retry, in seconds.
        multiplier: Growth factor of the bound per further failure.
        max_delay: Cap of the bound, in seconds.
        stable_after: Seconds of link life that forgive every failure before it.
        max_attempts: Give up after this many consecutive failures (``None``: never).
        max_elapsed: Give up when failures have lasted this many seconds since the last
            link was set up (``None``: never).
        max_retry_after: Longest ``Retry-After`` (429/503 answers) honoured, in seconds.
    """

    first_delay: float = 0.1
    multiplier: float = 1.4
    max_delay: float = 30.0
    stable_after: float = 1.0
    max_attempts: int | None = None
    max_elapsed: float | None = None
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        _require(self.first_delay >= 0, "first_delay must be >= 0")
        _require(self.multiplier >= 1, "multiplier must be >= 1")
        _require(self.max_delay >= 0, "max_delay must be >= 0")
        _require(self.stable_after >= 0, "stable_after must be >= 0")
        _require(self.max_attempts is None or self.max_attempts >= 1, "max_attempts must be >= 1")
        _require(self.max_elapsed is None or self.max_elapsed > 0, "max_elapsed must be > 0")
        _require(self.max_retry_after >= 0, "max_retry_after must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendQueue:
    """Bounds of the queue that holds outbound messages while the link is down.

    Messages flush in order after the next link is up and ``on_connect`` has run.

    Attributes:
        max_messages: Most messages held.
        max_bytes: Most payload bytes held (UTF-8 length for ``str``). A single message
            larger than this is refused with ``ValueError``.
        when_full: ``"wait"`` (default) makes ``send()`` wait for room (backpressure);
            ``"raise"`` makes it raise :class:`~resilient_ws.QueueFull`; ``"drop_oldest"``
            drops the oldest queued messages to make room and reports them in a
            :class:`~resilient_ws.MessagesDropped` event.
    """

    max_messages: int = 1024
    max_bytes: int = 4 * 1024 * 1024
    when_full: WhenFull = "wait"

    def __post_init__(self) -> None:
        _require(self.max_messages >= 1, "max_messages must be >= 1")
        _require(self.max_bytes >= 1, "max_bytes must be >= 1")
        _require(
            self.when_full in ("wait", "raise", "drop_oldest"),
            f"when_full must be 'wait', 'raise' or 'drop_oldest', not {self.when_full!r}",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Failover:
    """How a client given several URLs (``urls=[primary, backup, ...]``) moves between them.

    A failed attempt moves to the next URL in order, wrapping around. A link that was stable
    (see :attr:`Backoff.stable_after`) and then dropped starts again from the primary.

    Attributes:
        failback_after: Seconds on a backup URL after which the client tries the primary
            again; if a probe connection to the primary succeeds, the backup link is closed
            (code 1001) and the client reconnects to the primary. ``None`` disables it.
    """

    failback_after: float | None = 300.0

    def __post_init__(self) -> None:
        _require(
            self.failback_after is None or self.failback_after > 0, "failback_after must be > 0"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive:
    """When to probe an idle link, how long to wait for the answer, and what to forgive.

    Any inbound frame is proof of life: a probe (a ping) goes out only after ``idle``
    seconds without one, so a busy link carries almost no probes: one ``idle`` seconds
    after it opens, to measure the server's own latency once (and, where the kernel gives
    no RTT of the path, one every 30 s). The wait for the pong adapts to the measured
    round-trip time (RFC 6298: ``SRTT + 4 * RTTVAR``, from pongs and from the kernel's
    ``tcpi_rtt``), clamped to ``[min_timeout, max_timeout]``, and stretches while the
    client's own event loop lags.
    An overdue pong is diagnosed before anything is closed (see ``docs/liveness.md``).

    Where the platform allows (Linux, macOS), the kernel watches idle links for free: TCP
    keepalive on the socket probes after ``idle`` seconds (whole seconds, at least 1) without
    anything received, then every second, and drops the link when two probes in a row go
    unanswered (2 to 3 s after the path died), without waking Python. Application probes
    then go out only where they add evidence: after traffic (a peer's application can stall
    while its kernel answers), every ``quiet_interval`` seconds on a link that stays quiet,
    and, on the client where the kernel reports its last ACK (Linux), as soon as a kernel
    probe goes unanswered (a dead path is judged about 1 s after it died; one lost probe
    costs a probe, not the link).

    Attributes:
        idle: Seconds without an inbound frame before a probe is sent.
        min_timeout: Floor of the wait for a pong, in seconds.
        max_timeout: Ceiling of the wait for a pong, in seconds.
        max_server_stall: How long a server judged stalled (alive but not answering) may
            stay silent before the link is abandoned anyway, in seconds.
        unknown_timeout: Without TCP evidence (no ``TCP_INFO`` on this platform, or behind a
            proxy that answers for the server), how long an overdue pong is waited for
            before the link is abandoned, in seconds.
        client_lag: Lag of the client's own event loop, in seconds, above which an overdue
            pong is blamed on the client, not the peer.
        kernel: Let the kernel watch idle links (TCP keepalive) where the platform allows;
            ``False`` probes every idle link from Python, every ``idle`` seconds.
        quiet_interval: Seconds between application probes on a link the kernel watches
            that has carried no message since its last answered probe.
    """

    idle: float = 1.0
    min_timeout: float = 0.3
    max_timeout: float = 10.0
    max_server_stall: float = 150.0
    unknown_timeout: float = 20.0
    client_lag: float = 0.2
    kernel: bool = True
    quiet_interval: float = 15.0

    def __post_init__(self) -> None:
        _require(self.idle > 0, "idle must be > 0")
        _require(self.min_timeout > 0, "min_timeout must be > 0")
        _require(self.max_timeout >= self.min_timeout, "max_timeout must be >= min_timeout")
        _require(self.max_server_stall >= 0, "max_server_stall must be >= 0")
        _require(self.unknown_timeout >= self.min_timeout, "unknown_timeout must be >= min_timeout")
        _require(self.client_lag > 0, "client_lag must be > 0")
        _require(self.quiet_interval > 0, "quiet_interval must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Replay:
    """The replay protocol's settings for one side of a session (``docs/protocol.md``).

    Sent messages are kept until the peer acknowledges them, so that a new link resends
    exactly what the peer lacks. Past either bound the oldest unacknowledged messages are
    dropped: memory stays bounded, and if the peer turns out to lack them it is told the
    exact range (a :class:`~resilient_ws.Gap` event on a client).

    The buffer is bounded by bytes first; the count is a backstop against a flood of tiny
    messages (each kept message costs about 100 bytes besides its payload). On defaults
    500 messages per second of up to 64 bytes are covered for over two minutes of outage,
    500 of 1 KiB for about 8 seconds.

    Attributes:
        max_messages: Most unacknowledged sent messages kept for resending.
        max_bytes: Most payload bytes of them (UTF-8 length for ``str``).
        ack_every: Acknowledge the peer's messages once this many are unacknowledged.
        ack_delay: ... or this many seconds after the first unacknowledged one arrived.
        resend_on_loss: When the server lost the session (it restarted, or the session
            expired), send the messages it had not acknowledged again as the first
            messages of the new session: at-least-once for them rather than at-most-once.
            Either way they are reported in a :class:`~resilient_ws.SessionLost` event.
            Not after the server's handler failed (close 1011) twice in a row with
            messages unacknowledged: one of them may be what makes it fail, so they are
            reported and not resent (log event ``resend_withheld``). Client only.
    """

    max_messages: int = 65_536
    max_bytes: int = 4 * 1024 * 1024
    ack_every: int = 64
    ack_delay: float = 0.2
    resend_on_loss: bool = True

    def __post_init__(self) -> None:
        _require(self.max_messages >= 1, "max_messages must be >= 1")
        _require(self.max_bytes >= 1, "max_bytes must be >= 1")
        _require(self.ack_every >= 1, "ack_every must be >= 1")
        _require(self.ack_delay >= 0, "ack_delay must be >= 0")
