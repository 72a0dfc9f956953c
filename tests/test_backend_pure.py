from __future__ import annotations

import asyncio
import ssl
import traceback
from datetime import datetime, timezone

import pytest
import trio
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosedError,
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
)
from websockets.frames import Close
from websockets.http11 import Response

import resilient_ws
from resilient_ws import (
    HandshakeFailed,
    HandshakeRejected,
    LinkClosed,
    LinkUnreachable,
    TLSVerificationFailed,
)
from resilient_ws._io.backend import check_url, parse_retry_after, translate

# ---- check_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ws://localhost/", "ws://127.0.0.1:8765", "wss://example.com:8443/feed?channel=btc"],
)
def test_check_url_accepts_websocket_urls(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["http://example.com/", "", "not a url", "wss://", 42, None,
     "ws://example.com:99999/", "ws://example.com:abc/", "ws://example.com:-1/"],
)  # fmt: skip
def test_check_url_rejects(url: object) -> None:
    with pytest.raises(resilient_ws.InvalidURL) as info:
        check_url(url)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, resilient_ws.ResilientWSError)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@example.com/?token=s3cret",
        "ws://user:hunter2@example.com:0x/?token=s3cret",
    ],
)
def test_an_invalid_url_never_shows_its_secrets(url: str) -> None:
    """Issue 11: the message, repr and cause of InvalidURL showed user:password and token."""
    with pytest.raises(resilient_ws.InvalidURL) as info:
        check_url(url)
    error = info.value
    shown = [str(error), repr(error), error.url, repr(error.__cause__), repr(error.__context__)]
    shown += traceback.format_exception(error)
    assert not [text for text in shown if "hunter2" in text or "s3cret" in text]
    assert "example.com" in str(error)


# ---- parse_retry_after -------------------------------------------------------------------

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 08:28:00 GMT", 3600.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "7s", "Wed, 99 Foo 2015"])
def test_parse_retry_after_invalid_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_parse_retry_after_superscript_digit_is_none() -> None:
    assert parse_retry_after("\u00b2", NOW) is None


def test_parse_retry_after_asctime_date() -> None:
    assert parse_retry_after("Wed Oct 21 07:28:30 2015", NOW) == 30.0


# ---- translate ---------------------------------------------------------------------------


def test_rejected_status_with_retry_after() -> None:
    response = Response(503, "Service Unavailable", Headers({"Retry-After": "7"}))
    error = translate(InvalidStatus(response), now=NOW)
    assert isinstance(error, HandshakeRejected)
    assert (error.status, error.retry_after) == (503, 7.0)


def test_rejected_status_without_retry_after() -> None:
    error = translate(InvalidStatus(Response(403, "Forbidden", Headers())), now=NOW)
    assert isinstance(error, HandshakeRejected)
    assert (error.status, error.retry_after) == (403, None)


def test_cert_verification_failure() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    error = translate(exc)
    assert isinstance(error, TLSVerificationFailed)
    assert "self-signed certificate" in str(error)


def test_cert_verification_failure_on_trio() -> None:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "self-signed certificate"
    exc = trio.BrokenResourceError()
    exc.__cause__ = cause
    assert isinstance(translate(exc), TLSVerificationFailed)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(),
        TimeoutError("timed out during opening handshake"),
        EOFError(),
        trio.BrokenResourceError(),
    ],
)
def test_network_failures_are_unreachable(exc: BaseException) -> None:
    error = translate(exc)
    assert isinstance(error, LinkUnreachable)
    assert str(error)


def test_connection_lost_during_handshake_is_unreachable() -> None:
    exc = InvalidMessage("did not receive a valid HTTP response")
    exc.__cause__ = EOFError("connection closed while reading HTTP status line")
    assert isinstance(translate(exc), LinkUnreachable)


@pytest.mark.parametrize(
    "exc", [InvalidHeader("Sec-WebSocket-Accept"), ssl.SSLError(1, "wrong version number")]
)
def test_handshake_failures(exc: BaseException) -> None:
    assert isinstance(translate(exc), HandshakeFailed)


def test_close_frame_received() -> None:
    error = translate(ConnectionClosedError(Close(1008, "policy"), None))
    assert isinstance(error, LinkClosed)
    assert (error.code, error.reason) == (1008, "policy")


def test_closed_without_close_frame_is_1006() -> None:
    error = translate(ConnectionClosedError(None, None))
    assert isinstance(error, LinkClosed)
    assert (error.code, error.reason) == (1006, "")


def test_link_error_passes_through() -> None:
    error = LinkClosed(1001)
    assert translate(error) is error


@pytest.mark.parametrize("exc", [KeyError("bug"), asyncio.CancelledError()])
def test_unrelated_exceptions_are_reraised_unchanged(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as info:
        translate(exc)
    assert info.value is exc


@pytest.mark.parametrize("option", ["ping_interval", "ping_timeout"])
def test_websockets_keepalive_beside_ours_is_refused_on_both_sides(option: str) -> None:
    """Two keepalives would fight over the same link: say so when the option is passed,
    on the client and the server; with ``keepalive=None`` websockets' own is the one."""

    async def handler(session: resilient_ws.ServerSession) -> None:
        pass

    with pytest.raises(TypeError, match="conflict with keepalive="):
        resilient_ws.connect("ws://127.0.0.1:1/", **{option: 5.0})
    with pytest.raises(TypeError, match="conflict with keepalive="):
        resilient_ws.serve(handler, "127.0.0.1", 0, **{option: 5.0})
    resilient_ws.connect("ws://127.0.0.1:1/", keepalive=None, **{option: 5.0})
    resilient_ws.serve(handler, "127.0.0.1", 0, keepalive=None, **{option: 5.0})
