"""Poison messages (issue 11): a message that ends the link must not be resent forever.

A message too big for the receiver (1009) or a text message that is not UTF-8 (1007) ends
the link whichever side refused it. Before, websockets reported 1006 on the side that
refused the message when the peer's close never came: the client retried, resumed, and the
server resent the same message from its replay buffer, forever (12 cycles in 75 s).
Real servers and clients on 127.0.0.1, default settings, both backends.
"""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest
from _helpers import TIMEOUT, next_event
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

import resilient_ws
from resilient_ws import ConnectionFailed, Disconnected, ServerSession, SessionLost
from resilient_ws._io.backend import link_closed_error, translate

pytestmark = pytest.mark.anyio

MIB = 1 << 20


def serve(handler: object, **kwargs: object) -> resilient_ws.Server:
    return resilient_ws.serve(handler, "127.0.0.1", 0, stall_threshold=None, **kwargs)  # type: ignore[arg-type]


async def test_a_message_too_big_for_the_client_ends_the_connection_once() -> None:
    ended: list[BaseException] = []

    async def handler(session: ServerSession) -> None:
        try:
            await session.send("x" * (2 * MIB))  # the client's default max_size is 1 MiB
            async for _ in session:
                pass
        except resilient_ws.ConnectionClosed as exc:
            ended.append(exc)

    async with serve(handler) as server:
        async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            with anyio.fail_after(TIMEOUT), pytest.raises(ConnectionFailed) as raised:
                await ws.recv()
            with anyio.fail_after(TIMEOUT):
                history = [event async for event in ws.events()]  # ends after Closed
        with anyio.fail_after(TIMEOUT):
            while not ended:  # noqa: ASYNC110 - the handler's end has no event
                await anyio.sleep(0.01)
    assert isinstance(raised.value.cause, resilient_ws.LinkClosed)
    assert raised.value.cause.code == 1009
    disconnected = [event for event in history if isinstance(event, Disconnected)]
    assert len(disconnected) == 1  # no retry, no resume, no resend
    assert disconnected[0].fatal
    assert ws.stats.links == 1
    # The server's session ended too: it does not wait for a resume that would bring the
    # same message again.
    assert server.sessions.__len__() == 0


async def test_a_message_too_big_for_the_server_ends_the_session() -> None:
    ended: list[BaseException] = []

    async def handler(session: ServerSession) -> None:
        try:
            async for message in session:
                await session.send(message)
        except resilient_ws.ConnectionClosed as exc:
            ended.append(exc)

    async with serve(handler, max_size=64 * 1024) as server:
        async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send("small")
            with anyio.fail_after(TIMEOUT):
                assert await ws.recv() == "small"
            await ws.send("y" * (128 * 1024))
            with anyio.fail_after(TIMEOUT), pytest.raises(ConnectionFailed) as raised:
                await ws.recv()
        with anyio.fail_after(TIMEOUT):
            while not ended:  # noqa: ASYNC110 - the handler's end has no event
                await anyio.sleep(0.01)
        assert len(server.sessions) == 0
    assert isinstance(raised.value.cause, resilient_ws.LinkClosed)
    assert raised.value.cause.code == 1009
    assert ws.stats.links == 1
    assert isinstance(ended[0], resilient_ws.ConnectionFailed)


def test_the_close_code_websockets_sent_is_the_end_when_the_peer_never_answered() -> None:
    """Pure: websockets says 1006 when the peer's close never came."""
    cases = [(Close(1009, "too big"), 1009), (Close(1007, "utf-8"), 1007),
             (Close(1000, ""), 1006), (Close(1011, "x"), 1006), (None, 1006)]  # fmt: skip
    for sent, expected in cases:
        raw = SimpleNamespace(
            close_code=1006, close_reason="", protocol=SimpleNamespace(close_sent=sent)
        )
        assert link_closed_error(raw).code == expected  # type: ignore[arg-type]
        assert translate(ConnectionClosedError(None, sent)).code == expected  # type: ignore[attr-defined]
    # A close received is the end, whatever was sent.
    received = translate(ConnectionClosedError(Close(1001, "bye"), Close(1009, "big"), True))
    assert received.code == 1001  # type: ignore[attr-defined]


async def test_what_a_handler_read_before_returning_is_not_sent_again() -> None:
    """A handler that returns ends its session with 1000 after acknowledging what it read:
    the client's next link starts a new session without those messages. Before, the close
    carried no final ack: the client resent them into the new session, whose handler read
    them and returned again, in a loop (5 sessions in 3.5 s)."""
    seen: list[str] = []
    got_next = anyio.Event()

    async def handler(session: ServerSession) -> None:
        async for message in session:
            seen.append(str(message))
            if message == "next":
                got_next.set()
            if len(seen) == 3:
                return  # done with this client's session

    async with (
        serve(handler) as server,
        resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws,
    ):
        events = ws.events()
        for n in range(3):
            await ws.send(f"m{n}")
        lost = await next_event(events, SessionLost)
        await ws.send("next")
        with anyio.fail_after(TIMEOUT):
            await got_next.wait()
    assert seen == ["m0", "m1", "m2", "next"]
    assert (lost.unacked, lost.resent) == (0, 0)


async def test_a_message_that_makes_the_handler_fail_is_resent_once_not_forever() -> None:
    """serve() ends a session whose handler raised (1011, "handler failed"); the client
    starts a new session and resends what was unacknowledged (``resend_on_loss``). Once;
    after a second such failure in a row they are reported, not resent: before, the same
    message crashed the handler 8 times in 30 s."""
    seen: list[str] = []

    async def handler(session: ServerSession) -> None:
        async for message in session:
            seen.append(str(message))
            if message == "boom":
                raise ValueError("the application cannot take this message")
            await session.send(message)

    async with serve(handler) as server:
        with capture_logs() as logs:
            async with resilient_ws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                events = ws.events()
                await ws.send("before")
                with anyio.fail_after(TIMEOUT):
                    assert await ws.recv() == "before"
                await ws.send("boom")
                await ws.send("after")
                lost = [await next_event(events, SessionLost)]
                while lost[-1].resent:  # bounded: next_event fails after TIMEOUT
                    lost.append(await next_event(events, SessionLost))
                # The session after that works: nothing is left to crash it.
                await ws.send("later")
                with anyio.fail_after(TIMEOUT):
                    assert await ws.recv() == "later"
    assert seen.count("boom") == 2
    assert [event.resent for event in lost] == [lost[0].unacked, 0]
    assert lost[-1].unacked >= 2  # "boom" and "after" at least: reported, not resent
    withheld = [entry for entry in logs if entry["event"] == "resilient_ws.resend_withheld"]
    assert len(withheld) == 1
    assert withheld[0]["handler_failures"] == 2
