#!/usr/bin/env python3
"""Thousands of idle connections on one server: CPU, memory, handshakes, a reconnect storm.

Issue 10. Compares, in one run, ``resilient_ws.serve(handler, "127.0.0.1", port)`` (defaults)
with ``websockets.asyncio.server.serve(handler, "127.0.0.1", port)`` (its defaults), both
with an echo handler, each in a fresh child process pinned to CPU 0; the clients run in
``--client-procs`` child processes pinned to CPU 1 (``taskset``). Default glibc allocator:
nothing is set (no ``PYTHONMALLOC``, no ``MALLOC_*``). ``serve()`` runs on asyncio, or on
trio with ``--backend trio``; websockets.serve and every client run on asyncio.

For each N of ``--connections`` and each server, two client kinds in turn:
``resilient_ws.connect(url)`` on defaults (a replay session on ``serve()``, a plain link on
websockets.serve) and the raw ``websockets.asyncio.client.connect(url)`` (a plain session
on ``serve()``). Per combination:

1. **Time to open** the N connections (``--open-inflight`` handshakes in flight in all,
   each connection idling once open), bounded by ``--open-timeout``: what opened in time
   is reported, not waited for; also the kernel's accept-queue overflows meanwhile
   (``ListenOverflows``, system-wide).
2. **Idle CPU**, after ``--settle`` seconds, over ``--window`` seconds: the server's
   (% of one core) and the clients' (µs of CPU per connection per second), from
   ``/proc/<pid>/stat`` utime + stime (10 ms ticks); beside them, what other processes
   used of CPU 0 and CPU 1 in the window (``/proc/stat``), to show how noisy it was.
   A window shorter than ``Keepalive``'s period on quiet links (``--quick``) may see
   no probe at all.
3. **Server RSS per idle connection**: (VmRSS at the end of the window - VmRSS before any
   client) / N. Settle + window outlast websockets' 10 s ``open_timeout``, for which
   ``serve()`` may hold state per granted handshake. Raw clients and websockets.serve
   both default to permessage-deflate (zlib state per link), ``serve()`` and resilient_ws
   to no compression: the RSS targets take websockets.serve's links without it (the
   resilient_ws clients' row) as the baseline.
4. With resilient_ws clients on ``serve()``: a **reconnect storm**. On SIGUSR1 the server
   aborts every open link at once (TCP RST; sessions stay open), as a network blip looks
   to the clients; the time from the signal to the next ``Connected`` event of each client
   that was open (default backoff), with the clients still away (state, failures, last
   error) and, second by second, clients back and the server's and clients' CPU: on two
   cores the clients' own reconnect work can be the limit. To find its links that server
   records them with a ``process_request`` hook (a weak set; nothing else differs from the
   defaults). The peer, in the same run: raw websockets clients in websockets' own
   reconnect loop (``async for ws in connect(url)``, its default backoff) on
   websockets.serve, which aborts its links the same way; the ratio of the times until
   all were back is printed beside the target. (Its echo handler ignores a link lost
   without a closing handshake: websockets would log each one's traceback.)

Then **handshakes/s**: a hand-written asyncio client (``--inflight`` concurrent, for
``--handshake-seconds`` per server in 5 turns taken in rotation, after a warm-up) sends an
HTTP/1.1 Upgrade request with a random key, reads the 101 response's headers, sends a close
frame and closes the socket; against websockets.serve, ``serve()`` without a subprotocol (a
plain session) and ``serve()`` offering the replay subprotocol (every 101 checked for it
and for ``RWS-Session``). The client's CPU is printed next to the server's, to show which
side was the bottleneck, and handshakes per second of server CPU: the steadier figure when
other processes share the server's core, and the one the handshake targets are checked on
(for a saturated server it equals handshakes/s).

Ratios are serve() / websockets.serve with the same clients. Targets (issue 10): idle
server CPU <= 10 % of a core with 10,000 resilient_ws clients and <= 2x websockets.serve at
5,000; RSS per connection <= 1.5x; handshakes >= 0.8x plain, >= 0.6x replay; 10,000 clients
back within 10 s of a blip (and, beside it, in at most 1/0.6 of the time websockets' own
clients take on websockets.serve); client idle CPU <= 50 µs per connection per second.

    python bench/bench_scale.py --quick                     # 1,000 connections, ~50-75 s
    python bench/bench_scale.py --connections 5000          # ~6 min
    python bench/bench_scale.py                             # 1,000, 5,000, 10,000: ~17 min
    python bench/bench_scale.py --connections 5000 --client-procs 4 --json
    python bench/bench_scale.py --quick --backend trio

Times as measured on a busy 2-core machine with today's client: a run's length is mostly
the resilient_ws clients opening, and, where they fall behind (at 5,000 and 10,000 today),
the ``--open-timeout`` caps; the report then says how many opened, and a target that
needs all N says it was not measured. Every child dies with the bench (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import math
import os
import resource
import shlex
import signal
import socket
import statistics
import struct
import sys
import tempfile
import textwrap
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from _benchutil import free_port, pin

SERVERS = ("websockets", "resilient")
CLIENTS = ("resilient", "raw")
# The reconnect storm: resilient_ws clients on serve(), and the peer, raw websockets clients
# in websockets' own reconnect loop on websockets.serve.
STORMS = {
    "resilient/resilient": "resilient_ws clients on serve()",
    "websockets/raw": "raw websockets clients (async for ... in connect()) on websockets.serve",
}
CLIENT_LABEL = {
    "resilient": "resilient_ws.connect() clients (replay sessions on serve())",
    "raw": "raw websockets clients (plain sessions on serve())",
}
HANDSHAKES = (  # (label, server, subprotocol offered)
    ("websockets.serve", "websockets", "plain"),
    ("serve() plain", "resilient", "plain"),
    ("serve() replay", "resilient", "replay"),
)
# Targets of issue 10.
IDLE_CPU_10K_MAX = 10.0  # % of a core, 10,000 resilient_ws clients on serve()
IDLE_CPU_5K_RATIO_MAX = 2.0  # serve() / websockets.serve, 5,000 resilient_ws clients
RSS_RATIO_MAX = 1.5
HANDSHAKE_ROUNDS = 5  # turns each server takes (see handshakes())
HANDSHAKE_PLAIN_MIN = 0.8
HANDSHAKE_REPLAY_MIN = 0.6
STORM_10K_MAX = 10.0  # seconds
# Beside it, against the peer in the same run: a storm of resumes is a storm of replay
# handshakes, so the replay handshake target (>= 0.6x) bounds the time until all are back
# at 1 / 0.6 of websockets' own reconnecting clients on websockets.serve.
STORM_PEER_RATIO_MAX = 1 / HANDSHAKE_REPLAY_MIN
CLIENT_CPU_MAX = 50.0  # µs per connection per second
# Share of N that may be between links at the end of the idle window, for a figure to count
# as a measurement of N connections.
OPEN_SLACK = 0.01
# A handshake run's server below this % of its core was not the bottleneck.
SATURATED = 90
# Below this many clock ticks of CPU in a window a ratio is noise, not a figure.
MIN_TICKS_FOR_RATIO = 5
CONNECTIONS_PER_PROC = 2500  # the default split over client processes
TICK = os.sysconf("SC_CLK_TCK")
# A masked close frame, code 1000, mask key 0 (the masked payload equals the payload).
CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _emit(**fields: Any) -> None:
    """One JSON line to the parent: a child process's only output on stdout."""
    print(json.dumps(fields), flush=True)


def _raise_nofile() -> None:
    """Every process holds thousands of sockets: the soft limit goes up to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _die_with_parent() -> None:
    """A child is SIGKILLed when the bench dies, however it dies (Linux; best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def _command() -> str:
    """The next line the parent writes on stdin ("" once it is gone)."""
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


# ---- servers (child processes) ---------------------------------------------------------


async def _websockets_server(port: int, abortable: bool) -> None:
    """websockets.serve on its defaults; with ``abortable``, SIGUSR1 aborts every open link."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws: ServerConnection) -> None:
        # A link lost without a closing handshake is no error to log (websockets would log
        # its traceback, aborted in a storm: ten thousand of them, on the server's core).
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    links = _Links()
    async with serve(echo, "127.0.0.1", port, **links.options(abortable)):
        if abortable:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, links.abort_all)
        _emit(ready=True)
        await asyncio.Future()


class _Links:
    """A server's links, recorded by a ``process_request`` hook, to abort all at once."""

    def __init__(self) -> None:
        self.links: weakref.WeakSet[Any] = weakref.WeakSet()

    def options(self, abortable: bool) -> dict[str, Any]:
        """The server's options: the hook, when its links are to be aborted."""
        return {"process_request": self._remember} if abortable else {}

    def _remember(self, connection: Any, request: Any) -> None:
        self.links.add(connection)

    def abort_all(self) -> None:
        """Abort every open link; say how many."""
        from websockets.protocol import State

        open_links = [link for link in self.links if link.state is State.OPEN]
        for link in open_links:
            _abort(link)
        _emit(aborted=len(open_links))


def _abort(connection: Any) -> None:
    """Drop one link with a RST, no closing handshake (asyncio transport or trio socket)."""
    transport = getattr(connection, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        sock = connection.stream.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    if transport is not None:
        transport.abort()
    else:
        sock.close()  # trio: wakes the tasks blocked on it


async def _resilient_server(port: int, abortable: bool) -> None:
    """serve() on defaults; with ``abortable``, SIGUSR1 aborts every open link."""
    import anyio

    import resilient_ws

    async def echo(session: resilient_ws.ServerSession) -> None:
        async for message in session:
            await session.send(message)

    links = _Links()
    async with resilient_ws.serve(echo, "127.0.0.1", port, **links.options(abortable)):
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            _emit(ready=True)
            async for _ in signals:
                links.abort_all()


# ---- idle clients (child processes) ----------------------------------------------------


class _Reconnecting:
    """A raw websockets client in websockets' own reconnect loop: its current link."""

    def __init__(self) -> None:
        self.ws: Any = None
        self.links = 0
        self.next_link: asyncio.Future[float] | None = None  # armed by a storm


class Clients:
    """``count`` idle connections of one kind, opened on command, each held by a task.

    A resilient_ws client reconnects by itself; a raw websockets client runs in
    websockets' reconnect loop (``async for ws in connect(url)``, its default backoff),
    which reconnects at once when a link closes and backs off when an attempt fails.
    """

    def __init__(self, kind: str, url: str, count: int, inflight: int) -> None:
        self.kind = kind
        self.url = url
        self.count = count
        self.gate = asyncio.Semaphore(inflight)
        self.opened: list[Any] = []  # resilient_ws connections, or _Reconnecting
        self.failed = 0
        self.error: str | None = None
        self.last_open = 0.0
        self.settled = asyncio.Event()  # every connection opened or failed
        self.holding: set[asyncio.Task[None] | None] = set()  # tasks holding an open one
        self.tasks: list[asyncio.Task[None]] = []

    def _opened(self, client: Any) -> None:
        self.opened.append(client)
        self.holding.add(asyncio.current_task())
        self.last_open = time.monotonic()
        self._check_settled()

    async def _hold(self) -> None:
        await self.gate.acquire()
        gated = True
        try:
            if self.kind == "raw":
                from websockets.asyncio.client import connect

                client = _Reconnecting()
                async for ws in connect(self.url):
                    client.ws = ws
                    client.links += 1
                    if gated:
                        self.gate.release()
                        gated = False
                        self._opened(client)
                    elif client.next_link is not None and not client.next_link.done():
                        client.next_link.set_result(time.monotonic())
                    await ws.wait_closed()
            else:
                import resilient_ws

                async with resilient_ws.connect(self.url) as connection:
                    self.gate.release()
                    gated = False
                    self._opened(connection)
                    await asyncio.Future()  # idle until the process is killed
        except Exception as exc:
            self.failed += 1
            self.error = repr(exc)
            self._check_settled()
        finally:
            if gated:
                self.gate.release()

    def _check_settled(self) -> None:
        if len(self.opened) + self.failed >= self.count:
            self.settled.set()

    async def open_all(self, timeout: float) -> None:
        """Open them all, within ``timeout`` seconds; report what opened."""
        tasks = [asyncio.ensure_future(self._hold()) for _ in range(self.count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout)
        # Attempts still under way past the deadline stop: they would load the window.
        late = [task for task in tasks if not task.done() and task not in self.holding]
        for task in late:
            task.cancel()
        self.tasks = tasks  # asyncio keeps only weak references to running tasks
        _emit(
            opened=len(self.opened),
            failed=self.failed,
            last_open=self.last_open,
            error=self.error,
        )

    def open_now(self) -> tuple[int, int]:
        """Connections open right now, and links opened in all (resilient_ws: reconnects)."""
        if self.kind == "raw":
            from websockets.protocol import State

            return (
                sum(client.ws.state is State.OPEN for client in self.opened),
                sum(client.links for client in self.opened),
            )
        import resilient_ws

        stats = [(ws.state is resilient_ws.State.OPEN, ws.stats.links) for ws in self.opened]
        return sum(state for state, _ in stats), sum(links for _, links in stats)

    async def storm(self, timeout: float) -> None:
        """Arm one watcher per open connection; report when each got its next link."""
        # Only links open now: one still reconnecting from before would blur the figure.
        if self.kind == "raw":
            from websockets.protocol import State

            live = [client for client in self.opened if client.ws.state is State.OPEN]
            loop = asyncio.get_running_loop()
            for client in live:
                client.next_link = loop.create_future()
            tasks = [client.next_link for client in live]
        else:
            import resilient_ws

            async def next_link(ws: Any, links: int) -> float | None:
                async for event in ws.events():
                    if isinstance(event, resilient_ws.Connected) and event.link > links:
                        return float(event.at)  # asyncio's loop clock: time.monotonic()
                return None

            live = [ws for ws in self.opened if ws.state is resilient_ws.State.OPEN]
            tasks = [asyncio.ensure_future(next_link(ws, ws.stats.links)) for ws in live]
        _emit(armed=len(tasks))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        back_at = []
        stuck: collections.Counter[str] = collections.Counter()
        for client, task in zip(live, tasks, strict=True):
            at = task.result() if task.done() and task.exception() is None else None
            if at is not None:
                back_at.append(at)
            elif self.kind == "raw":
                stuck[f"{client.links} links, state {client.ws.state.name}"] += 1
            else:
                stats = client.stats
                stuck[f"{stats.state}, {stats.failures} failures: {stats.last_error}"[:120]] += 1
            task.cancel()
        _emit(back_at=back_at, armed=len(tasks), stuck=stuck.most_common(3))


async def _clients_main(kind: str, url: str, count: int, inflight: int) -> None:
    clients = Clients(kind, url, count, inflight)
    _emit(ready=True)
    while command := await _command():
        name, _, arg = command.partition(" ")
        if name == "open":
            await clients.open_all(float(arg))
        elif name == "count":
            open_now, links = clients.open_now()
            _emit(open=open_now, links=links)
        elif name == "storm":
            await clients.storm(float(arg))


# ---- handshake client (child process) --------------------------------------------------


class _Upgrade(asyncio.Protocol):
    """Send one Upgrade request; resolve ``done`` with the response's head."""

    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request = request
        self.done = done
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0 and not self.done.done():
            self.done.set_result(self.buffer[:end])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before the response: {exc}"))


def _request(port: int, mode: str) -> bytes:
    from resilient_ws._core.protocol import SUBPROTOCOL

    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n" if mode == "replay" else ""
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{offer}\r\n"
    ).encode()


def _verdict(head: bytes, mode: str) -> str:
    """Return "ok", or what is wrong with the response whose head is ``head``."""
    from resilient_ws._core.protocol import SUBPROTOCOL

    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 101"):
        return status.decode(errors="replace")
    lines = head.lower().split(b"\r\n")
    granted = f"sec-websocket-protocol: {SUBPROTOCOL}".encode() in lines
    session = any(line.startswith(b"rws-session:") for line in lines)
    if (granted and session) != (mode == "replay"):
        return "101 without the replay grant" if mode == "replay" else "101 with a subprotocol"
    return "ok"


async def _handshake(port: int, mode: str) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _Upgrade(_request(port, mode), done), "127.0.0.1", port
    )
    try:
        head = await done
        verdict = _verdict(head, mode)
        if head.startswith(b"HTTP/1.1 101"):
            transport.write(CLOSE_FRAME)  # a normal close: no error logged by either server
        return verdict
    finally:
        transport.close()


async def _handshakes(port: int, mode: str, seconds: float, inflight: int) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                verdict = await asyncio.wait_for(_handshake(port, mode), 10)
            except (OSError, TimeoutError) as exc:
                verdict = type(exc).__name__
            outcomes[verdict] = outcomes.get(verdict, 0) + 1

    start, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return {
        "ok": outcomes.pop("ok", 0),
        "bad": outcomes,
        "elapsed": time.monotonic() - start,
        "cpu": time.process_time() - cpu,
    }


async def _handshake_main(port: int, mode: str, inflight: int) -> None:
    _emit(ready=True)
    while command := await _command():
        if command == "warm":  # not counted
            await _handshakes(port, mode, 0.5, inflight)
            _emit(warm=True)
        elif command.startswith("go "):  # "go SECONDS"
            _emit(**await _handshakes(port, mode, float(command[3:]), inflight))


# ---- the parent: child processes -------------------------------------------------------


class Child:
    """A child process running this file; JSON lines on its stdout, stderr kept aside."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.log = log

    @classmethod
    async def start(cls, name: str, prefix: list[str], *args: str) -> Child:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this call; kill() closes it
        argv = [*prefix, sys.executable, __file__, *args]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=1 << 26,  # the storm report is one long line
        )
        return cls(name, process, log)

    async def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, within ``timeout`` seconds."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no answer within {timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"{self.name} exited: {self.stderr_tail()}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()

    def stderr_tail(self, size: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-size:]

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss(self) -> int:
        """Resident set size, bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.name}: no VmRSS")

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
        self.log.close()


async def _start_server(
    kind: str, port: int, args: argparse.Namespace, *, abortable: bool
) -> Child:
    """Start a server child (it says ``ready`` once it listens)."""
    extra = ["--abortable"] if abortable else []
    if kind == "resilient":
        extra += ["--backend", args.backend]
    return await Child.start(
        f"{kind} server", args.server_pin, f"--serve-{kind}", str(port), *extra
    )


def _busy() -> tuple[float, float]:
    """CPU seconds spent so far on CPU 0 and CPU 1 by every process (``/proc/stat``)."""
    busy = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *ticks = line.split()
            if name in ("cpu0", "cpu1"):
                # user nice system idle iowait irq softirq steal: all but idle and iowait
                values = [int(tick) for tick in ticks[:8]]
                busy[name] = (sum(values) - values[3] - values[4]) / TICK
    return busy.get("cpu0", 0.0), busy.get("cpu1", 0.0)


def _listen_overflows() -> int:
    """Connections dropped because an accept queue was full, since boot (system-wide)."""
    with open("/proc/net/netstat") as netstat:
        lines = [line.split() for line in netstat if line.startswith("TcpExt:")]
    fields = dict(zip(lines[0], lines[1], strict=True))
    return int(fields.get("ListenOverflows", 0))


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def _client_procs(args: argparse.Namespace, count: int) -> int:
    if args.client_procs:
        return max(1, min(int(args.client_procs), count))
    return max(1, math.ceil(count / CONNECTIONS_PER_PROC))


async def _start_clients(
    kind: str, port: int, count: int, args: argparse.Namespace, children: list[Child]
) -> None:
    """Start the client children (appended to ``children`` at once, for the cleanup)."""
    procs = _client_procs(args, count)
    inflight = str(max(1, args.open_inflight // procs))
    url = f"ws://127.0.0.1:{port}/"
    for index, share in enumerate(_shares(count, procs)):
        name = f"{kind} clients #{index}"
        argv = ("--serve-clients", kind, url, str(share), inflight)
        children.append(await Child.start(name, args.client_pin, *argv))


async def _open_clients(
    count: int, args: argparse.Namespace, children: list[Child]
) -> dict[str, Any]:
    """Tell every client child to open its share; what opened within the timeout."""
    timeout = args.open_timeout or max(60.0, count * 0.015)
    overflows = _listen_overflows()
    go = time.monotonic()
    for child in children:
        await child.send(f"open {timeout}")
    reports = [await child.read(timeout + 60) for child in children]
    opened = sum(report["opened"] for report in reports)
    last = max((report["last_open"] for report in reports if report["opened"]), default=go)
    errors = [report["error"] for report in reports if report["error"]]
    return {
        "procs": len(children),
        "opened": opened,
        "failed": sum(report["failed"] for report in reports),
        "open_time": last - go if opened == count else None,
        "open_timeout": timeout,
        "error": errors[0] if errors else None,
        "listen_overflows": _listen_overflows() - overflows,
    }


async def _idle(server: Child, children: list[Child], args: argparse.Namespace) -> dict[str, Any]:
    await asyncio.sleep(args.settle)
    server_cpu, client_cpu = server.cpu(), sum(child.cpu() for child in children)
    before, start = _busy(), time.monotonic()
    await asyncio.sleep(args.window)
    elapsed = time.monotonic() - start
    server_cpu = server.cpu() - server_cpu
    client_cpu = sum(child.cpu() for child in children) - client_cpu
    after = _busy()
    busy = after[0] - before[0], after[1] - before[1]
    counts = []
    for child in children:
        await child.send("count")
        counts.append(await child.read(120))
    return {
        "server_cpu": server_cpu / elapsed * 100,
        "server_ticks": round(server_cpu * TICK),
        "client_cpu": client_cpu / elapsed,  # seconds of CPU per second, all processes
        "client_ticks": round(client_cpu * TICK),
        "open_at_end": sum(count["open"] for count in counts),
        "links_at_end": sum(count["links"] for count in counts),
        "rss_end": server.rss(),
        # What other processes used of each CPU during the window (%): noise indicator.
        "others_cpu0": max(0.0, busy[0] - server_cpu) / elapsed * 100,
        "others_cpu1": max(0.0, busy[1] - client_cpu) / elapsed * 100,
    }


async def _cpu_each_second(
    server: Child, clients: list[Child], samples: list[tuple[float, float]]
) -> None:
    """Append the server's and the clients' CPU (% of a core) every second until cancelled."""
    before = server.cpu(), sum(child.cpu() for child in clients)
    while True:
        await asyncio.sleep(1.0)
        now = server.cpu(), sum(child.cpu() for child in clients)
        samples.append((100 * (now[0] - before[0]), 100 * (now[1] - before[1])))
        before = now


async def _storm(server: Child, children: list[Child], timeout: float) -> dict[str, Any]:
    for child in children:
        await child.send(f"storm {timeout}")
    armed = sum([(await child.read(120))["armed"] for child in children])
    samples: list[tuple[float, float]] = []
    overflows = _listen_overflows()
    signalled = time.monotonic()
    os.kill(server.pid, signal.SIGUSR1)
    sampler = asyncio.ensure_future(_cpu_each_second(server, children, samples))
    try:
        aborted = (await server.read(120))["aborted"]
        delays = []
        stuck: collections.Counter[str] = collections.Counter()
        for child in children:
            outcome = await child.read(timeout + 120)
            delays += [at - signalled for at in outcome["back_at"]]
            stuck.update(dict(outcome["stuck"]))
    finally:
        sampler.cancel()
    overflows = _listen_overflows() - overflows
    delays.sort()
    seconds = max(1, math.ceil(delays[-1]) if delays else len(samples))
    back_each_second = [0] * seconds
    for delay in delays:
        back_each_second[min(seconds - 1, int(delay))] += 1
    return {
        "aborted": aborted,
        "armed": armed,
        "back": len(delays),
        "first": delays[0] if delays else None,
        "all_back": delays[-1] if delays and len(delays) == armed else None,
        "median": statistics.median(delays) if delays else None,
        "p90": delays[int(0.9 * (len(delays) - 1))] if delays else None,
        "timeout": timeout,
        "stuck": stuck.most_common(3),  # the clients not back: state, failures, last error
        "listen_overflows": overflows,
        # Second by second from the signal: clients back, server and clients' CPU (%).
        "back_each_second": back_each_second,
        "server_cpu_each_second": [round(server) for server, _ in samples[:seconds]],
        "clients_cpu_each_second": [round(clients) for _, clients in samples[:seconds]],
    }


async def combination(
    server_kind: str, client_kind: str, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One server process, ``count`` idle clients of one kind; the storm where it applies."""
    storm = f"{server_kind}/{client_kind}" in STORMS and not args.no_storm
    port = free_port()
    children: list[Child] = []
    started = time.monotonic()
    try:
        server = await _start_server(server_kind, port, args, abortable=storm)
        children.append(server)
        await _start_clients(client_kind, port, count, args, children)
        clients = children[1:]
        for child in children:
            await child.read(60)  # ready
        await asyncio.sleep(0.5)
        rss_before = server.rss()
        result = await _open_clients(count, args, clients)
        result.update(await _idle(server, clients, args))
        result["rss_per_connection"] = (
            (result["rss_end"] - rss_before) / result["opened"] if result["opened"] else None
        )
        result["client_us_per_connection"] = (
            result["client_cpu"] / result["open_at_end"] * 1e6 if result["open_at_end"] else None
        )
        if storm:
            result["storm"] = await _storm(server, clients, args.storm_timeout)
        result["elapsed"] = time.monotonic() - started
        return result
    finally:
        for child in children:
            await child.kill()


async def handshakes(args: argparse.Namespace) -> dict[str, Any]:
    """Handshakes/s against each server, with both processes' CPU.

    The servers take turns, ``HANDSHAKE_ROUNDS`` rounds of ``handshake_seconds /
    HANDSHAKE_ROUNDS`` each, and each server's figures add up its turns: this machine's
    speed drifts by more than the differences measured (the same code gave 0.73 and 0.84
    in back-to-back runs of one turn each), and turns put every server under the same
    drift.
    """
    children: list[Child] = []
    pairs: dict[str, tuple[Child, Child]] = {}
    try:
        for label, server_kind, mode in HANDSHAKES:
            port = free_port()
            server = await _start_server(server_kind, port, args, abortable=False)
            children.append(server)
            await server.read(60)  # ready: listening
            argv = (mode, str(port), str(args.inflight))
            client = await Child.start(
                "handshake client", args.client_pin, "--serve-handshakes", *argv
            )
            children.append(client)
            await client.read(60)  # ready
            await client.send("warm")
            await client.read(60)
            pairs[label] = (server, client)
        turn = args.handshake_seconds / HANDSHAKE_ROUNDS
        results: dict[str, dict[str, Any]] = {
            label: {"ok": 0, "bad": {}, "elapsed": 0.0, "cpu": 0.0, "server": 0.0, "others": 0.0,
                    "wall": 0.0, "rounds": []}
            for label in pairs
        }  # fmt: skip
        for _ in range(HANDSHAKE_ROUNDS):
            for label, (server, client) in pairs.items():
                server_cpu, busy, start = server.cpu(), _busy()[0], time.monotonic()
                await client.send(f"go {turn}")
                shake = await client.read(turn + 60)
                wall = time.monotonic() - start
                server_cpu = server.cpu() - server_cpu
                total = results[label]
                for key in ("ok", "elapsed", "cpu"):
                    total[key] += shake[key]
                for verdict, count in shake["bad"].items():
                    total["bad"][verdict] = total["bad"].get(verdict, 0) + count
                total["server"] += server_cpu
                total["others"] += max(0.0, _busy()[0] - busy - server_cpu)
                total["wall"] += wall
                total["rounds"].append(_ratio(shake["ok"], server_cpu))
    finally:
        for child in children:
            await child.kill()
    for report in results.values():
        report["server_cpu"] = report.pop("server") / report["wall"] * 100
        report["others_cpu0"] = report.pop("others") / report["wall"] * 100
        report["client_cpu"] = report["cpu"] / report["elapsed"] * 100
        report["rate"] = report["ok"] / report["elapsed"]
        report["per_cpu"] = _ratio(report["rate"], report["server_cpu"] / 100)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"settings": _settings(args), "connections": {}}
    for count in args.counts:
        figures = {}
        for client_kind in CLIENTS:
            for server_kind in SERVERS:
                key = f"{server_kind}/{client_kind}"
                if key in args.combos:
                    figures[key] = await combination(server_kind, client_kind, count, args)
        if figures:
            results["connections"][str(count)] = figures
    if not args.no_handshakes:
        results["handshakes"] = await handshakes(args)
    results["elapsed"] = time.monotonic() - started
    return results


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "backend": args.backend,
        "connections": args.counts,
        "window": args.window,
        "settle": args.settle,
        "open_inflight": args.open_inflight,
        "inflight": args.inflight,
        "handshake_seconds": args.handshake_seconds,
        "server_cpu": "0" if args.server_pin else "unpinned",
        "client_cpu": "1" if args.client_pin else "unpinned",
        "allocator": {name: os.environ.get(name) for name in ("PYTHONMALLOC", "MALLOC_ARENA_MAX")},
        "load_before": os.getloadavg(),
    }


# ---- report ----------------------------------------------------------------------------


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cpu_ratio(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> float | None:
    """A CPU ratio, or None when the denominator is too few ticks to mean anything."""
    if theirs[key.replace("cpu", "ticks")] < MIN_TICKS_FOR_RATIO:
        return None
    return _ratio(ours[key], theirs[key])


def _kib(combo: dict[str, Any]) -> float | None:
    value = combo.get("rss_per_connection")
    return None if value is None else value / 1024


def _rows(figures: dict[str, Any], client: str) -> list[tuple[str, Any, Any, Any, str]]:
    """(label, websockets.serve, serve(), ratio, format) for one client kind."""
    theirs = figures.get(f"websockets/{client}", {})
    ours = figures.get(f"resilient/{client}", {})

    def row(label: str, key: str, spec: str, ratio: Any = _ratio) -> tuple[Any, ...]:
        value = ratio(ours.get(key), theirs.get(key)) if ours and theirs else None
        return (label, theirs.get(key), ours.get(key), value, spec)

    def opened(combo: dict[str, Any]) -> str | None:
        return f"{combo['opened']}/{combo['open_at_end']}" if combo else None

    def cpu(key: str) -> Any:
        return lambda _ours, _theirs: _cpu_ratio(ours, theirs, key)

    def others(combo: dict[str, Any]) -> str | None:
        return f"{combo['others_cpu0']:.0f}/{combo['others_cpu1']:.0f}" if combo else None

    return [
        ("opened / open at the end", opened(theirs), opened(ours), None, "s"),
        row("links opened in all", "links_at_end", "d", lambda *_: None),
        row("time to open all (s)", "open_time", ".2f"),
        row("idle server CPU (% of a core)", "server_cpu", ".1f", cpu("server_cpu")),
        row("client CPU (us/connection/s)", "client_us_per_connection", ".1f", cpu("client_cpu")),
        ("server RSS per connection (KiB)", _kib(theirs), _kib(ours),
         _ratio(_kib(ours), _kib(theirs)), ".1f"),
        row("listen queue overflows, opening", "listen_overflows", "d", lambda *_: None),
        ("others' load on CPU 0/1 in window (%)", others(theirs), others(ours), None, "s"),
    ]  # fmt: skip


def _print_storm(label: str, storm: dict[str, Any]) -> None:
    print(
        f"  reconnect storm, {label}: {storm['aborted']} links aborted;"
        f" {storm['back']}/{storm['armed']} clients open at the blip back within"
        f" {storm['timeout']:.0f} s;"
        f" all back after {_cell(storm['all_back'], '.2f')} s"
        f" (first {_cell(storm['first'], '.2f')}, median {_cell(storm['median'], '.2f')},"
        f" p90 {_cell(storm['p90'], '.2f')}); listen queue overflows (system-wide):"
        f" {storm['listen_overflows']}"
    )
    for what, count in storm["stuck"]:
        print(f"    not back: {count} x {what}")
    print("    second by second from the blip:")
    for label, key in (
        ("clients back", "back_each_second"),
        ("server CPU %", "server_cpu_each_second"),
        ("clients' CPU %", "clients_cpu_each_second"),
    ):
        series = " ".join(str(value) for value in storm[key])
        if series:
            print(
                textwrap.fill(
                    series, 100, initial_indent=f"    {label:15}", subsequent_indent=" " * 19
                )
            )


def _print_handshakes(shakes: dict[str, Any], settings: dict[str, Any]) -> None:
    base = shakes["websockets.serve"]
    print(
        f"\nhandshakes, {settings['inflight']} in flight for {settings['handshake_seconds']} s"
        f" per server, in {HANDSHAKE_ROUNDS} turns"
        " (hand-written asyncio client: Upgrade, read the 101, close frame, close)"
    )
    print(
        f"  {'':18}   per s  ratio  per server CPU-s  ratio  server CPU %  client CPU %"
        "  others on CPU 0 %  failures"
    )
    for label, shake in shakes.items():
        ratio = _cell(_ratio(shake["rate"], base["rate"]), ".2f")
        efficiency = _cell(_ratio(shake["per_cpu"], base["per_cpu"]), ".2f")
        print(
            f"  {label:18} {shake['rate']:7.0f} {ratio:>6} {_cell(shake['per_cpu'], '17.0f')}"
            f" {efficiency:>6} {shake['server_cpu']:13.0f} {shake['client_cpu']:13.0f}"
            f" {shake['others_cpu0']:18.0f}  {shake['bad'] or '-'}"
        )
    for label, shake in shakes.items():
        if label != "websockets.serve" and shake.get("rounds"):
            each = [_ratio(ours, theirs) for ours, theirs in zip(shake["rounds"], base["rounds"],
                                                                 strict=True)]  # fmt: skip
            known = [ratio for ratio in each if ratio is not None]
            if known:
                print(f"  {label}: per server CPU-s ratio in each of {len(each)} turns"
                      f" {min(known):.2f}-{max(known):.2f}")  # fmt: skip
    if any(shake["server_cpu"] < SATURATED for shake in shakes.values()):
        print(
            f"  a server used < {SATURATED} % of its core: something else limited it (other load"
            " on its CPU, or the client); per server CPU-second is the steadier figure"
        )


def report(results: dict[str, Any], argv: Sequence[str]) -> None:
    """Print the run as tables, then one line per target."""
    settings = results["settings"]
    print("$", shlex.join(argv))
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in settings['load_before'])}")
    allocator = {name: value for name, value in settings["allocator"].items() if value}
    print(
        f"allocator: {allocator or 'default glibc malloc, nothing set'}; "
        f"servers on CPU {settings['server_cpu']}, clients on CPU {settings['client_cpu']}; "
        f"serve() on {settings['backend']}, everything else on asyncio"
    )
    print(
        f"idle CPU over {settings['window']} s after {settings['settle']} s of settling;"
        f" {settings['open_inflight']} handshakes in flight while opening;"
        f" run took {results['elapsed']:.0f} s"
    )
    for count, figures in results["connections"].items():
        any_combo = next(iter(figures.values()))
        print(
            f"\n{int(count):,} idle connections, {any_combo['procs']} client process(es)"
            f" (open timeout {any_combo['open_timeout']:.0f} s)"
        )
        print(f"  {'':40} {'websockets.serve':>16} {'serve()':>10} {'ratio':>7}")
        for client in CLIENTS:
            print(f"  {CLIENT_LABEL[client]}")
            for label, theirs, ours, ratio, spec in _rows(figures, client):
                print(
                    f"    {label:38} {_cell(theirs, spec):>16} {_cell(ours, spec):>10}"
                    f" {_cell(ratio, '.2f'):>7}"
                )
        print(
            "  (raw clients and websockets.serve both default to permessage-deflate: zlib state"
            " per link;\n   serve() and resilient_ws default to no compression)"
        )
        for key, combo in figures.items():
            if combo["error"]:
                print(f"  {key}: {combo['failed']} failed to open, e.g. {combo['error']}")
        for key, label in STORMS.items():
            storm = figures.get(key, {}).get("storm")
            if storm:
                _print_storm(label, storm)
        ratio = _storm_ratio(figures)
        if ratio is not None:
            print(f"  all back after the blip, resilient_ws / websockets: {ratio:.2f}")
    if results.get("handshakes"):
        _print_handshakes(results["handshakes"], settings)
    print()
    for line in targets(results):
        print(line)


def _storm_ratio(figures: dict[str, Any]) -> float | None:
    """Time until all were back, resilient_ws on serve() / websockets on websockets.serve."""
    ours, theirs = (figures.get(key, {}).get("storm") or {} for key in STORMS)
    return _ratio(ours.get("all_back"), theirs.get("all_back"))


def _incomplete(combo: dict[str, Any], count: int) -> str | None:
    """Why a per-N figure is not a measurement of N connections, if it is not."""
    if not combo:
        return "not run"
    if combo["opened"] < count or combo["open_at_end"] < count * (1 - OPEN_SLACK):
        return f"not measured: {combo['opened']:,} opened, {combo['open_at_end']:,} open at the end"
    return None


def targets(results: dict[str, Any]) -> list[str]:
    """One line per issue-10 target: ok, MISSED, or why it was not measured in this run."""
    lines = []

    def check(name: str, value: float | None, ok: bool, spec: str, why: str | None = None) -> None:
        if why is None and value is None:
            why = "not measured"
        verdict = why or ("ok" if ok else "MISSED")
        lines.append(f"target {name}: {_cell(value, spec)}  {verdict}")

    runs = results["connections"]
    big = runs.get("10000", {}).get("resilient/resilient", {})
    cpu = big.get("server_cpu")
    check("idle serve() CPU, 10,000 resilient_ws clients <= 10 %", cpu,
          cpu is not None and cpu <= IDLE_CPU_10K_MAX, ".1f", _incomplete(big, 10000))  # fmt: skip
    mid = runs.get("5000", {})
    ours, theirs = mid.get("resilient/resilient", {}), mid.get("websockets/resilient", {})
    ratio = _cpu_ratio(ours, theirs, "server_cpu") if ours and theirs else None
    check("idle CPU serve()/websockets.serve, 5,000 resilient_ws clients <= 2", ratio,
          ratio is not None and ratio <= IDLE_CPU_5K_RATIO_MAX, ".2f",
          _incomplete(ours, 5000) or _incomplete(theirs, 5000))  # fmt: skip
    if runs:
        count, figures = max(runs.items(), key=lambda item: int(item[0]))
        # The baseline: websockets.serve's links without permessage-deflate.
        base = _kib(figures.get("websockets/resilient", {}))
        for client, kind in (("raw", "plain"), ("resilient", "replay")):
            ratio = _ratio(_kib(figures.get(f"resilient/{client}", {})), base)
            check(f"RSS per {kind} connection at {int(count):,} <= {RSS_RATIO_MAX}x"
                  " websockets.serve's (no deflate)", ratio,
                  ratio is not None and ratio <= RSS_RATIO_MAX, ".2f")  # fmt: skip
        ours = figures.get("resilient/resilient", {})
        us = ours.get("client_us_per_connection")
        check(f"client idle CPU at {int(count):,} <= {CLIENT_CPU_MAX:.0f} us/connection/s", us,
              us is not None and us <= CLIENT_CPU_MAX, ".1f",
              _incomplete(ours, int(count)))  # fmt: skip
    shakes = results.get("handshakes") or {}
    for label, floor in (("serve() plain", HANDSHAKE_PLAIN_MIN),
                         ("serve() replay", HANDSHAKE_REPLAY_MIN)):  # fmt: skip
        # Per second of server CPU: what a saturated server does per second, whatever else
        # ran on its core (handshakes/s alone flatters whichever server was starved less).
        ratio = (
            _ratio(shakes[label]["per_cpu"], shakes["websockets.serve"]["per_cpu"])
            if shakes
            else None
        )
        check(f"handshakes per server CPU-s {label}/websockets.serve >= {floor}", ratio,
              ratio is not None and ratio >= floor, ".2f")  # fmt: skip
    storm = big.get("storm") or {}
    back = storm.get("all_back")
    why = _incomplete(big, 10000) if big else "not run"
    if why is None and not storm:
        why = "not measured"
    if why is None and back is None:
        why = (
            f"MISSED: {storm['back']:,} of {storm['armed']:,} back within {storm['timeout']:.0f} s"
        )
    check("10,000 clients all back after a blip <= 10 s", back,
          back is not None and back <= STORM_10K_MAX, ".2f", why)  # fmt: skip
    peer = runs.get("10000", {}).get("websockets/raw", {}).get("storm") or {}
    ratio = _storm_ratio(runs["10000"]) if peer else None
    check(f"10,000 all back after a blip, serve()/websockets.serve <= {STORM_PEER_RATIO_MAX:.2f}"
          f" (websockets' own clients: {_cell(peer.get('all_back'), '.2f')} s)", ratio,
          ratio is not None and ratio <= STORM_PEER_RATIO_MAX, ".2f")  # fmt: skip
    return lines


# ---- command line ----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    hidden = argparse.SUPPRESS
    parser.add_argument("--serve-websockets", type=int, metavar="PORT", help=hidden)
    parser.add_argument("--serve-resilient", type=int, metavar="PORT", help=hidden)
    parser.add_argument("--abortable", action="store_true", help=hidden)
    parser.add_argument("--serve-clients", nargs=4, help=hidden)  # kind url count inflight
    parser.add_argument("--serve-handshakes", nargs=3, help=hidden)  # mode port inflight
    parser.add_argument(
        "--connections", help="comma-separated numbers of idle connections (1000,5000,10000)"
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop of serve()",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help=f"client processes (default: one per {CONNECTIONS_PER_PROC:,})",
    )
    parser.add_argument("--window", type=float, help="idle CPU window, s (15)")
    parser.add_argument("--settle", type=float, help="wait before the window, s (3)")
    parser.add_argument(
        "--open-inflight",
        type=int,
        default=50,
        help="handshakes in flight while opening the idle connections",
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=0.0,
        help="cap on opening them, s (default: max(60, N x 15 ms))",
    )
    parser.add_argument("--storm-timeout", type=float, default=60.0)
    parser.add_argument("--inflight", type=int, default=50, help="handshakes in flight")
    parser.add_argument("--handshake-seconds", type=float, help="per server (5)")
    parser.add_argument(
        "--combos",
        default=",".join(f"{s}/{c}" for s in SERVERS for c in CLIENTS),
        help="server/clients pairs to run (all by default; the report needs all)",
    )
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument("--no-handshakes", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CI form: 1,000 connections, 3 s windows, 2 s of handshakes (~1 min)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _raise_nofile()
    if args.serve_websockets or args.serve_resilient or args.serve_clients or args.serve_handshakes:
        _die_with_parent()
    if args.serve_websockets:
        asyncio.run(_websockets_server(args.serve_websockets, args.abortable))
        return
    if args.serve_resilient:
        import anyio

        anyio.run(_resilient_server, args.serve_resilient, args.abortable, backend=args.backend)
        return
    if args.serve_clients:
        kind, url, count, inflight = args.serve_clients
        asyncio.run(_clients_main(kind, url, int(count), int(inflight)))
        return
    if args.serve_handshakes:
        mode, port, inflight = args.serve_handshakes
        asyncio.run(_handshake_main(int(port), mode, int(inflight)))
        return
    # Defaults, or --quick's where an option was not given.
    defaults = ("1000", 3.0, 2.0, 2.0) if args.quick else ("1000,5000,10000", 15.0, 3.0, 5.0)
    for name, value in zip(("connections", "window", "settle", "handshake_seconds"), defaults,
                           strict=True):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.counts = [int(count) for count in args.connections.split(",")]
    args.combos = args.combos.split(",")
    # Decided before this process moves to CPU 1 (pin() only offers CPUs it may use).
    args.server_pin, args.client_pin = pin(0), pin(1)
    if args.client_pin:
        os.sched_setaffinity(0, {1})
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps(results))
    else:
        report(results, [Path(sys.executable).name, *sys.argv])


if __name__ == "__main__":
    main()
