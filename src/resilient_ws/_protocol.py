"""Control messages exchanged by resilient_ws peers. Pure: bytes in, values out.

Lag beacons travel as the payload of unsolicited pong frames, which RFC 6455 section 5.5.3
allows ("a unidirectional heartbeat") and other clients ignore, so a plain WebSocket client
is unaffected. The payload is ASCII::

    rws1 lag=<seconds> max=<seconds> stall=<seconds>

``lag``: the server's current event-loop lag; ``max``: the largest in its recent window;
``stall``: the duration of its last loop stall (0 if none). Unknown trailing fields are
ignored, so later versions may add some.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BEACON_PREFIX", "Beacon", "decode_beacon", "encode_beacon"]

BEACON_PREFIX = b"rws1 "
# Control frames carry at most 125 bytes (RFC 6455 section 5.5).
_MAX_CONTROL_PAYLOAD = 125


@dataclass(frozen=True, slots=True)
class Beacon:
    """A server's report of its own event-loop lag, in seconds."""

    lag: float
    max_lag: float
    stall: float


def encode_beacon(beacon: Beacon) -> bytes:
    """The pong payload for ``beacon``."""
    data = b"rws1 lag=%.4f max=%.4f stall=%.3f" % (beacon.lag, beacon.max_lag, beacon.stall)
    assert len(data) <= _MAX_CONTROL_PAYLOAD
    return data


def decode_beacon(data: bytes) -> Beacon | None:
    """The beacon in a pong payload, or ``None`` if it is not one (or malformed)."""
    if not data.startswith(BEACON_PREFIX) or len(data) > _MAX_CONTROL_PAYLOAD:
        return None
    fields: dict[str, float] = {}
    for item in data[len(BEACON_PREFIX) :].split():
        name, sep, value = item.partition(b"=")
        if not sep:
            return None
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number) or number < 0:
            return None
        fields[name.decode("ascii", "replace")] = number
    try:
        return Beacon(fields["lag"], fields["max"], fields["stall"])
    except KeyError:
        return None
