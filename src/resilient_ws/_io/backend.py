"""The boundary with websockets: pick its asyncio or trio client, translate its exceptions.

This is the only client module that imports websockets. It hands the I/O layer a
``RawLink`` (the websockets connection object) and turns every failure into a
:class:`~resilient_ws.LinkError`.
"""

from __future__ import annotations

import datetime
import email.utils
import errno
import functools
import math
import socket
import ssl
import struct
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Protocol

import anyio
import sniffio
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State
from websockets.uri import parse_uri

from .._core import tcpinfo as _tcpinfo
from .._core.protocol import Beacon
from .._logging import redact_url
from ..exceptions import (
    HandshakeFailed,
    HandshakeRejected,
    InvalidURL,
    LinkClosed,
    LinkError,
    LinkUnreachable,
    TLSVerificationFailed,
)
from . import sockopts as _sockopts
from . import timers as _timers
from .hooks import (
    MAX_CONTROL_FRAMES,
    ControlHandler,
    connection_class,
    is_trio_stream_error,
    peer_address,
    send_control,
)

__all__ = [
    "MAX_CONTROL_FRAMES",
    "ConnectionClosed",
    "ControlHandler",
    "RawLink",
    "abort_link",
    "acked_now",
    "acked_offset",
    "check_url",
    "close_link",
    "connection_class",
    "forget_handshake",
    "header_dict",
    "is_trio",
    "link_closed_error",
    "offer_subprotocol",
    "open_link",
    "parse_retry_after",
    "peer_address",
    "resolve_proxy",
    "response_headers",
    "resume_reading",
    "run_hook",
    "POISONED",
    "ping",
    "pong",
    "send_control",
    "timed_out",
    "translate",
    "wait_link_closed",
]

# RFC 6455 section 7.4.1: 1006 is reserved for "closed without a close frame".
ABNORMAL_CLOSURE = 1006
# Longest wait for websockets to finish closing a link we are leaving.
EXIT_TIMEOUT = 5.0


class RawLink(Protocol):
    """The part of websockets' asyncio and trio ``ClientConnection`` the I/O layer uses."""

    @property
    def subprotocol(self) -> str | None: ...
    @property
    def close_code(self) -> int | None: ...
    @property
    def close_reason(self) -> str | None: ...
    async def recv(self) -> str | bytes: ...
    async def send(self, message: str | bytes) -> None: ...
    async def wait_closed(self) -> None: ...
    @property
    def last_inbound(self) -> float:
        """Event-loop time of the last frame received (set by our connection subclasses)."""

    @property
    def last_data(self) -> float:
        """Event-loop time of the last message frame received or sent."""

    @property
    def last_beacon(self) -> Beacon | None:
        """The peer's last lag beacon, if it sends them."""

    @property
    def bytes_written(self) -> int:
        """Bytes handed to the transport so far, handshake included (set by our
        connection subclasses): the offset where the last frame written ends."""

    control: ControlHandler | None
    """Where control messages go, on a link that negotiated the replay protocol."""


def check_url(url: str) -> str:
    """Validate a WebSocket URL now, so that a typo fails at ``connect()``, not at a retry.

    Raises:
        InvalidURL: ``url`` is not a valid ``ws://`` or ``wss://`` URL.
    """
    if not isinstance(url, str):
        raise InvalidURL(repr(url), "a URL must be a str")
    try:
        parse_uri(url)
    except InvalidURI as exc:
        reason = exc.msg
    except ValueError as exc:  # a port out of range, or not a number
        reason = str(exc)
    else:
        return url
    # Not chained, and redacted: the URL may hold a password or a token.
    raise InvalidURL(redact_url(url), reason) from None


def is_trio() -> bool:
    """Whether the running event loop is trio's."""
    return sniffio.current_async_library() == "trio"


def resolve_proxy(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for connecting to ``url``, with websockets' ``proxy=True`` resolved.

    With ``proxy=True`` (its default) websockets reads the proxy settings from the
    environment at every connect (``urllib.request.getproxies()`` walks ``os.environ``
    twice): a large share of a reconnect's CPU when thousands of clients reconnect at once.
    Called once per URL, this reads them once; the outcome (a proxy URL, or ``None`` for
    a direct connection, also for a redirect that ``url`` answers with) goes to every
    connect to ``url``. An explicit ``proxy`` (a URL or ``None``), a Unix socket and a
    ``sock=`` connection (websockets never proxies those) are left as they are.
    """
    explicit = options.get("proxy", True) is not True
    if explicit or options.get("unix") or options.get("sock") is not None:
        return options
    from websockets.proxy import get_proxy

    return {**options, "proxy": get_proxy(parse_uri(url))}


MAX_OPENING = 64
"""Opening handshakes one event loop has in flight to one server address at a time;
more wait for a turn before they start (their ``open_timeout`` runs from then)."""

# Per event loop (its timers are one object per loop): each server address's turns, while
# any attempt holds or waits for one.
_turns: weakref.WeakKeyDictionary[_timers.Timers, dict[str, anyio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


@functools.lru_cache(maxsize=64)
def _address(url: str) -> str:
    """``host:port`` of a WebSocket URL (parsed once per URL: every attempt asks)."""
    uri = parse_uri(url)
    return f"{uri.host}:{uri.port}"


@asynccontextmanager
async def _opening(url: str) -> AsyncIterator[None]:
    """A turn to open a link to ``url``'s address among at most :data:`MAX_OPENING`.

    A process that holds thousands of links to one server and lost them all at once would
    otherwise run thousands of handshakes at the same time on one loop. Each then gets a
    thousandth of the CPU, none completes within ``open_timeout``, and every retry
    repeats it: measured, 0 of 10,000 back within 60 s. In turns, they complete at the
    rate the loop can do them.
    """
    address = _address(url)
    turns = _turns.setdefault(_timers.Timers.current(), {})
    semaphore = turns.get(address)
    if semaphore is None:
        semaphore = turns[address] = anyio.Semaphore(MAX_OPENING)
    try:
        async with semaphore:
            yield
    finally:
        # Every turn free and nobody waiting: the address needs no entry.
        if semaphore.value == MAX_OPENING and not semaphore.statistics().tasks_waiting:
            turns.pop(address, None)


@asynccontextmanager
async def open_link(url: str, options: dict[str, Any]) -> AsyncIterator[RawLink]:
    """Open a websockets client connection with the running event loop's implementation.

    The connection records the arrival time of every frame in ``last_inbound``.

    Raises:
        LinkError: The attempt failed; ``__cause__`` is the original exception.
    """
    connect: Callable[..., AbstractAsyncContextManager[Any]]
    trio = is_trio()
    if trio:
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect
    options = {**options, "create_connection": connection_class("client", trio)}
    manager = connect(url, **options)
    try:
        async with _opening(url):
            raw = await manager.__aenter__()
    except Exception as exc:
        raise translate(exc) from exc
    # asyncio's connect() holds its options and a closure of a dozen cells only to open
    # the connection (or reconnect: we do that ourselves); its exit closes the connection.
    # trio's holds the nursery that the connection's tasks run in.
    leave = manager.__aexit__ if trio else raw.__aexit__
    del manager
    try:
        yield raw
    finally:
        resume_reading(raw)
        # A cancelled caller cannot wait for the peer's side of a closing handshake (a
        # silent peer would hold it for EXIT_TIMEOUT): it drops the link, as anyio's
        # streams close forcefully when cancelled. (websockets' trio close() swallows the
        # cancellation, so ask the scope rather than look for the exception.)
        cancelled = anyio.current_effective_deadline() == -math.inf
        # An asyncio link that is closed already has nothing left to close (websockets'
        # close() would only raise and catch how it closed). trio's exit also ends the
        # nursery of the connection's tasks.
        if trio or raw.state is not State.CLOSED:
            # Shielded and bounded: a cancelled caller must still release the socket.
            # A broken link may fail to close; how it broke is reported by the caller.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(EXIT_TIMEOUT),
                suppress(Exception),
            ):
                if cancelled:
                    await _drop(raw)
                await leave(None, None, None)


async def _drop(raw: Any) -> None:
    """Abort a link that its cancelled owner leaves, so that websockets' exit is immediate."""
    abort_link(raw)
    if is_trio():
        # websockets' trio reader ran in the cancelled scope too, and died before it
        # could mark the stream closed, which its close() then waits for (close_timeout).
        await raw.close_stream()


def offer_subprotocol(
    options: dict[str, Any], subprotocol: str, headers: Mapping[str, str]
) -> dict[str, Any]:
    """``options`` for websockets' ``connect`` that offer ``subprotocol`` first and add
    ``headers`` to the application's ``additional_headers`` (replacing same-named ones)."""
    from websockets.datastructures import Headers

    extra = Headers(options.get("additional_headers") or {})
    for name, value in headers.items():
        if name in extra:
            del extra[name]
        extra[name] = value
    offered = [subprotocol, *(options.get("subprotocols") or ())]
    return {**options, "additional_headers": extra, "subprotocols": offered}


def peer_host(raw: Any) -> str:
    """The link's remote host (its address without the port), or ``""`` if unknown."""
    address = peer_address(raw)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "" if address is None else str(address)


def header_dict(headers: Any) -> dict[str, str]:
    """websockets ``Headers`` as a dict with lowercase names; a repeated header maps to
    ``""``, which the replay protocol's parsers reject as malformed."""
    result: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        result[key] = "" if key in result else value
    return result


def response_headers(raw: RawLink) -> dict[str, str]:
    """The opening handshake's response headers (see :func:`header_dict`)."""
    return header_dict(getattr(raw, "response").headers)  # noqa: B009


def forget_handshake(raw: RawLink) -> None:
    """Free the opening handshake's request and response headers, read by now: a multidict
    of lists each, ~25 objects a link would otherwise keep, and every full garbage
    collection scan, for its whole life. websockets reads neither after the handshake (it
    only checks that the response is there: the object stays, its headers emptied)."""
    connection: Any = raw
    connection.request = None
    connection.response.headers.clear()


def resume_reading(raw: Any) -> None:
    """Let a link we leave read its socket again.

    websockets' trio connection stops reading while its buffer of unread messages is full
    (``max_queue``), and then never sees the link end: leaving it would wait for the
    reader task forever (its nursery is not in our cancel scope). The unread messages stay
    readable; a replay link's are resent by the peer anyway.
    """
    if getattr(raw, "recv_flow_control", None) is not None:
        raw.resume_reading()


async def run_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call an application's websockets hook (``process_request``...), sync or async; its
    result."""
    result = hook(*args)
    if isinstance(result, Awaitable):
        result = await result
    return result


async def close_link(raw: RawLink, code: int, reason: str) -> None:
    """Run the closing handshake (asyncio ``close()``, trio ``aclose()``)."""
    # The two implementations name it differently; RawLink can declare neither.
    name = "aclose" if hasattr(raw, "aclose") else "close"
    closer: Callable[[int, str], Awaitable[None]] = getattr(raw, name)
    with suppress(OSError, ConnectionClosed):
        await closer(code, reason)


async def ping(raw: RawLink) -> Callable[[], Awaitable[bool]]:
    """Send a ping; return a function that waits for its pong: ``True`` when it came,
    ``False`` when the link closed first.

    Raises:
        ConnectionClosed: The link is closed.
    """
    waiter: Any = await getattr(raw, "ping")()  # noqa: B009 - not part of RawLink's protocol
    # trio answers with an Event, which a close never sets; asyncio with a Future, which
    # a close fails with ConnectionClosed.
    pong: Callable[[], Awaitable[object]] = getattr(waiter, "wait", None) or (lambda: waiter)

    async def wait() -> bool:
        ponged = False

        async def until_pong() -> None:
            nonlocal ponged
            with suppress(ConnectionClosed):
                await pong()
                ponged = True
            tasks.cancel_scope.cancel()

        async def until_closed() -> None:
            await raw.wait_closed()
            tasks.cancel_scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(until_pong)
            tasks.start_soon(until_closed)
        return ponged

    return wait


async def pong(raw: RawLink, data: bytes) -> None:
    """Send an unsolicited pong carrying ``data`` (a control message) and wait for the
    write.

    Raises:
        ConnectionClosed: The link is closed.
    """
    await getattr(raw, "pong")(data)  # noqa: B009 - not part of RawLink's protocol


def timed_out(raw: Any) -> bool:
    """Whether the link ended because its kernel gave up on the path (``ETIMEDOUT``: a
    keepalive probe or a retransmission went unanswered)."""
    seen: BaseException | None = getattr(raw, "connection_exc", None)
    for _ in range(4):  # the OSError, or trio's BrokenResourceError caused by it
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ETIMEDOUT:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def abort_link(raw: RawLink) -> None:
    """Drop the TCP connection at once, with a reset, without a closing handshake.

    For a dead network: a closing handshake would wait for a peer that cannot answer.
    ``SO_LINGER`` 0 makes the close send a RST and discard the send buffer. Without it the
    kernel keeps the closed socket (FIN-WAIT-1) and retransmits what it buffered: those
    bytes reach the server after the path heals, after the next link's, out of order, and
    an answer from the server to the closed socket resets it midway, losing the rest.
    """
    _sample_before_abort(raw)
    linger = _sockopts.raw_socket(raw)
    if linger is not None:
        with suppress(OSError, AttributeError):
            getattr(linger, "setsockopt")(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)  # noqa: B009
    transport = getattr(raw, "transport", None)
    if transport is not None:  # asyncio
        transport.abort()
        return
    stream = getattr(raw, "stream", None)  # trio: the socket stream, maybe under TLS
    stream = getattr(stream, "transport_stream", stream)
    sock = getattr(stream, "socket", None)
    if sock is not None:
        # trio's socket close wakes the tasks blocked on it (notify_closing).
        sock.close()


# struct linger {int l_onoff; int l_linger;}: on, 0 seconds.
_LINGER_RESET = struct.pack("ii", 1, 0)


def _sample_before_abort(raw: Any) -> None:
    """Note the kernel's state, and whether any byte written is still unsent or unacked."""
    capture = getattr(raw, "capture_end", None)
    if capture is None:
        return
    capture()
    info: _tcpinfo.TcpInfo | None = raw.end_info
    if info is not None:
        raw.end_drained = _drained(raw, info)


def _drained(raw: Any, info: _tcpinfo.TcpInfo) -> bool:
    """Whether every byte written on the link was acknowledged: nothing unsent or
    unacknowledged in the kernel, nor in user space where we can see it."""
    if info.unacked != 0 or info.notsent_bytes:
        return False
    transport = getattr(raw, "transport", None)
    if transport is not None:
        # asyncio's TLS transport hides the ciphertext its socket transport buffers.
        return bool(
            transport.get_extra_info("ssl_object") is None
            and transport.get_write_buffer_size() == 0
        )
    # trio counts and writes under send_lock, and send_all returns once the kernel has it.
    lock = getattr(raw, "send_lock", None)
    return lock is not None and not lock.locked()


def acked_offset(raw: RawLink) -> tuple[int | None, int | None, str]:
    """How far the server's TCP acknowledged the link's byte stream, once the link ended.

    Returns:
        ``(acked, transmitted, evidence)``, offsets in the count of ``RawLink.bytes_written``:
        ``acked`` the bytes certainly received (``None``: unknown), ``transmitted`` the
        bytes the kernel had sent at least once (``None``: unknown), and the evidence:
        ``tcp_acked`` (Linux, ``ws://``: the kernel's count), ``send_queue`` (the link was
        aborted with nothing unsent or unacknowledged: everything written arrived) or
        ``none``.
    """
    info: _tcpinfo.TcpInfo | None = getattr(raw, "end_info", None)
    if info is None:
        return None, None, "none"
    written: int = getattr(raw, "end_written")  # noqa: B009
    if info.bytes_acked is not None and info.bytes_acked > 0 and not is_tls(raw):
        # Minus our SYN's sequence number. An acknowledged FIN adds one more: harmless,
        # as nothing is written after it.
        return info.bytes_acked - 1, getattr(raw, "end_transmitted", None), "tcp_acked"
    if getattr(raw, "end_drained", None):
        return written, written, "send_queue"
    return None, None, "none"


def acked_now(raw: RawLink) -> int | None:
    """The bytes of the link's stream the server's TCP certainly acknowledged so far, from
    the kernel (one ``getsockopt``), or ``None`` when it cannot tell.

    Linux over ``ws://``: ``tcpi_bytes_acked``. Elsewhere (TLS, where the kernel counts
    ciphertext; no ``tcpi_bytes_acked``): everything written, when nothing is unsent or
    unacknowledged (see :func:`acked_offset`'s ``send_queue``), else ``None``.
    """
    sock = _sockopts.raw_socket(raw)
    info = None if sock is None else _sockopts.read(sock)
    if info is None:
        return None
    if info.bytes_acked and not is_tls(raw):
        return info.bytes_acked - 1  # minus our SYN
    return raw.bytes_written if _drained(raw, info) else None


def is_tls(raw: Any) -> bool:
    """Whether the link runs over TLS (then the kernel counts ciphertext, not frames)."""
    transport = getattr(raw, "transport", None)
    if transport is not None and hasattr(transport, "get_extra_info"):
        return transport.get_extra_info("ssl_object") is not None
    return hasattr(getattr(raw, "stream", None), "transport_stream")


async def wait_link_closed(raw: RawLink) -> None:
    """Return when the link's TCP connection is closed."""
    await raw.wait_closed()


def link_closed_error(raw: RawLink) -> LinkClosed:
    """The LinkClosed error that describes how ``raw`` ended.

    Where websockets itself failed the link because of a message the peer sent (too big:
    1009, not UTF-8: 1007), the code it sent is the end's code, even when the peer's
    answer never came (websockets reports 1006 then): resent on the next link, the same
    message would end it again, forever.
    """
    code = raw.close_code
    if code is None or code == ABNORMAL_CLOSURE:
        sent = getattr(getattr(raw, "protocol", None), "close_sent", None)
        if sent is not None and sent.code in POISONED:
            return LinkClosed(sent.code, sent.reason)
    return LinkClosed(ABNORMAL_CLOSURE if code is None else code, raw.close_reason or "")


def closing(raw: Any) -> bool:
    """Whether the link has left the open state: a close frame came or went, or the
    connection is gone. (websockets runs no handler for a link in that state once its
    opening handshake is over.)"""
    return raw.protocol.state in (State.CLOSING, State.CLOSED)


def end_code(raw: RawLink) -> int:
    """The close code that ended ``raw`` (:func:`link_closed_error`'s), or, where that is
    1006 because the closing handshake did not finish, the code of the close frame the
    peer did send: its intent."""
    code = link_closed_error(raw).code
    received = getattr(getattr(raw, "protocol", None), "close_rcvd", None)
    if code == ABNORMAL_CLOSURE and received is not None:
        return int(received.code)
    return code


WEBSOCKETS_KEEPALIVE = frozenset({"ping_interval", "ping_timeout"})
"""websockets' own fixed keepalive, replaced by :class:`~resilient_ws.Keepalive`."""


def keepalive_off(options: dict[str, Any], keepalive: object | None) -> None:
    """With ``keepalive`` in charge, turn websockets' own keepalive off in ``options``.

    Raises:
        TypeError: ``options`` set websockets' keepalive too: two keepalives would fight.
    """
    if keepalive is None:
        return
    both = WEBSOCKETS_KEEPALIVE & options.keys()
    if both:
        raise TypeError(f"{sorted(both)} conflict with keepalive=; pass keepalive=None")
    options.update(ping_interval=None, ping_timeout=None)


POISONED = frozenset({1007, 1009})
"""Close codes of a link ended by a message it carried (invalid UTF-8, too big): resending
the message would end the next link too."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 section 10.2.3).

    Args:
        value: The header value: delta-seconds or an HTTP-date.
        now: Current wall-clock time (POSIX seconds), for an HTTP-date.

    Returns:
        Seconds (>= 0), or ``None`` when the header is absent or invalid.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # HTTP-dates are always GMT (RFC 9110 section 5.6.7); asctime form names no zone.
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def translate(exc: BaseException, now: float | None = None) -> LinkError:
    """Map an exception from websockets, ssl, trio or the OS to a :class:`LinkError`.

    Raises:
        BaseException: ``exc`` itself when it is not a link failure (a bug, a cancellation).
    """
    if isinstance(exc, LinkError):
        return exc
    if isinstance(exc, InvalidStatus):
        response = exc.response
        retry_after = parse_retry_after(
            response.headers.get("Retry-After"), time.time() if now is None else now
        )
        return HandshakeRejected(response.status_code, retry_after)
    if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, (EOFError, OSError)):
        # The server closed the TCP connection during the handshake: restarting, or overloaded.
        return LinkUnreachable(f"connection lost during the opening handshake: {exc.__cause__}")
    if isinstance(exc, InvalidHandshake):
        return HandshakeFailed(str(exc))
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is None:
            sent = exc.sent  # see link_closed_error
            if sent is not None and sent.code in POISONED:
                return LinkClosed(sent.code, sent.reason)
            return LinkClosed(ABNORMAL_CLOSURE)
        return LinkClosed(rcvd.code, rcvd.reason)
    # trio wraps TLS failures in BrokenResourceError: judge them by their cause.
    tls_error = _tls_error(exc)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return TLSVerificationFailed(
            f"TLS certificate verification failed: {tls_error.verify_message}"
        )
    if isinstance(tls_error, ssl.SSLEOFError):
        # The peer closed during the TLS handshake: a server restarting, or one that does
        # not speak TLS on this port. asyncio reports the same as a plain reset, which is
        # transient: so is this (issue 11: it was fatal on trio only).
        return LinkUnreachable(f"connection closed during the TLS handshake: {tls_error}")
    if tls_error is not None:
        return HandshakeFailed(f"TLS handshake failed: {tls_error}")
    if isinstance(exc, (OSError, EOFError, TimeoutError)):
        return LinkUnreachable(str(exc) or type(exc).__name__)
    if is_trio_stream_error(exc):
        return LinkUnreachable(str(exc) or type(exc).__name__)
    raise exc


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error that is ``exc`` or caused it, if any."""
    seen: BaseException | None = exc
    for _ in range(4):  # a short chain is enough; bounded against cycles
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
