"""A plain websockets server that stalls on command: ``python stall_server.py PORT``.

Prints ``ready`` on stdout once it listens. Each connection echoes what it receives, except
for these text commands:

- ``stall-gil SECONDS``: answers ``stalling SECONDS``, then runs a C call that keeps the GIL
  for that long in ``asyncio.to_thread``. Moving blocking work to a thread is the usual
  advice, and it does not help here: the event loop cannot run until the call returns.
  Answers ``stalled SECONDS`` afterwards.
- ``stream COUNT [RATE]``: answers ``streaming COUNT``, then sends the messages ``"0"`` to
  ``str(COUNT - 1)`` in the background, ``RATE`` per second (as fast as it can without one),
  while echoing goes on.

The server's own keepalive is off: what the tests watch is the client's verdict, and a
plain websockets server's fixed ping timeout would close links for reasons of its own after
a long stall (the server helper's stall-aware keepalive is tested on its own).
"""

from __future__ import annotations

import asyncio
import ctypes
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# Background streams, kept referenced until they finish (asyncio holds tasks weakly).
_streams: set[asyncio.Task[None]] = set()


def hold_gil(seconds: float) -> None:
    """Sleep in libc's ``sleep()``: ``PyDLL`` calls do not release the GIL."""
    ctypes.PyDLL(None).sleep(int(seconds))


async def stream(ws: ServerConnection, count: int, rate: float) -> None:
    interval = 1 / rate if rate > 0 else 0.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i in range(count):
            await ws.send(str(i))
            if interval:
                # Paced against the start, so a slow send does not lower the rate.
                await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()))
    except ConnectionClosed:
        pass


async def handler(ws: ServerConnection) -> None:
    async for message in ws:
        words = message.split() if isinstance(message, str) else []
        if len(words) == 2 and words[0] == "stall-gil":
            await ws.send(f"stalling {words[1]}")
            await asyncio.to_thread(hold_gil, float(words[1]))
            await ws.send(f"stalled {words[1]}")
        elif len(words) in (2, 3) and words[0] == "stream":
            count = int(words[1])
            rate = float(words[2]) if len(words) == 3 else 0.0
            await ws.send(f"streaming {count}")
            task = asyncio.create_task(stream(ws, count, rate))
            _streams.add(task)
            task.add_done_callback(_streams.discard)
        else:
            await ws.send(message)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
