from __future__ import annotations

import importlib

import pytest

import resilient_ws
import resilient_ws.exceptions

EXPECTED = [
    "Backoff",
    "Classifier",
    "Closed",
    "ConcurrencyError",
    "Connected",
    "Connecting",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionFailed",
    "ConnectionStats",
    "Decision",
    "Disconnected",
    "Event",
    "EventsMissed",
    "Failover",
    "Gap",
    "HandshakeFailed",
    "HandshakeRejected",
    "InboundDropped",
    "InvalidURL",
    "Keepalive",
    "Link",
    "LinkClosed",
    "LinkError",
    "LinkUnreachable",
    "LoopLagMonitor",
    "MemorySessionStore",
    "MessagesDropped",
    "OnConnect",
    "OnConnectFailed",
    "PeerRecovered",
    "PeerStalled",
    "ProtocolViolation",
    "QueueFull",
    "Reconnecting",
    "Replay",
    "Resent",
    "ResilientWSError",
    "Resumed",
    "RetryBudgetExhausted",
    "SendQueue",
    "Server",
    "ServerSession",
    "SessionLost",
    "SessionStore",
    "Stall",
    "StallWatchdog",
    "State",
    "TLSVerificationFailed",
    "TcpInfo",
    "WhenFull",
    "configure_json_logging",
    "connect",
    "default_classifier",
    "redact_url",
    "serve",
]

PUBLIC_MODULES = ["config", "events", "exceptions", "client", "server", "testing"]


def test_all_is_exactly_the_expected_list() -> None:
    assert sorted(resilient_ws.__all__) == sorted(EXPECTED)
    assert len(resilient_ws.__all__) == len(set(resilient_ws.__all__))


@pytest.mark.parametrize("name", EXPECTED)
def test_exported_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from resilient_ws import {name}", namespace)
    assert namespace[name] is getattr(resilient_ws, name)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_module_has_all(module_name: str) -> None:
    module = importlib.import_module(f"resilient_ws.{module_name}")
    names = module.__dict__.get("__all__")
    assert isinstance(names, list)
    assert names
    assert all(hasattr(module, name) for name in names)


@pytest.mark.parametrize("name", resilient_ws.exceptions.__all__)
def test_exception_derives_from_root(name: str) -> None:
    exc_type = getattr(resilient_ws.exceptions, name)
    assert issubclass(exc_type, resilient_ws.ResilientWSError)


def test_the_library_never_imports_its_tools() -> None:
    """Every module outside ``resilient_ws.tools``, imported in a fresh interpreter, leaves
    the tools (demo, probe, analyze, plot, cli) unimported."""
    import pkgutil
    import subprocess
    import sys

    modules = [
        info.name
        for info in pkgutil.walk_packages(resilient_ws.__path__, "resilient_ws.")
        if not info.name.startswith("resilient_ws.tools")
    ]
    assert "resilient_ws.server" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('resilient_ws.tools')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
    # And the tools are where the command looks for them.
    assert importlib.import_module("resilient_ws.tools.cli").main is not None
