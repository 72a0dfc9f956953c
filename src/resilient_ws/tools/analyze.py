"""Incident reports from the JSON-lines log the library writes: ``resilient-ws analyze``.

The core is pure, in three modules: in :mod:`~resilient_ws.tools._logparse`,
:func:`parse_line` turns one line into a :class:`LogEvent` or says why it is not one and
:func:`read_log` merges lines from several sources in time order; in
:mod:`~resilient_ws.tools._aggregate`, :func:`analyze` aggregates the events into a
:class:`Report` (its dataclasses are in :mod:`~resilient_ws.tools._report`); in
:mod:`~resilient_ws.tools._render`, :func:`render_text` and :func:`render_json` print it.
This module is the command: only :func:`run` reads files and writes output. It re-exports
the names above, so that ``from resilient_ws.tools.analyze import ...`` keeps working.

A log is evidence written by a process that may have crashed mid-line, so nothing in a line
is trusted: a field of the wrong type counts as absent, and a bad line is counted, never
fatal. The event names and fields are those of ``docs/events.md``; unknown events and extra
fields are ignored, so that logs of newer versions still load. Only the standard library is
used here: the command must work without the ``cli`` extra (except for ``--plot``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import TextIO

from ._aggregate import analyze, analyze_lines, percentile
from ._logparse import (
    BAD_REASONS,
    FOREIGN,
    BadLine,
    InputSummary,
    LogEvent,
    ParsedLog,
    parse_line,
    read_log,
)
from ._render import render_json, render_text, report_to_dict
from ._report import (
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
