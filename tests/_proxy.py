"""A TCP proxy on 127.0.0.1 that delays each direction, for fault tests (tc netem is not
available here).

It runs in its own thread with its own asyncio event loop, so it keeps forwarding while the
test's event loop is blocked: a pong can reach the client's kernel buffer while the client's
loop is stuck, which is the case the client must not blame on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from _servers import LoopThread, free_port

# Read size per chunk; the proxy does not care about message boundaries.
_CHUNK = 65536


@dataclass
class Direction:
    """What one direction of the proxy has carried, over all its connections.

    Times are ``time.monotonic()``; read them from any thread.

    Attributes:
        delay: One-way delay added to every chunk, in seconds.
        chunks: Chunks read from the sender.
        read_at: When the last chunk was read from the sender (0.0: none yet).
        written_at: When the last chunk was handed to the receiver (0.0: none yet).
    """

    delay: float
    chunks: int = 0
    read_at: float = 0.0
    written_at: float = 0.0

    @property
    def in_flight(self) -> bool:
        """Whether a chunk was read after the last one was delivered: one is in the delay line."""
        return self.read_at > self.written_at


class DelayProxy(LoopThread):
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` with a one-way delay per direction.

    ``up`` is client to server, ``down`` server to client. Each direction keeps the order of
    its bytes and delays each chunk by a fixed amount from when it was read; the buffer in
    between is unbounded, which is fine for the small exchanges the tests send through it.
    """

    def __init__(self, target: int, *, up_delay: float = 0.0, down_delay: float = 0.0) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.up = Direction(up_delay)
        self.down = Direction(down_delay)
        self._tasks: set[asyncio.Task[None]] = set()
        super().__init__()

    async def serve(self) -> None:
        server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.ready.set()
        try:
            await self.stopping  # type: ignore[misc]
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def _spawn(self, coroutine: object) -> None:
        task = self._loop.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.close()
            return
        self._spawn(self._connection(client_r, client_w, server_r, server_w))

    async def _connection(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        pipes = [
            self._loop.create_task(self._pipe(client_r, server_w, self.up)),
            self._loop.create_task(self._pipe(server_r, client_w, self.down)),
        ]
        try:
            # Both directions end on EOF; a reset on either side ends the connection.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``direction.delay`` s after it was read."""
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                await asyncio.sleep(max(0.0, due - self._loop.time()))
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                direction.written_at = time.monotonic()

        delivery = self._loop.create_task(deliver())
        try:
            while data := await reader.read(_CHUNK):
                direction.chunks += 1
                direction.read_at = time.monotonic()
                line.put_nowait((self._loop.time() + direction.delay, data))
            line.put_nowait((self._loop.time() + direction.delay, b""))  # EOF, delayed too
            await delivery
        finally:
            delivery.cancel()
            await asyncio.gather(delivery, return_exceptions=True)
