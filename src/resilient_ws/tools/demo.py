"""``resilient-ws demo``: a client and a ``serve()`` server through four faults, live.

The server runs in a subprocess (``resilient-ws _demo-server``); the client runs here and
reaches it through a :class:`~resilient_ws.testing.FaultProxy`, sending a numbered message
every 20 ms that the server echoes. The faults, in order:

1. a GIL stall: the server's handler calls a C function that holds the GIL from a worker
   thread (``to_thread``), which freezes its event loop; the client keeps the session, and
   the server's log names the code that stalled it;
2. a dead network: iptables drops the proxy's port when we are root and iptables is there,
   else the proxy blackholes the traffic and then resets it (and the demo says which);
3. a dropped connection (the proxy resets it): replay resends what each side lacks;
4. a server restart (SIGKILL, then a new process): the session is gone, and the client is
   told (``Gap``, ``SessionLost``) and carries on in a new session.

It ends with a summary and exits 0 when no message was lost or duplicated and every fault
was handled as it should be. The library never prints; this module is an application.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio

from ..client import Connection, connect
from ..config import Backoff, Keepalive
from ..events import (
    Closed,
    Connected,
    Disconnected,
    Event,
    Gap,
    PeerRecovered,
    PeerStalled,
    Reconnecting,
    Resumed,
    SessionLost,
)
from ..exceptions import ConnectionClosed, ResilientWSError
from ..testing import FaultProxy

__all__ = ["SERVER_COMMAND", "run_demo", "run_server"]

SERVER_COMMAND = "_demo-server"
_SEND_INTERVAL = 0.02  # a steady 50 messages per second
_STALL = 4.0  # seconds the server's GIL is held
_OUTAGE = 3.0  # seconds the network is dead
_PHASE_TIMEOUT = 12.0  # longest wait for what a fault should cause; only a bug reaches it
_START_TIMEOUT = 10.0
_BACKOFF = Backoff(first_delay=0.05, max_delay=1.0, stable_after=1.0, max_elapsed=20)
_SIGKILL: int = getattr(signal, "SIGKILL", signal.SIGTERM)


# ---- the server subprocess ------------------------------------------------------------------


def run_server(port: int, *, exit_with_stdin: bool) -> int:
    """``resilient-ws _demo-server PORT``: a ``serve()`` echo server on 127.0.0.1.

    ``!stall SECONDS`` makes the handler hold the GIL in a worker thread. Log events go to
    standard error as JSON lines; ``ready`` goes to standard output once it listens. With
    ``exit_with_stdin`` it exits when its standard input closes (the demo holds it open,
    so that a server never outlives a demo that was killed).
    """
    from .._logging import configure_json_logging

    configure_json_logging(sys.stderr)
    try:
        anyio.run(_serve, port, exit_with_stdin)
    except OSError as exc:
        print(f"resilient-ws {SERVER_COMMAND}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def hold_gil(seconds: float) -> None:
    """Sleep inside a C call that keeps the GIL (``ctypes.PyDLL``): CPU-bound C code in
    ``to_thread`` does the same to an event loop."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))


async def _serve(port: int, exit_with_stdin: bool) -> None:
    from ..server import ServerSession, serve

    async def echo(session: ServerSession) -> None:
        async for message in session:
            if isinstance(message, str) and message.startswith("!stall "):
                await anyio.to_thread.run_sync(hold_gil, float(message.split()[1]))
                continue
            await session.send(message)

    async with serve(echo, "127.0.0.1", port, stall_threshold=0.5):
        print("ready", flush=True)
        if exit_with_stdin:
            await anyio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        else:
            await anyio.sleep_forever()


class _ServerProcess:
    """The demo server, killed by pid and restarted on one port; reads its log events."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stalls: list[dict[str, object]] = []  # its loop_stalled events
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        command = [
            *(sys.executable, "-m", "resilient_ws.tools"),
            *(SERVER_COMMAND, str(self.port), "--exit-with-stdin"),
        ]
        process = await anyio.to_thread.run_sync(
            lambda: subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
        self._process = process
        assert process.stdout is not None
        assert process.stderr is not None
        threading.Thread(target=self._read_log, args=(process.stderr,), daemon=True).start()
        line = b""
        with anyio.move_on_after(_START_TIMEOUT):
            line = await anyio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"the demo server did not start on port {self.port}")

    def _read_log(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "resilient_ws.loop_stalled":
                self.stalls.append(event)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:  # our own child: the pid is still ours
            os.kill(process.pid, _SIGKILL)
        process.wait(_START_TIMEOUT)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


# ---- the dead network ---------------------------------------------------------------------


@contextmanager
def _dead_network(proxy: FaultProxy, use_iptables: bool) -> Iterator[None]:
    """Kill the network between the client and the proxy, and bring it back on exit."""
    if use_iptables:
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(proxy.port), "-j", "DROP"],
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(proxy.port), "-j", "DROP"],
        ]
        added = []
        try:
            for rule in rules:
                subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
                added.append(rule)
            yield
        finally:
            for rule in added:
                subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)
        return
    proxy.blackhole()
    try:
        yield
    finally:
        proxy.reset()  # the client's side was ACKed by the proxy: end it visibly
        proxy.restore()


def _can_use_iptables() -> bool:
    return (
        sys.platform == "linux"
        and hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("iptables") is not None
    )


# ---- the client ---------------------------------------------------------------------------


@dataclass
class _Run:
    """What the demo's tasks share."""

    started_at: float
    tty: bool
    next_seq: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)  # until echoed
    echo_rtt: float | None = None
    echoes: dict[int, int] = field(default_factory=dict)
    out_of_order: int = 0
    highest: int = -1
    sending: bool = True
    events: list[Event] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    findings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, text: str, at: float | None = None) -> None:
        when = (anyio.current_time() if at is None else at) - self.started_at
        clear = "\r\033[K" if self.tty else ""
        print(f"{clear}{when:6.2f}s  {text}", flush=True)

    def note(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, kind: type[Event], since: float) -> Event | None:
        """The first event of ``kind`` at or after ``since``, within the phase timeout."""
        with anyio.move_on_after(_PHASE_TIMEOUT):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and event.at >= since:
                        return event
                await self.changed.wait()
        return None

    def count(self, kind: type[Event], since: float, until: float) -> int:
        return sum(1 for e in self.events if isinstance(e, kind) and since <= e.at <= until)


def run_demo(backend: str, network: str = "auto") -> int:
    """Run the demo on ``backend``; return the exit status.

    Args:
        backend: ``"asyncio"`` or ``"trio"``.
        network: How to kill the network: ``"iptables"``, ``"proxy"`` or ``"auto"``
            (iptables when root and available).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = _ServerProcess(port)
    try:
        iptables = _can_use_iptables() if network == "auto" else network == "iptables"
        return anyio.run(_demo, server, iptables, backend=backend)
    finally:
        server.kill()


async def _demo(server: _ServerProcess, iptables: bool) -> int:
    run = _Run(started_at=anyio.current_time(), tty=sys.stdout.isatty())
    print(
        "resilient-ws demo: a client sends a numbered message every 20 ms to a resilient_ws"
        " server (a subprocess),\nthrough a local TCP proxy, and the server echoes it. Four"
        " faults follow: a GIL stall of the server,\na dead network"
        f" ({'iptables DROP' if iptables else 'proxy blackhole: not root or no iptables'}),"
        " a dropped connection and a server restart.",
        flush=True,
    )
    try:
        await server.start()
        with FaultProxy(server.port) as proxy:
            run.say(f"server listening on 127.0.0.1:{server.port} (pid {server.pid})")
            async with connect(proxy.url, backoff=_BACKOFF, keepalive=Keepalive()) as ws:
                await _exercise(ws, server, proxy, run, iptables)
    except (ResilientWSError, RuntimeError, OSError) as exc:
        run.failures.append(f"{type(exc).__name__}: {exc}")
    return _report(run)


async def _exercise(
    ws: Connection, server: _ServerProcess, proxy: FaultProxy, run: _Run, iptables: bool
) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_events, ws, run)
        tasks.start_soon(_receive, ws, run)
        tasks.start_soon(_send, ws, run)
        tasks.start_soon(_show_status, ws, run)
        await anyio.sleep(2.0)
        await _stall_phase(ws, server, run)
        await _network_phase(proxy, run, iptables)
        await _reset_phase(proxy, run)
        await _restart_phase(ws, server, run)
        await anyio.sleep(1.5)
        run.sending = False
        with anyio.move_on_after(3.0):
            while len(run.echoes) < run.next_seq:  # noqa: ASYNC110 - bounded drain
                await anyio.sleep(0.05)
        await ws.close()
        tasks.cancel_scope.cancel()


async def _stall_phase(ws: Connection, server: _ServerProcess, run: _Run) -> None:
    run.say(f"fault 1: the server holds the GIL for {_STALL:g} s in a worker thread")
    start = anyio.current_time()
    await ws.send(f"!stall {_STALL}")
    stalled = await run.wait_for(PeerStalled, start)
    recovered = await run.wait_for(PeerRecovered, start)
    end = anyio.current_time()
    if stalled is None or recovered is None:
        run.failures.append("the stall was not reported as PeerStalled / PeerRecovered")
        return
    drops = run.count(Disconnected, start, end)
    if drops:
        run.failures.append(f"the client disconnected {drops} time(s) during the stall")
    with anyio.move_on_after(3.0):
        while not server.stalls:  # noqa: ASYNC110 - the server's log arrives by pipe
            await anyio.sleep(0.05)
    culprit = server.stalls[-1].get("culprit") if server.stalls else None
    run.findings.append(
        f"GIL stall: noticed after {stalled.at - start:.2f} s, session kept"
        f" ({drops} disconnects); the server named the culprit: {culprit}"
    )
    if culprit is None:
        run.failures.append("the server did not name the code that stalled it")


async def _network_phase(proxy: FaultProxy, run: _Run, iptables: bool) -> None:
    how = "iptables DROP on the proxy's port" if iptables else "the proxy blackholes traffic"
    run.say(f"fault 2: the network dies for {_OUTAGE:g} s ({how})")
    start = anyio.current_time()
    with _dead_network(proxy, iptables):
        lost = await run.wait_for(Disconnected, start) if iptables else None
        await anyio.sleep_until(start + _OUTAGE)
    resumed = await run.wait_for(Resumed, start)
    if resumed is None or await run.wait_for(Connected, resumed.at) is None:
        run.failures.append("the session did not resume after the network came back")
        return
    back = resumed.at - (start + _OUTAGE)
    if iptables:
        if not isinstance(lost, Disconnected) or lost.verdict != "network_dead":
            run.failures.append("the dead network was not diagnosed as network_dead")
            return
        run.findings.append(
            f"dead network: diagnosed network_dead after {lost.at - start:.2f} s;"
            f" session resumed {back:.2f} s after the network came back"
        )
    else:
        run.findings.append(
            "dead network (proxy fallback: the proxy ACKs the client's bytes, so TCP evidence"
            f" says 'stalled server'; the outage ended with a reset): resumed after {back:.2f} s"
        )


async def _reset_phase(proxy: FaultProxy, run: _Run) -> None:
    run.say("fault 3: the proxy drops the connection (TCP RST) mid-stream")
    start = anyio.current_time()
    proxy.reset()
    resumed = await run.wait_for(Resumed, start)
    if not isinstance(resumed, Resumed) or await run.wait_for(Connected, resumed.at) is None:
        run.failures.append("the session did not resume after the connection dropped")
        return
    run.findings.append(
        f"dropped connection: resumed after {resumed.at - start:.2f} s, {resumed.resent}"
        " message(s) resent, nothing lost or duplicated so far"
    )


async def _restart_phase(ws: Connection, server: _ServerProcess, run: _Run) -> None:
    run.say("fault 4: the server restarts (SIGKILL, new process): its sessions are gone")
    # Quiesce first, so that the loss the client is told about is the session, not data.
    run.sending = False
    with anyio.move_on_after(3.0):
        while len(run.echoes) < run.next_seq or ws.stats.unacked:  # noqa: ASYNC110
            await anyio.sleep(0.05)
    start = anyio.current_time()
    await anyio.to_thread.run_sync(server.kill)
    await server.start()
    lost = await run.wait_for(SessionLost, start)
    run.sending = True
    if not isinstance(lost, SessionLost):
        run.failures.append("the client was not told that its session was lost")
        return
    run.findings.append(
        f"server restart: the client learnt of the lost session after {lost.at - start:.2f} s"
        f" (Gap and SessionLost, {lost.unacked} unacknowledged) and continued in a new one"
    )


async def _send(ws: Connection, run: _Run) -> None:
    next_at = anyio.current_time()
    while True:
        if run.sending:
            try:
                run.sent_at[run.next_seq] = anyio.current_time()
                await ws.send(str(run.next_seq))
            except ConnectionClosed:
                return
            run.next_seq += 1
        next_at = max(next_at + _SEND_INTERVAL, anyio.current_time())
        await anyio.sleep_until(next_at)


async def _receive(ws: Connection, run: _Run) -> None:
    try:
        async for message in ws:
            seq = int(message)
            sent_at = run.sent_at.pop(seq, None)
            if sent_at is not None:
                run.echo_rtt = anyio.current_time() - sent_at
            seen = run.echoes.get(seq, 0)
            run.echoes[seq] = seen + 1
            if not seen and seq < run.highest:
                run.out_of_order += 1
            run.highest = max(run.highest, seq)
    except ConnectionClosed as exc:
        run.failures.append(f"recv() failed: {exc}")


async def _watch_events(ws: Connection, run: _Run) -> None:
    async for event in ws.events():
        run.note(event)
        line = _describe(event)
        if line is not None:
            run.say(line, at=event.at)


def _describe(event: Event) -> str | None:
    if isinstance(event, Connected):
        return f"  connected (link {event.link}, {event.subprotocol or 'no subprotocol'})"
    if isinstance(event, Disconnected):
        return f"  disconnected: {event.cause} (verdict {event.verdict})"
    if isinstance(event, Reconnecting):
        return f"  reconnecting in {event.delay:.2f} s (attempt {event.attempt})"
    if isinstance(event, PeerStalled):
        return f"  server stalled (evidence: {event.evidence}); keeping the session"
    if isinstance(event, PeerRecovered):
        return f"  server recovered after {event.stalled_for:.2f} s"
    if isinstance(event, Resumed):
        return f"  session resumed, {event.resent} message(s) resent"
    if isinstance(event, Gap):
        last = "?" if event.last is None else event.last
        return f"  gap: server messages #{event.first}-#{last} will not arrive ({event.reason})"
    if isinstance(event, SessionLost):
        return f"  session lost: {event.unacked} message(s) of unknown fate, resent {event.resent}"
    if isinstance(event, Closed):
        return "  closed"
    return None


async def _show_status(ws: Connection, run: _Run) -> None:
    """The live line: RTT, timeout, verdict, server lag, counters."""
    interval = 0.25 if run.tty else 3.0
    while True:
        await anyio.sleep(interval)
        stats = ws.stats
        # A busy link carries no probes, so the keepalive's SRTT may be unknown: the echo's
        # round trip is shown too.
        echo = "-" if run.echo_rtt is None else f"{run.echo_rtt * 1000:.1f} ms"
        srtt = "-" if stats.srtt is None else f"{stats.srtt * 1000:.1f} ms"
        timeout = "-" if stats.timeout is None else f"{stats.timeout:.2f} s"
        lag = "-" if stats.peer_lag is None else f"{stats.peer_lag * 1000:.0f} ms"
        line = (
            f"[echo rtt {echo} | srtt {srtt} | timeout {timeout} | {stats.verdict} |"
            f" server lag {lag} | sent {run.next_seq} | echoed {len(run.echoes)}]"
        )
        if run.tty:
            print(f"\r\033[K        {line}", end="", flush=True)
        else:
            run.say(line)


def _report(run: _Run) -> int:
    sent = run.next_seq
    lost = sum(1 for seq in range(sent) if seq not in run.echoes)
    duplicated = sum(count - 1 for count in run.echoes.values())
    if lost:
        run.failures.append(f"{lost} message(s) never echoed")
    if duplicated:
        run.failures.append(f"{duplicated} duplicate echo(es)")
    if run.out_of_order:
        run.failures.append(f"{run.out_of_order} echo(es) out of order")
    print("\nsummary:", flush=True)
    print(
        f"  sent {sent}, echoed {len(run.echoes)}, lost {lost}, duplicated {duplicated},"
        f" out of order {run.out_of_order}",
        flush=True,
    )
    for finding in run.findings:
        print(f"  {finding}", flush=True)
    if run.failures:
        print("result: FAILED: " + "; ".join(run.failures), flush=True)
        return 1
    print("result: OK, nothing lost, nothing duplicated, every fault handled", flush=True)
    return 0
