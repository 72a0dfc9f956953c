"""Liveness: when to probe, how long to wait, and who failed when a pong is overdue.

Pure and clock-free: every method takes ``now`` (seconds on any monotonic clock) and the
evidence the I/O layer measured, and answers with a decision. Nothing here sleeps, reads a
clock or touches a socket.

- RTT estimation follows RFC 6298 section 2 (https://www.rfc-editor.org/rfc/rfc6298):
  SRTT and RTTVAR from pong round trips, timeout = SRTT + 4 * RTTVAR, clamped.
- Probes go out only after ``Keepalive.idle`` seconds without an inbound frame: any frame is
  proof of life.
- Local health: each overdue pong blamed on the client's own loop raises a score that
  stretches later deadlines (timeout * (1 + score)), and each answered probe lowers it, as in
  Lifeguard's local health multiplier (https://arxiv.org/abs/1707.00788, section IV-A).
- An overdue pong is diagnosed from evidence (:func:`diagnose`) instead of closing at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .config import Keepalive

__all__ = [
    "Abort",
    "Diagnosis",
    "Evidence",
    "Liveness",
    "Probe",
    "RttEstimator",
    "TcpEvidence",
    "Verdict",
    "Wait",
    "diagnose",
]

# RFC 6298 section 2: alpha = 1/8, beta = 1/4, K = 4.
_ALPHA = 1 / 8
_BETA = 1 / 4
_K = 4
# RFC 6298 section 2.1: before the first measurement, the timeout is 1 second.
_INITIAL_TIMEOUT = 1.0
# Coarsest clock tick of the kernel's TCP_INFO times (CONFIG_HZ=100).
_KERNEL_TICK = 0.010
# Highest local-health score: deadlines stretch at most (1 + 8) times.
_MAX_HEALTH_SCORE = 8
# How often an overdue probe is re-examined while the verdict waits for more evidence.
_RECHECK = 0.2


class Verdict(enum.Enum):
    """Who failed when a pong was overdue."""

    HEALTHY = "healthy"
    """No probe is overdue."""
    CLIENT_STALLED = "client_stalled"
    """Our own event loop lagged while we waited: the peer is not blamed."""
    SERVER_STALLED = "server_stalled"
    """The peer's host is alive (its kernel ACKed our probe, or its window is zero, or its
    beacons report loop lag) but its application does not answer."""
    NETWORK_DEAD = "network_dead"
    """Our probe is unacknowledged and being retransmitted: nothing gets through."""
    PENDING = "pending"
    """The probe is unacknowledged but not yet retransmitted: too early to tell."""
    UNKNOWN = "unknown"
    """No TCP evidence on this platform or connection."""


class TcpEvidence(Protocol):
    """The TCP state of the connection's socket (see ``resilient_ws._tcpinfo.TcpInfo``)."""

    @property
    def unacked(self) -> int: ...
    @property
    def retransmits(self) -> int: ...
    @property
    def backoff(self) -> int: ...
    @property
    def last_ack_recv(self) -> float: ...
    @property
    def zero_window(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What the I/O layer measured when a pong was overdue.

    Attributes:
        own_lag: The largest lag of our own event loop since the probe was sent, seconds.
        tcp: The socket's TCP state, or ``None`` where the platform gives none.
        peer_lag: The loop lag the server last reported in a beacon, seconds, if any.
    """

    own_lag: float = 0.0
    tcp: TcpEvidence | None = None
    peer_lag: float | None = None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A verdict and the evidence it rests on (``"own_lag"``, ``"tcp_acked"``,
    ``"zero_window"``, ``"retransmits"``, ``"peer_lag"``, ``"unacked"``, ``"none"``)."""

    verdict: Verdict
    evidence: str


def diagnose(evidence: Evidence, since_probe: float, policy: Keepalive) -> Diagnosis:
    """Judge an overdue probe.

    Args:
        evidence: What was measured.
        since_probe: Seconds since the probe was sent.
        policy: The keepalive policy (for ``client_lag``).

    Returns:
        The diagnosis. ``NETWORK_DEAD`` only when our bytes are unacknowledged and being
        retransmitted with no ACK since the probe; never while every byte is ACKed.
    """
    if evidence.own_lag >= policy.client_lag:
        return Diagnosis(Verdict.CLIENT_STALLED, "own_lag")
    tcp = evidence.tcp
    if tcp is not None:
        # The kernel reports last_ack_recv in whole jiffies (1-10 ms): an ACK that came in
        # the probe's own tick can read as slightly older than the probe.
        acked_since_probe = tcp.last_ack_recv <= since_probe + _KERNEL_TICK
        if tcp.zero_window:
            return Diagnosis(Verdict.SERVER_STALLED, "zero_window")
        quiet = tcp.retransmits == 0 and tcp.backoff == 0
        if acked_since_probe and (tcp.unacked == 0 or quiet):
            # The peer's kernel took our probe (a segment sent a moment ago may still await
            # its delayed ACK); its application does not answer. Behind a TCP-terminating
            # proxy this speaks for the proxy only; max_server_stall bounds it, and the
            # keepalive re-probes, so a network that dies later is still caught.
            return Diagnosis(Verdict.SERVER_STALLED, "tcp_acked")
        if tcp.unacked > 0 and not acked_since_probe:
            if tcp.retransmits > 0 or tcp.backoff > 0:
                return Diagnosis(Verdict.NETWORK_DEAD, "retransmits")
            return Diagnosis(Verdict.PENDING, "unacked")
    if evidence.peer_lag is not None and evidence.peer_lag >= policy.client_lag:
        return Diagnosis(Verdict.SERVER_STALLED, "peer_lag")
    return Diagnosis(Verdict.UNKNOWN, "none")


class RttEstimator:
    """SRTT and RTTVAR from round-trip samples, RFC 6298 section 2."""

    __slots__ = ("rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None

    def sample(self, rtt: float) -> None:
        """Fold in one round-trip time, in seconds (negative values count as 0)."""
        rtt = max(0.0, rtt)
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
        self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt

    def timeout(self, floor: float, ceiling: float) -> float:
        """``SRTT + K * RTTVAR`` (1 s before any sample, RFC 6298 section 2.1), clamped to
        ``[floor, ceiling]``."""
        if self.srtt is None or self.rttvar is None:
            return min(ceiling, max(floor, _INITIAL_TIMEOUT))
        return min(ceiling, max(floor, self.srtt + _K * self.rttvar))


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before ``until``; call :meth:`Liveness.poll` again then."""

    until: float
    diagnosis: Diagnosis


@dataclass(frozen=True, slots=True)
class Probe:
    """Send a probe now and report it with :meth:`Liveness.probe_sent`."""


@dataclass(frozen=True, slots=True)
class Abort:
    """Give up on this link now; ``diagnosis`` says why."""

    diagnosis: Diagnosis


Decision = Wait | Probe | Abort

_HEALTHY = Diagnosis(Verdict.HEALTHY, "none")


class Liveness:
    """The keepalive state of one link."""

    def __init__(self, policy: Keepalive, now: float) -> None:
        self._policy = policy
        self.rtt = RttEstimator()
        self._last_inbound = now
        self._probe_sent_at: float | None = None
        self._stalled_since: float | None = None
        self.health_score = 0
        """Lifeguard's local health score: 0 (healthy) to 8."""
        self.diagnosis = _HEALTHY
        """The latest diagnosis."""

    @property
    def timeout(self) -> float:
        """The current wait for a pong, stretched by the local health score."""
        base = self.rtt.timeout(self._policy.min_timeout, self._policy.max_timeout)
        return base * (1 + self.health_score)

    @property
    def probing(self) -> bool:
        """A probe is outstanding."""
        return self._probe_sent_at is not None

    @property
    def stalled_since(self) -> float | None:
        """When the peer was first judged stalled, while it still is."""
        return self._stalled_since

    def inbound(self, now: float) -> float | None:
        """Any frame arrived: proof of life.

        Returns:
            How long the peer had been judged stalled, if it was; else ``None``.
        """
        self._last_inbound = max(self._last_inbound, now)
        self._probe_sent_at = None
        self.diagnosis = _HEALTHY
        stalled_since, self._stalled_since = self._stalled_since, None
        return None if stalled_since is None else now - stalled_since

    def pong(self, now: float, sent_at: float) -> float | None:
        """The pong of a probe sent at ``sent_at`` arrived; see :meth:`inbound`."""
        self.rtt.sample(now - sent_at)
        self.health_score = max(0, self.health_score - 1)
        return self.inbound(now)

    def probe_sent(self, now: float) -> None:
        """A probe went out at ``now``."""
        self._probe_sent_at = now

    def poll(self, now: float, evidence: Evidence) -> Decision:
        """What to do at ``now``, given the evidence measured since the probe."""
        sent_at = self._probe_sent_at
        if sent_at is None:
            due = self._last_inbound + self._policy.idle
            return Probe() if now >= due else Wait(due, self.diagnosis)
        deadline = sent_at + self.timeout
        if now < deadline:
            return Wait(deadline, self.diagnosis)
        diagnosis = self.diagnosis = diagnose(evidence, now - sent_at, self._policy)
        verdict = diagnosis.verdict
        if verdict is Verdict.CLIENT_STALLED:
            # Our loop could not read the pong in time. Blame ourselves, stretch future
            # deadlines, and give the reader a full timeout to drain the socket.
            self.health_score = min(_MAX_HEALTH_SCORE, self.health_score + 1)
            self._probe_sent_at = now
            return Wait(now + self.timeout, diagnosis)
        if verdict is Verdict.NETWORK_DEAD:
            return Abort(diagnosis)
        if verdict is Verdict.SERVER_STALLED:
            if self._stalled_since is None:
                self._stalled_since = now
            if now - self._stalled_since >= self._policy.max_server_stall:
                return Abort(diagnosis)
            # Keep probing: only fresh bytes let TCP tell a network that dies during the
            # stall from the stall itself.
            reprobe = sent_at + max(self._policy.idle, self.timeout)
            if now >= reprobe:
                return Probe()
            return Wait(min(reprobe, now + _RECHECK), diagnosis)
        limit = sent_at + self._policy.unknown_timeout
        if now >= limit:
            return Abort(diagnosis)
        return Wait(min(limit, now + _RECHECK), diagnosis)
