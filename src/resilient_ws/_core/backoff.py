"""Backoff delays and the forgiveness rule. Pure: the random draw and times are passed in.

The delays are tenacity's ``wait_random_exponential`` (full jitter): the n-th consecutive
failure is followed by a draw from ``[0, min(max_delay, first_delay * multiplier ** (n - 1))]``.
What is not tenacity's is what counts as a failure: a link's useful life forgives the
failures before it in proportion (:func:`forgive`), so a flapping network or a server
restarted several times is retried fast, while a server that accepts and then closes at
once keeps the delays growing.
"""

from __future__ import annotations

import math

from ..config import Backoff

__all__ = ["delay_bound", "forgive", "next_delay"]


def delay_bound(policy: Backoff, failures: int) -> float:
    """Upper bound of the delay after ``failures`` consecutive failures (>= 1)."""
    if failures <= 1:
        return min(policy.first_delay, policy.max_delay)
    try:
        grown = policy.first_delay * policy.multiplier ** (failures - 1)
    except OverflowError:  # a long outage: far past the cap
        return policy.max_delay
    return min(policy.max_delay, grown)


def next_delay(
    policy: Backoff, failures: int, draw: float, retry_after: float | None = None
) -> float:
    """The delay before the next attempt, in seconds.

    Args:
        policy: The backoff policy.
        failures: Consecutive failures so far (>= 1), after forgiveness.
        draw: A uniform random number in ``[0, 1)``: full jitter.
        retry_after: Seconds the server asked to wait (``Retry-After``), if any. It is a
            floor, plus up to a second of jitter (the header counts whole seconds: a crowd
            told the same value must not come back on the same second), capped at
            ``policy.max_retry_after``.
    """
    delay = draw * delay_bound(policy, failures)
    if retry_after is not None:
        delay = max(delay, min(retry_after + draw, policy.max_retry_after))
    return delay


def forgive(policy: Backoff, failures: int, uptime: float) -> int:
    """The failures still counted after a link that stayed up ``uptime`` seconds.

    A link that lived ``stable_after`` seconds or more forgives every failure before it;
    a shorter one forgives the fraction ``uptime / stable_after`` of them, rounded down,
    so a link closed at once (an accept-then-close server) forgives nothing. The link's
    own end is counted afterwards as one more failure.
    """
    if uptime >= policy.stable_after:
        return 0
    kept = failures * (1.0 - max(0.0, uptime) / policy.stable_after)
    return min(failures, math.ceil(kept))
