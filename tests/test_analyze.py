"""``resilient-ws analyze``: parsing and aggregation on hand-written logs, the renderers,
the command line, the plot, and a log written by a real client across server restarts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from _helpers import FAST, TIMEOUT, next_event
from _servers import ProcessServer, ThreadServer, free_port
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resilient_ws import Closed, Connected, Disconnected, configure_json_logging, connect
from resilient_ws.tools._logparse import MAX_BAD_EXAMPLES, parse_timestamp
from resilient_ws.tools.analyze import (
    FOREIGN,
    BadLine,
    Band,
    Culprit,
    GapRecord,
    LogEvent,
    PeerStall,
    Report,
    analyze,
    analyze_lines,
    parse_line,
    percentile,
    read_log,
    render_json,
    render_text,
    report_to_dict,
    run,
)
from resilient_ws.tools.cli import main

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
A, B = "aaaa0001", "bbbb0002"
URL = "wss://feed.example.com/v1"


def line(t: float, name: str, **fields: Any) -> str:
    """One log line as configure_json_logging() writes it, ``t`` seconds after T0."""
    stamp = datetime.fromtimestamp(T0 + t, timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {**fields, "event": f"resilient_ws.{name}", "level": "info", "timestamp": stamp}
    )


def closed(t: float, verdict: str, uptime: float, cause: str) -> str:
    return line(
        t,
        "link_closed",
        connection_id=A,
        url=URL,
        cause=cause,
        error_type="LinkClosed",
        code=1006,
        status=None,
        fatal=False,
        verdict=verdict,
        uptime=uptime,
        timeout=0.5,
    )


# Connection A: four links, three disconnects with three verdicts, one failed attempt, a
# recovered peer stall, two resumes and two gaps. Connection B: the server side of another
# connection, stalled when the log ends. The server's loop stalled three times.
INCIDENT = [
    line(0.0, "connect_started", connection_id=A, url=URL, attempt=1),
    line(0.5, "link_opened", connection_id=A, url=URL, link=1, subprotocol=None, flushed=0),
    line(10.5, "peer_stalled", connection_id=A, url=URL, evidence="tcp_acked", timeout=0.5),
    line(12.5, "peer_recovered", connection_id=A, url=URL, stalled_for=2.0),
    closed(20.5, "connection_lost", 20.0, "link closed with code 1006"),
    line(20.75, "reconnect_scheduled", connection_id=A, attempt=1, delay=0.25, url=URL),
    line(21.0, "connect_started", connection_id=A, url=URL, attempt=1),
    line(
        21.0,
        "connect_failed",
        connection_id=A,
        url=URL,
        cause="refused",
        error_type="LinkUnreachable",
        verdict="unreachable",
        uptime=None,
        timeout=None,
    ),
    line(22.5, "link_opened", connection_id=A, url=URL, link=2, subprotocol=None, flushed=3),
    line(23.0, "session_resumed", connection_id=A, session_id="s1", resent=5, link=2),
    line(23.0, "messages_lost", connection_id=A, session_id="s1", first=10, last=14),
    line(30.0, "loop_stalled", duration=1.5, threshold=0.5, culprit="app.py:10 crunch"),
    line(
        40.5,
        "link_abandoned",
        connection_id=A,
        url=URL,
        verdict="network_dead",
        evidence="retransmits",
        timeout=0.25,
        srtt=0.125,
    ),
    closed(40.5, "network_dead", 18.0, "keepalive: network dead"),
    line(41.5, "link_opened", connection_id=A, url=URL, link=3, subprotocol=None, flushed=0),
    # A newer version's extra field is ignored.
    line(42.0, "session_resumed", connection_id=A, session_id="s1", resent=3, link=3, extra=1),
    line(42.0, "messages_lost", connection_id=A, session_id="s1", first=20, last=None),
    line(45.0, "loop_stalled", duration=0.75, threshold=0.5, culprit="app.py:10 crunch"),
    closed(50.0, "peer_closed", 8.5, "link closed with code 1001"),
    line(54.0, "link_opened", connection_id=A, url=URL, link=4, subprotocol=None, flushed=0),
    line(55.0, "peer_stalled", connection_id=B, url="peer:127.0.0.1:5555", evidence="none"),
    line(60.5, "connection_closed", connection_id=A, cause=None, undelivered=0),
    line(62.0, "loop_stalled", duration=2.0, threshold=0.5, culprit=None, threads=[]),
]
GARBAGE = [
    "not json at all",
    "[1, 2, 3]",
    '{"message": "no event here"}',
    '{"event": 5, "timestamp": "2024-05-01T12:00:00Z"}',
    '{"event": "resilient_ws.link_opened", "timestamp": "yesterday"}',
    '{"event": "resilient_ws.link_opened"}',
    '{"event": "uvicorn.access", "timestamp": "2024-05-01T12:00:00Z"}',
    "",
    '{"event": "resilient_ws.reconnect_scheduled", "timestamp": "2024-05-01T12:00:01Z"}',
]


@pytest.fixture
def incident() -> Report:
    return analyze_lines(INCIDENT)


@pytest.fixture
def incident_file(tmp_path: Path) -> Path:
    path = tmp_path / "incident.jsonl"
    path.write_text("\n".join([*INCIDENT, *GARBAGE]) + "\n", encoding="utf-8")
    return path


# ---- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not_json"),
        ('{"event": "resilient_ws.x"', "not_json"),
        ("[" * 100_000, "not_json"),  # deeper than the parser's recursion limit
        ('"a string"', "not_object"),
        ("null", "not_object"),
        ('{"timestamp": "2024-05-01T12:00:00Z"}', "no_event"),
        ('{"event": "", "timestamp": "2024-05-01T12:00:00Z"}', "no_event"),
        ('{"event": ["resilient_ws.x"]}', "no_event"),
        ('{"event": "resilient_ws.link_opened"}', "bad_timestamp"),
        ('{"event": "resilient_ws.link_opened", "timestamp": 1714564800}', "bad_timestamp"),
        ('{"event": "resilient_ws.link_opened", "timestamp": "2024-13-01"}', "bad_timestamp"),
        ('{"event": "httpx.request", "timestamp": "nope"}', FOREIGN),
    ],
)
def test_parse_line_says_why_a_line_is_not_an_event(text: str, reason: str) -> None:
    assert parse_line(text) == reason


def test_parse_line_keeps_name_level_fields_and_place() -> None:
    text = (
        '{"event": "resilient_ws.link_opened", "level": "info",'
        ' "timestamp": "2024-05-01T12:00:00Z", "link": 2}'
    )
    event = parse_line(text, source="app.log", line=7)
    assert event == LogEvent(
        at=T0, name="link_opened", level="info", fields=json.loads(text), source="app.log", line=7
    )


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.000000Z",
        "2024-05-01T12:00:00+00:00",
        "2024-05-01T14:00:00+02:00",
        "2024-05-01T12:00:00",  # no zone: UTC
    ],
)
def test_parse_timestamp_forms(stamp: str) -> None:
    assert parse_timestamp(stamp) == T0


def test_read_log_merges_sources_in_time_order() -> None:
    client = [INCIDENT[0], INCIDENT[13]]  # at 0 s and 40.5 s
    server = [INCIDENT[11]]  # loop_stalled at 30 s, between the two
    log = read_log([("client.log", client), ("server.log", server)])
    names = [event.name for event in log.events]
    assert names == ["connect_started", "loop_stalled", "link_closed"]
    assert [(event.source, event.line) for event in log.events] == [
        ("client.log", 1),
        ("server.log", 1),
        ("client.log", 2),
    ]
    assert log.summary.sources == ("client.log", "server.log")


def test_bad_lines_are_counted_and_located(incident_file: Path) -> None:
    with incident_file.open(encoding="utf-8") as lines:
        report = analyze(read_log([("x.log", lines)]))
    summary = report.input
    n = len(INCIDENT)
    assert summary.lines == n + len(GARBAGE)
    assert summary.events == n + 1  # the last garbage line is a good event...
    assert summary.unattributed == 1  # ... without a connection_id
    assert summary.foreign == 1
    assert summary.bad_lines == 6
    assert summary.bad_by_reason == {
        "not_json": 1,
        "not_object": 1,
        "no_event": 2,
        "bad_timestamp": 2,
    }
    assert summary.first_bad == (
        BadLine("x.log", n + 1, "not_json"),
        BadLine("x.log", n + 2, "not_object"),
        BadLine("x.log", n + 3, "no_event"),
        BadLine("x.log", n + 4, "no_event"),
        BadLine("x.log", n + 5, "bad_timestamp"),
    )
    assert len(summary.first_bad) == MAX_BAD_EXAMPLES
    # The garbage changed none of the figures.
    assert report.totals == analyze_lines(INCIDENT).totals


def test_fields_of_the_wrong_type_count_as_absent() -> None:
    report = analyze_lines(
        [
            line(0, "link_opened", connection_id=A, link="one"),
            line(1, "session_resumed", connection_id=A, resent="many"),
            line(2, "session_resumed", connection_id=A, resent=True),
            line(3, "messages_lost", connection_id=A, first=-1, last={"x": 1}),
            line(4, "link_closed", connection_id=A, verdict=7, uptime="long", error_type=None),
            line(5, "loop_stalled", duration="forever"),
            line(5, "loop_stalled", duration=float("inf")),  # json writes Infinity
            line(6, "peer_recovered", connection_id=A, stalled_for=-1.0),
        ]
    )
    [connection] = report.connections
    assert (connection.resumes, connection.replayed) == (2, 0)
    assert connection.gaps == (GapRecord(3.0, None, None, None),)
    assert connection.disconnects_by_verdict == {"7": 1}
    assert connection.disconnects_by_cause == {"unknown error": 1}
    assert connection.uptime == 4.0  # measured from link_opened, as "long" is no number
    assert report.loop_stalls == ()
    assert connection.peer_stalls == (PeerStall(6.0, 0.0, recovered=True),)


# ---- aggregation -----------------------------------------------------------------------------


def test_connection_figures(incident: Report) -> None:
    a = incident.connections[0]
    assert a.connection_id == A
    assert a.urls == (URL,)
    assert (a.start, a.end, a.span) == (0.0, 60.5, 60.5)
    assert a.links == 4
    assert a.uptime == 20.0 + 18.0 + 8.5 + 6.5  # the last link ends with connection_closed
    assert a.uptime_ratio == pytest.approx(53.0 / 60.5)
    assert a.state_at_end == "closed"
    assert (a.close_cause, a.undelivered) == (None, 0)
    assert (a.attempts, a.connect_failures) == (2, 1)
    assert a.connect_failures_by_cause == {"LinkUnreachable: refused": 1}
    assert a.disconnects == 3
    assert a.disconnects_by_verdict == {"connection_lost": 1, "network_dead": 1, "peer_closed": 1}
    assert a.disconnects_by_cause == {
        "LinkClosed: keepalive: network dead": 1,
        "LinkClosed: link closed with code 1001": 1,
        "LinkClosed: link closed with code 1006": 1,
    }
    assert a.reconnect_times == (2.0, 1.0, 4.0)
    reconnect = a.reconnect
    assert (reconnect.count, reconnect.p50, reconnect.p95, reconnect.max) == (3, 2.0, 4.0, 4.0)
    assert (a.resumes, a.replayed) == (2, 8)
    assert a.gaps == (GapRecord(23.0, "s1", 10, 14), GapRecord(42.0, "s1", 20, None))
    assert a.peer_stalls == (PeerStall(10.5, 2.0, recovered=True),)


def test_timeline_bands(incident: Report) -> None:
    assert incident.connections[0].timeline == (
        Band(0.5, 20.5, "connected"),
        Band(10.5, 12.5, "stalled"),
        Band(20.5, 22.5, "down"),
        Band(22.5, 40.5, "connected"),
        Band(40.5, 41.5, "down"),
        Band(41.5, 50.0, "connected"),
        Band(50.0, 54.0, "down"),
        Band(54.0, 60.5, "connected"),
    )


def test_what_is_open_ends_with_the_log(incident: Report) -> None:
    b = incident.connections[1]
    assert b.connection_id == B
    assert (b.start, b.end, b.state_at_end) == (55.0, 62.0, "unknown")
    assert b.peer_stalls == (PeerStall(55.0, 7.0, recovered=False),)
    assert b.timeline == (Band(55.0, 62.0, "stalled"),)
    assert (b.links, b.uptime, b.uptime_ratio) == (0, 0.0, 0.0)


def test_a_link_still_open_counts_up_to_the_log_end() -> None:
    report = analyze_lines(
        [
            line(0, "connect_started", connection_id=A, attempt=1),
            line(1, "connect_failed", connection_id=A, verdict="unreachable", uptime=None),
            line(2, "connect_started", connection_id=A, attempt=2),
            line(3, "link_opened", connection_id=A, link=1),
            line(9, "loop_stalled", duration=0.5),
        ]
    )
    [a] = report.connections
    assert (a.state_at_end, a.end, a.uptime) == ("connected", 9.0, 6.0)
    # A failed first connect is an outage, but not a reconnect.
    assert a.timeline == (Band(0.0, 3.0, "down"), Band(3.0, 9.0, "connected"))
    assert a.reconnect.count == 0


def test_a_fatal_close_leaves_the_connection_down() -> None:
    report = analyze_lines(
        [
            line(0, "link_opened", connection_id=A, link=1),
            line(
                4,
                "link_closed",
                connection_id=A,
                verdict="peer_closed",
                fatal=True,
                uptime=4.0,
                error_type="LinkClosed",
                cause="link closed with code 1008",
            ),
            line(5, "connection_closed", connection_id=A, cause="link closed with code 1008"),
        ]
    )
    [a] = report.connections
    assert a.timeline == (Band(0.0, 4.0, "connected"), Band(4.0, 5.0, "down"))
    assert (a.reconnect.count, a.state_at_end) == (0, "closed")
    assert a.close_cause == "link closed with code 1008"


def test_totals(incident: Report) -> None:
    t = incident.totals
    assert (t.connections, t.links, t.disconnects, t.connect_failures) == (2, 4, 3, 1)
    assert t.disconnects_by_verdict == {"connection_lost": 1, "network_dead": 1, "peer_closed": 1}
    assert (t.reconnect.count, t.reconnect.p50, t.reconnect.max) == (3, 2.0, 4.0)
    assert (t.replayed, t.gaps, t.messages_lost, t.gaps_open_ended) == (8, 2, 5, 1)
    assert (t.sessions_lost, t.peer_stalls) == (0, 2)
    assert (t.loop_stalls, t.loop_stalled_for) == (3, 4.25)


def test_session_lost_is_counted() -> None:
    report = analyze_lines([line(0, "session_lost", connection_id=A, session_id="s", unacked=7)])
    [a] = report.connections
    assert (a.sessions_lost, a.unacked_lost, report.totals.sessions_lost) == (1, 7, 1)


def test_loop_stalls_by_culprit(incident: Report) -> None:
    assert [(s.at, s.duration, s.culprit) for s in incident.loop_stalls] == [
        (30.0, 1.5, "app.py:10 crunch"),
        (45.0, 0.75, "app.py:10 crunch"),
        (62.0, 2.0, None),
    ]
    assert incident.culprits == (
        Culprit("app.py:10 crunch", 2, 2.25, 1.5),
        Culprit(None, 1, 2.0, 2.0),
    )


def test_samples_are_the_logged_keepalive_values(incident: Report) -> None:
    srtt = [(s.at, s.value) for s in incident.samples if s.name == "srtt"]
    assert srtt == [(40.5, 0.125)]
    timeouts = [(s.at, s.value) for s in incident.samples if s.name == "timeout"]
    assert timeouts == [(10.5, 0.5), (20.5, 0.5), (40.5, 0.25), (40.5, 0.5), (50.0, 0.5)]


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([1.0], 50, 1.0),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([3.0, 1.0, 2.0], 95, 3.0),
        ([1.0, 2.0], 50, 1.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


def test_an_empty_log_is_an_empty_report() -> None:
    report = analyze_lines([])
    assert (report.start, report.end, report.duration, report.connections) == (None, None, 0.0, ())
    assert "no events" in render_text(report)
    assert json.loads(render_json(report))["totals"]["connections"] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=20))
def test_arbitrary_text_never_crashes(lines: list[str]) -> None:
    report = analyze_lines(lines)
    render_text(report)
    render_json(report)


_NAMES = st.sampled_from(
    [
        "link_opened",
        "link_closed",
        "connect_failed",
        "peer_stalled",
        "peer_recovered",
        "connection_closed",
        "session_resumed",
        "messages_lost",
        "session_lost",
        "loop_stalled",
    ]
)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
_FIELDS = st.sampled_from(
    [
        "connection_id",
        "uptime",
        "verdict",
        "cause",
        "error_type",
        "resent",
        "first",
        "last",
        "unacked",
        "stalled_for",
        "duration",
        "culprit",
        "undelivered",
        "url",
        "srtt",
        "timeout",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 100), _NAMES, st.dictionaries(_FIELDS, _VALUES, max_size=6), st.booleans()
        ),
        max_size=25,
    )
)
# Found by CI: two finite durations whose total overflows to infinity crashed the text.
@example([(0.0, "loop_stalled", {"connection_id": None, "duration": 8.98846567431158e307},
           False)] * 2)  # fmt: skip
def test_well_formed_events_with_any_field_values_never_crash(
    events: list[tuple[float, str, dict[str, Any], bool]],
) -> None:
    lines = [
        line(t, name, **{**fields, "connection_id": A} if with_id else fields)
        for t, name, fields, with_id in events
    ]
    report = analyze_lines(lines)
    json.loads(render_json(report))
    render_text(report)
    for connection in report.connections:
        assert connection.span >= 0
        assert all(band.end >= band.start for band in connection.timeline)


# ---- rendering -------------------------------------------------------------------------------


def test_json_round_trip(incident: Report) -> None:
    data = json.loads(render_json(incident))
    assert data == report_to_dict(incident)
    assert data["schema_version"] == 1
    assert data["start"] == "2024-05-01T12:00:00Z"
    assert data["end"] == "2024-05-01T12:01:02Z"
    a = data["connections"][0]
    assert a["disconnects_by_verdict"] == {
        "connection_lost": 1,
        "network_dead": 1,
        "peer_closed": 1,
    }
    assert a["reconnect"] == {"count": 3, "p50": 2.0, "p95": 4.0, "max": 4.0}
    assert a["gaps"][1] == {"at": 42.0, "session_id": "s1", "first": 20, "last": None}
    assert a["timeline"][0] == {"start": 0.5, "end": 20.5, "state": "connected"}
    assert data["culprits"][0] == {
        "culprit": "app.py:10 crunch",
        "count": 2,
        "total": 2.25,
        "max": 1.5,
    }
    assert data["totals"]["replayed"] == 8


def test_text_has_the_key_figures(incident: Report) -> None:
    text = render_text(incident)
    assert "connections 2, links 4, disconnects 3" in text
    assert "connection_lost 1, network_dead 1, peer_closed 1" in text
    assert "time to reconnect 3: p50 2.000 s, p95 4.000 s, max 4.000 s" in text
    assert "messages replayed 8, gaps 2 (5 message(s) lost, 1 open-ended)" in text
    assert f"connection {A}  {URL}" in text
    assert "span 60.5 s, uptime 53.0 s (87.6%) over 4 link(s), closed at the end" in text
    assert "1 x LinkClosed: link closed with code 1006" in text
    assert "peer stalls 1, longest 2.000 s, 0 open" in text  # connection A
    assert "peer stalls 1, longest 7.000 s, 1 open" in text  # connection B
    assert "server loop stalls 3, total 4.250 s, longest 2.000 s" in text
    assert "2 x, total 2.250 s, max 1.500 s: app.py:10 crunch" in text


def test_text_reports_bad_lines(incident_file: Path) -> None:
    with incident_file.open(encoding="utf-8") as lines:
        text = render_text(analyze(read_log([("x.log", lines)])))
    assert "bad lines: 6 (not_json 1, not_object 1, no_event 2, bad_timestamp 2)" in text
    assert f"first: x.log:{len(INCIDENT) + 1} (not_json)" in text
    assert "1 other event(s) ignored" in text


# ---- the command -----------------------------------------------------------------------------


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resilient_ws.tools", "analyze", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_report(incident_file: Path) -> None:
    result = _cli(str(incident_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "connections 2, links 4, disconnects 3" in result.stdout
    assert "bad lines: 6" in result.stdout


def test_cli_json(incident_file: Path) -> None:
    result = _cli("--json", str(incident_file))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["disconnects"] == 3
    assert data["input"]["bad_lines"] == 6
    assert data["input"]["sources"] == [str(incident_file)]


def test_cli_reads_stdin_with_undecodable_bytes() -> None:
    payload = "\n".join(INCIDENT).encode() + b"\n\xff\xfe not utf-8\n"
    result = subprocess.run(
        [sys.executable, "-m", "resilient_ws.tools", "analyze", "--json"],
        input=payload,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["input"]["sources"] == ["-"]
    assert data["totals"]["links"] == 4
    assert data["input"]["bad_by_reason"] == {"not_json": 1}


def test_run_reads_stdin_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-"], as_json=True, stdin=iter(INCIDENT)) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["replayed"] == 8


def test_several_files_are_one_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client, server = tmp_path / "client.log", tmp_path / "server.log"
    stalls = [text for text in INCIDENT if "loop_stalled" in text]
    client.write_text("\n".join(text for text in INCIDENT if text not in stalls), encoding="utf-8")
    server.write_text("\n".join(stalls), encoding="utf-8")
    assert main(["analyze", "--json", str(server), str(client)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"] == report_to_dict(analyze_lines(INCIDENT))["totals"]


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "nope.log")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_help_lists_analyze(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "analyze" in capsys.readouterr().out


def test_plot_writes_a_png(
    incident_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the cli extra")
    out = tmp_path / "timeline.png"
    assert main(["analyze", str(incident_file), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"timeline written to {out}" in capsys.readouterr().out


def test_plot_of_an_empty_log(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the cli extra")
    out = tmp_path / "empty.png"
    assert run([], plot=str(out), stdin=iter([])) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_to_an_unwritable_place(
    incident_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the cli extra")
    out = tmp_path / "no such dir" / "x.png"
    assert main(["analyze", str(incident_file), "--plot", str(out)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install_it(
    incident_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    out = tmp_path / "timeline.png"
    assert main(["analyze", str(incident_file), "--plot", str(out)]) == 2
    assert "pip install 'resilient_ws[cli]'" in capsys.readouterr().err
    assert not out.exists()


# ---- a real run ------------------------------------------------------------------------------


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """configure_json_logging() into a file; structlog's defaults are restored after."""
    path = tmp_path / "events.jsonl"
    with path.open("w", encoding="utf-8") as file:
        configure_json_logging(file=file)
        try:
            yield path
        finally:
            structlog.reset_defaults()


def _start_process_server(port: int) -> ProcessServer:
    server = ProcessServer(port)
    server.start()
    return server


@pytest.mark.anyio
async def test_a_real_run_across_server_restarts(json_log: Path) -> None:
    """A stop (close frame 1001) and a SIGKILL of the server, each followed by a restart."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    graceful = ThreadServer(port=port)
    graceful.start()
    killed: ProcessServer | None = None
    last: ProcessServer | None = None
    try:
        async with connect(url, backoff=FAST) as ws:
            events = ws.events()
            await next_event(events, Connected)
            await anyio.to_thread.run_sync(graceful.__exit__, None, None, None)
            await next_event(events, Disconnected)
            killed = await anyio.to_thread.run_sync(_start_process_server, port)
            await next_event(events, Connected)
            await anyio.to_thread.run_sync(killed.kill)
            await next_event(events, Disconnected)
            last = await anyio.to_thread.run_sync(_start_process_server, port)
            await next_event(events, Connected)
        with anyio.fail_after(TIMEOUT):
            history = [event async for event in ws.events()]
    finally:
        graceful.__exit__(None, None, None)
        for server in (killed, last):
            if server is not None:
                server.kill()
    assert isinstance(history[-1], Closed)
    disconnects = [e for e in history if isinstance(e, Disconnected) and e.uptime is not None]
    failures = [e for e in history if isinstance(e, Disconnected) and e.uptime is None]

    text = await anyio.Path(json_log).read_text("utf-8")
    report = analyze(read_log([("events.jsonl", text.splitlines())]))

    assert report.input.bad_lines == 0
    [connection] = report.connections
    assert connection.connection_id == ws.connection_id
    assert connection.links == 3
    assert connection.disconnects_by_verdict == {"connection_lost": 1, "peer_closed": 1}
    assert connection.disconnects_by_verdict == Counter(e.verdict for e in disconnects)
    assert connection.connect_failures == len(failures)
    assert connection.reconnect.count == 2
    assert connection.state_at_end == "closed"
    assert connection.close_cause is None
    assert 0 < connection.uptime <= connection.span
    assert all(0 < t <= connection.span for t in connection.reconnect_times)
    assert [band.state for band in connection.timeline] == [
        "connected",
        "down",
        "connected",
        "down",
        "connected",
    ]
