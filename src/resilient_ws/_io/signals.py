"""A re-armable wake-up signal over anyio events, and ``async for`` over ``recv()``."""

from __future__ import annotations

from typing import TypeVar

import anyio

from .._core.outbox import Message
from ..exceptions import ConnectionClosedOK

__all__ = ["MessageIterator", "Signal"]

_I = TypeVar("_I", bound="MessageIterator")


class Signal:
    """Wakes every task waiting in :meth:`wait` when :meth:`notify` is called.

    Unlike :class:`anyio.Event` it can fire many times. Waiters re-check their condition
    after waking: a notification says "something changed", not what.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        # Made by the first waiter: a signal nobody waits on costs no event (thousands of
        # idle sessions), and notify() has nothing to do.
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class MessageIterator:
    """``async for message in ...`` over :meth:`recv`; the loop ends on a normal close
    (:class:`~resilient_ws.ConnectionClosedOK`), any other end raises."""

    async def recv(self) -> Message:
        raise NotImplementedError

    def __aiter__(self: _I) -> _I:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None
