"""Quickstart: connect, send one message, print its echo and the connection's lifecycle.

Run an echo server first (the one the demo uses will do), then this file::

    python -m resilient_ws.tools _demo-server 8765 &
    python examples/quickstart.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys

import anyio

import resilient_ws


async def main(url: str) -> None:
    # Give up after 5 failed attempts instead of retrying forever, for a quick answer.
    async with resilient_ws.connect(url, backoff=resilient_ws.Backoff(max_attempts=5)) as ws:
        await ws.send("hello, resilient world")
        print("echo:", await ws.recv())
    async for event in ws.events():  # the lifecycle so far, up to the Closed event
        print("event:", event)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/")
