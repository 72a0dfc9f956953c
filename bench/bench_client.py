"""Benchmark the resilient_ws client against the raw websockets client, same local server.

    python bench/bench_client.py [--seconds 2.0] [--reps 5] [--stat median|best]
                                 [--backend asyncio|trio] [--json]

The server (``--serve PORT``, PORT 0 = any free port) runs in a child process: an asyncio
websockets server on 127.0.0.1 with compression off. ``/sink`` counts messages and answers a
``"sync"`` text message with the count since the previous sync; ``/echo`` echoes.

Throughput: each client sends for ``--seconds`` in all, in 8 slices interleaved with the
other client's (a shared VM has slow phases seconds long; interleaving spreads them over
both); each slice ends with "sync" and waits for the count, so the rate (messages / elapsed,
the acks included) counts only messages the server received.
Latency: sequential 64 B send/recv pairs after a warm-up, in interleaved slices too.
Each cell is run ``--reps`` times, alternating which client goes first, and summarized by
the median (or the best) run.
``--backend trio`` also compares both clients on trio (raw: ``websockets.trio``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Protocol

import anyio

import resilient_ws

SYNC = "sync"
SIZES = {"64 B": 64, "16 KiB": 16 * 1024}
ECHO_SIZE = 64
WARMUP = 500
# Interleaved slices per throughput run (see throughput()).
SLICES = 8
THROUGHPUT_MIN_RATIO = 0.9
P50_MAX_RATIO = 1.1


class Client(Protocol):
    async def send(self, message: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...


Connector = Callable[[str], AbstractAsyncContextManager[Any]]


# ---- server (child process) -----------------------------------------------------------


async def _handler(ws: Any) -> None:
    if ws.request.path == "/echo":
        async for message in ws:
            await ws.send(message)
        return
    count = 0
    async for message in ws:
        if message == SYNC:
            await ws.send(str(count))
            count = 0
        else:
            count += 1


async def _serve(port: int) -> None:
    from websockets.asyncio.server import serve

    async with serve(_handler, "127.0.0.1", port, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


# ---- measurements ---------------------------------------------------------------------


def _raw_connector(backend: str) -> Connector:
    if backend == "trio":
        from websockets.trio.client import connect as trio_connect

        return lambda url: trio_connect(url, compression=None)
    from websockets.asyncio.client import connect

    return lambda url: connect(url, compression=None)


def _resilient_connector(url: str) -> AbstractAsyncContextManager[Any]:
    return resilient_ws.connect(url, compression=None)


async def _send_then_sync(ws: Client, payload: bytes, deadline: float) -> int:
    """Send ``payload`` until ``deadline`` (at least once), then sync; return the count."""
    sent = 0
    while True:
        await ws.send(payload)
        sent += 1
        if time.perf_counter() >= deadline:
            break
    await ws.send(SYNC)
    acked = int(await ws.recv())
    if acked != sent:
        raise RuntimeError(f"server received {acked} messages, client sent {sent}")
    return sent


async def throughput(
    connectors: dict[str, Connector], url: str, size: int, seconds: float
) -> dict[str, tuple[float, float]]:
    """Per client: messages per second to the server, delivery confirmed; CPU us/message.

    Each client sends for ``seconds`` in all, in SLICES slices interleaved with the other
    client's, so that this machine's slow phases (seconds long on a shared VM) hit both.
    """
    payload = b"x" * size
    totals = {name: [0, 0.0, 0.0] for name in connectors}  # sent, elapsed, cpu
    async with AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(connect(f"{url}/sink"))
            for name, connect in connectors.items()
        }
        for ws in clients.values():
            await _send_then_sync(ws, payload, time.perf_counter() + 0.1)  # warm-up
        for _ in range(SLICES):
            for name, ws in clients.items():
                start, cpu = time.perf_counter(), time.process_time()
                sent = await _send_then_sync(ws, payload, start + seconds / SLICES)
                total = totals[name]
                total[0] += sent
                total[1] += time.perf_counter() - start
                total[2] += time.process_time() - cpu
    return {
        name: (sent / elapsed, cpu / sent * 1e6) for name, (sent, elapsed, cpu) in totals.items()
    }


async def latency(
    connectors: dict[str, Connector], url: str, count: int
) -> dict[str, tuple[float, float]]:
    """Per client: p50 and p99 echo round-trip time in microseconds (slices interleaved)."""
    payload = b"x" * ECHO_SIZE
    samples: dict[str, list[int]] = {name: [] for name in connectors}
    async with AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(connect(f"{url}/echo"))
            for name, connect in connectors.items()
        }
        for ws in clients.values():
            for _ in range(WARMUP):
                await ws.send(payload)
                await ws.recv()
        for _ in range(SLICES):
            for name, ws in clients.items():
                for _ in range(count // SLICES):
                    start = time.perf_counter_ns()
                    await ws.send(payload)
                    await ws.recv()
                    samples[name].append(time.perf_counter_ns() - start)
    result = {}
    for name, values in samples.items():
        cuts = statistics.quantiles(values, n=100)
        result[name] = (cuts[49] / 1000, cuts[98] / 1000)
    return result


Results = dict[str, dict[str, list[float]]]  # metric -> client -> one figure per rep


async def run_backend(backend: str, url: str, args: argparse.Namespace) -> Results:
    clients = {"raw": _raw_connector(backend), "resilient": _resilient_connector}
    results: Results = {}

    def add(metric: str, client: str, value: float) -> None:
        results.setdefault(metric, {"raw": [], "resilient": []})[client].append(value)

    for rep in range(args.reps):
        order = ["raw", "resilient"] if rep % 2 == 0 else ["resilient", "raw"]
        for label, size in SIZES.items():
            ordered = {name: clients[name] for name in order}
            for name, (rate, cpu) in (await throughput(ordered, url, size, args.seconds)).items():
                add(f"throughput {label} (msg/s)", name, rate)
                add(f"client CPU {label} (us/msg)", name, cpu)
        ordered = {name: clients[name] for name in order}
        for name, (p50, p99) in (await latency(ordered, url, args.count)).items():
            add("echo p50 (us)", name, p50)
            add("echo p99 (us)", name, p99)
    return results


# ---- report ---------------------------------------------------------------------------


def summarize(backend: str, results: Results, stat: str) -> list[dict[str, Any]]:
    rows = []
    for metric, runs in results.items():
        higher_is_better = metric.startswith("throughput")
        best = max if higher_is_better else min
        pick = statistics.median if stat == "median" else best
        raw, res = pick(runs["raw"]), pick(runs["resilient"])
        ratio = res / raw
        target: str | None = None
        ok: bool | None = None
        if higher_is_better:
            target, ok = f">= {THROUGHPUT_MIN_RATIO}", ratio >= THROUGHPUT_MIN_RATIO
        elif "p50" in metric:
            target, ok = f"<= {P50_MAX_RATIO}", ratio <= P50_MAX_RATIO
        rows.append(
            {"backend": backend, "metric": metric, "raw": raw, "resilient": res,
             "ratio": ratio, "target": target, "ok": ok, "runs": runs}
        )  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"resilient_ws vs raw websockets, compression off, server in a child process\n"
        f"{args.stat} of {args.reps} reps per cell, order alternated (raw first on even reps,"
        f" resilient first on odd); throughput: {args.seconds} s per client in {SLICES}"
        f" interleaved slices, acks included;"
        f" echo {args.count} x {ECHO_SIZE} B after {WARMUP} warm-up\n"
        f"load average before the run: {args.load:.2f} (other load skews the figures)"
    )
    header = f"{'backend':8} {'metric':26} {'raw':>10} {'resilient':>10} {'ratio':>6}  target"
    print(header)
    print("-" * len(header) + "-----")
    for r in rows:
        verdict = "" if r["ok"] is None else f"{r['target']} {'ok' if r['ok'] else 'MISSED'}"
        print(
            f"{r['backend']:8} {r['metric']:26} {r['raw']:10.1f} {r['resilient']:10.1f}"
            f" {r['ratio']:6.3f}  {verdict}".rstrip()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run")
    parser.add_argument("--count", type=int, default=5000, help="echo round trips per run")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per cell (>= 3)")
    parser.add_argument("--stat", choices=["median", "best"], default="median")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                        help="trio: also compare both clients on trio")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if args.reps < 3:
        parser.error("--reps must be at least 3")
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return

    args.load = os.getloadavg()[0]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}"
        backends = ["asyncio"] if args.backend == "asyncio" else ["asyncio", "trio"]
        rows: list[dict[str, Any]] = []
        for backend in backends:
            results = anyio.run(run_backend, backend, url, args, backend=backend)
            rows += summarize(backend, results, args.stat)
    finally:
        server.kill()
        server.wait()

    missed = [f"{r['backend']} {r['metric']}" for r in rows if r["ok"] is False]
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("serve", "json")}
        report = {"config": config, "results": rows, "targets_met": not missed}
        print(json.dumps(report, indent=2))
        return
    print_table(rows, args)
    if missed:
        print(f"TARGETS NOT MET: {', '.join(missed)}")
    else:
        print("TARGETS MET: throughput ratio >= 0.9 and p50 ratio <= 1.1 on every backend")


if __name__ == "__main__":
    main()
