"""The server helper on both backends: plain clients, resilient clients, beacons."""

from __future__ import annotations

import collections
import logging
import socket
import struct
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect as plain_connect
from websockets.exceptions import ConnectionClosedError

import resilient_ws
from resilient_ws._core.protocol import SUBPROTOCOL

pytestmark = pytest.mark.anyio
TIMEOUT = 20


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


def serve_echo(*, beacon_interval: float = 1.0) -> resilient_ws.Server:
    # One StallWatchdog per process: the watchdog has its own tests (test_lag.py).
    return resilient_ws.serve(
        echo, "127.0.0.1", 0, beacon_interval=beacon_interval, stall_threshold=None
    )


async def test_resilient_client_gets_lag_beacons() -> None:
    async with serve_echo(beacon_interval=0.05) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            # No event marks a beacon's arrival: poll, bounded by fail_after.
            with anyio.fail_after(TIMEOUT):
                while ws.stats.peer_lag is None:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert 0 <= ws.stats.peer_lag < 5


async def test_plain_websockets_client_works_against_serve() -> None:
    async with serve_echo(beacon_interval=0.01) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        if resilient_ws._io.backend.is_trio():
            from websockets.trio.client import connect as trio_connect

            manager = trio_connect(url)
        else:
            manager = plain_connect(url)
        async with manager as ws:
            for i in range(20):  # beacons arrive meanwhile; the plain client ignores them
                await ws.send(str(i))
                assert await ws.recv() == str(i)
                await anyio.sleep(0.005)


async def test_close_stops_the_server() -> None:
    server = serve_echo()
    async with server:
        port = server.port
        assert port > 0
    with pytest.raises(OSError, match=r"ttempts failed|refused"):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_the_listen_queue_holds_a_crowd_reconnecting_at_once() -> None:
    """asyncio listens with a backlog of 100 unless asked: serve() asks for 4096, as trio
    does by itself (up to the kernel's somaxconn). A SYN beyond the queue waits 1 s, 3 s...
    """
    import shutil

    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("needs ss (iproute2)")
    somaxconn = int(await anyio.Path("/proc/sys/net/core/somaxconn").read_text())
    async with serve_echo() as server:
        done = await anyio.run_process([ss, "-ltnH", f"sport = :{server.port}"])
        listing = done.stdout.decode().split()
    # State Recv-Q Send-Q ...: for a listening socket, Send-Q is its backlog.
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == min(4096, somaxconn)


async def test_two_servers_in_one_process_share_the_stall_watchdog() -> None:
    """Issue 11: a second serve() with the (default) watchdog failed with a RuntimeError:
    the watchdog's stack dumps are process-wide. Both serve now, sharing one watchdog,
    which runs until the last of them leaves (not until the first does)."""

    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    servers: list[resilient_ws.Server] = []
    started, leave, left = anyio.Event(), anyio.Event(), anyio.Event()

    async def run_first() -> None:
        async with resilient_ws.serve(echo, "127.0.0.1", 0) as first:
            servers.append(first)
            started.set()
            await leave.wait()
        left.set()

    with capture_logs() as logs, anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_first)
            await started.wait()
            async with resilient_ws.serve(echo, "127.0.0.1", 0) as second:
                first = servers[0]
                assert first.watchdog is not None
                assert second.watchdog is first.watchdog
                for server in (first, second):
                    async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                        await ws.send("x")
                        assert await ws.recv() == "x"
                leave.set()
                await left.wait()
                # The first, which started the watchdog, left: it still watches for the
                # second.
                time.sleep(1.5)  # noqa: ASYNC251 - block the loop past the threshold (1 s)
                while not [e for e in logs if e["event"] == "resilient_ws.loop_stalled"]:  # noqa: ASYNC110 - a log line, no event
                    await anyio.sleep(0.05)
                assert second.watchdog.last_stall is not None
    assert [e["event"] for e in logs].count("resilient_ws.stall_watchdog_shared") == 1
    # Released: the next server runs a watchdog of its own.
    async with resilient_ws.serve(echo, "127.0.0.1", 0, stall_threshold=0.5) as third:
        assert third.watchdog is not None
        assert third.watchdog is not second.watchdog
        assert third.watchdog.threshold == 0.5


async def test_aclose_stops_the_server_not_the_body() -> None:
    """aclose() from the body of ``async with serve()`` cancelled the body itself (the
    server's task group scope covered it): the code after it never ran."""

    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    reached = False
    with anyio.fail_after(TIMEOUT):
        async with resilient_ws.serve(echo, "127.0.0.1", 0) as server:
            async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
            await server.aclose()
            await anyio.sleep(0.05)
            with pytest.raises(OSError):  # noqa: PT011 - refused, however anyio words it
                await anyio.connect_tcp("127.0.0.1", server.port)
            reached = True
    assert reached


async def test_leaving_serve_on_a_cancellation_returns() -> None:
    """On trio, websockets' server waited forever for its cancelled serving task."""
    with anyio.fail_after(TIMEOUT), anyio.move_on_after(0.2) as scope:
        async with serve_echo() as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with resilient_ws.connect(url) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                await anyio.sleep_forever()
    assert scope.cancelled_caught


# ---- how a session ends, in the log ------------------------------------------------------
#
# websockets logs an exception that escapes a connection handler as a multi-line traceback
# ("connection handler failed", logger "websockets.server"). serve() must never let one
# out: a client that vanishes is a normal end (one info event), a handler that raises is
# one handler_failed event with the traceback as a field, and its link is closed with 1011.

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked, final client frame (RFC 6455 section 5.2); payloads under 64 KiB."""
    mask = b"\x01\x02\x03\x04"
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode]) + length + mask + masked


async def vanish(port: int, how: str) -> str:
    """Open a WebSocket by hand, exchange one message, then leave as ``how`` says;
    return the client's address as serve() logs it."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    address = str(sock.getsockname())
    await stream.send(HANDSHAKE)
    received = b""
    with anyio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in received:
            received += await stream.receive()
        await stream.send(client_frame(b"hello"))
        # The echo: 2 bytes of header and the 5 of "hello", maybe in several reads.
        received = received.partition(b"\r\n\r\n")[2]
        while len(received) < 7:
            received += await stream.receive()
    assert received == b"\x81\x05hello"
    if how == "close_frame":
        await stream.send(client_frame((1000).to_bytes(2, "big"), opcode=0x8))
        with anyio.fail_after(TIMEOUT):
            await stream.receive()  # the server's close frame
    elif how == "mid_message":
        await stream.send(client_frame(b"x" * 1000)[:300])
    if how in ("rst", "mid_message"):
        # SO_LINGER 0: close() sends RST, not FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    return address


def assert_no_raw_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing logged through the standard library carries a traceback of its own."""
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]
    assert "connection handler failed" not in caplog.text


@pytest.mark.parametrize("how", ["close_frame", "fin", "rst", "mid_message"])
async def test_a_vanished_client_is_a_normal_session_end(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    done = anyio.Event()

    async def handler(session: resilient_ws.ServerSession) -> None:
        try:
            await echo(session)  # the docstring's handler
        finally:
            done.set()

    with capture_logs() as logs, caplog.at_level(logging.INFO):
        async with resilient_ws.serve(handler, "127.0.0.1", 0, stall_threshold=None) as server:
            address = await vanish(server.port, how)
            with anyio.fail_after(TIMEOUT):
                await done.wait()
    ended = [e for e in logs if e["event"] == "resilient_ws.session_ended"]
    assert ended == [
        {
            "event": "resilient_ws.session_ended",
            "log_level": "info",
            "session_id": None,
            "peer": address,
            "cause": None if how == "close_frame" else ended[0]["cause"],
        }
    ]
    if how != "close_frame":
        assert "1006" in ended[0]["cause"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert_no_raw_traceback(caplog)


async def fails(session: resilient_ws.ServerSession) -> None:
    await session.recv()
    raise ValueError("boom")


async def fails_in_a_task_group(session: resilient_ws.ServerSession) -> None:
    async def fail() -> None:
        raise ValueError("boom")

    await session.recv()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(fail)
        await anyio.sleep_forever()


def websockets_client(url: str, **options: Any) -> Any:
    """websockets' own client for the running backend."""
    if resilient_ws._io.backend.is_trio():
        from websockets.trio.client import connect as trio_connect

        return trio_connect(url, **options)
    return plain_connect(url, **options)


@pytest.mark.parametrize("replay", [False, True], ids=["plain", "replay"])
@pytest.mark.parametrize(
    ("handler", "error_type"),
    [(fails, "ValueError"), (fails_in_a_task_group, "ExceptionGroup")],
    ids=["raises", "raises_in_task_group"],
)
async def test_a_failing_handler_is_one_handler_failed_event(
    handler: Any, error_type: str, replay: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # A client offering the replay subprotocol gets a replay session; websockets' client
    # ignores the protocol's control messages.
    options = {"subprotocols": [SUBPROTOCOL]} if replay else {}
    with capture_logs() as logs, caplog.at_level(logging.INFO):
        async with resilient_ws.serve(handler, "127.0.0.1", 0, stall_threshold=None) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with websockets_client(url, **options) as ws:
                assert ws.subprotocol == (SUBPROTOCOL if replay else None)
                address = str(ws.local_address)
                await ws.send("x")
                with anyio.fail_after(TIMEOUT), pytest.raises(ConnectionClosedError) as caught:
                    await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1011
    [failed] = [e for e in logs if e["event"] == "resilient_ws.handler_failed"]
    assert failed["log_level"] == "error"
    assert failed["error_type"] == error_type
    assert "boom" in failed["traceback"]
    assert f"in {handler.__name__}" in failed["traceback"]
    assert "ValueError: boom" in failed["traceback"]
    assert failed["peer"] == address
    assert (failed["session_id"] is not None) == replay
    assert not [e for e in logs if e["event"] in ("resilient_ws.session_ended",
                                                  "resilient_ws.link_failed")]  # fmt: skip
    assert_no_raw_traceback(caplog)


async def test_a_replay_session_that_expires_is_a_normal_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client vanishes and never resumes: the handler's recv() raises the session's
    ConnectionFailed; letting it out is no handler failure."""
    done = anyio.Event()

    async def handler(session: resilient_ws.ServerSession) -> None:
        try:
            await echo(session)
        finally:
            done.set()

    store = resilient_ws.MemorySessionStore(ttl=0.2)
    with capture_logs() as logs, caplog.at_level(logging.INFO):
        async with resilient_ws.serve(
            handler, "127.0.0.1", 0, stall_threshold=None, sessions=store
        ) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with websockets_client(url, subprotocols=[SUBPROTOCOL]) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                # Gone without a close frame: the session waits for a resume that never comes.
                resilient_ws._io.backend.abort_link(ws)
            with anyio.fail_after(TIMEOUT):
                await done.wait()
    events = [e["event"] for e in logs]
    assert "resilient_ws.session_expired" in events
    [ended] = [e for e in logs if e["event"] == "resilient_ws.session_ended"]
    assert ended["log_level"] == "info"
    assert "session expired" in ended["cause"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert_no_raw_traceback(caplog)


async def test_a_beacon_broadcast_is_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lag beacon to every link goes out 200 links at a time with pauses between: 5,000
    frames written at once overflowed the kernel's loopback queue, whose drops took the
    kernel's keepalive probes with them, and hundreds of healthy links were dropped with
    ETIMEDOUT while others opened (bench_scale at 5,000 clients: 8,791 links for 5,000)."""
    from _helpers import raw_handshake

    from resilient_ws._core.protocol import BEACON_PREFIX
    from resilient_ws._io import backend as _backend

    turns = 0  # loop turns seen by a ticker: sends in one turn went out in one burst
    bursts: list[int] = []  # the turn of each beacon sent to a link
    send_control = _backend.send_control

    def recording(raw: Any, data: bytes, *, ping: bool = False) -> None:
        # Only once the ticker counts turns: a broadcast while the links were opening
        # (the lag changed band under load) would count as one turn, 0.
        if turns and not ping and data.startswith(BEACON_PREFIX):
            bursts.append(turns)
        send_control(raw, data, ping=ping)

    monkeypatch.setattr(_backend, "send_control", recording)

    async def sink(session: resilient_ws.ServerSession) -> None:
        async for _ in session:
            pass

    links = 450
    async with resilient_ws.serve(sink, "127.0.0.1", 0) as server:
        streams = [(await raw_handshake(server.port))[2] for _ in range(links)]
        try:
            # A client has the 101 before the server's handler for the link runs: a
            # broadcast before the last one does would miss it (and the next broadcast
            # comes only when the lag changes again).
            with anyio.fail_after(TIMEOUT):
                while len(server._links) < links:  # noqa: ASYNC110 - no event for a link
                    await anyio.sleep(0.01)
            async with anyio.create_task_group() as tasks:

                async def tick() -> None:
                    nonlocal turns
                    while True:
                        turns += 1
                        await anyio.lowlevel.checkpoint()

                tasks.start_soon(tick)
                # Counting before the stall: after it, trio may run the broadcast before
                # the ticker, whose beacons would go unrecorded.
                while not turns:
                    await anyio.lowlevel.checkpoint()
                # A stall past the watchdog's threshold (1 s): the next beacon reports it.
                time.sleep(1.3)  # noqa: ASYNC251
                with anyio.fail_after(TIMEOUT):
                    while len(bursts) < links:  # noqa: ASYNC110 - a counter
                        await anyio.sleep(0.05)
                tasks.cancel_scope.cancel()
        finally:
            for stream in streams:
                await stream.aclose()
    sizes = collections.Counter(bursts[:links]).values()
    assert max(sizes) <= 200
    assert len(sizes) >= 3
