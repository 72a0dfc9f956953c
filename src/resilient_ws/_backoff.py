"""Backoff delays. Pure: the random draw is passed in."""

from __future__ import annotations

from .config import Backoff

__all__ = ["delay_bound", "next_delay"]


def delay_bound(policy: Backoff, failures: int) -> float:
    """Upper bound of the delay after ``failures`` consecutive failed attempts (>= 1)."""
    if failures <= 1:
        return policy.first_delay
    try:
        grown = policy.base * policy.multiplier ** (failures - 2)
    except OverflowError:  # a long outage: far past the cap
        return policy.max_delay
    return min(policy.max_delay, grown)


def next_delay(
    policy: Backoff, failures: int, draw: float, retry_after: float | None = None
) -> float:
    """The delay before the next attempt, in seconds.

    Args:
        policy: The backoff policy.
        failures: Consecutive failed attempts so far (>= 1).
        draw: A uniform random number in ``[0, 1)``: full jitter.
        retry_after: Seconds the server asked to wait (``Retry-After``), if any. It is a
            floor, capped at ``policy.max_retry_after``.
    """
    delay = draw * delay_bound(policy, failures)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay
