"""The stall watchdog: names the code that blocked the event loop.

:class:`StallWatchdog` works from evidence that is safe to read: a Python thread of its own
takes every thread's stack under the GIL (:func:`sys._current_frames`) once the loop is
overdue; on Linux, when that thread itself cannot get the GIL (another thread holds it
inside a C call), a helper process that sees the process running but silent sends it a
signal on which :mod:`faulthandler` dumps every stack, while the GIL holder is stuck. When
the loop recovers, the stacks are logged as one ``resilient_ws.loop_stalled`` event. The
parser (:func:`parse_faulthandler`) and the choice of culprit (:func:`find_culprit`) are
pure and need no event loop.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import FrameType
from typing import IO

from .._logging import log
from . import lag
from .lag import _running_loop, _shared_lock, _Ticker

__all__ = [
    "Frame",
    "Stall",
    "StallWatchdog",
    "ThreadStack",
    "find_culprit",
    "parse_faulthandler",
]

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


# This module's and the monitor's frames: the watchdog's own code, never a culprit.
_OWN_FILES = (__file__, lag.__file__)


@cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"]}
    for name in ("anyio", "trio", "sniffio", "outcome"):
        spec = importlib.util.find_spec(name)
        dirs.update((spec.submodule_search_locations or ()) if spec else ())
    return tuple(os.path.join(d, "") for d in dirs)


def _is_library(frame: Frame) -> bool:
    return frame.file.startswith(("<", *_library_dirs())) or frame.file in _OWN_FILES


def _is_waiting(thread: ThreadStack) -> bool:
    first = thread.frames[0] if thread.frames else None
    return (
        first is None
        or first.file in _OWN_FILES
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


_shared_watchdog: StallWatchdog | None = None

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
