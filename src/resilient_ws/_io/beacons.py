"""The server's lag beacons: what its clients learn of its event loop, and when.

Part of the server's I/O layer (it sleeps and writes control frames). A beacon is an
unsolicited pong carrying the loop's lag and the last stall (``docs/protocol.md``); a
resilient_ws client uses it to tell a slow server from a dead link, other clients ignore
it. Beacons go out only when they say something new: to every link when the lag changes
band or after a stall, and in answer to a client's probe when that link's last beacon
said something else.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import anyio

from .._core.protocol import Beacon, encode_beacon
from . import backend as _backend
from .lag import LoopLagMonitor
from .watchdog import Stall, StallWatchdog

__all__ = ["Beacons"]

# A broadcast of beacons writes to this many links at a time, then pauses (seconds): 10,000
# links take half a second.
_BURST = 200
_PAUSE = 0.01
# Shortest time between two beacons that answer a link's probes (seconds).
_SPACING = 0.1
# Loop lag below which a server reports no lag band: the lag that would make a client blame
# the server is Keepalive.client_lag, 0.2 s by default.
_QUIET_LAG = 0.1


class Beacons:
    """The beacons of one server.

    Args:
        monitor: The event loop's lag.
        watchdog: The process's stall watchdog, if it runs.
        links: The links being served (read at each broadcast).
    """

    def __init__(
        self,
        monitor: LoopLagMonitor,
        watchdog: StallWatchdog | None,
        links: Collection[Any],
    ) -> None:
        self._monitor = monitor
        self._watchdog = watchdog
        self._links = links

    def _last_stall(self) -> Stall | None:
        return None if self._watchdog is None else self._watchdog.last_stall

    def _beacon(self) -> bytes:
        last = self._last_stall()
        beacon = Beacon(
            lag=self._monitor.current,
            max_lag=self._monitor.max,
            stall=0.0 if last is None else last.duration,
        )
        return encode_beacon(beacon)

    def _state(self) -> tuple[int, object]:
        """What a beacon says, in short: the lag band and the last stall."""
        return _lag_band(self._monitor.current), self._last_stall()

    def answer_probe(self, connection: Any) -> None:
        """A client's probe is answered (websockets sent the pong): add a beacon, so that
        the client learns the server's lag with every probe. Not when the link's last
        beacon said the same (lag band and stall): the client knows it already (a quiet
        link's probe every 15 s, on thousands of links). At most one per ``_SPACING`` on
        a link, so a flood of pings is not answered twice."""
        now = connection.last_inbound
        if now - connection.beacon_at < _SPACING:
            return
        state = self._state()
        if state != connection.beacon_state:
            connection.beacon_at, connection.beacon_state = now, state
            _backend.send_control(connection, self._beacon())

    async def broadcast(self, interval: float) -> None:
        """Send every link a beacon when the loop's lag changed band or after a stall,
        at most once per ``interval``; each probe of a client is also answered with one."""
        sent = self._state()
        while True:
            await anyio.sleep(interval)
            state = self._state()
            if state == sent:
                continue
            sent = state
            data = self._beacon()
            for index, connection in enumerate(list(self._links), 1):
                connection.beacon_state = state
                _backend.send_control(connection, data)
                if index % _BURST == 0:
                    # Paced: thousands of frames written at once overflow the kernel's
                    # queues (on loopback its backlog of 1,000 packets), and the packets
                    # dropped with them include the kernel's keepalive probes: two in a
                    # row lost and a healthy link is dropped (ETIMEDOUT). Seen with
                    # 5,000 idle clients: hundreds of links lost while others opened.
                    await anyio.sleep(_PAUSE)


def _lag_band(lag: float) -> int:
    """0 below ``_QUIET_LAG``, then one more per doubling: beacons go out when it changes."""
    return 0 if lag < _QUIET_LAG else 1 + int(math.log2(lag / _QUIET_LAG))
