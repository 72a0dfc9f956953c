"""The server helper: a websockets server that reports its own event-loop lag.

``resilient_ws.serve()`` wraps websockets' asyncio or trio server (whichever the running
event loop is) and adds, for every connection:

- lag beacons: unsolicited pongs carrying the server's loop lag (see ``_protocol``), which
  resilient_ws clients use to tell a slow server from a dead link and other clients ignore;
- a stall-aware keepalive: the same adaptive probing and verdicts as the client's, so after
  the server's own loop was frozen it blames itself, not clients whose pongs sat unread in
  its buffer;

and, for the whole server, a :class:`~resilient_ws.LoopLagMonitor` and a
:class:`~resilient_ws.StallWatchdog` that logs ``resilient_ws.loop_stalled`` naming the code
that blocked the loop.

The handler gets websockets' own connection object (``ServerConnection`` of
``websockets.asyncio.server`` or ``websockets.trio.server``).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from . import _backend
from ._keepalive import LinkKeepalive
from ._lag import LoopLagMonitor, StallWatchdog
from ._protocol import Beacon, encode_beacon
from .config import Keepalive

__all__ = ["Server", "serve"]

Handler = Callable[[Any], Awaitable[None]]


class Server:
    """A running server; create it with :func:`serve` and use it with ``async with``.

    Attributes:
        monitor: The server's :class:`~resilient_ws.LoopLagMonitor`.
        watchdog: Its :class:`~resilient_ws.StallWatchdog`, or ``None`` when disabled.
        port: The TCP port it listens on (useful with ``port=0``).
    """

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        keepalive: Keepalive | None,
        beacon_interval: float | None,
        stall_threshold: float | None,
        options: dict[str, Any],
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._beacon_interval = beacon_interval
        self._options = options
        self.monitor = LoopLagMonitor()
        self.watchdog = None if stall_threshold is None else StallWatchdog(stall_threshold)
        self.port = port
        self._ws_server: Any = None
        self._tasks: anyio.abc.TaskGroup

    async def __aenter__(self) -> Server:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        try:
            await self._tasks.start(self._run_monitors)
            self._ws_server = await self._start()
        except BaseException:
            self._tasks.cancel_scope.cancel()
            await self._tasks.__aexit__(None, None, None)
            raise
        self.port = _listening_port(self._ws_server)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.aclose()
        return await self._tasks.__aexit__(exc_type, exc, traceback)

    async def aclose(self) -> None:
        """Stop accepting, close every connection (code 1001) and stop the monitors."""
        server, self._ws_server = self._ws_server, None
        if server is not None:
            if _backend.is_trio():
                await server.aclose()
            else:
                server.close()
                await server.wait_closed()
        self._tasks.cancel_scope.cancel()

    async def serve_forever(self) -> None:
        """Wait until the server is closed (or the caller is cancelled)."""
        await anyio.sleep_forever()

    async def _run_monitors(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.monitor.run)
            if self.watchdog is not None:
                tasks.start_soon(self.watchdog.run)
            task_status.started()

    async def _start(self) -> Any:
        options = {
            **self._options,
            "create_connection": _backend.connection_class("server", _backend.is_trio()),
        }
        if self._keepalive is not None:
            options.update(ping_interval=None, ping_timeout=None)
        if _backend.is_trio():
            from websockets.trio.server import serve as trio_serve

            start = functools.partial(trio_serve, self._handle, self._port, host=self._host)
            return await self._tasks.start(functools.partial(start, **options))
        from websockets.asyncio.server import serve as asyncio_serve

        return await asyncio_serve(self._handle, self._host, self._port, **options)

    async def _handle(self, connection: Any) -> None:
        async with anyio.create_task_group() as tasks:
            if self._beacon_interval is not None:
                tasks.start_soon(self._send_beacons, connection, self._beacon_interval)
            if self._keepalive is not None:
                keepalive = LinkKeepalive(
                    connection,
                    self._keepalive,
                    url=f"peer:{connection.remote_address}",
                    connection_id=secrets.token_hex(4),
                    emit=lambda event: None,
                    monitor=self.monitor,
                )
                tasks.start_soon(keepalive.run)
            try:
                await self._handler(connection)
            finally:
                tasks.cancel_scope.cancel()

    async def _send_beacons(self, connection: Any, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            last = None if self.watchdog is None else self.watchdog.last_stall
            beacon = Beacon(
                lag=self.monitor.current,
                max_lag=self.monitor.max,
                stall=0.0 if last is None else last.duration,
            )
            try:
                await connection.pong(encode_beacon(beacon))
            except _backend.ConnectionClosed:
                return


def _listening_port(server: Any) -> int:
    """The port of the first listening socket (asyncio ``sockets``, trio ``listeners``)."""
    sockets = getattr(server, "sockets", None)
    if sockets is None:
        sockets = [listener.socket for listener in server.listeners]
    return int(sockets[0].getsockname()[1])


def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    keepalive: Keepalive | None = Keepalive(),
    beacon_interval: float | None = 1.0,
    stall_threshold: float | None = 1.0,
    compression: str | None = None,
    **websockets_options: Any,
) -> Server:
    """Create a :class:`Server`; use it with ``async with``.

    Example::

        async def echo(ws):
            async for message in ws:
                await ws.send(message)

        async with resilient_ws.serve(echo, "127.0.0.1", 8765) as server:
            await server.serve_forever()

    Args:
        handler: ``async def handler(connection)``, run for each connection.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see :attr:`Server.port`).
        keepalive: The server's probing of its clients, stall-aware; ``None`` leaves
            websockets' fixed ``ping_interval``/``ping_timeout`` in charge.
        beacon_interval: Seconds between lag beacons to each client; ``None`` disables them.
        stall_threshold: Loop lag, in seconds, that the :class:`~resilient_ws.StallWatchdog`
            reports as a stall; ``None`` disables the watchdog (it is process-wide: only one
            may run).
        compression: ``None`` (default) or ``"deflate"``.
        **websockets_options: Passed to websockets' ``serve``.
    """
    if keepalive is not None and {"ping_interval", "ping_timeout"} & websockets_options.keys():
        raise TypeError("ping_interval/ping_timeout conflict with keepalive=; pass keepalive=None")
    return Server(
        handler,
        host,
        port,
        keepalive=keepalive,
        beacon_interval=beacon_interval,
        stall_threshold=stall_threshold,
        options={"compression": compression, **websockets_options},
    )
