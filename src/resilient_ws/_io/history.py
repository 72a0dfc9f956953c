"""A bounded history of lifecycle events that any number of subscribers iterate."""

from __future__ import annotations

from collections import deque

import anyio

from ..events import Closed, Event, EventsMissed
from .signals import Signal

__all__ = ["EventHistory"]


class EventHistory:
    """The last ``maxlen`` events, with a count of all events ever added.

    Each subscriber keeps its own position: a slow one never blocks the connection, and
    learns how many events it missed (:class:`~resilient_ws.EventsMissed`).
    """

    __slots__ = ("_changed", "_events", "added")

    def __init__(self, changed: Signal, maxlen: int) -> None:
        self._changed = changed
        self._events: deque[Event] = deque(maxlen=maxlen)
        self.added = 0
        """Events ever added; the index of the next one."""

    @property
    def oldest(self) -> int:
        """Index of the oldest event still kept."""
        return self.added - len(self._events)

    def append(self, event: Event) -> None:
        self._events.append(event)
        self.added += 1
        self._changed.notify()

    def __getitem__(self, index: int) -> Event:
        return self._events[index - self.oldest]

    def stream(self) -> EventStream:
        """A subscriber that starts at the oldest event still kept."""
        return EventStream(self, self._changed)


class EventStream:
    """One subscriber's cursor into an :class:`EventHistory`; ends after ``Closed``.

    A plain iterator object rather than an async generator: it may be dropped half-way
    without finalization trouble on trio.
    """

    __slots__ = ("_changed", "_done", "_history", "_index")

    def __init__(self, history: EventHistory, changed: Signal) -> None:
        self._history = history
        self._changed = changed
        self._index = history.oldest
        self._done = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        history = self._history
        while not self._done:
            oldest = history.oldest
            if self._index < oldest:
                missed, self._index = oldest - self._index, oldest
                return EventsMissed(at=anyio.current_time(), count=missed)
            if self._index < history.added:
                event = history[self._index]
                self._index += 1
                self._done = isinstance(event, Closed)
                return event
            await self._changed.wait()
        raise StopAsyncIteration
