"""A resilient_ws.serve() server for fault tests: ``python serve_server.py PORT BACKEND [OPTION]``.

Echoes; on "stall-gil N" it holds the GIL for N seconds in a worker thread (a C call through
ctypes.PyDLL keeps the GIL), the mistake the StallWatchdog must name. Logs JSON lines to
stdout and prints ``ready`` once it listens.

Options: ``threshold=SECONDS`` sets ``stall_threshold`` (0.5 by default).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import anyio

import resilient_ws


def hold_gil(seconds: int) -> None:
    ctypes.PyDLL(None).sleep(seconds)


async def handler(ws: Any) -> None:
    async for message in ws:
        if isinstance(message, str) and message.startswith("stall-gil "):
            seconds = int(message.split()[1])
            await anyio.to_thread.run_sync(hold_gil, seconds)
            await ws.send(f"stalled {seconds}")
        else:
            await ws.send(message)


async def main(port: int) -> None:
    options = sys.argv[3:]
    threshold: float | None = 0.5
    for option in options:
        if option.startswith("threshold="):
            threshold = float(option.removeprefix("threshold="))
    async with resilient_ws.serve(handler, "127.0.0.1", port, stall_threshold=threshold):
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    resilient_ws.configure_json_logging(sys.stdout)
    anyio.run(main, int(sys.argv[1]), backend=sys.argv[2])
