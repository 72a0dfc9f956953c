"""An IoT device that keeps sending telemetry through a network outage, losing nothing.

Run it from the repository root::

    python examples/iot_device.py [--seconds 10] [--backend asyncio|trio]

A device sends a numbered reading 20 times a second to a collector built on
``resilient_ws.serve()``, through a ``resilient_ws.testing.FaultProxy``. Two seconds in,
the proxy blackholes the network for 5 s (nothing gets through, nothing is closed), then
resets every connection, as a carrier's NAT that forgot the flow would, and forwards again.

The device never stops sending. While the dead link is still open, ``send()`` numbers each
reading into the replay buffer; once the link is given up, into the send queue. When a link
is back, the replay protocol resumes the session, resends exactly what the collector lacks
and flushes the queue. The collector counts what arrived.

The exit status is 0 when every reading arrived exactly once and in order, 1 otherwise.

What the device's keepalive sees: the proxy terminates TCP, so the device's kernel keeps
getting ACKs from the proxy while nothing gets through it. The evidence then says "the
peer's kernel answers, its application does not": verdict ``server_stalled`` (evidence
``tcp_acked``), as behind a cloud load balancer. Such a link is kept for up to
``Keepalive.max_server_stall`` (150 s by default); this device lowers it to 2 s, because
its collector never stalls that long and a device should not sit on a dead link. Over a
direct path, Linux's TCP_INFO shows the probe being retransmitted and the verdict is
``network_dead`` within about 2 s (see docs/diagnosing.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

import resilient_ws
from resilient_ws.testing import FaultProxy

HOST = "127.0.0.1"
READINGS_PER_SECOND = 20
BLACKHOLE_AT = 2.0
OUTAGE = 5.0
# A silent link behind a proxy is given up after 2 s instead of 150 s (see the docstring).
DEVICE_KEEPALIVE = resilient_ws.Keepalive(max_server_stall=2.0)
# An attempt through a dead network hangs in the opening handshake: give up on it after 1 s
# (websockets' open_timeout; 10 s by default) and retry, at most 1 s apart.
OPEN_TIMEOUT = 1.0
DEVICE_BACKOFF = resilient_ws.Backoff(first_delay=0.1, max_delay=1.0)
# Longest wait at the end for the collector to receive the last reading.
DRAIN_TIMEOUT = 10.0

Say = Callable[[str], None]


class Collector:
    """The server side: stores the reading numbers in the order they arrived."""

    def __init__(self) -> None:
        self.readings: list[int] = []
        self.sessions = 0
        self.ended = anyio.Event()
        self._progress = anyio.Event()

    async def handle(self, session: resilient_ws.ServerSession) -> None:
        """``serve()``'s handler: one run per device session, across its reconnects."""
        self.sessions += 1
        async for message in session:
            self.readings.append(json.loads(message)["n"])
            self._progress.set()
        self.ended.set()

    async def wait_for(self, count: int) -> None:
        while len(self.readings) < count:
            await self._progress.wait()
            self._progress = anyio.Event()

    async def print_progress(self, say: Say) -> None:
        """Once a second: how many readings arrived, to show the outage and the catch-up."""
        seen = 0
        while True:
            await anyio.sleep(1.0)
            count = len(self.readings)
            say(f"collector: {count} readings (+{count - seen})")
            seen = count


@dataclass
class Timeline:
    """When things happened, on the event loop's clock (the clock of ``Event.at``)."""

    blackholed: float = math.nan
    restored: float = math.nan
    stalled: list[resilient_ws.PeerStalled] = field(default_factory=list)
    dropped: list[resilient_ws.Disconnected] = field(default_factory=list)
    reconnected: list[resilient_ws.Connected] = field(default_factory=list)
    resent: int = 0
    failed_attempts: int = 0


async def follow_events(ws: resilient_ws.Connection, timeline: Timeline, say: Say) -> None:
    """Print the device's lifecycle events and record what the summary needs."""
    async for event in ws.events():
        if isinstance(event, resilient_ws.PeerStalled):
            timeline.stalled.append(event)
            say(f"device: PeerStalled(evidence={event.evidence!r}): no answer to a probe")
        elif isinstance(event, resilient_ws.PeerRecovered):
            say(f"device: PeerRecovered(stalled_for={event.stalled_for:.2f})")
        elif isinstance(event, resilient_ws.Disconnected):
            if event.uptime is None:  # an attempt that never opened: count it
                timeline.failed_attempts += 1
                continue
            timeline.dropped.append(event)
            say(f"device: Disconnected(verdict={event.verdict!r}, cause={event.cause})")
        elif isinstance(event, resilient_ws.Connected):
            if event.link > 1:
                timeline.reconnected.append(event)
            retries = timeline.failed_attempts
            after = f" after {retries} failed attempt(s)" if retries else ""
            say(f"device: Connected(link={event.link}, flushed={event.flushed}){after}")
            timeline.failed_attempts = 0
        elif isinstance(event, resilient_ws.Resumed):
            timeline.resent += event.resent
            say(f"device: Resumed(resent={event.resent}): the collector lacked these")
        elif isinstance(event, (resilient_ws.Gap, resilient_ws.SessionLost)):
            say(f"device: {event}")


async def send_readings(ws: resilient_ws.Connection, until: float) -> int:
    """Send a numbered reading at a steady rate until ``until``; return how many."""
    start = anyio.current_time()
    sent = 0
    while anyio.current_time() < until:
        sent += 1
        celsius = round(21.0 + 2.0 * math.sin(sent / 40), 2)
        await ws.send(json.dumps({"n": sent, "celsius": celsius}))
        # Paced against the start: a send that waited does not lower the rate.
        await anyio.sleep_until(start + sent / READINGS_PER_SECOND)
    return sent


async def break_network(proxy: FaultProxy, timeline: Timeline, say: Say) -> None:
    await anyio.sleep(BLACKHOLE_AT)
    say(f"network: blackholed for {OUTAGE} s (FaultProxy.blackhole)")
    proxy.blackhole()
    timeline.blackholed = anyio.current_time()
    await anyio.sleep(OUTAGE)
    say("network: back, every old connection reset (FaultProxy.reset, restore)")
    proxy.reset()
    proxy.restore()
    timeline.restored = anyio.current_time()


async def main(seconds: float) -> int:
    start = anyio.current_time()

    def say(text: str) -> None:
        print(f"[{anyio.current_time() - start:5.2f}s] {text}", flush=True)

    collector = Collector()
    timeline = Timeline()
    async with (
        resilient_ws.serve(collector.handle, HOST, 0) as server,
        anyio.create_task_group() as background,
    ):
        with FaultProxy(server.port) as proxy:
            ws = resilient_ws.connect(
                proxy.url,
                keepalive=DEVICE_KEEPALIVE,
                backoff=DEVICE_BACKOFF,
                open_timeout=OPEN_TIMEOUT,
            )
            async with ws:
                background.start_soon(follow_events, ws, timeline, say)
                background.start_soon(collector.print_progress, say)
                background.start_soon(break_network, proxy, timeline, say)
                sent = await send_readings(ws, until=start + seconds - 1.0)
                say(f"device: sent {sent} readings; waiting for the collector to have them")
                with anyio.move_on_after(DRAIN_TIMEOUT):
                    await collector.wait_for(sent)
            # The device closed the session (code 1000): the handler's loop ends.
            with anyio.move_on_after(DRAIN_TIMEOUT):
                await collector.ended.wait()
            background.cancel_scope.cancel()
    return report(collector, sent, timeline, say)


def report(collector: Collector, sent: int, timeline: Timeline, say: Say) -> int:
    readings = collector.readings
    duplicates = len(readings) - len(set(readings))
    missing = sorted(set(range(1, sent + 1)) - set(readings))
    say(
        f"collector: {len(readings)} readings in {collector.sessions} session(s); "
        f"duplicates {duplicates}, missing {len(missing)}, "
        f"in order {readings == sorted(readings)}"
    )
    if timeline.stalled:
        noticed = timeline.stalled[0].at - timeline.blackholed
        say(
            f"summary: the silent link was noticed {noticed:.1f} s into the outage "
            f"(evidence {timeline.stalled[0].evidence!r})"
        )
    for dropped in timeline.dropped:
        into = dropped.at - timeline.blackholed
        say(f"summary: link dropped {into:.1f} s into the outage, verdict {dropped.verdict!r}")
    if timeline.reconnected:
        back = timeline.reconnected[-1].at
        last_drop = timeline.dropped[-1].at if timeline.dropped else math.nan
        say(
            f"summary: reconnected {back - timeline.restored:.2f} s after the network came "
            f"back, after {back - last_drop:.1f} s without a link; "
            f"{timeline.resent} readings resent by replay"
        )
    if readings != list(range(1, sent + 1)):
        say(f"result: FAILED: readings missing {missing[:10]}, duplicated {duplicates}")
        return 1
    say(f"result: OK: all {sent} readings arrived exactly once, in order")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="length of the run, at least 9 (default: %(default)s)",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    if args.seconds < 9:
        parser.error("--seconds must be at least 9")
    return args


if __name__ == "__main__":
    args = parse_args()
    sys.exit(anyio.run(main, args.seconds, backend=args.backend))
