from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_ws import Backoff
from resilient_ws._backoff import delay_bound, next_delay

POLICY = Backoff(first_delay=0.1, base=0.5, multiplier=2.0, max_delay=30.0, max_retry_after=60.0)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_first_retry_is_fast(draw: float) -> None:
    assert delay_bound(POLICY, 1) == 0.1
    assert 0.0 <= next_delay(POLICY, 1, draw) <= POLICY.first_delay


@pytest.mark.parametrize(
    ("failures", "bound"),
    [(2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (7, 16.0)],
)
def test_bound_grows_geometrically_from_base(failures: int, bound: float) -> None:
    assert delay_bound(POLICY, failures) == bound


@pytest.mark.parametrize("failures", [8, 9, 50, 1000])
def test_bound_is_capped_at_max_delay(failures: int) -> None:
    assert delay_bound(POLICY, failures) == POLICY.max_delay


@pytest.mark.parametrize("failures", [1025, 1026, 10_000, 10**18])
@pytest.mark.parametrize("multiplier", [2.0, 1e10])
def test_huge_failure_counts_do_not_overflow(failures: int, multiplier: float) -> None:
    policy = Backoff(multiplier=multiplier, max_delay=30.0)
    assert delay_bound(policy, failures) == 30.0
    assert next_delay(policy, failures, 0.5) == 15.0


def test_small_multiplier_still_reaches_max_delay() -> None:
    policy = Backoff(base=0.5, multiplier=1.001, max_delay=30.0)
    # 0.5 * 1.001 ** 4998 is about 74, so the documented bound is the cap.
    assert delay_bound(policy, 5000) == 30.0


def test_draw_scales_the_bound() -> None:
    assert next_delay(POLICY, 4, 0.0) == 0.0
    assert next_delay(POLICY, 4, 0.25) == 0.5


@pytest.mark.parametrize(
    ("draw", "retry_after", "expected"),
    [
        (0.0, 7.0, 7.0),  # a floor above the jittered delay
        (0.5, 0.1, 0.5),  # below the jittered delay: the delay wins
        (0.0, 3600.0, 60.0),  # capped at max_retry_after
        (0.0, 0.0, 0.0),
    ],
)
def test_retry_after_is_a_capped_floor(draw: float, retry_after: float, expected: float) -> None:
    assert next_delay(POLICY, 3, draw, retry_after) == expected


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(database=None)
@given(
    first_delay=finite,
    base=finite,
    multiplier=st.floats(min_value=1.0, max_value=1e6),
    max_delay=finite,
    failures=st.integers(min_value=1, max_value=10**6),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_delay_stays_within_bounds(
    first_delay: float,
    base: float,
    multiplier: float,
    max_delay: float,
    failures: int,
    draw: float,
) -> None:
    policy = Backoff(first_delay=first_delay, base=base, multiplier=multiplier, max_delay=max_delay)
    delay = next_delay(policy, failures, draw)
    assert not math.isnan(delay)
    assert 0.0 <= delay <= max(max_delay, first_delay)
