"""``resilient-ws analyze --plot``: a PNG timeline of an incident report, drawn with matplotlib.

matplotlib is optional (the ``cli`` extra) and imported only here, only when a plot is asked
for. The figure is drawn on matplotlib's Agg canvas directly, never through ``pyplot``, so no
GUI backend or global state is involved.

The log has no per-probe RTT, so the plot shows only what was logged: the keepalive's
smoothed RTT (``srtt``, logged when a link is abandoned) and pong ``timeout`` wherever an event
carries them, and the server's loop stalls (``loop_stalled`` ``duration``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from ._report import ConnectionReport, Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MISSING", "PlotUnavailable", "require_matplotlib", "write_plot"]

MISSING = "--plot needs matplotlib: pip install 'resilient_ws[cli]'"
# Connections drawn as rows of bands; the rest are named in the title only.
MAX_ROWS = 25
COLORS = {"connected": "#4caf50", "stalled": "#ff9800", "down": "#e53935"}
# Stalled bands are drawn over connected ones, thinner, so both stay visible.
HEIGHTS = {"connected": 0.8, "down": 0.8, "stalled": 0.5}


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def require_matplotlib() -> ModuleType:
    """Import matplotlib.

    Returns:
        The matplotlib module.

    Raises:
        PlotUnavailable: It is not installed; the message says how to install it.
    """
    try:
        return importlib.import_module("matplotlib")
    except ImportError as exc:
        raise PlotUnavailable(MISSING) from exc


def write_plot(report: Report, path: str) -> None:
    """Draw the report's timeline into a PNG file.

    Three panels share the time axis (seconds since the first event): connected, peer
    stalled and down bands per connection; the keepalive values logged; the server's loop
    stalls.

    Args:
        report: The report to draw.
        path: The PNG file to write.

    Raises:
        PlotUnavailable: matplotlib is not installed.
        OSError: The file could not be written.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [c for c in report.connections if c.timeline][:MAX_ROWS]
    figure = Figure(figsize=(11, 5 + 0.25 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    bands, keepalive, lag = figure.subplots(
        3, 1, sharex=True, height_ratios=[max(2, len(rows) * 0.4), 1.5, 1.5]
    )
    hidden = sum(1 for c in report.connections if c.timeline) - len(rows)
    _draw_bands(bands, rows, hidden)
    _draw_keepalive(keepalive, report)
    _draw_lag(lag, report)
    lag.set_xlim(0, max(report.duration, 1e-3))
    lag.set_xlabel(f"seconds since {report.start or 'the first event'}")
    figure.savefig(path, format="png", dpi=100)


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="gray")


def _draw_bands(axes: Axes, rows: Sequence[ConnectionReport], hidden: int) -> None:
    from matplotlib.patches import Patch

    more = f" ({hidden} more not drawn)" if hidden > 0 else ""
    axes.set_title(f"connections: connected / peer stalled / down{more}", loc="left")
    if not rows:
        _empty(axes, "no connection events in the log")
        return
    for y, connection in enumerate(rows):
        for state in ("connected", "down", "stalled"):
            spans = [(b.start, b.end - b.start) for b in connection.timeline if b.state == state]
            height = HEIGHTS[state]
            axes.broken_barh(spans, (y - height / 2, height), facecolors=COLORS[state])
    axes.set_yticks(range(len(rows)), [c.connection_id for c in rows])
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.legend(
        handles=[Patch(color=color, label=state) for state, color in COLORS.items()],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
    )


def _draw_keepalive(axes: Axes, report: Report) -> None:
    axes.set_title("keepalive values logged (no per-probe RTT is logged)", loc="left")
    axes.set_ylabel("seconds")
    if not report.samples:
        _empty(axes, "no srtt or timeout fields in the log")
        return
    for name, marker in (("timeout", "x"), ("srtt", "o")):
        points = [(s.at, s.value) for s in report.samples if s.name == name]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.scatter(xs, ys, marker=marker, label=name, s=20)
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def _draw_lag(axes: Axes, report: Report) -> None:
    axes.set_title("server loop stalls (blocked for, seconds)", loc="left")
    axes.set_ylabel("seconds")
    stalls = report.loop_stalls
    if not stalls:
        _empty(axes, "no loop_stalled events in the log")
        return
    # A stall is logged when it ends: the loop was blocked over [at - duration, at].
    axes.bar(
        [s.at - s.duration for s in stalls],
        [s.duration for s in stalls],
        width=[s.duration for s in stalls],
        align="edge",
        color="#8e24aa",
        alpha=0.5,
    )
    axes.scatter([s.at for s in stalls], [s.duration for s in stalls], color="#8e24aa", s=15)
    thresholds = {s.threshold for s in stalls if s.threshold is not None}
    for threshold in thresholds:
        axes.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
