"""The replay protocol under chaos: links cut at random while both sides stream, a server
that restarts and forgets its sessions, and a session whose away buffer overflows.

Every process a test kills it started itself (``proxy_process.py``, ``replay_server.py``)
and kills by pid. The chaos runs a short form in every run and a long one (>= 100
disconnects, plus iptables drops where the machine allows) with ``RESILIENT_WS_LONG=1``.
The figures each chaos run reached (kills, disconnects, messages, the random seed) are
attached to its report's ``user_properties``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from _firewall import Firewall, no_iptables
from _helpers import FAST, TIMEOUT, next_event
from _servers import free_port

import resilient_ws
from resilient_ws import (
    Backoff,
    Connected,
    Disconnected,
    Event,
    Gap,
    Replay,
    Resumed,
    SendQueue,
    ServerSession,
    SessionLost,
    State,
)
from resilient_ws.testing import FaultProxy

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL and SIGSTOP"),
]

PROXY = Path(__file__).with_name("proxy_process.py")
REPLAY_SERVER = Path(__file__).with_name("replay_server.py")

# Messages per second each side streams during the chaos.
RATE = 300
# Longest a chaos run streams, in seconds: bounds the streaming loops.
MAX_STREAMING = 600
# Reconnect fast, and keep the delays short even though no link lives long enough to count
# as stable between kills.
CHAOS_BACKOFF = Backoff(first_delay=0.01, max_delay=0.2, stable_after=0.5)
# Sized for the longest outage the chaos causes (an iptables drop of a few seconds at RATE),
# so that a Gap in these runs is a bug, not a slow machine; overflow has its own test below.
BUFFER = 20_000


# ---- processes the tests start and kill --------------------------------------------------


class Child:
    """A helper process started by the test: it prints ``ready``, then JSON lines.

    ``start`` and ``kill`` block; call them through ``anyio.to_thread.run_sync`` so that
    the servers and clients in the test's event loop keep running meanwhile.
    """

    def __init__(self, script: Path, *args: str) -> None:
        self.argv = [sys.executable, str(script), *args]
        self.lines: list[dict[str, Any]] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()

    def start(self) -> None:
        process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        self.process = process
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"{self.argv[1]} did not start: {line!r}")
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with process.stdout:  # closed here, at EOF: the process is gone
            for line in process.stdout:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                with self._changed:
                    self.lines.append(entry)
                    self._changed.notify_all()

    def kill(self) -> None:
        """SIGKILL the process (this one, by its pid) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        elif process.stdout is not None:
            process.stdout.close()

    def stop(self) -> None:
        """Freeze it (SIGSTOP): it keeps its sockets but reads nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def wait_for_lines(self, predicate: Callable[[dict[str, Any]], bool], count: int) -> list[Any]:
        """Wait until ``count`` lines match ``predicate``; return them."""
        with self._changed:
            matched = self._changed.wait_for(
                lambda: len(found := [e for e in self.lines if predicate(e)]) >= count and found,
                TIMEOUT,
            )
        if not matched:
            raise AssertionError(f"fewer than {count} such lines within {TIMEOUT} s: {self.lines}")
        return matched


@contextmanager
def child(script: Path, *args: str) -> Iterator[Child]:
    process = Child(script, *args)
    try:
        yield process
    finally:
        process.kill()


async def wait_until(
    condition: Callable[[], object], report: Callable[[], str] | None = None
) -> None:
    """Wait (at most ``TIMEOUT``) until ``condition()``; on timeout fail with ``report()``."""
    with anyio.move_on_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110 - no event marks these conditions
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"not within {TIMEOUT} s" + (f": {report()}" if report else ""))


async def collect(ws: resilient_ws.Connection, into: list[Event]) -> None:
    async for event in ws.events():
        into.append(event)


def serve(handler: Any, **kwargs: Any) -> resilient_ws.Server:
    # One StallWatchdog per process: the watchdog has its own tests (test_lag.py).
    return resilient_ws.serve(handler, "127.0.0.1", 0, stall_threshold=None, **kwargs)


# ---- 1. chaos: a proxy process killed at random while both sides stream -----------------


@dataclass
class Stream:
    """One side's numbered messages: what it sent at a steady rate, what it received."""

    sent: int = 0
    received: list[int] = field(default_factory=list)
    rate: int = RATE

    async def send_numbers(
        self, send: Callable[[str], Awaitable[None]], stop: threading.Event
    ) -> None:
        """Send 1, 2, 3... at ``rate`` until ``stop`` is set (or ``MAX_STREAMING`` passed)."""
        start = anyio.current_time()
        while not stop.is_set() and self.sent < self.rate * MAX_STREAMING:
            due = int((anyio.current_time() - start) * self.rate)
            while self.sent < due and not stop.is_set():
                await send(str(self.sent + 1))
                self.sent += 1
            await anyio.sleep(0.01)

    def receive(self, message: str | bytes) -> None:
        self.received.append(int(message))


class ChaosHandler:
    """Streams the server's numbers and records the client's, for the session's whole life.

    It never ends the session itself: it returns when the client closes normally. It runs
    in the server's thread; its events are thread-safe for the test's.
    """

    def __init__(self, stop: threading.Event, rate: int = RATE) -> None:
        self.stream = Stream(rate=rate)
        self.stop = stop
        self.streamed = threading.Event()
        self.done = threading.Event()
        self.sessions: list[ServerSession] = []

    async def __call__(self, session: ServerSession) -> None:
        self.sessions.append(session)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._stream, session)
                async for message in session:
                    self.stream.receive(message)
                tasks.cancel_scope.cancel()
        finally:
            self.done.set()

    async def _stream(self, session: ServerSession) -> None:
        await self.stream.send_numbers(session.send, self.stop)
        self.streamed.set()


class ChaosServer:
    """``serve(ChaosHandler)`` in a thread of its own, on an event loop of the test's backend.

    Leaving ``async with serve()`` is shielded from cancellation: a server that cannot
    close would hang the test's event loop for good. In a thread of its own it fails the
    test instead (and the thread is left behind).
    """

    def __init__(self, backend: str, handler: ChaosHandler, **options: Any) -> None:
        self.handler = handler
        self.port = 0
        self.error: BaseException | None = None
        self._backend = backend
        self._options = options
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ChaosServer", daemon=True)

    def _run(self) -> None:
        try:
            anyio.run(self._serve, backend=self._backend)
        except BaseException as exc:  # reported by start() or stop(), in the test's thread
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with serve(self.handler, **self._options) as server:
            self.port = server.port
            self._ready.set()
            with anyio.move_on_after(MAX_STREAMING):
                while not self._stopping.is_set():  # noqa: ASYNC110 - set from another thread
                    await anyio.sleep(0.01)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self.error is not None:
            raise RuntimeError("the chaos server did not start") from self.error

    def stop(self) -> None:
        """Close the server, waiting at most ``TIMEOUT`` seconds (see :meth:`check`)."""
        self._stopping.set()
        self._thread.join(TIMEOUT)

    def check(self) -> None:
        """Fail if the server did not close, or failed."""
        assert not self._thread.is_alive(), f"serve() did not close within {TIMEOUT} s"
        if self.error is not None:
            raise self.error


class Chaos:
    """Kills and restarts the proxy process at random; counts the kills that cut a live link."""

    def __init__(self, ws: resilient_ws.Connection, proxy: Child, rng: random.Random) -> None:
        self.ws = ws
        self.proxy = proxy
        self.rng = rng
        self.kills = 0
        self.live_kills = 0
        self.drops = 0
        self._links = 0  # the client's link count at the last kill

    def link_is_new(self) -> bool:
        """A link opened since the last cut is up: it runs through the current proxy."""
        return self.ws.state is State.OPEN and self.ws.stats.links > self._links

    async def kill(self) -> None:
        # Mostly on a link carrying traffic; sometimes wherever the reconnect is (refused,
        # in the handshake, resending).
        if self.rng.random() < 0.8:
            await wait_until(self.link_is_new)
            await anyio.sleep(self.rng.uniform(0.05, 0.4))
        else:
            await anyio.sleep(self.rng.uniform(0.0, 0.1))
        live = self.link_is_new()
        self._links = self.ws.stats.links
        await anyio.to_thread.run_sync(self.proxy.kill)
        self.kills += 1
        self.live_kills += live
        if self.rng.random() < 0.3:
            await anyio.sleep(self.rng.uniform(0.0, 0.3))  # down a while: attempts refused
        await anyio.to_thread.run_sync(self.proxy.start)

    async def drop(self, firewall: Firewall, port: int) -> None:
        """Drop every packet of the proxy's port for a while: nothing is closed."""
        await wait_until(self.link_is_new)
        await anyio.sleep(self.rng.uniform(0.05, 0.4))
        # The link may survive a short drop (TCP retransmits), so the next kill does not
        # wait for a new one.
        with firewall.drop(port):
            self.drops += 1
            await anyio.sleep(self.rng.uniform(0.3, 3.0))


def ended_report(ws: resilient_ws.Connection, handler: ChaosHandler, events: list[Event]) -> str:
    """What each side saw, for a session whose handler did not end after the close."""
    sessions = [(s.connected, s.links, s.resent, s.ended) for s in handler.sessions]
    return f"client {ws.state} {ws.stats}, sessions {sessions}, last events {events[-8:]}"


def check_exactly_once(
    client: Stream, handler: ChaosHandler, events: list[Event], ws: resilient_ws.Connection
) -> None:
    assert handler.stream.received == list(range(1, client.sent + 1))
    assert client.received == list(range(1, handler.stream.sent + 1))
    assert not [e for e in events if isinstance(e, (Gap, SessionLost))]
    assert ws.stats.gaps == 0
    assert len(handler.sessions) == 1
    assert handler.sessions[0].id == ws.stats.session_id
    assert not handler.sessions[0].gaps


@asynccontextmanager
async def streaming(
    backend: str,
    handler: ChaosHandler,
    client: Stream,
    events: list[Event],
    *,
    server_options: dict[str, Any],
    connect_options: dict[str, Any],
) -> AsyncIterator[tuple[resilient_ws.Connection, Child, int]]:
    """A ``serve(handler)`` server, a proxy process in front of it and a client through
    the proxy, both sides streaming numbers. Yields the connection, the proxy and its port
    for the chaos; on leaving, stops both streams and waits (bounded) until each side has
    everything the other sent, then closes."""
    client_streamed = anyio.Event()

    async def stream_from_client(ws: resilient_ws.Connection) -> None:
        await client.send_numbers(ws.send, handler.stop)
        client_streamed.set()

    async def receive(ws: resilient_ws.Connection) -> None:
        async for message in ws:
            client.receive(message)

    server = ChaosServer(backend, handler, **server_options)
    await anyio.to_thread.run_sync(server.start)
    try:
        port = free_port()
        with child(PROXY, str(port), str(server.port)) as proxy:
            await anyio.to_thread.run_sync(proxy.start)
            url = f"ws://127.0.0.1:{port}/"
            async with (
                resilient_ws.connect(url, **connect_options) as ws,
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(collect, ws, events)
                tasks.start_soon(receive, ws)
                tasks.start_soon(stream_from_client, ws)
                yield ws, proxy, port
                handler.stop.set()
                with anyio.fail_after(TIMEOUT):
                    await client_streamed.wait()
                await wait_until(handler.streamed.is_set)
                # Both sides got everything the other sent (the last link may still be
                # coming up and resending).
                await wait_until(
                    lambda: (
                        len(client.received) >= handler.stream.sent
                        and len(handler.stream.received) >= client.sent
                    )
                )
                # Closed during a reconnect wait, a client cannot tell the server, whose
                # session then waits for its TTL (60 s): close on a link.
                await wait_until(lambda: ws.state is State.OPEN)
                await ws.close()
            await wait_until(handler.done.is_set, lambda: ended_report(ws, handler, events))
    finally:
        await anyio.to_thread.run_sync(server.stop)
    server.check()


async def run_chaos(
    request: pytest.FixtureRequest,
    backend: str,
    *,
    disconnects: int,
    firewall: Firewall | None = None,
) -> None:
    seed = random.randrange(2**32)
    request.node.user_properties.append(("seed", seed))
    rng = random.Random(seed)
    handler = ChaosHandler(threading.Event())
    client = Stream()
    events: list[Event] = []
    async with streaming(
        backend,
        handler,
        client,
        events,
        server_options={"replay": Replay(max_messages=BUFFER)},
        connect_options={
            "backoff": CHAOS_BACKOFF,
            "replay": Replay(max_messages=BUFFER),
            "send_queue": SendQueue(max_messages=BUFFER),
            "open_timeout": 2.0,  # an attempt into dropped packets fails fast
        },
    ) as (ws, proxy, port):
        chaos = Chaos(ws, proxy, rng)
        # Bounded: at most twice the kills wanted, each bounded in time.
        for _ in range(2 * disconnects):
            if chaos.live_kills >= disconnects:
                break
            if firewall is not None and rng.random() < 0.25:
                await chaos.drop(firewall, port)
            else:
                await chaos.kill()

    disconnected = [e for e in events if isinstance(e, Disconnected) and e.uptime is not None]
    resumed = [e for e in events if isinstance(e, Resumed)]
    for name, value in [
        ("kills", chaos.kills),
        ("live_kills", chaos.live_kills),
        ("drops", chaos.drops),
        ("disconnects", len(disconnected)),
        ("resumes", len(resumed)),
        ("client_sent", client.sent),
        ("server_sent", handler.stream.sent),
        # What the kills cost: messages each side had to send again on a resumed link.
        ("client_resent", ws.stats.resent),
        ("server_resent", handler.sessions[0].resent if handler.sessions else None),
    ]:
        request.node.user_properties.append((name, value))

    # Exactly once and in order, both ways; the session never broke.
    check_exactly_once(client, handler, events, ws)
    # Every kill that hit a live link cost the client that link, and it resumed.
    assert chaos.live_kills >= disconnects
    assert len(disconnected) >= chaos.live_kills
    assert len(resumed) >= chaos.live_kills
    assert ws.stats.reconnects >= chaos.live_kills
    assert handler.sessions[0].links >= chaos.live_kills + 1
    # Traffic flowed all along: at least a second's worth of it each way.
    assert min(client.sent, handler.stream.sent) >= RATE


@pytest.mark.parametrize(
    "disconnects",
    [
        pytest.param(16, id="short"),
        pytest.param(110, marks=[pytest.mark.slow, pytest.mark.timeout(300)], id="long"),
    ],
)
async def test_chaos_every_message_exactly_once_in_order_both_ways(
    request: pytest.FixtureRequest, anyio_backend: str, disconnects: int
) -> None:
    await run_chaos(request, anyio_backend, disconnects=disconnects)


# ---- a flapping link, on default settings on both sides ----------------------------------

# Issue 9's field condition: 500 messages per second each way, the link killed every 0.5 to
# 2 s. Nothing is tuned: not the backoff, the replay buffers, the session store or timeouts.
FLAP_RATE = 500


async def run_flapping(request: pytest.FixtureRequest, backend: str, seconds: float) -> None:
    seed = random.randrange(2**32)
    request.node.user_properties.append(("seed", seed))
    rng = random.Random(seed)
    handler = ChaosHandler(threading.Event(), rate=FLAP_RATE)
    client = Stream(rate=FLAP_RATE)
    events: list[Event] = []
    kills = 0
    # Defaults everywhere: serve() and connect() are given no settings at all.
    async with streaming(
        backend, handler, client, events, server_options={}, connect_options={}
    ) as (ws, proxy, _):
        end = anyio.current_time() + seconds
        while anyio.current_time() < end:  # bounded in time
            await anyio.sleep(rng.uniform(0.5, 2.0))
            await anyio.to_thread.run_sync(proxy.kill)
            kills += 1
            await anyio.to_thread.run_sync(proxy.start)

    disconnected = [e for e in events if isinstance(e, Disconnected) and e.uptime is not None]
    delays = [e.delay for e in events if isinstance(e, resilient_ws.Reconnecting)]
    for name, value in [
        ("kills", kills),
        ("disconnects", len(disconnected)),
        ("client_sent", client.sent),
        ("server_sent", handler.stream.sent),
        ("client_resent", ws.stats.resent),
        ("server_resent", handler.sessions[0].resent if handler.sessions else None),
        ("max_delay", max(delays, default=0.0)),
    ]:
        request.node.user_properties.append((name, value))
    check_exactly_once(client, handler, events, ws)
    # The kills cut live links, and traffic flowed at the rate asked for.
    assert len(disconnected) >= kills // 2
    assert min(client.sent, handler.stream.sent) >= FLAP_RATE * seconds * 0.8


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(8.0, id="short"),
        pytest.param(120.0, marks=[pytest.mark.slow, pytest.mark.timeout(400)], id="long"),
    ],
)
async def test_flapping_link_on_defaults_loses_and_duplicates_nothing(
    request: pytest.FixtureRequest, anyio_backend: str, seconds: float
) -> None:
    await run_flapping(request, anyio_backend, seconds)


# ---- iptables (long form only) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.root
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="iptables is Linux only")
async def test_chaos_with_packet_drops_exactly_once_in_order_both_ways(
    request: pytest.FixtureRequest, anyio_backend: str
) -> None:
    reason = no_iptables()
    if reason is not None:
        pytest.skip(reason)
    await run_chaos(request, anyio_backend, disconnects=100, firewall=Firewall())


# ---- 2. the server restarts: the session is lost, and the client says exactly what -------


async def test_server_restart_reports_the_lost_session_and_resends_unacked(
    anyio_backend: str,
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    with (
        child(REPLAY_SERVER, str(port), anyio_backend) as old,
        child(REPLAY_SERVER, str(port), anyio_backend) as new,
    ):
        await anyio.to_thread.run_sync(old.start)
        async with resilient_ws.connect(url, backoff=FAST) as ws:
            events = ws.events()
            await ws.send("send 5")
            with anyio.fail_after(TIMEOUT):
                received = [await ws.recv() for _ in range(5)]
            old_id = ws.stats.session_id
            assert old_id is not None
            assert received == [f"{old_id}:{n}" for n in range(1, 6)]
            await wait_until(lambda: ws.stats.unacked == 0)  # the server acked "send 5"
            # Frozen, the server reads nothing more, so it acknowledges nothing more.
            old.stop()
            for message in ("x1", "x2", "x3"):
                await ws.send(message)
            assert ws.stats.unacked == 3
            await anyio.to_thread.run_sync(old.kill)
            await anyio.to_thread.run_sync(new.start)

            gap = await next_event(events, Gap)
            assert (gap.session_id, gap.first, gap.last, gap.reason) == (
                old_id, 6, None, "session_lost"
            )  # fmt: skip
            # Right after the Gap, before any other event: what happened to our messages.
            with anyio.fail_after(TIMEOUT):
                lost = await anext(events)
            assert isinstance(lost, SessionLost)
            assert (lost.session_id, lost.unacked, lost.resent) == (old_id, 3, 3)
            await next_event(events, Connected)

            new_id = ws.stats.session_id
            assert new_id is not None
            assert new_id != old_id
            await ws.send("send 3")
            with anyio.fail_after(TIMEOUT):
                received = [await ws.recv() for _ in range(3)]
            assert received == [f"{new_id}:{n}" for n in range(1, 4)]
            assert ws.stats.gaps == 1

        lines = await anyio.to_thread.run_sync(
            new.wait_for_lines, lambda e: e["event"] == "received", 4
        )
        # The unacknowledged messages come first in the new session, once each, in order.
        assert [(e["session"], e["message"]) for e in lines] == [
            (new_id, "x1"), (new_id, "x2"), (new_id, "x3"), (new_id, "send 3")
        ]  # fmt: skip
        assert [e["session"] for e in new.lines if e["event"] == "session"] == [new_id]
        old_lines = [e["message"] for e in old.lines if e["event"] == "received"]
        assert old_lines == ["send 5"]


# ---- 3. the away buffer overflows: an exact Gap -------------------------------------------


class AwayHandler:
    """Sends 1..3, then, once the client is away, 4..18 into a 10-message replay buffer."""

    def __init__(self) -> None:
        self.cut = anyio.Event()
        self.sent_away = anyio.Event()
        self.done = anyio.Event()
        self.sessions: list[ServerSession] = []
        self.received: list[str | bytes] = []

    async def __call__(self, session: ServerSession) -> None:
        self.sessions.append(session)
        try:
            for n in range(1, 4):
                await session.send(str(n))
            with anyio.fail_after(TIMEOUT):
                await self.cut.wait()
                while session.connected:  # noqa: ASYNC110 - no event marks the detach
                    await anyio.sleep(0.01)
            for n in range(4, 19):
                await session.send(str(n))  # does not wait while the client is away
            self.sent_away.set()
            async for message in session:  # until the client closes
                self.received.append(message)
        finally:
            self.done.set()


async def test_away_buffer_overflow_is_an_exact_gap() -> None:
    handler = AwayHandler()
    async with serve(handler, replay=Replay(max_messages=10)) as server:
        with FaultProxy(server.port) as proxy:
            async with resilient_ws.connect(proxy.url, backoff=FAST) as ws:
                events = ws.events()
                with anyio.fail_after(TIMEOUT):
                    received = [int(await ws.recv()) for _ in range(3)]
                assert received == [1, 2, 3]
                proxy.stop()  # the client is away until start()
                handler.cut.set()
                with anyio.fail_after(TIMEOUT):
                    await handler.sent_away.wait()
                proxy.start()

                gap = await next_event(events, Gap)
                times = []
                with anyio.fail_after(TIMEOUT):
                    for _ in range(10):
                        received.append(int(await ws.recv()))
                        times.append(anyio.current_time())
                resumed = await next_event(events, Resumed)
                await ws.send("bye")
            with anyio.fail_after(TIMEOUT):
                await handler.done.wait()

    session = handler.sessions[0]
    # 18 sent, the client had 3, the buffer kept the last 10 (9..18): 4..8 are gone.
    assert (gap.session_id, gap.first, gap.last, gap.reason) == (session.id, 4, 8, "overflow")
    assert gap.at <= times[0]  # reported before message 9 was returned
    assert received == [1, 2, 3, *range(9, 19)]
    assert ws.stats.gaps == 1
    assert resumed.session_id == session.id
    assert len(handler.sessions) == 1
    assert session.resent == 10
    assert session.links == 2
    assert handler.received == ["bye"]
