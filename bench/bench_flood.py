#!/usr/bin/env python3
"""Another client's echo latency while one link floods the server with pongs (issue 11).

For each server, ``resilient_ws.serve()`` and ``websockets.asyncio.server.serve()`` (both
with defaults, an echo handler, in a child process pinned to CPU 0): a bystander
(websockets' asyncio client, pinned to CPU 1) sends a 64-byte message every ``--interval``
seconds and times its echo, first for ``--seconds`` with nothing else going on, then for
``--seconds`` while a flooder (another process on CPU 1, at nice 19, so that the
bystander's latency is not its own CPU's) writes empty masked pong frames as fast as the
socket takes them; when the server closes the flooder's link (serve(): 1008 past 5,000
control frames a second), the flooder opens a new one at once and floods again. Printed:
the bystander's median and p99 echo time idle and under the flood, their ratio, and the
flooder's links (from 127.0.0.2), how many were refused, and its frames. Default glibc
allocator, nothing set.

    python bench/bench_flood.py                 # 10 s per phase, ~45 s
    python bench/bench_flood.py --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from _benchutil import free_port

HERE = os.path.abspath(__file__)
PONG = b"\x8a\x80\x00\x00\x00\x00"
BURST = PONG * 10_000


async def _server(kind: str, port: int) -> None:
    if kind == "resilient":
        import resilient_ws

        async def echo(session: Any) -> None:
            async for message in session:
                await session.send(message)

        async with resilient_ws.serve(echo, "127.0.0.1", port):
            print("ready", flush=True)
            await asyncio.Future()
    else:
        from websockets.asyncio.server import serve

        async def plain_echo(ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

        async with serve(plain_echo, "127.0.0.1", port):
            print("ready", flush=True)
            await asyncio.Future()


async def _flood(port: int, stop: asyncio.Event, tally: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            # From an address of its own (any of 127.0.0.0/8 is loopback on Linux): an
            # attacker is not the bystander.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=("127.0.0.2", 0)
            )
        except OSError:
            await asyncio.sleep(0.01)
            continue
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        tally["links"] += 1

        drainer = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                tally["refused"] += 1  # serve() turns a flooder's address away a while
                continue
            drainer = asyncio.ensure_future(_drain(reader))
            while not stop.is_set() and not drainer.done():
                writer.write(BURST)
                await writer.drain()
                tally["frames"] += len(BURST) // len(PONG)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if drainer is not None:
                drainer.cancel()
            writer.close()


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read what the server sends, so that it never blocks on us; return at its close."""
    while await reader.read(65536):
        pass


async def _bystander(port: int, seconds: float, interval: float) -> list[float]:
    from websockets.asyncio.client import connect

    times = []
    async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
        deadline = time.monotonic() + seconds
        payload = "x" * 64
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await ws.send(payload)
            await asyncio.wait_for(ws.recv(), 30)
            times.append(time.perf_counter() - start)
            await asyncio.sleep(interval)
    return times


async def _flooder(port: int, seconds: float) -> dict[str, int]:
    stop, tally = asyncio.Event(), {"links": 0, "refused": 0, "frames": 0}
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await _flood(port, stop, tally)
    return tally


async def _clients(port: int, seconds: float, interval: float) -> dict[str, Any]:
    """The bystander, in a process of its own: idle, then beside the flooder's process
    (niced, on the same CPU: the bystander's latency must not be its own CPU's)."""
    idle = await _bystander(port, seconds, interval)
    flooder = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", sys.executable, HERE, "--flood", str(port), str(seconds + 1),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    flooded = await _bystander(port, seconds, interval)
    out, _ = await flooder.communicate()
    return {"idle": idle, "flooded": flooded, **json.loads(out)}


def _summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


def _run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, HERE, "--serve", kind, str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        client = subprocess.run(
            ["taskset", "-c", "1", sys.executable, HERE, "--clients", str(port),
             str(args.seconds), str(args.interval)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return dict(json.loads(client.stdout))
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (10)")
    parser.add_argument("--interval", type=float, default=0.05, help="between echoes (0.05)")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--clients", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--flood", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_server(args.serve[0], int(args.serve[1])))
        return
    if args.flood:
        print(json.dumps(asyncio.run(_flooder(int(args.flood[0]), float(args.flood[1])))))
        return
    if args.clients:
        port, seconds, interval = args.clients
        result = asyncio.run(_clients(int(port), float(seconds), float(interval)))
        print(json.dumps(result))
        return
    print(f"$ python bench/bench_flood.py --seconds {args.seconds:g}")
    print("allocator: default glibc malloc, nothing set; server on CPU 0, clients on CPU 1")
    print(f"{'server':18} {'idle median/p99 ms':>20} {'flooded median/p99 ms':>23}"
          f" {'ratio (median)':>15} {'flood links':>12} {'refused':>8}"
          f" {'frames sent':>12}")  # fmt: skip
    for kind, label in (("resilient", "serve()"), ("websockets", "websockets.serve")):
        result = _run(kind, args)
        idle, flooded = _summary(result["idle"]), _summary(result["flooded"])
        print(
            f"{label:18} {idle[0]:9.2f} / {idle[1]:8.2f} {flooded[0]:11.2f} / {flooded[1]:9.2f}"
            f" {flooded[0] / idle[0]:15.2f} {result['links']:12,} {result['refused']:8,}"
            f" {result['frames']:12,}"
        )
    print("target (issue 11): the bystander's echo within 2x of idle during the flood")


if __name__ == "__main__":
    main()
