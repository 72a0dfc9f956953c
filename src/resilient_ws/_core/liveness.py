"""Liveness: when to probe, how long to wait, and who failed when a pong is overdue.

Pure and clock-free: every method takes ``now`` (seconds on any monotonic clock) and the
evidence the I/O layer measured, and answers with a decision. Nothing here sleeps, reads a
clock or touches a socket.

- RTT estimation follows RFC 6298 section 2 (https://www.rfc-editor.org/rfc/rfc6298):
  SRTT and RTTVAR from pong round trips, timeout = SRTT + 4 * RTTVAR, clamped. Every link
  has an estimate, idle or busy: the kernel's own SRTT of the path (``tcpi_rtt``), which
  costs no traffic, and at least one pong (see :class:`RttEstimator`).
- Probes go out only after ``Keepalive.idle`` seconds without an inbound frame: any frame is
  proof of life. One more probe goes out ``idle`` seconds after a link opens, even while
  frames arrive, to measure the peer's own latency once; where the kernel gives no RTT, one
  every 30 s keeps measuring it.
- Local health: each overdue pong blamed on the client's own loop raises a score that
  stretches later deadlines (timeout * (1 + score)), and each answered probe lowers it, as in
  Lifeguard's local health multiplier (https://arxiv.org/abs/1707.00788, section IV-A).
- An overdue pong is diagnosed from evidence (:func:`diagnose`) instead of closing at once,
  and diagnosed again on every poll while it stays overdue: the verdict follows the newest
  evidence, so a link judged stalled whose newer bytes then go unacknowledged is dead.
- Where the kernel watches the path (TCP keepalive), a quiet link, one with no message
  either way since its last answered probe and nothing unacknowledged, is probed only every
  ``quiet`` seconds: the kernel catches a dead path, and a message makes it worth a probe.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

from ..config import Keepalive

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
# Where the kernel gives no RTT: how often a busy link is probed anyway, for an RTT sample.
_RTT_REFRESH = 30.0


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
    """The TCP state of the connection's socket (see ``resilient_ws._core.tcpinfo.TcpInfo``)."""

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
    @property
    def rtt(self) -> float:
        """The kernel's smoothed RTT of the path, seconds; 0 when it has no sample."""

    @property
    def rttvar(self) -> float:
        """The kernel's RTT variation (mean deviation), seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What the I/O layer measured at a poll.

    Attributes:
        own_lag: The largest lag of our own event loop since the probe was sent, seconds.
        tcp: The socket's TCP state, or ``None`` where the platform gives none. Read at
            every poll: its RTT feeds the estimate; when a pong is overdue, the rest is
            the evidence for the verdict.
        peer_lag: The loop lag the server last reported in a beacon, seconds, if any.
        last_data: When the last message frame was received or sent (either way), on the
            clock of ``now``: traffic that makes a quiet link worth probing again.
    """

    own_lag: float = 0.0
    tcp: TcpEvidence | None = None
    peer_lag: float | None = None
    last_data: float = -math.inf


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A verdict and the evidence it rests on (``"own_lag"``, ``"tcp_acked"``,
    ``"zero_window"``, ``"retransmits"``, ``"peer_lag"``, ``"unacked"``, ``"none"``; and
    ``"kernel_timeout"`` when the kernel itself dropped the link)."""

    verdict: Verdict
    evidence: str


def diagnose(
    evidence: Evidence, since_probe: float, policy: Keepalive, *, timeout: float | None = None
) -> Diagnosis:
    """Judge an overdue probe.

    TCP evidence is judged against the newest bytes, not only against the probe: an ACK
    that came after the probe may cover older data only, and a path that dies right after
    it leaves the probe and everything after it unacknowledged. So retransmitted bytes that
    no ACK has answered for ``timeout`` seconds are a dead path, even after an earlier
    verdict of ``server_stalled``.

    Args:
        evidence: What was measured.
        since_probe: Seconds since the probe was sent.
        policy: The keepalive policy (for ``client_lag``).
        timeout: How long a pong was waited for (the current deadline); ACK silence this
            long while bytes are retransmitted is a dead path. Defaults to
            ``policy.min_timeout``.

    Returns:
        The diagnosis. ``NETWORK_DEAD`` only when bytes are unacknowledged and being
        retransmitted, with no ACK since the probe or for ``timeout`` seconds; never while
        every byte is ACKed.
    """
    if evidence.own_lag >= policy.client_lag:
        return Diagnosis(Verdict.CLIENT_STALLED, "own_lag")
    tcp = evidence.tcp
    if tcp is not None:
        if tcp.zero_window:
            return Diagnosis(Verdict.SERVER_STALLED, "zero_window")
        # The kernel reports last_ack_recv in whole jiffies (1-10 ms): an ACK that came in
        # the probe's own tick can read as slightly older than the probe.
        acked_since_probe = tcp.last_ack_recv <= since_probe + _KERNEL_TICK
        patience = policy.min_timeout if timeout is None else timeout
        retransmitting = tcp.unacked > 0 and (tcp.retransmits > 0 or tcp.backoff > 0)
        if retransmitting and (not acked_since_probe or tcp.last_ack_recv >= patience):
            # A live peer kernel ACKs whatever reaches it, even while its process is
            # stopped (DESIGN.md): retransmitted bytes that nothing answers are lost.
            return Diagnosis(Verdict.NETWORK_DEAD, "retransmits")
        if acked_since_probe and not retransmitting:
            # The peer's kernel took our probe (a segment sent a moment ago may still await
            # its delayed ACK); its application does not answer. Behind a TCP-terminating
            # proxy this speaks for the proxy only; max_server_stall bounds it, and every
            # poll re-diagnoses, so a network that dies later is still caught.
            return Diagnosis(Verdict.SERVER_STALLED, "tcp_acked")
        if tcp.unacked > 0:
            # Not yet retransmitted, or retransmitted with ACKs still arriving (a loss
            # being repaired): too early to tell.
            return Diagnosis(Verdict.PENDING, "unacked")
    if evidence.peer_lag is not None and evidence.peer_lag >= policy.client_lag:
        return Diagnosis(Verdict.SERVER_STALLED, "peer_lag")
    return Diagnosis(Verdict.UNKNOWN, "none")


class RttEstimator:
    """SRTT and RTTVAR of a link, from pong round trips and from the kernel's path estimate.

    Two sources, kept apart because they measure different things:

    - Pong round trips (:meth:`sample`, RFC 6298 section 2): what a probe actually waits
      for, the path plus the peer's application latency (its loop lag), and whatever lies
      behind a TCP-terminating proxy.
    - The kernel's own SRTT and RTTVAR of the TCP path (:meth:`path`, ``tcpi_rtt`` and
      ``tcpi_rttvar``): free, on every link, idle or busy, and immune to both loops' lag,
      but blind to the peer's application and to anything behind a proxy. It is already
      smoothed by the kernel (with RFC 6298's gains), so it replaces the previous value
      instead of being smoothed again.

    A pong cannot come back faster than the path, so the wait for one is the larger of the
    two RFC 6298 bounds: the kernel's lifts it when the path is or becomes slower than the
    pongs said. It never shortens the wait on its own: before the first pong, the wait is at
    least RFC 6298's initial 1 s (section 2.1), since the kernel's estimate may be of the
    hop to a proxy only. :attr:`srtt` and :attr:`rttvar` are those of the larger bound.
    """

    __slots__ = ("_path", "_pong_rttvar", "_pong_srtt")

    def __init__(self) -> None:
        self._pong_srtt: float | None = None
        self._pong_rttvar = 0.0
        self._path: tuple[float, float] | None = None

    @property
    def srtt(self) -> float | None:
        """The smoothed RTT of the larger bound, seconds; ``None`` before any sample."""
        current = self._current()
        return None if current is None else current[0]

    @property
    def rttvar(self) -> float | None:
        """Its variation, seconds."""
        current = self._current()
        return None if current is None else current[1]

    @property
    def source(self) -> str | None:
        """``"pong"`` or ``"kernel"``: which estimate :attr:`srtt` is, if any."""
        current = self._current()
        if current is None:
            return None
        return "kernel" if current is self._path else "pong"

    @property
    def has_pong(self) -> bool:
        """Whether a pong has been sampled: the peer's own latency is measured."""
        return self._pong_srtt is not None

    def _pong(self) -> tuple[float, float] | None:
        return None if self._pong_srtt is None else (self._pong_srtt, self._pong_rttvar)

    def _current(self) -> tuple[float, float] | None:
        pong, path = self._pong(), self._path
        if pong is None or path is None:
            return pong or path
        return path if _bound(*path) > _bound(*pong) else pong

    def sample(self, rtt: float) -> None:
        """Fold in one pong round-trip time, in seconds (negative values count as 0)."""
        rtt = max(0.0, rtt)
        if self._pong_srtt is None:
            self._pong_srtt, self._pong_rttvar = rtt, rtt / 2
            return
        self._pong_rttvar = (1 - _BETA) * self._pong_rttvar + _BETA * abs(self._pong_srtt - rtt)
        self._pong_srtt = (1 - _ALPHA) * self._pong_srtt + _ALPHA * rtt

    def path(self, srtt: float, rttvar: float) -> None:
        """Take the kernel's current estimate of the path (seconds); ``srtt <= 0`` is none."""
        if srtt > 0:
            self._path = (srtt, max(0.0, rttvar))

    def timeout(self, floor: float, ceiling: float) -> float:
        """``SRTT + K * RTTVAR`` of the larger bound, at least 1 s before any pong (RFC 6298
        section 2.1), clamped to ``[floor, ceiling]``."""
        pong, path = self._pong(), self._path
        bound = _INITIAL_TIMEOUT if pong is None else _bound(*pong)
        if path is not None:
            bound = max(bound, _bound(*path))
        return min(ceiling, max(floor, bound))


def _bound(srtt: float, rttvar: float) -> float:
    return srtt + _K * rttvar


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


Action = Wait | Probe | Abort

_HEALTHY = Diagnosis(Verdict.HEALTHY, "none")


class Liveness:
    """The keepalive state of one link.

    Args:
        policy: The keepalive policy.
        now: When the link opened.
        quiet: Where the kernel watches the path (TCP keepalive), seconds between probes
            on a quiet link, one that carried no message since its last answered probe
            (``math.inf``: none); ``None`` where it does not: every idle link is probed.
        kernel_idle: Where the kernel also reports when it last received an ACK (Linux):
            its keepalive's idle seconds. The kernel probes a quiet link that long after
            it last received anything; an ACK still missing a pong's wait later
            (:attr:`unanswered_after`) means its probe went unanswered, and the link gets
            an application probe at once. A dead path is then judged by that probe, where
            the kernel alone needs a second unanswered probe; one lost keepalive probe
            costs an application probe, never the link. The I/O layer checks parked links
            against it (a read of the last ACK); :meth:`poll` probes on it.
    """

    def __init__(
        self,
        policy: Keepalive,
        now: float,
        *,
        quiet: float | None = None,
        kernel_idle: float | None = None,
    ) -> None:
        self._policy = policy
        self._quiet = quiet
        self._kernel_idle = kernel_idle
        self.rtt = RttEstimator()
        self._last_inbound = now
        # The last probe the peer answered: when it was sent, and when the answer came.
        self._answered: tuple[float, float] | None = None
        self.parked = False
        """The last poll found the link quiet: only traffic, or ``quiet`` seconds, make
        it due for a probe (the I/O layer wakes on traffic)."""
        self._probe_sent_at: float | None = None
        self._stalled_since: float | None = None
        # When a probe is due for an RTT sample even on a busy link: one soon on a new
        # link, to measure the peer's own latency; then, pushed back by every sample (the
        # kernel's too), only where the kernel gives none.
        self._rtt_wanted_at = now + policy.idle
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
        if self._probe_sent_at is not None:
            self._answered = (self._probe_sent_at, now)
        self._probe_sent_at = None
        self.diagnosis = _HEALTHY
        stalled_since, self._stalled_since = self._stalled_since, None
        return None if stalled_since is None else now - stalled_since

    def pong(self, now: float, sent_at: float) -> float | None:
        """The pong of a probe sent at ``sent_at`` arrived; see :meth:`inbound`."""
        self.rtt.sample(now - sent_at)
        self._rtt_wanted_at = now + _RTT_REFRESH
        self.health_score = max(0, self.health_score - 1)
        return self.inbound(now)

    def probe_sent(self, now: float) -> None:
        """A probe went out at ``now``."""
        self._probe_sent_at = now
        self._rtt_wanted_at = max(self._rtt_wanted_at, now + _RTT_REFRESH)

    def poll(self, now: float, evidence: Evidence) -> Action:
        """What to do at ``now``, given the evidence measured since the probe."""
        self._take_path_rtt(now, evidence.tcp)
        sent_at = self._probe_sent_at
        self.parked = False
        if sent_at is None:
            due = min(self._last_inbound + self._policy.idle, self._rtt_wanted_at)
            if self._quiet is not None and self._is_quiet(evidence):
                # No message either way since the last answered probe went out, and nothing
                # of ours unacknowledged: the kernel's keepalive watches the path, and only
                # a probe now and then checks the peer's application.
                assert self._answered is not None
                self.parked = True
                due = max(due, self._answered[1] + self._quiet)
                unanswered_after = self.unanswered_after
                tcp = evidence.tcp
                if (
                    unanswered_after is not None
                    and tcp is not None
                    and tcp.last_ack_recv >= unanswered_after
                ):
                    return Probe()
            return Probe() if now >= due else Wait(due, self.diagnosis)
        deadline = sent_at + self.timeout
        if now < deadline:
            return Wait(deadline, self.diagnosis)
        diagnosis = self.diagnosis = diagnose(
            evidence, now - sent_at, self._policy, timeout=self.timeout
        )
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
            # stall from the stall itself; every recheck judges the newest evidence.
            reprobe = sent_at + max(self._policy.idle, self.timeout)
            if now >= reprobe:
                return Probe()
            return Wait(min(reprobe, now + _RECHECK), diagnosis)
        limit = sent_at + self._policy.unknown_timeout
        if now >= limit:
            return Abort(diagnosis)
        return Wait(min(limit, now + _RECHECK), diagnosis)

    @property
    def unanswered_after(self) -> float | None:
        """Where the kernel's ACKs are watched (``kernel_idle``): the time since the
        kernel last received an ACK past which its keepalive probe went unanswered, a
        pong's wait after it went out; a parked link is then probed at once."""
        if self._kernel_idle is None:
            return None
        return self._kernel_idle + self.timeout

    def _is_quiet(self, evidence: Evidence) -> bool:
        if self._answered is None or evidence.last_data > self._answered[0]:
            return False
        # The kernel probes only while nothing we sent is unacknowledged.
        return evidence.tcp is None or evidence.tcp.unacked == 0

    def _take_path_rtt(self, now: float, tcp: TcpEvidence | None) -> None:
        """Fold in the kernel's RTT of the path, unless a retransmission is under way.

        Karn's rule in spirit: while the kernel retransmits, its estimate is from before the
        loss and says nothing new (the kernel itself keeps retransmitted segments out of it).
        """
        if tcp is None or tcp.rtt <= 0 or tcp.retransmits > 0 or tcp.backoff > 0:
            return
        self.rtt.path(tcp.rtt, tcp.rttvar)
        if self.rtt.has_pong:
            self._rtt_wanted_at = max(self._rtt_wanted_at, now + _RTT_REFRESH)
