from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
import sniffio
import trio
from _servers import free_port
from anyio.abc import TaskStatus
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from resilient_ws._io import watchdog as _watchdog
from resilient_ws._io.lag import LagWindow, LoopLagMonitor
from resilient_ws._io.watchdog import (
    Frame,
    Stall,
    StallWatchdog,
    ThreadStack,
    find_culprit,
    parse_faulthandler,
)

STDLIB = os.path.dirname(threading.__file__)
needs_helper = pytest.mark.skipif(
    sys.platform != "linux",
    reason="a C call that holds the GIL is named for sure only by the helper (Linux, /proc)",
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


# ---- LoopLagMonitor.acquire(): one monitor per event loop, shared --------------------------


def shared_tickers() -> int:
    """What drives shared monitors in this loop: asyncio timers, trio system tasks (no
    shared StallWatchdog runs in these tests: it would count on asyncio)."""
    if sniffio.current_async_library() == "trio":
        root = trio.lowlevel.current_root_task()
        return sum(
            task.name == "resilient_ws.LoopLagMonitor"
            for nursery in root.child_nurseries
            for task in nursery.child_tasks
        )
    loop = asyncio.get_running_loop()
    handles = [*loop._scheduled, *loop._ready]  # type: ignore[attr-defined]
    return sum(
        not handle.cancelled()
        and handle._callback.__qualname__.startswith("_Ticker._tick_on_timers")
        for handle in handles
    )


async def stopped(monitor: LoopLagMonitor) -> None:
    """The monitor stopped, and (a trio system task ends at its next checkpoint) nothing
    of it is left running in the loop."""
    assert not monitor.running
    await wait_for(lambda: shared_tickers() == 0)
    ticks = monitor.ticks
    await anyio.sleep(0.25)
    assert monitor.ticks == ticks


@pytest.mark.anyio
async def test_shared_monitor_is_one_per_loop_and_measures_it(anyio_backend: str) -> None:
    first = LoopLagMonitor.acquire()
    second = LoopLagMonitor.acquire()
    try:
        assert first is second
        assert shared_tickers() == 1
        assert first.interval == 0.1
        await wait_for(lambda: first.ticks >= 2)
        block_loop(0.5)
        blocked_at = first.ticks
        await wait_for(lambda: first.ticks >= blocked_at + 2)
        assert first.max >= 0.35
        assert first.stats.max_recent(first.ticks - blocked_at) >= 0.35
        assert first.percentile(100) >= 0.35
        assert first.current < 0.3
        assert first.stalled_for() < 0.3
        assert first.last_tick is not None
        assert first.last_tick_monotonic is not None
        assert first.last_tick <= anyio.current_time()
        first.release()
        assert first.running  # The other user still has it.
        ticks = first.ticks
        await wait_for(lambda: first.ticks > ticks)
    finally:
        second.release()
    await stopped(first)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        first.release()


@pytest.mark.anyio
async def test_shared_monitor_starts_again_after_its_last_user_left(anyio_backend: str) -> None:
    async with LoopLagMonitor.shared() as first:
        await wait_for(lambda: first.ticks >= 1)
    await stopped(first)
    async with LoopLagMonitor.shared() as again:
        assert again is not first
        assert again.running
        assert shared_tickers() == 1
        await wait_for(lambda: again.ticks >= 1)
    await stopped(again)


async def user(
    monitors: list[LoopLagMonitor], scope: anyio.CancelScope, *, task_status: TaskStatus[None]
) -> None:
    with scope:
        async with LoopLagMonitor.shared() as monitor:
            monitors.append(monitor)
            task_status.started()
            await anyio.sleep_forever()


@pytest.mark.anyio
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
async def test_shared_monitor_users_leave_in_any_order(
    anyio_backend: str, order: tuple[int, ...]
) -> None:
    """Three users, each cancelled on its own: the monitor runs until the last one left,
    whatever the order."""
    monitors: list[LoopLagMonitor] = []
    scopes = [anyio.CancelScope() for _ in range(3)]
    async with anyio.create_task_group() as group:
        for scope in scopes:
            await group.start(user, monitors, scope)
        [monitor] = set(monitors)
        for left, index in enumerate(order, 1):
            scopes[index].cancel()
            await wait_for(lambda left=left: monitor._users == 3 - left)
            if left < 3:
                assert monitor.running
                ticks = monitor.ticks
                await wait_for(lambda ticks=ticks: monitor.ticks > ticks)
    await stopped(monitor)


@pytest.mark.anyio
async def test_shared_monitor_survives_a_user_cancelled_by_a_timeout(anyio_backend: str) -> None:
    async with LoopLagMonitor.shared() as staying:
        with anyio.move_on_after(0.05):
            async with LoopLagMonitor.shared() as leaving:
                assert leaving is staying
                await anyio.sleep_forever()
        assert staying.running
        assert staying._users == 1
    await stopped(staying)


@pytest.mark.anyio
async def test_each_event_loop_has_its_own_shared_monitor(anyio_backend: str) -> None:
    def in_another_loop() -> int:
        async def main() -> int:
            async with LoopLagMonitor.shared() as monitor:
                return id(monitor)

        return anyio.run(main, backend=anyio_backend)

    async with LoopLagMonitor.shared() as ours:
        assert await anyio.to_thread.run_sync(in_another_loop) != id(ours)
        assert ours.running


@pytest.mark.anyio
async def test_a_shared_monitor_is_not_run_as_well(anyio_backend: str) -> None:
    async with LoopLagMonitor.shared() as monitor:
        with pytest.raises(RuntimeError, match="shared"):
            async with monitor:
                pass


def test_acquire_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="running asyncio or trio"):
        LoopLagMonitor.acquire()


# ---- StallWatchdog -----------------------------------------------------------------------


def hold_gil_for(seconds: int) -> None:
    """Sleep in C without releasing the GIL: a ``to_thread`` call that still starves the loop."""
    ctypes.PyDLL(None).sleep(seconds)


@needs_helper
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
async def test_exit_stops_the_watchdog_thread_and_its_helper(anyio_backend: str) -> None:
    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.2) as watchdog:
            watcher, helper = watchdog._watcher, watchdog._helper
            assert watcher is not None
            assert watcher.is_alive()
            if sys.platform == "linux":
                assert helper is not None
                assert helper.poll() is None
            await anyio.sleep(0.05)
        assert not watcher.is_alive()
        assert helper is None or helper.returncode is not None  # killed and reaped
        assert (watchdog._watcher, watchdog._helper) == (None, None)
        block_loop(0.6)  # Nobody watches any more.
        await anyio.sleep(0.1)
    assert stalls(logs) == []


@pytest.mark.anyio
async def test_watchdog_names_busy_python_code_on_the_loop(anyio_backend: str) -> None:
    """The loop thread runs Python code the whole time: its stack is taken under the GIL
    by the watchdog's thread (a timed faulthandler dump read it while it changed)."""

    def spin(seconds: float) -> int:
        end, count = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            count += sum(range(100))
        return count

    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.3) as watchdog:
            await anyio.sleep(0.1)
            spin(1.0)
            await wait_for(lambda: watchdog.last_stall is not None)
    [event] = stalls(logs)
    assert event["culprit"].endswith(" spin")
    assert event["duration"] >= 0.6


@pytest.mark.anyio
async def test_watchdog_without_its_helper_names_the_loop_thread(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no helper runs (not Linux, a frozen app), the thread still names the loop's
    blocking call; only a GIL held in C needs the helper."""
    monkeypatch.setattr(_watchdog, "_start_helper", lambda limit: None)
    with capture_logs() as logs:
        async with StallWatchdog(threshold=0.3) as watchdog:
            assert watchdog._helper is None
            await anyio.sleep(0.1)
            time.sleep(0.8)  # noqa: ASYNC251 - blocks the loop: this line is the culprit
            await wait_for(lambda: watchdog.last_stall is not None)
    [event] = stalls(logs)
    assert event["culprit"].endswith("test_watchdog_without_its_helper_names_the_loop_thread")


@pytest.mark.anyio
async def test_watchdog_leaves_the_applications_faulthandler_timer_alone(
    anyio_backend: str, tmp_path: Path
) -> None:
    with (tmp_path / "app_dump").open("wb") as dump:
        faulthandler.dump_traceback_later(0.3, file=dump)
        try:
            async with StallWatchdog(threshold=5):
                block_loop(0.6)  # The application's timer fires meanwhile.
        finally:
            faulthandler.cancel_dump_traceback_later()
    assert b"block_loop" in (tmp_path / "app_dump").read_bytes()


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


# ---- StallWatchdog in a server that is stopped and resumed ---------------------------------

SERVE_SERVER = Path(__file__).with_name("serve_server.py")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue  # It exited meanwhile.
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def read_lines(stream: IO[str], into: list[str]) -> None:
    """Our reader thread owns the pipe: it reads it to the end and closes it."""
    with stream:
        into.extend(stream)


@pytest.mark.skipif(sys.platform != "linux", reason="needs SIGSTOP and /proc")
def test_a_server_stopped_and_resumed_many_times_never_crashes(anyio_backend: str) -> None:
    """SIGSTOP for longer than the threshold, then SIGCONT, 30 times. faulthandler's timer,
    armed from the loop, expired while the process was stopped and dumped the resuming
    threads' stacks without the GIL: SIGSEGV at 8 of 100 resumes on trio, 0 of 100 on
    asyncio with these settings (0 to 10 % of 30 to 60 on both with 1 s stops: too slow).
    Half of the stops freeze the watchdog's helper process too, as a frozen cgroup would."""
    process = subprocess.Popen(
        [sys.executable, str(SERVE_SERVER), str(free_port()), anyio_backend, "threshold=0.05"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
    try:
        # A stall while it starts (imports) may be logged before "ready".
        assert "ready\n" in itertools.islice(process.stdout, 100)
        reader.start()
        [helper] = children(process.pid)
        for cycle in range(30):
            frozen = [helper, process.pid] if cycle % 2 else [process.pid]
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(0.1)  # Over threshold + interval (0.0625 s).
            for pid in reversed(frozen) if cycle % 4 == 1 else frozen:  # Both orders.
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
            assert process.poll() is None, f"died at resume {cycle + 1}: {process.returncode}"
        time.sleep(0.2)  # The last resume's event.
    finally:
        if process.poll() is None:
            for pid in children(process.pid):  # A stopped helper would outlive the server.
                os.kill(pid, signal.SIGKILL)
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        if reader.is_alive():
            reader.join(10)
        else:
            process.stdout.close()
    resumed = [json.loads(line) for line in lines if "loop_stalled" in line]
    assert len(resumed) >= 15  # The watchdog ran and saw the stops.
    assert all(event["duration"] >= 0.05 for event in resumed)


# ---- StallWatchdog.acquire(): one watchdog per process, shared -----------------------------


async def acquire_elsewhere() -> StallWatchdog | None:
    return StallWatchdog.acquire()


@pytest.mark.anyio
async def test_shared_watchdog_is_one_per_process_until_the_last_release() -> None:
    first = StallWatchdog.acquire(0.3)
    assert first is not None
    try:
        second = StallWatchdog.acquire(2.0)
        assert second is first
        assert second.threshold == 0.3  # the first user's
        # An event loop in another thread cannot share it: it watches one loop.
        assert await anyio.to_thread.run_sync(anyio.run, acquire_elsewhere) is None
        second.release()
        # The first user's release did not stop it: a stall is still reported.
        await anyio.sleep(0.2)
        block_loop(0.6)
        await wait_for(lambda: first.last_stall is not None)
    finally:
        first.release()
    with pytest.raises(RuntimeError, match="release"):
        first.release()
    third = StallWatchdog.acquire(0.5)
    assert third is not None
    try:
        assert third is not first
    finally:
        third.release()
