from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from resilient_ws import configure_json_logging, redact_url
from resilient_ws._logging import log


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Leave structlog as it was: ``capture_logs()`` and ``configure()`` mark it configured."""
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    saved = {**config, "processors": list(config["processors"])}
    yield
    structlog.reset_defaults()
    if was_configured:
        structlog.configure(**saved)


@pytest.fixture
def unconfigured() -> None:
    structlog.reset_defaults()
    assert not structlog.is_configured()


# ---- redact_url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://user:hunter2@example.com/feed", "wss://***@example.com/feed"),
        ("wss://hunter2@example.com:8443/feed", "wss://***@example.com:8443/feed"),
        ("wss://example.com/feed?token=hunter2", "wss://example.com/feed?token=***"),
        ("wss://example.com/feed?api_key=hunter2", "wss://example.com/feed?api_key=***"),
        (
            "wss://example.com/feed?client_secret=hunter2",
            "wss://example.com/feed?client_secret=***",
        ),
        ("wss://example.com/feed?Signature=hunter2", "wss://example.com/feed?Signature=***"),
        ("wss://example.com/feed?password=hunter2", "wss://example.com/feed?password=***"),
        ("wss://example.com/feed?passwd=hunter2", "wss://example.com/feed?passwd=***"),
        ("wss://example.com/feed?access_token=hunter2", "wss://example.com/feed?access_token=***"),
    ],
)
def test_redacts_credentials(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "hunter2" not in redacted


def test_keeps_other_params_host_and_path() -> None:
    url = "wss://u:p@feed.example.com:8443/v2/stream?channel=btc&token=s3cret&depth=10"
    assert (
        redact_url(url)
        == "wss://***@feed.example.com:8443/v2/stream?channel=btc&token=***&depth=10"
    )


@pytest.mark.parametrize(
    "url", ["ws://localhost:8765/", "wss://example.com/feed?channel=btc&depth=10"]
)
def test_clean_urls_are_unchanged(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize("url", ["wss://[::1/feed?token=s3cret", "wss://u:s3cret@[nope/"])
def test_malformed_url_does_not_crash_or_leak(url: str) -> None:
    redacted = redact_url(url)
    assert isinstance(redacted, str)
    assert "s3cret" not in redacted


def test_not_a_url_passes_through() -> None:
    assert redact_url("not a url") == "not a url"


# ---- log ---------------------------------------------------------------------------------


def test_events_are_named_and_flat() -> None:
    with capture_logs() as logs:
        log("reconnect_scheduled", attempt=2, delay=0.5, url="wss://example.com/")
        log("link_closed", level=logging.WARNING, code=1006)
    assert logs == [
        {
            "event": "resilient_ws.reconnect_scheduled",
            "log_level": "info",
            "attempt": 2,
            "delay": 0.5,
            "url": "wss://example.com/",
        },
        {"event": "resilient_ws.link_closed", "log_level": "warning", "code": 1006},
    ]


@pytest.mark.usefixtures("unconfigured")
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_prints_nothing_when_structlog_is_not_configured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, level: int
) -> None:
    # Without pytest's capture handler on the root logger, a record that reached no
    # handler would go to logging.lastResort, which prints to stderr.
    monkeypatch.setattr(logging.root, "handlers", [])
    log("connect_started", level=level, attempt=1, url="wss://example.com/")
    assert capsys.readouterr() == ("", "")
    assert not structlog.is_configured()


@pytest.mark.usefixtures("unconfigured")
def test_falls_back_to_the_stdlib_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="resilient_ws"):
        log("connect_started", attempt=1)
    [record] = caplog.records
    assert record.name == "resilient_ws"
    assert record.getMessage() == "resilient_ws.connect_started attempt=1"
    assert record.resilient_ws == {"attempt": 1}  # type: ignore[attr-defined]


# ---- configure_json_logging --------------------------------------------------------------


def test_json_logging_writes_one_json_line_per_event() -> None:
    out = io.StringIO()
    configure_json_logging(out)
    log("connect_started", attempt=1, url="wss://example.com/")
    log("link_closed", level=logging.WARNING, code=1006, uptime=1.5)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "resilient_ws.connect_started"
    assert first["level"] == "info"
    assert (first["attempt"], first["url"]) == (1, "wss://example.com/")
    assert "timestamp" in first
    assert second["event"] == "resilient_ws.link_closed"
    assert second["level"] == "warning"
    assert (second["code"], second["uptime"]) == (1006, 1.5)


def test_json_logging_filters_by_level() -> None:
    out = io.StringIO()
    configure_json_logging(out, level=logging.WARNING)
    log("connect_started", attempt=1)
    log("connection_failed", level=logging.ERROR, cause="boom")
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["event"] == "resilient_ws.connection_failed"
