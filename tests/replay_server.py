"""A resilient_ws.serve() replay server to kill and restart: ``replay_server.py PORT BACKEND``.

Prints ``ready`` on stdout once it listens, then one JSON line per fact the test checks:
``{"event": "session", "session": ID}`` when a handler starts, and
``{"event": "received", "session": ID, "message": M}`` for every message it receives. On
``send N`` it sends the session's next N numbered messages, ``"<session id>:<n>"``, n from 1
per session. The library's own log events go to stderr as JSON lines (for failure reports).
"""

from __future__ import annotations

import json
import sys

import anyio

import resilient_ws


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def handler(session: resilient_ws.ServerSession) -> None:
    report(event="session", session=session.id)
    sent = 0
    async for message in session:
        report(event="received", session=session.id, message=message)
        if isinstance(message, str) and message.startswith("send "):
            for _ in range(int(message.split()[1])):
                sent += 1
                await session.send(f"{session.id}:{sent}")


async def main(port: int) -> None:
    async with resilient_ws.serve(handler, "127.0.0.1", port, stall_threshold=None):
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    resilient_ws.configure_json_logging(sys.stderr)
    anyio.run(main, int(sys.argv[1]), backend=sys.argv[2])
