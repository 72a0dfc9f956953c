"""The ``resilient-ws`` command line.

Subcommands:

``demo``
    Run a client against a local echo server that is killed (SIGKILL) and restarted twice,
    printing every lifecycle event live and a summary of what was sent, echoed and lost.

``analyze LOG...``
    Print an incident report from the library's JSON-lines log events (``_analyze.py``).

``_demo-server PORT`` (hidden)
    The plain websockets echo server the demo runs in a subprocess. It prints ``ready`` once
    it listens on 127.0.0.1:PORT.

The library itself never prints; this module is an application and does.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from . import _analyze
from ._logging import configure_json_logging
from .client import Connection, connect
from .config import Backoff
from .events import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Event,
    EventsMissed,
    MessagesDropped,
    Reconnecting,
)
from .exceptions import ConnectionClosed, ResilientWSError

__all__ = ["main"]

PROG = "resilient-ws"
_SERVER_COMMAND = "_demo-server"
# Kills the demo performs; it succeeds when the client recovers from each of them.
_KILLS = 2
# Seconds the server stays dead before the demo restarts it.
_DOWNTIME = 1.0
# Seconds between two messages of the client: a steady 50 messages per second.
_SEND_INTERVAL = 0.02
# Longest wait for the server to print "ready", and for the client to recover from a kill.
_START_TIMEOUT = 10.0
_RECOVERY_TIMEOUT = 10.0
# Longest wait, after the last send, for the echoes still in flight.
_DRAIN_TIMEOUT = 1.0
# Reconnect policy of the demo: retries within a second, so that a 1 s outage shows as a
# short burst of attempts; a link counts as stable after 1 s, so the second kill starts
# again from a fast first retry; give up after 15 s of failures so the demo cannot hang.
_DEMO_BACKOFF = Backoff(
    first_delay=0.1, base=0.25, multiplier=2.0, max_delay=1.0, stable_after=1.0, max_elapsed=15.0
)
# SIGKILL does not exist on Windows, where os.kill() with SIGTERM terminates the process.
_SIGKILL: int = getattr(signal, "SIGKILL", signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``resilient-ws`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 on success, 1 when the command ran and failed, 2 for a
        usage error, 130 when interrupted.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    # The server helper is parsed apart, so that no help or error message names it.
    hidden = arguments[:1] == [_SERVER_COMMAND]
    parser = _build_server_parser() if hidden else _build_parser()
    try:
        args = parser.parse_args(arguments[1:] if hidden else arguments)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if hidden:
            return _run_server(args.port, exit_with_stdin=args.exit_with_stdin)
        if args.command is None:
            parser.print_usage(sys.stderr)
            print(f"{PROG}: error: a command is required", file=sys.stderr)
            return 2
        if args.command == "analyze":
            return _analyze.run(args.logs, as_json=args.json, plot=args.plot)
        return _run_demo(args.duration, args.backend, json_logs=args.json_logs)
    except BaseException as exc:
        if _interrupted(exc):
            return 130
        raise


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, possibly inside task groups' exception groups (trio)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    inner: tuple[BaseException, ...] = getattr(exc, "exceptions", ())
    return any(_interrupted(child) for child in inner)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A WebSocket client that stays connected: tools and demo."
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="watch a client survive its server being killed and restarted twice",
        description=(
            "Start a local echo server in a subprocess, run a client that sends numbered "
            "messages every 20 ms, kill the server (SIGKILL) twice and restart it after "
            "about 1 s, and print every lifecycle event and a summary. Exits 0 when the "
            "client recovered from both kills."
        ),
    )
    demo.add_argument(
        "--duration",
        type=_duration,
        default=10.0,
        help="seconds to run, at least 3 (default: %(default)s); the demo runs longer "
        "when a recovery takes longer",
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="anyio backend of the client (default: %(default)s)",
    )
    demo.add_argument(
        "--json-logs",
        action="store_true",
        help="also write the library's structured log events as JSON lines to stderr",
    )
    analyze = commands.add_parser(
        "analyze",
        help="print an incident report from the library's JSON-lines log events",
        description=(
            "Read the JSON-lines events written by configure_json_logging() and print an "
            "incident report: uptime per connection, disconnects by verdict and cause, time "
            "to reconnect, messages replayed, gaps and server stalls. Bad lines are counted, "
            "never fatal. See docs/analyze.md."
        ),
    )
    analyze.add_argument(
        "logs", nargs="*", metavar="LOG", help="log files; '-' or none reads standard input"
    )
    analyze.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also draw a timeline into this PNG file (pip install 'resilient_ws[cli]')",
    )
    return parser


def _build_server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {_SERVER_COMMAND}",
        description="A plain websockets echo server on 127.0.0.1; prints 'ready' once listening.",
    )
    parser.add_argument("port", type=int)
    parser.add_argument(
        "--exit-with-stdin", action="store_true", help="exit when standard input closes"
    )
    return parser


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 3.0 <= value <= 300.0:
        raise argparse.ArgumentTypeError("must be between 3 and 300 seconds")
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the echo server subprocess -------------------------------------------------------------


def _run_server(port: int, *, exit_with_stdin: bool) -> int:
    """Serve echo on 127.0.0.1:``port`` until killed (or, optionally, stdin closes)."""
    try:
        asyncio.run(_serve_echo(port, exit_with_stdin))
    except OSError as exc:  # the port is taken, most likely
        print(f"{PROG} {_SERVER_COMMAND}: error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_echo(port: int, exit_with_stdin: bool) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed as WebSocketClosed

    async def echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except WebSocketClosed:
            pass  # the client went away mid-echo: nothing to report

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    if exit_with_stdin:
        # The demo holds our stdin open: EOF means it is gone, even if it was SIGKILLed,
        # so an orphaned server never lingers.
        def stop_once() -> None:
            if not stop.done():
                stop.set_result(None)

        def wait_for_eof() -> None:
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(stop_once)

        threading.Thread(target=wait_for_eof, daemon=True).start()
    async with serve(echo, "127.0.0.1", port, compression=None):
        print("ready", flush=True)
        await stop


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


class _ServerProcess:
    """The echo server in a subprocess, killed by pid (SIGKILL) and restarted on one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Start the server and wait until it listens.

        Raises:
            RuntimeError: It did not print ``ready`` within the start timeout.
        """
        command = [
            *(sys.executable, "-m", "resilient_ws.cli"),
            *(_SERVER_COMMAND, str(self.port), "--exit-with-stdin"),
        ]
        # Starting a Python process takes a few milliseconds of fork and exec: not on the loop.
        process = await anyio.to_thread.run_sync(_spawn, command)
        self._process = process
        stdout = process.stdout
        assert stdout is not None
        line = b""
        with anyio.move_on_after(_START_TIMEOUT):
            # Killing the process on a timeout ends this readline with EOF.
            line = await anyio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"the echo server did not start on port {self.port}: {line!r}")

    def kill(self) -> None:
        """SIGKILL the server by pid and reap it. Safe to call when it is not running."""
        process, self._process = self._process, None
        if process is None:
            return
        # poll() reaps nothing but our own child, so the pid cannot belong to anyone else.
        if process.poll() is None:
            os.kill(process.pid, _SIGKILL)
        # A SIGKILLed process is gone within milliseconds: waiting here blocks only briefly.
        process.wait(_START_TIMEOUT)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


# ---- the demo -------------------------------------------------------------------------------


@dataclass
class _Kill:
    """One kill of the server and the client's recovery from it."""

    number: int
    killed_at: float
    first_seq_after: int  # the first message passed to send() after the kill
    restarted_at: float | None = None
    connected_at: float | None = None
    echoed_at: float | None = None
    connected: anyio.Event = field(default_factory=anyio.Event)
    echoed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def recovered(self) -> bool:
        return self.connected_at is not None and self.echoed_at is not None


@dataclass
class _Run:
    """What the demo's tasks share: counters, the kills and the output clock."""

    started_at: float
    next_seq: int = 0  # messages passed to send(); also the number of the next one
    echoes: dict[int, int] = field(default_factory=dict)  # message number -> times echoed
    out_of_order: int = 0
    highest_echo: int = -1
    reconnects: int = 0
    undelivered: int = 0  # still in the send queue when the client closed
    kills: list[_Kill] = field(default_factory=list)
    sending: bool = True
    failure: str | None = None
    all_echoed: anyio.Event = field(default_factory=anyio.Event)

    def say(self, text: str, at: float | None = None) -> None:
        when = (anyio.current_time() if at is None else at) - self.started_at
        print(f"{when:7.3f}s  {text}", flush=True)

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def check_drained(self) -> None:
        if not self.sending and len(self.echoes) >= self.next_seq:
            self.all_echoed.set()


def _run_demo(duration: float, backend: str, *, json_logs: bool) -> int:
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        print(f"{PROG}: error: trio is not installed (pip install trio)", file=sys.stderr)
        return 2
    if json_logs:
        configure_json_logging(sys.stderr)
    server = _ServerProcess(_free_port())
    try:
        return anyio.run(_demo, server, duration, backend=backend)
    finally:
        server.kill()  # whatever happened, never leave the server running


async def _demo(server: _ServerProcess, duration: float) -> int:
    run = _Run(started_at=anyio.current_time())
    print(
        f"resilient-ws demo: a client sends a numbered message every {_SEND_INTERVAL * 1000:.0f}"
        f" ms to a local echo server, which is killed (SIGKILL) {_KILLS} times and restarted"
        f" after {_DOWNTIME:.0f} s.",
        flush=True,
    )
    print(
        f"backoff: first retry within {_DEMO_BACKOFF.first_delay} s, then up to"
        f" {_DEMO_BACKOFF.base} s x{_DEMO_BACKOFF.multiplier:g}, capped at"
        f" {_DEMO_BACKOFF.max_delay} s; a link is stable after {_DEMO_BACKOFF.stable_after} s.",
        flush=True,
    )
    # Generous bound: only a hang reaches it; every expected wait has a shorter timeout.
    with anyio.move_on_after(duration + 2 * _RECOVERY_TIMEOUT + 15) as deadline:
        try:
            await server.start()
            run.say(f"demo: echo server listening on {server.url} (pid {server.pid})")
            async with connect(server.url, backoff=_DEMO_BACKOFF) as ws:
                await _exercise(ws, server, run, duration)
        except (ResilientWSError, RuntimeError, OSError) as exc:
            run.fail(f"{type(exc).__name__}: {exc}")
    if deadline.cancelled_caught:
        run.fail("the demo did not finish in time")
    return _report(run)


async def _exercise(ws: Connection, server: _ServerProcess, run: _Run, duration: float) -> None:
    """Send and receive while killing and restarting the server; then drain and close."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_print_events, ws, run)
        tasks.start_soon(_receive, ws, run)
        tasks.start_soon(_send, ws, run)
        try:
            await _kill_and_restart(server, run, duration)
        except RuntimeError as exc:  # the server did not come back
            run.fail(str(exc))
        run.sending = False
        run.check_drained()
        run.say(f"demo: stopped sending; waiting up to {_DRAIN_TIMEOUT:g} s for the last echoes")
        with anyio.move_on_after(_DRAIN_TIMEOUT):
            await run.all_echoed.wait()
        run.say("demo: closing the client")
        await ws.close()


async def _kill_and_restart(server: _ServerProcess, run: _Run, duration: float) -> None:
    """Kill the server and restart it after a second, twice; wait for the client each time.

    The first kill comes a fifth of the way in; the second once the link after the first
    recovery has been stable for a while, so that the backoff has reset; then the demo runs
    until ``duration``.
    """
    kill_at = run.started_at + duration * 0.2
    for number in range(1, _KILLS + 1):
        await anyio.sleep_until(kill_at)
        kill = _Kill(number=number, killed_at=anyio.current_time(), first_seq_after=run.next_seq)
        run.kills.append(kill)
        run.say(f"demo: killing the server (SIGKILL, pid {server.pid}) [kill {number}/{_KILLS}]")
        await anyio.to_thread.run_sync(server.kill)
        await anyio.sleep_until(kill.killed_at + _DOWNTIME)
        await server.start()
        kill.restarted_at = anyio.current_time()
        run.say(f"demo: restarted the server (pid {server.pid})")
        with anyio.move_on_after(_RECOVERY_TIMEOUT):
            await kill.connected.wait()
            await kill.echoed.wait()
        if not kill.recovered:
            run.fail(f"the client did not recover within {_RECOVERY_TIMEOUT:g} s of kill {number}")
            return
        assert kill.echoed_at is not None
        kill_at = max(
            run.started_at + duration * 0.55, kill.echoed_at + _DEMO_BACKOFF.stable_after + 0.5
        )
    await anyio.sleep_until(max(run.started_at + duration, anyio.current_time() + 1.0))


async def _send(ws: Connection, run: _Run) -> None:
    """Send message 0, 1, 2... at a steady rate; while the link is down they are queued."""
    next_at = anyio.current_time()
    while run.sending:
        try:
            await ws.send(str(run.next_seq))
        except ConnectionClosed as exc:
            run.fail(f"send() failed: {exc}")
            return
        run.next_seq += 1
        # A steady rate, not a catch-up burst after a send that waited.
        next_at = max(next_at + _SEND_INTERVAL, anyio.current_time())
        await anyio.sleep_until(next_at)


async def _receive(ws: Connection, run: _Run) -> None:
    """Count echoes, duplicates and reordering; tell each kill when echoes flow again."""
    try:
        async for message in ws:
            seq = int(message)
            seen = run.echoes.get(seq, 0)
            run.echoes[seq] = seen + 1
            if not seen:
                if seq < run.highest_echo:
                    run.out_of_order += 1
                run.highest_echo = max(run.highest_echo, seq)
            for kill in run.kills:
                if kill.echoed_at is None and seq >= kill.first_seq_after:
                    kill.echoed_at = anyio.current_time()
                    kill.echoed.set()
                    after = "" if kill.connected_at is None else " after reconnecting"
                    since = kill.echoed_at - (kill.connected_at or kill.killed_at)
                    run.say(f"demo: echoes flow again (#{seq}, {since:.3f} s{after})")
            run.check_drained()
    except ConnectionClosed as exc:
        run.fail(f"recv() failed: {exc}")


async def _print_events(ws: Connection, run: _Run) -> None:
    """Print one line per lifecycle event, as it happens."""
    async for event in ws.events():
        if isinstance(event, Connected):
            if event.link > 1:
                run.reconnects += 1
            for kill in run.kills:
                if kill.connected_at is None and event.at >= kill.killed_at:
                    kill.connected_at = event.at
                    kill.connected.set()
        elif isinstance(event, Closed):
            run.undelivered = event.undelivered
        run.say(_describe(event), at=event.at)


def _describe(event: Event) -> str:
    """One line for a lifecycle event."""
    if isinstance(event, Connecting):
        return f"connecting     attempt {event.attempt} to {event.url}"
    if isinstance(event, Connected):
        return f"connected      link {event.link}, flushed {event.flushed} queued message(s)"
    if isinstance(event, Disconnected):
        uptime = "never opened" if event.uptime is None else f"up {event.uptime:.3f} s"
        fatal = ", fatal" if event.fatal else ""
        cause = f"{type(event.cause).__name__}: {event.cause}"
        return f"disconnected   {cause} ({uptime}, verdict {event.verdict}{fatal})"
    if isinstance(event, Reconnecting):
        return f"reconnecting   attempt {event.attempt} in {event.delay:.3f} s"
    if isinstance(event, MessagesDropped):
        return f"dropped        {event.count} queued message(s), {event.size} bytes"
    if isinstance(event, Closed):
        why = "by the application" if event.cause is None else f"by {event.cause}"
        return f"closed         {why}, {event.undelivered} queued message(s) undelivered"
    if isinstance(event, EventsMissed):
        return f"missed         {event.count} event(s): the printer fell behind"
    return f"{type(event).__name__.lower():<14} {event}"


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"#1-#3, #7"``."""
    ordered = sorted(numbers)
    spans: list[str] = []
    start = 0
    for end in range(1, len(ordered) + 1):
        if end == len(ordered) or ordered[end] != ordered[end - 1] + 1:
            first, last = ordered[start], ordered[end - 1]
            spans.append(f"#{first}" if first == last else f"#{first}-#{last}")
            start = end
    return ", ".join(spans)


def _report(run: _Run) -> int:
    """Print the summary; return the exit status."""
    sent = run.next_seq
    lost = [seq for seq in range(sent) if seq not in run.echoes]
    duplicates = sum(count - 1 for count in run.echoes.values())
    echoed = sum(run.echoes.values())
    print(flush=True)
    print(
        f"summary: sent {sent}, echoes received {echoed}, not echoed {len(lost)},"
        f" duplicates {duplicates}, out of order {run.out_of_order}, reconnects {run.reconnects}",
        flush=True,
    )
    if lost:
        queued = f" ({run.undelivered} never left the send queue)" if run.undelivered else ""
        print(f"  not echoed: {_ranges(lost)}{queued}", flush=True)
    for kill in run.kills:
        print(f"  kill {kill.number}: {_recovery(kill)}", flush=True)
    print(
        "  plain mode: without the replay protocol, messages sitting in TCP buffers when the"
        " server dies are lost,\n  and so are echoes it had not sent yet; a message whose"
        " send() was cut off is sent again and may be duplicated.\n  A later version adds a"
        " replay protocol between resilient_ws.connect() and resilient_ws.serve() that"
        " closes these holes.",
        flush=True,
    )
    survived = len(run.kills) == _KILLS and all(kill.recovered for kill in run.kills)
    if survived and run.failure is None:
        print(f"result: OK, the client survived {_KILLS} server restarts", flush=True)
        return 0
    print(f"result: FAILED, {run.failure or 'the client did not recover'}", flush=True)
    return 1


def _recovery(kill: _Kill) -> str:
    parts: list[str] = []
    if kill.restarted_at is not None:
        parts.append(f"server back after {kill.restarted_at - kill.killed_at:.3f} s")
    if kill.connected_at is not None:
        parts.append(f"reconnected after {kill.connected_at - kill.killed_at:.3f} s")
    if kill.echoed_at is not None:
        parts.append(f"echoes again after {kill.echoed_at - kill.killed_at:.3f} s")
    return ", ".join(parts) if parts else "no recovery"


if __name__ == "__main__":
    raise SystemExit(main())
