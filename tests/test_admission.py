"""Admission control of opening handshakes: the pure core, then serve() on both backends."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from _helpers import raw_handshake
from structlog.testing import capture_logs

import resilient_ws
from resilient_ws._io.admission import MAX_RETRY_AFTER, Admission

TIMEOUT = 20


# ---- the pure core -------------------------------------------------------------------------


CROWD = "198.51.100.1"  # one address: a crowd behind a NAT, or one that floods


def arrive(admission: Admission, count: int, now: float, source: str = CROWD) -> list[int | None]:
    answers = []
    for _ in range(count):
        admission.arrived(source)
        answers.append(admission.admit(now, source))
    return answers


def test_admits_up_to_the_bound_then_sheds() -> None:
    admission = Admission(3)
    answers = arrive(admission, 5, now=0.0)
    assert answers[:3] == [None, None, None]
    assert all(isinstance(answer, int) and answer >= 1 for answer in answers[3:])


def test_bound_frees_as_handshakes_end() -> None:
    admission = Admission(1)
    assert arrive(admission, 1, now=0.0) == [None]
    assert arrive(admission, 1, now=0.0)[0] is not None
    admission.left(0.0, CROWD, completed=False)  # the shed one
    admission.left(0.0, CROWD, completed=True)  # the admitted one
    assert admission.in_progress == 0
    assert arrive(admission, 1, now=0.1) == [None]


def test_retry_after_spreads_a_crowd_over_a_range_that_grows_with_it() -> None:
    def spread(crowd: int) -> set[int]:
        admission = Admission(100)
        return {answer for answer in arrive(admission, 100 + crowd, now=5.0) if answer}

    small, large = spread(150), spread(1_000)
    assert min(small) == min(large) == 1
    assert max(small) < max(large)
    # At the assumed rate (the bound per second) each second gets its share.
    assert len(large) >= 9


def test_retry_after_is_capped() -> None:
    admission = Admission(1)
    answers = arrive(admission, 1 + 10 * MAX_RETRY_AFTER, now=0.0)
    assert max(answer or 0 for answer in answers) == MAX_RETRY_AFTER


def test_schedule_follows_the_measured_rate_when_higher() -> None:
    admission = Admission(10)
    for step in range(100):  # 100 completions within a second
        admission.arrived(CROWD)
        assert admission.admit(step / 100, CROWD) is None
        admission.left(step / 100, CROWD, completed=True)
    answers = arrive(admission, 10 + 300, now=1.0)
    # 300 shed at 100/s measured (not 10/s assumed): about 3 seconds of slots.
    assert max(answer or 0 for answer in answers) <= 5


def test_report_aggregates_and_resets() -> None:
    admission = Admission(1)
    assert admission.report() is None
    answers = arrive(admission, 6, now=0.0)
    report = admission.report()
    assert report is not None
    assert report.count == 5
    assert report.retry_after_min == min(a for a in answers if a)
    assert report.retry_after_max == max(a for a in answers if a)
    assert admission.report() is None


def test_past_the_bound_light_sources_still_get_in() -> None:
    """One address holding the bound is shed; others, with a tenth of it in progress at
    most, are admitted up to twice the bound (issue 11: a flood from one address must not
    shed everyone)."""
    admission = Admission(100)
    assert arrive(admission, 100, now=0.0) == [None] * 100
    assert all(arrive(admission, 50, now=0.0))  # the flooder: shed
    assert arrive(admission, 10, now=0.0, source="192.0.2.1") == [None] * 10
    assert arrive(admission, 1, now=0.0, source="192.0.2.1")[0] is not None  # past a tenth
    for index in range(40):  # many light sources: up to twice the bound in all
        arrive(admission, 1, now=0.0, source=f"203.0.113.{index}")
    assert admission.in_progress == 201
    assert arrive(admission, 1, now=0.0, source="192.0.2.99")[0] is not None


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_handshakes"):
        Admission(0)


# ---- serve() -------------------------------------------------------------------------------


async def sink(session: Any) -> None:
    async for _ in session:
        pass


class Gate:
    """An application ``process_request`` that holds every handshake until opened: the
    admitted handshakes stay in progress for as long as a test needs."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.waiting = 0
        self.arrived = anyio.Event()

    async def __call__(self, connection: Any, request: Any) -> None:
        self.waiting += 1
        self.arrived.set()
        await self.opened.wait()


def serve(gate: Gate, max_handshakes: int | None) -> resilient_ws.Server:
    return resilient_ws.serve(
        sink,
        "127.0.0.1",
        0,
        stall_threshold=None,
        max_handshakes=max_handshakes,
        process_request=gate,
    )


@pytest.mark.anyio
async def test_burst_beyond_the_bound_gets_503_then_the_bound_frees() -> None:
    gate = Gate()
    with capture_logs() as logs, anyio.fail_after(TIMEOUT):
        async with serve(gate, max_handshakes=1) as server:
            held: list[tuple[int, dict[str, str], anyio.abc.SocketStream]] = []

            async def first() -> None:
                held.append(await raw_handshake(server.port))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(first)
                await gate.arrived.wait()  # the first handshake holds the only slot
                burst = [await raw_handshake(server.port) for _ in range(5)]
                for status, headers, stream in burst:
                    assert status == 503
                    assert int(headers["retry-after"]) >= 1
                    await stream.aclose()
                assert gate.waiting == 1  # the shed never reached the application
                gate.opened.set()
            status, _, stream = held[0]
            assert status == 101
            await stream.aclose()
            # The slot is free again.
            status, _, stream = await raw_handshake(server.port)
            assert status == 101
            await stream.aclose()
            for _ in range(TIMEOUT * 20):  # the event comes a second after the first shed
                if [e for e in logs if e["event"] == "resilient_ws.handshakes_shed"]:
                    break
                await anyio.sleep(0.05)
    shed = [e for e in logs if e["event"] == "resilient_ws.handshakes_shed"]
    assert len(shed) == 1  # one event for the burst, not one per connection
    assert shed[0]["count"] == 5
    assert shed[0]["max_handshakes"] == 1
    assert not [e for e in logs if e["event"] == "resilient_ws.session_refused"]


@pytest.mark.anyio
async def test_resilient_client_connects_during_and_after_a_burst() -> None:
    gate = Gate()
    with anyio.fail_after(TIMEOUT):
        async with serve(gate, max_handshakes=1) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with anyio.create_task_group() as tasks:
                held: list[anyio.abc.SocketStream] = []

                async def hold() -> None:
                    held.append((await raw_handshake(server.port))[2])

                tasks.start_soon(hold)
                await gate.arrived.wait()
                connected = anyio.Event()

                async def client() -> None:
                    async with resilient_ws.connect(url) as ws:
                        connected.set()
                        await ws.send("hello")

                tasks.start_soon(client)
                # The client is shed (503) and retries after the Retry-After; let the
                # hostile burst continue meanwhile, then free the slot.
                for _ in range(3):
                    status, _, stream = await raw_handshake(server.port)
                    assert status == 503
                    await stream.aclose()
                gate.opened.set()
                await connected.wait()
            for stream in held:
                await stream.aclose()
            # And after the burst, a client connects at once.
            async with resilient_ws.connect(url) as ws:
                await ws.send("again")


@pytest.mark.anyio
async def test_one_address_at_the_bound_does_not_shed_another() -> None:
    gate = Gate()
    with anyio.fail_after(TIMEOUT):
        async with serve(gate, max_handshakes=1) as server:
            async with anyio.create_task_group() as tasks:
                answers: list[tuple[str, int, anyio.abc.SocketStream]] = []

                async def handshake(source: str) -> None:
                    status, _, stream = await raw_handshake(server.port, source=source)
                    answers.append((source, status, stream))

                tasks.start_soon(handshake, "127.0.0.1")
                await gate.arrived.wait()  # 127.0.0.1 holds the bound
                status, _, stream = await raw_handshake(server.port)  # 127.0.0.1 again
                await stream.aclose()
                assert status == 503
                tasks.start_soon(handshake, "127.0.0.2")  # another address: admitted
                while gate.waiting < 2:  # noqa: ASYNC110 - a counter
                    await anyio.sleep(0.01)
                gate.opened.set()
            assert sorted((source, status) for source, status, _ in answers) == [
                ("127.0.0.1", 101),
                ("127.0.0.2", 101),
            ]
            for _, _, stream in answers:
                await stream.aclose()


@pytest.mark.anyio
async def test_no_bound_when_disabled() -> None:
    gate = Gate()
    gate.opened.set()
    with anyio.fail_after(TIMEOUT):
        async with serve(gate, max_handshakes=None) as server:
            for _ in range(3):
                status, _, stream = await raw_handshake(server.port)
                assert status == 101
                await stream.aclose()


class HookError(Exception):
    pass


@pytest.mark.anyio
@pytest.mark.parametrize("hook", ["process_request", "process_response"])
async def test_the_bound_frees_when_an_application_hook_raises(hook: str) -> None:
    """websockets answers 500 when a hook raises; the slot the handshake held is freed
    (else a few failing handshakes would shed everyone after them)."""
    calls = 0

    def failing(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise HookError("a bug in the application's hook")

    with anyio.fail_after(TIMEOUT):
        options: dict[str, Any] = {hook: failing}
        async with resilient_ws.serve(
            sink, "127.0.0.1", 0, stall_threshold=None, max_handshakes=1, **options
        ) as server:
            for expected in (500, 500, 500, 101):
                status, _, stream = await raw_handshake(server.port)
                await stream.aclose()
                assert status == expected


@pytest.mark.anyio
async def test_the_bound_frees_when_a_handshake_times_out_in_a_hook() -> None:
    """A handshake cancelled inside the application's process_request (websockets'
    open_timeout, tuned down to 0.5 s here) frees its slot: the next one gets 101."""
    gate = Gate()
    with anyio.fail_after(TIMEOUT):
        async with resilient_ws.serve(
            sink, "127.0.0.1", 0, stall_threshold=None, max_handshakes=1,
            process_request=gate, open_timeout=0.5,
        ) as server:  # fmt: skip
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            await stream.send(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await gate.arrived.wait()
            with pytest.raises(anyio.EndOfStream):  # noqa: PT012 - read until closed
                while True:  # bounded by fail_after; websockets closes after open_timeout
                    if not await stream.receive():
                        break
            await stream.aclose()
            gate.opened.set()
            status, _, stream = await raw_handshake(server.port)
            await stream.aclose()
            assert status == 101
