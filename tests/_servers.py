"""Real WebSocket servers on 127.0.0.1 for the tests: in a thread, or in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

Handler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Response | None]

ECHO_SERVER = Path(__file__).with_name("echo_server.py")


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


L = TypeVar("L", bound="LoopThread")


class LoopThread:
    """Runs ``serve()`` in an asyncio event loop of its own thread, between enter and exit.

    A subclass's ``serve()`` calls ``self.ready.set()`` once it listens and returns when
    ``self.stopping`` is done. The thread keeps serving while the test's loop is blocked.
    """

    def __init__(self, *, start: bool = True) -> None:
        self.ready = threading.Event()
        self.stopping: asyncio.Future[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start_on_enter = start

    async def serve(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self.stopping = self._loop.create_future()
        await self.serve()

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")

    def __enter__(self: L) -> L:
        if self._start_on_enter:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.stopping.set_result, None)  # type: ignore[union-attr]
            self._thread.join(10)
        else:
            self._loop.close()


class ThreadServer(LoopThread):
    """A websockets asyncio server running in its own thread and event loop.

    It counts handshakes that reached the handler, so tests can bound reconnect rates.
    """

    def __init__(
        self,
        handler: Handler = echo,
        *,
        process_request: ProcessRequest | None = None,
        port: int | None = None,
        start: bool = True,
        **options: Any,
    ) -> None:
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.connections = 0
        self.received: list[str | bytes] = []
        self._handler = handler
        self._process_request = process_request
        self._options = options
        super().__init__(start=start)

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        await self._handler(ws)

    async def serve(self) -> None:
        async with serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._process_request,
            compression=None,
            **self._options,
        ):
            self.ready.set()
            await self.stopping  # type: ignore[misc]


class ProcessServer:
    """The echo server in a subprocess, so a test can kill it (by pid) and restart it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ECHO_SERVER), str(self.port)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the server prints "ready" once listening
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"echo server did not start: {line!r}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> ProcessServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` from a synchronous context; for set-up only, never for asserts."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)
