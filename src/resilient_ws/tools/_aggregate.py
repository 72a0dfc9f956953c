"""Aggregation for ``resilient-ws analyze``: the events of a parsed log into a report.

:func:`analyze` folds each connection's events, in time order, into a
:class:`~resilient_ws.tools._report.ConnectionReport`, and adds the totals and the server's
loop stalls. Nothing in an event is trusted: a field of the wrong type counts as absent, and
unknown events and extra fields are ignored, so that logs of newer versions still load.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from ._logparse import LogEvent, ParsedLog, read_log
from ._report import (
    SCHEMA_VERSION,
    Band,
    ConnectionReport,
    Culprit,
    DurationStats,
    GapRecord,
    LoopStall,
    PeerStall,
    Report,
    Sample,
    Totals,
)

__all__ = ["analyze", "analyze_lines", "percentile"]

# Fields that carry the keepalive's view of the round trip, sampled for the plot.
SAMPLED_FIELDS = ("srtt", "timeout")


def _number(value: object) -> float | None:
    """``value`` as a finite float; ``None`` for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _duration(value: object) -> float | None:
    """``value`` as a duration: a finite, non-negative float; ``None`` for anything else."""
    number = _number(value)
    return None if number is None or number < 0 else number


def _count(value: object) -> int | None:
    """``value`` as a non-negative int; ``None`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _text(value: object) -> str | None:
    """``value`` as a string: strings as they are, other scalars printed, else ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _cause(fields: Mapping[str, Any]) -> str:
    kind = _text(fields.get("error_type")) or "unknown error"
    cause = _text(fields.get("cause"))
    return kind if not cause else f"{kind}: {cause}"


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of non-empty ``values`` (``p`` in 0-100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _stats(values: Sequence[float]) -> DurationStats:
    if not values:
        return DurationStats(0, None, None, None)
    return DurationStats(len(values), percentile(values, 50), percentile(values, 95), max(values))


def _by_count(counter: Mapping[str, int]) -> dict[str, int]:
    """Most frequent first, then by name: a stable order for reports and tests."""
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


class _Connection:
    """Folds one connection's events, in time order, into a :class:`ConnectionReport`."""

    def __init__(self, connection_id: str, start: float) -> None:
        self.id = connection_id
        self.start = start
        self.urls: dict[str, None] = {}
        self.links = self.attempts = self.resumes = self.replayed = 0
        self.sessions_lost = self.unacked_lost = self.queue_dropped = self.unread_dropped = 0
        self.uptime = 0.0
        self.failures: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.causes: Counter[str] = Counter()
        self.reconnect_times: list[float] = []
        self.gaps: list[GapRecord] = []
        self.stalls: list[PeerStall] = []
        self.bands: list[Band] = []
        self.open_at: float | None = None  # the open link's start
        self.down_since: float | None = None
        self.reconnecting = False  # down since a link closed, not since the first attempt
        self.attempt_since: float | None = None
        self.stall_since: float | None = None
        self.closed_at: float | None = None
        self.close_cause: str | None = None
        self.undelivered: int | None = None

    def feed(self, event: LogEvent, at: float) -> None:
        url = _text(event.fields.get("url"))
        if url is not None:
            self.urls.setdefault(url)
        handler = getattr(self, f"on_{event.name}", None)
        if handler is not None:
            handler(event.fields, at)

    def on_connect_started(self, fields: Mapping[str, Any], at: float) -> None:
        self.attempts += 1
        if self.attempt_since is None and self.open_at is None:
            self.attempt_since = at

    def on_connect_failed(self, fields: Mapping[str, Any], at: float) -> None:
        self.failures[_cause(fields)] += 1
        if self.down_since is None and self.open_at is None:
            self.down_since = self.attempt_since if self.attempt_since is not None else at

    def on_link_opened(self, fields: Mapping[str, Any], at: float) -> None:
        if self.open_at is not None:  # the close of the previous link was not logged
            self._end_link(at, None)
        self.links += 1
        if self.down_since is not None:
            self.bands.append(Band(self.down_since, at, "down"))
            if self.reconnecting:
                self.reconnect_times.append(at - self.down_since)
        self.open_at = at
        self.down_since = self.attempt_since = None
        self.reconnecting = False

    def on_link_closed(self, fields: Mapping[str, Any], at: float) -> None:
        self.verdicts[_text(fields.get("verdict")) or "unknown"] += 1
        self.causes[_cause(fields)] += 1
        self._end_link(at, _duration(fields.get("uptime")))
        self.down_since = at
        self.reconnecting = True

    def on_peer_stalled(self, fields: Mapping[str, Any], at: float) -> None:
        if self.stall_since is None:
            self.stall_since = at

    def on_peer_recovered(self, fields: Mapping[str, Any], at: float) -> None:
        stalled_for = _duration(fields.get("stalled_for"))
        start = self.stall_since
        if start is None:
            start = at if stalled_for is None else max(0.0, at - stalled_for)
        self._end_stall(at, start, stalled_for, recovered=True)

    def on_connection_closed(self, fields: Mapping[str, Any], at: float) -> None:
        self.close_cause = _text(fields.get("cause"))
        self.undelivered = _count(fields.get("undelivered"))
        self.closed_at = at
        self._finish_open(at)

    def on_session_resumed(self, fields: Mapping[str, Any], at: float) -> None:
        self.resumes += 1
        self.replayed += _count(fields.get("resent")) or 0

    def on_messages_lost(self, fields: Mapping[str, Any], at: float) -> None:
        first, last = _count(fields.get("first")), _count(fields.get("last"))
        self.gaps.append(GapRecord(at, _text(fields.get("session_id")), first, last))

    def on_session_lost(self, fields: Mapping[str, Any], at: float) -> None:
        self.sessions_lost += 1
        self.unacked_lost += _count(fields.get("unacked")) or 0

    def on_messages_dropped(self, fields: Mapping[str, Any], at: float) -> None:
        self.queue_dropped += _count(fields.get("count")) or 0

    def on_inbound_dropped(self, fields: Mapping[str, Any], at: float) -> None:
        self.unread_dropped += _count(fields.get("count")) or 0

    def _end_link(self, at: float, uptime: float | None) -> None:
        """Close the open link (or one opened before the log began) at ``at``."""
        start = self.open_at
        if start is None:
            start = at if uptime is None else max(0.0, at - uptime)
        self.uptime += at - start if uptime is None else uptime
        self.bands.append(Band(start, at, "connected"))
        if self.stall_since is not None:
            self._end_stall(at, self.stall_since, None, recovered=False)
        self.open_at = None

    def _end_stall(self, at: float, start: float, length: float | None, *, recovered: bool) -> None:
        self.stalls.append(PeerStall(start, at - start if length is None else length, recovered))
        self.bands.append(Band(start, at, "stalled"))
        self.stall_since = None

    def _finish_open(self, at: float) -> None:
        if self.open_at is not None:
            self._end_link(at, None)
        if self.stall_since is not None:
            self._end_stall(at, self.stall_since, None, recovered=False)
        if self.down_since is not None:
            self.bands.append(Band(self.down_since, at, "down"))
            self.down_since = None
            self.reconnecting = False

    def _state(self) -> str:
        if self.closed_at is not None:
            return "closed"
        if self.open_at is not None:
            return "connected"
        # A server-side connection logs only keepalive events: no links to judge by.
        return "down" if self.down_since is not None else "unknown"

    def report(self, log_end: float) -> ConnectionReport:
        """The figures of this connection; what is still open ends with the log."""
        state, end = self._state(), log_end if self.closed_at is None else self.closed_at
        if self.closed_at is None:
            self._finish_open(end)
        span = end - self.start
        return ConnectionReport(
            connection_id=self.id,
            urls=tuple(self.urls),
            start=self.start,
            end=end,
            span=span,
            links=self.links,
            uptime=self.uptime,
            uptime_ratio=min(1.0, self.uptime / span) if span > 0 else None,
            state_at_end=state,
            close_cause=self.close_cause,
            undelivered=self.undelivered,
            attempts=self.attempts,
            connect_failures=sum(self.failures.values()),
            connect_failures_by_cause=_by_count(self.failures),
            disconnects=sum(self.verdicts.values()),
            disconnects_by_verdict=_by_count(self.verdicts),
            disconnects_by_cause=_by_count(self.causes),
            reconnect=_stats(self.reconnect_times),
            reconnect_times=tuple(self.reconnect_times),
            resumes=self.resumes,
            replayed=self.replayed,
            gaps=tuple(self.gaps),
            sessions_lost=self.sessions_lost,
            unacked_lost=self.unacked_lost,
            queue_dropped=self.queue_dropped,
            inbound_dropped=self.unread_dropped,
            peer_stalls=tuple(self.stalls),
            timeline=tuple(sorted(self.bands, key=lambda band: (band.start, band.state))),
        )


def _loop_stall(fields: Mapping[str, Any], at: float) -> LoopStall | None:
    duration = _duration(fields.get("duration"))
    if duration is None:
        return None
    return LoopStall(at, duration, _number(fields.get("threshold")), _text(fields.get("culprit")))


def _culprits(stalls: Sequence[LoopStall]) -> tuple[Culprit, ...]:
    """Stalls grouped by culprit, the most total stalled time first."""
    groups: dict[str | None, list[float]] = {}
    for stall in stalls:
        groups.setdefault(stall.culprit, []).append(stall.duration)
    culprits = [Culprit(name, len(d), sum(d), max(d)) for name, d in groups.items()]
    return tuple(sorted(culprits, key=lambda c: (-c.total, c.culprit or "")))


def _samples(event: LogEvent, connection_id: str, at: float) -> list[Sample]:
    found = ((name, _number(event.fields.get(name))) for name in SAMPLED_FIELDS)
    return [Sample(at, connection_id, name, value) for name, value in found if value is not None]


def _gap_size(gap: GapRecord) -> int | None:
    """Messages in a gap; ``None`` when its end is unknown."""
    if gap.first is None or gap.last is None:
        return None
    return max(0, gap.last - gap.first + 1)


def _totals(connections: Sequence[ConnectionReport], stalls: Sequence[LoopStall]) -> Totals:
    verdicts: Counter[str] = Counter()
    for connection in connections:
        verdicts.update(connection.disconnects_by_verdict)
    gaps = [gap for connection in connections for gap in connection.gaps]
    return Totals(
        connections=len(connections),
        links=sum(c.links for c in connections),
        uptime=sum(c.uptime for c in connections),
        disconnects=sum(c.disconnects for c in connections),
        disconnects_by_verdict=_by_count(verdicts),
        connect_failures=sum(c.connect_failures for c in connections),
        reconnect=_stats([t for c in connections for t in c.reconnect_times]),
        replayed=sum(c.replayed for c in connections),
        gaps=len(gaps),
        messages_lost=sum(_gap_size(gap) or 0 for gap in gaps),
        gaps_open_ended=sum(gap.last is None for gap in gaps),
        sessions_lost=sum(c.sessions_lost for c in connections),
        peer_stalls=sum(len(c.peer_stalls) for c in connections),
        loop_stalls=len(stalls),
        loop_stalled_for=sum(stall.duration for stall in stalls),
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")


def analyze(log: ParsedLog) -> Report:
    """Aggregate the events of ``log`` into an incident report.

    Args:
        log: Events in time order, as :func:`read_log` returns them.

    Returns:
        The report. Events of a connection still open at the end of the log are closed at
        the log's last timestamp.
    """
    origin = log.events[0].at if log.events else 0.0
    last = log.events[-1].at - origin if log.events else 0.0
    connections: dict[str, _Connection] = {}
    stalls: list[LoopStall] = []
    samples: list[Sample] = []
    unattributed = 0
    for event in log.events:
        at = event.at - origin
        if event.name == "loop_stalled":
            stall = _loop_stall(event.fields, at)
            if stall is not None:
                stalls.append(stall)
            continue
        connection_id = _text(event.fields.get("connection_id"))
        if connection_id is None:
            unattributed += 1
            continue
        connection = connections.get(connection_id)
        if connection is None:
            connection = connections[connection_id] = _Connection(connection_id, at)
        connection.feed(event, at)
        samples.extend(_samples(event, connection_id, at))
    reports = tuple(connection.report(last) for connection in connections.values())
    return Report(
        schema_version=SCHEMA_VERSION,
        start=_iso(origin) if log.events else None,
        end=_iso(log.events[-1].at) if log.events else None,
        duration=last,
        input=replace(log.summary, unattributed=unattributed),
        totals=_totals(reports, stalls),
        connections=reports,
        loop_stalls=tuple(stalls),
        culprits=_culprits(stalls),
        samples=tuple(samples),
    )


def analyze_lines(lines: Iterable[str], source: str = "-") -> Report:
    """Parse and analyze the lines of one source: ``analyze(read_log([(source, lines)]))``."""
    return analyze(read_log([(source, lines)]))
