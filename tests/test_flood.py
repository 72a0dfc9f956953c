"""A flood of control frames from one link (issue 11): the link is closed, others go on.

Issue 11 measured 154k pongs/s accepted from one link: the server at 87 % CPU and another
client's echo from 0.6 ms to 177 ms. Past ``MAX_CONTROL_FRAMES`` pings and pongs in a
second, a link is closed with 1008 and the event ``control_flood`` is logged. The hostile
side is a raw TCP client; real serve() on 127.0.0.1, default settings, both backends.
"""

from __future__ import annotations

import struct

import anyio
import pytest
from _helpers import TIMEOUT, raw_handshake
from structlog.testing import capture_logs

import resilient_ws
from resilient_ws._io.backend import MAX_CONTROL_FRAMES

pytestmark = pytest.mark.anyio

# A masked, empty control frame: FIN + opcode, mask bit + length 0, the mask.
PONG = b"\x8a\x80" + b"\x00\x00\x00\x00"
PING = b"\x89\x80" + b"\x00\x00\x00\x00"


async def open_raw(port: int, source: str | None = None) -> anyio.abc.SocketStream:
    status, _, stream = await raw_handshake(port, source=source)
    assert status == 101
    return stream


async def close_code(stream: anyio.abc.SocketStream, rest: bytes) -> int | None:
    """Read frames until a close frame; its code (None if the connection just ended)."""
    data = rest
    while True:
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                fmt = "!H" if length == 126 else "!Q"
                length = struct.unpack(fmt, data[2:start])[0]
            if len(data) < start + length:
                break
            if opcode == 0x8:
                return int(struct.unpack("!H", data[start : start + 2])[0])
            data = data[start + length :]
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return None


@pytest.mark.parametrize("frame", [PONG, PING], ids=["pongs", "pings"])
async def test_a_control_frame_flood_closes_that_link_only(frame: bytes) -> None:
    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    with capture_logs() as logs:
        async with resilient_ws.serve(echo, "127.0.0.1", 0, stall_threshold=None) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with resilient_ws.connect(url) as bystander:
                flooder = await open_raw(server.port)
                try:
                    with anyio.fail_after(TIMEOUT):
                        await flooder.send(frame * (2 * MAX_CONTROL_FRAMES))
                        assert await close_code(flooder, b"") == 1008
                finally:
                    await flooder.aclose()
                # The well-behaved client never noticed.
                await bystander.send("still here")
                with anyio.fail_after(TIMEOUT):
                    assert await bystander.recv() == "still here"
                assert bystander.stats.links == 1
    flood = [entry for entry in logs if entry["event"] == "resilient_ws.control_flood"]
    assert len(flood) == 1  # once per link, not per frame
    assert flood[0]["limit"] == MAX_CONTROL_FRAMES


async def test_a_flooders_address_is_turned_away_for_a_while() -> None:
    """A flooder cut off that reconnects at once is refused (429) before any of its frames
    is parsed; other addresses are not."""

    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    with capture_logs() as logs, anyio.fail_after(TIMEOUT):
        async with resilient_ws.serve(echo, "127.0.0.1", 0, stall_threshold=None) as server:
            flooder = await open_raw(server.port, source="127.0.0.2")
            try:
                await flooder.send(PONG * (2 * MAX_CONTROL_FRAMES))
                assert await close_code(flooder, b"") == 1008
            finally:
                await flooder.aclose()
            status, headers, again = await raw_handshake(server.port, source="127.0.0.2")
            await again.aclose()
            assert status == 429
            assert 1 <= int(headers["retry-after"]) <= 10
            status, _, other = await raw_handshake(server.port, source="127.0.0.3")
            await other.aclose()
            assert status == 101
    turned = [e for e in logs if e["event"] == "resilient_ws.source_turned_away"]
    assert [(e["peer"], e["seconds"], e["reason"]) for e in turned] == [
        ("127.0.0.2", 10.0, "control_flood")
    ]


def test_penalties_double_for_repeat_offenders_and_are_forgotten() -> None:
    from resilient_ws._io.admission import Penalties

    penalties = Penalties(max_sources=2)
    assert penalties.retry_after("a", 0.0) is None
    assert penalties.punish("a", 0.0) == 10.0
    assert penalties.retry_after("a", 0.5) == 10
    assert penalties.retry_after("a", 9.5) == 1
    assert penalties.retry_after("a", 10.0) is None
    assert penalties.punish("a", 15.0) == 20.0  # again while remembered: twice as long
    assert penalties.punish("a", 40.0) == 40.0
    for now in (90.0, 200.0, 400.0):  # 80, 160, then capped: 300
        penalties.punish("a", now)
    assert penalties.punish("a", 800.0) == Penalties.LONGEST
    assert penalties.punish("a", 10_000.0) == 10.0  # long after: forgotten
    penalties.punish("b", 10_000.0)
    penalties.punish("c", 10_000.0)  # past max_sources: the oldest, "a", is forgotten
    assert penalties.retry_after("a", 10_001.0) is None
    assert penalties.retry_after("c", 10_001.0) == 9


async def test_control_frames_below_the_limit_keep_the_link() -> None:
    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    async with resilient_ws.serve(echo, "127.0.0.1", 0, stall_threshold=None) as server:
        stream = await open_raw(server.port)
        try:
            await stream.send(PONG * (MAX_CONTROL_FRAMES // 2))
            # A masked text frame "ok": the link still echoes it.
            mask = b"\x01\x02\x03\x04"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"ok"))
            await stream.send(b"\x81\x82" + mask + payload)
            data = b""
            with anyio.fail_after(TIMEOUT):
                while b"ok" not in data:
                    data += await stream.receive()
        finally:
            await stream.aclose()
