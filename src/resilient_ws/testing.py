"""Helpers for your own tests: a fault-injecting TCP proxy.

Put :class:`FaultProxy` between your client and your server on 127.0.0.1 and break the
network from the test::

    with FaultProxy(server_port) as proxy:
        async with resilient_ws.connect(proxy.url) as ws:
            proxy.delay(down=0.2)  # slow link
            proxy.blackhole()  # dead link: nothing gets through, nothing is closed
            proxy.restore()
            proxy.reset()  # every connection aborted with a TCP RST
            proxy.stop()  # the proxy "process" is gone: connections dropped, new ones refused
            proxy.start()  # back on the same port

The proxy runs in a thread with its own asyncio event loop, so it keeps forwarding while the
test's event loop is blocked, and it works under any event loop the test uses (asyncio or trio).
Every fault method is thread-safe, takes effect before it returns, and must not be called from
the proxy's own thread.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

_T = TypeVar("_T")

_HOST = "127.0.0.1"
# Bytes a direction holds (its queue plus the receiver's transport buffer) before the proxy
# stops reading from the sender: a blackholed or slow direction stays bounded.
_DEFAULT_BUFFER = 1 << 20
# How long a fault method waits for the proxy's thread before giving up.
_CALL_TIMEOUT = 10.0
_EOF = b""


class _Pipe:
    """One direction of one proxied connection: a bounded, delayed, pausable queue."""

    def __init__(self, link: _Link, upstream: bool) -> None:
        self._link = link
        self._proxy = link.proxy
        self._upstream = upstream
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._sink_full = False
        self._timer: asyncio.TimerHandle | None = None
        self.eof_sent = False

    def push(self, data: bytes) -> None:
        """Queue bytes read from the source (``b""`` for EOF), due after the delay."""
        loop = self._proxy._loop
        delay = self._proxy._up_delay if self._upstream else self._proxy._down_delay
        self._queue.append((loop.time() + delay, data))
        self._queued += len(data)
        if self._queued > self._proxy._buffer_size and self.source is not None:
            self.source.pause_reading()
        self.flush()

    def sink_paused(self, paused: bool) -> None:
        self._sink_full = paused
        if not paused:
            self.flush()

    def flush(self) -> None:
        """Hand every due chunk to the sink, unless blackholed or the sink is full."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = self._proxy._loop
        while self._queue and self.sink is not None and not self._sink_full:
            if self._proxy._blackholed:
                return
            due, data = self._queue[0]
            if due > loop.time():
                self._timer = loop.call_at(due, self.flush)
                return
            self._queue.popleft()
            self._queued -= len(data)
            self._deliver(data)
        if self.source is not None and self._queued <= self._proxy._buffer_size // 2:
            self.source.resume_reading()

    def _deliver(self, data: bytes) -> None:
        assert self.sink is not None
        if data:
            # Counted first: the write may reach the other end, and another thread read
            # it there, before this thread would get to count it.
            self._proxy._count(self._upstream, len(data))
            self.sink.write(data)
            return
        self.eof_sent = True
        if self.sink.can_write_eof():
            self.sink.write_eof()
        self._link.maybe_finish()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._queued = 0


class _Side(asyncio.Protocol):
    """The protocol of one socket of a proxied connection (client-facing or server-facing)."""

    def __init__(self, link: _Link, inbound: _Pipe, outbound: _Pipe) -> None:
        self._link = link
        self._inbound = inbound  # what this socket reads
        self._outbound = outbound  # what this socket writes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._inbound.source = transport
        self._outbound.sink = transport
        transport.set_write_buffer_limits(high=self._link.proxy._buffer_size)
        self._link.made(self, transport)
        self._outbound.flush()

    def data_received(self, data: bytes) -> None:
        self._inbound.push(data)

    def eof_received(self) -> bool:
        self._inbound.push(_EOF)
        return True  # keep the other half open: TCP half-close is forwarded as such

    def pause_writing(self) -> None:
        self._outbound.sink_paused(True)

    def resume_writing(self) -> None:
        self._outbound.sink_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.lost(exc)


class _Link:
    """One proxied connection: the client's socket, the server's socket, two pipes."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.up = _Pipe(self, upstream=True)
        self.down = _Pipe(self, upstream=False)
        self.client = _Side(self, inbound=self.up, outbound=self.down)
        self.server = _Side(self, inbound=self.down, outbound=self.up)
        self._transports: list[asyncio.Transport] = []
        self._done = False

    def made(self, side: _Side, transport: asyncio.Transport) -> None:
        if self._done:  # reset or stopped between accept() and connection_made()
            transport.abort()
            return
        self._transports.append(transport)
        if side is self.client:
            self.proxy._spawn(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        """Open the server-facing socket; the client's bytes wait in the up pipe meanwhile."""
        try:
            transport, _ = await self.proxy._loop.create_connection(
                lambda: self.server, _HOST, self.proxy.target_port
            )
        except OSError:
            self.abort(rst=True)  # the backend refused: so does the proxy
            return
        if self._done:
            transport.abort()

    def maybe_finish(self) -> None:
        """Close both sockets once each direction has forwarded its EOF."""
        if self.up.eof_sent and self.down.eof_sent:
            self.close()

    def lost(self, exc: Exception | None) -> None:
        # One socket is gone: a reset is passed on as a reset, a close as a close.
        if exc is not None:
            self.abort(rst=True)
        else:
            self.close()

    def close(self) -> None:
        """Close both sockets after the bytes their transports already hold."""
        if self._finish():
            for transport in self._transports:
                transport.close()

    def abort(self, *, rst: bool) -> None:
        """Close both sockets now, discarding what is buffered.

        Args:
            rst: Send a TCP RST (SO_LINGER 0). Otherwise the kernel closes as it does when a
                process dies: a FIN, or an RST if unread data remains.
        """
        if not self._finish():
            return
        for transport in self._transports:
            if rst:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    def _finish(self) -> bool:
        """Mark the link done, once; ``False`` if it already was."""
        if self._done:
            return False
        self._done = True
        self.proxy._links.discard(self)
        self.up.close()
        self.down.close()
        return True


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose faults the test controls.

    It forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` in a thread of its own, with
    its own asyncio event loop. Use it as a context manager; the proxy listens between enter
    and exit.

    Each direction holds at most ``buffer_size`` bytes in flight (queued for a delay or a
    blackhole, or waiting for a slow receiver); beyond that it stops reading from the sender,
    so TCP flow control pushes back instead of memory growing.

    Attributes:
        target_port: The port of the server on 127.0.0.1.
        connections: Connections accepted so far.
        bytes_up: Bytes forwarded from clients to the server so far.
        bytes_down: Bytes forwarded from the server to clients so far.

    Args:
        target_port: The port of the server on 127.0.0.1.
        port: The port to listen on; 0 picks a free one (see :attr:`port`).
        buffer_size: Bytes in flight per direction of each connection before the proxy stops
            reading from the sender.
    """

    _loop: asyncio.AbstractEventLoop  # set by __enter__

    def __init__(
        self, target_port: int, *, port: int = 0, buffer_size: int = _DEFAULT_BUFFER
    ) -> None:
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, not {buffer_size}")
        self.target_port = target_port
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._port = port
        self._buffer_size = buffer_size
        self._up_delay = 0.0
        self._down_delay = 0.0
        self._blackholed = False
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: set[asyncio.Task[Any]] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (also while stopped: :meth:`start` reuses it)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/``, for a WebSocket client."""
        return f"ws://{_HOST}:{self._port}/"

    @property
    def active(self) -> int:
        """Connections open right now."""
        return len(self._links)

    def __enter__(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("a FaultProxy can be entered only once")
        # A selector loop on every platform: the accept loop uses add_reader().
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name="FaultProxy", daemon=True)
        self._thread.start()
        try:
            self.start()
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        assert self._thread is not None
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_TIMEOUT)

    def _run(self) -> None:
        """The proxy's thread: run the loop, then clean up as :func:`asyncio.run` does."""
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # asyncio's own accept tasks may hold a socket accepted just before stop(): let
            # them finish (_accept drops it), since cancelling one before its first step
            # would leak the socket.
            if tasks := asyncio.all_tasks(loop):
                loop.run_until_complete(asyncio.wait(tasks, timeout=_CALL_TIMEOUT))
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            # Closed transports release their sockets in callbacks of the next iteration.
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def start(self) -> None:
        """Listen again, on the same port; a no-op while listening.

        Raises:
            OSError: The port could not be bound (another process took it meanwhile).
        """
        self._call(self._start())

    def stop(self) -> None:
        """Stop listening and drop every connection, as if the proxy process was killed.

        New connections are refused until :meth:`start`. Current ones are closed the way
        the kernel closes a dead process's sockets: a FIN, or an RST where unread data
        remains. Buffered bytes are discarded.
        """
        self._call(self._stop())

    # The proxy accepts by itself rather than with loop.create_server(): on Python 3.11,
    # a connection accepted just before Server.close() leaks its socket.

    async def _start(self) -> None:
        if self._listener is not None:
            return
        listener = socket.create_server((_HOST, self._port))  # SO_REUSEADDR on POSIX
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        self._loop.add_reader(listener.fileno(), self._on_acceptable, listener)
        self._listener = listener

    async def _stop(self) -> None:
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for link in list(self._links):
            link.abort(rst=False)
        for task in list(self._tasks):
            task.cancel()
        # Not cancelled: each owns an accepted socket, which _accept() now drops.
        await asyncio.gather(*self._tasks, *self._accepting, return_exceptions=True)

    def _on_acceptable(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # that client is gone already
                continue
            except OSError:  # out of descriptors, say: try again when readable again
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._accept, conn))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    # ---- faults ----------------------------------------------------------------------------

    def delay(self, *, up: float = 0.0, down: float = 0.0) -> None:
        """Set the one-way delays; ``delay()`` removes them.

        Each chunk is held for the delay from when the proxy read it, in order. Bytes already
        held keep the delay they were read with.

        Args:
            up: Seconds added from client to server.
            down: Seconds added from server to client.

        Raises:
            ValueError: A delay is negative.
        """
        if up < 0 or down < 0:
            raise ValueError(f"delays must not be negative: up={up}, down={down}")

        async def apply() -> None:
            self._up_delay = up
            self._down_delay = down

        self._call(apply())

    def blackhole(self) -> None:
        """Stop forwarding in both directions, closing nothing: a dead network.

        Bytes sent meanwhile are held (up to ``buffer_size`` per direction, then the proxy
        stops reading) and delivered after :meth:`restore`, as TCP would retransmit them.
        New connections are accepted but carry nothing either.

        The proxy terminates TCP: the client's kernel sees its bytes acknowledged by the
        proxy, so the client's TCP evidence (TCP_INFO) speaks for the proxy, not for the
        network behind it. A blackholed proxy looks like a stalled server, not a dead link.
        """

        async def apply() -> None:
            self._blackholed = True

        self._call(apply())

    def restore(self) -> None:
        """Forward again after :meth:`blackhole`, held bytes first."""

        async def apply() -> None:
            self._blackholed = False
            for link in list(self._links):
                link.up.flush()
                link.down.flush()

        self._call(apply())

    def reset(self) -> None:
        """Abort every current connection with a TCP RST (both sides); keep listening."""

        async def apply() -> None:
            for link in list(self._links):
                link.abort(rst=True)

        self._call(apply())

    # ---- internals -------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the proxy's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("FaultProxy methods must not be called from the proxy's thread")
        if self._thread is None or not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError("FaultProxy is not running; use it as a context manager")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CALL_TIMEOUT)

    def _accept(self) -> asyncio.Protocol:
        link = _Link(self)
        if self._listener is None:
            # Accepted before stop(): dropped like the others.
            link.abort(rst=False)
            return link.client
        self._links.add(link)
        self.connections += 1
        return link.client

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _count(self, upstream: bool, size: int) -> None:
        # Counters are written only by the proxy's thread; other threads just read them.
        if upstream:
            self.bytes_up += size
        else:
            self.bytes_down += size
