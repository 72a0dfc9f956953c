"""Benchmark the replay protocol: throughput, echo latency and memory, replay on vs off vs raw.

    python bench/bench_replay.py [--backend asyncio|trio|both] [--reps 5] [--seconds 1.0]
                                 [--count 3000] [--sessions 500] [--buffered 1000]

Clients (compression off everywhere), all against the same ``resilient_ws.serve()`` echo
server (replay enabled, otherwise defaults) running on asyncio in a child process:

- ``raw``: the raw websockets client (``websockets.asyncio`` or ``websockets.trio``). It does
  not offer the replay subprotocol, so the server gives it a plain session;
- ``plain``: ``resilient_ws.connect(replay=None)``: a plain session too;
- ``replay``: ``resilient_ws.connect(replay=Replay())``: a replay session (numbered messages,
  replay buffers and coalesced acks on both sides).

Why one server for all three: the cost of replay is paid on both ends (the server numbers,
buffers and acknowledges what it echoes), and an echo benchmark is bounded by whichever
process is busier, so "replay on vs raw" is only fair with the same server code on the other
end; the ratios (and the target of issue 10, replay/raw throughput >= 0.9 at 64 B and
16 KiB) are against ``raw`` on the same ``serve()`` server, and ``r/p`` is replay/plain (the
replay protocol alone, both clients resilient_ws). For reference, the ``ws-srv`` column is
the raw websockets client against a plain websockets echo server (bench_client.py's, in
another child process): what ``serve()`` itself costs even for a plain client.

The servers run pinned to CPU 0 and the clients (this process) to CPU 1 (``taskset`` and
``sched_setaffinity``, when the machine has both); default allocator (no ``PYTHONMALLOC``).
Other load on the machine skews every figure: the load average is printed first; repeat
the run and compare the spread.

Throughput: a sender task sends messages of 64 B or 16 KiB back to back while a receiver task
reads the echoes, pipelined with at most 256 messages (and 1 MiB) in flight, the same for
every client; a run ends with a marker message, and the time runs until its echo is back, so
only messages that made the round trip count. The window stays well inside the replay
buffer's bounds (Replay(): 1024 messages, 4 MiB) on purpose: an echo pipelined deeper than
that deadlocks a replay session on asyncio (the handler blocks in ``session.send()`` waiting
for an ack that sits in the server's socket behind client messages websockets stopped
reading, its ``max_queue`` being full because that same handler is not receiving).
Each client sends for ``--seconds`` in all, in bench_client.SLICES slices interleaved with
the other clients' (a shared VM has slow phases seconds long; interleaving spreads them over
all clients). Latency: bench_client.latency() (one 64 B message in flight, p50/p99,
interleaved slices). Each cell is run ``--reps`` times, client order reversed on odd reps,
and summarized by the median.

Memory, on the server (a fresh ``serve()`` child process per measurement, on the backend
being measured, ``tracemalloc`` on from its start, and ``open_timeout=2`` so the per-handshake
guard task is gone when it is measured):

- per idle session: ``--sessions`` clients connect and sit idle; the growth of the server's
  traced Python memory (after ``gc.collect()``) and of its RSS, divided by their number, for
  raw websockets clients (plain sessions) and replay clients (replay sessions);
- per buffered message: a client that negotiated replay drops its link abruptly (no close
  frame: the session waits for a resume), then the handler ``session.send()``\\s
  ``--buffered`` fresh binary messages of 64 B and 1 KiB into the replay buffer; traced
  growth per message, and what is left after the payload (len) and after the bytes object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import tracemalloc
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import anyio

import resilient_ws
from resilient_ws import Replay
from resilient_ws._core.protocol import SUBPROTOCOL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_client
from _benchutil import pin
from bench_client import (
    SIZES,
    SLICES,
    Client,
    Connector,
    Results,
    _raw_connector,
    latency,
)

END = b"end"  # marks the end of a throughput run; differs from every payload
CLIENTS = ("ws-srv", "raw", "plain", "replay")
THROUGHPUT_MIN_RATIO = 0.9  # issue 10: replay >= 0.9x of a plain session, 64 B and 16 KiB
# Throughput runs keep at most this many messages (and bytes) in flight; see the docstring.
PIPELINE_MESSAGES = 256
PIPELINE_BYTES = 1024 * 1024
BUFFERED_SIZES = (64, 1024)
# The memory servers' websockets open_timeout: serve() keeps a guard task per granted
# handshake for that long; waiting it out measures the steady state of an idle session.
MEMORY_OPEN_TIMEOUT = 2.0
# Server children run on CPU 0 and this process (the clients) on CPU 1, when there are two:
# an echo run is bounded by the busier process, so neither may steal the other's core.
SERVER_PIN = pin(0)
CLIENT_PIN = pin(1)


def _emit(**fields: Any) -> None:
    """A JSON line to the parent process (child processes' only output on stdout)."""
    print(json.dumps(fields), flush=True)


# ---- servers (child processes) ---------------------------------------------------------


async def _echo(session: resilient_ws.ServerSession) -> None:
    async for message in session:
        await session.send(message)


async def _serve_echo() -> None:
    async with resilient_ws.serve(_echo, "127.0.0.1", 0, replay=Replay()) as server:
        _emit(port=server.port)
        await server.serve_forever()


def _memory() -> dict[str, int]:
    gc.collect()
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * page
    return {"traced": tracemalloc.get_traced_memory()[0], "rss": rss}


async def _buffer_while_away(session: resilient_ws.ServerSession, size: int, count: int) -> None:
    """Once the client is gone (session detached), send ``count`` fresh messages into the
    replay buffer and report the traced memory they hold."""
    while session.connected:  # noqa: ASYNC110 (a session has no event for this)
        await anyio.sleep(0.01)
    before = _memory()["traced"]
    payload = b""
    for index in range(count):
        payload = index.to_bytes(8, "big") * (size // 8)
        await session.send(payload)
    after = _memory()["traced"]
    _emit(size=size, count=count, buffered=session.outbound.count, traced=after - before,
          payload_object=sys.getsizeof(payload))  # fmt: skip


async def _serve_memory() -> None:
    """serve() with tracemalloc on; answers "measure" lines on stdin with a JSON line."""
    tracemalloc.start()

    async def handler(session: resilient_ws.ServerSession) -> None:
        parts = session.request.path.split("/")
        if parts[1] == "buffer":
            await _buffer_while_away(session, int(parts[2]), int(parts[3]))
            return
        await _echo(session)

    async with resilient_ws.serve(
        handler, "127.0.0.1", 0, replay=Replay(), open_timeout=MEMORY_OPEN_TIMEOUT
    ) as server:
        _emit(port=server.port)
        while await anyio.to_thread.run_sync(sys.stdin.readline):
            _emit(**_memory(), sessions=len(server.sessions))


def _spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    """Start this file (or bench_client.py) as a server pinned to CPU 0 (the clients run on
    CPU 1, see main()); return it and its port."""
    child = subprocess.Popen(
        [*SERVER_PIN, sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        raise RuntimeError(f"server {args} failed to start")
    port = line if line.strip().isdigit() else json.loads(line)["port"]
    return child, int(port)


def _stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()


# ---- throughput and latency ------------------------------------------------------------


def _connectors(backend: str, serve_url: str, ws_url: str) -> dict[str, Connector]:
    """The clients, each bound to its server: call them with a path ("/echo")."""
    raw = _raw_connector(backend)

    def resilient(replay: Replay | None) -> Connector:
        return lambda path: resilient_ws.connect(serve_url + path, replay=replay, compression=None)

    return {
        "ws-srv": lambda path: raw(ws_url + path),
        "raw": lambda path: raw(serve_url + path),
        "plain": resilient(None),
        "replay": resilient(Replay()),
    }


def _check_mode(name: str, ws: Any) -> None:
    """Fail loudly if a resilient client did not get the session kind it is measured as."""
    if name in ("plain", "replay"):
        has_session = ws.stats.session_id is not None
        if has_session != (name == "replay"):
            raise RuntimeError(f"{name} client: session_id={ws.stats.session_id!r}")


async def _echo_run(ws: Client, payload: bytes, deadline: float, window: int) -> int:
    """Send ``payload`` until ``deadline`` while another task reads the echoes, at most
    ``window`` messages in flight; return the count once the END marker's echo is back."""
    sent = received = 0
    room: anyio.Event | None = None  # set by the receiver when the window has room again

    async def receive() -> None:
        nonlocal received, room
        while await ws.recv() != END:
            received += 1
            if room is not None and sent - received <= window // 2:
                room.set()
                room = None

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(receive)
        while True:
            if sent - received >= window:
                room = anyio.Event()
                await room.wait()
            await ws.send(payload)
            sent += 1
            if time.perf_counter() >= deadline:
                break
        await ws.send(END)
    if received != sent:
        raise RuntimeError(f"{received} echoes for {sent} messages")
    return sent


def _window(size: int) -> int:
    """Messages in flight per throughput run: 256, and at most 1 MiB of them."""
    return max(1, min(PIPELINE_MESSAGES, PIPELINE_BYTES // size))


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far, in clock ticks (10 ms)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    connectors: dict[str, Connector], servers: dict[str, int], size: int, seconds: float
) -> dict[str, tuple[float, float, float]]:
    """Per client: echoed messages per second (pipelined), then client and server CPU
    us/message (``servers``: the pid of each client's server)."""
    payload, window = b"x" * size, _window(size)
    totals = {name: [0, 0.0, 0.0, 0.0] for name in connectors}  # sent, elapsed, CPU x2
    async with AsyncExitStack() as stack:
        clients = {}
        for name, connect in connectors.items():
            clients[name] = await stack.enter_async_context(connect("/echo"))
            _check_mode(name, clients[name])
        for ws in clients.values():
            await _echo_run(ws, payload, time.perf_counter() + 0.1, window)  # warm-up
        for _ in range(SLICES):
            for name, ws in clients.items():
                server = _cpu_seconds(servers[name])
                start, cpu = time.perf_counter(), time.process_time()
                sent = await _echo_run(ws, payload, start + seconds / SLICES, window)
                total = totals[name]
                total[0] += sent
                total[1] += time.perf_counter() - start
                total[2] += time.process_time() - cpu
                total[3] += _cpu_seconds(servers[name]) - server
    return {
        name: (sent / elapsed, cpu / sent * 1e6, server / sent * 1e6)
        for name, (sent, elapsed, cpu, server) in totals.items()
    }


async def run_backend(
    backend: str, urls: tuple[str, str], servers: dict[str, int], args: Any
) -> Results:
    """``urls``: the serve() server's and the websockets server's."""
    connectors = _connectors(backend, *urls)
    results: Results = {}

    def add(metric: str, client: str, value: float) -> None:
        results.setdefault(metric, {name: [] for name in CLIENTS})[client].append(value)

    for rep in range(args.reps):
        order = CLIENTS if rep % 2 == 0 else CLIENTS[::-1]
        ordered = {name: connectors[name] for name in order}
        for label, size in SIZES.items():
            figures = await throughput(ordered, servers, size, args.seconds)
            for name, (rate, cpu, server) in figures.items():
                add(f"throughput {label} (msg/s)", name, rate)
                add(f"client CPU {label} (us/msg)", name, cpu)
                add(f"server CPU {label} (us/msg)", name, server)
        for name, (p50, p99) in (await latency(ordered, "", args.count)).items():
            add("echo p50 (us)", name, p50)
            add("echo p99 (us)", name, p99)
    return results


# ---- memory ----------------------------------------------------------------------------


async def _readline(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdout is not None
    line = await anyio.to_thread.run_sync(child.stdout.readline)
    if not line:
        raise RuntimeError("memory server exited")
    result: dict[str, Any] = json.loads(line)
    return result


async def _measure(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdin is not None
    child.stdin.write("measure\n")
    child.stdin.flush()
    return await _readline(child)


async def idle_sessions(
    child: subprocess.Popen[str], port: int, kind: str, count: int
) -> dict[str, float]:
    """Server memory growth per idle connection of ``kind`` (asyncio clients)."""
    from websockets.asyncio.client import connect as raw_connect

    url = f"ws://127.0.0.1:{port}/idle"
    before = await _measure(child)
    async with AsyncExitStack() as stack:
        for _ in range(count):
            if kind == "raw":
                await stack.enter_async_context(raw_connect(url, compression=None))
            else:
                ws = await stack.enter_async_context(resilient_ws.connect(url, compression=None))
                _check_mode("replay", ws)
        await anyio.sleep(MEMORY_OPEN_TIMEOUT + 0.5)
        after = await _measure(child)
    return {
        "traced": (after["traced"] - before["traced"]) / count,
        "rss": (after["rss"] - before["rss"]) / count,
        "sessions": after["sessions"] - before["sessions"],
    }


async def buffered_message(child: subprocess.Popen[str], port: int, size: int, count: int) -> Any:
    """Server memory per message ``session.send()`` buffers while the client is away."""
    from websockets.asyncio.client import connect as raw_connect
    from websockets.typing import Subprotocol

    url = f"ws://127.0.0.1:{port}/buffer/{size}/{count}"
    ws = await raw_connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None)
    if ws.subprotocol != SUBPROTOCOL:
        raise RuntimeError("the memory server did not grant a replay session")
    ws.transport.abort()  # no close frame: the session is kept for a resume
    with suppress(Exception):
        await ws.close()
    return await _readline(child)


def memory_figures(backend: str, args: Any) -> dict[str, Any]:
    """Each measurement in a fresh server child process on ``backend``."""
    figures: dict[str, Any] = {}
    for kind in ("raw", "replay"):
        child, port = _spawn(__file__, "--serve-memory", backend)
        try:
            figures[kind] = anyio.run(idle_sessions, child, port, kind, args.sessions)
        finally:
            _stop(child)
    child, port = _spawn(__file__, "--serve-memory", backend)
    try:
        for size in BUFFERED_SIZES:
            figures[size] = anyio.run(buffered_message, child, port, size, args.buffered)
    finally:
        _stop(child)
    return figures


# ---- report ----------------------------------------------------------------------------


def print_table(backend: str, results: Results) -> list[str]:
    """Print one backend's rows (medians); return the targets missed."""
    missed = []
    for metric, runs in results.items():
        med = {name: statistics.median(values) for name, values in runs.items()}
        plain, replay = med["plain"] / med["raw"], med["replay"] / med["raw"]
        alone = med["replay"] / med["plain"]
        verdict = ""
        if metric.startswith("throughput"):
            ok = replay >= THROUGHPUT_MIN_RATIO
            verdict = f"replay >= {THROUGHPUT_MIN_RATIO} {'ok' if ok else 'MISSED'}"
            if not ok:
                missed.append(f"{backend} {metric}")
        cells = "".join(f" {med[name]:9.1f}" for name in CLIENTS)
        ratios = f"{plain:6.3f} {replay:6.3f} {alone:6.3f}"
        print(f"{backend:8} {metric:27}{cells} {ratios}  {verdict}".rstrip())
    return missed


def print_memory(backend: str, figures: dict[str, Any], args: Any) -> None:
    print(f"\nserver memory, {backend} serve() (tracemalloc after gc; RSS; fresh process each):")
    kinds = {"raw": "raw websockets client (plain)", "replay": "connect(replay=Replay())"}
    for kind, label in kinds.items():
        f = figures[kind]
        print(f"  idle session, {label:29}: {f['traced'] / 1024:5.1f} KiB traced,"
              f" {f['rss'] / 1024:5.1f} KiB RSS ({args.sessions} clients,"
              f" {f['sessions']} in the session store)")  # fmt: skip
    extra = (figures["replay"]["traced"] - figures["raw"]["traced"]) / 1024
    print(f"  replay session minus plain session: {extra:+.1f} KiB traced per idle session")
    for size in BUFFERED_SIZES:
        f = figures[size]
        per = f["traced"] / f["count"]
        print(f"  buffered {size:4} B message ({f['buffered']}/{f['count']} kept):"
              f" {per:6.1f} B = payload + {per - size:5.1f} B; bytes object"
              f" {f['payload_object']} B + {per - f['payload_object']:4.1f} B buffer")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-memory", metavar="BACKEND", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per cell (>= 3)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="per client, size and rep, split in interleaved slices")  # fmt: skip
    parser.add_argument("--count", type=int, default=3000, help="echo round trips per run")
    parser.add_argument("--sessions", type=int, default=500, help="idle sessions (memory)")
    parser.add_argument("--buffered", type=int, default=1000,
                        help="messages buffered while away (<= Replay().max_messages)")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the memory figures")
    args = parser.parse_args()
    if args.serve_echo:
        anyio.run(_serve_echo, backend="asyncio")
        return
    if args.serve_memory:
        anyio.run(_serve_memory, backend=args.serve_memory)
        return
    if args.reps < 3:
        parser.error("--reps must be at least 3")
    if args.buffered > Replay().max_messages:
        parser.error(f"--buffered must be at most {Replay().max_messages}")

    pinned = bool(SERVER_PIN and CLIENT_PIN)
    if pinned:
        os.sched_setaffinity(0, {1})  # the clients; the servers are spawned on CPU 0
    print("$", shlex.join([Path(sys.executable).name, *sys.argv]))
    where = "servers on CPU 0, clients on CPU 1" if pinned else "not pinned (one CPU)"
    print(f"pinning: {where}; default allocator (no PYTHONMALLOC)")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          " (other load skews the figures)")  # fmt: skip
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    results: dict[str, Results] = {}
    serve_child, serve_port = _spawn(__file__, "--serve-echo")
    ws_child, ws_port = _spawn(bench_client.__file__, "--serve", "0")
    try:
        for backend in backends:
            urls = (f"ws://127.0.0.1:{serve_port}", f"ws://127.0.0.1:{ws_port}")
            servers = {name: serve_child.pid for name in CLIENTS} | {"ws-srv": ws_child.pid}
            results[backend] = anyio.run(run_backend, backend, urls, servers, args, backend=backend)
    finally:
        _stop(serve_child)
        _stop(ws_child)
    memory = {} if args.no_memory else {b: memory_figures(b, args) for b in backends}

    print(
        f"\nreplay on vs off vs raw websockets, compression off; median of {args.reps} reps,"
        f" client order reversed on odd reps\n"
        f"throughput: echo, sender + receiver tasks, <= {PIPELINE_MESSAGES} messages and"
        f" {PIPELINE_BYTES >> 20} MiB in flight, {args.seconds} s per client in {SLICES}"
        f" interleaved slices\n"
        f"  CPU us/msg: client process (process_time), server process (/proc ticks, 10 ms)\n"
        f"echo latency: {args.count} x {bench_client.ECHO_SIZE} B, one in flight, after"
        f" {bench_client.WARMUP} warm-up\n"
        f"clients: ws-srv = raw websockets client vs a plain websockets echo server;\n"
        f"  raw / plain / replay = raw websockets client, connect(replay=None),"
        f" connect(replay=Replay())\n"
        f"  vs one resilient_ws.serve() echo server (replay enabled)\n"
        f"servers: child processes on asyncio; ratios: plain/raw, replay/raw (same server),"
        f" r/p = replay/plain"
    )
    header = (f"{'backend':8} {'metric':27}" + "".join(f" {name:>9}" for name in CLIENTS)
              + f" {'plain':>6} {'replay':>6} {'r/p':>6}  target")  # fmt: skip
    print(header)
    print("-" * (len(header) + 14))
    missed: list[str] = []
    for backend, backend_results in results.items():
        missed += print_table(backend, backend_results)
    for backend, figures in memory.items():
        print_memory(backend, figures, args)
    print()
    if missed:
        print(f"TARGETS NOT MET: {', '.join(missed)}")
    else:
        print(f"TARGETS MET: replay/raw throughput >= {THROUGHPUT_MIN_RATIO} on every backend")


if __name__ == "__main__":
    main()
