#!/usr/bin/env python3
"""Memory of serve() holding replay sessions whose clients are away (issue 11).

Each case runs in a child process pinned to CPU 0 (default glibc allocator, nothing set):
``resilient_ws.serve()`` with an in-process raw client that opens ``--sessions`` replay
sessions (a hand-written handshake from 127.0.0.1) and drops each link at once; each
session's handler then sends ``--messages`` messages of ``--size`` bytes (distinct
objects) to its away client. Printed per case: the RSS the sessions added, per session,
and what ``Server.replay_budget`` charged. The cases, in one run:

- ``empty``: away sessions that were sent nothing;
- ``uncapped``: full buffers with ``serve(replay_memory=None)`` (each session bounded by
  its own 4 MiB only, as before the budget);
- ``default``: the same with serve()'s defaults (a 1 GiB budget for all sessions).

The ratio printed is ``default`` over ``uncapped``: what the budget saves. With the
defaults, 300 sessions of 4 x 1 MiB ask for 1.2 GiB, past the budget.

    python bench/bench_away_memory.py                  # ~15 s, 1.3 GiB of RAM
    python bench/bench_away_memory.py --sessions 500
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from typing import Any

from _benchutil import pin

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "tests"))


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _measure(sessions: int, messages: int, size: int, budget: str) -> str:
    import anyio
    from _helpers import raw_handshake

    import resilient_ws

    done = 0

    async def handler(session: Any) -> None:
        nonlocal done
        while session.connected:  # noqa: ASYNC110 - until the server saw the link end
            await anyio.sleep(0.05)
        for index in range(messages):
            await session.send(bytes([index % 256]) * size)
        done += 1
        await anyio.sleep_forever()

    options: dict[str, Any] = {} if budget == "default" else {"replay_memory": None}

    async def open_and_drop(count: int) -> None:
        for _ in range(count):
            status, _, stream = await raw_handshake(server.port)
            await stream.aclose()
            if status != 101:
                raise SystemExit(f"handshake answered {status}")

    async with resilient_ws.serve(
        handler, "127.0.0.1", 0, stall_threshold=None, **options
    ) as server:
        await open_and_drop(20)  # warm up: first-use allocations out of the figure
        with anyio.fail_after(120):
            while done < 20:  # noqa: ASYNC110 - a counter
                await anyio.sleep(0.05)
        gc.collect()
        before = _rss()
        await open_and_drop(sessions)
        with anyio.fail_after(120):
            while done < 20 + sessions:  # noqa: ASYNC110 - a counter
                await anyio.sleep(0.05)
        gc.collect()
        added = _rss() - before
        charged = (
            "-" if server.replay_budget is None else f"{server.replay_budget.used / 2**20:.1f}"
        )
        return f"{added / 2**20:.1f} {added / sessions / 1024:.1f} {charged}"


def _child(args: argparse.Namespace) -> None:
    import anyio

    print(anyio.run(_measure, args.sessions, args.messages, args.size, args.budget))


def _run(sessions: int, messages: int, size: int, budget: str) -> list[str]:
    command = [*pin(0), sys.executable, HERE, "--child", "--sessions", str(sessions),
               "--messages", str(messages), "--size", str(size), "--budget", budget]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return output.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--messages", type=int, default=4)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--budget", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    print(f"{args.sessions} away replay sessions on serve(), pinned to CPU 0, glibc malloc")
    print(f"{'case':<10} {'sent each':>16} {'RSS added MiB':>14} {'KiB/session':>12} "
          f"{'budget MiB':>11}")  # fmt: skip
    rows = {}
    for case, messages, budget in (("empty", 0, "default"),
                                   ("uncapped", args.messages, "none"),
                                   ("default", args.messages, "default")):  # fmt: skip
        sent = f"{messages} x {args.size} B" if messages else "nothing"
        rows[case] = added, per, charged = _run(args.sessions, messages, args.size, budget)
        print(f"{case:<10} {sent:>16} {added:>14} {per:>12} {charged:>11}")
    ratio = float(rows["default"][0]) / float(rows["uncapped"][0])
    print(f"default / uncapped RSS added: {ratio:.2f}")


if __name__ == "__main__":
    main()
