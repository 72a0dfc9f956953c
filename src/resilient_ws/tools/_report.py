"""The incident report of ``resilient-ws analyze``: frozen dataclasses, and no logic.

:func:`~resilient_ws.tools._aggregate.analyze` builds a :class:`Report`,
:mod:`~resilient_ws.tools._render` prints it and :mod:`~resilient_ws.tools.plot` draws it.
The field names are the keys of the JSON report (``docs/analyze.md``), whose shape
:data:`SCHEMA_VERSION` numbers: renaming a field changes the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._logparse import InputSummary

__all__ = [
    "SCHEMA_VERSION",
    "Band",
    "ConnectionReport",
    "Culprit",
    "DurationStats",
    "GapRecord",
    "LoopStall",
    "PeerStall",
    "Report",
    "Sample",
    "Totals",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class DurationStats:
    """Count and nearest-rank percentiles of some durations, in seconds (``None`` if none)."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class Band:
    """A stretch of one connection's timeline: ``connected``, ``stalled`` or ``down``.

    ``start`` and ``end`` are seconds since the report's start. ``stalled`` bands lie within
    ``connected`` ones: the link was kept while the peer was stalled.
    """

    start: float
    end: float
    state: str


@dataclass(frozen=True, slots=True)
class PeerStall:
    """A ``peer_stalled`` episode; ``duration`` runs to the end of the link if unrecovered."""

    at: float
    duration: float
    recovered: bool


@dataclass(frozen=True, slots=True)
class GapRecord:
    """Peer messages ``first`` to ``last`` (``None``: end unknown) that will never arrive.

    A logged ``messages_lost`` event: what the client's :class:`resilient_ws.Gap` event
    told it, as the log recorded it.
    """

    at: float
    session_id: str | None
    first: int | None
    last: int | None


@dataclass(frozen=True, slots=True)
class LoopStall:
    """A server ``loop_stalled`` event, logged ``at`` the end of a ``duration`` s stall."""

    at: float
    duration: float
    threshold: float | None
    culprit: str | None


@dataclass(frozen=True, slots=True)
class Culprit:
    """The loop stalls blamed on one frame (``None``: no culprit found)."""

    culprit: str | None
    count: int
    total: float
    max: float


@dataclass(frozen=True, slots=True)
class Sample:
    """One logged value of a keepalive field (``srtt`` or ``timeout``), seconds."""

    at: float
    connection_id: str
    name: str
    value: float


@dataclass(frozen=True, slots=True)
class ConnectionReport:
    """What happened to one ``connection_id``. Times are seconds since the report's start.

    Attributes:
        span: Wall time from its first event to ``connection_closed`` or the end of the log.
        uptime: The sum of its links' uptimes; ``uptime_ratio`` is ``uptime / span``.
        disconnects: Links that ended (``link_closed``), by verdict and by
            ``"error_type: cause"``; ``connect_failures`` are attempts that never opened.
        reconnect_times: From each ``link_closed`` to the next ``link_opened``.
        replayed: Messages resent to the peer when sessions resumed (``resent``).
        gaps: Peer messages that will never arrive (``messages_lost``).
        state_at_end: ``closed``, ``connected``, ``down``, or ``unknown`` (no link events,
            as for the server side of a connection) at the end of the log.
    """

    connection_id: str
    urls: tuple[str, ...]
    start: float
    end: float
    span: float
    links: int
    uptime: float
    uptime_ratio: float | None
    state_at_end: str
    close_cause: str | None
    undelivered: int | None
    attempts: int
    connect_failures: int
    connect_failures_by_cause: dict[str, int]
    disconnects: int
    disconnects_by_verdict: dict[str, int]
    disconnects_by_cause: dict[str, int]
    reconnect: DurationStats
    reconnect_times: tuple[float, ...]
    resumes: int
    replayed: int
    gaps: tuple[GapRecord, ...]
    sessions_lost: int
    unacked_lost: int
    queue_dropped: int
    inbound_dropped: int
    peer_stalls: tuple[PeerStall, ...]
    timeline: tuple[Band, ...]


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over every connection, and the loop stalls of the server."""

    connections: int
    links: int
    uptime: float
    disconnects: int
    disconnects_by_verdict: dict[str, int]
    connect_failures: int
    reconnect: DurationStats
    replayed: int
    gaps: int
    messages_lost: int
    gaps_open_ended: int
    sessions_lost: int
    peer_stalls: int
    loop_stalls: int
    loop_stalled_for: float


@dataclass(frozen=True, slots=True)
class Report:
    """The incident report: input summary, per-connection figures, totals, server stalls.

    ``start`` and ``end`` are the ISO timestamps of the first and last events (``None`` for
    a log without events); every other time is in seconds since ``start``.
    """

    schema_version: int
    start: str | None
    end: str | None
    duration: float
    input: InputSummary
    totals: Totals
    connections: tuple[ConnectionReport, ...]
    loop_stalls: tuple[LoopStall, ...]
    culprits: tuple[Culprit, ...]
    samples: tuple[Sample, ...]
