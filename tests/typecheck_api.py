"""Uses the public API with types; checked by ``mypy --strict`` (see test_typecheck.py).

Never run: it only has to type-check. Lines marked ``type: ignore[...]`` must be errors:
``--strict`` turns on ``warn_unused_ignores``, so an ignore that is not needed fails too.
"""

from __future__ import annotations

import logging

import resilient_ws
from resilient_ws import (
    Backoff,
    Closed,
    Connected,
    Connecting,
    Connection,
    ConnectionClosedOK,
    ConnectionFailed,
    ConnectionStats,
    Decision,
    Disconnected,
    Event,
    EventsMissed,
    Failover,
    HandshakeRejected,
    Link,
    LinkClosed,
    LinkError,
    MessagesDropped,
    QueueFull,
    Reconnecting,
    RetryBudgetExhausted,
    SendQueue,
    State,
    TcpInfo,
)


async def authenticate(link: Link) -> None:
    await link.send('{"op": "auth"}')
    reply: str | bytes = await link.recv()
    if reply != b"ok" and link.number > 1:
        raise RuntimeError(f"auth refused on {link.url} ({link.subprotocol})")


def classify(error: LinkError) -> Decision:
    if isinstance(error, HandshakeRejected) and error.status == 503:
        return "retry" if error.retry_after is None or error.retry_after < 60 else "fatal"
    if isinstance(error, LinkClosed) and error.code == 4000:
        return "fatal"
    return resilient_ws.default_classifier(error)


def describe(event: Event) -> str:
    at: float = event.at
    if isinstance(event, Connecting):
        return f"{at}: connecting to {event.url}, attempt {event.attempt}"
    if isinstance(event, Connected):
        subprotocol: str | None = event.subprotocol
        return f"link {event.link} to {event.url} ({subprotocol}), flushed {event.flushed}"
    if isinstance(event, Disconnected):
        cause: LinkError = event.cause
        uptime: float | None = event.uptime
        fatal: bool = event.fatal
        return f"{event.url} lost after {uptime}s: {cause} (fatal={fatal}, {event.verdict})"
    if isinstance(event, Reconnecting):
        delay: float = event.delay
        return f"attempt {event.attempt} to {event.url} in {delay}s"
    if isinstance(event, MessagesDropped):
        return f"dropped {event.count} messages ({event.size} bytes)"
    if isinstance(event, EventsMissed):
        return f"missed {event.count} events"
    if isinstance(event, Closed):
        reason: LinkError | None = event.cause
        return f"closed ({reason}), {event.undelivered} undelivered"
    return repr(event)


def summarize(stats: ConnectionStats) -> dict[str, int | str | None]:
    return {
        "state": stats.state,
        "url": stats.url,
        "attempts": stats.attempts,
        "links": stats.links,
        "reconnects": stats.reconnects,
        "failures": stats.failures,
        "sent": stats.messages_sent,
        "received": stats.messages_received,
        "queued": stats.queued,
        "queued_bytes": stats.queued_bytes,
        "dropped": stats.dropped,
        "last_error": stats.last_error,
    }


async def main() -> list[str | bytes]:
    resilient_ws.configure_json_logging(level=logging.WARNING)
    connection: Connection = resilient_ws.connect(
        urls=["wss://primary.example/feed?token=secret", "wss://backup.example/feed"],
        backoff=Backoff(first_delay=0.05, max_delay=10.0, max_attempts=20),
        failover=Failover(failback_after=120.0),
        send_queue=SendQueue(max_messages=100, when_full="drop_oldest"),
        on_connect=authenticate,
        classifier=classify,
        open_timeout=5.0,
    )
    received: list[str | bytes] = []
    try:
        async with connection as ws:
            await ws.send("subscribe")
            await ws.send(b"\x00\x01")
            received.append(await ws.recv())
            async for message in ws:
                received.append(message)
                if len(received) > 10:
                    break
            async for event in ws.events():
                print(describe(event))
            state: State = ws.state
            if state is State.OPEN:
                print(summarize(ws.stats))
                rtt: float | None = await ws.ping()
                info: TcpInfo | None = ws.tcp_info()
                if info is not None and not info.zero_window:
                    print(rtt, info.rtt, info.unacked, ws.stats.srtt_source)
            await ws.close(1000, "bye")
    except RetryBudgetExhausted as exc:
        last: LinkError = exc.cause
        print(f"gave up: {last}")
    except ConnectionFailed as exc:
        print(f"failed: {exc.cause}")
    except ConnectionClosedOK:
        pass
    except QueueFull:
        print("queue full")
    undelivered: list[str | bytes] = connection.undelivered
    return received + undelivered


async def misuse(ws: Connection, backoff: Backoff) -> None:
    """Each line here must be rejected by the type checker."""
    Backoff(0.1)  # type: ignore[call-arg]
    backoff.max_delay = 1.0  # type: ignore[misc]
    SendQueue(when_full="block")  # type: ignore[arg-type]
    await ws.send(42)  # type: ignore[arg-type]
    resilient_ws.connect("wss://example.com", backoff=SendQueue())  # type: ignore[arg-type]
