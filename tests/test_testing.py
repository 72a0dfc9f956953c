"""FaultProxy against real sockets on 127.0.0.1: a resilient_ws client through it, on both
anyio backends, and raw sockets for the bounds.

Waits are bounded generously: only a real bug (a hang) breaks them.
"""

from __future__ import annotations

import select
import socket
import threading

import anyio
import pytest
from _helpers import FAST, TIMEOUT, next_event
from _servers import ThreadServer

import resilient_ws
from resilient_ws import Connected, Disconnected
from resilient_ws.testing import FaultProxy


async def echo(ws: resilient_ws.Connection, message: str) -> None:
    await ws.send(message)
    with anyio.fail_after(TIMEOUT):
        assert await ws.recv() == message


# ---- through a resilient_ws client, on asyncio and trio ------------------------------------


@pytest.mark.anyio
async def test_echo_and_counters() -> None:
    with ThreadServer() as server, FaultProxy(server.port) as proxy:
        assert proxy.url == f"ws://127.0.0.1:{proxy.port}/"
        async with resilient_ws.connect(proxy.url, backoff=FAST) as ws:
            await echo(ws, "hello")
            assert proxy.connections == 1
            assert proxy.active == 1
            assert proxy.bytes_up > len("hello")  # the handshake and a masked frame
            assert proxy.bytes_down > len("hello")


@pytest.mark.anyio
async def test_reset_makes_the_client_reconnect() -> None:
    with ThreadServer() as server, FaultProxy(server.port) as proxy:
        async with resilient_ws.connect(proxy.url, backoff=FAST) as ws:
            events = ws.events()
            await echo(ws, "before")
            proxy.reset()
            disconnected = await next_event(events, Disconnected)
            assert disconnected.verdict == "connection_lost"
            assert (await next_event(events, Connected)).link == 2
            await echo(ws, "after")
            assert proxy.connections == 2
            assert server.connections == 2


@pytest.mark.anyio
async def test_stop_refuses_until_start() -> None:
    with ThreadServer() as server, FaultProxy(server.port) as proxy:
        port = proxy.port
        async with resilient_ws.connect(proxy.url, backoff=FAST) as ws:
            events = ws.events()
            await echo(ws, "before")
            proxy.stop()
            assert (await next_event(events, Disconnected)).verdict == "connection_lost"
            # An attempt while stopped is refused: nothing listens.
            assert (await next_event(events, Disconnected)).verdict == "unreachable"
            proxy.start()
            assert proxy.port == port
            assert (await next_event(events, Connected)).link == 2
            await echo(ws, "after")


@pytest.mark.anyio
async def test_blackhole_holds_until_restore() -> None:
    with ThreadServer() as server, FaultProxy(server.port) as proxy:
        # keepalive=None: websockets' own 20 s keepalive, which the short blackhole never
        # reaches, so the test sees the proxy alone.
        async with resilient_ws.connect(proxy.url, backoff=FAST, keepalive=None) as ws:
            await echo(ws, "before")
            proxy.blackhole()
            sent_up = proxy.bytes_up
            await ws.send("held")
            with anyio.move_on_after(1.0) as waited:
                await ws.recv()
            assert waited.cancel_called, "a message crossed a blackholed proxy"
            assert proxy.bytes_up == sent_up
            proxy.restore()
            with anyio.fail_after(TIMEOUT):
                assert await ws.recv() == "held"
            await echo(ws, "after")
            assert ws.stats.reconnects == 0
            assert proxy.connections == 1


@pytest.mark.anyio
async def test_delay_down_slows_the_round_trip() -> None:
    with ThreadServer() as server, FaultProxy(server.port) as proxy:
        async with resilient_ws.connect(proxy.url, backoff=FAST) as ws:
            await echo(ws, "warm-up")
            proxy.delay(down=0.2)
            start = anyio.current_time()
            await echo(ws, "slow")
            assert anyio.current_time() - start >= 0.2
            proxy.delay()
            await echo(ws, "fast again")


# ---- raw sockets ---------------------------------------------------------------------------


class Sink:
    """A raw TCP server that accepts one connection and counts what it reads, when told."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.conn, _ = self.listener.accept()
        self.accepted.set()

    def read_exactly(self, size: int) -> bytes:
        assert self.accepted.wait(TIMEOUT)
        assert self.conn is not None
        self.conn.settimeout(TIMEOUT)
        chunks = []
        while size:
            chunk = self.conn.recv(min(size, 1 << 20))
            assert chunk, "EOF before every byte arrived"
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def test_stopped_proxy_refuses_connections() -> None:
    sink = Sink()
    try:
        with FaultProxy(sink.port) as proxy:
            proxy.stop()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
            proxy.start()
            socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT).close()
    finally:
        sink.close()


def test_blackholed_buffer_is_bounded_and_delivered_on_restore() -> None:
    limit = 64 * 1024
    sink = Sink()
    try:
        with (
            FaultProxy(sink.port, buffer_size=limit) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as client,
        ):
            assert sink.accepted.wait(TIMEOUT)
            proxy.blackhole()
            client.setblocking(False)
            chunk = bytes(range(256)) * 256
            sent = bytearray()
            # Push until the proxy stops reading: no progress for 0.5 s. An unbounded
            # proxy would swallow the whole 64 MiB.
            while len(sent) < 64 << 20:
                try:
                    n = client.send(chunk)
                except BlockingIOError:
                    _, writable, _ = select.select([], [client], [], 0.5)
                    if not writable:
                        break
                    continue
                sent += chunk[:n]
            # The proxy's buffer plus the kernel's socket buffers on both legs.
            assert len(sent) < 32 << 20
            assert proxy.bytes_up == 0
            proxy.restore()
            client.setblocking(True)
            assert sink.read_exactly(len(sent)) == bytes(sent)
            assert proxy.bytes_up == len(sent)
    finally:
        sink.close()


def test_misuse() -> None:
    proxy = FaultProxy(1)
    with pytest.raises(RuntimeError, match="context manager"):
        proxy.reset()
    with pytest.raises(ValueError, match="negative"):
        proxy.delay(up=-1.0)
    with pytest.raises(ValueError, match="positive"):
        FaultProxy(1, buffer_size=0)
