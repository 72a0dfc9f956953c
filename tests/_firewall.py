"""iptables DROP rules on a loopback port, for the fault tests: added, then all removed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

__all__ = ["Firewall", "no_iptables"]


class Firewall:
    """Adds iptables DROP rules and removes every one of them on the way out."""

    @contextmanager
    def drop(self, port: int) -> Iterator[None]:
        """Drop every TCP segment to or from ``port`` on loopback, both directions.

        On ``lo`` each segment passes INPUT once on its way in: ``--dport`` catches the
        client's segments (data, ACKs, SYNs of new attempts), ``--sport`` the server's.
        """
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", f"--{end}", str(port), *_TAG, "-j", "DROP"]
            for end in ("dport", "sport")
        ]
        added: list[list[str]] = []
        try:
            for rule in rules:
                _iptables("-I", *rule)
                added.append(rule)
            yield
        finally:
            failed = []
            for rule in added:
                try:
                    _iptables("-D", *rule)
                except subprocess.SubprocessError as exc:
                    failed.append(f"{rule}: {exc}")
            if failed:
                raise RuntimeError(f"iptables rules left behind: {failed}")

    @contextmanager
    def drop_one_empty_segment(self, port: int) -> Iterator[None]:
        """Drop the next TCP segment without payload sent to ``port`` on IPv4 loopback,
        only that one: on an idle link to a server that does not probe, the client
        kernel's next keepalive probe (52 bytes: IP, TCP and timestamps, no data).

        ``limit`` matches one packet (its burst), then none for an hour: one DROP.
        """
        rule = [
            "INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port),
            "-m", "length", "--length", "52",
            "-m", "limit", "--limit", "1/hour", "--limit-burst", "1",
            *_TAG, "-j", "DROP",
        ]  # fmt: skip
        _iptables("-I", *rule)
        try:
            yield
        finally:
            _iptables("-D", *rule)


# Names our rules for whoever lists the firewall while a test runs.
_TAG = ["-m", "comment", "--comment", "resilient_ws-test-faults"]


def _iptables(*args: str) -> None:
    # -w: wait for the xtables lock rather than fail when another process holds it.
    subprocess.run(["iptables", "-w", "10", *args], check=True, capture_output=True, timeout=30)


@cache
def no_iptables() -> str | None:
    """Why iptables cannot be used here, or None if it can."""
    if os.geteuid() != 0:
        return "dropping packets with iptables needs root"
    if shutil.which("iptables") is None:
        return "iptables is not installed (.ci/run installs it)"
    try:
        _iptables("-S", "INPUT")
    except (subprocess.SubprocessError, OSError) as exc:
        return f"iptables does not work on this machine: {exc}"
    return None
