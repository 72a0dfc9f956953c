"""The server helper on both backends: plain clients, resilient clients, beacons."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect as plain_connect

import resilient_ws

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
        if resilient_ws._backend.is_trio():
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
