"""Helpers shared by the client's I/O tests."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
import anyio.abc

from resilient_ws import Backoff, Event
from resilient_ws._core.protocol import SUBPROTOCOL

E = TypeVar("E", bound=Event)

# Short delays keep the tests fast; the arithmetic itself is tested in test_backoff.py.
FAST = Backoff(first_delay=0.01, max_delay=0.2)
TIMEOUT = 20.0  # generous bound: only a real bug (a hang) exceeds it


async def next_event(events: AsyncIterator[Event], kind: type[E]) -> E:
    """Skip events until one of ``kind``, within TIMEOUT."""
    with anyio.fail_after(TIMEOUT):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"events ended before a {kind.__name__}")


async def raw_handshake(
    port: int, headers: dict[str, str] | None = None, *, source: str | None = None
) -> tuple[int, dict[str, str], anyio.abc.SocketStream]:
    """Open a TCP connection (from the loopback address ``source``, if given: any of
    127.0.0.0/8 on Linux) and send an opening handshake offering the replay protocol, with
    ``headers`` besides, by hand; the response's status, its headers (lowercase names)
    and the stream."""
    stream = await anyio.connect_tcp("127.0.0.1", port, local_host=source)
    await stream.send(handshake_request(headers or {}))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    return (*parse_response_head(head), stream)


def handshake_request(headers: dict[str, str]) -> bytes:
    """An opening handshake offering the replay protocol, with ``headers`` besides."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
        f"{extra}\r\n"
    ).encode()


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (lowercase names) of an HTTP response's head."""
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}
