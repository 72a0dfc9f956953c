"""A bare TCP forwarder as a process of its own: ``python proxy_process.py PORT TARGET``.

Forwards ``127.0.0.1:PORT`` to ``127.0.0.1:TARGET`` and prints ``ready`` once it listens.
The chaos tests SIGKILL it to cut every link at once the way a crashed middlebox does (the
kernel closes its sockets: a FIN, or an RST where unread data remains), then start a new
one on the same port. It imports nothing but asyncio, so a restart is quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

_CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def forward(
    target: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_w.close()
        return
    pipes = [
        asyncio.create_task(pipe(client_r, server_w)),
        asyncio.create_task(pipe(server_r, client_w)),
    ]
    try:
        # EOF on both sides ends both directions; a reset on either side ends them too.
        await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for writer in (client_w, server_w):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def main(port: int, target: int) -> None:
    server = await asyncio.start_server(
        lambda r, w: forward(target, r, w), "127.0.0.1", port, reuse_address=True
    )
    async with server:
        print("ready", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
