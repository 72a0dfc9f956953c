from __future__ import annotations

import pytest

from resilient_ws import (
    HandshakeFailed,
    HandshakeRejected,
    LinkClosed,
    LinkError,
    LinkUnreachable,
    OnConnectFailed,
    TLSVerificationFailed,
    default_classifier,
)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_at_the_handshake_are_fatal(status: int) -> None:
    assert default_classifier(HandshakeRejected(status)) == "fatal"


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
def test_temporary_statuses_are_retried(status: int) -> None:
    assert default_classifier(HandshakeRejected(status, retry_after=1.0)) == "retry"


@pytest.mark.parametrize(
    "error",
    [
        TLSVerificationFailed("self-signed certificate"),
        HandshakeFailed("no subprotocol"),
        OnConnectFailed("auth refused"),
    ],
)
def test_non_negotiable_failures_are_fatal(error: LinkError) -> None:
    assert default_classifier(error) == "fatal"


@pytest.mark.parametrize("code", [1003, 1007, 1008, 1009, 4003])
def test_refusing_close_codes_are_fatal(code: int) -> None:
    assert default_classifier(LinkClosed(code, "no")) == "fatal"


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 1012, 1013])
def test_other_close_codes_are_retried(code: int) -> None:
    assert default_classifier(LinkClosed(code)) == "retry"


def test_unreachable_is_retried() -> None:
    assert default_classifier(LinkUnreachable("connection refused")) == "retry"
