"""The event loop's shared timers (``_io.timers``): order, cancellation, failures, lifetime."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest
import sniffio

from resilient_ws._io.timers import Timers

pytestmark = pytest.mark.anyio


async def test_callbacks_run_in_deadline_order_and_cancelled_ones_never() -> None:
    timers = Timers.current()
    assert Timers.current() is timers  # one per loop
    ran: list[str] = []
    done = anyio.Event()
    now = timers.now()
    timers.call_at(now + 0.03, lambda: (ran.append("third"), done.set()))
    timers.call_at(now + 0.01, lambda: ran.append("first"))
    cancelled = timers.call_at(now + 0.02, lambda: ran.append("cancelled"))
    timers.call_at(now + 0.02, lambda: ran.append("second"))
    timers.call_at(now - 1.0, lambda: ran.append("past"))  # due at once
    cancelled.cancel()
    with anyio.fail_after(5):
        await done.wait()
    assert ran == ["past", "first", "second", "third"]
    cancelled.cancel()  # after the fact: no effect


async def test_a_timer_set_from_a_callback_runs_after_other_tasks() -> None:
    """A callback that keeps setting timers for now must not starve the loop."""
    timers = Timers.current()
    rounds = 0
    other_ran = anyio.Event()

    def again() -> None:
        nonlocal rounds
        rounds += 1
        if not other_ran.is_set() and rounds < 10_000:
            timers.call_at(timers.now(), again)

    async def other() -> None:
        other_ran.set()

    timers.call_at(timers.now(), again)
    async with anyio.create_task_group() as group:
        group.start_soon(other)
    with anyio.fail_after(5):
        await other_ran.wait()
    assert rounds < 10_000


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers.current()
    done = anyio.Event()

    def broken() -> None:
        raise ValueError("bug in a callback")

    with caplog.at_level(logging.ERROR, logger="resilient_ws"):
        timers.call_at(timers.now(), broken)
        timers.call_at(timers.now() + 0.01, done.set)
        with anyio.fail_after(5):
            await done.wait()
    failures = [r for r in caplog.records if "timer_failed" in r.getMessage()]
    assert len(failures) == 1
    assert "bug in a callback" in failures[0].getMessage()


async def test_spawned_work_runs_and_its_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers.current()
    done = anyio.Event()

    async def work(event: anyio.Event) -> None:
        await anyio.lowlevel.checkpoint()
        event.set()

    async def broken() -> None:
        raise ValueError("bug in spawned work")

    with caplog.at_level(logging.ERROR, logger="resilient_ws"):
        timers.spawn(broken)
        timers.spawn(work, done)
        with anyio.fail_after(5):
            await done.wait()
    assert any("bug in spawned work" in r.getMessage() for r in caplog.records)


async def test_no_task_stays_once_no_timer_is_pending() -> None:
    if sniffio.current_async_library() != "trio":
        import asyncio

        tasks = len(asyncio.all_tasks())
        handle = Timers.current().call_at(Timers.current().now() + 60, lambda: None)
        assert len(asyncio.all_tasks()) == tasks  # the loop's own timers: no task at all
        handle.cancel()
        return
    import trio

    def timer_tasks() -> list[object]:
        found, pending = [], [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            if task is None:
                continue
            if task.name == "resilient_ws.Timers":
                found.append(task)
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return found

    timers = Timers.current()
    handle = timers.call_at(timers.now() + 60, lambda: None)
    await trio.lowlevel.checkpoint()
    assert len(timer_tasks()) == 1
    handle.cancel()
    with anyio.fail_after(5):
        while timer_tasks():
            await trio.lowlevel.checkpoint()
    # And it starts again for the next timer.
    done = anyio.Event()
    timers.call_at(timers.now(), done.set)
    with anyio.fail_after(5):
        await done.wait()
