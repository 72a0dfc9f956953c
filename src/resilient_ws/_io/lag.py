"""Loop-lag monitor and stall watchdog, usable on their own in any asyncio or trio program.

:class:`LoopLagMonitor` measures how late a timer wakes (the loop's lag); one shared monitor
per event loop (:meth:`LoopLagMonitor.acquire`) serves every connection in it.
:class:`StallWatchdog` names the code that blocked the loop, from evidence that is safe to
read: a Python thread of its own takes every thread's stack under the GIL
(:func:`sys._current_frames`) once the loop is overdue; on Linux, when that thread itself
cannot get the GIL (another thread holds it inside a C call), a helper process that sees
the process running but silent sends it a signal on which :mod:`faulthandler` dumps every
stack, while the GIL holder is stuck. When the loop recovers, the stacks are logged as one
``resilient_ws.loop_stalled`` event. The statistics (:class:`LagWindow`) and the parser
(:func:`parse_faulthandler`) are pure and need no event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib.util
import itertools
import logging
import math
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from types import FrameType
from typing import IO, TypeVar

import anyio
import sniffio
from anyio.abc import TaskGroup

from .._logging import log

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
        current: Marked "Current thread" by faulthandler: the thread that ran its signal
            handler (never in a snapshot of :func:`sys._current_frames`).
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
_shared_watchdog: StallWatchdog | None = None


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


_WATCHER = "resilient_ws.StallWatchdog"
_active_lock = threading.Lock()
_active: StallWatchdog | None = None
# faulthandler's handler for the helper's signal, installed once per process, writes here.
_dump_file: IO[bytes] | None = None

# The helper process, on Linux. It reads the watchdog thread's heartbeats on stdin; when they
# stop for ``limit`` seconds while the watched process runs (its state in /proc is neither
# stopped nor traced, and the helper was not frozen with it), every Python thread waits for
# a GIL that a C call holds: it sends the signal once, and faulthandler dumps the stacks.
_HELPER = """
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
pid, limit, signum = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
step, fd, last, fired = limit / 4, sys.stdin.fileno(), time.monotonic(), False
def stopped():
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return True
while os.getppid() == pid:
    before = time.monotonic()
    ready = select.select([fd], [], [], step)[0]
    now = time.monotonic()
    if ready:
        if not os.read(fd, 4096):
            break
        last, fired = now, False
    elif now - before > 2 * step:
        last = now
    elif now - last > limit and not fired:
        if stopped():
            last = now
        else:
            fired = True
            os.kill(pid, signum)
"""


class StallWatchdog(_Ticker):
    """Logs ``resilient_ws.loop_stalled``, with every thread's stack, after the loop was blocked.

    A thread of its own takes every thread's stack (:func:`sys._current_frames`, under the
    GIL) once the loop is ``threshold`` late: that names a loop blocked in Python code or in
    a call that releases the GIL. When a C call holds the GIL, no Python thread can look;
    on Linux a helper process (``python -I -S -c``, started and killed with the watchdog)
    notices that this thread stopped beating while the process runs, and sends it signal
    ``SIGRTMAX - 2``, on which :func:`faulthandler.register`'s handler dumps every stack
    while the GIL holder is stuck. A process that was stopped (SIGSTOP, a debugger, a frozen
    cgroup) gets no signal. Elsewhere, or when the helper cannot start (no
    ``sys.executable``, a frozen application), a stall behind a GIL-holding C call is only
    named if the holder is still in that frame when the loop comes back.

    The signal handler is process-wide and stays installed once set, so one watchdog may run
    at a time. faulthandler's ``dump_traceback_later`` timer and ``faulthandler.enable()``
    are left to the application.

    Args:
        threshold: Seconds a tick may be late before it counts as a stall.
        interval: Seconds between ticks and heartbeats; ``threshold / 4`` by default.
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
        self._loop_thread = 0
        self._lock = threading.Lock()
        self._beat = 0.0  # time.monotonic() of the loop's last tick
        self._snapshot: tuple[ThreadStack, ...] | None = None  # taken by our thread
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._loop_key: object = None

    @classmethod
    def acquire(cls, threshold: float = 1.0) -> StallWatchdog | None:
        """Return the process's shared watchdog, started by its first user with
        ``threshold``; later users get it with the first one's threshold (logged as
        ``stall_watchdog_shared``), since its stack dumps are process-wide.

        Call it inside the event loop, and pair every call that returned a watchdog with
        one :meth:`release`: the last release stops it, the next acquire starts a new one.
        It needs no task of the caller's: it ticks on asyncio's timers or in a trio system
        task, in the loop of its first user.

        Returns:
            ``None`` when the shared watchdog ticks in another event loop (thread): it can
            watch only one.

        Raises:
            RuntimeError: A watchdog that is not shared runs (``async with`` or ``run()``),
                or no asyncio or trio event loop runs in this thread.
        """
        global _shared_watchdog
        key = _running_loop()[0]
        with _shared_lock:
            watchdog = _shared_watchdog
            if watchdog is None:
                watchdog = cls(threshold)
                watchdog._start()
                watchdog._loop_key = key
                watchdog._stop_ticking = watchdog._tick_without_task()
                _shared_watchdog = watchdog
            elif watchdog._loop_key != key:
                return None
            watchdog._users += 1
            shared = watchdog._users > 1
        if shared:
            log("stall_watchdog_shared", threshold=watchdog.threshold)
        return watchdog

    def release(self) -> None:
        """Give back the watchdog from :meth:`acquire`; the last user's release stops it.

        Raises:
            RuntimeError: More releases than acquires.
        """

        def forget() -> None:
            global _shared_watchdog
            _shared_watchdog = None

        if self._drop_user(forget):
            self._stop()

    def _start(self) -> None:
        global _active
        if not self.enabled:
            return
        with _active_lock:
            if _active is not None:
                raise RuntimeError(
                    "another StallWatchdog is running: its dump signal handler is process-wide"
                )
            _active = self
        try:
            self._loop_thread = threading.get_ident()
            self._beat, self._snapshot = time.monotonic(), None
            self._helper = _start_helper(self.threshold + self.interval)
            _read_dump()  # What an earlier watchdog left.
            self._stopping = threading.Event()
            heartbeat = None if self._helper is None else self._helper.stdin
            self._watcher = threading.Thread(
                target=self._watch, args=(heartbeat,), name=_WATCHER, daemon=True
            )
            self._watcher.start()
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> None:
        global _active
        if _active is not self:
            return
        watcher, self._watcher = self._watcher, None
        self._stopping.set()
        if watcher is not None and watcher.ident is not None:
            watcher.join()
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.kill()
            helper.wait()
            if helper.stdin is not None:
                helper.stdin.close()
        with _active_lock:
            _active = None

    def _watch(self, heartbeat: IO[bytes] | None) -> None:
        """Our thread: beat for the helper; take every stack once the loop is late."""
        fd = None if heartbeat is None else heartbeat.fileno()
        if fd is not None:
            os.set_blocking(fd, False)
        me = threading.get_ident()
        while not self._stopping.wait(self.interval):
            if fd is not None:
                with contextlib.suppress(OSError):  # A full pipe, or a dead helper.
                    os.write(fd, b".")
            beat = self._beat
            if time.monotonic() - beat - self.interval > self.threshold:
                with self._lock:
                    if self._beat == beat and self._snapshot is None:
                        self._snapshot = _stacks_now(self._loop_thread, skip=me)

    def _tick(self, lag: float) -> None:
        if self._watcher is None:
            return
        with self._lock:
            self._beat = time.monotonic()
            snapshot, self._snapshot = self._snapshot, None
        # A dump was taken while the stall lasted: it beats a snapshot taken after it.
        if dump := _read_dump():
            snapshot = parse_faulthandler(dump, loop_thread=self._loop_thread)
        elif snapshot is None and lag > self.threshold:
            # Our thread has not looked yet: a C call that held the GIL may have just
            # returned, its thread still in the calling frame.
            snapshot = _stacks_now(self._loop_thread, skip=self._watcher.ident or 0)
        if snapshot is not None:
            self._report(lag, snapshot)

    def _report(self, duration: float, threads: tuple[ThreadStack, ...]) -> None:
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


def _stacks_now(loop_thread: int, *, skip: int) -> tuple[ThreadStack, ...]:
    """Every thread's stack but ``skip``'s, as faulthandler would print it (100 frames)."""
    threads = []
    for ident, top in sys._current_frames().items():
        if ident == skip:
            continue
        frames: list[Frame] = []
        frame: FrameType | None = top
        while frame is not None and len(frames) < 100:
            code = frame.f_code
            frames.append(Frame(code.co_filename, frame.f_lineno or 0, code.co_name))
            frame = frame.f_back
        threads.append(ThreadStack(ident, False, ident == loop_thread, tuple(frames)))
    return tuple(threads)


def _start_helper(limit: float) -> subprocess.Popen[bytes] | None:
    """Start the helper process (Linux), first installing the dump signal's handler."""
    global _dump_file
    if sys.platform != "linux" or not sys.executable or getattr(sys, "frozen", False):
        return None
    signum = signal.SIGRTMAX - 2
    try:
        if _dump_file is None:
            # Kept open for the life of the process, as the handler is: no ``with`` fits.
            file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115
            faulthandler.register(signum, file=file, all_threads=True)
            _dump_file = file
        argv = [sys.executable, "-I", "-S", "-c", _HELPER, str(os.getpid()), str(limit)]
        return subprocess.Popen(
            [*argv, str(int(signum))],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def _read_dump() -> str:
    """Take what faulthandler's signal handler wrote, leaving the file empty."""
    file = _dump_file
    if file is None or not os.fstat(file.fileno()).st_size:
        return ""
    file.seek(0)
    dump = file.read()
    file.seek(0)
    file.truncate()
    return dump.decode("utf-8", "replace")
