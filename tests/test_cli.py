"""The ``resilient-ws`` command line and the examples, run as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilient_ws.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"
TIMEOUT = 90  # the demo takes ~13 s; only a hang comes near this


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def echo_server() -> Iterator[str]:
    """The demo's echo server in a subprocess, killed by pid at the end."""
    port = free_port()
    command = [sys.executable, "-m", "resilient_ws.tools", "_demo-server", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        yield f"ws://127.0.0.1:{port}/"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(
    ("backend", "network"), [("asyncio", "proxy"), ("trio", "proxy"), ("asyncio", "auto")]
)
def test_demo_handles_every_fault_and_loses_nothing(backend: str, network: str) -> None:
    command = [sys.executable, "-m", "resilient_ws.tools", "demo", "--backend", backend]
    result = subprocess.run(
        [*command, "--network", network, "--json-logs"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for fault in ("fault 1:", "fault 2:", "fault 3:", "fault 4:"):
        assert out.count(fault) == 1
    assert "server stalled (evidence:" in out
    assert "the server named the culprit:" in out
    assert "hold_gil" in out  # the function that held the GIL, from the server's log
    assert "session resumed" in out
    assert "session lost:" in out
    summary = out[out.index("summary:") :]
    assert ", lost 0, duplicated 0, out of order 0" in summary
    assert "result: OK" in out
    if network == "proxy":
        assert "proxy fallback" in summary
    # --json-logs: stderr holds the library's events as JSON lines, and nothing else.
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert events.count("resilient_ws.link_opened") == 4
    assert events.count("resilient_ws.session_resumed") == 2
    assert events.count("resilient_ws.session_lost") == 1


def test_quickstart_prints_the_echo(echo_server: str) -> None:
    result = subprocess.run(
        [sys.executable, str(QUICKSTART), echo_server],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "echo: hello, resilient world" in lines
    assert any(line.startswith("event: Connected(") for line in lines)
    assert lines[-1].startswith("event: Closed(")


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: resilient-ws")
    assert "invalid choice: 'bogus'" in err
    assert "_demo-server" not in err  # the server helper stays hidden


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: resilient-ws" in capsys.readouterr().err


def test_help_lists_the_public_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "_demo-server" not in out
