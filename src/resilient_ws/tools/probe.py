"""``resilient-ws probe URL``: ``ping`` for WebSockets, against any server.

A :func:`~resilient_ws.connect` client that pings the link every ``--interval`` seconds
and prints the ping's round trip, the keepalive's smoothed RTT and adaptive timeout, the
server's loop lag (when it sends ``resilient_ws.serve()`` beacons), the socket's TCP state
and the verdict; every disconnect prints its verdict and cause. SRTT is marked ``(pong)``
or ``(kernel)``: before any keepalive pong (against ``serve()``, whose beacons keep an idle
link from being probed) it is the kernel's estimate of the path. Nothing is sent but pings,
and no replay session is opened. The library never prints; this module is an application.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from ..client import Connection, connect
from ..config import Backoff, Keepalive
from ..events import Connected, Disconnected, PeerRecovered, PeerStalled, Reconnecting
from ..exceptions import ResilientWSError

__all__ = ["run_probe"]


def run_probe(url: str, *, count: int | None, interval: float, as_json: bool) -> int:
    """Probe ``url``; return the exit status (0: every interval had a live link)."""
    try:
        return anyio.run(_probe, url, count, interval, as_json)
    except ResilientWSError as exc:
        _emit({"event": "failed", "error": str(exc)}, as_json, f"probe failed: {exc}")
        return 1


async def _probe(url: str, count: int | None, interval: float, as_json: bool) -> int:
    # A server down for 10 s (or 5 intervals) ends the probe (exit status 1), not hangs it.
    backoff = Backoff(max_delay=max(1.0, interval * 4), max_elapsed=max(10.0, 5 * interval))
    down = 0
    async with (
        connect(url, keepalive=Keepalive(), replay=None, backoff=backoff) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_report_events, ws, as_json)
        seq = 0
        while count is None or seq < count:
            started = anyio.current_time()
            seq += 1
            rtt = await _ping(ws, interval)
            sample = _sample(ws, seq, rtt)
            down += sample["state"] != "open"
            _emit(sample, as_json, _line(sample))
            await anyio.sleep_until(started + interval)
        tasks.cancel_scope.cancel()
    return 0 if down == 0 else 1


async def _ping(ws: Connection, wait_for: float) -> float | None:
    """The round trip of one ping on the live link, or ``None`` (no link, no pong in time)."""
    with anyio.move_on_after(wait_for):
        return await ws.ping()
    return None


def _sample(ws: Connection, seq: int, rtt: float | None) -> dict[str, Any]:
    stats = ws.stats
    sample: dict[str, Any] = {
        "event": "sample",
        "seq": seq,
        "state": stats.state,
        "rtt": rtt,
        "srtt": stats.srtt,
        "rttvar": stats.rttvar,
        "timeout": stats.timeout,
        "verdict": stats.verdict,
        "server_lag": stats.peer_lag,
        "reconnects": stats.reconnects,
    }
    sample["srtt_source"] = stats.srtt_source
    info = ws.tcp_info()
    sample["tcp"] = None if info is None else {
        "rtt": info.rtt,
        "rto": info.rto,
        "unacked": info.unacked,
        "retransmits": info.retransmits,
        "total_retrans": info.total_retrans,
    }  # fmt: skip
    return sample


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def _source(source: str | None) -> str:
    return "" if source is None else f" ({source})"


def _line(sample: dict[str, Any]) -> str:
    line = (
        f"seq={sample['seq']} {sample['state']} rtt={_ms(sample['rtt'])}"
        f" srtt={_ms(sample['srtt'])}{_source(sample['srtt_source'])}"
        f" rttvar={_ms(sample['rttvar'])}"
        f" timeout={_ms(sample['timeout'])}"
        f" verdict={sample['verdict']} server_lag={_ms(sample['server_lag'])}"
    )
    tcp = sample["tcp"]
    if tcp is not None:
        line += (
            f" tcp_rtt={_ms(tcp['rtt'])} unacked={tcp['unacked']} retransmits={tcp['retransmits']}"
        )
    return line


async def _report_events(ws: Connection, as_json: bool) -> None:
    async for event in ws.events():
        if isinstance(event, Connected):
            _emit({"event": "connected", "link": event.link}, as_json, f"connected to {event.url}")
        elif isinstance(event, Disconnected):
            record = {
                "event": "disconnected",
                "verdict": event.verdict,
                "cause": str(event.cause),
                "timeout": event.timeout,
            }
            _emit(record, as_json, f"disconnected: {event.cause} (verdict {event.verdict})")
        elif isinstance(event, Reconnecting):
            record = {"event": "reconnecting", "attempt": event.attempt, "delay": event.delay}
            _emit(record, as_json, f"reconnecting in {event.delay:.2f} s")
        elif isinstance(event, PeerStalled):
            record = {"event": "server_stalled", "evidence": event.evidence}
            _emit(record, as_json, f"server stalled (evidence: {event.evidence})")
        elif isinstance(event, PeerRecovered):
            record = {"event": "server_recovered", "stalled_for": event.stalled_for}
            _emit(record, as_json, f"server recovered after {event.stalled_for:.2f} s")


def _emit(record: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(record) if as_json else text, file=sys.stdout, flush=True)
