#!/usr/bin/env python3
"""Reconnect behaviour on default settings: storms and restarts (issue 9).

Compares, in one run, ``resilient_ws.connect()`` on defaults with the raw websockets client's
own reconnect loop (``async for ws in websockets.asyncio.client.connect(url)``, its defaults):

1. **Accept-then-close**: a server that completes every handshake and closes at once. Counts
   the connections each client makes in ``--window`` seconds (target for resilient_ws: <= 20
   in 5 s).
2. **Restarts**: a plain websockets server in a child process, killed (SIGKILL) and started
   again ``--restarts`` times: down ``--down`` seconds, then up until the client has been
   connected for ``--up`` seconds. Measures the time from the server listening again (it
   prints ``ready``) to the client's new link being open; median and max (target: median
   <= 0.3 s).

The servers run in child processes pinned to CPU 0, the clients in this process on CPU 1
(``taskset``/``sched_setaffinity`` where available). Default allocator (no ``PYTHONMALLOC``).

    python bench/bench_reconnect.py
    python bench/bench_reconnect.py --restarts 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from _benchutil import free_port, pin

import resilient_ws

SERVER = r"""
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def hang_up(ws):
    return

async def main(port, mode):
    handler = hang_up if mode == "close" else echo
    async with serve(handler, "127.0.0.1", port, compression=None) as server:
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


class Server:
    """A websockets server in a child process; ``ready_at`` is when it last said it listens."""

    def __init__(self, port: int, mode: str) -> None:
        self.port = port
        self.mode = mode
        self.process: subprocess.Popen[str] | None = None
        self.ready_at = 0.0

    def start(self) -> None:
        argv = [*pin(0), sys.executable, "-c", SERVER, str(self.port), self.mode]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        line = process.stdout.readline()
        self.ready_at = time.monotonic()
        if line.strip() != "ready":
            process.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.process = process

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


# ---- 1. accept-then-close ------------------------------------------------------------------


async def storm_resilient(url: str, window: float) -> int:
    links = 0

    async def count(ws: resilient_ws.Connection) -> None:
        nonlocal links
        async for event in ws.events():
            if isinstance(event, resilient_ws.Connected):
                links += 1

    async with resilient_ws.connect(url) as ws:
        watcher = asyncio.ensure_future(count(ws))
        await asyncio.sleep(window)
        watcher.cancel()
    return links


async def storm_raw(url: str, window: float) -> int:
    from websockets.asyncio.client import connect

    links = 0

    async def loop() -> None:
        nonlocal links
        async for ws in connect(url, compression=None):
            links += 1
            with contextlib.suppress(Exception):  # keep counting
                await ws.wait_closed()

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(window)
    task.cancel()
    return links


# ---- 2. restarts ---------------------------------------------------------------------------


async def restarts_resilient(server: Server, restarts: int, down: float, up: float) -> list[float]:
    url = f"ws://127.0.0.1:{server.port}/"
    delays: list[float] = []
    async with resilient_ws.connect(url) as ws:
        events = ws.events()
        async for event in events:  # the first link's, already in the history
            if isinstance(event, resilient_ws.Connected):
                break
        for _ in range(restarts):
            await asyncio.sleep(up)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(down)
            await asyncio.to_thread(server.start)
            async for event in events:  # bounded by the wait_for below
                if isinstance(event, resilient_ws.Connected):
                    delays.append(time.monotonic() - server.ready_at)
                    break
    return delays


async def restarts_raw(server: Server, restarts: int, down: float, up: float) -> list[float]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{server.port}/"
    delays: list[float] = []
    opened = asyncio.Queue[float]()

    async def loop() -> None:
        async for ws in connect(url, compression=None):
            opened.put_nowait(time.monotonic())
            with contextlib.suppress(Exception):
                await ws.wait_closed()

    task = asyncio.ensure_future(loop())
    await opened.get()
    for _ in range(restarts):
        await asyncio.sleep(up)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)
        at = await asyncio.wait_for(opened.get(), 120)
        delays.append(at - server.ready_at)
    task.cancel()
    return delays


def summary(delays: list[float]) -> dict[str, float]:
    return {"median": statistics.median(delays), "max": max(delays), "runs": len(delays)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "storm" in args.scenarios:
        server = Server(free_port(), "close")
        await asyncio.to_thread(server.start)
        url = f"ws://127.0.0.1:{server.port}/"
        try:
            results["storm"] = {
                "resilient": await storm_resilient(url, args.window),
                "raw": await storm_raw(url, args.window),
                "window": args.window,
            }
        finally:
            server.kill()
    if "restart" in args.scenarios:
        results["restart"] = {}
        for name, run in (("resilient", restarts_resilient), ("raw", restarts_raw)):
            server = Server(free_port(), "echo")
            await asyncio.to_thread(server.start)
            try:
                delays = await asyncio.wait_for(run(server, args.restarts, args.down, args.up), 600)
            finally:
                server.kill()
            results["restart"][name] = {"delays": delays, **summary(delays)}
    return results


def report(results: dict[str, Any]) -> None:
    storm = results.get("storm")
    if storm is not None:
        print(f"accept-then-close, connections in {storm['window']:.0f} s:")
        print(
            f"  resilient_ws {storm['resilient']:6d}   target <= 20  "
            f"{'ok' if storm['resilient'] <= 20 else 'MISSED'}"
        )
        print(
            f"  raw          {storm['raw']:6d}   ratio resilient/raw "
            f"{storm['resilient'] / max(1, storm['raw']):.4f}"
        )
    restart = results.get("restart")
    if restart is not None:
        ours, raw = restart["resilient"], restart["raw"]
        print(f"server restarted {ours['runs']} times, reconnected after it listens (s):")
        print(
            f"  resilient_ws median {ours['median']:.3f} max {ours['max']:.3f}   "
            f"target median <= 0.3  {'ok' if ours['median'] <= 0.3 else 'MISSED'}"
        )
        print(
            f"  raw          median {raw['median']:.3f} max {raw['max']:.3f}   "
            f"ratio of medians {ours['median'] / raw['median']:.3f}"
        )
        print("  resilient_ws each: " + " ".join(f"{d:.3f}" for d in ours["delays"]))
        print("  raw each:          " + " ".join(f"{d:.3f}" for d in raw["delays"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="storm,restart")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--down", type=float, default=1.0)
    parser.add_argument("--up", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and 1 in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {1})
    outcome = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(outcome))
    else:
        report(outcome)
