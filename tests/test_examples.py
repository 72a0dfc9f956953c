"""The examples in ``examples/``, each run as a real subprocess: a smoke test with a time bound.

Each example checks its own outcome and exits non-zero when it is wrong (the order book
does not match the exchange's, a reading is missing or duplicated, a server did not stall
or stalled when it should not); these tests also look for the lines that show the example
did what its docstring promises. The in-process examples run on both anyio backends.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Each example takes 6 to 14 s; only a hang comes near this.
TIMEOUT = 60
# Where the client's keepalive reads TCP evidence, so that a silent peer is judged
# server_stalled rather than unknown (docs/liveness.md, "Platforms").
TCP_EVIDENCE = sys.platform.startswith("linux") or sys.platform == "darwin"


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` with this interpreter; return its output once it exited 0."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def lines_with(out: str, text: str) -> list[str]:
    return [line for line in out.splitlines() if text in line]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_trading_feed_keeps_the_book_consistent(backend: str) -> None:
    out = run_example("trading_feed.py", "--seconds", "6", "--backend", backend)
    for fault in ("fault 1: TCP reset", "fault 2: 1.5 s outage", "fault 3: gateway restart"):
        assert len(lines_with(out, fault)) == 1, out
    # The reset: the session resumed (replay), the outage too; the restart lost it.
    assert len(lines_with(out, "client: Resumed(")) >= 2, out
    assert len(lines_with(out, "client: SessionLost(")) == 1, out
    # Each Gap dropped the book and asked for a snapshot; a good snapshot followed.
    overflow = lines_with(out, "reason='overflow'): book dropped, asking for a snapshot")
    lost = lines_with(out, "reason='session_lost'): book dropped, asking for a snapshot")
    assert len(overflow) >= 1, out
    assert len(lost) == 1, out
    assert len(lines_with(out, "client: snapshot at seq")) >= 3, out
    assert "MISMATCH" not in out
    assert re.search(r"summary: .*checksums verified [1-9]\d*, mismatches 0$", out, re.M), out
    assert lines_with(out, "result: OK: the book matches the exchange's at seq"), out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_iot_device_loses_no_reading_through_an_outage(backend: str) -> None:
    out = run_example("iot_device.py", "--seconds", "9", "--backend", backend)
    assert len(lines_with(out, "network: blackholed for 5.0 s")) == 1, out
    assert len(lines_with(out, "network: back, every old connection reset")) == 1, out
    assert re.search(r"device: Resumed\(resent=[1-9]\d*\)", out), out
    assert lines_with(out, "in 1 session(s); duplicates 0, missing 0, in order True"), out
    assert re.search(r"summary: reconnected \d+\.\d+ s after the network came back", out), out
    assert re.search(r"result: OK: all \d+ readings arrived exactly once, in order", out), out
    if TCP_EVIDENCE:
        # Behind the proxy the dead network looks like a stalled server (see the example).
        assert lines_with(out, "device: PeerStalled(evidence='tcp_acked')"), out
        assert lines_with(out, "into the outage, verdict 'server_stalled'"), out


@pytest.mark.skipif(
    sys.platform == "win32", reason="crunch() through kernel32's Sleep is untested on Windows"
)
def test_heavy_work_server_stalls_only_the_wrong_way() -> None:
    out = run_example("heavy_work_server.py", "--mode", "both")
    wrong, _, right = out.partition("=== right:")
    assert "=== wrong:" in wrong, out
    assert right, out
    # The wrong way: the loop froze; the watchdog named the line in crunch().
    assert re.search(
        r"server log: resilient_ws\.loop_stalled duration=[\d.]+ threshold=1\.0 "
        r"culprit='[^']*heavy_work_server\.py:\d+ crunch'",
        wrong,
    ), out
    assert re.search(r"echo round trips during the job: max [1-9]\.\d+ s", wrong), out
    if TCP_EVIDENCE:
        assert lines_with(wrong, "PeerStalled(evidence="), out
        assert lines_with(wrong, "PeerRecovered(stalled_for="), out
    assert lines_with(wrong, "wrong: as expected"), out
    # The right way: nothing of the sort.
    assert lines_with(right, "server log: no loop_stalled event"), out
    assert lines_with(right, "client: no PeerStalled event"), out
    assert "ws.stats.peer_stall 0.0 s" in right, out
    assert lines_with(right, "right: as expected"), out
    assert out.rstrip().endswith("result: OK"), out
