"""The keepalive of one link: probes, pong timing and the evidence for a verdict.

Part of the I/O layer of the client and of serve(): it reads the clock and the socket's
TCP state, and sends pings, from the event loop's shared timers (no task per link). Every
decision comes from the pure :class:`~resilient_ws._core.liveness.Liveness`. The socket's TCP
state is read once each time its timer fires anyway (about once per ``Keepalive.idle`` on
a busy link): its RTT keeps the estimate current on every link, and while a probe is
overdue it is the evidence for the verdict.

Where the kernel keeps watch (TCP keepalive set on the socket), a quiet link parks until
the next message either way (the connection's ``waker``) or ``quiet_interval``. Each
probe carries its number; the connection's frame hook hands over pongs (``on_pong``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core import tcpinfo as _tcpinfo
from .._core.liveness import Abort, Diagnosis, Evidence, Liveness, Probe, Verdict
from .._logging import log
from ..config import Keepalive
from ..events import Event, PeerRecovered, PeerStalled
from . import backend as _backend
from . import sockopts as _sockopts
from .backend import RawLink
from .lag import LoopLagMonitor
from .timers import Timer, Timers

__all__ = ["LinkKeepalive"]


@dataclass(frozen=True, slots=True)
class _TcpView:
    """TCP evidence relative to the outstanding probe."""

    unacked: int
    retransmits: int
    backoff: int
    last_ack_recv: float
    zero_window: bool
    rtt: float
    rttvar: float

    @classmethod
    def of(cls, info: _tcpinfo.TcpInfo, retrans_at_probe: int) -> _TcpView:
        # The first resend of a lost segment is often a tail-loss probe, which raises
        # total_retrans ~0.2 s before tcpi_retransmits moves: count both.
        retransmits = max(info.retransmits, info.total_retrans - retrans_at_probe)
        # macOS gives no last_ack_recv: with nothing unacked, our probe was ACKed.
        last_ack = info.last_ack_recv
        if last_ack is None:
            last_ack = 0.0 if info.unacked == 0 else float("inf")
        # An RTT is only the path's while the connection is open.
        rtt = info.rtt if info.established else 0.0
        return cls(
            info.unacked,
            retransmits,
            info.backoff or 0,
            last_ack,
            info.zero_window,
            rtt,
            info.rttvar,
        )


@dataclass(frozen=True, slots=True)
class _Probe:
    """An outstanding probe: a ping whose payload identifies its pong."""

    data: bytes
    sent_at: float
    deadline: float
    during_stall: bool
    ticks: int


# A probe's payload: its number. Four bytes cannot be mistaken for a beacon ("rws1 ...").
_PROBE = struct.Struct("!I")


class LinkKeepalive:
    """Keeps one link under watch until it aborts it or is stopped.

    Driven by the event loop's shared :class:`~resilient_ws._io.timers.Timers`, not by a
    task: :meth:`start` it on a link, :meth:`stop` it when the link ends; once it gave up
    it aborted the link and :attr:`diagnosis` says why.
    """

    def __init__(
        self,
        raw: RawLink,
        policy: Keepalive,
        *,
        url: str,
        connection_id: str,
        emit: Callable[[Event], None],
        monitor: LoopLagMonitor | None = None,
        quiet: float | None = None,
        kernel_set: bool = False,
    ) -> None:
        self._raw = raw
        self._monitor = monitor
        self._ticks_at_probe = 0
        self._policy = policy
        self._url = url
        self._connection_id = connection_id
        self._emit = emit
        self._socket = _sockopts.raw_socket(raw)
        # (kernel_set: the socket has the options already, from its listening socket.)
        self.kernel = (
            policy.kernel
            and self._socket is not None
            and (kernel_set or _sockopts.keep_alive(self._socket, policy.idle))
        )
        """The kernel's TCP keepalive watches the link's path (see :class:`Keepalive`)."""
        if quiet is None:
            quiet = policy.quiet_interval
        self._timers = Timers.current()
        self._now = self._timers.now
        # Where the kernel reports its ACKs, a lost keepalive probe on a quiet link brings
        # an application probe at once (not on serve(), which watches no quiet link).
        kernel_idle = None
        if self.kernel and quiet != math.inf and _sockopts.reports_last_ack():
            kernel_idle = _sockopts.keepalive_idle(policy.idle)
        self._quiet_links = _QuietLinks.of(self._timers) if kernel_idle is not None else None
        self.liveness = Liveness(
            policy, self._now(), quiet=quiet if self.kernel else None, kernel_idle=kernel_idle
        )
        self._retrans_at_probe = 0
        self._announced_stall = False
        self._probes = 0
        # The outstanding probe, and when its pong arrived (set by the pong's callback).
        self._outstanding: _Probe | None = None
        self._pong_at: float | None = None
        # The pending wake: when, and its timer (None: stopped, or deciding now).
        self._until = 0.0
        self._timer: Timer | None = None
        self._seen = raw.last_inbound
        self._own_lag = 0.0
        self._stopped = False
        self.diagnosis: Diagnosis | None = None
        """Why it gave up and aborted the link, once it did."""

    def start(self, *, lazily: bool = False) -> None:
        """Start watching; it stops by itself once it aborted the link.

        Args:
            lazily: Take the first decision at the link's first message, not now (then
                also taking the link's first RTT sample from the kernel): for serve(),
                which keeps no RTT and probes no quiet link, so that a link costs no
                ``TCP_INFO`` read and no timer until it carries a message. Only where
                the kernel watches the link; elsewhere the first decision comes after
                ``idle``.
        """
        raw: Any = self._raw
        raw.on_pong = self._on_pong
        if not lazily:
            self._decide(self._now())
        elif self.kernel:
            raw.waker = self._wake
        else:
            self._until = self._now() + self._policy.idle
            self._timer = self._timers.call_at(self._until, self._due)

    def stop(self) -> None:
        """Stop watching (the link ended). Idempotent."""
        self._stopped = True
        if self._quiet_links is not None:
            self._quiet_links.watch(self, None, False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        raw: Any = self._raw
        raw.on_pong = raw.waker = None

    def _decide(self, now: float) -> None:
        """Take the evidence, act on the decision, and set the timer of the next one."""
        liveness = self.liveness
        while not self._stopped:
            if self._pong_at is not None:
                self._took_pong(self._pong_at)
                self._pong_at = None
            if self._raw.last_inbound > self._seen:
                self._seen = self._raw.last_inbound
                self._proof_of_life(liveness.inbound(self._seen))
            decision = liveness.poll(now, self._evidence(self._own_lag))
            if isinstance(decision, Abort):
                self._give_up(decision.diagnosis)
                return
            if isinstance(decision, Probe):
                self._probe(now)
                self._own_lag = 0.0
                now = self._now()
                continue
            self._maybe_announce_stall(decision.diagnosis)
            # The pong ends the wait early; so does any message on a quiet link, or from a
            # peer judged stalled (its recovery is noticed at its first frame).
            raw: Any = self._raw
            raw.waker = self._wake if liveness.parked or self._announced_stall else None
            if self._quiet_links is not None:
                self._quiet_links.watch(self, liveness.unanswered_after, liveness.parked)
            self._until = decision.until
            self._timer = self._timers.call_at(decision.until, self._due)
            return

    def _due(self) -> None:
        """The timer fired. Firing late means our own loop was blocked: evidence
        against ourselves."""
        self._timer = None
        now = self._now()
        self._own_lag = max(self._own_lag, now - self._until)
        self._decide(now)

    def _wake(self) -> None:
        """Decide now, not at the timer (a pong, or traffic on a parked link). Called from
        websockets' frame hook: the decision runs from the timers, not inside it."""
        if self._stopped:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timers.call_at(self._now(), self._woken)

    def _woken(self) -> None:
        self._timer = None
        self._decide(self._now())

    def _give_up(self, diagnosis: Diagnosis) -> None:
        self.diagnosis = diagnosis
        self.stop()
        self._gave_up(diagnosis)
        _backend.abort_link(self._raw)

    def _on_pong(self, data: bytes, at: float) -> None:
        """websockets' connection saw a pong (a protocol callback: no task, no anyio)."""
        if self._outstanding is not None and data == self._outstanding.data:
            self._pong_at = at
            self._wake()

    def _probe(self, now: float) -> None:
        info = self.tcp_info()
        self._retrans_at_probe = info.total_retrans if info is not None else 0
        self._ticks_at_probe = 0 if self._monitor is None else self._monitor.ticks
        self._probes += 1
        # A probe sent while the peer is stalled measures what is left of the stall.
        probe = self._outstanding = _Probe(
            data=_PROBE.pack(self._probes),
            sent_at=now,
            deadline=now + self.liveness.timeout,
            during_stall=self._announced_stall,
            ticks=self._ticks_at_probe,
        )
        self.liveness.probe_sent(now)
        _backend.send_control(self._raw, probe.data, ping=True)

    def _took_pong(self, answered: float) -> None:
        probe, self._outstanding = self._outstanding, None
        assert probe is not None
        # A pong after its deadline, one sent during a peer stall, or one that waited while
        # our own loop lagged, measured a stall, not the path (as Karn's algorithm ignores
        # ambiguous samples): keep it out of SRTT.
        if (
            answered <= probe.deadline
            and not probe.during_stall
            and self._own_lag_since(probe.ticks) < self._policy.client_lag
        ):
            self._proof_of_life(self.liveness.pong(answered, probe.sent_at))
        else:
            self._proof_of_life(self.liveness.inbound(answered))

    def _own_lag_since(self, ticks: int) -> float:
        """The largest lag of our own loop since the monitor's tick count was ``ticks``."""
        monitor = self._monitor
        if monitor is None:
            return 0.0
        sampled = monitor.stats.max_recent(monitor.ticks - ticks)
        # Right after a block, the pong's task may run before the monitor's late tick has
        # been recorded: count how overdue that tick is now.
        overdue = 0.0
        if monitor.last_tick is not None:
            overdue = self._now() - monitor.last_tick - monitor.interval
        return max(sampled, overdue)

    def tcp_info(self) -> _tcpinfo.TcpInfo | None:
        """The kernel's view of the link's TCP connection now, where the platform gives one."""
        return None if self._socket is None else _sockopts.read(self._socket)

    def _evidence(self, own_lag: float) -> Evidence:
        if self.liveness.probing:
            own_lag = max(own_lag, self._own_lag_since(self._ticks_at_probe))
        # One getsockopt per wake: the RTT for every poll, the verdict's evidence for an
        # overdue probe.
        info = self.tcp_info()
        tcp = None
        if info is not None:
            # Retransmissions count from the probe; between probes, only the kernel's
            # current state (an old loss must not keep its RTT out forever).
            since = self._retrans_at_probe if self.liveness.probing else info.total_retrans
            tcp = _TcpView.of(info, since)
        return Evidence(
            own_lag=own_lag, tcp=tcp, peer_lag=self.peer_lag, last_data=self._raw.last_data
        )

    def stats(self) -> dict[str, Any]:
        """The link's liveness now, as :class:`~resilient_ws.ConnectionStats` reports it:
        ``srtt``, ``srtt_source``, ``rttvar``, ``timeout``, ``verdict``, ``stalled_for``,
        ``peer_lag``, ``peer_stall``."""
        liveness = self.liveness
        stalled_since = liveness.stalled_since
        return dict(
            srtt=liveness.rtt.srtt,
            srtt_source=liveness.rtt.source,
            rttvar=liveness.rtt.rttvar,
            timeout=liveness.timeout,
            verdict=liveness.diagnosis.verdict.value,
            stalled_for=None if stalled_since is None else self._now() - stalled_since,
            peer_lag=self.peer_lag,
            peer_stall=self.peer_stall,
        )

    @property
    def peer_lag(self) -> float | None:
        """The loop lag the peer last reported in a beacon, seconds, if it sends them."""
        beacon = self._raw.last_beacon
        return None if beacon is None else beacon.lag

    @property
    def peer_stall(self) -> float | None:
        """How long the peer's last loop stall lasted, by its own beacon, seconds."""
        beacon = self._raw.last_beacon
        return None if beacon is None else beacon.stall

    def _maybe_announce_stall(self, diagnosis: Diagnosis) -> None:
        if diagnosis.verdict is not Verdict.SERVER_STALLED or self._announced_stall:
            return
        self._announced_stall = True
        self._emit(
            PeerStalled(at=self._now(), url=self._url, evidence=diagnosis.evidence,
                        timeout=self.liveness.timeout)
        )  # fmt: skip

    def _proof_of_life(self, stalled_for: float | None) -> None:
        if stalled_for is None or not self._announced_stall:
            return
        self._announced_stall = False
        self._emit(PeerRecovered(at=self._now(), url=self._url, stalled_for=stalled_for))

    def _gave_up(self, diagnosis: Diagnosis) -> None:
        log(
            "link_abandoned",
            logging.WARNING,
            connection_id=self._connection_id,
            url=self._url,
            verdict=diagnosis.verdict.value,
            evidence=diagnosis.evidence,
            timeout=self.liveness.timeout,
            srtt=self.liveness.rtt.srtt,
        )


# The parked links of an event loop are checked in passes at least this far apart: a
# verdict comes at most this much later, for far fewer wake-ups than a timer per link.
_QUIET_PASS = 0.05


class _QuietLinks:
    """The parked links of one event loop whose kernel's ACKs are watched (Linux clients).

    Each is checked once per keepalive period, when its kernel's probe would have gone a
    pong's wait unanswered (:attr:`Liveness.unanswered_after`): one read of its last ACK.
    Answered, it is checked again a period later; unanswered, it is woken, and its
    decision probes it. One timer for them all, in a heap of plain tuples: a timer per
    link costs asyncio a handle and Python-level comparisons in its heap.
    """

    def __init__(self, timers: Timers) -> None:
        self._timers = weakref.ref(timers)  # the loop's timers own this, not the reverse
        # Each watched link: its socket, its unanswered_after, and the number of its entry
        # in the heap (an entry of a link unwatched since, or watched again, is stale).
        self._links: dict[LinkKeepalive, tuple[_sockopts.SockOpts, float, int]] = {}
        self._heap: list[tuple[float, int, LinkKeepalive]] = []
        self._entries = itertools.count()
        self._timer: Timer | None = None
        self._timer_at = math.inf

    @classmethod
    def of(cls, timers: Timers) -> _QuietLinks:
        links = _quiet_links.get(timers)
        if links is None:
            links = _quiet_links[timers] = cls(timers)
        return links

    def watch(self, keepalive: LinkKeepalive, after: float | None, parked: bool) -> None:
        """Watch ``keepalive``'s link while it is parked (``after``: its
        :attr:`Liveness.unanswered_after`); stop watching it otherwise."""
        sock = keepalive._socket
        if not parked or after is None or sock is None:
            self._links.pop(keepalive, None)
            return
        known = self._links.get(keepalive)
        if known is not None:
            self._links[keepalive] = (sock, after, known[2])
            return
        timers = self._timers()
        last_ack = _sockopts.last_ack_recv(sock)
        if timers is None or last_ack is None:
            return
        self._push(keepalive, sock, after, timers.now() - last_ack + after)

    def _push(
        self, keepalive: LinkKeepalive, sock: _sockopts.SockOpts, after: float, when: float
    ) -> None:
        entry = next(self._entries)
        self._links[keepalive] = (sock, after, entry)
        heapq.heappush(self._heap, (when, entry, keepalive))
        if when < self._timer_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        timers = self._timers()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        if timers is not None:
            self._timer_at = when
            self._timer = timers.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        timers = self._timers()
        if timers is None:
            return
        now = timers.now()
        heap, links = self._heap, self._links
        unanswered = []
        while heap and heap[0][0] <= now:
            _, entry, keepalive = heapq.heappop(heap)
            watched = links.get(keepalive)
            if watched is None or watched[2] != entry:
                continue  # stale
            sock, after, _ = watched
            last_ack = _sockopts.last_ack_recv(sock)
            if last_ack is None or last_ack >= after:
                del links[keepalive]
                if last_ack is not None:
                    unanswered.append(keepalive)
                continue
            heapq.heappush(heap, (now - last_ack + after, entry, keepalive))
        if not links:
            heap.clear()
        elif heap:
            self._arm(max(heap[0][0], now + _QUIET_PASS))
        for keepalive in unanswered:
            keepalive._wake()


_quiet_links: weakref.WeakKeyDictionary[Timers, _QuietLinks] = weakref.WeakKeyDictionary()
