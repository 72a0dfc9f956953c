from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from resilient_ws._lag import (
    Frame,
    LagWindow,
    LoopLagMonitor,
    Stall,
    StallWatchdog,
    ThreadStack,
    find_culprit,
    parse_faulthandler,
)

STDLIB = os.path.dirname(threading.__file__)
needs_pydll = pytest.mark.skipif(
    sys.platform == "win32", reason="ctypes.PyDLL(None) (libc's sleep) needs a POSIX libc"
)


TIMEOUT = 10.0


def block_loop(seconds: float) -> None:
    """Block the calling thread, the event loop's when called from a task: the point here."""
    time.sleep(seconds)


async def wait_for(predicate: Any) -> None:
    """Poll the loop until ``predicate()`` holds; a hang fails after ``TIMEOUT``."""
    with anyio.fail_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - what we watch exposes no event
            await anyio.sleep(0.01)


def stalls(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "resilient_ws.loop_stalled"]


# ---- LagWindow: pure statistics ----------------------------------------------------------


def test_window_is_empty_at_first() -> None:
    window = LagWindow(4)
    assert (window.current, window.max, window.count, window.percentile(99)) == (0, 0, 0, 0)


def test_window_percentiles_interpolate() -> None:
    window = LagWindow(10)
    for lag in (0.4, 0.1, 0.3, 0.2, 0.5):
        window.add(lag)
    assert window.percentile(0) == 0.1
    assert window.percentile(50) == 0.3
    assert window.percentile(100) == 0.5
    assert window.percentile(25) == pytest.approx(0.2)
    assert window.percentile(90) == pytest.approx(0.46)
    assert (window.current, window.max, window.count) == (0.5, 0.5, 5)


def test_window_is_bounded_but_max_is_since_start() -> None:
    window = LagWindow(3)
    for lag in (9.0, 1.0, 2.0, 3.0):
        window.add(lag)
    assert window.percentile(100) == 3.0  # 9.0 left the window
    assert window.max == 9.0
    assert window.count == 4
    assert len(window._samples) == 3


def test_window_clamps_negative_lag() -> None:
    window = LagWindow()
    window.add(-0.5)
    assert window.current == 0.0


@pytest.mark.parametrize("p", [-1, 100.5, float("nan")])
def test_window_rejects_bad_percentile(p: float) -> None:
    with pytest.raises(ValueError, match="within"):
        LagWindow().percentile(p)


def test_window_rejects_empty_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LagWindow(0)


@given(
    samples=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200),
    size=st.integers(1, 50),
    ps=st.lists(st.floats(0, 100), min_size=2, max_size=10),
)
def test_window_percentiles_are_bounded_and_monotone(
    samples: list[float], size: int, ps: list[float]
) -> None:
    window = LagWindow(size)
    for lag in samples:
        window.add(lag)
    kept = samples[-size:]
    values = [window.percentile(p) for p in sorted(ps)]
    assert all(min(kept) <= value <= max(kept) for value in values)
    assert values == sorted(values)
    assert window.max == max(samples)


# ---- parse_faulthandler and find_culprit: pure, on captured text ---------------------------

# dump_traceback_later's output while a worker held the GIL in ctypes (Python 3.11, Linux).
GIL_DUMP = f"""Timeout (0:00:00.500000)!
Thread 0x00007fe1b1afe6c0 (most recent call first):
  File "/app/jobs.py", line 4 in hold_gil_for
  File "{STDLIB}/concurrent/futures/thread.py", line 58 in run
  File "{STDLIB}/concurrent/futures/thread.py", line 83 in _worker
  File "{STDLIB}/threading.py", line 982 in run
  File "{STDLIB}/threading.py", line 1002 in _bootstrap

Thread 0x00007fe1b38a0b80 (most recent call first):
  File "{STDLIB}/threading.py", line 327 in wait
  File "{STDLIB}/threading.py", line 969 in start
  File "{STDLIB}/asyncio/threads.py", line 25 in to_thread
  File "/app/main.py", line 7 in main
  File "{STDLIB}/asyncio/base_events.py", line 1922 in _run_once
  File "{STDLIB}/asyncio/runners.py", line 190 in run
  File "/app/main.py", line 8 in <module>
"""
LOOP = 0x00007FE1B38A0B80
WORKER = 0x00007FE1B1AFE6C0


def test_parse_threads_and_frames() -> None:
    threads = parse_faulthandler(GIL_DUMP, loop_thread=LOOP)
    assert [(t.thread_id, t.loop, t.current) for t in threads] == [
        (WORKER, False, False),
        (LOOP, True, False),
    ]
    assert threads[0].frames[0] == Frame("/app/jobs.py", 4, "hold_gil_for")
    assert str(threads[0].frames[0]) == "/app/jobs.py:4 hold_gil_for"
    assert len(threads[0].frames) == 5
    assert threads[1].frames[-1] == Frame("/app/main.py", 8, "<module>")


def test_parse_current_thread_single_stack_and_odd_lines() -> None:
    text = """Fatal Python error: Aborted

Current thread 0x00000001 (most recent call first):
  File "a.py", line ??? in f
  <no Python frame>
Thread 0x2 [worker] (most recent call first):
  File "b.py", line 2 in g
  ...
"""
    threads = parse_faulthandler(text)
    assert threads == (
        ThreadStack(1, True, False, (Frame("a.py", 0, "f"),)),
        ThreadStack(2, False, False, (Frame("b.py", 2, "g"),)),
    )
    single = parse_faulthandler(
        'Stack (most recent call first):\n  File "c.py", line 3 in h\n', loop_thread=7
    )
    assert single == (ThreadStack(7, True, True, (Frame("c.py", 3, "h"),)),)
    assert parse_faulthandler("") == ()


def test_culprit_is_the_gil_holding_worker() -> None:
    threads = parse_faulthandler(GIL_DUMP, loop_thread=LOOP)
    assert find_culprit(threads) == Frame("/app/jobs.py", 4, "hold_gil_for")


def stack(ident: int, *frames: tuple[str, int, str], loop: bool = False) -> ThreadStack:
    return ThreadStack(ident, False, loop, tuple(Frame(*frame) for frame in frames))


def test_culprit_prefers_the_loop_thread_running_application_code() -> None:
    threads = (
        stack(2, ("/app/other.py", 3, "poll_device")),
        stack(1, ("/app/handler.py", 9, "crunch"), ("/app/main.py", 1, "<module>"), loop=True),
    )
    assert find_culprit(threads) == Frame("/app/handler.py", 9, "crunch")


def test_culprit_in_a_library_names_the_application_caller() -> None:
    loop = stack(
        1,
        (f"{STDLIB}/json/decoder.py", 353, "raw_decode"),
        (f"{STDLIB}/json/__init__.py", 346, "loads"),
        ("/app/handler.py", 12, "on_message"),
        loop=True,
    )
    idle = stack(2, (f"{STDLIB}/threading.py", 327, "wait"))
    assert find_culprit((idle, loop)) == Frame("/app/handler.py", 12, "on_message")


def test_no_culprit_when_every_thread_waits() -> None:
    threads = (
        stack(1, (f"{STDLIB}/selectors.py", 468, "select"), ("/app/main.py", 2, "main"), loop=True),
        stack(2, (f"{STDLIB}/threading.py", 327, "wait")),
        stack(3),
    )
    assert find_culprit(threads) is None


# ---- LoopLagMonitor ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_monitor_sees_a_blocked_loop(anyio_backend: str) -> None:
    async with LoopLagMonitor(interval=0.05) as monitor:
        await wait_for(lambda: monitor.ticks >= 2)
        block_loop(0.5)
        blocked_at = monitor.ticks
        await wait_for(lambda: monitor.ticks >= blocked_at + 3)
        assert monitor.max >= 0.4
        assert monitor.percentile(100) >= 0.4
        assert monitor.current < 0.3
        assert monitor.stalled_for() < 0.3
        assert monitor.last_tick is not None
        assert monitor.last_tick <= anyio.current_time()


@pytest.mark.anyio
async def test_monitor_stall_is_visible_from_another_thread(anyio_backend: str) -> None:
    seen: list[float] = []

    def watch(monitor: LoopLagMonitor) -> None:
        time.sleep(0.4)
        seen.append(monitor.stalled_for())

    async with LoopLagMonitor(interval=0.05) as monitor:
        await wait_for(lambda: monitor.ticks >= 1)
        watcher = threading.Thread(target=watch, args=(monitor,))
        watcher.start()
        block_loop(0.8)  # While the watcher looks.
        watcher.join()
    assert seen[0] >= 0.2


@pytest.mark.anyio
async def test_monitor_runs_in_a_task_group(anyio_backend: str) -> None:
    monitor = LoopLagMonitor(interval=0.01, window=5)
    async with anyio.create_task_group() as group:
        group.start_soon(monitor.run)
        await wait_for(lambda: monitor.ticks >= 10)
        group.cancel_scope.cancel()
    assert len(monitor.stats._samples) == 5


@pytest.mark.anyio
async def test_body_exception_is_not_wrapped(anyio_backend: str) -> None:
    with pytest.raises(KeyError):
        async with LoopLagMonitor(interval=0.01):
            raise KeyError("boom")
    with pytest.raises(KeyError):
        async with StallWatchdog(threshold=5):
            raise KeyError("boom")


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="interval"):
        LoopLagMonitor(interval=0)
    with pytest.raises(ValueError, match="threshold"):
        StallWatchdog(threshold=-1)


# ---- StallWatchdog -----------------------------------------------------------------------


def hold_gil_for(seconds: int) -> None:
    """Sleep in C without releasing the GIL: a ``to_thread`` call that still starves the loop."""
    ctypes.PyDLL(None).sleep(seconds)


@needs_pydll
@pytest.mark.anyio
async def test_watchdog_names_a_gil_holding_worker(anyio_backend: str) -> None:
    seen: list[Stall] = []
    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.5, on_stall=seen.append) as watchdog:
            await anyio.to_thread.run_sync(hold_gil_for, 2)
            await wait_for(lambda: watchdog.last_stall is not None)
            await anyio.sleep(0.3)  # Room for a wrong second event.
    [event] = stalls(logs)
    assert event["log_level"] == "warning"
    assert "hold_gil_for" in event["culprit"]
    assert event["duration"] >= 1.0
    assert event["threshold"] == 0.5
    worker = [t for t in event["threads"] if any("hold_gil_for" in f for f in t["frames"])]
    assert len(worker) == 1
    assert not worker[0]["loop"]
    assert sum(t["loop"] for t in event["threads"]) == 1
    assert seen == [watchdog.last_stall]
    assert seen[0].culprit is not None
    assert seen[0].culprit.function == "hold_gil_for"


@pytest.mark.anyio
async def test_watchdog_names_blocking_code_on_the_loop(anyio_backend: str) -> None:
    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.3) as watchdog:
            await anyio.sleep(0.1)
            time.sleep(1.0)  # noqa: ASYNC251 - blocks the loop: this line is the culprit
            await wait_for(lambda: watchdog.last_stall is not None)
    [event] = stalls(logs)
    assert event["culprit"].endswith("test_watchdog_names_blocking_code_on_the_loop")
    assert Path(event["culprit"].split(":")[0]).name == "test_lag.py"
    assert event["duration"] >= 0.6
    [loop] = [t for t in event["threads"] if t["loop"]]
    assert "test_watchdog_names_blocking_code_on_the_loop" in loop["frames"][0]


@pytest.mark.anyio
async def test_watchdog_is_quiet_without_a_stall(anyio_backend: str) -> None:
    with capture_logs() as logs:
        async with StallWatchdog(threshold=1.0, interval=0.01) as watchdog:
            await anyio.sleep(0.3)
    assert stalls(logs) == []
    assert watchdog.last_stall is None


@pytest.mark.anyio
async def test_one_watchdog_at_a_time(anyio_backend: str) -> None:
    async with StallWatchdog(threshold=5) as first:
        with pytest.raises(RuntimeError, match="another StallWatchdog"):
            async with StallWatchdog(threshold=5):
                pass
        with pytest.raises(RuntimeError, match="already running"):
            async with first:
                pass
        async with StallWatchdog(enabled=False):
            pass  # A disabled watchdog touches no faulthandler state.
    async with StallWatchdog(threshold=5):
        pass  # Released on exit.


@pytest.mark.anyio
async def test_exit_cancels_the_faulthandler_timer(anyio_backend: str, tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.2) as watchdog:
            assert watchdog._file is not None
            fd = watchdog._file.fileno()
            await anyio.sleep(0.05)
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # Our dump file is closed ...
        # A timer left armed would now write to whatever holds that descriptor number.
        probe = tmp_path / "probe"
        probe_fd = os.open(probe, os.O_WRONLY | os.O_CREAT)
        try:
            if probe_fd != fd:
                os.dup2(probe_fd, fd)
            block_loop(0.6)
        finally:
            if probe_fd != fd:
                os.close(fd)
            os.close(probe_fd)
    assert probe.read_bytes() == b""
    assert stalls(logs) == []


@pytest.mark.anyio
async def test_disabled_watchdog_does_nothing(anyio_backend: str) -> None:
    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.1, enabled=False) as watchdog:
            await anyio.sleep(0.05)
            block_loop(0.4)
            await anyio.sleep(0.1)
    assert stalls(logs) == []
    assert watchdog.last_stall is None


def test_max_recent_looks_only_at_the_last_samples() -> None:
    window = LagWindow(size=4)
    for lag in (5.0, 0.1, 0.2, 0.3, 0.4):
        window.add(lag)
    assert window.max_recent(2) == 0.4
    assert window.max_recent(0) == 0.0
    assert window.max_recent(100) == 0.4  # the 5.0 left the window
