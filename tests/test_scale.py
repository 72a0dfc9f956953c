"""CI short form of ``bench/bench_scale.py`` (issue 10): ``--quick --json``, 1,000 connections.

One run of the benchmark in a subprocess (asyncio; the trio form is ``--backend trio`` by
hand): ``serve()`` and websockets.serve holding 1,000 idle resilient_ws and raw websockets
clients, a reconnect storm, and handshakes/s. The tests below read its JSON.

The bounds are for GROSS regressions only, set with several times the headroom over what
this 2-core machine measured even with the other core busy: they must not fail from noise.
The real targets (10 % of a core at 10,000 clients, 0.8x handshakes...) are the bench's
own, checked where it prints ``target ... ok/MISSED``. CPU bounds are on CPU time consumed
(``/proc`` ticks), which another process on the same core does not inflate much; the
handshake bound is on handshakes per second of *server CPU*, which contention changes far
less than handshakes per second of wall time.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_scale.py"
CONNECTIONS = 1000  # what --quick opens
# The quick run takes 46-75 s here; only a hang comes near this.
RUN_TIMEOUT = 280

# Gross-regression bounds (the bench's targets are far stricter):
# idle serve() CPU with 1,000 resilient_ws clients; measured 0.3-4.3 % (29 % before the
# kernel-keepalive work of issue 10), so a return to per-link 1 s probes still trips it.
IDLE_SERVER_CPU_MAX = 10.0  # % of one core
# resilient_ws client idle CPU; measured 309-410 with a loop-lag monitor per connection,
# 3.3 with one per event loop (the target is 50).
CLIENT_US_MAX = 100.0  # µs per connection per second
# serve()'s RSS per idle replay session; measured 40-58 KiB (websockets.serve: 15-17 KiB).
RSS_KIB_MAX = 150.0
# Handshakes per second of server CPU, serve() / websockets.serve; measured 0.37-0.62
# plain and 0.28-0.46 granting a replay session (the bench's targets: 0.8 and 0.6 of
# handshakes/s).
HANDSHAKE_PLAIN_MIN = 0.15
HANDSHAKE_REPLAY_MIN = 0.1
# Share of the clients open when the server drops every link; measured 100 %.
STORM_ARMED_MIN = 0.9

pytestmark = [
    pytest.mark.timeout(RUN_TIMEOUT + 20),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)"),
    pytest.mark.skipif(
        resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2 * CONNECTIONS + 500,
        reason=f"needs a hard RLIMIT_NOFILE of at least {2 * CONNECTIONS + 500}",
    ),
]


@pytest.fixture(scope="module")
def quick_run() -> dict[str, Any]:
    """The bench's JSON; the run's whole process group is killed if it hangs."""
    process = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so a hang can be ended whole
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"bench_scale.py --quick did not finish within {RUN_TIMEOUT} s")
    assert process.returncode == 0, stderr[-3000:]
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def combos(run: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = run["connections"][str(CONNECTIONS)]
    return figures


def test_scale_short_form_every_connection_opens(quick_run: dict[str, Any]) -> None:
    for name, combo in combos(quick_run).items():
        assert combo["opened"] == CONNECTIONS, (name, combo["failed"], combo["error"])


def test_scale_short_form_storm_recovers(quick_run: dict[str, Any]) -> None:
    storm = combos(quick_run)["resilient/resilient"]["storm"]
    # Most links open when the blip comes (a client that reconnected while idle, on a
    # loaded machine, may be between links), and every one of them back.
    assert storm["armed"] >= STORM_ARMED_MIN * CONNECTIONS, storm
    assert storm["back"] == storm["armed"], storm
    assert storm["all_back"] is not None, storm
    # The peer the bench compares with: websockets' own clients on websockets.serve.
    peer = combos(quick_run)["websockets/raw"]["storm"]
    assert peer["armed"] >= STORM_ARMED_MIN * CONNECTIONS, peer
    assert peer["back"] == peer["armed"], peer


def test_scale_short_form_idle_cpu(quick_run: dict[str, Any]) -> None:
    combo = combos(quick_run)["resilient/resilient"]
    assert combo["server_cpu"] <= IDLE_SERVER_CPU_MAX, combo
    assert combo["client_us_per_connection"] <= CLIENT_US_MAX, combo


def test_scale_short_form_replay_session_memory(quick_run: dict[str, Any]) -> None:
    combo = combos(quick_run)["resilient/resilient"]
    assert combo["rss_per_connection"] / 1024 <= RSS_KIB_MAX, combo


def test_scale_short_form_handshakes(quick_run: dict[str, Any]) -> None:
    shakes = quick_run["handshakes"]
    for label, shake in shakes.items():
        # A wrong status ("HTTP/1.1 503 ..."), or a 101 without the replay grant.
        wrong = [verdict for verdict in shake["bad"] if verdict.startswith(("1", "HTTP"))]
        assert shake["ok"] > 0, (label, shake)
        assert not wrong, (label, shake["bad"])
    base = shakes["websockets.serve"]["per_cpu"]
    assert shakes["serve() plain"]["per_cpu"] / base >= HANDSHAKE_PLAIN_MIN, shakes
    assert shakes["serve() replay"]["per_cpu"] / base >= HANDSHAKE_REPLAY_MIN, shakes
