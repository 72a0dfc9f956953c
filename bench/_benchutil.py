"""Small helpers shared by the benchmark scripts (run as ``python bench/NAME.py``)."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> list[str]:
    """A ``taskset`` prefix that runs a child on ``cpu``, when this machine has that CPU."""
    if hasattr(os, "sched_getaffinity") and cpu in os.sched_getaffinity(0):
        return ["taskset", "-c", str(cpu)]
    return []
