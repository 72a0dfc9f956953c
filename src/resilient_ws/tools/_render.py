"""Printing the report of ``resilient-ws analyze``: text for people, JSON for tools.

:func:`render_text` puts the totals first, then each connection (up to
:data:`MAX_TEXT_CONNECTIONS`), then the server's loop stalls; :func:`render_json` prints
every field of the report (see ``docs/analyze.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ._logparse import InputSummary
from ._report import ConnectionReport, DurationStats, Report

__all__ = ["MAX_TEXT_CONNECTIONS", "render_json", "render_text", "report_to_dict"]

# Connections the text report details; --json always has them all.
MAX_TEXT_CONNECTIONS = 20


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
