"""Idle links cost no Python work: the kernel's TCP keepalive watches them (issue 10).

On defaults, on both backends: a quiet link gets one application probe (to measure the
peer once) and then only one per ``Keepalive.quiet_interval``; a message either way brings
the probe after ``idle`` back; a dead path under a quiet link is dropped by the kernel and
judged ``network_dead``; ``serve()`` sends lag beacons only when its lag changes and in
answer to a probe, not every second.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading

import anyio
import anyio.abc
import pytest
import sniffio
from _firewall import Firewall
from _servers import ThreadServer
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection
from websockets.frames import Opcode

import resilient_ws
from resilient_ws import Disconnected, Keepalive, PeerStalled
from resilient_ws._core.protocol import BEACON_PREFIX, decode_beacon
from resilient_ws._io import keepalive as _keepalive
from resilient_ws._io import sockopts as _sockopts
from resilient_ws._io.timers import Timers

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
# Longer than Keepalive().idle plus a pong's wait, far shorter than quiet_interval (15 s).
WINDOW = 3.0


class PingCounting(ServerConnection):
    """A websockets server connection that counts the pings it receives."""

    pings = 0

    def process_event(self, event: object) -> None:
        if getattr(event, "opcode", None) is Opcode.PING:
            type(self).pings += 1
        super().process_event(event)  # type: ignore[arg-type]


def ping_counting() -> type[PingCounting]:
    return type("Counting", (PingCounting,), {"pings": 0})


async def wait_for_pings(counter: type[PingCounting], count: int) -> None:
    with anyio.fail_after(TIMEOUT):
        while counter.pings < count:  # noqa: ASYNC110 - the server thread has no event
            await anyio.sleep(0.02)


async def ignore(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def test_a_quiet_link_gets_one_probe_then_the_kernel_watches_it() -> None:
    counter = ping_counting()
    with ThreadServer(create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await wait_for_pings(counter, 1)  # measures the server's latency once
            await anyio.sleep(WINDOW)
            assert counter.pings == 1
            assert ws.stats.state == "open"


async def test_without_the_kernel_every_idle_period_is_probed() -> None:
    """The contrast: Keepalive(kernel=False) probes from Python every idle second."""
    counter = ping_counting()
    with ThreadServer(create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url, keepalive=Keepalive(kernel=False)):
            await wait_for_pings(counter, 1)
            await anyio.sleep(WINDOW)
            assert counter.pings >= 3


async def test_a_message_on_a_quiet_link_brings_back_the_probe() -> None:
    """After a message, a peer that stays silent is probed again after ``idle``: its
    application may have stalled while its kernel answers the kernel's keepalive."""
    counter = ping_counting()
    with ThreadServer(ignore, create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url) as ws:
            await wait_for_pings(counter, 1)
            await anyio.sleep(Keepalive().idle + 0.5)  # answered and quiet: parked
            assert counter.pings == 1
            await ws.send("unanswered")
            await wait_for_pings(counter, 2)


@pytest.mark.root
async def test_a_dead_path_under_a_quiet_link_is_judged_at_the_kernels_first_lost_probe(
    firewall: Firewall,
) -> None:
    """The kernel's keepalive probe goes unanswered; the client sees its last ACK grow old
    and sends one application probe, which the dead path does not carry: network_dead on
    that probe's evidence (retransmits), before the kernel's second probe would drop the
    link (kernel_timeout)."""
    counter = ping_counting()
    with ThreadServer(create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url) as ws:
            events = ws.events()
            await wait_for_pings(counter, 1)
            await anyio.sleep(Keepalive().idle + 0.5)  # parked: no Python probe due
            with capture_logs() as logs, firewall.drop(server.port):
                with anyio.fail_after(TIMEOUT):
                    async for event in events:
                        assert not isinstance(event, PeerStalled)
                        if isinstance(event, Disconnected):
                            break
            assert event.verdict == "network_dead"
            assert counter.pings == 1  # the application probe never got through
            abandoned = [log for log in logs if log["event"] == "resilient_ws.link_abandoned"]
            assert [log["evidence"] for log in abandoned] == ["retransmits"]


@pytest.mark.root
async def test_one_lost_keepalive_probe_costs_a_probe_not_the_link(firewall: Firewall) -> None:
    """A single lost keepalive probe (or its ACK) on a healthy quiet link: the client's
    application probe is answered and the link stays up, where a kernel that drops after
    one unanswered probe would cut it."""
    counter = ping_counting()
    with ThreadServer(create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url) as ws:
            events = ws.events()
            await wait_for_pings(counter, 1)
            await anyio.sleep(Keepalive().idle + 0.5)  # parked
            with firewall.drop_one_empty_segment(server.port):
                await wait_for_pings(counter, 2)  # the probe that the lost one brought
                with anyio.move_on_after(WINDOW):
                    async for event in events:
                        assert not isinstance(event, (Disconnected, PeerStalled)), event
            assert counter.pings == 2
            assert ws.stats.state == "open"
            assert ws.stats.links == 1


async def test_quiet_links_are_checked_while_parked_and_forgotten_when_closed() -> None:
    """One watch per event loop holds the parked links (their kernel's last ACK is read
    once per keepalive period) and lets go of each once it closes."""
    if not _sockopts.reports_last_ack():
        pytest.skip("the platform reports no last ACK: nothing to watch")
    counter = ping_counting()
    with ThreadServer(create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url), resilient_ws.connect(server.url):
            await wait_for_pings(counter, 2)  # each measured the server once
            await anyio.sleep(Keepalive().idle + 0.5)  # both parked
            watch = _keepalive._quiet_links[Timers.current()]
            assert len(watch._links) == 2
            await anyio.sleep(WINDOW)  # checked, answered by the kernel: still parked
            assert len(watch._links) == 2
            assert counter.pings == 2
        assert not watch._links


@pytest.mark.root
async def test_without_ack_times_the_kernel_alone_drops_a_dead_quiet_link(
    firewall: Firewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform reports no last ACK (macOS), the kernel's second unanswered
    probe drops the link: kernel_timeout."""
    monkeypatch.setattr(_sockopts, "reports_last_ack", lambda: False)
    counter = ping_counting()
    with ThreadServer(create_connection=counter, ping_interval=None) as server:
        async with resilient_ws.connect(server.url) as ws:
            events = ws.events()
            await wait_for_pings(counter, 1)
            await anyio.sleep(Keepalive().idle + 0.5)
            with capture_logs() as logs, firewall.drop(server.port):
                with anyio.fail_after(TIMEOUT):
                    async for event in events:
                        if isinstance(event, Disconnected):
                            break
            assert event.verdict == "network_dead"
            abandoned = [log for log in logs if log["event"] == "resilient_ws.link_abandoned"]
            assert [log["evidence"] for log in abandoned] == ["kernel_timeout"]


HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
PING = bytes([0x89, 0x80 | 4]) + b"\x00\x00\x00\x00" + b"abcd"  # masked with zeros


async def receive_for(stream: anyio.abc.ByteStream, seconds: float) -> bytes:
    received = b""
    with anyio.move_on_after(seconds):
        while True:
            received += await stream.receive()
    return received


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """A server's frames (unmasked, payloads under 126 bytes): (opcode, payload)."""
    found = []
    while len(data) >= 2 and len(data) >= 2 + data[1]:
        found.append((data[0] & 0x0F, data[2 : 2 + data[1]]))
        data = data[2 + data[1] :]
    return found


def lag_band(lag: float) -> int:
    """serve()'s bands of loop lag: under 0.1 s, then one per doubling."""
    return 0 if lag < 0.1 else 1 + int(math.log2(lag / 0.1))


async def test_serve_beacons_answer_probes_not_the_clock() -> None:
    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    async with resilient_ws.serve(echo, "127.0.0.1", 0, stall_threshold=None) as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        async with stream:
            await stream.send(HANDSHAKE)
            with anyio.fail_after(TIMEOUT):
                response = b""
                while b"\r\n\r\n" not in response:
                    response += await stream.receive()
            assert response.startswith(b"HTTP/1.1 101")
            # Idle: the server's own probes (pings, which this client leaves unanswered),
            # and a beacon only when its lag changed band (under load), never two in a row
            # with the same band (a clock would send the same one every second).
            idle = response.partition(b"\r\n\r\n")[2] + await receive_for(stream, WINDOW)
            assert {opcode for opcode, _ in frames(idle)} <= {Opcode.PING, Opcode.PONG}
            beacons = [decode_beacon(data) for opcode, data in frames(idle) if opcode == 0xA]
            bands = [lag_band(beacon.lag) for beacon in beacons if beacon is not None]
            assert len(bands) == len(beacons)
            assert all(before != after for before, after in itertools.pairwise(bands))
            await stream.send(PING)
            answer = b""
            with anyio.fail_after(TIMEOUT):
                while True:
                    answer += await stream.receive()
                    pongs = [data for opcode, data in frames(answer) if opcode == 0xA]
                    if b"abcd" in pongs and pongs[-1].startswith(BEACON_PREFIX):
                        break
            # websockets' pong, then the beacon that answers the probe (both pongs).
            assert pongs.index(b"abcd") < len(pongs) - 1
            first = decode_beacon(pongs[-1])
            assert first is not None
            # A second probe, past the 0.1 s spacing: the client knows the lag already,
            # so only its pong comes back, unless the lag changed band meanwhile.
            await anyio.sleep(0.2)
            await stream.send(PING)
            answer = await receive_for(stream, 1.0)
            pongs = [data for opcode, data in frames(answer) if opcode == 0xA]
            assert b"abcd" in pongs
            later = [decode_beacon(data) for data in pongs if data != b"abcd"]
            bands = [lag_band(beacon.lag) for beacon in [first, *later] if beacon is not None]
            assert len(bands) == 1 + len(later)
            # Each beacon to a link says something the one before did not.
            assert all(before != after for before, after in itertools.pairwise(bands))


async def test_serve_under_plain_asyncio_run_answers_probes_with_beacons() -> None:
    """serve() in a program started with asyncio.run (no anyio, so no library marker in
    the context of protocol callbacks): the beacon that answers a probe is sent from
    websockets' protocol callback, outside any task."""
    ready = threading.Event()
    stop: list[asyncio.Future[None]] = []
    port: list[int] = []

    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    async def main() -> None:
        stop.append(asyncio.get_running_loop().create_future())
        async with resilient_ws.serve(echo, "127.0.0.1", 0, stall_threshold=None) as server:
            port.append(server.port)
            ready.set()
            await stop[0]

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert await anyio.to_thread.run_sync(ready.wait, TIMEOUT)
        async with resilient_ws.connect(f"ws://127.0.0.1:{port[0]}/") as ws:
            with anyio.fail_after(TIMEOUT):
                while ws.stats.peer_lag is None:  # noqa: ASYNC110 - no event marks a beacon
                    await anyio.sleep(0.02)
            await ws.send("still there")
            assert await ws.recv() == "still there"
            assert ws.stats.links == 1
    finally:
        loop = stop[0].get_loop()
        loop.call_soon_threadsafe(stop[0].set_result, None)
        await anyio.to_thread.run_sync(thread.join, TIMEOUT)
    assert not thread.is_alive()


async def test_a_ping_flood_is_not_answered_with_as_many_beacons() -> None:
    """A hostile client's burst of pings: websockets answers each with a pong, serve()
    adds at most one beacon per 0.1 s, not one per ping."""

    async def ignore_session(session: resilient_ws.ServerSession) -> None:
        async for _ in session:
            pass

    async with resilient_ws.serve(ignore_session, "127.0.0.1", 0, stall_threshold=None) as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        async with stream:
            await stream.send(HANDSHAKE)
            received = b""
            with anyio.fail_after(TIMEOUT):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive()
                await stream.send(PING * 200)
                received = received.partition(b"\r\n\r\n")[2]
                while received.count(b"\x8a\x04abcd") < 200:
                    received += await stream.receive()
            received += await receive_for(stream, 0.3)
    beacons = received.count(BEACON_PREFIX)
    assert 1 <= beacons <= 5


async def test_serve_links_carry_the_kernels_keepalive_on_defaults() -> None:
    """Every link serve() accepts has TCP keepalive at Keepalive().idle (on asyncio, set
    once on the listening sockets, which Linux copies into each accepted one; on trio,
    by each link)."""
    import socket

    async def hold(session: resilient_ws.ServerSession) -> None:
        async for _ in session:
            pass

    async with resilient_ws.serve(hold, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url), resilient_ws.connect(url):
            with anyio.fail_after(TIMEOUT):
                while len(server._links) < 2:  # noqa: ASYNC110 - no event for a link
                    await anyio.sleep(0.01)
            for link in server._links:
                sock = _sockopts.raw_socket(link)
                assert sock is not None
                options = [
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                ]
                idle = _sockopts.keepalive_idle(Keepalive().idle)
                assert options == [1, idle, 1, _sockopts._KEEPALIVE_PROBES]
            # On asyncio the links did not set them: the listening sockets did.
            assert server._inherit_keepalive == (sniffio.current_async_library() == "asyncio")
