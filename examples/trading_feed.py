"""A trading client that keeps a local order book in step with an exchange's feed.

Run it from the repository root::

    python examples/trading_feed.py [--seconds 10] [--backend asyncio|trio]

One process runs three parts:

- an **exchange**: a simulated order book (integer prices and sizes) that changes 200 times
  a second, each change numbered by a sequence number ``seq``;
- its **feed gateway**, built on ``resilient_ws.serve()``: a client asks for a snapshot
  (``{"op": "snapshot"}``) and then receives every change as an update carrying its
  ``seq``, with a CRC32 checksum of the whole book in every 25th update;
- a **trading client** on ``resilient_ws.connect()`` that keeps a local copy of the book,
  talking to the gateway through a ``resilient_ws.testing.FaultProxy``.

While it runs, the example breaks the connection three ways:

1. a TCP reset: the replay protocol resumes the session and resends what was in flight,
   so nothing is lost (a ``Resumed`` event, no ``Gap``);
2. a 1.5 s outage while the gateway keeps publishing into a small replay buffer: it
   overflows, the client learns the exact range it lost (``Gap(reason="overflow")``);
3. a gateway restart: the gateway forgot the session (``Gap(reason="session_lost")``
   and ``SessionLost``).

On a ``Gap`` the client cannot patch its book: it asks for a fresh snapshot and discards
updates until the snapshot arrives. The sequence numbers in the payload catch the same
losses independently, which also covers servers that do not speak the replay protocol.

The exit status is 0 when every checksum matched and the final book equals the
exchange's, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import anyio
import anyio.abc

import resilient_ws
from resilient_ws.testing import FaultProxy

HOST = "127.0.0.1"
# The exchange: prices in cents, LEVELS price levels on each side of MID.
MID = 10_000
LEVELS = 10
UPDATES_PER_SECOND = 200
CHECKSUM_EVERY = 25
# Updates the exchange keeps for subscribers that are behind; further behind, they resnapshot.
HISTORY = 10_000
# The gateway's replay buffer per session: small, so that an outage of 1.5 s (300
# updates) overflows it. On a live link it is a window, never a loss.
GATEWAY_REPLAY = resilient_ws.Replay(max_messages=100)
# The client retries fast and often: a trading client wants its feed back.
CLIENT_BACKOFF = resilient_ws.Backoff(first_delay=0.05, max_delay=0.5)
OUTAGE = 1.5
RESTART_DOWNTIME = 0.5
# Longest waits for the client to reconnect after a fault, and at the end to apply the
# exchange's last update.
RECONNECT_TIMEOUT = 10.0
CATCH_UP_TIMEOUT = 10.0

Side = Literal["bid", "ask"]
Say = Callable[[str], None]


# ---- the order book, on both sides ------------------------------------------------------


@dataclass
class Book:
    """Price levels of one instrument: price -> size, in integer units."""

    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)

    def apply(self, side: Side, price: int, size: int) -> None:
        """Set a level's size; size 0 removes the level."""
        levels = self.bids if side == "bid" else self.asks
        if size:
            levels[price] = size
        else:
            levels.pop(price, None)

    def checksum(self) -> int:
        """CRC32 of the book in a canonical form: bids best first, then asks best first."""
        bids = ",".join(f"{p}:{s}" for p, s in sorted(self.bids.items(), reverse=True))
        asks = ",".join(f"{p}:{s}" for p, s in sorted(self.asks.items()))
        return zlib.crc32(f"{bids}|{asks}".encode())

    def as_lists(self) -> dict[str, list[list[int]]]:
        return {
            "bids": [[p, s] for p, s in self.bids.items()],
            "asks": [[p, s] for p, s in self.asks.items()],
        }

    @classmethod
    def from_lists(cls, data: dict[str, Any]) -> Book:
        return cls(bids=dict(data["bids"]), asks=dict(data["asks"]))


# ---- the exchange and its feed gateway --------------------------------------------------


class Wakeup:
    """Wakes one waiting task; a wake-up while nobody waits is kept for the next wait."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = anyio.Event()


@dataclass(frozen=True)
class Update:
    seq: int
    message: str  # the JSON text sent to subscribers


class Exchange:
    """A simulated order book that changes at a steady rate, each change numbered."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self.book = Book()
        for offset in range(1, LEVELS + 1):
            self.book.apply("bid", MID - offset, self._random.randint(1, 500))
            self.book.apply("ask", MID + offset, self._random.randint(1, 500))
        self.seq = 0
        self.history: deque[Update] = deque(maxlen=HISTORY)
        self.watchers: set[Wakeup] = set()
        self.closed = False

    def tick(self) -> None:
        """One change to the book, published to every watcher."""
        side: Side = self._random.choice(("bid", "ask"))
        offset = self._random.randint(1, LEVELS)
        price = MID - offset if side == "bid" else MID + offset
        size = 0 if self._random.random() < 0.2 else self._random.randint(1, 500)
        self.book.apply(side, price, size)
        self.seq += 1
        update = {"type": "update", "seq": self.seq, "side": side, "price": price, "size": size}
        if self.seq % CHECKSUM_EVERY == 0:
            update["checksum"] = self.book.checksum()
        self.history.append(Update(self.seq, json.dumps(update)))
        for watcher in self.watchers:
            watcher.set()

    def snapshot(self) -> str:
        """The whole book now, with its seq and checksum, as JSON text."""
        return json.dumps(
            {
                "type": "snapshot",
                "seq": self.seq,
                "checksum": self.book.checksum(),
                **self.book.as_lists(),
            }
        )

    def updates_after(self, seq: int) -> list[Update] | None:
        """The updates after ``seq``, or ``None`` if the history no longer reaches back."""
        if seq == self.seq:
            return []
        if not self.history or self.history[0].seq > seq + 1:
            return None
        start = seq + 1 - self.history[0].seq
        return [self.history[i] for i in range(start, len(self.history))]

    async def run(self) -> None:
        """Tick at ``UPDATES_PER_SECOND`` until :meth:`close` (paced: a late tick catches up)."""
        start = anyio.current_time()
        ticks = 0
        while True:
            ticks += 1
            await anyio.sleep_until(start + ticks / UPDATES_PER_SECOND)
            if self.closed:
                return
            self.tick()

    def close(self) -> None:
        """The market closes: the book does not change after this call."""
        self.closed = True


class Subscriber:
    """What the gateway keeps for one client session."""

    def __init__(self) -> None:
        self.wakeup = Wakeup()  # set by every tick of the exchange, and by requests
        self.snapshot_wanted = False

    def want_snapshot(self) -> None:
        self.snapshot_wanted = True
        self.wakeup.set()


async def feed_session(session: resilient_ws.ServerSession, exchange: Exchange) -> None:
    """The gateway's handler: one run per client session, across the client's reconnects.

    A ``{"op": "snapshot"}`` request gets the book as it is now; then every later update
    follows, in ``seq`` order. Nothing is sent before the first request.
    """
    subscriber = Subscriber()
    exchange.watchers.add(subscriber.wakeup)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish, session, exchange, subscriber)
            async for message in session:
                if json.loads(message).get("op") == "snapshot":
                    subscriber.want_snapshot()
            tasks.cancel_scope.cancel()  # the client closed the session
    finally:
        exchange.watchers.discard(subscriber.wakeup)


async def publish(
    session: resilient_ws.ServerSession, exchange: Exchange, subscriber: Subscriber
) -> None:
    at: int | None = None  # the seq of the client's book, as far as we sent it
    while True:
        await subscriber.wakeup.wait()
        if subscriber.snapshot_wanted:
            subscriber.snapshot_wanted = False
            # No await between reading the book and its seq: they match.
            at, snapshot = exchange.seq, exchange.snapshot()
            await session.send(snapshot)
        if at is None:
            continue
        updates = exchange.updates_after(at)
        if updates is None:  # too far behind for the history: start over
            subscriber.want_snapshot()
            continue
        for update in updates:
            await session.send(update.message)
            at = update.seq


class Gateway:
    """The exchange's feed server; :meth:`restart` forgets every session, like a deploy."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.port = 0
        self._wakeup = Wakeup()
        self._stopping = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        """Serve until :meth:`stop`; report the port once listening."""
        handler = partial(feed_session, exchange=self.exchange)
        while True:
            async with resilient_ws.serve(
                handler, HOST, self.port, replay=GATEWAY_REPLAY
            ) as server:
                if not self.port:
                    self.port = server.port
                    task_status.started(server.port)
                await self._wakeup.wait()
            # Leaving ``async with`` closed every link (code 1001) and dropped the sessions.
            if self._stopping:
                return
            await anyio.sleep(RESTART_DOWNTIME)

    def restart(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()


# ---- the trading client ----------------------------------------------------------------


class BookKeeper:
    """The client's copy of the book, checked against the gateway's checksums."""

    def __init__(self, ws: resilient_ws.Connection, say: Say) -> None:
        self.ws = ws
        self.say = say
        self.book = Book()
        self.seq: int | None = None  # None: no valid book, updates are discarded
        self.progress = Wakeup()  # set by every message
        self.links = 0
        self.connected = Wakeup()  # set by every Connected event
        self.requested = False
        self.snapshots = self.applied = self.discarded = 0
        self.verified = self.mismatches = 0
        self.resyncs: list[str] = []

    async def resync(self, why: str, *, force: bool = False) -> None:
        """Drop the book and ask for a snapshot (once, unless ``force``)."""
        self.seq = None
        if self.requested and not force:
            return
        self.requested = True
        self.resyncs.append(why)
        self.say(f"client: {why}: book dropped, asking for a snapshot")
        await self.ws.send(json.dumps({"op": "snapshot"}))

    async def read_feed(self) -> None:
        async for text in self.ws:
            message = json.loads(text)
            if message["type"] == "snapshot":
                self.load(message)
            else:
                await self.update(message)
            self.progress.set()

    def load(self, message: dict[str, Any]) -> None:
        self.book = Book.from_lists(message)
        self.seq, self.requested = message["seq"], False
        self.snapshots += 1
        ok = self.check(message["checksum"])
        self.say(
            f"client: snapshot at seq {self.seq}, checksum {'ok' if ok else 'MISMATCH'}; "
            f"{self.discarded} updates discarded so far"
        )

    async def update(self, message: dict[str, Any]) -> None:
        if self.seq is None:
            self.discarded += 1
            return
        if message["seq"] != self.seq + 1:
            self.discarded += 1
            await self.resync(f"sequence break: expected seq {self.seq + 1}, got {message['seq']}")
            return
        self.book.apply(message["side"], message["price"], message["size"])
        self.seq = message["seq"]
        self.applied += 1
        if "checksum" in message and not self.check(message["checksum"]):
            self.say(f"client: checksum MISMATCH at seq {self.seq}")
            await self.resync("checksum mismatch")

    def check(self, checksum: int) -> bool:
        ok = self.book.checksum() == checksum
        if ok:
            self.verified += 1
        else:
            self.mismatches += 1
        return ok

    async def follow_events(self) -> None:
        """Print the connection's lifecycle; resnapshot on every ``Gap``."""
        failed_attempts = 0
        async for event in self.ws.events():
            if isinstance(event, resilient_ws.Gap):
                last = "?" if event.last is None else event.last
                # The event arrives on its own iterator: the feed task may already have seen
                # the break in the seqs and asked. Ask again anyway: a lost session took any
                # pending request with it.
                await self.resync(
                    f"Gap(first={event.first}, last={last}, reason={event.reason!r})", force=True
                )
            elif isinstance(event, resilient_ws.Disconnected):
                if event.uptime is None:  # an attempt that never opened
                    failed_attempts += 1
                else:
                    self.say(
                        f"client: Disconnected(verdict={event.verdict!r}, cause={event.cause})"
                    )
            elif isinstance(event, resilient_ws.Connected):
                retries = f" after {failed_attempts} failed attempts" if failed_attempts else ""
                self.say(f"client: Connected(link={event.link}){retries}")
                failed_attempts = 0
                self.links = event.link
                self.connected.set()
            elif isinstance(event, resilient_ws.Resumed):
                self.say(f"client: Resumed(resent={event.resent}): the session survived")
            elif isinstance(event, resilient_ws.SessionLost):
                self.say(f"client: SessionLost(unacked={event.unacked}, resent={event.resent})")

    async def wait_for_link(self, number: int) -> None:
        """Wait for the ``Connected`` event of link ``number``."""
        with anyio.fail_after(RECONNECT_TIMEOUT):
            while self.links < number:
                await self.connected.wait()

    async def caught_up(self, seq: int) -> None:
        while self.seq != seq:
            await self.progress.wait()


# ---- the scenario -----------------------------------------------------------------------


async def main(seconds: float) -> int:
    start = anyio.current_time()

    def say(text: str) -> None:
        print(f"[{anyio.current_time() - start:5.2f}s] {text}", flush=True)

    exchange = Exchange(seed=7)
    gateway = Gateway(exchange)
    async with anyio.create_task_group() as background:
        background.start_soon(exchange.run)
        port = await background.start(gateway.run)
        say(f"exchange: gateway listening on {HOST}:{port}, {UPDATES_PER_SECOND} updates/s")
        with FaultProxy(port) as proxy:
            async with resilient_ws.connect(proxy.url, backoff=CLIENT_BACKOFF) as ws:
                keeper = BookKeeper(ws, say)
                async with anyio.create_task_group() as client:
                    client.start_soon(keeper.follow_events)
                    client.start_soon(keeper.read_feed)
                    await keeper.resync("subscribing")
                    await break_things(proxy, gateway, keeper, seconds, say)
                    exchange.close()
                    with anyio.move_on_after(CATCH_UP_TIMEOUT):
                        await keeper.caught_up(exchange.seq)
                    client.cancel_scope.cancel()
                status = report(keeper, exchange, ws.stats, say)
        gateway.stop()
    return status


async def break_things(
    proxy: FaultProxy, gateway: Gateway, keeper: BookKeeper, seconds: float, say: Say
) -> None:
    """The three faults, each after the client is back from the previous one."""
    healthy = (seconds - OUTAGE) / 4  # time on a working link before each fault, and after
    await anyio.sleep(healthy)
    say("fault 1: TCP reset of every connection (FaultProxy.reset)")
    proxy.reset()
    await keeper.wait_for_link(2)
    await anyio.sleep(healthy)
    say(f"fault 2: {OUTAGE} s outage (FaultProxy.stop, then start)")
    proxy.stop()
    await anyio.sleep(OUTAGE)
    proxy.start()
    await keeper.wait_for_link(3)
    await anyio.sleep(healthy)
    say("fault 3: gateway restart: every session forgotten")
    gateway.restart()
    await keeper.wait_for_link(4)
    await anyio.sleep(healthy)


def report(
    keeper: BookKeeper, exchange: Exchange, stats: resilient_ws.ConnectionStats, say: Say
) -> int:
    say(
        f"summary: links {stats.links}, gaps {stats.gaps}, resyncs {len(keeper.resyncs) - 1}, "
        f"snapshots {keeper.snapshots}, updates applied {keeper.applied}, "
        f"discarded {keeper.discarded}, checksums verified {keeper.verified}, "
        f"mismatches {keeper.mismatches}"
    )
    if keeper.seq != exchange.seq:
        say(
            f"result: FAILED: the client's book is at seq {keeper.seq}, "
            f"the exchange's at {exchange.seq}"
        )
        return 1
    if keeper.mismatches or keeper.book != exchange.book:
        say("result: FAILED: the client's book does not match the exchange's")
        return 1
    say(
        f"result: OK: the book matches the exchange's at seq {exchange.seq} "
        f"(checksum {keeper.book.checksum():#010x})"
    )
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="about how long to run, at least 6 (default: %(default)s)",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    if args.seconds < 6:
        parser.error("--seconds must be at least 6")
    return args


if __name__ == "__main__":
    args = parse_args()
    sys.exit(anyio.run(main, args.seconds, backend=args.backend))
