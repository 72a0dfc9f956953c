"""Helpers shared by the client's I/O tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import anyio

from resilient_ws import Backoff, Event

E = TypeVar("E", bound=Event)

# Short delays keep the tests fast; the arithmetic itself is tested in test_backoff.py.
FAST = Backoff(first_delay=0.01, max_delay=0.2)
TIMEOUT = 20.0  # generous bound: only a real bug (a hang) exceeds it


async def next_event(events: AsyncIterator[Event], kind: type[E]) -> E:
    """Skip events until one of ``kind``, within TIMEOUT."""
    with anyio.fail_after(TIMEOUT):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"events ended before a {kind.__name__}")
