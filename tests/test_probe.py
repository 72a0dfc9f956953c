"""``resilient-ws probe``: against serve(), against a plain server, through a dropped link."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anyio
import pytest
from _servers import ThreadServer, free_port

import resilient_ws
from resilient_ws.testing import FaultProxy
from resilient_ws.tools import probe
from resilient_ws.tools.cli import main

pytestmark = pytest.mark.anyio


async def ignore(session: Any) -> None:
    async for _ in session:
        pass


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_probe_reports_rtt_tcp_state_and_server_lag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = resilient_ws.serve(ignore, "127.0.0.1", 0, beacon_interval=0.02, stall_threshold=None)
    async with server:
        url = f"ws://127.0.0.1:{server.port}/"
        assert await probe._probe(url, 3, 0.2, True) == 0
    samples = [r for r in records(capsys.readouterr().out) if r["event"] == "sample"]
    assert [s["seq"] for s in samples] == [1, 2, 3]
    assert all(s["state"] == "open" and s["verdict"] == "healthy" for s in samples)
    assert all(s["rtt"] is not None and 0 < s["rtt"] < 1 for s in samples)
    assert samples[-1]["server_lag"] is not None  # beacons: a resilient_ws server
    if sys.platform == "linux":
        # Beacons every 20 ms keep the keepalive from probing: SRTT is the kernel's.
        assert all(s["srtt"] is not None and 0 < s["srtt"] < 1 for s in samples)
        assert all(s["srtt_source"] == "kernel" for s in samples)
    if sys.platform == "linux":
        assert samples[-1]["tcp"]["unacked"] >= 0


async def test_probe_against_a_plain_server_has_no_server_lag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with ThreadServer() as server:
        assert await probe._probe(server.url, 2, 0.2, True) == 0
    samples = [r for r in records(capsys.readouterr().out) if r["event"] == "sample"]
    assert len(samples) == 2
    assert all(s["server_lag"] is None and s["rtt"] is not None for s in samples)


async def test_probe_reports_a_disconnect_with_its_verdict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = resilient_ws.serve(ignore, "127.0.0.1", 0, stall_threshold=None)
    async with server:
        with FaultProxy(server.port) as proxy:

            async def drop_once() -> None:
                await anyio.sleep(0.3)
                proxy.reset()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(drop_once)
                await probe._probe(proxy.url, 6, 0.2, True)
    events = records(capsys.readouterr().out)
    disconnected = [r for r in events if r["event"] == "disconnected"]
    assert len(disconnected) == 1
    assert disconnected[0]["verdict"] == "connection_lost"
    assert [r["link"] for r in events if r["event"] == "connected"] == [1, 2]


def test_probe_command_runs_as_a_subprocess() -> None:
    with ThreadServer() as server:
        command = [sys.executable, "-m", "resilient_ws.tools", "probe", server.url]
        result = subprocess.run(
            [*command, "--count", "2", "--interval", "0.2"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("connected to ")
    assert [line.split()[0] for line in lines[1:]] == ["seq=1", "seq=2"]


def test_probe_of_an_unreachable_server_fails_clearly() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "resilient_ws.tools", "probe", url, "--count", "1"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 1
    assert "probe failed:" in result.stdout


@pytest.mark.parametrize("args", [["--count", "0"], ["--interval", "abc"], []])
def test_probe_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    url = [] if not args else ["ws://127.0.0.1:1/"]
    assert main(["probe", *url, *args]) == 2
    assert "usage:" in capsys.readouterr().err
