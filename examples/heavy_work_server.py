"""Heavy work in a server: the wrong way (a worker thread) and the right way (a process).

Run it from the repository root::

    python examples/heavy_work_server.py --mode wrong|right|both     # about 8 s per mode
    python examples/heavy_work_server.py --serve --mode wrong         # just the server, on 8765

The server, built on ``resilient_ws.serve()``, echoes every message at once, except
``job NAME``, for which it runs a 4 s job and then answers ``done NAME``. The job is
:func:`crunch`, a C call that keeps the GIL for its whole length: it stands for CPU-heavy C
code that does not release the GIL (a regular expression gone exponential, a C encoder,
many extension modules).

- ``--mode wrong`` runs it with ``anyio.to_thread.run_sync(crunch, 4)``. Moving blocking
  work to a thread is the usual advice, and it does not help here: the thread holds the
  GIL, so the event loop cannot run until the call returns. No echo, no pong, no ack, no
  lag beacon for 4 s.
- ``--mode right`` runs it with ``anyio.to_process.run_sync(crunch, 4)``: the call runs in
  a worker process, with a GIL of its own, and the server's loop stays responsive.

The example starts the server in a subprocess (a stall in this process would freeze the
client too), with ``resilient_ws.configure_json_logging()`` so that its log events come out
as JSON lines on its standard error. The client, in this process, sends an echo every
0.2 s before, during and after the job and prints:

- what the client sees: echo round trips, ``PeerStalled`` / ``PeerRecovered`` events, and
  ``ws.stats.peer_lag`` / ``peer_stall``, the loop lag the server reports in its beacons;
- what the server logged: ``resilient_ws.loop_stalled``, whose ``culprit`` names the line
  of :func:`crunch` that held the GIL, and the stack of every thread.

The exit status is 0 when each mode behaved as described: in the wrong mode the server's
loop stalled, its watchdog named ``crunch`` and (where the OS gives TCP evidence: Linux and
macOS) the client saw ``PeerStalled``; in the right mode, none of that.

Platforms: :func:`crunch` calls libc's ``sleep()`` through ``ctypes.PyDLL`` (which keeps
the GIL) on Linux and macOS, and kernel32's ``Sleep()`` on Windows. Only Linux is tested.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import resilient_ws

Mode = Literal["wrong", "right"]
Say = Callable[[str], None]

HOST = "127.0.0.1"
THIS_FILE = os.path.abspath(__file__)
# Whole seconds (libc's sleep() takes an unsigned int), and longer than the ~2 s the
# client's keepalive needs to judge a silent server.
JOB_SECONDS = 4
HOW = {
    "wrong": f"anyio.to_thread.run_sync(crunch, {JOB_SECONDS}): a GIL-holding C call in a thread",
    "right": f"anyio.to_process.run_sync(crunch, {JOB_SECONDS}): the same call in a process",
}
ECHO_INTERVAL = 0.2
WARM_UP = 1.0
# After the job, long enough for a lag beacon (one a second) to report the stall.
COOL_DOWN = 1.5
START_TIMEOUT = 10.0
JOB_TIMEOUT = 30.0
# Where the client's keepalive can read TCP evidence, and so say PeerStalled (see
# docs/diagnosing.md); elsewhere a silent server is "unknown" until unknown_timeout.
TCP_EVIDENCE = sys.platform.startswith("linux") or sys.platform == "darwin"


# ---- the server -------------------------------------------------------------------------


def crunch(seconds: int) -> int:
    """Block for ``seconds`` inside a C call that keeps the GIL.

    ``ctypes.PyDLL`` calls a C function without releasing the GIL (``ctypes.CDLL``
    releases it): as CPU-bound C code that never releases it does.
    """
    if sys.platform == "win32":
        ctypes.PyDLL("kernel32").Sleep(seconds * 1000)
    else:
        ctypes.PyDLL(None).sleep(seconds)
    return seconds


async def run_job(session: resilient_ws.ServerSession, mode: Mode, name: str) -> None:
    if mode == "wrong":
        # WRONG for code that keeps the GIL: the event loop freezes until it returns.
        await anyio.to_thread.run_sync(crunch, JOB_SECONDS)
    else:
        # RIGHT: a worker process (anyio keeps a pool of them, one per CPU by default).
        # crunch must be importable by the worker: a module-level function.
        await anyio.to_process.run_sync(crunch, JOB_SECONDS)
    await session.send(f"done {name}")


async def handle(session: resilient_ws.ServerSession, mode: Mode) -> None:
    """``serve()``'s handler: echo, and run jobs in the background while echoing."""
    async with anyio.create_task_group() as jobs:
        async for message in session:
            assert isinstance(message, str)
            verb, _, name = message.partition(" ")
            if verb == "job":
                jobs.start_soon(run_job, session, mode, name)
            else:
                await session.send(message)


async def serve(mode: Mode, port: int, *, exit_with_stdin: bool) -> None:
    # An application configures logging; the library never does. JSON lines on stderr.
    resilient_ws.configure_json_logging()
    async with resilient_ws.serve(partial(handle, mode=mode), HOST, port) as server:
        print(f"listening on {HOST}:{server.port}", flush=True)
        if exit_with_stdin:  # run by the example's client: stop when it closes our stdin
            await anyio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        else:
            await server.serve_forever()


# ---- the client -------------------------------------------------------------------------


@dataclass
class ClientView:
    """What the client saw in one mode; times on its event loop's clock."""

    round_trips: dict[str, list[float]] = field(
        default_factory=lambda: {"before": [], "during": [], "after": []}
    )
    job_sent: float = 0.0
    job_took: float = 0.0
    stalled: list[resilient_ws.PeerStalled] = field(default_factory=list)
    recovered: list[resilient_ws.PeerRecovered] = field(default_factory=list)
    peer_lag_max: float = 0.0
    peer_stall: float | None = None


async def exercise(url: str, say: Say) -> ClientView:
    """Echo every 0.2 s; in the middle, one job; record what the client sees."""
    view = ClientView()
    phase = "before"
    job_done = anyio.Event()
    sent_at: dict[int, tuple[str, float]] = {}

    async with resilient_ws.connect(url) as ws, anyio.create_task_group() as tasks:

        async def read_answers() -> None:
            async for message in ws:
                assert isinstance(message, str)
                verb, _, arg = message.partition(" ")
                if verb == "echo":
                    sent_phase, sent = sent_at.pop(int(arg))
                    view.round_trips[sent_phase].append(anyio.current_time() - sent)
                elif verb == "done":
                    view.job_took = anyio.current_time() - view.job_sent
                    job_done.set()

        async def send_echoes() -> None:
            for number in range(1_000_000):
                sent_at[number] = (phase, anyio.current_time())
                await ws.send(f"echo {number}")
                view.peer_lag_max = max(view.peer_lag_max, ws.stats.peer_lag or 0.0)
                await anyio.sleep(ECHO_INTERVAL)

        async def follow_events() -> None:
            async for event in ws.events():
                if isinstance(event, resilient_ws.PeerStalled):
                    view.stalled.append(event)
                    say(
                        f"client: +{event.at - view.job_sent:.1f} s "
                        f"PeerStalled(evidence={event.evidence!r})"
                    )
                elif isinstance(event, resilient_ws.PeerRecovered):
                    view.recovered.append(event)
                    say(
                        f"client: +{event.at - view.job_sent:.1f} s "
                        f"PeerRecovered(stalled_for={event.stalled_for:.1f})"
                    )
                elif isinstance(event, resilient_ws.Disconnected):
                    say(f"client: Disconnected(verdict={event.verdict!r})")

        tasks.start_soon(read_answers)
        tasks.start_soon(send_echoes)
        tasks.start_soon(follow_events)
        await anyio.sleep(WARM_UP)
        phase, view.job_sent = "during", anyio.current_time()
        await ws.send("job 1")
        say(f"client: job 1 sent: {JOB_SECONDS} s of crunch() on the server")
        with anyio.fail_after(JOB_TIMEOUT):
            await job_done.wait()
        say(f"client: job 1 done after {view.job_took:.1f} s")
        phase = "after"
        await anyio.sleep(COOL_DOWN)
        view.peer_stall = ws.stats.peer_stall
        tasks.cancel_scope.cancel()
    return view


def print_client_view(view: ClientView, say: Say) -> None:
    for phase, round_trips in view.round_trips.items():
        if round_trips:
            say(
                f"client: echo round trips {phase} the job: max {max(round_trips):.3f} s "
                f"({len(round_trips)} echoes)"
            )
    stall = "none" if view.peer_stall is None else f"{view.peer_stall:.1f} s"
    say(
        f"client: ws.stats.peer_lag max seen {view.peer_lag_max:.2f} s, ws.stats.peer_stall {stall}"
    )
    if not view.stalled:
        say("client: no PeerStalled event")


# ---- the server's log -------------------------------------------------------------------


def loop_stalls(log: bytes, say: Say) -> list[dict[str, Any]]:
    """The server's ``resilient_ws.loop_stalled`` events; other lines pass through."""
    stalls = []
    for line in log.decode(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            print(f"server stderr: {line}", file=sys.stderr)
            continue
        if event.get("event") == "resilient_ws.loop_stalled":
            stalls.append(event)
    for stall in stalls:
        say(
            f"server log: resilient_ws.loop_stalled duration={stall['duration']:.2f} "
            f"threshold={stall['threshold']} culprit={stall['culprit']!r}"
        )
        for thread in stall["threads"]:
            where = " <- ".join(os.path.basename(frame) for frame in thread["frames"][:3])
            role = "loop thread" if thread["loop"] else "thread"
            say(f"server log:   {role} {thread['thread_id']:#x}: {where or '(no Python frame)'}")
    if not stalls:
        say("server log: no loop_stalled event")
    return stalls


# ---- running one mode ---------------------------------------------------------------------


async def run_mode(mode: Mode, backend: str, say: Say) -> bool:
    say(f"=== {mode}: {HOW[mode]} ===")
    command = [
        sys.executable,
        THIS_FILE,
        "--serve",
        "--mode",
        mode,
        "--port",
        "0",
        "--backend",
        backend,
        "--exit-with-stdin",
    ]
    stderr = bytearray()
    async with (
        await anyio.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(collect, process, stderr)
        url = await server_url(process)
        say(f"server: {url} (pid {process.pid})")
        view = await exercise(url, say)
        assert process.stdin is not None
        await process.stdin.aclose()  # the server exits
    print_client_view(view, say)
    stalls = loop_stalls(bytes(stderr), say)
    return judge(mode, view, stalls, say)


async def collect(process: Process, stderr: bytearray) -> None:
    assert process.stderr is not None
    async for chunk in process.stderr:
        stderr.extend(chunk)


async def server_url(process: Process) -> str:
    assert process.stdout is not None
    with anyio.fail_after(START_TIMEOUT):
        line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 200)
    address = line.decode().removeprefix("listening on ")
    return f"ws://{address}/"


def judge(mode: Mode, view: ClientView, stalls: list[dict[str, Any]], say: Say) -> bool:
    named = any("crunch" in (stall["culprit"] or "") for stall in stalls)
    if mode == "wrong":
        ok = named and (bool(view.stalled) or not TCP_EVIDENCE)
        expected = "the loop stalled, the watchdog named crunch(), the client saw PeerStalled"
    else:
        ok = not stalls and not view.stalled
        expected = "no loop stall, no PeerStalled"
    say(f"{mode}: {'as expected' if ok else 'NOT as expected'}: {expected}")
    return ok


async def main(modes: list[Mode], backend: str) -> int:
    start = anyio.current_time()

    def say(text: str) -> None:
        print(f"[{anyio.current_time() - start:5.2f}s] {text}", flush=True)

    results = [await run_mode(mode, backend, say) for mode in modes]
    say(f"result: {'OK' if all(results) else 'FAILED'}")
    return 0 if all(results) else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("wrong", "right", "both"), default="both")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--serve", action="store_true", help="run only the server")
    parser.add_argument("--port", type=int, default=8765, help="the server's port (--serve)")
    parser.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve and args.mode == "both":
        parser.error("--serve needs --mode wrong or --mode right")
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.serve:
        anyio.run(
            partial(serve, args.mode, args.port, exit_with_stdin=args.exit_with_stdin),
            backend=args.backend,
        )
    else:
        modes: list[Mode] = ["wrong", "right"] if args.mode == "both" else [args.mode]
        sys.exit(anyio.run(main, modes, args.backend, backend=args.backend))
