"""The client against real websockets servers on 127.0.0.1, on asyncio and trio."""

from __future__ import annotations

import gc
import os
import signal
import ssl
import sys
import weakref
from collections.abc import AsyncIterator

import anyio
import pytest
import structlog
import trustme
from _helpers import FAST, TIMEOUT, next_event
from _servers import ProcessServer, ThreadServer, echo, free_port
from anyio import wait_all_tasks_blocked
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

import resilient_ws
from resilient_ws import (
    Backoff,
    Closed,
    Connected,
    Disconnected,
    Event,
    MessagesDropped,
    Reconnecting,
    SendQueue,
    State,
)

pytestmark = pytest.mark.anyio


async def until_state(ws: resilient_ws.Connection, state: State) -> None:
    events = ws.events()
    with anyio.fail_after(TIMEOUT):
        while ws.state is not state:
            await anext(events)


async def test_echo_round_trip() -> None:
    with ThreadServer() as server:
        async with resilient_ws.connect(server.url) as ws:
            assert ws.state is State.OPEN
            await ws.send("text")
            await ws.send(b"\x00bytes")
            assert await ws.recv() == "text"
            assert await ws.recv() == b"\x00bytes"
            assert ws.stats.messages_sent == 2
            assert ws.stats.messages_received == 2
        assert ws.state is State.CLOSED


async def test_ping_and_tcp_info_measure_the_live_link() -> None:
    """``ping()`` and ``tcp_info()`` answer about the link that is up, and ``None``
    with no link: while reconnecting and once closed."""
    with ProcessServer() as server:
        async with resilient_ws.connect(server.url) as ws:
            rtt = await ws.ping()
            assert rtt is not None
            assert 0 < rtt < TIMEOUT
            info = ws.tcp_info()
            if sys.platform.startswith("linux"):
                assert info is not None
                assert info.established
                # The default keepalive knows the path's RTT from the kernel at least.
                assert ws.stats.srtt_source in ("kernel", "pong")
            server.kill()
            await until_state(ws, State.RECONNECTING)
            assert await ws.ping() is None
            assert ws.tcp_info() is None
        assert await ws.ping() is None
        assert ws.tcp_info() is None


async def test_a_ping_waiting_on_a_link_that_drops_returns_none() -> None:
    """The server is frozen (no pong), then killed: the pending ping ends with the link."""
    with ProcessServer() as server:
        async with resilient_ws.connect(server.url, keepalive=None) as ws:
            assert ws.stats.srtt_source is None  # no keepalive, no estimate
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            result: list[float | None] = []
            async with anyio.create_task_group() as tasks:

                async def ping() -> None:
                    result.append(await ws.ping())

                tasks.start_soon(ping)
                await wait_all_tasks_blocked()
                assert not result  # waiting for the pong
                server.kill()  # SIGKILL ends a stopped process too
                with anyio.fail_after(TIMEOUT):
                    await until_state(ws, State.RECONNECTING)
            assert result == [None]


async def test_survives_server_kill_and_restart() -> None:
    with ProcessServer() as server:
        async with resilient_ws.connect(server.url, backoff=FAST) as ws:
            events = ws.events()
            await ws.send("before")
            assert await ws.recv() == "before"
            server.kill()
            disconnected = await next_event(events, Disconnected)
            assert isinstance(disconnected.cause, resilient_ws.LinkClosed)
            assert disconnected.cause.code == 1006
            assert not disconnected.fatal
            await until_state(ws, State.RECONNECTING)
            await ws.send("while down")  # queued, flushed after the reconnect
            server.start()
            connected = await next_event(events, Connected)
            assert connected.link == 2
            assert connected.flushed == 1
            with anyio.fail_after(TIMEOUT):
                assert await ws.recv() == "while down"
            assert ws.stats.reconnects == 1


async def test_iteration_ends_on_close() -> None:
    with ThreadServer() as server:
        async with resilient_ws.connect(server.url) as ws:
            for i in range(3):
                await ws.send(str(i))
            received = []
            async for message in ws:
                received.append(message)
                if len(received) == 3:
                    await ws.close()
            assert received == ["0", "1", "2"]


async def test_503_with_retry_after_is_honoured() -> None:
    requests = 0

    def busy_once(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal requests
        requests += 1
        if requests == 1:
            response = connection.respond(503, "busy\n")
            response.headers["Retry-After"] = "1"
            return response
        return None

    with ThreadServer(process_request=busy_once) as server:
        connection = resilient_ws.connect(server.url, backoff=FAST)
        history: list[Event] = []

        async def record() -> None:
            async for event in connection.events():
                history.append(event)

        async with anyio.create_task_group() as tg, connection as ws:
            tg.start_soon(record)
            assert ws.state is State.OPEN
            await ws.close()
        first_failure = next(e for e in history if isinstance(e, Disconnected))
        assert isinstance(first_failure.cause, resilient_ws.HandshakeRejected)
        assert first_failure.cause.status == 503
        assert first_failure.cause.retry_after == 1.0
        reconnecting = next(e for e in history if isinstance(e, Reconnecting))
        # FAST alone would wait at most 0.01 s.
        assert reconnecting.delay >= 1.0
        assert requests == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_handshake_4xx_is_fatal(status: int) -> None:
    requests = 0

    def refuse(connection: ServerConnection, request: Request) -> Response:
        nonlocal requests
        requests += 1
        return connection.respond(status, "no\n")

    with ThreadServer(process_request=refuse) as server:
        with pytest.raises(resilient_ws.ConnectionFailed) as info:
            async with resilient_ws.connect(server.url, backoff=FAST):
                pytest.fail("must not open")
        assert isinstance(info.value.cause, resilient_ws.HandshakeRejected)
        assert info.value.cause.status == status
        assert not isinstance(info.value, resilient_ws.RetryBudgetExhausted)
        assert requests == 1


async def test_policy_close_is_fatal_and_surfaces_from_recv() -> None:
    async def reject_after_hello(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1008, "not allowed")

    with ThreadServer(reject_after_hello) as server:
        async with resilient_ws.connect(server.url, backoff=FAST) as ws:
            await ws.send("hello")
            with anyio.fail_after(TIMEOUT), pytest.raises(resilient_ws.ConnectionFailed) as info:
                await ws.recv()
            assert isinstance(info.value.cause, resilient_ws.LinkClosed)
            assert info.value.cause.code == 1008
            assert info.value.cause.reason == "not allowed"
            assert ws.state is State.CLOSED
            with pytest.raises(resilient_ws.ConnectionFailed):
                await ws.send("more")
        assert server.connections == 1


async def test_accept_then_close_does_not_storm() -> None:
    """Default backoff: a link closed at once forgives nothing, so the delays keep growing."""

    async def hang_up(ws: ServerConnection) -> None:
        return  # websockets closes with 1000 when the handler returns

    with ThreadServer(hang_up) as server:
        async with resilient_ws.connect(server.url) as ws:
            await anyio.sleep(5.0)  # the observation window of issue 9's target
            reconnects = ws.stats.reconnects
    # The raw websockets loop makes thousands of connections in 2 s against this server;
    # the default backoff makes about a dozen in 5 s (issue 9's target: at most 20).
    assert 2 <= server.connections <= 20
    assert reconnects == server.connections - 1


async def test_retry_budget_exhausted() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"  # nothing listens there
    budget = Backoff(first_delay=0.01, max_attempts=3)
    connection = resilient_ws.connect(url, backoff=budget)
    with pytest.raises(resilient_ws.RetryBudgetExhausted) as info:
        async with connection:
            pytest.fail("must not open")
    assert isinstance(info.value.cause, resilient_ws.LinkUnreachable)
    assert connection.stats.attempts == 3


async def test_time_budget_exhausted() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"  # nothing listens there
    budget = Backoff(first_delay=0.05, max_delay=0.1, max_elapsed=0.5)
    connection = resilient_ws.connect(url, backoff=budget)
    history: list[Event] = []

    async def record() -> None:
        async for event in connection.events():
            history.append(event)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(record)
            with pytest.raises(resilient_ws.RetryBudgetExhausted):
                async with connection:
                    pytest.fail("must not open")
    delays = [event.delay for event in history if isinstance(event, Reconnecting)]
    assert len(delays) >= 2
    assert all(0 <= delay <= 0.1 for delay in delays)
    failures = [event for event in history if isinstance(event, Disconnected)]
    assert failures[-1].at - failures[0].at >= 0.5 - 0.1  # gave up only once the budget ran out
    assert isinstance(history[-1], Closed)


async def test_wss_to_a_plain_port_is_retried_on_both_backends() -> None:
    """Issue 11: the server's reset during the TLS handshake was fatal on trio (an SSL EOF)
    and retried on asyncio (a plain reset). A server restarting looks the same: retried."""
    with ThreadServer() as server:  # no TLS on this port
        url = f"wss://127.0.0.1:{server.port}/"
        with anyio.move_on_after(1.5) as scope:
            async with resilient_ws.connect(url, backoff=FAST):
                pytest.fail("must not open")
        assert scope.cancelled_caught  # still retrying: nothing fatal was raised


async def test_tls_verification_failure_is_fatal() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with ThreadServer(ssl=server_context) as server:
        url = f"wss://127.0.0.1:{server.port}/"
        with anyio.fail_after(TIMEOUT), pytest.raises(resilient_ws.ConnectionFailed) as info:
            async with resilient_ws.connect(url, backoff=FAST):
                pytest.fail("must not open")
        assert isinstance(info.value.cause, resilient_ws.TLSVerificationFailed)
        # With the CA trusted, the same server is fine.
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        async with resilient_ws.connect(url, ssl=client_context) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"


async def test_failover_to_backup_and_back_to_primary() -> None:
    primary_port = free_port()
    primary_url = f"ws://127.0.0.1:{primary_port}/"
    failover = resilient_ws.Failover(failback_after=0.3)
    with ThreadServer() as backup, ThreadServer(port=primary_port, start=False) as primary:
        async with resilient_ws.connect(
            urls=[primary_url, backup.url], backoff=FAST, failover=failover
        ) as ws:
            events = ws.events()
            first = await next_event(events, Connected)
            assert first.url == backup.url
            primary.start()
            dropped = await next_event(events, Disconnected)
            assert isinstance(dropped.cause, resilient_ws.LinkClosed)
            assert dropped.cause.code == 1001
            assert dropped.verdict == "failback"
            back = await next_event(events, Connected)
            assert back.url == primary_url
            await ws.send("on primary")
            assert await ws.recv() == "on primary"
        # Leave the client before the servers: stopping a server thread blocks this loop.
    assert primary.connections >= 1


async def test_queue_full_raise() -> None:
    with ProcessServer() as server:
        policy = SendQueue(max_messages=3, when_full="raise")
        async with resilient_ws.connect(server.url, backoff=FAST, send_queue=policy) as ws:
            server.kill()
            await until_state(ws, State.RECONNECTING)
            for i in range(3):
                await ws.send(f"m{i}")
            with pytest.raises(resilient_ws.QueueFull):
                await ws.send("m3")
            assert ws.stats.queued == 3
            server.start()
            with anyio.fail_after(TIMEOUT):
                assert [await ws.recv() for _ in range(3)] == ["m0", "m1", "m2"]


async def test_queue_full_drop_oldest_reports_what_was_dropped() -> None:
    with ProcessServer() as server:
        policy = SendQueue(max_messages=3, when_full="drop_oldest")
        async with resilient_ws.connect(server.url, backoff=FAST, send_queue=policy) as ws:
            events = ws.events()
            server.kill()
            await until_state(ws, State.RECONNECTING)
            for i in range(5):
                await ws.send(f"m{i}")
            dropped = [await next_event(events, MessagesDropped) for _ in range(2)]
            assert [d.count for d in dropped] == [1, 1]
            assert [d.size for d in dropped] == [2, 2]
            assert ws.stats.dropped == 2
            server.start()
            with anyio.fail_after(TIMEOUT):
                assert [await ws.recv() for _ in range(3)] == ["m2", "m3", "m4"]


async def test_queue_full_wait_applies_backpressure() -> None:
    with ProcessServer() as server:
        policy = SendQueue(max_messages=2, when_full="wait")
        async with resilient_ws.connect(server.url, backoff=FAST, send_queue=policy) as ws:
            server.kill()
            await until_state(ws, State.RECONNECTING)
            await ws.send("m0")
            await ws.send("m1")
            done = anyio.Event()

            async def third() -> None:
                await ws.send("m2")
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(third)
                await wait_all_tasks_blocked()
                assert not done.is_set()
                assert ws.stats.queued == 2
                server.start()
            assert done.is_set()
            with anyio.fail_after(TIMEOUT):
                assert [await ws.recv() for _ in range(3)] == ["m0", "m1", "m2"]


async def test_close_while_down_reports_undelivered_messages() -> None:
    with ProcessServer() as server:
        async with resilient_ws.connect(server.url, backoff=FAST) as ws:
            events = ws.events()
            server.kill()
            await until_state(ws, State.RECONNECTING)
            await ws.send("lost 1")
            await ws.send(b"lost 2")
            await ws.close()
            closed = await next_event(events, Closed)
            assert closed.undelivered == 2
            assert closed.cause is None
            assert ws.undelivered == ["lost 1", b"lost 2"]
            with pytest.raises(resilient_ws.ConnectionClosedOK):
                await ws.send("after close")
            with pytest.raises(resilient_ws.ConnectionClosedOK):
                await ws.recv()


async def test_close_during_backoff_is_prompt() -> None:
    slow = Backoff(first_delay=60.0, max_delay=60.0)
    with ProcessServer() as server:
        async with resilient_ws.connect(server.url, backoff=slow) as ws:
            events = ws.events()
            server.kill()
            await next_event(events, Reconnecting)
            with anyio.fail_after(5):
                await ws.close()
            assert ws.state is State.CLOSED


async def test_cancelled_recv_loses_no_message() -> None:
    count = 200
    with ThreadServer() as server:
        async with resilient_ws.connect(server.url) as ws:
            for i in range(count):
                await ws.send(str(i))
            received: list[str | bytes] = []
            for step in range(3 * count):
                if len(received) == count:
                    break
                if step % 3 == 0:
                    # Cancelled before it starts: it may still return a buffered message.
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        received.append(await ws.recv())
                elif step % 3 == 1:
                    with anyio.move_on_after(0):
                        received.append(await ws.recv())
                else:
                    with anyio.fail_after(TIMEOUT):
                        received.append(await ws.recv())
            assert received == [str(i) for i in range(count)]


async def test_concurrent_recv_is_refused() -> None:
    with ThreadServer() as server:
        async with resilient_ws.connect(server.url) as ws, anyio.create_task_group() as tg:
            tg.start_soon(ws.recv)
            await wait_all_tasks_blocked()
            with pytest.raises(resilient_ws.ConcurrencyError):
                await ws.recv()
            await ws.send("release")
    assert ws.state is State.CLOSED


async def test_concurrent_senders_keep_messages_whole() -> None:
    senders, per_sender = 20, 50

    with ThreadServer() as server:
        async with resilient_ws.connect(server.url) as ws:

            async def sender(n: int) -> None:
                for i in range(per_sender):
                    await ws.send(f"{n}:{i}:" + "x" * 1000)

            async with anyio.create_task_group() as tg:
                for n in range(senders):
                    tg.start_soon(sender, n)
            with anyio.fail_after(TIMEOUT):
                received = [await ws.recv() for _ in range(senders * per_sender)]
    assert all(isinstance(m, str) and m.endswith(":" + "x" * 1000) for m in received)
    by_sender: dict[str, list[int]] = {}
    for message in received:
        assert isinstance(message, str)
        n, i, _ = message.split(":")
        by_sender.setdefault(n, []).append(int(i))
    assert by_sender == {str(n): list(range(per_sender)) for n in range(senders)}


async def test_on_connect_runs_before_queued_messages_flush() -> None:
    seen: list[list[str | bytes]] = []

    async def record(ws: ServerConnection) -> None:
        messages: list[str | bytes] = []
        seen.append(messages)
        async for message in ws:
            messages.append(message)
            await ws.send(message)

    links: list[int] = []

    async def authenticate(link: resilient_ws.Link) -> None:
        links.append(link.number)
        await link.send(f"auth {link.number}")
        assert await link.recv() == f"auth {link.number}"

    with ThreadServer(record) as server:
        async with resilient_ws.connect(server.url, on_connect=authenticate) as ws:
            await ws.send("first")
            assert await ws.recv() == "first"
    assert links == [1]
    assert seen == [["auth 1", "first"]]

    # After a restart the hook runs again, and its exchange comes before the queued
    # message: the hook would fail if it received the echo of "queued".

    with ProcessServer() as proc:
        async with resilient_ws.connect(proc.url, backoff=FAST, on_connect=authenticate) as ws:
            events = ws.events()
            proc.kill()
            await until_state(ws, State.RECONNECTING)
            await ws.send("queued")
            proc.start()
            await next_event(events, Connected)
            with anyio.fail_after(TIMEOUT):
                assert await ws.recv() == "queued"
    assert links == [1, 1, 2]


async def test_on_connect_failure_is_fatal() -> None:
    async def broken(link: resilient_ws.Link) -> None:
        raise RuntimeError("bad credentials")

    with ThreadServer() as server, pytest.raises(resilient_ws.ConnectionFailed) as info:
        async with resilient_ws.connect(server.url, on_connect=broken):
            pytest.fail("must not open")
    assert isinstance(info.value.cause, resilient_ws.OnConnectFailed)
    assert isinstance(info.value.cause.__cause__, RuntimeError)


async def test_custom_classifier_makes_an_error_fatal() -> None:
    def refused_is_fatal(error: resilient_ws.LinkError) -> resilient_ws.Decision:
        return "fatal" if isinstance(error, resilient_ws.LinkUnreachable) else "retry"

    url = f"ws://127.0.0.1:{free_port()}/"
    connection = resilient_ws.connect(url, backoff=FAST, classifier=refused_is_fatal)
    with pytest.raises(resilient_ws.ConnectionFailed):
        async with connection:
            pytest.fail("must not open")
    assert connection.stats.attempts == 1


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "", "not a url", "ws://", "ftp://example.com/"]
)
async def test_bad_url_fails_at_once(url: str) -> None:
    with pytest.raises(resilient_ws.InvalidURL):
        resilient_ws.connect(url)


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        resilient_ws.connect()
    with pytest.raises(ValueError, match="exactly one"):
        resilient_ws.connect("ws://a/", urls=["ws://b/"])
    with pytest.raises(ValueError, match="at least one"):
        resilient_ws.connect(urls=[])
    with pytest.raises(TypeError, match="manages"):
        resilient_ws.connect("ws://a/", process_exception=lambda exc: None)
    with ThreadServer() as server:
        async with resilient_ws.connect(server.url) as ws:
            with pytest.raises(TypeError):
                await ws.send(123)  # type: ignore[arg-type]
            big = SendQueue(max_bytes=10)
            async with resilient_ws.connect(server.url, send_queue=big) as small:
                await small.send("x" * 11)  # connected: sent directly, not queued
                assert await small.recv() == "x" * 11


async def test_secrets_are_redacted_from_events_and_logs() -> None:
    with ThreadServer() as server:
        url = f"ws://alice:hunter2@127.0.0.1:{server.port}/feed?token=s3cr3t&room=42"
        headers = {"Authorization": "Bearer t0p-s3cr3t"}
        with structlog.testing.capture_logs() as logs:
            async with resilient_ws.connect(url, additional_headers=headers) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                history = [event async for event in _until_closed(ws)]
    text = repr(logs) + repr(history) + repr(ws.stats)
    for secret in ("hunter2", "alice", "s3cr3t", "t0p-s3cr3t"):
        assert secret not in text
    assert "room=42" in text
    names = [entry["event"] for entry in logs]
    assert names[:2] == ["resilient_ws.connect_started", "resilient_ws.link_opened"]
    assert names[-1] == "resilient_ws.connection_closed"
    assert all(entry["connection_id"] == ws.connection_id for entry in logs)


async def _until_closed(ws: resilient_ws.Connection) -> AsyncIterator[Event]:
    await ws.close()
    async for event in ws.events():
        yield event


async def test_unread_messages_of_old_links_are_bounded_and_reported() -> None:
    greeted = 0

    async def greet_and_hang_up(ws: ServerConnection) -> None:
        nonlocal greeted
        greeted += 1
        await ws.send(f"hello {greeted}")

    with ThreadServer(greet_and_hang_up) as server:
        async with resilient_ws.connect(server.url, backoff=FAST) as ws:
            events = ws.events()
            # The application never reads; after 8 ended links the oldest are dropped.
            dropped = await next_event(events, resilient_ws.InboundDropped)
            assert (dropped.link, dropped.count) == (1, 1)
            with anyio.fail_after(TIMEOUT):
                first = await ws.recv()
            assert first == "hello 2"
            await ws.close()


async def test_cancelling_the_owner_closes_promptly() -> None:
    with ThreadServer() as server:
        with anyio.fail_after(5):
            with anyio.CancelScope() as scope:
                async with resilient_ws.connect(server.url) as ws:
                    scope.cancel()
                    await anyio.sleep_forever()
        assert ws.state is State.CLOSED


@pytest.mark.parametrize("stable_after", [0.2, 60.0])
async def test_backoff_resets_only_after_a_stable_link(stable_after: float) -> None:
    backoff = Backoff(first_delay=0.01, max_delay=0.05, stable_after=stable_after)
    with ProcessServer() as server:
        async with resilient_ws.connect(server.url, backoff=backoff) as ws:
            events = ws.events()
            server.kill()
            await next_event(events, Reconnecting)
            # Let a few attempts fail, then bring the server back.
            failed = [await next_event(events, Reconnecting) for _ in range(2)]
            assert failed[-1].attempt >= 3
            server.start()
            await next_event(events, Connected)
            await anyio.sleep(0.4)  # the new link lives past 0.2 s, not past 60 s
            server.kill()
            after = await next_event(events, Reconnecting)
    if stable_after < 0.4:
        assert after.attempt == 2  # a fresh streak: the dropped link was failure 1
    else:
        assert after.attempt > failed[-1].attempt  # the streak goes on


async def test_close_while_a_link_is_being_set_up_closes_cleanly() -> None:
    """close() from another task while on_connect runs: the set-up's next steps (flush,
    publish) may run before the supervisor sees its cancellation (the flush of an empty
    queue has no checkpoint); publishing the link then must not be an illegal transition
    (found by the flapping chaos test on trio: "link_up is not allowed in state closing")."""
    closer: list[resilient_ws.Connection] = []

    async with anyio.create_task_group() as tasks:

        async def on_connect(link: resilient_ws.Link) -> None:
            tasks.start_soon(closer[0].close)
            with anyio.CancelScope(shield=True):  # close() runs meanwhile
                await anyio.sleep(0.1)

        with ThreadServer() as server:
            connection = resilient_ws.connect(server.url, on_connect=on_connect)
            closer.append(connection)
            with anyio.fail_after(TIMEOUT), pytest.raises(resilient_ws.ConnectionClosedOK):
                async with connection:
                    pytest.fail("closed before it opened")
    assert connection.state is State.CLOSED


@pytest.mark.parametrize("backoff", [FAST, Backoff()], ids=["fast", "defaults"])
async def test_a_lost_link_is_freed_once_the_next_one_is_up(backoff: Backoff) -> None:
    # The error that ended a link is kept (stats.last_error, the Disconnected event) while
    # the next link lives; its tracebacks held the dead link's websockets connection,
    # transport and keepalive in their frames until the next loss: two links per client.
    hung_up = False

    async def hang_up_once(ws: ServerConnection) -> None:
        nonlocal hung_up
        if not hung_up:
            hung_up = True
            ws.transport.abort()
            return
        await echo(ws)

    raws: list[weakref.ref[object]] = []

    async def remember(link: resilient_ws.Link) -> None:
        raws.append(weakref.ref(link._raw))

    with ThreadServer(hang_up_once) as server:
        async with resilient_ws.connect(server.url, backoff=backoff, on_connect=remember) as ws:
            events = ws.events()
            lost = await next_event(events, Disconnected)
            assert lost.cause is not None
            await next_event(events, Connected)
            await ws.send("still here")
            with anyio.fail_after(TIMEOUT):
                assert await ws.recv() == "still here"
            gc.collect()
            assert len(raws) == 2
            assert raws[0]() is None, "the first link is still referenced"
            assert raws[1]() is not None
            assert ws.stats.last_error is not None
