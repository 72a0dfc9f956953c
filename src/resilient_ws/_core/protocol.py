"""The replay protocol's wire format (docs/protocol.md). Pure: bytes and headers in, values out.

Control messages travel as the payload of unsolicited pong frames, which RFC 6455 section
5.5.3 allows ("a unidirectional heartbeat") and other peers ignore::

    rws1 <name>=<value> <name>=<value> ...

Fields: ``ack`` (cumulative acknowledgement), and the server's lag beacon: ``lag`` (current
event-loop lag), ``max`` (largest in its window) and ``stall`` (its last stall), in seconds.
Unknown fields are ignored, so later versions may add some.

Sessions are named, resumed and granted with ``RWS-*`` handshake headers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..exceptions import ProtocolViolation

__all__ = [
    "ACK_OUT_OF_RANGE",
    "BEACON_PREFIX",
    "MALFORMED",
    "SUBPROTOCOL",
    "Beacon",
    "Grant",
    "Resume",
    "ack_of",
    "beacon_of",
    "decode_beacon",
    "decode_control",
    "encode_ack",
    "encode_beacon",
    "grant_headers",
    "parse_grant",
    "parse_resume",
    "resume_headers",
]

SUBPROTOCOL = "resilient-ws.replay.v1"
BEACON_PREFIX = b"rws1 "
# Control frames carry at most 125 bytes (RFC 6455 section 5.5).
_MAX_CONTROL_PAYLOAD = 125
# Session ids and tokens: URL-safe base64, bounded.
_OPAQUE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Message counts: decimal, bounded so a peer cannot make us handle absurd numbers.
_COUNT = re.compile(r"[0-9]{1,18}")
# A control message's field: name=value, a lowercase name, a non-negative plain decimal.
_FIELD_NAME = re.compile(rb"[a-z][a-z0-9_]{0,15}")
_DECIMAL = re.compile(rb"[0-9]{1,20}(?:\.[0-9]{1,20})?")

MALFORMED = 4001
"""Close code for a malformed control message or header, or a negative number in one
(docs/protocol.md section 6)."""
ACK_OUT_OF_RANGE = 4002
"""Close code for a number that contradicts the session: an ack of messages never sent, an
ack below an earlier one, ``replay_from`` 0 (docs/protocol.md section 6)."""


# ---- control messages -------------------------------------------------------------------


def decode_control(data: bytes) -> dict[str, float] | None:
    """The fields of a control message.

    Returns:
        ``None`` when ``data`` is not a control message (no ``rws1 `` prefix): an ordinary
        pong, to be ignored.

    Raises:
        ProtocolViolation: It claims to be one but is malformed.
    """
    if not data.startswith(BEACON_PREFIX):
        return None
    if len(data) > _MAX_CONTROL_PAYLOAD:
        raise ProtocolViolation(MALFORMED, "control message over 125 bytes")
    fields: dict[str, float] = {}
    for item in data[len(BEACON_PREFIX) :].split():
        name, sep, value = item.partition(b"=")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise ProtocolViolation(MALFORMED, f"malformed field {item[:20]!r}")
        # Plain decimals only: Python's float() also takes "1_0", "+3", "3e0", "nan"...
        if not _DECIMAL.fullmatch(value):
            raise ProtocolViolation(MALFORMED, f"field {name[:20]!r} is not a decimal number")
        fields[name.decode("ascii")] = float(value)
    if not fields:
        raise ProtocolViolation(MALFORMED, "control message without fields")
    return fields


def encode_ack(received: int) -> bytes:
    """The control message acknowledging data messages ``1..received``."""
    return b"rws1 ack=%d" % received


def ack_of(fields: Mapping[str, float]) -> int | None:
    """The ``ack`` field as a message count, if present.

    Raises:
        ProtocolViolation: It is not a whole number.
    """
    value = fields.get("ack")
    if value is None:
        return None
    if value != int(value):
        raise ProtocolViolation(MALFORMED, "ack is not a whole number")
    return int(value)


@dataclass(frozen=True, slots=True)
class Beacon:
    """A server's report of its own event-loop lag, in seconds."""

    lag: float
    max_lag: float
    stall: float


def encode_beacon(beacon: Beacon) -> bytes:
    """The control message for ``beacon``."""
    data = b"rws1 lag=%.4f max=%.4f stall=%.3f" % (beacon.lag, beacon.max_lag, beacon.stall)
    assert len(data) <= _MAX_CONTROL_PAYLOAD
    return data


def beacon_of(fields: Mapping[str, float]) -> Beacon | None:
    """The lag beacon in a control message's fields, if it carries one."""
    try:
        return Beacon(fields["lag"], fields["max"], fields["stall"])
    except KeyError:
        return None


def decode_beacon(data: bytes) -> Beacon | None:
    """The beacon in a pong payload, or ``None`` if it is none (or malformed)."""
    try:
        fields = decode_control(data)
    except ProtocolViolation:
        return None
    return None if fields is None else beacon_of(fields)


# ---- handshake headers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resume:
    """A client's request to resume a session (docs/protocol.md section 4)."""

    session: str
    token: str
    received: int
    replay_from: int


@dataclass(frozen=True, slots=True)
class Grant:
    """A server's answer: the session the link belongs to and where each side stands."""

    session: str
    token: str
    resumed: bool
    received: int
    replay_from: int


def resume_headers(resume: Resume) -> dict[str, str]:
    """Request headers that resume ``resume.session``."""
    return {
        "RWS-Session": resume.session,
        "RWS-Token": resume.token,
        "RWS-Received": str(resume.received),
        "RWS-Replay-From": str(resume.replay_from),
    }


def parse_resume(headers: Mapping[str, str]) -> Resume | None:
    """The resume request in handshake headers (names in any case); ``None`` for a new
    session.

    Raises:
        ProtocolViolation: The headers are present but malformed.
    """
    headers = _lowercase(headers)
    session = headers.get("rws-session")
    if session is None:
        return None
    return Resume(
        session=_opaque(session, "RWS-Session"),
        token=_opaque(headers.get("rws-token"), "RWS-Token"),
        received=_count(headers.get("rws-received"), "RWS-Received"),
        replay_from=_count(headers.get("rws-replay-from"), "RWS-Replay-From", minimum=1),
    )


def grant_headers(grant: Grant) -> dict[str, str]:
    """Response headers for ``grant``."""
    return {
        "RWS-Session": grant.session,
        "RWS-Token": grant.token,
        "RWS-Resumed": "1" if grant.resumed else "0",
        "RWS-Received": str(grant.received),
        "RWS-Replay-From": str(grant.replay_from),
    }


def parse_grant(headers: Mapping[str, str]) -> Grant:
    """The server's grant in the 101 response headers.

    Raises:
        ProtocolViolation: A header is missing or malformed.
    """
    headers = _lowercase(headers)
    resumed = headers.get("rws-resumed")
    if resumed not in ("0", "1"):
        raise ProtocolViolation(MALFORMED, "RWS-Resumed must be 0 or 1")
    return Grant(
        session=_opaque(headers.get("rws-session"), "RWS-Session"),
        token=_opaque(headers.get("rws-token"), "RWS-Token"),
        resumed=resumed == "1",
        received=_count(headers.get("rws-received"), "RWS-Received"),
        replay_from=_count(headers.get("rws-replay-from"), "RWS-Replay-From", minimum=1),
    )


def _lowercase(headers: Mapping[str, str]) -> dict[str, str]:
    # Header names are case-insensitive (RFC 9110 section 5.1).
    return {name.lower(): value for name, value in headers.items()}


def _opaque(value: str | None, name: str) -> str:
    if value is None or not _OPAQUE.fullmatch(value):
        raise ProtocolViolation(MALFORMED, f"{name} is missing or malformed")
    return value


def _count(value: str | None, name: str, minimum: int = 0) -> int:
    if value is None or not _COUNT.fullmatch(value) or int(value) < minimum:
        raise ProtocolViolation(MALFORMED, f"{name} is missing or malformed")
    return int(value)
