"""The pure liveness core, driven with synthetic timelines: no sockets, no clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_ws._liveness import (
    Abort,
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


# What TCP_INFO showed on this machine (DESIGN.md): a SIGSTOPped or GIL-stalled server
# ACKs our probe; an iptables DROP leaves it unacked and retransmitted.
STALLED = Tcp(unacked=0, last_ack_recv=0.05)
DROPPED = Tcp(unacked=1, retransmits=2, backoff=2, last_ack_recv=5.0)


def probed(now: float = 0.0) -> Liveness:
    """A liveness whose idle link has just been probed at ``now``."""
    liveness = Liveness(POLICY, now - POLICY.idle)
    assert isinstance(liveness.poll(now, Evidence()), Probe)
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


# ---- probing only when idle -------------------------------------------------------------


def test_no_probe_while_frames_keep_arriving() -> None:
    liveness = Liveness(POLICY, 0.0)
    for tick in range(1, 100):
        now = tick * 0.5
        liveness.inbound(now - 0.1)  # a data frame arrived just before
        decision = liveness.poll(now, Evidence())
        assert isinstance(decision, Wait)
        assert decision.until == pytest.approx(now - 0.1 + POLICY.idle)


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
        (Evidence(tcp=Tcp(unacked=1, retransmits=1, last_ack_recv=0.02)), Verdict.UNKNOWN, "none"),
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
