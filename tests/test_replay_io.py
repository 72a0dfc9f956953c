"""The replay protocol between connect() and serve(), and against bad or foreign peers.

Real servers on 127.0.0.1, both backends. Hand-made handshakes and control messages come
from websockets' own client and server, speaking the protocol (or breaking it) by hand.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from _helpers import (
    FAST,
    TIMEOUT,
    handshake_request,
    next_event,
    parse_response_head,
    raw_handshake,
)
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosed, InvalidStatus

import resilient_ws
from resilient_ws import ConnectionFailed, Replay, ServerSession
from resilient_ws._core.protocol import SUBPROTOCOL
from resilient_ws._core.sessions import MemorySessionStore
from resilient_ws._io.backend import is_trio
from resilient_ws.testing import FaultProxy

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def raw_connect(url: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[Any]:
    """websockets' own client offering the replay protocol, with hand-made headers."""
    if is_trio():
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect
    async with connect(
        url, subprotocols=[SUBPROTOCOL], additional_headers=dict(headers or {})
    ) as ws:  # type: ignore[arg-type]
        yield ws


class Echo:
    """An echo handler that records every session it served."""

    def __init__(self) -> None:
        self.sessions: list[ServerSession] = []
        self.errors: list[BaseException] = []

    async def __call__(self, session: ServerSession) -> None:
        self.sessions.append(session)
        try:
            async for message in session:
                await session.send(message)
        except resilient_ws.ConnectionClosed as exc:
            self.errors.append(exc)


def serve(handler: Any, **kwargs: Any) -> resilient_ws.Server:
    return resilient_ws.serve(handler, "127.0.0.1", 0, stall_threshold=None, **kwargs)


@asynccontextmanager
async def behind_proxy(
    handler: Any, **kwargs: Any
) -> AsyncIterator[tuple[resilient_ws.Server, FaultProxy]]:
    async with serve(handler, **kwargs) as server:
        with FaultProxy(server.port) as proxy:
            yield server, proxy


async def wait_until(condition: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110 - no event marks these conditions
            await anyio.sleep(0.01)


async def drain(ws: Any) -> None:
    """Read until the link closes."""
    with pytest.raises(ConnectionClosed):  # noqa: PT012 - read until it raises
        while True:  # bounded by the caller's fail_after
            await ws.recv()


def close_code(ws: Any) -> int | None:
    return ws.close_code  # type: ignore[no-any-return]


# ---- interop ---------------------------------------------------------------------------


async def test_resilient_client_and_serve_negotiate_a_session() -> None:
    echo = Echo()
    async with serve(echo) as server:
        async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            assert ws.stats.session_id is not None
            assert ws.stats.session_id == echo.sessions[0].id
            assert echo.sessions[0].replay
            assert len(server.sessions) == 1
        # A normal close ends the session: the server keeps nothing.
        await wait_until(lambda: len(server.sessions) == 0)


async def test_plain_websockets_client_gets_a_one_link_session() -> None:
    echo = Echo()
    async with serve(echo) as server:
        if is_trio():
            from websockets.trio.client import connect
        else:
            from websockets.asyncio.client import connect
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send("plain")
            assert await ws.recv() == "plain"
            assert ws.subprotocol is None
        await wait_until(lambda: echo.sessions and echo.sessions[0].ended)
        assert echo.sessions[0].id is None
        assert not echo.sessions[0].replay


async def test_resilient_client_against_a_plain_server_has_no_session() -> None:
    echo = Echo()
    async with (
        serve(echo, replay=None) as server,
        resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws,
    ):
        await ws.send("x")
        assert await ws.recv() == "x"
        assert ws.stats.session_id is None


async def test_a_resumed_session_loses_and_duplicates_nothing() -> None:
    echo = Echo()
    async with (
        behind_proxy(echo) as (_, proxy),
        resilient_ws.connect(proxy.url, backoff=FAST) as ws,
    ):
        events = ws.events()
        for i in range(50):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(50)] == [str(i) for i in range(50)]
        proxy.reset()
        await next_event(events, resilient_ws.Disconnected)
        resumed = await next_event(events, resilient_ws.Resumed)
        assert resumed.session_id == ws.stats.session_id
        for i in range(50, 100):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(50)] == [str(i) for i in range(50, 100)]
        assert len(echo.sessions) == 1  # the handler never saw the blip


# ---- bad input: control messages -----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"rws1 ack=abc", 4001),  # not a number
        (b"rws1 ack", 4001),  # no value
        (b"rws1 ack=1.5", 4001),  # not a whole number
        (b"rws1 ack=5", 4002),  # acks a message never sent
    ],
)
async def test_server_closes_on_a_bad_control_message(payload: bytes, code: int) -> None:
    echo = Echo()
    async with serve(echo) as server, raw_connect(f"ws://127.0.0.1:{server.port}/") as ws:
        assert ws.subprotocol == SUBPROTOCOL
        await ws.pong(payload)
        with anyio.fail_after(TIMEOUT):
            await drain(ws)
        assert close_code(ws) == code


async def test_ack_below_an_earlier_ack_is_out_of_range() -> None:
    async def sender(session: ServerSession) -> None:
        for i in range(3):
            await session.send(str(i))
        await anyio.sleep_forever()

    async with serve(sender) as server, raw_connect(f"ws://127.0.0.1:{server.port}/") as ws:
        for _ in range(3):
            await ws.recv()
        await ws.pong(b"rws1 ack=3")
        await ws.pong(b"rws1 ack=2")
        with anyio.fail_after(TIMEOUT), pytest.raises(ConnectionClosed):
            await ws.recv()
        assert close_code(ws) == 4002


async def test_client_closes_on_an_ack_for_a_message_never_sent() -> None:
    async def liar(session: ServerSession) -> None:
        async for _ in session:
            pass

    async with (
        serve(liar) as server,
        resilient_ws.connect(f"ws://127.0.0.1:{server.port}/", backoff=FAST) as ws,
    ):
        events = ws.events()
        await wait_until(lambda: len(server.sessions) == 1)
        # Reach into the server's session to send a forged ack on the live link.
        records = list(server.sessions._sessions.values())  # type: ignore[attr-defined]
        session = records[0].state
        await wait_until(lambda: session.connected)
        await session._raw.pong(b"rws1 ack=99")
        disconnected = await next_event(events, resilient_ws.Disconnected)
        assert isinstance(disconnected.cause, resilient_ws.LinkClosed)
        assert disconnected.cause.code == 4002
        await next_event(events, resilient_ws.Resumed)  # and it comes back


# ---- bad input: handshakes -----------------------------------------------------------------


async def session_of(ws: resilient_ws.Connection) -> tuple[str, str]:
    session = ws._core.session
    assert session is not None
    assert session.id is not None
    assert session._token is not None
    return session.id, session._token


@pytest.mark.parametrize(
    "headers",
    [
        {"RWS-Session": "abc", "RWS-Token": "t", "RWS-Received": "x", "RWS-Replay-From": "1"},
        {"RWS-Session": "abc", "RWS-Received": "0", "RWS-Replay-From": "1"},
        {"RWS-Session": "a b", "RWS-Token": "t", "RWS-Received": "0", "RWS-Replay-From": "1"},
        {"RWS-Session": "abc", "RWS-Token": "t", "RWS-Received": "0", "RWS-Replay-From": "0"},
    ],
)
async def test_malformed_resume_headers_get_400(headers: dict[str, str]) -> None:
    async with serve(Echo()) as server:
        with pytest.raises(InvalidStatus) as caught:
            async with raw_connect(f"ws://127.0.0.1:{server.port}/", headers):
                pass
        assert caught.value.response.status_code == 400


async def test_resume_numbers_out_of_range_get_400() -> None:
    async with serve(Echo()) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url) as ws:
            session_id, token = await session_of(ws)
            forged = {
                "RWS-Session": session_id,
                "RWS-Token": token,
                "RWS-Received": "5",  # the server sent nothing yet
                "RWS-Replay-From": "1",
            }
            with pytest.raises(InvalidStatus) as caught:
                async with raw_connect(url, forged):
                    pass
            assert caught.value.response.status_code == 400
            await ws.send("still fine")
            assert await ws.recv() == "still fine"


async def test_wrong_token_gets_a_new_session_and_none_of_the_old_data() -> None:
    async def talker(session: ServerSession) -> None:
        await session.send(f"secret for {session.id}")
        await anyio.sleep_forever()

    async with serve(talker) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url) as ws:
            session_id, token = await session_of(ws)
            forged = {
                "RWS-Session": session_id,
                "RWS-Token": "A" * len(token),
                "RWS-Received": "0",
                "RWS-Replay-From": "1",
            }
            async with raw_connect(url, forged) as thief:
                assert thief.response.headers["RWS-Resumed"] == "0"
                assert thief.response.headers["RWS-Session"] != session_id
                assert await thief.recv() == f"secret for {thief.response.headers['RWS-Session']}"
            assert await ws.recv() == f"secret for {session_id}"


async def test_resume_with_the_token_takes_the_session_over() -> None:
    echo = Echo()
    async with serve(echo) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url, backoff=FAST) as ws:
            events = ws.events()
            await ws.send("one")
            assert await ws.recv() == "one"
            await wait_until(lambda: ws.stats.unacked == 0)
            session_id, token = await session_of(ws)
            headers = {
                "RWS-Session": session_id,
                "RWS-Token": token,
                "RWS-Received": "1",
                "RWS-Replay-From": "2",
            }
            async with raw_connect(url, headers) as holder:
                assert holder.response.headers["RWS-Resumed"] == "1"
                disconnected = await next_event(events, resilient_ws.Disconnected)
                assert disconnected.fatal
                assert isinstance(disconnected.cause, resilient_ws.LinkClosed)
                assert disconnected.cause.code == 4003
                await holder.send("two")  # the holder continues the session
                assert await holder.recv() == "two"
            with pytest.raises(ConnectionFailed):
                await ws.recv()
        assert len(echo.sessions) == 1


async def test_failed_resumes_are_throttled_with_429_and_the_owner_still_resumes() -> None:
    """Default store: a flood of wrong tokens from an address gets 429; the session's
    owner, from the same address, still resumes (issue 9: no lockout by session id)."""
    echo = Echo()
    async with (
        behind_proxy(echo) as (_, proxy),
        resilient_ws.connect(proxy.url) as ws,
    ):
        events = ws.events()
        session_id, _ = await session_of(ws)
        forged = {
            "RWS-Session": session_id,
            "RWS-Token": "wrong",
            "RWS-Received": "0",
            "RWS-Replay-From": "1",
        }
        for _ in range(100):  # the default limit: 100 failed resumes per 10 s
            async with raw_connect(proxy.url, forged) as other:
                assert other.response.headers["RWS-Resumed"] == "0"
        with pytest.raises(InvalidStatus) as caught:
            async with raw_connect(proxy.url, forged):
                pass
        assert caught.value.response.status_code == 429
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        proxy.reset()  # the owner's link dies; it resumes with the right token
        await next_event(events, resilient_ws.Disconnected)
        resumed = await next_event(events, resilient_ws.Resumed)
        assert resumed.session_id == session_id
        await ws.send("unaffected")
        assert await ws.recv() == "unaffected"


async def test_session_limit_answers_503_and_spares_the_others() -> None:
    store: MemorySessionStore[ServerSession] = MemorySessionStore(max_sessions=1)
    async with serve(Echo(), sessions=store) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url) as ws:
            with pytest.raises(InvalidStatus) as caught:
                async with raw_connect(url):
                    pass
            assert caught.value.response.status_code == 503
            assert "Retry-After" in caught.value.response.headers
            await ws.send("first")
            assert await ws.recv() == "first"


async def test_a_session_expires_after_its_ttl_and_the_client_hears_of_the_loss() -> None:
    echo = Echo()
    store: MemorySessionStore[ServerSession] = MemorySessionStore(ttl=0.3)
    async with (
        behind_proxy(echo, sessions=store) as (_, proxy),
        resilient_ws.connect(proxy.url, backoff=FAST) as ws,
    ):
        events = ws.events()
        await ws.send("a")
        assert await ws.recv() == "a"
        await wait_until(lambda: ws.stats.unacked == 0)  # the server acked "a"
        proxy.stop()
        await wait_until(lambda: echo.errors)
        assert isinstance(echo.errors[0], ConnectionFailed)
        assert "expired" in str(echo.errors[0])
        proxy.start()
        gap = await next_event(events, resilient_ws.Gap)
        assert (gap.first, gap.last, gap.reason) == (2, None, "session_lost")
        lost = await next_event(events, resilient_ws.SessionLost)
        assert lost.unacked == 0
        await ws.send("b")
        assert await ws.recv() == "b"
        assert len(echo.sessions) == 2
        assert len(store) == 1  # the expired session is gone


class SessionEnd:
    """A handler's end, recorded: ``None`` when the session's iteration ended normally
    (the client closed it), else the exception it raised."""

    def __init__(self) -> None:
        self.ended = anyio.Event()
        self.outcome: list[BaseException | None] = []

    async def watch(self, session: ServerSession) -> None:
        """Read ``session`` to its end (a handler, or its last step)."""
        try:
            async for _ in session:
                pass
            self.outcome.append(None)
        except Exception as exc:
            self.outcome.append(exc)
            raise
        finally:
            self.ended.set()


def close_frame(code: int) -> bytes:
    """A client's close frame with ``code``, masked (RFC 6455 section 5.5.1)."""
    mask = b"\x1f\x2e\x3d\x4c"
    payload = struct.pack("!H", code)
    return b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def resume_and_close(port: int, resume: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Resume a session by hand from a socket with a small receive buffer, so that the
    server's resend soon waits on it; close with 1000 right after the 101, before reading
    anything; then read to the end, as a closing client does. Blocking: run it in a
    thread. The status and headers of the response."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.sendall(handshake_request(resume))
        head = b""
        while b"\r\n\r\n" not in head:  # bounded by the socket's timeout and EOF
            byte = sock.recv(1)  # byte by byte: read nothing past the head yet
            assert byte, f"the server closed before its response ended: {head!r}"
            head += byte
        sock.sendall(close_frame(1000))
        while sock.recv(1 << 16):  # to the end; a timeout raises
            pass
    return parse_response_head(head)


async def test_a_normal_close_while_the_server_resends_ends_the_session() -> None:
    """A client that resumes and closes normally (1000) while the server is still resending
    what it lacked has ended its session, as on a link that was serving: the handler's
    iteration ends at once, not after the session TTL (60 s) that a lost link waits for.
    Sometimes websockets sees the close before it would run a handler for the link, and
    runs none: the server's housekeeping (1 s) ends the session then. (The chaos test's
    rare last wait: the client closed just after its last resume.)"""
    chunk = b"r" * (64 << 10)
    away = anyio.Event()
    filled = anyio.Event()
    end = SessionEnd()

    async def handler(session: ServerSession) -> None:
        await away.wait()
        for _ in range(256):  # 16 MiB: all kept (below), more than the kernel buffers
            await session.send(chunk)
        filled.set()
        await end.watch(session)

    with capture_logs() as logs, anyio.fail_after(TIMEOUT):
        # Tuned: the resend must outlast what the sockets' buffers take (up to 4 MiB of
        # send buffer here), which a resend within the default 4 MiB bound may not.
        replay = Replay(max_bytes=32 << 20)
        async with resilient_ws.serve(handler, "127.0.0.1", 0, replay=replay) as server:
            status, grant, stream = await raw_handshake(server.port)
            assert status == 101
            await stream.aclose()  # away: the session waits for the client
            away.set()
            await filled.wait()
            resume = {
                "RWS-Session": grant["rws-session"],
                "RWS-Token": grant["rws-token"],
                "RWS-Received": "0",
                "RWS-Replay-From": "1",
            }
            status, headers = await anyio.to_thread.run_sync(resume_and_close, server.port, resume)
            assert (status, headers["rws-resumed"]) == (101, "1")
            await end.ended.wait()
    assert end.outcome == [None]
    # The close came during the resend (no session_resumed), and ended the session.
    detached = [e for e in logs if e["event"] == "resilient_ws.session_detached"]
    assert [(e["code"], e["outcome"]) for e in detached[1:]] == [(1000, "ended")]
    assert not [e for e in logs if e["event"] == "resilient_ws.session_resumed"]


def resume_with_close(port: int, resume: dict[str, str]) -> bytes:
    """Send a resume request and a close frame (1000) in one write, then read to the end:
    websockets mostly sees the close before it would run a handler for the link, and then
    runs none (it may not even answer). Blocking: run it in a thread. What it answered."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake_request(resume) + close_frame(1000))
        while data := sock.recv(1 << 16):  # to the end; a timeout raises
            answer += data
    return answer


async def test_a_resume_closed_before_its_link_is_served_ends_the_session() -> None:
    """A resume granted to a link that closed normally before websockets ran a handler for
    it (websockets then runs none) ends the session at the server's next housekeeping (1 s),
    not after ``open_timeout`` and then the session TTL."""
    end = SessionEnd()

    with capture_logs() as logs, anyio.fail_after(TIMEOUT):
        async with resilient_ws.serve(end.watch, "127.0.0.1", 0) as server:
            status, grant, stream = await raw_handshake(server.port)
            assert status == 101
            await stream.aclose()  # away: the session waits for the client
            resume = {
                "RWS-Session": grant["rws-session"],
                "RWS-Token": grant["rws-token"],
                "RWS-Received": "0",
                "RWS-Replay-From": "1",
            }
            answer = await anyio.to_thread.run_sync(resume_with_close, server.port, resume)
            await end.ended.wait()
    assert end.outcome == [None]
    detached = [e for e in logs if e["event"] == "resilient_ws.session_detached"]
    assert [(e["code"], e["outcome"]) for e in detached[1:]] == [(1000, "ended")]
    # The path under test: the link was never served (websockets did not even answer).
    assert not [e for e in logs if e["event"] == "resilient_ws.session_resumed"]
    assert b"101" not in answer


async def test_an_oversize_message_is_sent_unkept_and_its_loss_is_a_gap_on_the_server() -> None:
    received: list[str] = []
    sessions: list[ServerSession] = []

    async def sink(session: ServerSession) -> None:
        sessions.append(session)
        async for message in session:
            received.append(message)

    async with behind_proxy(sink) as (_, proxy):
        replay = Replay(max_bytes=100)
        async with resilient_ws.connect(proxy.url, backoff=FAST, replay=replay) as ws:
            events = ws.events()
            await ws.send("small")
            await wait_until(lambda: received == ["small"] and ws.stats.unacked == 0)
            proxy.blackhole()  # the next message never arrives
            await ws.send("x" * 200)  # too big to keep for replay
            await ws.send("after")
            proxy.reset()
            proxy.restore()
            await next_event(events, resilient_ws.Resumed)
            await wait_until(lambda: received[-1:] == ["after"])
    assert received == ["small", "after"]
    gaps = sessions[0].gaps
    assert [(gap.first, gap.last) for gap in gaps] == [(2, 2)]
    # The same public event a client reports, not a private range.
    assert all(isinstance(gap, resilient_ws.Gap) for gap in gaps)
    assert [(gap.session_id, gap.reason) for gap in gaps] == [(sessions[0].id, "overflow")]


async def test_a_small_replay_buffer_bounds_memory_and_loses_nothing_on_a_live_link() -> None:
    """Sending never waits for acks (no deadlock against a peer that is not reading): past
    the bounds the oldest unacked messages leave the buffer, and TCP still delivers them."""
    received: list[str] = []

    async def slow(session: ServerSession) -> None:
        async for message in session:
            received.append(message)
            await anyio.sleep(0.001)

    async with serve(slow) as server:
        replay = Replay(max_messages=4, ack_every=2)
        async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/", replay=replay) as ws:
            for i in range(100):
                await ws.send(str(i))
                assert ws.stats.unacked <= 4
            await wait_until(lambda: len(received) == 100)
    assert received == [str(i) for i in range(100)]


@pytest.mark.parametrize("by", ["count", "time"])
async def test_a_live_link_is_acknowledged_by_count_or_by_time(by: str) -> None:
    """By count: acks long before an hour-long ack_delay (written at once on asyncio, by
    the ack task on trio). By time: fewer messages than ack_every, acked after ack_delay,
    the last ones too (the timer stays armed after an ack, then sleeps)."""
    replay = Replay(ack_every=8, ack_delay=3600.0) if by == "count" else Replay(ack_delay=0.05)
    count = 100 if by == "count" else 3
    limit = 8 if by == "count" else 1
    echo = Echo()
    async with serve(echo, replay=replay) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url, replay=replay) as ws:
            for round_ in range(2):  # the second round: after the ack task lingered
                for i in range(count):
                    await ws.send(str(i))
                for i in range(count):
                    assert await ws.recv() == str(i)
                # The client's buffer empties as the server acks, and the server's as the
                # client does: both within the bound, without waiting an hour.
                await wait_until(lambda: ws.stats.unacked < limit)
                await wait_until(lambda: echo.sessions[0].outbound.count < limit)
                if by == "time" and round_ == 0:
                    await anyio.sleep(0.2)  # past the linger: the task sleeps untimed


async def test_an_echo_handler_does_not_deadlock_a_pipelining_client() -> None:
    """Found by the replay benchmark: when send() waited for acks, an echo handler blocked
    in send() stopped reading, and the client's acks sat unread behind its data."""
    echo = Echo()
    async with serve(echo) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url, replay=Replay(max_messages=64)) as ws:
            count = 3000
            got: list[str] = []

            async def receive() -> None:
                while len(got) < count:
                    got.append(await ws.recv())

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(receive)
                    for i in range(count):
                        await ws.send(str(i))
            assert got == [str(i) for i in range(count)]


async def test_an_oversize_message_ends_with_1009_not_a_resend_loop() -> None:
    echo = Echo()
    async with serve(echo, max_size=1000) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with resilient_ws.connect(url, backoff=FAST) as ws:
            events = ws.events()
            await ws.send("x" * 2000)
            disconnected = await next_event(events, resilient_ws.Disconnected)
            assert isinstance(disconnected.cause, resilient_ws.LinkClosed)
            assert disconnected.cause.code == 1009
            assert disconnected.fatal
            with pytest.raises(ConnectionFailed):
                await ws.recv()


async def test_control_frames_sent_without_waiting_arrive_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of send_control() (probes, acks, beacons are sent so) reaches the peer in
    order; on trio one flush task per link writes the burst, not a task per frame."""
    from resilient_ws._io import backend as _backend
    from resilient_ws._io import hooks

    flushes: list[object] = []
    flush = hooks._flush_queued

    async def counted(link: Any) -> None:
        flushes.append(link)
        await flush(link)

    monkeypatch.setattr(hooks, "_flush_queued", counted)
    pongs: list[bytes] = []
    answered = anyio.Event()
    sent = [b"probe %d" % i for i in range(200)]

    def on_pong(data: bytes, at: float) -> None:
        pongs.append(data)
        if len(pongs) == len(sent):
            answered.set()

    async def pinger(session: ServerSession) -> None:
        raw: Any = session._raw  # type: ignore[attr-defined]
        raw.on_pong = on_pong
        for data in sent:
            _backend.send_control(raw, data, ping=True)
        await anyio.sleep_forever()

    async with serve(pinger) as server, raw_connect(f"ws://127.0.0.1:{server.port}/"):
        # websockets' client answers each ping with a pong in its background reader.
        with anyio.fail_after(TIMEOUT):
            await answered.wait()
    assert pongs == sent
    assert len(flushes) == (1 if is_trio() else 0)


async def test_a_control_frame_still_queued_when_the_peer_resets_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On trio a control frame waits in websockets' buffer for the link's flush task
    (send_control). When the peer resets the link first, websockets' reader writes that
    buffer after the end of the stream, expecting nothing there that can fail: the write
    failed (broken pipe) and websockets logged "unexpected internal error" (the demo, 3
    runs in 12 with both cores busy). The failed write is the link's end, not an error."""
    queued = anyio.Event()
    closed = anyio.Event()

    async def queue_then_wait(session: ServerSession) -> None:
        raw: Any = session._raw  # type: ignore[attr-defined]
        raw.protocol.send_pong(b"left in the buffer")  # as send_control leaves it on trio
        queued.set()
        await raw.wait_closed()
        closed.set()

    async with serve(queue_then_wait) as server:
        status, _, stream = await raw_handshake(server.port)
        assert status == 101
        with anyio.fail_after(TIMEOUT):
            await queued.wait()
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # a reset, at once
        with anyio.fail_after(TIMEOUT):
            await closed.wait()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
