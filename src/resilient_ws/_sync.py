"""A re-armable wake-up signal over anyio events."""

from __future__ import annotations

import anyio

__all__ = ["Signal"]


class Signal:
    """Wakes every task waiting in :meth:`wait` when :meth:`notify` is called.

    Unlike :class:`anyio.Event` it can fire many times. Waiters re-check their condition
    after waking: a notification says "something changed", not what.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()
