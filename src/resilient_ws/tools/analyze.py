"""Incident reports from the JSON-lines log the library writes: ``resilient-ws analyze``.

The core is pure: :func:`parse_line` turns one line into a :class:`LogEvent` or says why it
is not one, :func:`read_log` merges lines from several sources in time order, and
:func:`analyze` aggregates the events into a :class:`Report`, which :func:`render_text` and
:func:`render_json` print. Only :func:`run`, at the bottom, reads files and writes output.

A log is evidence written by a process that may have crashed mid-line, so nothing in a line
is trusted: a field of the wrong type counts as absent, and a bad line is counted, never
fatal. The event names and fields are those of ``docs/events.md``; unknown events and extra
fields are ignored, so that logs of newer versions still load. Only the standard library is
used here: the command must work without the ``cli`` extra (except for ``--plot``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = [
    "BAD_REASONS",
    "FOREIGN",
    "Band",
    "BadLine",
    "ConnectionReport",
    "Culprit",
    "DurationStats",
    "GapRecord",
    "InputSummary",
    "LogEvent",
    "LoopStall",
    "ParsedLog",
    "PeerStall",
    "Report",
    "Sample",
    "Totals",
    "analyze",
    "analyze_lines",
    "parse_line",
    "percentile",
    "read_log",
    "render_json",
    "render_text",
    "report_to_dict",
    "run",
]

PREFIX = "resilient_ws."
# Why a line is not an event. Blank lines are skipped silently: they are not damage.
BAD_REASONS = ("not_json", "not_object", "no_event", "bad_timestamp")
# A well-formed event of some other logger sharing the stream: ignored, but counted.
FOREIGN = "foreign"
# Bad lines whose location the report names; the rest are only counted.
MAX_BAD_EXAMPLES = 5
# Connections the text report details; --json always has them all.
MAX_TEXT_CONNECTIONS = 20
# Fields that carry the keepalive's view of the round trip, sampled for the plot.
SAMPLED_FIELDS = ("srtt", "timeout")
SCHEMA_VERSION = 1


# ---- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One ``resilient_ws.*`` log event.

    Attributes:
        at: The event's ``timestamp`` in POSIX seconds (UTC when the timestamp had no zone).
        name: The event name without the ``resilient_ws.`` prefix, such as ``link_closed``.
        level: The ``level`` field, or ``None``.
        fields: Every field of the line, as written.
        source: The file the line came from (``-`` for standard input).
        line: The line number in ``source``, from 1.
    """

    at: float
    name: str
    level: str | None
    fields: Mapping[str, Any]
    source: str = "-"
    line: int = 0


@dataclass(frozen=True, slots=True)
class BadLine:
    """Where a bad line is, and why it is bad (one of :data:`BAD_REASONS`)."""

    source: str
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class InputSummary:
    """What the input held besides events: counts of lines, foreign events and bad lines.

    Attributes:
        sources: The files read, in order (``-`` for standard input).
        lines: Lines read, blank ones included.
        events: ``resilient_ws.*`` events parsed.
        foreign: Well-formed events of other loggers, ignored.
        unattributed: Per-connection events without a ``connection_id``, ignored.
        bad_lines: Lines that are not events, in total.
        bad_by_reason: ``bad_lines`` by reason.
        first_bad: The first :data:`MAX_BAD_EXAMPLES` bad lines.
    """

    sources: tuple[str, ...] = ()
    lines: int = 0
    events: int = 0
    foreign: int = 0
    unattributed: int = 0
    bad_lines: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    first_bad: tuple[BadLine, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedLog:
    """The events of one or more sources, in time order, and a summary of the input."""

    events: tuple[LogEvent, ...]
    summary: InputSummary


def parse_timestamp(value: object) -> float | None:
    """Return an ISO-8601 timestamp in POSIX seconds, or ``None`` if it is not one.

    A trailing ``Z`` (structlog's form, which Python 3.10 does not parse) means UTC, and so
    does a timestamp without a zone.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        at = moment.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return at


def parse_line(text: str, *, source: str = "-", line: int = 0) -> LogEvent | str:
    """Parse one line of the log.

    Args:
        text: The line, with or without its line break.
        source: Where the line comes from, kept in the event.
        line: Its line number, kept in the event.

    Returns:
        The event, or why the line is not one: a reason from :data:`BAD_REASONS`, or
        :data:`FOREIGN` for a well-formed event of another logger.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # also int strings past the digits limit
        return "not_json"
    if not isinstance(data, dict):
        return "not_object"
    name = data.get("event")
    if not isinstance(name, str) or not name:
        return "no_event"
    if not name.startswith(PREFIX):
        return FOREIGN
    at = parse_timestamp(data.get("timestamp"))
    if at is None:
        return "bad_timestamp"
    level = data.get("level")
    return LogEvent(
        at=at,
        name=name[len(PREFIX) :],
        level=level if isinstance(level, str) else None,
        fields=data,
        source=source,
        line=line,
    )


def read_log(sources: Iterable[tuple[str, Iterable[str]]]) -> ParsedLog:
    """Parse the lines of every source and merge their events in time order.

    Args:
        sources: Pairs of a source name and its lines.

    Returns:
        The events, sorted by timestamp (ties keep their input order), and the input summary.
    """
    events: list[LogEvent] = []
    names: list[str] = []
    bad: Counter[str] = Counter()
    first_bad: list[BadLine] = []
    lines = foreign = 0
    for source, texts in sources:
        names.append(source)
        for number, text in enumerate(texts, start=1):
            lines += 1
            if not text.strip():
                continue
            parsed = parse_line(text, source=source, line=number)
            if isinstance(parsed, LogEvent):
                events.append(parsed)
            elif parsed == FOREIGN:
                foreign += 1
            else:
                bad[parsed] += 1
                if len(first_bad) < MAX_BAD_EXAMPLES:
                    first_bad.append(BadLine(source, number, parsed))
    events.sort(key=lambda event: event.at)
    summary = InputSummary(
        sources=tuple(names),
        lines=lines,
        events=len(events),
        foreign=foreign,
        bad_lines=sum(bad.values()),
        bad_by_reason={reason: bad[reason] for reason in BAD_REASONS if bad[reason]},
        first_bad=tuple(first_bad),
    )
    return ParsedLog(tuple(events), summary)


# ---- the report -------------------------------------------------------------------------------


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


# ---- aggregation ------------------------------------------------------------------------------


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


# ---- rendering --------------------------------------------------------------------------------


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON data: the dataclasses as objects, tuples as lists."""
    data: dict[str, Any] = json.loads(json.dumps(asdict(report)))
    return data


def render_json(report: Report) -> str:
    """The report as one JSON document (see ``docs/analyze.md``)."""
    return json.dumps(asdict(report), indent=2)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):  # a sum of huge durations overflows
        return f"{value} s"
    if value < 10:
        return f"{value:.3f} s"
    if value < 3600:
        return f"{value:.1f} s"
    hours, rest = divmod(int(value), 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.items()) or "none"


def _stats_line(stats: DurationStats) -> str:
    if not stats.count:
        return "none"
    return (
        f"{stats.count}: p50 {_seconds(stats.p50)}, p95 {_seconds(stats.p95)},"
        f" max {_seconds(stats.max)}"
    )


def _input_lines(summary: InputSummary) -> list[str]:
    lines = [
        f"input: {summary.lines} line(s) from {len(summary.sources)} source(s),"
        f" {summary.events} resilient_ws event(s), {summary.foreign} other event(s) ignored"
    ]
    if summary.unattributed:
        lines.append(f"  {summary.unattributed} event(s) without connection_id ignored")
    if summary.bad_lines:
        where = ", ".join(f"{bad.source}:{bad.line} ({bad.reason})" for bad in summary.first_bad)
        lines.append(f"bad lines: {summary.bad_lines} ({_counts(summary.bad_by_reason)})")
        lines.append(f"  first: {where}")
    return lines


def _connection_lines(c: ConnectionReport) -> list[str]:
    ratio = "" if c.uptime_ratio is None else f" ({c.uptime_ratio:.1%})"
    more = f" (+{len(c.urls) - 1} other URL(s))" if len(c.urls) > 1 else ""
    lines = [
        f"connection {c.connection_id}  {c.urls[0] if c.urls else ''}{more}",
        f"  span {_seconds(c.span)}, uptime {_seconds(c.uptime)}{ratio} over {c.links}"
        f" link(s), {c.state_at_end} at the end",
        f"  disconnects {c.disconnects}: {_counts(c.disconnects_by_verdict)}",
    ]
    lines += [f"    {count} x {cause}" for cause, count in c.disconnects_by_cause.items()]
    lines.append(f"  connect failures {c.connect_failures}")
    lines += [f"    {count} x {cause}" for cause, count in c.connect_failures_by_cause.items()]
    lines.append(f"  time to reconnect {_stats_line(c.reconnect)}")
    if c.resumes or c.gaps or c.sessions_lost:
        lines.append(
            f"  replay: {c.resumes} resume(s), {c.replayed} message(s) replayed,"
            f" {len(c.gaps)} gap(s), {c.sessions_lost} session(s) lost"
        )
    if c.peer_stalls:
        longest = max(stall.duration for stall in c.peer_stalls)
        open_ = sum(not stall.recovered for stall in c.peer_stalls)
        lines.append(
            f"  peer stalls {len(c.peer_stalls)}, longest {_seconds(longest)}, {open_} open"
        )
    if c.queue_dropped or c.inbound_dropped:
        lines.append(f"  dropped: {c.queue_dropped} queued, {c.inbound_dropped} unread inbound")
    if c.state_at_end == "closed":
        why = "by the application" if c.close_cause is None else f"by {c.close_cause}"
        lines.append(f"  closed {why}, {c.undelivered or 0} message(s) undelivered")
    return lines


def _stall_lines(report: Report) -> list[str]:
    totals = report.totals
    if not totals.loop_stalls:
        return ["server loop stalls: none"]
    longest = max(stall.duration for stall in report.loop_stalls)
    lines = [
        f"server loop stalls {totals.loop_stalls}, total {_seconds(totals.loop_stalled_for)},"
        f" longest {_seconds(longest)}; culprits:"
    ]
    for c in report.culprits:
        lines.append(
            f"  {c.count} x, total {_seconds(c.total)}, max {_seconds(c.max)}:"
            f" {c.culprit or '(not found)'}"
        )
    return lines


def render_text(report: Report) -> str:
    """The report for people: totals first, then each connection, then server stalls."""
    t = report.totals
    if report.start is None:
        lines = ["resilient-ws analyze: no events"]
    else:
        span = _seconds(report.duration)
        lines = [f"resilient-ws analyze: {report.start} to {report.end} ({span})"]
    lines += _input_lines(report.input)
    lines += [
        "",
        f"connections {t.connections}, links {t.links}, disconnects {t.disconnects}"
        f" ({_counts(t.disconnects_by_verdict)}), connect failures {t.connect_failures}",
        f"time to reconnect {_stats_line(t.reconnect)}",
        f"messages replayed {t.replayed}, gaps {t.gaps} ({t.messages_lost} message(s) lost"
        f", {t.gaps_open_ended} open-ended), sessions lost {t.sessions_lost}",
        f"peer stalls {t.peer_stalls}",
    ]
    for connection in report.connections[:MAX_TEXT_CONNECTIONS]:
        lines += ["", *_connection_lines(connection)]
    hidden = len(report.connections) - MAX_TEXT_CONNECTIONS
    if hidden > 0:
        lines += ["", f"... and {hidden} more connection(s); --json lists them all"]
    lines += ["", *_stall_lines(report)]
    return "\n".join(lines) + "\n"


# ---- the command ------------------------------------------------------------------------------


def _stdin_lines() -> Iterator[str]:
    """Standard input, line by line; undecodable bytes become bad lines, not an error."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        yield from sys.stdin
        return
    for raw in buffer:
        yield raw.decode("utf-8", "replace")


def _analyze_paths(paths: Sequence[str], stdin: Iterable[str]) -> Report:
    """Analyze the files (``-`` is ``stdin``); raises OSError for one that cannot be read."""
    with ExitStack() as files:
        sources: list[tuple[str, Iterable[str]]] = []
        for path in paths:
            if path == "-":
                sources.append(("-", stdin))
            else:
                lines = files.enter_context(open(path, encoding="utf-8", errors="replace"))
                sources.append((path, lines))
        return analyze(read_log(sources))


def run(
    paths: Sequence[str],
    *,
    as_json: bool = False,
    plot: str | None = None,
    stdin: Iterable[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``resilient-ws analyze``: read the logs, print the report, draw the plot.

    Args:
        paths: Log files; ``-``, or none at all, reads standard input.
        as_json: Print JSON instead of text.
        plot: Where to write a PNG timeline, if anywhere (needs matplotlib).
        stdin: The lines of standard input; ``sys.stdin`` by default.
        stdout: Where the report goes; ``sys.stdout`` by default.
        stderr: Where errors go; ``sys.stderr`` by default.

    Returns:
        0 on success; 1 if the plot could not be written (the report is still printed) or
        standard output was closed early; 2 if a file could not be read or matplotlib is
        missing for ``plot``.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if plot is not None:
        # Imported here: matplotlib, and so .plot, is needed only for --plot.
        from .plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            print(f"resilient-ws analyze: error: {exc}", file=err)
            return 2
    try:
        report = _analyze_paths(paths or ["-"], _stdin_lines() if stdin is None else stdin)
    except OSError as exc:
        what = exc.filename if exc.filename is not None else "input"
        print(f"resilient-ws analyze: error: cannot read {what}: {exc.strerror}", file=err)
        return 2
    status, drawn = (0, False) if plot is None else _draw(report, plot, err)
    text = render_json(report) + "\n" if as_json else render_text(report)
    if drawn and not as_json:
        text += f"\ntimeline written to {plot}\n"
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:  # the reader went away (`| head`): not worth a traceback
        _silence(out)
        return 1
    return status


def _draw(report: Report, path: str, err: TextIO) -> tuple[int, bool]:
    """Write the plot; return the exit status and whether it was written."""
    from .plot import write_plot

    try:
        write_plot(report, path)
    except OSError as exc:
        print(f"resilient-ws analyze: error: cannot write {path}: {exc}", file=err)
        return 1, False
    return 0, True


def _silence(out: TextIO) -> None:
    """Point a closed standard output at devnull, so that exiting does not fail to flush it."""
    if out is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
