"""One emit: each lifecycle event knows its log event (name, level, fields), so that one
call feeds both ``Connection.events()`` and the log. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import resilient_ws
from resilient_ws import events
from resilient_ws._logging import log_event

DOCS = Path(__file__).parent.parent / "docs" / "events.md"
CAUSE = resilient_ws.LinkClosed(1011, "internal error")

# One instance of every event class, with the level its log event has.
SAMPLES: list[tuple[events.Event, int]] = [
    (events.Connecting(at=1.0, url="ws://h/", attempt=2), logging.INFO),
    (events.Connected(at=1.0, url="ws://h/", link=1, subprotocol=None, flushed=3), logging.INFO),
    (
        events.Disconnected(
            at=1.0,
            url="ws://h/",
            cause=CAUSE,
            fatal=False,
            verdict="peer_closed",
            uptime=2.5,
            timeout=1.0,
        ),
        logging.INFO,
    ),
    (events.Reconnecting(at=1.0, attempt=2, delay=0.5, url="ws://h/"), logging.INFO),
    (
        events.PeerStalled(at=1.0, url="ws://h/", evidence="tcp_acked", timeout=1.5),
        logging.WARNING,
    ),
    (events.PeerRecovered(at=1.0, url="ws://h/", stalled_for=3.0), logging.INFO),
    (events.MessagesDropped(at=1.0, count=2, size=10), logging.INFO),
    (events.InboundDropped(at=1.0, link=1, count=4), logging.INFO),
    (events.Closed(at=1.0, cause=None, undelivered=0), logging.INFO),
    (events.Resumed(at=1.0, session_id="s", link=2, resent=5), logging.INFO),
    (events.Gap(at=1.0, session_id="s", first=3, last=4, reason="overflow"), logging.WARNING),
    (events.SessionLost(at=1.0, session_id="s", unacked=2, resent=2), logging.WARNING),
    (
        events.Resent(at=1.0, link=1, resent=2, uncertain=0, overflowed=0, evidence="none"),
        logging.INFO,
    ),
]


def test_every_event_class_has_a_sample() -> None:
    classes = {getattr(events, name) for name in events.__all__} - {events.Event}
    assert {type(event) for event, _ in SAMPLES} == classes - {events.EventsMissed}


@pytest.mark.parametrize(("event", "level"), SAMPLES, ids=lambda e: type(e).__name__)
def test_an_emitted_event_logs_its_own_fields(event: events.Event, level: int) -> None:
    with capture_logs() as logs:
        log_event(event, connection_id="c1")
    [entry] = logs
    assert entry.pop("event") == f"resilient_ws.{event.log_name}"
    assert entry.pop("log_level") == logging.getLevelName(level).lower()
    assert entry.pop("connection_id") == "c1"
    own = {f.name for f in dataclasses.fields(event)} - {"at"}
    # Every field of the event is in the log (the cause as text); only the log's own
    # additions (a cause's type, code and status) are not in the event.
    assert own <= entry.keys()
    assert entry.keys() - own <= {"error_type", "code", "status"}


def test_the_log_says_what_failed_and_how_severe() -> None:
    fatal = events.Disconnected(
        at=1.0, url="ws://h/", cause=CAUSE, fatal=True, verdict="peer_closed", uptime=None,
        timeout=None,
    )  # fmt: skip
    assert (fatal.log_name, fatal.log_level) == ("connect_failed", logging.WARNING)
    assert fatal.log_fields()["cause"] == str(CAUSE)
    assert (fatal.log_fields()["error_type"], fatal.log_fields()["code"]) == ("LinkClosed", 1011)
    closed = events.Closed(at=1.0, cause=CAUSE, undelivered=2)
    assert closed.log_fields() == {"cause": str(CAUSE), "undelivered": 2}
    lossy = events.Resent(at=1.0, link=1, resent=2, uncertain=0, overflowed=1, evidence="none")
    assert lossy.log_level == logging.WARNING


def test_a_subscribers_missed_events_are_not_logged() -> None:
    with capture_logs() as logs:
        log_event(events.EventsMissed(at=1.0, count=3))
    assert logs == []


def test_every_logged_event_is_in_the_documented_schema() -> None:
    documented = DOCS.read_text()
    names = {event.log_name for event, _ in SAMPLES} | {"link_closed", "connect_failed"}
    assert not [name for name in names if f"`resilient_ws.{name}`" not in documented]
