"""Peers that never read (issue 11, point 4): sends are bounded, verdicts are reached.

A peer that stops reading fills the sender's socket buffers; websockets' ``send()`` then
waits for a drain that never comes. The keepalive's probes are written without waiting
(``_backend.send_control``), so the keepalive still judges the link: the peer's kernel
advertises a zero window, the verdict is ``server_stalled`` ("alive, not answering"),
logged at once as ``peer_stalled``, and the link is dropped after
``Keepalive.max_server_stall`` (150 s by default, kept long so that a peer whose event
loop or GIL is blocked for a while is survived). Once dropped, the blocked ``send()``
returns: on a replay session the message stays buffered for the client's resume.

Real servers and raw sockets on 127.0.0.1, both backends. The tests that wait for the drop
tune ``max_server_stall`` down to 2 s; the ones beside them show what defaults do.
"""

from __future__ import annotations

import base64
from typing import Any

import anyio
import anyio.abc
import pytest
from _helpers import TIMEOUT, next_event, raw_handshake
from structlog.testing import capture_logs

import resilient_ws
from resilient_ws import Keepalive, ServerSession

pytestmark = pytest.mark.anyio

CHUNK = b"x" * 16384
TUNED = Keepalive(max_server_stall=2.0)


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == f"resilient_ws.{name}"]


async def wait_for_event(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    with anyio.fail_after(TIMEOUT):
        while not (found := events_named(logs, name)):  # noqa: ASYNC110 - a log line, no event
            await anyio.sleep(0.05)
    return found[0]


class Flooder:
    """A handler that sends 16 KiB messages as fast as it may, counting those sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.session: ServerSession | None = None

    async def __call__(self, session: ServerSession) -> None:
        self.session = session
        while True:
            await session.send(CHUNK)
            self.sent += 1


# ---- serve(): a client that never reads ------------------------------------------------------


async def test_a_client_that_never_reads_is_judged_on_defaults() -> None:
    """Defaults: the verdict comes within seconds (the issue saw none after 89 s, with the
    keepalive's ping waiting on the same drain as the handler's send)."""
    flooder = Flooder()
    with capture_logs() as logs:
        async with resilient_ws.serve(flooder, "127.0.0.1", 0) as server:
            status, _, stream = await raw_handshake(server.port)
            assert status == 101
            try:
                stalled = await wait_for_event(logs, "peer_stalled")
                assert stalled["evidence"] == "zero_window"
                blocked_at = flooder.sent
                await anyio.sleep(0.5)
                # The handler waits on the drain: on defaults the link is kept (for up to
                # max_server_stall, 150 s), with the verdict logged.
                assert flooder.sent == blocked_at
                assert not events_named(logs, "link_abandoned")
            finally:
                await stream.aclose()


@pytest.mark.parametrize(
    "keepalive",
    [
        TUNED,
        # Defaults: the drop comes after 150 s; on demand only (RESILIENT_WS_LONG=1).
        pytest.param(Keepalive(), marks=[pytest.mark.slow, pytest.mark.timeout(400)]),
    ],
    ids=["tuned", "defaults-long"],
)
async def test_a_client_that_never_reads_is_dropped_after_max_server_stall(
    keepalive: Keepalive,
) -> None:
    flooder = Flooder()
    with capture_logs() as logs:
        async with resilient_ws.serve(flooder, "127.0.0.1", 0, keepalive=keepalive) as server:
            status, _, stream = await raw_handshake(server.port)
            assert status == 101
            try:
                await wait_for_event(logs, "peer_stalled")
                stalled_at = anyio.current_time()
                with anyio.fail_after(keepalive.max_server_stall + TIMEOUT):
                    while not events_named(logs, "link_abandoned"):  # noqa: ASYNC110 - a log line
                        await anyio.sleep(0.05)
                abandoned = events_named(logs, "link_abandoned")[0]
                assert anyio.current_time() - stalled_at >= keepalive.max_server_stall - 0.5
                assert abandoned["verdict"] == "server_stalled"
                assert abandoned["evidence"] == "zero_window"
                detached = await wait_for_event(logs, "session_detached")
                assert detached["outcome"] == "detached"
                # The blocked send returned; the sends that follow are buffered for the
                # client's resume (the oldest dropped past the bound, logged).
                sent = flooder.sent
                with anyio.fail_after(TIMEOUT):
                    while flooder.sent < sent + 100:  # noqa: ASYNC110 - a counter
                        await anyio.sleep(0.01)
                assert flooder.session is not None
                assert not flooder.session.connected
            finally:
                await stream.aclose()


async def test_sending_in_a_loop_while_the_client_is_away_yields() -> None:
    """A handler sending in a loop to an away session buffers each message without any
    I/O; it must still yield, or it holds the event loop forever (found with the test
    above: the link's own task never ran to detach the dead link)."""
    ticks = 0
    done = anyio.Event()
    result: list[int] = []

    async def handler(session: ServerSession) -> None:
        with anyio.fail_after(TIMEOUT):
            while session.connected:  # noqa: ASYNC110 - no event marks it
                await anyio.sleep(0.01)
        before = ticks
        for _ in range(1000):
            await session.send("buffered")
        result.append(ticks - before)
        done.set()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with resilient_ws.serve(handler, "127.0.0.1", 0) as server:
        status, _, stream = await raw_handshake(server.port)
        assert status == 101
        await stream.aclose()  # the client leaves: the session is away
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ticker)
            with anyio.fail_after(TIMEOUT):
                await done.wait()
    assert result[0] >= 500  # the ticker ran while the handler sent (0 before the fix)


# ---- connect(): a server that never reads ----------------------------------------------------


async def never_reading_server(
    ready: list[int], *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """A WebSocket server (handshake by hand) that never reads what follows it."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    streams: list[anyio.abc.SocketStream] = []

    async def accept(stream: anyio.abc.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive()
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        import hashlib

        accept_key = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        await stream.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key + b"\r\n\r\n"
        )
        streams.append(stream)  # held open, never read
        await anyio.sleep_forever()

    async with listener:
        ready.append(listener.extra(anyio.abc.SocketAttribute.local_port))
        task_status.started()
        try:
            await listener.serve(accept)
        finally:
            for stream in streams:
                await stream.aclose()


@pytest.mark.parametrize("keepalive", [TUNED, Keepalive()], ids=["tuned", "defaults"])
async def test_a_server_that_never_reads_bounds_the_clients_send(keepalive: Keepalive) -> None:
    """The client's send() waits on the drain; the keepalive judges the server stalled
    (zero window) within seconds on defaults, and past max_server_stall drops the link:
    send() returns, the message kept for the next link."""
    ready: list[int] = []
    async with anyio.create_task_group() as tasks:
        await tasks.start(never_reading_server, ready)
        url = f"ws://127.0.0.1:{ready[0]}/"
        async with resilient_ws.connect(url, keepalive=keepalive) as ws:
            events = ws.events()
            sent = 0
            returned = anyio.Event()

            async def flood() -> None:
                nonlocal sent
                while True:
                    await ws.send(CHUNK)
                    sent += 1
                    if stalled_seen and sent > at_stall:
                        returned.set()

            stalled_seen, at_stall = False, 0
            async with anyio.create_task_group() as flooding:
                flooding.start_soon(flood)
                stalled = await next_event(events, resilient_ws.PeerStalled)
                assert stalled.evidence == "zero_window"
                stalled_seen, at_stall = True, sent
                if keepalive.max_server_stall > TIMEOUT:  # defaults: the link is kept
                    await anyio.sleep(0.5)
                    assert sent == at_stall
                else:
                    disconnected = await next_event(events, resilient_ws.Disconnected)
                    assert disconnected.verdict == "server_stalled"
                    with anyio.fail_after(TIMEOUT):
                        await returned.wait()  # the send blocked at the stall returned
                flooding.cancel_scope.cancel()
        tasks.cancel_scope.cancel()


async def test_sending_in_a_loop_while_the_link_is_down_yields() -> None:
    """The client's send() while no link is up queues the message without I/O; it must
    still yield (with ``when_full="drop_oldest"`` a loop of sends never waited at all)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async def sink(session: ServerSession) -> None:
        async for _ in session:
            pass

    queue = resilient_ws.SendQueue(when_full="drop_oldest")
    ports: list[int] = []
    stop = anyio.Event()

    async def run_server(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with resilient_ws.serve(sink, "127.0.0.1", 0) as server:
            ports.append(server.port)
            task_status.started()
            await stop.wait()

    async with anyio.create_task_group() as servers:
        await servers.start(run_server)
        url = f"ws://127.0.0.1:{ports[0]}/"
        async with resilient_ws.connect(url, send_queue=queue) as ws:
            events = ws.events()
            stop.set()  # the server goes away: the link is down
            await next_event(events, resilient_ws.Disconnected)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ticker)
                before = ticks
                for _ in range(2000):  # past the queue's 1,024: the oldest are dropped
                    await ws.send("queued")
                during = ticks - before
                tasks.cancel_scope.cancel()
    assert during >= 1000  # the ticker ran while the loop sent (0 before the fix)
