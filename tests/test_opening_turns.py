"""A process that opens many links to one server at once takes turns (issue 10's storm).

Thousands of handshakes started together on one event loop each get a sliver of its CPU,
none completes within ``open_timeout``, and every retry repeats that. So one event loop
has at most ``MAX_OPENING`` opening handshakes in flight to one server address; the rest
wait their turn. On defaults, on both backends, against servers that hold handshakes until
the test lets them go and count how many they hold at once.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
from _servers import ThreadServer

import resilient_ws
from resilient_ws._io import backend as _backend
from resilient_ws._io.timers import Timers

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
CLIENTS = _backend.MAX_OPENING * 2 + 10


class Holding:
    """process_request that holds each handshake until :attr:`gate` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.now = 0
        self.most = 0
        self.served = 0

    async def __call__(self, connection: object, request: object) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            while not self.gate.is_set():  # noqa: ASYNC110 - set from another thread
                await asyncio.sleep(0.01)
        finally:
            with self.lock:
                self.now -= 1
                self.served += 1

    async def held(self, count: int) -> None:
        with anyio.fail_after(TIMEOUT):
            while self.now < count:  # noqa: ASYNC110 - the server thread has no event
                await anyio.sleep(0.01)


async def open_and_close(url: str, count: int) -> None:
    """Open ``count`` links to ``url`` at once; once all are open, close them."""
    opened: list[resilient_ws.Connection] = []
    all_open = anyio.Event()

    async def one() -> None:
        async with resilient_ws.connect(url) as ws:
            opened.append(ws)
            if len(opened) == count:
                all_open.set()
            await all_open.wait()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for _ in range(count):
                tasks.start_soon(one)
    assert len(opened) == count


async def test_one_loop_opens_at_most_max_opening_links_to_one_server_at_once() -> None:
    holding = Holding()
    with ThreadServer(process_request=holding) as server:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(open_and_close, server.url, CLIENTS)
            await holding.held(_backend.MAX_OPENING)
            # Every attempt has started by now; the rest wait for a turn, not the server.
            await anyio.sleep(0.5)
            assert holding.now == _backend.MAX_OPENING
            holding.gate.set()
    assert holding.served == CLIENTS
    assert holding.most == _backend.MAX_OPENING  # reached, never passed
    assert not _backend._turns.get(Timers.current())  # no address entry left behind


async def test_turns_are_per_server_address() -> None:
    """A server that holds every handshake does not hold up links to another one."""
    holding = Holding()
    with ThreadServer(process_request=holding) as slow, ThreadServer() as other:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(open_and_close, slow.url, CLIENTS)
            await holding.held(_backend.MAX_OPENING)  # every turn to `slow` is taken
            with anyio.fail_after(TIMEOUT):
                async with resilient_ws.connect(other.url) as ws:
                    assert ws.stats.state == "open"
            assert holding.served == 0
            assert holding.now == _backend.MAX_OPENING
            holding.gate.set()
    assert holding.most == _backend.MAX_OPENING
    assert holding.served == CLIENTS
