"""Timeouts, cancellation and exceptions around the public context managers, on both backends.

The matrix: a cancellation (``move_on_after``, ``fail_after``, or the cancel of an
enclosing task group) reaching ``async with connect()`` before the first link (in the
opening handshake, in the backoff sleep), inside the body, and while it closes (leaving the
block, or an explicit ``close()``). Each case must end by the caller's own scope catching
the cancellation (no ``RuntimeError`` about cancel scopes, no ``TrioInternalError``), leave no
task running, leave the caller's later timeouts working, and end promptly: well before
websockets' 5-10 s closing timeouts (``PROMPT``, a ``fail_after`` around the case).

Then exceptions: what the body raises comes out as itself, the library's fatal errors as the
documented classes, and a bug in a background task as itself, never in an ExceptionGroup.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import sniffio
from _servers import ProcessServer, ThreadServer
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

import resilient_ws
from resilient_ws import LoopLagMonitor, State
from resilient_ws._io.clientlinks import ClientLinks

pytestmark = pytest.mark.anyio

# The longest a cancelled case may take, set-up included: below websockets' closing
# timeouts (resilient_ws waits 5 s for websockets to close a link it leaves, and websockets
# 10 s for a closing handshake), which a case that waited for a silent peer would reach.
PROMPT = 4.0
# RFC 6455 section 1.3.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLOSE_OPCODE = 0x8

KINDS = ["move_on_after", "fail_after", "group_cancel"]


# ---- servers that misbehave exactly where a case needs them to ---------------------------


class SilentServer:
    """A TCP server in a thread that accepts connections and then never answers
    (``handshake=False``: the opening handshake hangs), or completes the opening handshake
    and then reads and ignores every frame (``handshake=True``: a close is never answered).

    It records the opcode of every frame it receives, so a test knows when the client has
    sent its close frame.
    """

    def __init__(self, *, handshake: bool) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.accepted = 0
        self.opcodes: list[int] = []
        self._handshake = handshake
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._connections: list[socket.socket] = []

    def __enter__(self) -> SilentServer:
        self._threads[0].start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(5)
        for connection in self._connections:
            connection.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._connections.append(connection)
            self.accepted += 1
            if self._handshake:
                thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _read(self, connection: socket.socket) -> bytes | None:
        """Some bytes, ``b""`` at EOF, ``None`` when stopping."""
        while not self._stop.is_set():
            try:
                return connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return None

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(0.05)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self._read(connection)
            if not chunk:
                return
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        connection.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while True:
            data = self._parse_frames(data)
            chunk = self._read(connection)
            if not chunk:
                return
            data += chunk

    def _parse_frames(self, data: bytes) -> bytes:
        """Record the opcodes of the complete (masked, client-to-server) frames in ``data``;
        return what is left of it."""
        while len(data) >= 2:
            length, offset = data[1] & 0x7F, 2
            if length == 126:
                if len(data) < 4:
                    break
                length, offset = int.from_bytes(data[2:4], "big"), 4
            elif length == 127:
                if len(data) < 10:
                    break
                length, offset = int.from_bytes(data[2:10], "big"), 10
            end = offset + 4 + length  # the mask, then the payload
            if len(data) < end:
                break
            self.opcodes.append(data[0] & 0x0F)
            data = data[end:]
        return data


def refuse_with_retry_after(connection: ServerConnection, request: Request) -> Response:
    """503 with ``Retry-After: 60``: the client's next attempt is a minute away."""
    response = connection.respond(503, "busy\n")
    response.headers["Retry-After"] = "60"
    return response


async def close_1008(ws: ServerConnection) -> None:
    await ws.close(1008, "policy violation")


# ---- checking a cancellation -------------------------------------------------------------


def running_tasks() -> set[object]:
    """Every task of the running event loop (asyncio), or of trio's task tree."""
    if sniffio.current_async_library() == "trio":
        import trio

        tasks: set[object] = set()
        pending = [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            if task is None:
                continue
            tasks.add(task)
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return tasks
    return set(asyncio.all_tasks())


def cancel_requests() -> int:
    """asyncio: the current task's pending cancellation requests (anyio's cancel scopes
    must leave them balanced); trio has no such count."""
    if sniffio.current_async_library() == "trio":
        return 0
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition set by a server thread or a log entry, which cannot set an
    anyio.Event (the case's PROMPT bounds the wait)."""
    while not predicate():  # noqa: ASYNC110
        await anyio.sleep(0.005)


async def cancel_when(
    kind: str, reached: Callable[[], Awaitable[None]], action: Callable[[], Awaitable[Any]]
) -> None:
    """Run ``action``; once ``reached()`` returns, cancel it as ``kind`` says, and check
    that the caller's scope is the one that caught the cancellation."""
    if kind == "group_cancel":
        outcome: list[str] = []

        async def victim() -> None:
            try:
                await action()
            except anyio.get_cancelled_exc_class():
                outcome.append("cancelled")
                raise
            outcome.append("returned")

        async with anyio.create_task_group() as group:
            group.start_soon(victim)
            await reached()
            group.cancel_scope.cancel()
        assert outcome == ["cancelled"]
        assert group.cancel_scope.cancelled_caught
        return

    async def expire(scope: anyio.CancelScope) -> None:
        await reached()
        scope.deadline = anyio.current_time()  # as if the timeout had run out now

    async def until_deadline(helpers: anyio.abc.TaskGroup) -> None:
        with anyio.fail_after(None) as scope:
            helpers.start_soon(expire, scope)
            await action()
            pytest.fail("the action was not cancelled")

    async with anyio.create_task_group() as helpers:
        if kind == "move_on_after":
            with anyio.move_on_after(None) as scope:
                helpers.start_soon(expire, scope)
                await action()
                pytest.fail("the action was not cancelled")
            assert scope.cancelled_caught
        else:
            with pytest.raises(TimeoutError):
                await until_deadline(helpers)


async def check_clean_cancellation(
    kind: str, reached: Callable[[], Awaitable[None]], action: Callable[[], Awaitable[Any]]
) -> None:
    """The whole contract of one case: caught by the caller's scope, promptly, no task
    left behind, the caller's cancel-scope bookkeeping intact."""
    before, requests = running_tasks(), cancel_requests()
    with anyio.fail_after(PROMPT):
        await cancel_when(kind, reached, action)
        # A shielded wait past PROMPT shows up here, as fail_after's TimeoutError.
        await anyio.lowlevel.checkpoint()
    assert running_tasks() <= before
    assert cancel_requests() == requests
    # The caller's scopes still work.
    with anyio.move_on_after(0.01) as later:
        await anyio.sleep_forever()
    assert later.cancelled_caught


# ---- the matrix ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_during_the_opening_handshake(kind: str) -> None:
    with SilentServer(handshake=False) as server:

        async def action() -> None:
            async with resilient_ws.connect(server.url):
                pytest.fail("the handshake cannot complete")

        await check_clean_cancellation(kind, lambda: until(lambda: server.accepted > 0), action)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_during_backoff(kind: str) -> None:
    with ThreadServer(process_request=refuse_with_retry_after) as server, capture_logs() as logs:

        def scheduled() -> bool:
            return any(entry["event"] == "resilient_ws.reconnect_scheduled" for entry in logs)

        async def action() -> None:
            async with resilient_ws.connect(server.url):
                pytest.fail("the server refuses every attempt")

        await check_clean_cancellation(kind, lambda: until(scheduled), action)
    delays = [entry["delay"] for entry in logs if entry["event"].endswith("reconnect_scheduled")]
    assert delays
    assert delays[0] >= 60  # the cancellation reached the backoff sleep


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_before_any_server_listens(kind: str) -> None:
    """The issue's report: a timeout around connect() to a closed port."""
    with capture_logs() as logs:

        def failed_twice() -> bool:
            return sum(entry["event"].endswith("connect_failed") for entry in logs) >= 2

        async def action() -> None:
            async with resilient_ws.connect("ws://127.0.0.1:1/"):
                pytest.fail("nothing listens on port 1")

        await check_clean_cancellation(kind, lambda: until(failed_twice), action)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_in_the_body(kind: str) -> None:
    with ThreadServer() as server:
        receiving = anyio.Event()
        connection: list[resilient_ws.Connection] = []

        async def action() -> None:
            async with resilient_ws.connect(server.url) as ws:
                connection.append(ws)
                await ws.send("ping")
                assert await ws.recv() == "ping"
                receiving.set()
                async for _ in ws:
                    pytest.fail("the server sends nothing more")

        await check_clean_cancellation(kind, receiving.wait, action)
        assert connection[0].state is State.CLOSED


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_while_leaving_the_block(kind: str) -> None:
    """The server never answers the closing handshake; the caller's timeout ends the wait."""
    with SilentServer(handshake=True) as server:
        connection: list[resilient_ws.Connection] = []

        async def action() -> None:
            async with resilient_ws.connect(server.url) as ws:
                connection.append(ws)
            pytest.fail("the server never completes the closing handshake")

        await check_clean_cancellation(
            kind, lambda: until(lambda: _CLOSE_OPCODE in server.opcodes), action
        )
        assert connection[0].state is State.CLOSED


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_in_close(kind: str) -> None:
    with SilentServer(handshake=True) as server:
        connection: list[resilient_ws.Connection] = []

        async def action() -> None:
            async with resilient_ws.connect(server.url) as ws:
                connection.append(ws)
                await ws.close()
                pytest.fail("the server never completes the closing handshake")

        await check_clean_cancellation(
            kind, lambda: until(lambda: _CLOSE_OPCODE in server.opcodes), action
        )
        ws = connection[0]
        assert ws.state is State.CLOSED
        with pytest.raises(resilient_ws.ConnectionClosedOK):
            await ws.send("after close")


@pytest.mark.parametrize("kind", KINDS)
async def test_serve_cancelled_with_a_client_connected(kind: str) -> None:
    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    answered = anyio.Event()

    async def client(url: str) -> None:
        async with resilient_ws.connect(url) as ws:
            await ws.send("hello")
            await ws.recv()
            answered.set()
            await anyio.sleep_forever()

    async def action() -> None:
        async with resilient_ws.serve(echo, "127.0.0.1", 0) as server:
            helpers.start_soon(client, f"ws://127.0.0.1:{server.port}/")
            await server.serve_forever()

    async with anyio.create_task_group() as helpers:
        await check_clean_cancellation_without_leak_check(kind, answered.wait, action)
        helpers.cancel_scope.cancel()


async def check_clean_cancellation_without_leak_check(
    kind: str, reached: Callable[[], Awaitable[None]], action: Callable[[], Awaitable[Any]]
) -> None:
    """For cases whose helpers outlive the action (a client of a server under test)."""
    requests = cancel_requests()
    with anyio.fail_after(PROMPT):
        await cancel_when(kind, reached, action)
        await anyio.lowlevel.checkpoint()
    assert cancel_requests() == requests


class Stubborn:
    """A handler that ignores the end of its session; counts how its runs ended."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = 0

    async def __call__(self, session: resilient_ws.ServerSession) -> None:
        self.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


async def plain_client(url: str) -> None:
    """A client without the replay protocol: serve() runs its handler per connection."""
    async with resilient_ws.connect(url, replay=None):
        await anyio.sleep_forever()


async def replay_client(url: str) -> None:
    async with resilient_ws.connect(url):
        await anyio.sleep_forever()


@pytest.mark.parametrize("replay", [True, False], ids=["replay", "plain"])
async def test_serve_exits_though_a_handler_ignores_its_end(replay: bool) -> None:
    """Leaving ``async with serve()`` closes the links, gives handlers a grace period
    (5 s), then cancels them: a stubborn handler does not hold the server for ever."""
    handler = Stubborn()
    client = replay_client if replay else plain_client
    async with anyio.create_task_group() as clients:
        with anyio.fail_after(5.0 + PROMPT):
            async with resilient_ws.serve(handler, "127.0.0.1", 0) as server:
                clients.start_soon(client, f"ws://127.0.0.1:{server.port}/")
                await handler.started.wait()
        clients.cancel_scope.cancel()
    assert handler.cancelled == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_serve_cancelled_with_a_stubborn_handler(kind: str) -> None:
    """Left on a cancellation, serve() cancels its handlers at once: no grace period."""
    handler = Stubborn()

    async def action() -> None:
        async with resilient_ws.serve(handler, "127.0.0.1", 0) as server:
            helpers.start_soon(plain_client, f"ws://127.0.0.1:{server.port}/")
            await server.serve_forever()

    async with anyio.create_task_group() as helpers:
        await check_clean_cancellation_without_leak_check(kind, handler.started.wait, action)
        helpers.cancel_scope.cancel()
    assert handler.cancelled == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_lag_monitor_cancelled(kind: str) -> None:
    started = anyio.Event()

    async def action() -> None:
        async with LoopLagMonitor():
            started.set()
            await anyio.sleep_forever()

    await check_clean_cancellation(kind, started.wait, action)


# ---- exceptions --------------------------------------------------------------------------


class BodyError(Exception):
    pass


async def test_body_exception_propagates_as_itself() -> None:
    connection: list[resilient_ws.Connection] = []

    async def body(url: str) -> None:
        async with resilient_ws.connect(url) as ws:
            connection.append(ws)
            await ws.send("ping")
            assert await ws.recv() == "ping"
            raise BodyError("from the body")

    with ThreadServer() as server, anyio.fail_after(PROMPT), pytest.raises(BodyError) as raised:
        await body(server.url)
    assert type(raised.value) is BodyError
    assert connection[0].state is State.CLOSED


async def test_body_exception_while_reconnecting_propagates_as_itself() -> None:
    connection: list[resilient_ws.Connection] = []

    async def body(server: ProcessServer) -> None:
        async with resilient_ws.connect(server.url) as ws:
            connection.append(ws)
            server.kill()  # the server goes away for good
            async for event in ws.events():
                if isinstance(event, resilient_ws.Reconnecting):
                    raise BodyError("while reconnecting")

    with (
        ProcessServer() as server,
        anyio.fail_after(PROMPT),
        pytest.raises(BodyError) as raised,
    ):
        await body(server)
    assert type(raised.value) is BodyError
    assert connection[0].state is State.CLOSED


async def test_fatal_close_raises_connection_failed() -> None:
    """Close 1008 is fatal: recv() in the body raises ConnectionFailed, bare."""
    with ThreadServer(close_1008) as server:
        try:
            with anyio.fail_after(PROMPT):
                async with resilient_ws.connect(server.url) as ws:
                    async for _ in ws:
                        pytest.fail("the server sends nothing")
        except resilient_ws.ConnectionFailed as exc:
            failed = exc
        else:
            pytest.fail("ConnectionFailed was not raised")
    assert type(failed) is resilient_ws.ConnectionFailed
    assert isinstance(failed.cause, resilient_ws.LinkClosed)
    assert failed.cause.code == 1008


async def test_fatal_handshake_raises_connection_failed_from_connect() -> None:
    def forbid(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(403, "no\n")

    async def body(url: str) -> None:
        async with resilient_ws.connect(url):
            pytest.fail("the server forbids the handshake")

    with (
        ThreadServer(process_request=forbid) as server,
        anyio.fail_after(PROMPT),
        pytest.raises(resilient_ws.ConnectionFailed) as raised,
    ):
        await body(server.url)
    assert isinstance(raised.value.cause, resilient_ws.HandshakeRejected)
    assert raised.value.cause.status == 403


async def test_serve_body_exception_propagates_as_itself() -> None:
    async def handler(session: resilient_ws.ServerSession) -> None:
        await anyio.sleep_forever()

    async def body() -> None:
        async with resilient_ws.serve(handler, "127.0.0.1", 0):
            raise BodyError("from the server's body")

    with anyio.fail_after(PROMPT), pytest.raises(BodyError) as raised:
        await body()
    assert type(raised.value) is BodyError


async def test_lag_monitor_body_exception_propagates_as_itself() -> None:
    async def body() -> None:
        async with LoopLagMonitor():
            raise BodyError("from the monitor's body")

    with anyio.fail_after(PROMPT), pytest.raises(BodyError) as raised:
        await body()
    assert type(raised.value) is BodyError


@contextmanager
def broken_link_setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the connection's link set-up (run by its background supervisor task) crash: a
    stand-in for a bug in the library."""

    async def crash(self: object, raw: object) -> bool:
        raise RuntimeError("a bug in a background task")

    monkeypatch.setattr(ClientLinks, "begin", crash)
    yield


async def test_a_bug_in_a_background_task_surfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(url: str) -> None:
        async with resilient_ws.connect(url):
            await anyio.sleep_forever()

    with (
        ThreadServer() as server,
        broken_link_setup(monkeypatch),
        anyio.fail_after(PROMPT),
        pytest.raises(RuntimeError, match="a bug") as raised,
    ):
        await body(server.url)
    assert type(raised.value) is RuntimeError
