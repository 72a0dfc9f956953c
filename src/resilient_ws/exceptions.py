"""Exceptions raised by resilient_ws.

Every exception the library raises on purpose derives from :class:`ResilientWSError`.
Third-party exceptions (``websockets``, ``OSError``, ``ssl``) are wrapped at the boundary
with ``raise ... from exc``, so the original stays available as ``__cause__``.

The tree::

    ResilientWSError
    ├── InvalidURL              you passed a URL that is not ws:// or wss:// (also ValueError)
    ├── ConcurrencyError        two tasks called recv() at once (also RuntimeError)
    ├── QueueFull               send() while disconnected with SendQueue(when_full="raise")
    ├── ProtocolViolation       the peer broke the replay protocol; its link closes with .code
    ├── ConnectionClosed        the connection is closed for good; no more messages
    │   ├── ConnectionClosedOK      closed by the application (close() or leaving ``async with``)
    │   └── ConnectionFailed        ended by a fatal link error; ``.cause`` is that LinkError
    │       └── RetryBudgetExhausted    Backoff.max_attempts or max_elapsed ran out
    └── LinkError               one connection attempt or one link failed (what a classifier sees)
        ├── LinkUnreachable         TCP connect/read failed or timed out (refused, reset, DNS...)
        ├── TLSVerificationFailed   the server's certificate did not verify
        ├── HandshakeRejected       the server answered the upgrade with an HTTP status
        ├── HandshakeFailed         the opening handshake was malformed or not negotiable
        ├── LinkClosed              an open link ended (close frame or lost TCP connection)
        └── OnConnectFailed         the on_connect hook raised; its exception is __cause__

Misuse of the API (``InvalidURL``, ``ConcurrencyError``, ``TypeError`` for a message that is
neither ``str`` nor ``bytes``) is separate from failures of the peer or the network
(``LinkError`` and ``ConnectionFailed``).
"""

from __future__ import annotations

__all__ = [
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionFailed",
    "HandshakeFailed",
    "HandshakeRejected",
    "InvalidURL",
    "LinkClosed",
    "LinkError",
    "LinkUnreachable",
    "OnConnectFailed",
    "ProtocolViolation",
    "QueueFull",
    "ResilientWSError",
    "RetryBudgetExhausted",
    "TLSVerificationFailed",
]


class ResilientWSError(Exception):
    """Root of every exception raised by resilient_ws."""


class InvalidURL(ResilientWSError, ValueError):
    """A URL is not a valid ``ws://`` or ``wss://`` URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid WebSocket URL {url!r}: {reason}")
        self.url = url
        self.reason = reason


class ConcurrencyError(ResilientWSError, RuntimeError):
    """Two tasks used an operation that only one task may run at a time (``recv()``)."""


class QueueFull(ResilientWSError):
    """The send queue is full and its policy is ``when_full="raise"``.

    The message passed to the failing ``send()`` was not queued; nothing else was dropped.
    """


class ProtocolViolation(ResilientWSError):
    """The peer broke the replay protocol (docs/protocol.md): a malformed control message
    or ``RWS-*`` header, or a message number out of range.

    Raised before any state changes, so the object that raised it is still consistent. The
    link it arrived on is closed with :attr:`code`; what the other side then sees is a
    :class:`LinkClosed` with that code.

    Attributes:
        code: The WebSocket close code: 4001 (malformed: a control message, header or
            number that does not parse, or a number that is not an integer >= 0) or 4002
            (an ack or resume number out of range).
        reason: A short explanation, fit for the close frame's reason (ASCII, < 123 bytes).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"protocol violation {code}: {reason}")
        self.code = code
        self.reason = reason


class ConnectionClosed(ResilientWSError):
    """The connection is closed for good: it will not reconnect.

    Attributes:
        cause: The link error that ended it, or ``None`` when the application closed it.
    """

    def __init__(self, message: str, cause: LinkError | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ConnectionClosedOK(ConnectionClosed):
    """The application closed the connection."""


class ConnectionFailed(ConnectionClosed):
    """A fatal error ended the connection; ``cause`` says which."""

    cause: LinkError


class RetryBudgetExhausted(ConnectionFailed):
    """Reconnecting gave up: ``Backoff.max_attempts`` or ``Backoff.max_elapsed`` ran out.

    ``cause`` is the error of the last attempt.
    """


class LinkError(ResilientWSError):
    """One connection attempt, or one established link, failed.

    A classifier (see :func:`resilient_ws.default_classifier`) decides whether a
    ``LinkError`` is transient (reconnect) or fatal (raise :class:`ConnectionFailed`).
    """


class LinkUnreachable(LinkError):
    """The TCP connection could not be opened or kept (refused, reset, DNS, timeout)."""


class TLSVerificationFailed(LinkError):
    """The server's TLS certificate did not verify."""


class HandshakeRejected(LinkError):
    """The server answered the WebSocket upgrade with an HTTP status instead of 101.

    Attributes:
        status: The HTTP status code.
        retry_after: Seconds from the ``Retry-After`` header, when present and valid.
    """

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"server rejected the WebSocket upgrade: HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class HandshakeFailed(LinkError):
    """The opening handshake failed for a reason other than an HTTP status."""


class LinkClosed(LinkError):
    """An open link ended.

    Attributes:
        code: The close code received from the peer, or 1006 when the TCP connection
            was lost without a close frame (RFC 6455 section 7.4.1).
        reason: The close reason received from the peer, possibly empty.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"link closed with code {code}{detail}")
        self.code = code
        self.reason = reason


class OnConnectFailed(LinkError):
    """The ``on_connect`` hook raised. Its exception is ``__cause__``. Fatal by default."""
