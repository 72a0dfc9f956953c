from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_ws import Backoff
from resilient_ws._core.backoff import delay_bound, forgive, next_delay

POLICY = Backoff(first_delay=0.1, multiplier=2.0, max_delay=30.0, max_retry_after=60.0)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_first_retry_is_fast(draw: float) -> None:
    assert delay_bound(POLICY, 1) == 0.1
    assert 0.0 <= next_delay(POLICY, 1, draw) <= POLICY.first_delay


@pytest.mark.parametrize(
    ("failures", "bound"),
    [(2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (9, 25.6)],
)
def test_bound_grows_geometrically_from_first_delay(failures: int, bound: float) -> None:
    assert delay_bound(POLICY, failures) == pytest.approx(bound)


@pytest.mark.parametrize("failures", [10, 11, 50, 1000])
def test_bound_is_capped_at_max_delay(failures: int) -> None:
    assert delay_bound(POLICY, failures) == POLICY.max_delay


@pytest.mark.parametrize("failures", [1025, 1026, 10_000, 10**18])
@pytest.mark.parametrize("multiplier", [2.0, 1e10])
def test_huge_failure_counts_do_not_overflow(failures: int, multiplier: float) -> None:
    policy = Backoff(multiplier=multiplier, max_delay=30.0)
    assert delay_bound(policy, failures) == 30.0
    assert next_delay(policy, failures, 0.5) == 15.0


def test_small_multiplier_still_reaches_max_delay() -> None:
    policy = Backoff(first_delay=0.5, multiplier=1.001, max_delay=30.0)
    # 0.5 * 1.001 ** 4999 is about 74, so the documented bound is the cap.
    assert delay_bound(policy, 5000) == 30.0


def test_first_delay_above_the_cap_is_capped() -> None:
    assert delay_bound(Backoff(first_delay=5.0, max_delay=1.0), 1) == 1.0


def test_draw_scales_the_bound() -> None:
    assert next_delay(POLICY, 4, 0.0) == 0.0
    assert next_delay(POLICY, 4, 0.25) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("draw", "retry_after", "expected"),
    [
        (0.0, 7.0, 7.0),  # a floor above the jittered delay
        (0.5, 7.0, 7.5),  # plus the draw: a crowd told 7 s spreads over [7, 8)
        (0.0, 3600.0, 60.0),  # capped at max_retry_after
        (0.0, 0.0, 0.0),
    ],
)
def test_retry_after_is_a_capped_floor(draw: float, retry_after: float, expected: float) -> None:
    assert next_delay(POLICY, 3, draw, retry_after) == pytest.approx(expected)


def test_a_jittered_delay_above_retry_after_wins() -> None:
    assert next_delay(POLICY, 10, 0.5, 0.1) == pytest.approx(15.0)  # 0.5 * 30 > 0.1 + 0.5


# ---- forgiveness --------------------------------------------------------------------------


@pytest.mark.parametrize("uptime", [1.0, 1.5, 3600.0])
def test_a_link_that_lived_stable_after_forgives_everything(uptime: float) -> None:
    assert forgive(Backoff(stable_after=1.0), 17, uptime) == 0


@pytest.mark.parametrize("uptime", [0.0, 0.001, 0.05])
def test_a_link_closed_at_once_forgives_nothing(uptime: float) -> None:
    assert forgive(Backoff(stable_after=1.0), 17, uptime) == 17


@pytest.mark.parametrize(
    ("uptime", "left"),
    [(0.25, 8), (0.5, 5), (0.75, 3), (0.9, 1), (0.99, 1)],
)
def test_a_shorter_link_forgives_in_proportion_to_its_life(uptime: float, left: int) -> None:
    assert forgive(Backoff(stable_after=1.0), 10, uptime) == left


def test_stable_after_zero_forgives_every_link() -> None:
    assert forgive(Backoff(stable_after=0.0), 9, 0.0) == 0


def _attempts_in(policy: Backoff, seconds: float, rng: random.Random, uptime: float) -> int:
    """Attempts a client makes in ``seconds`` against a server whose links live ``uptime``."""
    now, failures, attempts = 0.0, 0, 0
    while now < seconds:
        attempts += 1
        now += uptime
        failures = forgive(policy, failures, uptime) + 1
        now += next_delay(policy, failures, rng.random())
    return attempts


def test_defaults_do_not_storm_an_accept_then_close_server() -> None:
    """Issue 9's target, on the pure rule: <= 20 attempts in 5 s (links living 2 ms)."""
    rng = random.Random(9)
    worst = max(_attempts_in(Backoff(), 5.0, rng, uptime=0.002) for _ in range(2000))
    assert worst <= 20


def test_defaults_retry_fast_after_links_that_lived() -> None:
    """Links of 1 s or more keep the delay bound at first_delay, however many there were."""
    policy = Backoff()
    failures = 0
    for _ in range(100):
        failures = forgive(policy, failures, 1.0) + 1
    assert delay_bound(policy, failures) == policy.first_delay


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(database=None)
@given(
    first_delay=finite,
    multiplier=st.floats(min_value=1.0, max_value=1e6),
    max_delay=finite,
    failures=st.integers(min_value=1, max_value=10**6),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_delay_stays_within_bounds(
    first_delay: float,
    multiplier: float,
    max_delay: float,
    failures: int,
    draw: float,
) -> None:
    policy = Backoff(first_delay=first_delay, multiplier=multiplier, max_delay=max_delay)
    delay = next_delay(policy, failures, draw)
    assert not math.isnan(delay)
    assert 0.0 <= delay <= max_delay


@settings(database=None)
@given(
    stable_after=finite,
    failures=st.integers(min_value=0, max_value=10**6),
    uptime=finite,
)
def test_forgiveness_never_adds_failures(stable_after: float, failures: int, uptime: float) -> None:
    left = forgive(Backoff(stable_after=stable_after), failures, uptime)
    assert 0 <= left <= failures
