"""One timer heap per event loop: every link's probes and acks, without a task per link.

Part of the I/O layer. A link's keepalive and its replay acks need to wake at a deadline,
then rarely send a frame. A task per link for that costs ~3 KiB and a task switch per wake
on ten thousand idle links; a timer costs a heap entry. :meth:`Timers.current` gives the
running loop's timers:

- asyncio: the loop's own (``loop.call_at``), which it already keeps in a heap;
- trio: one system task per run, sleeping until the earliest deadline of its heap, while
  any timer is pending.

Callbacks run outside the caller's task: they must not await, and on asyncio they run in no
task at all, where anyio's functions cannot tell the event loop (sniffio): read the clock
with :attr:`Timers.now`. Work that must await (a write on trio, a close) is handed to
:meth:`Timers.spawn`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sniffio

from .._logging import log_error

__all__ = ["Timer", "Timers"]


class Timer(Protocol):
    """A pending callback."""

    def cancel(self) -> None:
        """Do not call it (no effect once it ran)."""


class Timers:
    """The running event loop's timers; get them with :meth:`current`."""

    now: Callable[[], float]
    """The loop's clock (``anyio.current_time()``), callable from a timer callback."""

    @staticmethod
    def current(trio: bool | None = None) -> Timers:
        """The running loop's timers, made at first use. Call it inside the loop.

        Args:
            trio: Whether the loop is trio's; ``None``: ask sniffio, which cannot tell in
                an asyncio protocol callback (no task runs there).
        """
        if trio is None:
            trio = sniffio.current_async_library() == "trio"
        if trio:
            return _TrioTimers.of_run()
        loop = asyncio.get_running_loop()
        timers = _asyncio_timers.get(loop)
        if timers is None:
            timers = _asyncio_timers[loop] = _AsyncioTimers(loop)
        return timers

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback()`` at loop time ``when`` (at once if past)."""
        raise NotImplementedError

    def spawn(self, function: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``function(*args)`` in a task of its own, owned by the loop (it ends with
        the loop). An exception is logged (``timer_failed``), not raised."""
        raise NotImplementedError


async def _logged(function: Callable[..., Awaitable[object]], *args: Any) -> None:
    try:
        await function(*args)
    except Exception as exc:
        _failed(exc)


def _failed(exc: Exception) -> None:
    """A bug: one error event, its traceback a field."""
    log_error("timer_failed", exc)


class _AsyncioTimers(Timers):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = loop.time
        # asyncio keeps only weak references to running tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return self._loop.call_at(when, _guarded, callback)

    def spawn(self, function: Callable[..., Awaitable[object]], *args: Any) -> None:
        task = self._loop.create_task(_logged(function, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _guarded(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception as exc:
        _failed(exc)


_asyncio_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncioTimers] = (
    weakref.WeakKeyDictionary()
)


class _Entry:
    """A callback in the trio heap."""

    __slots__ = ("callback", "cancelled", "timers")

    def __init__(self, callback: Callable[[], object], timers: _TrioTimers) -> None:
        self.callback = callback
        self.cancelled = False  # or it ran
        self.timers = timers

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.timers._forget()


class _TrioTimers(Timers):
    _run_var: Any = None

    def __init__(self) -> None:
        import trio

        self.now = trio.current_time
        self._heap: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()
        self._sleep: Any = None  # the system task's sleep: its deadline is the earliest
        self._cancelled = 0  # entries cancelled but still in the heap
        self._running = False  # the system task

    @classmethod
    def of_run(cls) -> _TrioTimers:
        """The running trio run's timers."""
        import trio

        if cls._run_var is None:
            cls._run_var = trio.lowlevel.RunVar("resilient_ws.Timers")
        try:
            timers: _TrioTimers = cls._run_var.get()
        except LookupError:
            timers = cls()
            cls._run_var.set(timers)
        return timers

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        import trio

        entry = _Entry(callback, self)
        heapq.heappush(self._heap, (when, next(self._order), entry))
        if not self._running:
            # A system task while timers are pending: none outlives the links that set them.
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="resilient_ws.Timers")
        elif self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when
        return entry

    def _forget(self) -> None:
        """An entry was cancelled: past half the heap, cancelled entries are dropped (a
        busy link re-arms often; each would otherwise wait for its deadline)."""
        self._cancelled += 1
        if self._cancelled >= len(self._heap) and self._sleep is not None:
            self._sleep.cancel()  # none pending: the system task ends now
        elif self._cancelled > 64 and 2 * self._cancelled > len(self._heap):
            self._heap[:] = [item for item in self._heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def spawn(self, function: Callable[..., Awaitable[object]], *args: Any) -> None:
        import trio

        trio.lowlevel.spawn_system_task(_logged, function, *args, name="resilient_ws.Timers")

    async def _run(self) -> None:
        import trio

        heap = self._heap
        try:
            while len(heap) > self._cancelled:  # until no timer is pending
                with trio.CancelScope(deadline=heap[0][0]) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                self._fire(trio.current_time())
        finally:
            heap.clear()
            self._cancelled = 0
            self._running = False

    def _fire(self, now: float) -> None:
        heap = self._heap
        # Only what was due on waking: a callback that sets a timer for now runs after
        # the other tasks had their turn.
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        for entry in due:
            if entry.cancelled:
                self._cancelled -= 1
            else:
                entry.cancelled = True  # ran: a later cancel() is a no-op
                _guarded(entry.callback)
