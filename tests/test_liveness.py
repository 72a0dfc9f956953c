"""The pure liveness core, driven with synthetic timelines: no sockets, no clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_ws._core.liveness import (
    Abort,
    Diagnosis,
    Evidence,
    Liveness,
    Probe,
    RttEstimator,
    Verdict,
    Wait,
    diagnose,
)
from resilient_ws.config import Keepalive

POLICY = Keepalive(idle=1.0, min_timeout=0.3, max_timeout=10.0, max_server_stall=120.0)


@dataclass(frozen=True)
class Tcp:
    unacked: int = 0
    retransmits: int = 0
    backoff: int = 0
    last_ack_recv: float = 0.0
    zero_window: bool = False
    rtt: float = 0.0
    rttvar: float = 0.0


# What TCP_INFO showed on this machine (DESIGN.md): a SIGSTOPped or GIL-stalled server
# ACKs our probe; an iptables DROP leaves it unacked and retransmitted.
STALLED = Tcp(unacked=0, last_ack_recv=0.05)
DROPPED = Tcp(unacked=1, retransmits=2, backoff=2, last_ack_recv=5.0)
# An open link's TCP state between probes: the kernel's RTT of a LAN path.
OPEN = Tcp(rtt=0.002, rttvar=0.001)


def probed(now: float = 0.0, tcp: Tcp | None = None, earlier_pong: float | None = None) -> Liveness:
    """A liveness whose idle link has just been probed at ``now`` (TCP state ``tcp`` then),
    after an earlier probe answered in ``earlier_pong`` seconds, if given."""
    liveness = Liveness(POLICY, now - POLICY.idle)
    if earlier_pong is not None:
        liveness.rtt.sample(earlier_pong)
    assert isinstance(liveness.poll(now, Evidence(tcp=tcp)), Probe)
    liveness.probe_sent(now)
    return liveness


# ---- RTT estimation ---------------------------------------------------------------------


def test_first_rtt_sample_sets_srtt_and_half_rttvar() -> None:
    rtt = RttEstimator()
    rtt.sample(0.1)
    assert (rtt.srtt, rtt.rttvar) == (0.1, 0.05)
    assert rtt.timeout(0.0, 10.0) == pytest.approx(0.1 + 4 * 0.05)


def test_later_samples_follow_rfc6298() -> None:
    rtt = RttEstimator()
    rtt.sample(0.1)
    rtt.sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)


def test_timeout_before_any_sample_is_one_second_clamped() -> None:
    assert RttEstimator().timeout(0.3, 10.0) == 1.0
    assert RttEstimator().timeout(0.3, 0.5) == 0.5
    assert RttEstimator().timeout(2.0, 10.0) == 2.0


@settings(max_examples=200)
@given(st.lists(st.floats(min_value=-1.0, max_value=1e6, allow_nan=False), max_size=50))
def test_timeout_stays_within_floor_and_ceiling(samples: list[float]) -> None:
    rtt = RttEstimator()
    for sample in samples:
        rtt.sample(sample)
        assert 0.3 <= rtt.timeout(0.3, 10.0) <= 10.0


def test_kernel_rtt_shows_at_once_but_shortens_the_wait_only_after_a_pong() -> None:
    """The kernel's estimate may be of the hop to a proxy: until a pong has measured the
    rest, the wait stays at RFC 6298's initial 1 s, or longer if the path is slower."""
    liveness = Liveness(POLICY, 0.0)
    assert liveness.rtt.srtt is None
    assert liveness.timeout == 1.0  # RFC 6298's initial timeout, with nothing measured
    liveness.poll(0.1, Evidence(tcp=OPEN))
    assert (liveness.rtt.srtt, liveness.rtt.rttvar, liveness.rtt.source) == (0.002, 0.001, "kernel")
    assert liveness.timeout == 1.0
    liveness.poll(0.2, Evidence(tcp=Tcp(rtt=0.5, rttvar=0.2)))  # a slow path lifts it
    assert liveness.timeout == pytest.approx(0.5 + 4 * 0.2)
    liveness.poll(0.3, Evidence(tcp=OPEN))
    assert isinstance(liveness.poll(1.0, Evidence(tcp=OPEN)), Probe)
    liveness.probe_sent(1.0)
    liveness.pong(1.003, sent_at=1.0)
    assert liveness.timeout == POLICY.min_timeout  # a LAN, measured: the floor


def test_pong_and_kernel_estimates_combine_as_the_larger_bound() -> None:
    rtt = RttEstimator()
    rtt.path(0.01, 0.005)
    rtt.sample(0.2)  # the pong adds the peer's application latency to the path
    assert (rtt.srtt, rtt.rttvar, rtt.source) == (0.2, 0.1, "pong")
    assert rtt.timeout(0.0, 10.0) == pytest.approx(0.2 + 4 * 0.1)
    rtt.path(1.0, 0.1)  # the path slowed down since the last pong
    assert (rtt.srtt, rtt.source) == (1.0, "kernel")
    assert rtt.timeout(0.0, 10.0) == pytest.approx(1.0 + 4 * 0.1)
    rtt.path(0.0, 0.0)  # no sample: the kernel's last one stands
    assert rtt.srtt == 1.0


def test_kernel_rtt_is_ignored_while_the_kernel_retransmits() -> None:
    liveness = Liveness(POLICY, 0.0)
    liveness.poll(0.1, Evidence(tcp=OPEN))
    liveness.poll(0.2, Evidence(tcp=Tcp(unacked=1, retransmits=1, rtt=0.5, rttvar=0.2)))
    liveness.poll(0.3, Evidence(tcp=Tcp(unacked=1, backoff=1, rtt=0.5, rttvar=0.2)))
    assert liveness.rtt.srtt == 0.002


# ---- probing only when idle -------------------------------------------------------------


def test_no_probe_while_frames_keep_arriving() -> None:
    """A busy link is probed once, soon after it opens, to measure the peer's latency;
    never again while frames arrive and the kernel keeps the path's RTT current."""
    liveness = Liveness(POLICY, 0.0)
    probes = []
    for tick in range(1, 1000):
        now = tick * 0.5
        liveness.inbound(now - 0.1)  # a data frame arrived just before
        decision = liveness.poll(now, Evidence(tcp=OPEN))
        if isinstance(decision, Probe):
            probes.append(now)
            liveness.probe_sent(now)
            liveness.pong(now + 0.004, sent_at=now)
            continue
        assert isinstance(decision, Wait)
        idle_due = now - 0.1 + POLICY.idle
        calibration_due = POLICY.idle  # idle after the link opened at 0
        expected = idle_due if probes else min(idle_due, calibration_due)
        assert decision.until == pytest.approx(expected)
    assert probes == [POLICY.idle]
    assert liveness.rtt.has_pong
    # The larger of the two bounds: the kernel's (2 ms + 4 x 1 ms) over the pong's (4 + 4 x 2).
    assert liveness.rtt.srtt == pytest.approx(0.004)
    assert liveness.rtt.source == "pong"


def test_without_kernel_rtt_a_busy_link_gets_a_low_rate_probe() -> None:
    """No TCP_INFO: one probe soon after the link opens, then one every 30 s, for an RTT."""
    liveness = Liveness(POLICY, 0.0)
    probes: list[float] = []
    for tick in range(1000):
        now = tick / 10
        liveness.inbound(now)  # frames keep arriving, faster than Keepalive.idle
        decision = liveness.poll(now, Evidence())
        if isinstance(decision, Probe):
            probes.append(now)
            liveness.probe_sent(now)
            if len(probes) == 1:
                liveness.pong(now + 0.05, sent_at=now)
    assert probes[0] == pytest.approx(POLICY.idle)
    gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
    assert len(gaps) >= 2
    assert all(29.9 <= gap <= 30.2 for gap in gaps)
    assert liveness.rtt.source == "pong"


def test_probe_after_idle_period() -> None:
    liveness = Liveness(POLICY, 0.0)
    assert isinstance(liveness.poll(0.99, Evidence()), Wait)
    assert isinstance(liveness.poll(1.0, Evidence()), Probe)


def test_pong_samples_rtt_and_rearms_idle() -> None:
    liveness = probed(1.0)
    assert liveness.pong(1.02, sent_at=1.0) is None
    assert liveness.rtt.srtt == pytest.approx(0.02)
    decision = liveness.poll(1.5, Evidence())
    assert isinstance(decision, Wait)
    assert decision.until == pytest.approx(2.02)


# ---- verdicts ---------------------------------------------------------------------------


def test_overdue_probe_with_dropped_packets_is_network_dead() -> None:
    liveness = probed(1.0)
    deadline = 1.0 + liveness.timeout
    assert isinstance(liveness.poll(deadline - 0.01, Evidence(tcp=DROPPED)), Wait)
    decision = liveness.poll(deadline, Evidence(tcp=Tcp(unacked=1, retransmits=1, last_ack_recv=9)))
    assert isinstance(decision, Abort)
    assert decision.diagnosis.verdict is Verdict.NETWORK_DEAD
    assert decision.diagnosis.evidence == "retransmits"


def test_unacked_but_not_yet_retransmitted_waits() -> None:
    liveness = probed(0.0)
    decision = liveness.poll(liveness.timeout, Evidence(tcp=Tcp(unacked=1, last_ack_recv=9)))
    assert isinstance(decision, Wait)
    assert decision.diagnosis.verdict is Verdict.PENDING


def test_stalled_server_keeps_the_link_until_max_server_stall() -> None:
    liveness = probed(0.0)
    now = liveness.timeout
    decision = liveness.poll(now, Evidence(tcp=STALLED))
    assert not isinstance(decision, Abort)
    assert liveness.diagnosis.verdict is Verdict.SERVER_STALLED
    assert liveness.stalled_since == now
    probes = 0
    # Walk through the whole allowance: it waits and keeps re-probing, never aborts early.
    for _ in range(100_000):
        decision = liveness.poll(now, Evidence(tcp=Tcp(unacked=0, last_ack_recv=0.01)))
        if isinstance(decision, Abort):
            break
        if isinstance(decision, Probe):
            probes += 1
            liveness.probe_sent(now)
            now += 0.01
        else:
            now = max(now + 0.01, decision.until)
    assert isinstance(decision, Abort)
    assert decision.diagnosis.verdict is Verdict.SERVER_STALLED
    assert POLICY.max_server_stall <= now - 1.0 <= POLICY.max_server_stall + 2.0
    assert probes >= 10


def test_recovery_reports_how_long_the_server_was_stalled() -> None:
    liveness = probed(0.0)
    liveness.poll(liveness.timeout, Evidence(tcp=STALLED))
    stalled_at = liveness.stalled_since
    assert stalled_at is not None
    assert liveness.inbound(45.0) == pytest.approx(45.0 - stalled_at)
    assert liveness.stalled_since is None
    assert liveness.diagnosis.verdict is Verdict.HEALTHY


def test_network_dying_during_a_stall_is_still_noticed() -> None:
    liveness = probed(0.0)
    now = liveness.timeout
    liveness.poll(now, Evidence(tcp=STALLED))
    # The stall goes on; the next re-probe is not ACKed and gets retransmitted.
    while not isinstance(decision := liveness.poll(now, Evidence(tcp=STALLED)), Probe):
        now += 0.05
    liveness.probe_sent(now)
    now += liveness.timeout
    decision = liveness.poll(now, Evidence(tcp=Tcp(unacked=1, retransmits=1, last_ack_recv=2.0)))
    assert isinstance(decision, Abort)
    assert decision.diagnosis.verdict is Verdict.NETWORK_DEAD


def walk(liveness: Liveness, now: float, tcp_at: Callable[[float], Tcp], until: float) -> Trail:
    """Poll ``liveness`` as the keepalive does (sleep to each Wait, send each Probe) from
    ``now`` with the TCP state ``tcp_at(t)``, until an Abort or ``until``."""
    trail = Trail()
    for _ in range(1_000_000):  # bounded: every turn advances time or sends a probe
        if now > until:
            break
        decision = liveness.poll(now, Evidence(tcp=tcp_at(now)))
        trail.verdicts.append((now, liveness.diagnosis))
        if isinstance(decision, Abort):
            trail.abort = (now, decision.diagnosis)
            break
        if isinstance(decision, Probe):
            liveness.probe_sent(now)
            trail.probes.append(now)
            now += 0.001
        else:
            now = max(now + 0.001, decision.until)
    return trail


@dataclass
class Trail:
    verdicts: list[tuple[float, Diagnosis]] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    abort: tuple[float, Diagnosis] | None = None


def rto_count(elapsed: float, rto: float = 0.2) -> int:
    """Retransmission timeouts of a segment sent ``elapsed`` seconds ago: 1st after rto, then
    doubling."""
    count, wait = 0, rto
    while elapsed >= wait and count < 15:
        count += 1
        wait += rto * 2**count
    return count


def test_stalled_verdict_flips_to_network_dead_when_newer_bytes_go_unacked() -> None:
    """Issue 9, item 8: the client sends every 10 ms; the path dies 120 ms after a probe, just
    after an ACK of older data came in. The first look says tcp_acked (nothing retransmitted
    yet); the retransmissions that follow, with no ACK, must turn it into network_dead."""
    liveness = probed(0.0, OPEN, earlier_pong=0.002)  # a LAN: the 0.3 s floor
    assert liveness.timeout == POLICY.min_timeout
    last_ack, dropped = 0.1, 0.12

    def tcp_at(t: float) -> Tcp:
        rtos = rto_count(t - dropped)
        return Tcp(unacked=1, retransmits=rtos, backoff=rtos, last_ack_recv=t - last_ack)

    trail = walk(liveness, liveness.timeout, tcp_at, until=POLICY.max_server_stall)
    first = trail.verdicts[0][1]
    assert (first.verdict, first.evidence) == (Verdict.SERVER_STALLED, "tcp_acked")
    assert trail.abort is not None
    at, diagnosis = trail.abort
    assert (diagnosis.verdict, diagnosis.evidence) == (Verdict.NETWORK_DEAD, "retransmits")
    # The first retransmission comes at 0.32; the verdict at the next recheck.
    assert at - dropped <= 0.2 + liveness.timeout + 0.2 + 0.01


def test_true_stall_under_client_traffic_stays_stalled_for_max_server_stall() -> None:
    """A stopped server's kernel ACKs the client's stream (delayed ACKs: a segment is often
    unacked) until its buffer fills, then closes its window: server_stalled throughout, and
    the link is given up only at max_server_stall."""
    liveness = probed(0.0)

    def tcp_at(t: float) -> Tcp:
        if t >= 30.0:  # receive buffer full: zero window, window probes backing off
            return Tcp(unacked=0, backoff=min(15, int(t - 30)), last_ack_recv=0.1, zero_window=True)
        phase = t % 0.04
        return Tcp(unacked=int(phase > 0.02), last_ack_recv=phase)

    trail = walk(liveness, liveness.timeout, tcp_at, until=2 * POLICY.max_server_stall)
    verdicts = {diagnosis.verdict for _, diagnosis in trail.verdicts}
    assert verdicts <= {Verdict.SERVER_STALLED, Verdict.HEALTHY}
    assert trail.abort is not None
    at, diagnosis = trail.abort
    assert diagnosis.verdict is Verdict.SERVER_STALLED
    assert POLICY.max_server_stall <= at <= POLICY.max_server_stall + liveness.timeout + 0.3
    assert len(trail.probes) >= 10  # it kept looking for fresher evidence


def test_own_loop_lag_blames_the_client_and_stretches_deadlines() -> None:
    liveness = probed(0.0)
    timeout = liveness.timeout
    decision = liveness.poll(timeout, Evidence(own_lag=3.0, tcp=DROPPED))
    assert isinstance(decision, Wait)
    assert decision.diagnosis.verdict is Verdict.CLIENT_STALLED
    assert liveness.health_score == 1
    assert decision.until == pytest.approx(timeout + 2 * timeout)
    # The pong, drained after the stall, restores health step by step.
    liveness.pong(timeout + 0.01, sent_at=0.0)
    assert liveness.health_score == 0


def test_without_tcp_evidence_waits_unknown_timeout_then_aborts() -> None:
    liveness = probed(0.0)
    now = liveness.timeout
    while isinstance(decision := liveness.poll(now, Evidence()), Wait):
        assert decision.diagnosis.verdict is Verdict.UNKNOWN
        now = decision.until
    assert isinstance(decision, Abort)
    assert decision.diagnosis.verdict is Verdict.UNKNOWN
    assert now == pytest.approx(POLICY.unknown_timeout)


@pytest.mark.parametrize(
    ("evidence", "verdict", "basis"),
    [
        (Evidence(own_lag=0.5, tcp=DROPPED), Verdict.CLIENT_STALLED, "own_lag"),
        (Evidence(tcp=Tcp(zero_window=True, unacked=3)), Verdict.SERVER_STALLED, "zero_window"),
        (Evidence(tcp=STALLED), Verdict.SERVER_STALLED, "tcp_acked"),
        (Evidence(tcp=DROPPED), Verdict.NETWORK_DEAD, "retransmits"),
        (Evidence(tcp=Tcp(unacked=1, last_ack_recv=5.0)), Verdict.PENDING, "unacked"),
        (Evidence(peer_lag=2.0), Verdict.SERVER_STALLED, "peer_lag"),
        (Evidence(), Verdict.UNKNOWN, "none"),
        # An ACK older than the probe says nothing about the probe.
        (Evidence(tcp=Tcp(unacked=0, last_ack_recv=5.0)), Verdict.UNKNOWN, "none"),
        # ...but one within a kernel tick of it does: last_ack_recv is rounded to jiffies.
        (Evidence(tcp=Tcp(unacked=0, last_ack_recv=1.004)), Verdict.SERVER_STALLED, "tcp_acked"),
        # A client that keeps sending has a segment awaiting its delayed ACK most of the
        # time: ACKs since the probe, and no retransmission, still say the kernel is alive.
        (Evidence(tcp=Tcp(unacked=1, last_ack_recv=0.02)), Verdict.SERVER_STALLED, "tcp_acked"),
        # A loss being repaired: retransmitted, but ACKs still come in.
        (
            Evidence(tcp=Tcp(unacked=1, retransmits=1, last_ack_recv=0.02)),
            Verdict.PENDING,
            "unacked",
        ),
        # An ACK came after the probe (it covered older data), then nothing for longer than
        # the timeout while the newer bytes are retransmitted: the path died after it.
        (
            Evidence(tcp=Tcp(unacked=1, retransmits=1, backoff=1, last_ack_recv=0.5)),
            Verdict.NETWORK_DEAD,
            "retransmits",
        ),
    ],
)
def test_diagnose(evidence: Evidence, verdict: Verdict, basis: str) -> None:
    diagnosis = diagnose(evidence, since_probe=1.0, policy=POLICY)
    assert (diagnosis.verdict, diagnosis.evidence) == (verdict, basis)


tcp_states = st.builds(
    Tcp,
    unacked=st.integers(0, 100),
    retransmits=st.integers(0, 15),
    backoff=st.integers(0, 15),
    last_ack_recv=st.floats(0, 1e4, allow_nan=False),
    zero_window=st.booleans(),
    rtt=st.floats(0, 20, allow_nan=False),
    rttvar=st.floats(0, 20, allow_nan=False),
)


@given(
    tcp=tcp_states,
    own_lag=st.floats(0, 100, allow_nan=False),
    peer_lag=st.none() | st.floats(0, 100, allow_nan=False),
    since_probe=st.floats(0, 1e4, allow_nan=False),
)
def test_never_network_dead_while_every_byte_is_acked(
    tcp: Tcp, own_lag: float, peer_lag: float | None, since_probe: float
) -> None:
    acked = Tcp(0, tcp.retransmits, tcp.backoff, tcp.last_ack_recv, tcp.zero_window)
    evidence = Evidence(own_lag=own_lag, tcp=acked, peer_lag=peer_lag)
    diagnosis = diagnose(evidence, since_probe, POLICY)
    assert diagnosis.verdict is not Verdict.NETWORK_DEAD


@given(
    tcp=tcp_states,
    since_probe=st.floats(0.3, 1e4, allow_nan=False),
    timeout=st.floats(0.3, 10, allow_nan=False),
)
def test_never_network_dead_while_acks_are_fresh(
    tcp: Tcp, since_probe: float, timeout: float
) -> None:
    """A live peer kernel (a stopped or GIL-bound server's too) keeps ACKing: while an ACK
    came since the probe and within the timeout, the path is not judged dead."""
    fresh = Tcp(
        tcp.unacked,
        tcp.retransmits,
        tcp.backoff,
        min(tcp.last_ack_recv, since_probe, timeout * 0.999),
        tcp.zero_window,
    )
    diagnosis = diagnose(Evidence(tcp=fresh), since_probe, POLICY, timeout=timeout)
    assert diagnosis.verdict is not Verdict.NETWORK_DEAD


@given(
    steps=st.lists(
        st.tuples(
            st.floats(0, 5, allow_nan=False),  # time advance
            st.sampled_from(["poll", "inbound", "pong"]),
            st.floats(0, 10, allow_nan=False),  # own lag
            tcp_states | st.none(),
        ),
        max_size=60,
    )
)
def test_deadlines_never_below_the_floor(steps: list[tuple[float, str, float, Tcp | None]]) -> None:
    """Whatever happens, a probe is never given less than min_timeout to be answered."""
    liveness = Liveness(POLICY, 0.0)
    now = 0.0
    probe_at: float | None = None
    for advance, action, own_lag, tcp in steps:
        now += advance
        if action == "inbound":
            liveness.inbound(now)
            probe_at = None
        elif action == "pong" and probe_at is not None:
            liveness.pong(now, probe_at)
            probe_at = None
        else:
            decision = liveness.poll(now, Evidence(own_lag=own_lag, tcp=tcp))
            if isinstance(decision, Probe):
                liveness.probe_sent(now)
                probe_at = now
            elif isinstance(decision, Abort):
                assert probe_at is not None
                assert now - probe_at >= POLICY.min_timeout
                return
        assert liveness.timeout >= POLICY.min_timeout


# ---- quiet links: the kernel watches, Python probes only after traffic ------------------


def answered_probe(
    quiet: float | None, *, data_at: float = 0.0, kernel_idle: float | None = None
) -> Liveness:
    """A link opened at 0, a message at ``data_at``, its first probe sent at 1 and
    answered at 1.001."""
    liveness = Liveness(POLICY, 0.0, quiet=quiet, kernel_idle=kernel_idle)
    assert isinstance(liveness.poll(1.0, Evidence(tcp=OPEN, last_data=data_at)), Probe)
    liveness.probe_sent(1.0)
    liveness.pong(1.001, 1.0)
    return liveness


def test_a_quiet_link_the_kernel_watches_is_probed_every_quiet_interval() -> None:
    liveness = answered_probe(quiet=15.0)
    decision = liveness.poll(2.001, Evidence(tcp=OPEN, last_data=0.0))
    assert decision == Wait(1.001 + 15.0, liveness.diagnosis)
    assert liveness.parked
    assert isinstance(liveness.poll(16.001, Evidence(tcp=OPEN, last_data=0.0)), Probe)


def test_a_quiet_link_whose_kernel_probe_was_answered_stays_parked() -> None:
    """The kernel probes 1 s after it last received anything; an ACK younger than that
    plus a pong's wait keeps the link parked until quiet_interval."""
    liveness = answered_probe(quiet=15.0, kernel_idle=1.0)
    assert liveness.unanswered_after == 1.0 + liveness.timeout
    in_time = Tcp(last_ack_recv=1.0 + liveness.timeout - 0.01)
    decision = liveness.poll(3.0, Evidence(tcp=in_time, last_data=0.0))
    assert decision == Wait(1.001 + 15.0, liveness.diagnosis)
    assert liveness.parked


def test_a_lost_keepalive_probe_brings_an_application_probe_at_once() -> None:
    liveness = answered_probe(quiet=15.0, kernel_idle=1.0)
    late = Tcp(last_ack_recv=1.0 + liveness.timeout)
    assert isinstance(liveness.poll(3.0, Evidence(tcp=late, last_data=0.0)), Probe)


def test_without_kernel_acks_nothing_is_unanswered() -> None:
    """macOS reports no last ACK: the kernel's own second probe drops a dead link."""
    liveness = answered_probe(quiet=15.0)
    assert liveness.unanswered_after is None
    decision = liveness.poll(3.0, Evidence(tcp=Tcp(last_ack_recv=9.0), last_data=0.0))
    assert decision == Wait(1.001 + 15.0, liveness.diagnosis)


def test_without_the_kernel_an_idle_link_is_probed_every_idle_period() -> None:
    liveness = answered_probe(quiet=None)
    assert isinstance(liveness.poll(2.001, Evidence(tcp=OPEN, last_data=0.0)), Probe)
    assert not liveness.parked


@pytest.mark.parametrize(
    ("evidence", "why"),
    [
        (Evidence(tcp=OPEN, last_data=1.5), "a message after the probe went out"),
        (Evidence(tcp=Tcp(unacked=1), last_data=0.0), "bytes of ours unacknowledged"),
    ],
)
def test_traffic_or_unacked_bytes_bring_back_the_idle_probe(evidence: Evidence, why: str) -> None:
    liveness = answered_probe(quiet=15.0)
    assert isinstance(liveness.poll(2.5, evidence), Probe), why
    assert not liveness.parked


def test_frames_that_answer_a_probe_during_traffic_do_not_make_the_link_quiet() -> None:
    """Messages that arrive after a probe was sent resolve it, but they are traffic: the
    link is probed again after idle, not parked (the probe after a dead network's last
    frames must go out)."""
    liveness = Liveness(POLICY, 0.0, quiet=15.0)
    assert isinstance(liveness.poll(1.0, Evidence(tcp=OPEN)), Probe)
    liveness.probe_sent(1.0)
    liveness.inbound(1.4)  # a message, last_data 1.4, answers the probe
    decision = liveness.poll(1.5, Evidence(tcp=OPEN, last_data=1.4))
    assert decision == Wait(2.4, liveness.diagnosis)
    assert not liveness.parked
    assert isinstance(liveness.poll(2.4, Evidence(tcp=OPEN, last_data=1.4)), Probe)


def test_a_server_never_probes_a_quiet_link() -> None:
    liveness = answered_probe(quiet=float("inf"))
    decision = liveness.poll(1000.0, Evidence(tcp=OPEN, last_data=0.0))
    assert isinstance(decision, Wait)
    assert decision.until == float("inf")
