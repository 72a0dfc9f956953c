"""serve() in a subprocess under real faults: a GIL-holding stall and SIGSTOP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _servers import free_port

import resilient_ws
from resilient_ws import Disconnected, PeerRecovered, PeerStalled

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGSTOP and libc sleep"),
]

SERVER = Path(__file__).with_name("serve_server.py")
TIMEOUT = 30


class ServeProcess:
    """serve_server.py in a subprocess; collects its JSON log lines."""

    def __init__(self, backend: str) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.logs: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), str(self.port), backend],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(15):
            self.kill()
            raise RuntimeError("serve_server.py did not start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "ready":
                self._ready.set()
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.logs.append(entry)
                self._changed.notify_all()

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((e for e in self.logs if predicate(e)), None), timeout
            )
        if found is None:
            raise AssertionError(f"no such log line within {timeout} s: {self.logs}")
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def server(anyio_backend: str) -> Iterator[ServeProcess]:
    process = ServeProcess(anyio_backend)
    try:
        yield process
    finally:
        process.kill()


async def collect(ws: resilient_ws.Connection, into: list[resilient_ws.Event]) -> None:
    async for event in ws.events():
        into.append(event)


async def test_gil_stall_is_survived_and_its_culprit_named(server: ServeProcess) -> None:
    events: list[resilient_ws.Event] = []
    async with resilient_ws.connect(server.url) as ws, anyio.create_task_group() as tg:
        tg.start_soon(collect, ws, events)
        await ws.send("stall-gil 4")
        with anyio.fail_after(TIMEOUT):
            assert await ws.recv() == "stalled 4"
        await ws.send("after")
        assert await ws.recv() == "after"
        # The server's beacons report the stall it went through.
        with anyio.fail_after(TIMEOUT):
            while not ws.stats.peer_stall:  # noqa: ASYNC110 - no event marks a beacon
                await anyio.sleep(0.05)
        assert 3.0 <= ws.stats.peer_stall < 10
        stall = await anyio.to_thread.run_sync(
            server.wait_for_log, lambda e: e["event"] == "resilient_ws.loop_stalled", TIMEOUT
        )
        assert ws.stats.links == 1
        await ws.close()
    assert not [e for e in events if isinstance(e, Disconnected)]
    assert [e.evidence for e in events if isinstance(e, PeerStalled)] == ["tcp_acked"]
    recovered = [e for e in events if isinstance(e, PeerRecovered)]
    assert len(recovered) == 1
    assert 1.0 < recovered[0].stalled_for < 4.5
    assert "hold_gil" in stall["culprit"]
    assert stall["duration"] >= 3.0
    assert any(t["loop"] for t in stall["threads"])


async def test_frozen_server_keeps_its_clients(server: ServeProcess) -> None:
    """SIGSTOP for longer than the server's own probe timeouts: after SIGCONT neither side
    drops the link; the server blames its own frozen loop, not the client."""
    events: list[resilient_ws.Event] = []
    async with resilient_ws.connect(server.url) as ws, anyio.create_task_group() as tg:
        tg.start_soon(collect, ws, events)
        await anyio.sleep(1.5)  # let both sides exchange probes on the idle link
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(TIMEOUT):
                while not any(isinstance(e, PeerStalled) for e in events):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await anyio.sleep(3.0)  # the freeze goes on
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        with anyio.fail_after(TIMEOUT):
            while not any(isinstance(e, PeerRecovered) for e in events):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await anyio.sleep(3.0)  # time for a wrongful close by the server to show
        await ws.send("still here")
        assert await ws.recv() == "still here"
        assert ws.stats.links == 1
        await ws.close()
    assert not [e for e in events if isinstance(e, Disconnected)]
    assert not [e for e in server.logs if e["event"] == "resilient_ws.link_abandoned"]
