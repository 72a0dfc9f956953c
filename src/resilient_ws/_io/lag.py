"""The loop-lag monitor, usable on its own in any asyncio or trio program.

:class:`LoopLagMonitor` measures how late a timer wakes (the loop's lag); one shared monitor
per event loop (:meth:`LoopLagMonitor.acquire`) serves every connection in it. Its
statistics (:class:`LagWindow`) are pure. The stall watchdog, which names the code that
blocked the loop, is :mod:`resilient_ws._io.watchdog`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import sniffio
from anyio.abc import TaskGroup

__all__ = ["LagWindow", "LoopLagMonitor"]

_T = TypeVar("_T", bound="_Ticker")


class LagWindow:
    """Lag samples: the last one, the peak since start, and percentiles over a bounded window.

    Pure: fed samples, never reads a clock. Memory is bounded by ``size``.
    """

    def __init__(self, size: int = 600) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._samples: deque[float] = deque(maxlen=size)
        self.current = 0.0
        self.max = 0.0
        self.count = 0

    def add(self, lag: float) -> None:
        """Record one sample, in seconds (negative values count as 0)."""
        lag = max(0.0, lag)
        self._samples.append(lag)
        self.current, self.max, self.count = lag, max(self.max, lag), self.count + 1

    def max_recent(self, n: int) -> float:
        """The largest of the last ``n`` samples (at most the window), 0 if none."""
        n = min(n, len(self._samples))
        if n <= 0:
            return 0.0
        return max(itertools.islice(reversed(self._samples), n))

    def percentile(self, p: float) -> float:
        """Return the ``p``-th percentile (0-100, linear interpolation) of the window, 0 if empty.

        Raises:
            ValueError: ``p`` is outside [0, 100].
        """
        if not 0 <= p <= 100:
            raise ValueError("p must be within [0, 100]")
        ordered = sorted(self._samples)
        if not ordered:
            return 0.0
        rank = (len(ordered) - 1) * p / 100
        low = min(math.floor(rank), len(ordered) - 1)
        high = min(low + 1, len(ordered) - 1)
        value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
        return min(max(value, ordered[low]), ordered[high])  # Rounding must not leave [low, high].


class _Ticker:
    """Calls ``_tick(lag)`` every ``interval`` seconds of loop time: in a background task
    (``run()``, ``async with``), or, shared, without one (``_tick_without_task``)."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._group: TaskGroup | None = None
        self._users = 0  # of a shared one (acquire)
        self._stop_ticking: Callable[[], object] | None = None

    def _start(self) -> None: ...
    def _stop(self) -> None: ...
    def _tick(self, lag: float) -> None: ...

    def _tick_on_timers(self, loop: asyncio.AbstractEventLoop) -> Callable[[], object]:
        """Tick from a chain of ``call_at`` timers; return what cancels the pending one."""
        due = loop.time() + self.interval
        handle: asyncio.TimerHandle

        def tick() -> None:
            nonlocal due, handle
            now = loop.time()
            self._tick_at(now - due, now)
            due = now + self.interval
            handle = loop.call_at(due, tick)

        self._started_at(due - self.interval)
        handle = loop.call_at(due, tick)
        return lambda: handle.cancel()

    def _tick_in_system_task(self) -> Callable[[], object]:
        """Tick from a trio system task; return what cancels it."""
        import trio

        scope = trio.CancelScope()

        async def ticker() -> None:
            with scope:
                while True:
                    due = trio.current_time() + self.interval
                    await trio.sleep_until(due)
                    now = trio.current_time()
                    self._tick_at(now - due, now)

        self._started_at(trio.current_time())
        trio.lowlevel.spawn_system_task(ticker, name=f"resilient_ws.{type(self).__name__}")
        return scope.cancel

    def _tick_without_task(self) -> Callable[[], object]:
        """Tick in the running loop without a task of the caller's (the loop's timers on
        asyncio, a system task on trio); return what stops it."""
        loop = _running_loop()[1]
        return self._tick_in_system_task() if loop is None else self._tick_on_timers(loop)

    def _started_at(self, now: float) -> None:
        """Ticking without a task starts (``now``: the loop's clock)."""

    def _drop_user(self, forget: Callable[[], object]) -> bool:
        """A user of the shared ticker is done. The last one: ``forget()`` it (under the
        lock, so that the next user starts a new one) and stop ticking. Whether it was.

        Raises:
            RuntimeError: More releases than acquires.
        """
        with _shared_lock:
            if self._users <= 0:
                raise RuntimeError("release() without a matching acquire()")
            self._users -= 1
            if self._users:
                return False
            forget()
        stop, self._stop_ticking = self._stop_ticking, None
        if stop is not None:
            stop()
        return True

    def _tick_at(self, lag: float, now: float) -> None:
        self._tick(lag)

    async def _loop(self) -> None:
        while True:
            expected = anyio.current_time() + self.interval
            await anyio.sleep_until(expected)
            self._tick(max(0.0, anyio.current_time() - expected))

    async def run(self) -> None:
        """Run until cancelled: ``task_group.start_soon(x.run)`` instead of ``async with``."""
        self._start()
        try:
            await self._loop()
        finally:
            self._stop()

    async def __aenter__(self: _T) -> _T:
        if self._group is not None:
            raise RuntimeError(f"this {type(self).__name__} is already running")
        self._start()
        group = anyio.create_task_group()
        try:
            await group.__aenter__()
        except BaseException:
            self._stop()
            raise
        group.start_soon(self._loop)
        self._group = group
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                # Only our own task runs in the group: exit it cleanly and let the body's
                # exception, if any, propagate as it is rather than wrapped in a group.
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)
        finally:
            self._stop()


class LoopLagMonitor(_Ticker):
    """Measures the event loop's lag: how late a timer of ``interval`` seconds wakes.

    Usage: ``async with LoopLagMonitor() as monitor: ... monitor.percentile(99)``, or
    ``task_group.start_soon(monitor.run)``. Code with many users in one event loop (every
    connection of a process) shares one monitor per loop instead: :meth:`acquire` and
    :meth:`release`, or ``async with LoopLagMonitor.shared() as monitor``.

    Args:
        interval: Seconds between ticks.
        window: Samples kept for :meth:`percentile` (600 at 0.1 s: the last minute).
    """

    def __init__(self, interval: float = 0.1, window: int = 600) -> None:
        super().__init__(interval)
        self.stats = LagWindow(window)
        self.last_tick: float | None = None
        self.last_tick_monotonic: float | None = None
        self._running = False  # run() or async with
        self._loop_key: object = None

    @classmethod
    def acquire(cls) -> LoopLagMonitor:
        """Return the running event loop's shared monitor, started by its first user.

        Call it from the loop's thread, inside the loop (asyncio or trio), and pair every call
        with one :meth:`release`: the last release stops the monitor, and the next acquire
        starts a new one. The monitor needs no task of the caller's: on asyncio it is a chain
        of ``loop.call_at`` timers, on trio a system task. It ticks every 0.1 s.

        Raises:
            RuntimeError: No asyncio or trio event loop runs in this thread.
        """
        key = _running_loop()[0]
        with _shared_lock:
            monitor = _shared.get(key)
            if monitor is None:
                monitor = _shared[key] = cls()
                monitor._loop_key = key
                monitor._stop_ticking = monitor._tick_without_task()
            monitor._users += 1
        return monitor

    def release(self) -> None:
        """Give back a monitor from :meth:`acquire`; the last user's release stops it.

        Call it from the loop's thread while the loop runs (a ``finally`` block or
        ``__aexit__`` is the place); it does not block and is safe under cancellation.

        Raises:
            RuntimeError: More releases than acquires.
        """
        self._drop_user(lambda: _shared.pop(self._loop_key))

    @classmethod
    @asynccontextmanager
    async def shared(cls) -> AsyncIterator[LoopLagMonitor]:
        """Use the loop's shared monitor for a block: :meth:`acquire`, then :meth:`release`."""
        monitor = cls.acquire()
        try:
            yield monitor
        finally:
            monitor.release()

    @property
    def running(self) -> bool:
        """Whether the monitor ticks: it runs, or it is shared and has users."""
        return self._stop_ticking is not None or self._running

    @property
    def current(self) -> float:
        """The last lag, in seconds."""
        return self.stats.current

    @property
    def max(self) -> float:
        """The largest lag since start, in seconds (``percentile(100)``: within the window)."""
        return self.stats.max

    @property
    def ticks(self) -> int:
        """Samples taken since start."""
        return self.stats.count

    def percentile(self, p: float) -> float:
        """Return the ``p``-th percentile (0-100) of the lag over the window, in seconds."""
        return self.stats.percentile(p)

    def stalled_for(self) -> float:
        """Seconds the next tick is overdue now; safe to call from any thread.

        The loop cannot see its own stall while it lasts: ask from another thread. Uses
        :func:`time.monotonic`, as :attr:`last_tick` is in the loop's clock (trio's has an offset).
        """
        if self.last_tick_monotonic is None:
            return 0.0
        return max(0.0, time.monotonic() - self.last_tick_monotonic - self.interval)

    def _start(self) -> None:
        if self._users:
            raise RuntimeError("a shared LoopLagMonitor runs on its own: use release()")
        self._running = True
        self.last_tick, self.last_tick_monotonic = anyio.current_time(), time.monotonic()

    def _stop(self) -> None:
        self._running = False

    def _tick(self, lag: float) -> None:
        self._tick_at(lag, anyio.current_time())

    def _tick_at(self, lag: float, now: float) -> None:
        self.stats.add(lag)
        self.last_tick, self.last_tick_monotonic = now, time.monotonic()

    def _started_at(self, now: float) -> None:
        self.last_tick, self.last_tick_monotonic = now, time.monotonic()


_shared_lock = threading.Lock()
_shared: dict[object, LoopLagMonitor] = {}


def _running_loop() -> tuple[object, asyncio.AbstractEventLoop | None]:
    """The running event loop's key (asyncio's loop, trio's token), and asyncio's loop."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token(), None
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        return loop, loop
    raise RuntimeError("acquire() needs a running asyncio or trio event loop")
