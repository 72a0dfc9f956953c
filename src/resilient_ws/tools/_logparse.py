"""Reading the library's JSON-lines log for ``resilient-ws analyze``: lines into events.

:func:`parse_line` turns one line into a :class:`LogEvent` or says why it is not one, and
:func:`read_log` merges the lines of several sources in time order and counts, in an
:class:`InputSummary`, what was not an event.

A log is evidence written by a process that may have crashed mid-line, so a bad line is
counted, never fatal. Only ``resilient_ws.*`` events are kept (see ``docs/events.md``);
well-formed events of other loggers are counted as foreign. Only the standard library is used.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "BAD_REASONS",
    "FOREIGN",
    "MAX_BAD_EXAMPLES",
    "BadLine",
    "InputSummary",
    "LogEvent",
    "ParsedLog",
    "parse_line",
    "parse_timestamp",
    "read_log",
]

PREFIX = "resilient_ws."
# Why a line is not an event. Blank lines are skipped silently: they are not damage.
BAD_REASONS = ("not_json", "not_object", "no_event", "bad_timestamp")
# A well-formed event of some other logger sharing the stream: ignored, but counted.
FOREIGN = "foreign"
# Bad lines whose location the report names; the rest are only counted.
MAX_BAD_EXAMPLES = 5


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
