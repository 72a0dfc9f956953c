"""Benchmark liveness: resilient_ws's adaptive keepalive vs websockets' fixed one.

    sudo python bench/bench_liveness.py [--runs 5] [--raw-runs N] [--stalls 10,45]
                                        [--stall-clients 2] [--traffic-seconds 20]
                                        [--busy-rate 50] [--server plain|resilient]
                                        [--serve-runs 10] [--serve-raw-runs 3]
                                        [--failover-runs 20] [--failover-raw-runs 3]
                                        [--backends asyncio,trio]
                                        [--scenarios dead,stall,traffic,serve-dead,failover]
                                        [--json]

Both clients run with their defaults, side by side in this process: ``resilient_ws.connect(url)``
(``Keepalive()``: a probe after 1 s without an inbound frame, an adaptive pong timeout, a
verdict from TCP_INFO when a pong is overdue) and ``websockets.asyncio.client.connect(url)``
(a ping every 20 s, close 1011 after 20 s without its pong, then up to ``close_timeout`` 10 s
for the closing handshake). The servers are child processes started from this file (hidden
``--serve`` flag), killed by pid on the way out: a plain websockets asyncio server with its own
keepalive off, so that what is measured is the client's (``--server resilient``:
``resilient_ws.serve()`` with its defaults, lag beacons and stall-aware keepalive). Each server
counts the control frames of every connection by wrapping its protocol's ``recv_frame`` and
``send_frame``.

1. Dead network (root and iptables; skipped with the reason otherwise). With an idle link,
   DROP rules on INPUT for 127.0.0.1 with ``--dport PORT`` and ``--sport PORT`` (both
   directions; a unique port per server) go in at a random moment. Measured from just before
   the first insert to ``Disconnected`` (resilient; its verdict is reported) or to
   ``ConnectionClosed`` out of ``recv()`` (raw; the moment its keepalive gave up and sent
   close 1011 is reported too). The rules are deleted in ``finally`` blocks, and once more
   before exit. A raw run takes 20-50 s, so the raw runs go in parallel, each with its own
   server and port, while the resilient runs go one after another on a server of their own.
2. Server stall. ``--stall-clients`` raw and as many resilient clients connect to one server
   and stay idle; a control connection makes the server run ``ctypes.PyDLL(None).sleep(N)``
   in ``asyncio.to_thread`` (the call keeps the GIL: the server's event loop cannot run,
   while its kernel still ACKs). Counts the clients that lost their connection between their
   connect and 5 s after the stall's end, and samples resilient_ws's ``stats.verdict``.
3. Probe traffic. One raw and one resilient client on an idle link, one of each on a busy link
   (the server sends ``--busy-rate`` small messages a second), all at once; over
   ``--traffic-seconds`` the server counts the pings each client sent and the bytes of every
   control frame (WebSocket frame bytes: TCP/IP headers are not included).
4. Dead network against ``resilient_ws.serve()`` (issue 9, item 6; root and iptables). As 1,
   but always against a ``serve()`` child with its defaults: its lag beacons arrive every
   second, so the client never probes an idle link and its only RTT is the kernel's
   (``tcpi_rtt``). Reports whether ``stats.srtt`` was known before the drop and the pong
   timeout then; ``--serve-raw-runs`` raw clients run in parallel for comparison.
5. Failover under traffic (issue 9, item 8; root and iptables). ``urls=[primary, backup]``,
   two plain servers that read and never answer, the client sending a small message every
   10 ms; after 2-4 s a DROP on the primary's port. Measured from just before the first rule
   to ``Connected`` on the backup, ``--failover-runs`` times on each of ``--backends``;
   every run's ``PeerStalled`` evidence is counted. Raw websockets has no failover: its
   ``--failover-raw-runs`` runs (in parallel, same traffic) report when its keepalive closes,
   the first moment an application could move to a backup.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.metadata
import json
import math
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import anyio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import ConnectionClosed as RawConnectionClosed
from websockets.frames import Frame, Opcode

import resilient_ws

WEBSOCKETS_VERSION = importlib.metadata.version("websockets")
HOST = "127.0.0.1"
CONTROL = "/control"
TAG = "resilient_ws-bench-liveness"  # iptables comment on every rule this script inserts

# Targets from issue 3.
DEAD_MEDIAN_TARGET = 2.0
STALL_TARGET_SECONDS = 120
MAX_SERVER_STALL = resilient_ws.Keepalive().max_server_stall

# Dead network: idle time before the drop. Resilient: long enough for a few pongs (an RTT
# estimate), random so the drop lands anywhere in its 1 s probe cycle. Raw: a random phase
# of its 20 s ping cycle.
RESILIENT_IDLE = (2.0, 4.0)
RAW_IDLE = (1.0, 21.0)
DETECT_BOUND = 80.0  # raw worst case: 20 s to the next ping + 20 s timeout + 10 s close
RECONNECT_BOUND = 30.0
# Server stall: idle time before the stall, and how long after it disconnects still count.
STALL_SETTLE = 3.0
STALL_GRACE = 5.0
SAMPLE_EVERY = 0.1
# Failover (issue 9, item 8): time the client streams before the drop, its send interval,
# the target and the wait for the backup.
FAILOVER_IDLE = (2.0, 4.0)
FAILOVER_SEND_EVERY = 0.01
FAILOVER_TARGET = 3.0
FAILOVER_BOUND = 20.0
# Dead network against serve() (issue 9, item 6): median target.
SERVE_DEAD_MEDIAN_TARGET = 1.5
# Probe traffic: time for the busy streams to start before counting.
TRAFFIC_SETTLE = 2.0
# Bounds on waits and retries.
SERVER_START_TIMEOUT = 30.0
MAX_DELETES = 5

# Child servers and iptables rules still to clean up if a finally block could not.
_CHILDREN: dict[int, subprocess.Popen[str]] = {}
# The pid of the child server listening on each port (to SIGSTOP it).
_PIDS: dict[int, int] = {}
_RULES_IN_PLACE: list[list[str]] = []

T = TypeVar("T")


# ---- server (child process) -----------------------------------------------------------


def hold_gil(seconds: int) -> None:
    """Sleep in libc's ``sleep()``: a ``PyDLL`` call does not release the GIL."""
    ctypes.PyDLL(None).sleep(seconds)


def _frame_size(frame: Frame, *, masked: bool) -> int:
    """Bytes of ``frame`` on the wire (RFC 6455 section 5.2); client frames are masked."""
    length = len(frame.data)
    extended = 0 if length < 126 else 2 if length < 65536 else 8
    return 2 + extended + (4 if masked else 0) + length


def _count_frames(protocol: Any, counters: Counter[str]) -> None:
    """Wrap a server connection's ``recv_frame``/``send_frame`` to count control frames.

    A pong sent while a received ping awaits its answer is the reply (websockets sends it
    from inside ``recv_frame``); any other pong is unsolicited (resilient_ws's lag beacons).
    """
    recv_frame, send_frame = protocol.recv_frame, protocol.send_frame
    unanswered = [0]

    def counting_recv_frame(frame: Frame) -> None:
        size = _frame_size(frame, masked=True)
        if frame.opcode is Opcode.PING:
            counters["client_pings"] += 1
            counters["client_ping_bytes"] += size
            unanswered[0] += 1
        elif frame.opcode is Opcode.PONG:
            counters["client_pongs"] += 1
            counters["client_pong_bytes"] += size
        elif frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            counters["data_in"] += 1
        recv_frame(frame)

    def counting_send_frame(frame: Frame) -> None:
        size = _frame_size(frame, masked=False)
        if frame.opcode is Opcode.PONG and unanswered[0]:
            unanswered[0] -= 1
            counters["pong_replies"] += 1
            counters["pong_reply_bytes"] += size
        elif frame.opcode is Opcode.PONG:
            counters["beacons"] += 1
            counters["beacon_bytes"] += size
        elif frame.opcode is Opcode.PING:
            counters["server_pings"] += 1
            counters["server_ping_bytes"] += size
        elif frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            counters["data_out"] += 1
        send_frame(frame)

    protocol.recv_frame = counting_recv_frame
    protocol.send_frame = counting_send_frame


async def _stream(ws: Any, rate: float) -> None:
    """Send small messages at ``rate`` per second until the connection closes."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with suppress(RawConnectionClosed):
        for i in range(10**9):
            await ws.send(f"tick {i}")
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))


async def _control(ws: Any, stats: dict[str, Counter[str]]) -> None:
    """``stats``: answer the counters as JSON. ``stall N``: answer ``stalling N``, hold the
    GIL for N s in ``asyncio.to_thread``, then answer ``stalled N``."""
    async for message in ws:
        words = str(message).split()
        if words == ["stats"]:
            await ws.send(json.dumps(stats))
        elif len(words) == 2 and words[0] == "stall":
            seconds = int(words[1])
            await ws.send(f"stalling {seconds}")
            await asyncio.to_thread(hold_gil, seconds)
            await ws.send(f"stalled {seconds}")
        else:
            await ws.send(f"unknown command {message!r}")


async def _serve(kind: str, busy_rate: float) -> None:
    stats: dict[str, Counter[str]] = {}

    async def handler(ws: Any) -> None:
        path = ws.request.path
        if path == CONTROL:
            await _control(ws, stats)
            return
        counters = stats.setdefault(path, Counter())
        # A serve() session has no protocol of its own to count frames on (its links do).
        protocol = getattr(ws, "protocol", None)
        if protocol is not None:
            _count_frames(protocol, counters)
        streaming = None
        if path.startswith("/busy/"):
            streaming = asyncio.create_task(_stream(ws, busy_rate))
        try:
            async for _ in ws:
                pass
        except RawConnectionClosed:
            pass  # a client that vanished (its socket aborted): expected here
        finally:
            if streaming is not None:
                streaming.cancel()

    if kind == "resilient":
        async with resilient_ws.serve(handler, HOST, 0) as server:
            print(server.port, flush=True)
            await server.serve_forever()
        return
    from websockets.asyncio.server import serve

    async with serve(handler, HOST, 0, ping_interval=None, compression=None) as plain:
        print(plain.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


@contextmanager
def _child_server(args: argparse.Namespace, kind: str | None = None) -> Iterator[int]:
    """Start a server in a child process (``kind``: plain or resilient, default
    ``--server``); yield its port; kill it by pid on the way out."""
    kind = args.server if kind is None else kind
    command = [sys.executable, __file__, "--serve", kind, "--busy-rate", str(args.busy_rate)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _CHILDREN[process.pid] = process
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], SERVER_START_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"the server did not start (pid {process.pid}, said {line!r})")
        _PIDS[int(line)] = process.pid
        yield int(line)
    finally:
        _kill_child(process)


def _kill_child(process: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _CHILDREN.pop(process.pid, None)


# ---- iptables -------------------------------------------------------------------------


def _iptables_unavailable() -> str | None:
    """Why the dead-network scenario cannot run here, or None if it can."""
    if shutil.which("iptables") is None:
        return "iptables is not installed"
    if os.geteuid() != 0:
        return "iptables needs root"
    return None


def _drop_rules(port: int) -> list[list[str]]:
    """DROP both directions of every connection to ``127.0.0.1:port`` (loopback packets
    pass INPUT both ways)."""
    match = ["INPUT", "-s", HOST, "-d", HOST, "-p", "tcp"]
    action = ["-m", "comment", "--comment", TAG, "-j", "DROP"]
    return [[*match, "--dport", str(port), *action], [*match, "--sport", str(port), *action]]


async def _iptables(*args: str) -> int:
    with anyio.fail_after(30):
        done = await anyio.run_process(["iptables", "-w", "10", *args], check=False)
    return done.returncode


async def _delete_rule(rule: list[str]) -> None:
    for _ in range(MAX_DELETES):  # delete every copy, bounded
        if await _iptables("-D", *rule) != 0:
            break
    if await _iptables("-C", *rule) == 0:
        raise RuntimeError(f"iptables rule left behind: {' '.join(rule)}")
    with suppress(ValueError):
        _RULES_IN_PLACE.remove(rule)


@asynccontextmanager
async def _network_dropped(port: int) -> AsyncIterator[None]:
    rules = _drop_rules(port)
    try:
        for rule in rules:
            _RULES_IN_PLACE.append(rule)
            if await _iptables("-I", *rule) != 0:
                raise RuntimeError(f"iptables -I {' '.join(rule)} failed")
        yield
    finally:
        with anyio.CancelScope(shield=True):
            for rule in rules:
                await _delete_rule(rule)


def _delete_leftover_rules() -> list[str]:
    """Last resort, synchronous: delete the rules a finally block could not; report them."""
    left = []
    for rule in list(_RULES_IN_PLACE):
        command = ["iptables", "-w", "10", "-D", *rule]
        for _ in range(MAX_DELETES):
            done = subprocess.run(command, capture_output=True, check=False, timeout=30)
            if done.returncode != 0:
                break
        check = ["iptables", "-w", "10", "-C", *rule]
        if subprocess.run(check, capture_output=True, check=False, timeout=30).returncode == 0:
            left.append(" ".join(rule))
        _RULES_IN_PLACE.remove(rule)
    return left


# ---- client helpers -------------------------------------------------------------------


class _Events:
    """Records a resilient connection's lifecycle events as they come."""

    def __init__(self, ws: resilient_ws.Connection) -> None:
        self._ws = ws
        self.seen: list[resilient_ws.Event] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for event in self._ws.events():
            self.seen.append(event)
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, kind: type[T], since: float) -> T:
        """The first event of ``kind`` at or after ``since``, waiting for it if needed."""
        while True:
            for event in self.seen:
                if isinstance(event, kind) and event.at >= since:
                    return event
            await self._changed.wait()

    def of(self, kind: type[T]) -> list[T]:
        return [event for event in self.seen if isinstance(event, kind)]


@dataclass
class _RawWatch:
    """How a raw websockets connection ended: when, and when it sent its close frame."""

    messages: int = 0
    closed_at: float | None = None
    close_sent_at: float | None = None
    detail: str = ""


def _note_close_frame(ws: ClientConnection, watch: _RawWatch) -> None:
    """Record when the client sends its close frame (its keepalive gave up, on timeout)."""
    protocol: Any = ws.protocol
    send_frame = protocol.send_frame

    def noting_send_frame(frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE and watch.close_sent_at is None:
            watch.close_sent_at = time.monotonic()  # the asyncio loop's clock
        send_frame(frame)

    protocol.send_frame = noting_send_frame


async def _watch_raw(ws: ClientConnection, watch: _RawWatch) -> None:
    """Read until the connection closes, counting messages."""
    try:
        while True:
            await ws.recv()
            watch.messages += 1
    except RawConnectionClosed as exc:
        watch.closed_at = anyio.current_time()
        watch.detail = str(exc)


async def _drain(ws: resilient_ws.Connection, received: Counter[str], name: str) -> None:
    with suppress(resilient_ws.ConnectionClosed):
        async for _ in ws:
            received[name] += 1


def _describe(event: resilient_ws.Event, start: float) -> str:
    """``+1.23 Disconnected verdict=network_dead``: an event, briefly, for the JSON report."""
    fields = {
        name: getattr(event, name)
        for name in ("verdict", "attempt", "delay", "evidence", "stalled_for", "link")
        if hasattr(event, name)
    }
    text = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )
    return f"{event.at - start:+.2f} {type(event).__name__} {text}".rstrip()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _max(values: list[float]) -> float | None:
    return max(values) if values else None


# ---- 1. dead network ------------------------------------------------------------------


@dataclass
class DeadRun:
    client: str
    run: int
    port: int
    idle_before_drop: float
    detected: float | None = None
    """Seconds from the drop to Disconnected (resilient) or ConnectionClosed (raw)."""
    verdict: str | None = None
    keepalive_gave_up: float | None = None
    """Raw: seconds from the drop to its close frame (ping timeout)."""
    reconnected: float | None = None
    """Resilient: seconds from the start of the rules' removal to Connected."""
    srtt: float | None = None
    timeout: float | None = None
    detail: str = ""
    trail: list[str] = field(default_factory=list)
    """Resilient: its events, seconds from the drop."""
    removal_started: float | None = None
    """Resilient: when the rules' removal started, seconds from the drop."""


async def _dead_resilient(port: int, run: int) -> DeadRun:
    url = f"ws://{HOST}:{port}/dead/resilient/{run}"
    idle = random.uniform(*RESILIENT_IDLE)
    result = DeadRun("resilient", run, port, idle)
    async with resilient_ws.connect(url) as ws, anyio.create_task_group() as tasks:
        events = _Events(ws)
        tasks.start_soon(events.run)
        await anyio.sleep(idle)
        stats = ws.stats
        result.srtt, result.timeout = stats.srtt, stats.timeout
        start = anyio.current_time()
        lost = None
        async with _network_dropped(port):
            with anyio.move_on_after(DETECT_BOUND):
                lost = await events.wait_for(resilient_ws.Disconnected, start)
            # The rules are deleted from here on: a reconnect may complete in between.
            removing = anyio.current_time()
        if lost is not None:
            result.detected, result.verdict = lost.at - start, lost.verdict
            result.detail = str(lost.cause)
            with anyio.move_on_after(RECONNECT_BOUND):
                back = await events.wait_for(resilient_ws.Connected, removing)
                result.reconnected = back.at - removing
        tasks.cancel_scope.cancel()
    result.removal_started = removing - start
    result.trail = [_describe(event, start) for event in events.seen if event.at >= start]
    return result


async def _dead_raw(port: int, run: int) -> DeadRun:
    url = f"ws://{HOST}:{port}/dead/raw/{run}"
    idle = random.uniform(*RAW_IDLE)
    result = DeadRun("raw", run, port, idle)
    watch = _RawWatch()
    async with raw_connect(url) as ws:
        _note_close_frame(ws, watch)
        await anyio.sleep(idle)
        start = anyio.current_time()
        async with _network_dropped(port):
            with anyio.move_on_after(DETECT_BOUND):
                await _watch_raw(ws, watch)
            cutoff = anyio.current_time()  # our own close on the way out does not count
    if watch.close_sent_at is not None and watch.close_sent_at > cutoff:
        watch.close_sent_at = None
    if watch.closed_at is not None:
        result.detected = watch.closed_at - start
        result.detail = watch.detail
    if watch.close_sent_at is not None:
        result.keepalive_gave_up = watch.close_sent_at - start
    return result


async def _dead_network(resilient_port: int, raw_ports: list[int], runs: int) -> list[DeadRun]:
    results: list[DeadRun] = []

    async def raw_run(port: int, run: int) -> None:
        results.append(await _dead_raw(port, run))

    async def resilient_runs() -> None:
        for run in range(runs):
            results.append(await _dead_resilient(resilient_port, run))

    async with anyio.create_task_group() as tasks:
        for run, port in enumerate(raw_ports):
            tasks.start_soon(raw_run, port, run)
        tasks.start_soon(resilient_runs)
    return sorted(results, key=lambda r: (r.client, r.run))


# ---- 4. failover under traffic ---------------------------------------------------------


@dataclass
class FailoverRun:
    client: str
    backend: str
    run: int
    idle_before_drop: float
    sent_before_drop: int = 0
    on_backup: float | None = None
    """Resilient: seconds from the drop to Connected on the backup URL."""
    detected: float | None = None
    """Seconds from the drop to Disconnected (resilient) or ConnectionClosed (raw)."""
    verdict: str | None = None
    stalled_evidence: list[str] = field(default_factory=list)
    """Resilient: the evidence of every PeerStalled between the drop and the failover."""
    trail: list[str] = field(default_factory=list)


async def _send_every(ws: Any, interval: float, sent: list[int]) -> None:
    """Send a small message every ``interval`` seconds (raw or resilient connection)."""
    with suppress(resilient_ws.ConnectionClosed, RawConnectionClosed):
        for i in range(10**9):
            await ws.send(f"tick {i}")
            sent[0] += 1
            await anyio.sleep(interval)


async def _failover_resilient(primary: int, backup: int, run: int, backend: str) -> FailoverRun:
    """Issue 9, item 8: urls=[primary, backup], plain servers that never answer, the client
    sending every 10 ms, then DROP on the primary's port at a random moment."""
    urls = [f"ws://{HOST}:{port}/failover/{backend}/{run}" for port in (primary, backup)]
    idle = random.uniform(*FAILOVER_IDLE)
    result = FailoverRun("resilient", backend, run, idle)
    sent = [0]
    async with resilient_ws.connect(urls=urls) as ws, anyio.create_task_group() as tasks:
        events = _Events(ws)
        tasks.start_soon(events.run)
        await events.wait_for(resilient_ws.Connected, 0.0)
        tasks.start_soon(_send_every, ws, FAILOVER_SEND_EVERY, sent)
        await anyio.sleep(idle)
        result.sent_before_drop = sent[0]
        start = anyio.current_time()
        async with _network_dropped(primary):
            with anyio.move_on_after(FAILOVER_BOUND):
                since = start
                while result.on_backup is None:  # bounded by FAILOVER_BOUND
                    moved = await events.wait_for(resilient_ws.Connected, since)
                    if moved.url == urls[1]:
                        result.on_backup = moved.at - start
                    since = moved.at + 1e-9  # back on the primary: wait for the next one
        tasks.cancel_scope.cancel()
    lost = [event for event in events.of(resilient_ws.Disconnected) if event.at >= start]
    if lost:
        result.detected, result.verdict = lost[0].at - start, lost[0].verdict
    result.stalled_evidence = [
        event.evidence for event in events.of(resilient_ws.PeerStalled) if event.at >= start
    ]
    result.trail = [_describe(event, start) for event in events.seen if event.at >= start]
    return result


async def _failover_aimed(primary: int, backup: int, run: int, backend: str) -> FailoverRun:
    """Item 8 aimed at its window: the primary is SIGSTOPped while the client streams (its
    kernel ACKs: server_stalled), and the path is cut 0.1 s after the stall's re-probe, once
    an ACK of older data has followed it; every newer byte then goes unacknowledged."""
    urls = [f"ws://{HOST}:{port}/aimed/{backend}/{run}" for port in (primary, backup)]
    result = FailoverRun("aimed", backend, run, 0.0)
    sent = [0]
    pid = _PIDS[primary]
    async with resilient_ws.connect(urls=urls) as ws, anyio.create_task_group() as tasks:
        events = _Events(ws)
        tasks.start_soon(events.run)
        await events.wait_for(resilient_ws.Connected, 0.0)
        tasks.start_soon(_send_every, ws, FAILOVER_SEND_EVERY, sent)
        await anyio.sleep(random.uniform(0.0, 1.0))
        os.kill(pid, signal.SIGSTOP)
        start = anyio.current_time()
        try:
            with anyio.fail_after(FAILOVER_BOUND):
                stalled = await events.wait_for(resilient_ws.PeerStalled, start)
            timeout = ws.stats.timeout or 0.0
            # The stall's first probe went out one timeout before the verdict; the keepalive
            # probes again max(idle, timeout) after it.
            reprobe = stalled.at - timeout + max(resilient_ws.Keepalive().idle, timeout)
            await anyio.sleep_until(reprobe + 0.1)
            result.idle_before_drop = anyio.current_time() - start
            result.sent_before_drop = sent[0]
            start = anyio.current_time()
            async with _network_dropped(primary):
                with anyio.move_on_after(FAILOVER_BOUND):
                    moved = await events.wait_for(resilient_ws.Connected, start)
                    if moved.url == urls[1]:
                        result.on_backup = moved.at - start
            tasks.cancel_scope.cancel()
        finally:
            os.kill(pid, signal.SIGCONT)
    lost = [event for event in events.of(resilient_ws.Disconnected) if event.at >= start]
    if lost:
        result.detected, result.verdict = lost[0].at - start, lost[0].verdict
    result.stalled_evidence = [event.evidence for event in events.of(resilient_ws.PeerStalled)]
    result.trail = [_describe(event, start) for event in events.seen if event.at >= start]
    return result


async def _failover_runs(
    primary: int, backup: int, runs: int, aimed: int, backend: str
) -> list[FailoverRun]:
    results = [await _failover_resilient(primary, backup, run, backend) for run in range(runs)]
    for run in range(aimed):
        results.append(await _failover_aimed(primary, backup, run, backend))
    return results


async def _failover_raw_one(port: int, run: int) -> FailoverRun:
    """Raw websockets, same traffic: when its keepalive lets an application fail over."""
    idle = random.uniform(*FAILOVER_IDLE)
    result = FailoverRun("raw", "asyncio", run, idle)
    sent = [0]
    url = f"ws://{HOST}:{port}/failover/raw/{run}"
    async with raw_connect(url) as ws, anyio.create_task_group() as tasks:
        tasks.start_soon(_send_every, ws, FAILOVER_SEND_EVERY, sent)
        await anyio.sleep(idle)
        result.sent_before_drop = sent[0]
        start = anyio.current_time()
        async with _network_dropped(port):
            with anyio.move_on_after(DETECT_BOUND):
                await ws.wait_closed()
                result.detected = anyio.current_time() - start
                result.verdict = str(ws.close_reason or ws.close_code)
        tasks.cancel_scope.cancel()
    return result


async def _failover_raw(ports: list[int]) -> list[FailoverRun]:
    results: list[FailoverRun] = []

    async def one(port: int, run: int) -> None:
        results.append(await _failover_raw_one(port, run))

    async with anyio.create_task_group() as tasks:
        for run, port in enumerate(ports):
            tasks.start_soon(one, port, run)
    return sorted(results, key=lambda r: r.run)


# ---- 2. server stall ------------------------------------------------------------------


@dataclass
class StallResult:
    seconds: int
    measured: float
    clients: int
    raw_lost: int
    raw_lost_at: list[float] = field(default_factory=list)
    """Seconds into the stall when each lost raw client saw ConnectionClosed."""
    raw_close_sent_at: list[float] = field(default_factory=list)
    """Seconds into the stall when each raw client's keepalive gave up (close 1011)."""
    raw_details: list[str] = field(default_factory=list)
    resilient_lost: int = 0
    resilient_lost_verdicts: list[str] = field(default_factory=list)
    resilient_lost_at: list[float] = field(default_factory=list)
    verdict_share: dict[str, float] = field(default_factory=dict)
    """Share of ``stats.verdict`` samples (every 0.1 s, all resilient clients) in the stall."""
    longest_unknown: list[float] = field(default_factory=list)
    """Per resilient client, the longest run of ``"unknown"`` samples in the stall, seconds
    (after ``Keepalive.unknown_timeout``, 20 s, of it the link is abandoned)."""
    peer_stalled: int = 0
    peer_stalled_evidence: list[str] = field(default_factory=list)
    peer_stalled_at: list[float] = field(default_factory=list)
    """Seconds into the stall of each PeerStalled event."""
    stalled_for: list[float] = field(default_factory=list)
    """PeerRecovered.stalled_for of each resilient client."""


async def _stall(port: int, seconds: int, clients: int) -> StallResult:
    base = f"ws://{HOST}:{port}"
    async with AsyncExitStack() as stack:
        control = await stack.enter_async_context(
            raw_connect(f"{base}{CONTROL}", ping_interval=None)
        )
        resilient: list[resilient_ws.Connection] = []
        raw: list[ClientConnection] = []
        for i in range(clients):
            # Random pauses: the clients' probe (and ping) cycles out of step.
            await anyio.sleep(random.uniform(0.0, 1.0))
            url = f"{base}/stall/resilient/{i}"
            resilient.append(await stack.enter_async_context(resilient_ws.connect(url)))
            await anyio.sleep(random.uniform(0.0, 1.0))
            raw.append(await stack.enter_async_context(raw_connect(f"{base}/stall/raw/{i}")))
        watches = [_RawWatch() for _ in raw]
        recorders = [_Events(ws) for ws in resilient]
        async with anyio.create_task_group() as tasks:
            for ws, watch in zip(raw, watches, strict=True):
                _note_close_frame(ws, watch)
                tasks.start_soon(_watch_raw, ws, watch)
            for recorder in recorders:
                tasks.start_soon(recorder.run)
            await anyio.sleep(STALL_SETTLE)
            await control.send(f"stall {seconds}")
            with anyio.fail_after(10):
                await control.recv()  # "stalling N"
            start = anyio.current_time()
            samples: list[list[str]] = [[] for _ in resilient]
            sampling = anyio.CancelScope()
            tasks.start_soon(_sample_verdicts, resilient, samples, sampling)
            with anyio.fail_after(seconds + 60):
                await control.recv()  # "stalled N"
            sampling.cancel()
            end = anyio.current_time()
            await anyio.sleep(STALL_GRACE)
            cutoff = anyio.current_time()  # our own closes on the way out do not count
            tasks.cancel_scope.cancel()

    result = StallResult(seconds, end - start, clients, raw_lost=0)
    every = Counter(verdict for per_client in samples for verdict in per_client)
    total = sum(every.values()) or 1
    result.verdict_share = {verdict: count / total for verdict, count in every.most_common()}
    result.longest_unknown = [
        _longest_run(per_client, "unknown") * SAMPLE_EVERY for per_client in samples
    ]
    for watch in watches:
        if watch.close_sent_at is not None and watch.close_sent_at <= cutoff:
            result.raw_close_sent_at.append(watch.close_sent_at - start)
        if watch.closed_at is not None:
            result.raw_lost += 1
            result.raw_lost_at.append(watch.closed_at - start)
            result.raw_details.append(watch.detail)
    for recorder in recorders:
        for lost in recorder.of(resilient_ws.Disconnected):
            result.resilient_lost += 1
            result.resilient_lost_verdicts.append(lost.verdict)
            result.resilient_lost_at.append(lost.at - start)
        for stalled in recorder.of(resilient_ws.PeerStalled):
            result.peer_stalled += 1
            result.peer_stalled_evidence.append(stalled.evidence)
            result.peer_stalled_at.append(stalled.at - start)
        result.stalled_for += [r.stalled_for for r in recorder.of(resilient_ws.PeerRecovered)]
    return result


async def _sample_verdicts(
    clients: list[resilient_ws.Connection], samples: list[list[str]], scope: anyio.CancelScope
) -> None:
    """Note every client's ``stats.verdict`` every SAMPLE_EVERY s until ``scope`` is cancelled."""
    with scope:
        while True:
            for ws, per_client in zip(clients, samples, strict=True):
                per_client.append(ws.stats.verdict)
            await anyio.sleep(SAMPLE_EVERY)


def _longest_run(values: list[str], wanted: str) -> int:
    longest = current = 0
    for value in values:
        current = current + 1 if value == wanted else 0
        longest = max(longest, current)
    return longest


# ---- 3. probe traffic -----------------------------------------------------------------


@dataclass
class TrafficResult:
    link: str
    client: str
    seconds: float
    client_pings: int
    probe_bytes_per_s: float
    """The client's pings and the server's replies, WebSocket frame bytes per second."""
    control_bytes_per_s: float
    """Every control frame both ways (server pings, client pongs, beacons too)."""
    server_pings: int
    beacons: int
    messages_streamed: int


async def _server_stats(control: ClientConnection) -> dict[str, dict[str, int]]:
    await control.send("stats")
    with anyio.fail_after(10):
        stats: dict[str, dict[str, int]] = json.loads(await control.recv())
    return stats


async def _traffic(port: int, seconds: float) -> list[TrafficResult]:
    base = f"ws://{HOST}:{port}"
    names = [f"{link}/{client}" for link in ("idle", "busy") for client in ("raw", "resilient")]
    async with AsyncExitStack() as stack:
        control = await stack.enter_async_context(
            raw_connect(f"{base}{CONTROL}", ping_interval=None)
        )
        connections: dict[str, Any] = {}
        for name in names:
            connect: Any = raw_connect if name.endswith("/raw") else resilient_ws.connect
            connections[name] = await stack.enter_async_context(connect(f"{base}/{name}"))
        received: Counter[str] = Counter()
        async with anyio.create_task_group() as tasks:
            for name, ws in connections.items():
                if name.endswith("/raw"):
                    tasks.start_soon(_watch_raw, ws, _RawWatch())
                else:
                    tasks.start_soon(_drain, ws, received, name)
            await anyio.sleep(TRAFFIC_SETTLE)
            before = await _server_stats(control)
            start = anyio.current_time()
            await anyio.sleep(seconds)
            after = await _server_stats(control)
            elapsed = anyio.current_time() - start
            tasks.cancel_scope.cancel()

    results = []
    for name in names:
        path = f"/{name}"
        delta = Counter(after.get(path, {}))
        delta.subtract(before.get(path, {}))
        probe = delta["client_ping_bytes"] + delta["pong_reply_bytes"]
        control_bytes = probe + sum(
            delta[key] for key in ("client_pong_bytes", "beacon_bytes", "server_ping_bytes")
        )
        link, client = name.split("/")
        results.append(
            TrafficResult(
                link=link,
                client=client,
                seconds=elapsed,
                client_pings=delta["client_pings"],
                probe_bytes_per_s=probe / elapsed,
                control_bytes_per_s=control_bytes / elapsed,
                server_pings=delta["server_pings"],
                beacons=delta["beacons"],
                messages_streamed=delta["data_out"],
            )
        )
    return results


# ---- running the scenarios ------------------------------------------------------------


def run_scenarios(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if "dead" in args.scenarios:
        why_not = _iptables_unavailable()
        if why_not is not None:
            report["dead_network"] = {"skipped": why_not}
        else:
            with _child_server(args) as resilient_port, _child_servers(args) as raw_ports:
                runs = anyio.run(_dead_network, resilient_port, raw_ports, args.runs)
            report["dead_network"] = {"runs": [asdict(run) for run in runs]}
    if "stall" in args.scenarios:
        stalls = []
        for seconds in args.stalls:
            with _child_server(args) as port:
                stalls.append(asdict(anyio.run(_stall, port, seconds, args.stall_clients)))
        report["stalls"] = stalls
    if "traffic" in args.scenarios:
        with _child_server(args) as port:
            traffic = anyio.run(_traffic, port, args.traffic_seconds)
        report["traffic"] = [asdict(row) for row in traffic]
    if "serve-dead" in args.scenarios:
        why_not = _iptables_unavailable()
        if why_not is not None:
            report["serve_dead"] = {"skipped": why_not}
        else:
            with (
                _child_server(args, "resilient") as port,
                _child_servers(args, args.serve_raw_runs, "resilient") as raw_ports,
            ):
                runs = anyio.run(_dead_network, port, raw_ports, args.serve_runs)
            report["serve_dead"] = {"runs": [asdict(run) for run in runs]}
    if "failover" in args.scenarios:
        why_not = _iptables_unavailable()
        if why_not is not None:
            report["failover"] = {"skipped": why_not}
        else:
            failover: list[dict[str, Any]] = []
            for backend in args.backends:
                with _child_servers(args, 2, "plain") as (primary, backup):
                    counts = (args.failover_runs, args.aimed_runs)
                    runs = anyio.run(
                        _failover_runs, primary, backup, *counts, backend, backend=backend
                    )
                failover += [asdict(run) for run in runs]
            if args.failover_raw_runs:
                with _child_servers(args, args.failover_raw_runs, "plain") as raw_ports:
                    failover += [asdict(run) for run in anyio.run(_failover_raw, raw_ports)]
            report["failover"] = {"runs": failover}
    return report


@contextmanager
def _child_servers(
    args: argparse.Namespace, count: int | None = None, kind: str | None = None
) -> Iterator[list[int]]:
    """One server per raw dead-network run: each run drops its own port."""
    count = args.raw_runs if count is None else count
    with ExitStack() as stack:
        yield [stack.enter_context(_child_server(args, kind)) for _ in range(count)]


# ---- report ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    target: str
    measured: str
    ok: bool | None
    """None: not evaluated (scenario not run)."""


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_list(values: list[float] | list[float | None], digits: int = 1) -> str:
    return ", ".join("-" if v is None else f"{v:.{digits}f}" for v in values) or "-"


def _dead_by_client(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_client: dict[str, Any] = {}
    for client in ("raw", "resilient"):
        mine = [r for r in runs if r["client"] == client]
        detected = [r["detected"] for r in mine if r["detected"] is not None]
        gave_up = [r["keepalive_gave_up"] for r in mine if r["keepalive_gave_up"] is not None]
        back = [r["reconnected"] for r in mine if r["reconnected"] is not None]
        by_client[client] = {
            "runs": len(mine),
            "detected": len(detected),
            "median": _median(detected),
            "max": _max(detected),
            "verdicts": dict(Counter(str(r["verdict"]) for r in mine)),
            "keepalive_gave_up_median": _median(gave_up),
            "reconnected": len(back),
            "reconnected_median": _median(back),
            "srtt_known": sum(r["srtt"] is not None for r in mine),
            "timeouts": sorted({round(r["timeout"], 3) for r in mine if r["timeout"] is not None}),
        }
    return by_client


def _summarize_issue9(report: dict[str, Any], summary: dict[str, Any]) -> list[Target]:
    """Issue 9: dead network on an idle link to serve() (item 6), failover (item 8)."""
    targets: list[Target] = []
    serve = report.get("serve_dead")
    name = "dead network vs serve(), median"
    goal = f"<= {SERVE_DEAD_MEDIAN_TARGET} s"
    if serve is None or "skipped" in serve:
        why = "not run" if serve is None else f"skipped: {serve['skipped']}"
        targets.append(Target(name, goal, why, None))
    else:
        by_client = summary["serve_dead"] = _dead_by_client(serve["runs"])
        res = by_client["resilient"]
        ok = res["detected"] == res["runs"] > 0 and (res["median"] or math.inf) <= goal_s(goal)
        measured = f"{_fmt(res['median'])} s ({res['detected']}/{res['runs']} detected)"
        targets.append(Target(name, goal, measured, ok))
        targets.append(
            Target(
                "SRTT known on an idle serve() link",
                "every run",
                f"{res['srtt_known']}/{res['runs']}",
                res["srtt_known"] == res["runs"] > 0,
            )
        )
    failover = report.get("failover")
    name = f"failover: on backup within {FAILOVER_TARGET:g} s"
    if failover is None or "skipped" in failover:
        why = "not run" if failover is None else f"skipped: {failover['skipped']}"
        targets.append(Target(name, "every run", why, None))
        return targets
    per_backend: dict[str, Any] = {}
    resilient = [r for r in failover["runs"] if r["client"] in ("resilient", "aimed")]
    for client, backend in sorted({(r["client"], r["backend"]) for r in resilient}):
        mine = [r for r in resilient if (r["client"], r["backend"]) == (client, backend)]
        times = [r["on_backup"] for r in mine if r["on_backup"] is not None]
        per_backend[f"{client} {backend}"] = {
            "client": client,
            "backend": backend,
            "runs": len(mine),
            "on_backup": len(times),
            "within_target": sum(t <= FAILOVER_TARGET for t in times),
            "median": _median(times),
            "max": _max(times),
            "verdicts": dict(Counter(str(r["verdict"]) for r in mine)),
            "stalled_evidence": dict(Counter(e for r in mine for e in r["stalled_evidence"])),
        }
    raw = [r["detected"] for r in failover["runs"] if r["client"] == "raw"]
    summary["failover"] = {
        "resilient": per_backend,
        "raw": {
            "runs": sum(r["client"] == "raw" for r in failover["runs"]),
            "detected": len([t for t in raw if t is not None]),
            "median": _median([t for t in raw if t is not None]),
        },
    }
    for client, label in (("resilient", "random drop"), ("aimed", "drop after a stall verdict")):
        mine = [b for b in per_backend.values() if b["client"] == client]
        if not mine:
            continue
        within = sum(b["within_target"] for b in mine)
        total = sum(b["runs"] for b in mine)
        measured = f"{within}/{total}"
        targets.append(Target(f"{name}, {label}", "every run", measured, within == total > 0))
    return targets


def goal_s(goal: str) -> float:
    """The number of seconds in a target such as ``"<= 1.5 s"``."""
    return float(goal.split()[1])


def summarize(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Medians, maxima and the targets of issues 3 and 9."""
    summary: dict[str, Any] = {}
    targets: list[Target] = []
    dead = report.get("dead_network")
    if dead is None or "skipped" in dead:
        why = "not run" if dead is None else f"skipped: {dead['skipped']}"
        targets.append(Target("dead network, median", f"<= {DEAD_MEDIAN_TARGET} s", why, None))
    else:
        by_client = _dead_by_client(dead["runs"])
        summary["dead_network"] = by_client
        res = by_client["resilient"]
        ok = (
            res["detected"] == res["runs"] > 0
            and res["median"] is not None
            and res["median"] <= DEAD_MEDIAN_TARGET
        )
        measured = f"{_fmt(res['median'])} s ({res['detected']}/{res['runs']} detected)"
        targets.append(Target("dead network, median", f"<= {DEAD_MEDIAN_TARGET} s", measured, ok))
        network_dead = res["verdicts"].get("network_dead", 0)
        targets.append(
            Target(
                "dead network, verdict",
                "network_dead every run",
                f"{network_dead}/{res['runs']}",
                network_dead == res["runs"] > 0,
            )
        )
    stalls = report.get("stalls", [])
    for stall in stalls:
        targets.append(
            Target(
                f"{stall['seconds']} s stall, disconnects",
                "0",
                f"{stall['resilient_lost']}/{stall['clients']}",
                stall["resilient_lost"] == 0,
            )
        )
    if STALL_TARGET_SECONDS not in [s["seconds"] for s in stalls]:
        targets.append(Target(f"{STALL_TARGET_SECONDS} s stall, disconnects", "0", "not run", None))
    traffic = report.get("traffic")
    if traffic is None:
        targets.append(Target("probes while data flows", "0", "not run", None))
    else:
        busy = next(r for r in traffic if r["link"] == "busy" and r["client"] == "resilient")
        pings = busy["client_pings"]
        measured = f"{pings} in {busy['seconds']:.0f} s"
        targets.append(Target("probes while data flows", "0", measured, pings == 0))
    targets += _summarize_issue9(report, summary)
    summary["targets"] = [asdict(t) for t in targets]
    summary["targets_met"] = all(t.ok is not False for t in targets)
    summary["targets_evaluated"] = all(t.ok is not None for t in targets)
    return summary


def print_report(report: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace) -> None:
    server = (
        "resilient_ws.serve() with its defaults (beacons, stall-aware keepalive)"
        if args.server == "resilient"
        else "a plain websockets asyncio server, its own keepalive off"
    )
    print(
        f"resilient_ws liveness (default Keepalive) vs raw websockets {WEBSOCKETS_VERSION}"
        f" client (defaults: ping_interval=20, ping_timeout=20, close_timeout=10)\n"
        f"server: {server}, in child processes; load average before the run: {args.load:.2f}"
    )

    dead = report.get("dead_network")
    print("\n1. Dead network: iptables DROP both directions on the server's port, idle link")
    if dead is None:
        print("   not run")
    elif "skipped" in dead:
        print(f"   skipped: {dead['skipped']}")
    else:
        s = summary["dead_network"]
        print(
            f"   resilient: {args.runs} runs one after another, drop after {RESILIENT_IDLE[0]:.0f}-"
            f"{RESILIENT_IDLE[1]:.0f} s idle; raw: {args.raw_runs} runs in parallel, one server"
            f" and port each, drop after {RAW_IDLE[0]:.0f}-{RAW_IDLE[1]:.0f} s idle (random phase"
            f" of its 20 s ping cycle); measured from just before the first rule went in"
        )
        print(f"   {'':44} {'raw':>8} {'resilient':>10}")
        for label, key in (("time to disconnect, median (s)", "median"), ("max (s)", "max")):
            print(f"   {label:44} {_fmt(s['raw'][key]):>8} {_fmt(s['resilient'][key]):>10}")
        print(
            f"   {'detected within ' + str(int(DETECT_BOUND)) + ' s':44}"
            f" {s['raw']['detected']:>4}/{s['raw']['runs']:<3} "
            f"{s['resilient']['detected']:>6}/{s['resilient']['runs']}"
        )
        print(
            f"   {'raw keepalive gave up (close 1011), median (s)':44}"
            f" {_fmt(s['raw']['keepalive_gave_up_median']):>8}"
        )
        verdicts = ", ".join(f"{k} x{v}" for k, v in s["resilient"]["verdicts"].items())
        print(f"   resilient verdicts: {verdicts}")
        print(
            f"   resilient connected again after the rules' removal began:"
            f" {s['resilient']['reconnected']}/{s['resilient']['runs']},"
            f" median {_fmt(s['resilient']['reconnected_median'])} s"
        )
        for client in ("raw", "resilient"):
            runs = [r for r in dead["runs"] if r["client"] == client]
            times = _fmt_list([r["detected"] for r in runs if r["detected"] is not None], 2)
            print(f"   per run, {client}: {times}")

    stalls = report.get("stalls")
    print(
        f"\n2. Server stall: ctypes.PyDLL(None).sleep(N) in asyncio.to_thread holds the server's"
        f" GIL; {args.stall_clients} raw + {args.stall_clients} resilient idle clients at once;"
        f" disconnects counted until {STALL_GRACE:.0f} s after the stall"
    )
    if not stalls:
        print("   not run")
    else:
        print(
            f"   {'stall':>5} {'measured':>8}  {'raw lost':>8}  {'at (s into stall)':18}"
            f" {'resilient lost':>14} {'PeerStalled':>11}"
            f"  PeerRecovered stalled_for (s)"
        )
        for st in stalls:
            print(
                f"   {st['seconds']:>4}s {st['measured']:>7.1f}s"
                f"  {st['raw_lost']:>4}/{st['clients']:<3}  {_fmt_list(st['raw_lost_at']):18}"
                f" {st['resilient_lost']:>10}/{st['clients']:<3}"
                f" {st['peer_stalled']:>7}/{st['clients']:<3}  {_fmt_list(st['stalled_for'])}"
            )
            if st["raw_close_sent_at"]:
                print(
                    f"         raw keepalive gave up (close 1011) at"
                    f" {_fmt_list(st['raw_close_sent_at'])} s into the stall"
                )
            if st["resilient_lost"]:
                print(
                    f"         resilient lost at {_fmt_list(st['resilient_lost_at'])} s,"
                    f" verdicts {st['resilient_lost_verdicts']}"
                )
            share = ", ".join(f"{k} {v:.0%}" for k, v in st["verdict_share"].items())
            print(
                f"         resilient stats.verdict during the stall (sampled every"
                f" {SAMPLE_EVERY} s): {share}; longest 'unknown' run per client:"
                f" {_fmt_list(st['longest_unknown'])} s (abandoned at 20 s)"
            )
            evidence = Counter(st["peer_stalled_evidence"])
            if evidence:
                margins = [MAX_SERVER_STALL - stalled for stalled in st["stalled_for"]]
                print(
                    f"         PeerStalled evidence: {dict(evidence)}, at"
                    f" {_fmt_list(st['peer_stalled_at'])} s into the stall; left of"
                    f" Keepalive.max_server_stall ({MAX_SERVER_STALL:g} s) at recovery:"
                    f" {_fmt_list(margins)} s"
                )
        ran = [st["seconds"] for st in stalls]
        if STALL_TARGET_SECONDS not in ran:
            print(f"   ran {ran}; the {STALL_TARGET_SECONDS} s stall was not run (--stalls 120)")

    traffic = report.get("traffic")
    print(
        f"\n3. Probe traffic: idle link vs busy link ({args.busy_rate:g} msg/s from the server),"
        f" all four clients at once; WebSocket frame bytes, TCP/IP headers not counted"
    )
    if not traffic:
        print("   not run")
    else:
        print(
            f"   {'link':5} {'client':10} {'seconds':>7} {'client pings':>12} {'pings/min':>9}"
            f" {'probe B/s':>9} {'control B/s':>11} {'srv pings':>9} {'beacons':>7}"
            f" {'msgs streamed':>13}"
        )
        for row in traffic:
            per_min = row["client_pings"] / row["seconds"] * 60
            print(
                f"   {row['link']:5} {row['client']:10} {row['seconds']:>7.1f}"
                f" {row['client_pings']:>12} {per_min:>9.1f} {row['probe_bytes_per_s']:>9.2f}"
                f" {row['control_bytes_per_s']:>11.2f} {row['server_pings']:>9}"
                f" {row['beacons']:>7} {row['messages_streamed']:>13}"
            )

    _print_issue9(report, summary, args)

    print("\nTargets (issues 3 and 9, default settings):")
    for t in summary["targets"]:
        state = "not evaluated" if t["ok"] is None else "ok" if t["ok"] else "MISSED"
        print(f"   {t['name']:36} target {t['target']:24} measured {t['measured']:28} {state}")
    if not summary["targets_met"]:
        print("TARGETS NOT MET")
    elif summary["targets_evaluated"]:
        print("TARGETS MET")
    else:
        print("TARGETS MET where evaluated (see 'not evaluated')")


def _print_issue9(
    report: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace
) -> None:
    serve = report.get("serve_dead")
    print(
        "\n4. Dead network on an idle link to resilient_ws.serve() (defaults: a quiet link,"
        " watched by the kernel's keepalive): iptables DROP both directions"
    )
    if serve is None:
        print("   not run")
    elif "skipped" in serve:
        print(f"   skipped: {serve['skipped']}")
    else:
        s = summary["serve_dead"]
        print(
            f"   resilient: {args.serve_runs} runs one after another; raw: {args.serve_raw_runs}"
            f" in parallel; measured from just before the first rule went in"
        )
        print(f"   {'':44} {'raw':>8} {'resilient':>10}")
        for label, key in (("time to disconnect, median (s)", "median"), ("max (s)", "max")):
            print(f"   {label:44} {_fmt(s['raw'][key]):>8} {_fmt(s['resilient'][key]):>10}")
        res = s["resilient"]
        verdicts = ", ".join(f"{k} x{v}" for k, v in res["verdicts"].items())
        print(f"   resilient verdicts: {verdicts}")
        print(
            f"   resilient stats.srtt known before the drop: {res['srtt_known']}/{res['runs']};"
            f" pong timeout then: {', '.join(f'{t:g}' for t in res['timeouts']) or '-'} s"
        )
        for client in ("raw", "resilient"):
            runs = [r for r in serve["runs"] if r["client"] == client]
            times = _fmt_list([r["detected"] for r in runs if r["detected"] is not None], 2)
            print(f"   per run, {client}: {times}")

    failover = report.get("failover")
    print(
        f"\n5. Failover under traffic: urls=[primary, backup], plain servers that never answer,"
        f" the client sending every {FAILOVER_SEND_EVERY * 1000:g} ms, DROP on the primary's"
        f" port after {FAILOVER_IDLE[0]:g}-{FAILOVER_IDLE[1]:g} s"
    )
    if failover is None:
        print("   not run")
        return
    if "skipped" in failover:
        print(f"   skipped: {failover['skipped']}")
        return
    f = summary["failover"]
    print(
        "   resilient: a random drop; aimed: the primary SIGSTOPped (server_stalled), the drop"
        " 0.1 s after the stall's re-probe, once an ACK of older data has followed it"
    )
    for key, b in f["resilient"].items():
        runs = [
            r
            for r in failover["runs"]
            if r["client"] == b["client"] and r["backend"] == b["backend"]
        ]
        print(
            f"   {key}: on the backup within {FAILOVER_TARGET:g} s in"
            f" {b['within_target']}/{b['runs']} runs (at all within {FAILOVER_BOUND:g} s:"
            f" {b['on_backup']}); median {_fmt(b['median'])} s, max {_fmt(b['max'])} s;"
            f" verdicts {b['verdicts']}; PeerStalled evidence {b['stalled_evidence'] or '-'}"
        )
        times = [r["on_backup"] for r in runs]
        print(f"      per run, drop to Connected(backup), s: {_fmt_list(times, 2)}")
        for r in runs:
            if r["on_backup"] is None or r["on_backup"] > FAILOVER_TARGET:
                print(f"      run {r['run']} trail: {'; '.join(r['trail'])}")
    raw = f["raw"]
    raw_runs = [r for r in failover["runs"] if r["client"] == "raw"]
    if not raw_runs:
        return
    print(
        f"   raw websockets (no failover of its own; the moment an application could fail"
        f" over, when its keepalive closes): {raw['detected']}/{raw['runs']} closed within"
        f" {DETECT_BOUND:g} s, median {_fmt(raw['median'])} s;"
        f" per run: {_fmt_list([r['detected'] for r in raw_runs if r['detected'] is not None])}"
    )


def _stall_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole seconds: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stalls are whole seconds >= 1")
    return values


SCENARIOS = ("dead", "stall", "traffic", "serve-dead", "failover")


def _scenario_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}; got {text!r}")
    return names


def _backend_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or set(names) - {"asyncio", "trio"}:
        raise argparse.ArgumentTypeError(f"backends are asyncio, trio; got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", choices=["plain", "resilient"], help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5, help="dead-network runs (>= 5)")
    parser.add_argument("--raw-runs", type=int, help="raw dead-network runs (default: --runs)")
    parser.add_argument("--stalls", type=_stall_list, default=[10, 45],
                        help="server stalls, seconds: 10,45,120 (default 10,45)")  # fmt: skip
    parser.add_argument("--stall-clients", type=int, default=2,
                        help="raw and resilient clients each during a stall")  # fmt: skip
    parser.add_argument("--traffic-seconds", type=float, default=20.0)
    parser.add_argument("--busy-rate", type=float, default=50.0,
                        help="messages per second the server sends on the busy link")  # fmt: skip
    parser.add_argument("--server", choices=["plain", "resilient"], default="plain")
    parser.add_argument("--scenarios", type=_scenario_list, default=list(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--serve-runs", type=int, default=10,
                        help="dead-network runs against serve() (>= 5)")  # fmt: skip
    parser.add_argument("--serve-raw-runs", type=int, default=3,
                        help="raw dead-network runs against serve(), in parallel")  # fmt: skip
    parser.add_argument("--failover-runs", type=int, default=20,
                        help="failover runs per backend")  # fmt: skip
    parser.add_argument("--aimed-runs", type=int, default=10,
                        help="failover runs per backend aimed at a stall verdict")  # fmt: skip
    parser.add_argument("--failover-raw-runs", type=int, default=3,
                        help="raw runs of the failover traffic, in parallel")  # fmt: skip
    parser.add_argument("--backends", type=_backend_list, default=["asyncio", "trio"],
                        help="anyio backends of the failover runs")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.busy_rate))
        return
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    args.raw_runs = args.runs if args.raw_runs is None else args.raw_runs
    if args.raw_runs < 1 or args.stall_clients < 1 or args.busy_rate <= 0:
        parser.error("--raw-runs and --stall-clients must be >= 1, --busy-rate > 0")
    if args.serve_runs < 5 or args.failover_runs < 1 or args.aimed_runs < 0:
        parser.error("--serve-runs must be >= 5, --failover-runs >= 1, --aimed-runs >= 0")
    if args.serve_raw_runs < 1 or args.failover_raw_runs < 0:
        parser.error("--serve-raw-runs must be >= 1, --failover-raw-runs >= 0")
    args.load = os.getloadavg()[0]

    started = time.monotonic()
    try:
        report = run_scenarios(args)
    finally:
        for process in list(_CHILDREN.values()):
            _kill_child(process)
        left = _delete_leftover_rules()
        if left:
            print(f"WARNING: iptables rules could not be deleted: {left}", file=sys.stderr)
    summary = summarize(report, args)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("serve", "json")}
        environment = {
            "python": platform.python_version(),
            "kernel": platform.release(),
            "websockets": WEBSOCKETS_VERSION,
            "wall_seconds": time.monotonic() - started,
        }
        output = {"config": config, "environment": environment, **report, "summary": summary}
        print(json.dumps(output, indent=2))
        return
    print_report(report, summary, args)
    print(f"(wall time {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
