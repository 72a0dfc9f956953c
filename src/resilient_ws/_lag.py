"""Loop-lag monitor and stall watchdog, usable on their own in any asyncio or trio program.

:class:`LoopLagMonitor` measures how late a timer wakes (the loop's lag). :class:`StallWatchdog`
names the code that blocked the loop: it keeps :func:`faulthandler.dump_traceback_later` armed
from the loop, so when the loop misses a tick faulthandler's own C thread dumps every thread's
stack, even while another thread holds the GIL inside a C call. When the loop recovers, the dump
is parsed (:func:`parse_faulthandler`) and logged as one ``resilient_ws.loop_stalled`` event.
The statistics (:class:`LagWindow`) and the parser are pure and need no event loop.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import itertools
import logging
import math
import os
import re
import sysconfig
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import IO, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._logging import log

__all__ = [
    "Frame",
    "LagWindow",
    "LoopLagMonitor",
    "Stall",
    "StallWatchdog",
    "ThreadStack",
    "find_culprit",
    "parse_faulthandler",
]

_T = TypeVar("_T", bound="_Ticker")
_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)\b.*:\s*$")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+|\?+) in (.*?)\s*$')
# Innermost frames of a thread that is parked, not working: lock and queue waits, selectors,
# trio's epoll/kqueue, the thread pools of asyncio, anyio and trio.
_WAITING = re.compile(
    r"wait|_wait_for_tstate_lock|join|acquire|get|select|poll|get_events|_worker|_work|run"
    r"|accept|recv|recv_into|readinto|readline"
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One Python frame of a dumped stack; ``line`` is 0 when faulthandler did not know it."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.function}"


@dataclass(frozen=True, slots=True)
class ThreadStack:
    """One thread of a dump.

    Attributes:
        thread_id: The id faulthandler printed, equal to :func:`threading.get_ident`.
        current: Marked "Current thread" by faulthandler (never, in a timed dump).
        loop: The thread that runs the watched event loop.
        frames: Innermost (most recent) frame first.
    """

    thread_id: int
    current: bool
    loop: bool
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class Stall:
    """A recovered stall: how long the loop was late, every thread's stack, the likely culprit."""

    duration: float
    threads: tuple[ThreadStack, ...]
    culprit: Frame | None


def parse_faulthandler(text: str, *, loop_thread: int | None = None) -> tuple[ThreadStack, ...]:
    """Parse faulthandler's text output into threads and frames.

    Args:
        text: What :func:`faulthandler.dump_traceback` or ``dump_traceback_later`` wrote.
        loop_thread: The event loop thread's id, to set :attr:`ThreadStack.loop`.

    Returns:
        The threads in dump order; lines that are neither a thread header nor a frame
        ("Timeout (0:00:01)!", "<no Python frame>", "...") are skipped.
    """
    threads: list[ThreadStack] = []
    header: tuple[int, bool] | None = None
    frames: list[Frame] = []

    def flush() -> None:
        if header is not None:
            ident, current = header
            threads.append(ThreadStack(ident, current, ident == loop_thread, tuple(frames)))

    for line in text.splitlines():
        if match := _THREAD.match(line):
            flush()
            header, frames = (int(match[2], 16), match[1] == "Current thread"), []
        elif line.startswith("Stack (most recent call first)"):
            flush()  # A single-thread dump names no thread: it is the caller's.
            header, frames = (loop_thread or 0, True), []
        elif (match := _FRAME.match(line)) and header is not None:
            number = int(match[2]) if match[2].isdigit() else 0
            frames.append(Frame(match[1], number, match[3]))
    flush()
    return tuple(threads)


@cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"]}
    for name in ("anyio", "trio", "sniffio", "outcome"):
        spec = importlib.util.find_spec(name)
        dirs.update((spec.submodule_search_locations or ()) if spec else ())
    return tuple(os.path.join(d, "") for d in dirs)


def _is_library(frame: Frame) -> bool:
    return frame.file.startswith(("<", *_library_dirs())) or frame.file == __file__


def _is_waiting(thread: ThreadStack) -> bool:
    first = thread.frames[0] if thread.frames else None
    return (
        first is None
        or first.file == __file__
        or (_is_library(first) and _WAITING.fullmatch(first.function) is not None)
    )


def find_culprit(threads: tuple[ThreadStack, ...]) -> Frame | None:
    """Pick the frame most likely to have blocked the loop; the loop thread is looked at first.

    The first thread running application code (its innermost frame is not in the standard
    library, anyio or trio) wins: the loop thread blocked in a call, or a worker thread holding
    the GIL in a C call while the loop thread waits for it. Failing that, the first thread busy
    inside a library names the innermost application frame that called into it.
    """
    ordered = sorted(threads, key=lambda thread: not thread.loop)
    for thread in ordered:
        if thread.frames and not _is_library(thread.frames[0]):
            return thread.frames[0]
    for thread in ordered:
        if not _is_waiting(thread):
            own = [frame for frame in thread.frames if not _is_library(frame)]
            return (own or list(thread.frames))[0]
    return None


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
    """Calls ``_tick(lag)`` every ``interval`` seconds of loop time, in a background task."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._group: TaskGroup | None = None

    def _start(self) -> None: ...
    def _stop(self) -> None: ...
    def _tick(self, lag: float) -> None: ...

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

    Usage: ``async with LoopLagMonitor() as monitor: ... monitor.percentile(99)``.

    Args:
        interval: Seconds between ticks.
        window: Samples kept for :meth:`percentile` (600 at 0.1 s: the last minute).
    """

    def __init__(self, interval: float = 0.1, window: int = 600) -> None:
        super().__init__(interval)
        self.stats = LagWindow(window)
        self.last_tick: float | None = None
        self.last_tick_monotonic: float | None = None

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
        self.last_tick, self.last_tick_monotonic = anyio.current_time(), time.monotonic()

    def _tick(self, lag: float) -> None:
        self.stats.add(lag)
        self.last_tick, self.last_tick_monotonic = anyio.current_time(), time.monotonic()


_active_lock = threading.Lock()
_active: StallWatchdog | None = None


class StallWatchdog(_Ticker):
    """Logs ``resilient_ws.loop_stalled``, with every thread's stack, after the loop was blocked.

    faulthandler has one ``dump_traceback_later`` timer per process, so one watchdog may run at
    a time, and an application that arms that timer itself must pass ``enabled=False`` (we
    cannot detect it). ``faulthandler.enable()`` for crashes is unaffected.

    Args:
        threshold: Seconds a tick may be late before it counts as a stall.
        interval: Seconds between ticks (re-arming); ``threshold / 4`` by default.
        on_stall: Called with each :class:`Stall` once the loop recovers; what it raises
            propagates out of ``async with``.
        enabled: When false, the watchdog does nothing.
    """

    def __init__(
        self,
        threshold: float = 1.0,
        *,
        interval: float | None = None,
        on_stall: Callable[[Stall], object] | None = None,
        enabled: bool = True,
    ) -> None:
        if not threshold > 0:
            raise ValueError("threshold must be positive")
        super().__init__(threshold / 4 if interval is None else interval)
        self.threshold, self.enabled, self.on_stall = threshold, enabled, on_stall
        self.last_stall: Stall | None = None
        self._file: IO[bytes] | None = None
        self._loop_thread = 0

    def _start(self) -> None:
        global _active
        if not self.enabled:
            return
        with _active_lock:
            if _active is not None:
                raise RuntimeError(
                    "another StallWatchdog is running: faulthandler's timer is process-wide"
                )
            _active = self
        self._loop_thread = threading.get_ident()
        # Kept open from enter to exit, across calls: no ``with`` block fits.
        self._file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115
        self._arm(self._file)

    def _stop(self) -> None:
        global _active
        with _active_lock:
            if _active is not self:
                return
            faulthandler.cancel_dump_traceback_later()
            _active = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _arm(self, file: IO[bytes]) -> None:
        # Due one interval after the next tick's due time: fires only if that tick is late by
        # more than the threshold.
        faulthandler.dump_traceback_later(self.threshold + self.interval, file=file)

    def _tick(self, lag: float) -> None:
        if self._file is None:
            return
        faulthandler.cancel_dump_traceback_later()  # Returns once a dump in progress is written.
        dump = b""
        if os.fstat(self._file.fileno()).st_size:
            self._file.seek(0)
            dump = self._file.read()
            self._file.seek(0)
            self._file.truncate()
        self._arm(self._file)
        if dump or lag > self.threshold:
            self._report(lag, dump.decode("utf-8", "replace"))

    def _report(self, duration: float, dump: str) -> None:
        threads = parse_faulthandler(dump, loop_thread=self._loop_thread)
        stall = Stall(duration, threads, find_culprit(threads))
        self.last_stall = stall
        log(
            "loop_stalled",
            logging.WARNING,
            duration=duration,
            threshold=self.threshold,
            culprit=None if stall.culprit is None else str(stall.culprit),
            threads=[
                {"thread_id": t.thread_id, "loop": t.loop, "frames": [str(f) for f in t.frames]}
                for t in threads
            ],
        )
        if self.on_stall is not None:
            self.on_stall(stall)
