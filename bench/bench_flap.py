#!/usr/bin/env python3
"""A flapping link on default settings: what each client loses (issue 9).

A ``resilient_ws.serve()`` server (defaults) in a child process streams numbered messages at
``--rate`` a second to each client and records the numbers each client streams back at the
same rate. Between them a TCP forwarder process (``tests/proxy_process.py``) is SIGKILLed and
started again every 0.5-2 s (uniformly random) for ``--seconds``: every link is cut the way a
crashed middlebox cuts it. Compared in one run, one after the other, each with a server of
its own:

- ``resilient``: ``resilient_ws.connect()`` on defaults (replay negotiated with ``serve()``).
- ``raw``: the raw websockets client's reconnect loop (``async for ws in connect(url)``, its
  defaults), sending the same numbers; to ``serve()`` it is a plain client, so every link
  is a session of its own.

Printed per client and direction: messages sent, received, lost, duplicated and out of
order, and the number of kills. Target (resilient_ws): zero lost, duplicated or reordered.
The server and proxy run pinned to CPU 0, the client on CPU 1 (``taskset``); default
allocator.

    python bench/bench_flap.py                  # 60 s per client
    python bench/bench_flap.py --seconds 120 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _benchutil import free_port, pin

import resilient_ws

PROXY = Path(__file__).resolve().parent.parent / "tests" / "proxy_process.py"

# The server: streams 1, 2, 3... (one counter for the whole process) and records what it
# receives; "report" on stdin prints both as JSON.
SERVER = r"""
import json, sys, anyio, resilient_ws

RATE = int(sys.argv[2])
sent = 0
received = []
streaming = True

async def stream(session):
    global sent
    start = anyio.current_time()
    while streaming:
        due = int((anyio.current_time() - start) * RATE)
        while sent < due and streaming:
            await session.send(str(sent + 1))
            sent += 1
        await anyio.sleep(0.01)

async def handler(session):
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stream, session)
        async for message in session:
            received.append(int(message))
        tasks.cancel_scope.cancel()

async def main():
    global streaming
    async with resilient_ws.serve(handler, "127.0.0.1", int(sys.argv[1])):
        print("ready", flush=True)
        while command := (await anyio.to_thread.run_sync(sys.stdin.readline)).strip():
            if command == "stop":
                streaming = False
            print(json.dumps({"sent": sent, "received": received}), flush=True)

anyio.run(main)
"""


def spawn(*argv: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*pin(0), sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"{argv[0]} did not start")
    return process


async def ask(server: subprocess.Popen[str], command: str) -> dict[str, Any]:
    """Send the server a command; its answer: what it sent and received so far."""
    assert server.stdin is not None
    assert server.stdout is not None
    server.stdin.write(command + "\n")
    server.stdin.flush()
    answer: dict[str, Any] = json.loads(await asyncio.to_thread(server.stdout.readline))
    return answer


def kill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def tally(sent: int, received: list[int]) -> dict[str, int]:
    seen: set[int] = set()
    duplicated = reordered = 0
    highest = 0
    for number in received:
        if number in seen:
            duplicated += 1
            continue
        seen.add(number)
        if number < highest:
            reordered += 1
        highest = max(highest, number)
    lost = sorted(set(range(1, sent + 1)) - seen)
    return {
        "sent": sent,
        "received": len(received),
        "lost": len(lost),
        "first_lost": lost[:5],
        "duplicated": duplicated,
        "reordered": reordered,
    }


class Client:
    """Streams numbers at ``rate`` through whatever ``send`` is current; records receipts."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.sent = 0
        self.received: list[int] = []
        self.send: Any = None
        self.done = asyncio.Event()  # the benchmark has read both sides' counts

    async def stream(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due and self.send is not None:
                try:
                    await self.send(str(self.sent + 1))
                except Exception:
                    self.send = None
                    break
                self.sent += 1
            await asyncio.sleep(0.01)


async def run_resilient(url: str, client: Client, stop: asyncio.Event) -> None:
    async with resilient_ws.connect(url) as ws:
        client.send = ws.send

        async def receive() -> None:
            async for message in ws:
                client.received.append(int(message))

        receiving = asyncio.ensure_future(receive())
        await client.stream(stop)
        await client.done.wait()
        receiving.cancel()


async def run_raw(url: str, client: Client, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    async def links() -> None:
        async for ws in connect(url, compression=None):
            client.send = ws.send
            with contextlib.suppress(Exception):
                async for message in ws:
                    client.received.append(int(message))

    task = asyncio.ensure_future(links())
    await client.stream(stop)
    await client.done.wait()
    task.cancel()


async def scenario(name: str, seconds: float, rate: int, rng: random.Random) -> dict[str, Any]:
    server_port, proxy_port = free_port(), free_port()
    server = spawn("-c", SERVER, str(server_port), str(rate))
    proxy = spawn(str(PROXY), str(proxy_port), str(server_port))
    client = Client(rate)
    stop = asyncio.Event()
    run = run_resilient if name == "resilient" else run_raw
    task = asyncio.ensure_future(run(f"ws://127.0.0.1:{proxy_port}/", client, stop))
    kills = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await asyncio.to_thread(kill, proxy)
            kills += 1
            proxy = await asyncio.to_thread(spawn, str(PROXY), str(proxy_port), str(server_port))
        stop.set()  # the client stops streaming, then the server
        await asyncio.sleep(0.1)
        report = await ask(server, "stop")
        # Each side waits (bounded) for the other's last messages, which may still be
        # resent on a new link.
        deadline = time.monotonic() + (30.0 if name == "resilient" else 5.0)
        while time.monotonic() < deadline and (
            len(client.received) < report["sent"] or len(report["received"]) < client.sent
        ):
            await asyncio.sleep(0.5)
            report = await ask(server, "report")
        client.done.set()
        await asyncio.wait_for(task, 60)
    finally:
        kill(proxy)
        kill(server)
    return {
        "kills": kills,
        "to_server": tally(client.sent, report["received"]),
        "to_client": tally(report["sent"], client.received),
    }


def show(results: dict[str, Any]) -> None:
    print(f"{'client':10} {'direction':10} {'sent':>7} {'received':>8} {'lost':>7} "
          f"{'dup':>6} {'reordered':>9}  kills")  # fmt: skip
    for name, result in results.items():
        for direction in ("to_server", "to_client"):
            row = result[direction]
            print(f"{name:10} {direction:10} {row['sent']:7d} {row['received']:8d} "
                  f"{row['lost']:7d} {row['duplicated']:6d} {row['reordered']:9d}  "
                  f"{result['kills']}")  # fmt: skip
    ours = results["resilient"]
    clean = all(
        ours[d]["lost"] == ours[d]["duplicated"] == ours[d]["reordered"] == 0
        for d in ("to_server", "to_client")
    )
    print("TARGET MET (resilient_ws: 0 lost, 0 duplicated, 0 reordered)" if clean else "MISSED")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    return {
        name: await scenario(name, args.seconds, args.rate, rng) for name in ("resilient", "raw")
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and 1 in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {1})
    outcome = asyncio.run(main(arguments))
    print(json.dumps(outcome)) if arguments.json else show(outcome)
