"""Deciding whether a link error is worth a reconnect.

Pure: the classifier sees only resilient_ws exceptions, never third-party ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ..exceptions import (
    HandshakeFailed,
    HandshakeRejected,
    LinkClosed,
    LinkError,
    OnConnectFailed,
    TLSVerificationFailed,
)

__all__ = ["Classifier", "Decision", "default_classifier"]

Decision = Literal["retry", "fatal"]
"""``"retry"``: reconnect after a backoff delay. ``"fatal"``: close for good and raise."""

Classifier = Callable[[LinkError], Decision]
"""A function that maps a :class:`~resilient_ws.LinkError` to a :data:`Decision`."""

# 408 Request Timeout, 425 Too Early and 429 Too Many Requests say "later", not "never".
_RETRYABLE_4XX = frozenset({408, 425, 429})
# 1003: the peer cannot accept this data type; 1007: a text message that is not UTF-8; 1008:
# policy violation; 1009: a message too big (RFC 6455 section 7.4.1), whichever side refused
# it. Reconnecting would repeat the same refusal (a replay session would even resend the
# same message). 4003: another client holding the session's
# token took it over (docs/protocol.md); resuming would take it back, and the two would
# fight over it.
_FATAL_CLOSE_CODES = frozenset({1003, 1007, 1008, 1009, 4003})


def default_classifier(error: LinkError) -> Decision:
    """The default classifier.

    Fatal: HTTP 4xx at the handshake except 408/425/429 (so 400, 401, 403, 404 among others),
    a certificate that does not verify, a handshake that cannot be negotiated, an
    ``on_connect`` hook that raised, and close codes 1003 (unsupported data), 1007 (a text
    message not in UTF-8), 1008 (policy violation), 1009 (message too big) and 4003 (the
    replay session was taken over by a newer link). 1007 and 1009 count whichever side
    refused the message (websockets reports 1006 when it refused one and the peer's
    close never came: the link's error says 1007/1009 then).

    Transient: everything else, notably refused or reset connections, timeouts, 5xx and 429
    answers, and close codes 1000, 1001, 1006, 1011, 1012 and 1013.

    Args:
        error: Why the attempt or link failed.

    Returns:
        ``"fatal"`` or ``"retry"``.
    """
    if isinstance(error, HandshakeRejected):
        fatal = 400 <= error.status < 500 and error.status not in _RETRYABLE_4XX
        return "fatal" if fatal else "retry"
    if isinstance(error, (TLSVerificationFailed, HandshakeFailed, OnConnectFailed)):
        return "fatal"
    if isinstance(error, LinkClosed) and error.code in _FATAL_CLOSE_CODES:
        return "fatal"
    return "retry"
