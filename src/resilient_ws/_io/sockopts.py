"""The socket side of the TCP evidence: reading ``tcp_info`` and setting kernel keepalive.

The decoders of what the kernel answers are pure and live in
:mod:`resilient_ws._core.tcpinfo`; this module makes the ``getsockopt``/``setsockopt``
calls and finds the socket under a websockets connection.
"""

from __future__ import annotations

import math
import socket
import sys
from typing import Protocol, cast

from .._core.tcpinfo import LAST_ACK_BYTES, TcpInfo, parse_darwin, parse_last_ack, parse_linux

__all__ = [
    "SockOpts",
    "keep_alive",
    "keepalive_idle",
    "last_ack_recv",
    "raw_socket",
    "read",
    "reports_last_ack",
]

_IPPROTO_TCP = 6
_TCP_INFO = 11  # Linux
_TCP_CONNECTION_INFO = 0x106  # macOS; not exported by the socket module
# Any size works: the kernel copies min(asked, its sizeof) and older kernels give less.
_LINUX_BUFLEN = 512
_DARWIN_BUFLEN = 112


class SockOpts(Protocol):
    """What :func:`read` needs: a stdlib, trio or asyncio ``TransportSocket`` all qualify."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...
    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def read(sock: SockOpts, *, platform: str | None = None) -> TcpInfo | None:
    """Sample the kernel's TCP state of ``sock``; never raises for a closed socket.

    Args:
        sock: A connected TCP socket, e.g. from :func:`raw_socket`.
        platform: ``sys.platform`` to act as; tests pass another to simulate one without
            TCP evidence.

    Returns:
        The sample, or ``None`` where the platform gives no TCP evidence or the socket is
        closed or not TCP.
    """
    platform = sys.platform if platform is None else platform
    try:
        if platform.startswith("linux"):
            return parse_linux(sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, _LINUX_BUFLEN))
        if platform == "darwin":
            return parse_darwin(sock.getsockopt(_IPPROTO_TCP, _TCP_CONNECTION_INFO, _DARWIN_BUFLEN))
    except (OSError, ValueError):  # closed (EBADF), not a TCP socket, or a truncated answer
        return None
    return None


# Unanswered keepalive probes, 1 s apart, before the kernel drops a connection. One is not
# enough: with 5,000 idle links on one loaded server, the loopback queue dropped enough
# probes (softnet_stat) that the kernel killed 2,658 healthy links in 10 s; with two, none.
_KEEPALIVE_PROBES = 2


def last_ack_recv(sock: SockOpts) -> float | None:
    """Seconds since the kernel last received an ACK on ``sock``, from the first 60 bytes
    of Linux's ``tcp_info`` (the cheap read a quiet link's keepalive makes once a
    second); ``None`` elsewhere or once the socket is gone."""
    try:
        return parse_last_ack(sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, LAST_ACK_BYTES))
    except OSError:
        return None


def keepalive_idle(idle: float) -> int:
    """The seconds :func:`keep_alive` has the kernel wait before its first probe: ``idle``
    rounded up to whole seconds, at least 1."""
    return max(1, math.ceil(idle))


def reports_last_ack(platform: str | None = None) -> bool:
    """Whether :func:`read` gives ``last_ack_recv`` here (Linux; not macOS)."""
    return (sys.platform if platform is None else platform).startswith("linux")


def keep_alive(sock: SockOpts, idle: float, *, platform: str | None = None) -> bool:
    """Have the kernel watch an idle connection: TCP keepalive, a probe after ``idle``
    seconds without anything received (rounded up to whole seconds, at least 1), then one a
    second, and the connection dropped with ``ETIMEDOUT`` when two in a row are unanswered.

    The kernel probes only while nothing we sent is unacknowledged, and a peer whose
    process is stopped still answers (its kernel does): it catches a dead path on an idle
    link, never a stalled peer. No ``TCP_USER_TIMEOUT``: it would also drop a live peer
    whose receive window stays closed (a stalled server), measured on Linux 6.18.

    Returns:
        Whether every option was set (Linux; macOS); ``False`` elsewhere or on a socket
        that refuses them, which is then left as it was or with SO_KEEPALIVE alone.
    """
    platform = sys.platform if platform is None else platform
    seconds = keepalive_idle(idle)
    if platform.startswith("linux"):
        idle_option = getattr(socket, "TCP_KEEPIDLE", None)
    elif platform == "darwin":
        idle_option = getattr(socket, "TCP_KEEPALIVE", None)
    else:
        return False
    interval_option = getattr(socket, "TCP_KEEPINTVL", None)
    count_option = getattr(socket, "TCP_KEEPCNT", None)
    if idle_option is None or interval_option is None or count_option is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(_IPPROTO_TCP, idle_option, seconds)
        sock.setsockopt(_IPPROTO_TCP, interval_option, 1)
        sock.setsockopt(_IPPROTO_TCP, count_option, _KEEPALIVE_PROBES)
    except OSError:
        return False
    return True


def raw_socket(link: object) -> SockOpts | None:
    """Find the TCP socket under a websockets connection, for :func:`read`.

    Args:
        link: A ``websockets.asyncio`` connection (its transport's ``"socket"``, an asyncio
            ``TransportSocket``) or a ``websockets.trio`` connection (``stream.socket``, or
            ``stream.transport_stream.socket`` under TLS).

    Returns:
        An object with ``getsockopt``, or ``None`` if ``link`` has no socket to find.
    """
    transport = getattr(link, "transport", None)
    if transport is not None and hasattr(transport, "get_extra_info"):
        sock = transport.get_extra_info("socket")
        return cast(SockOpts, sock) if hasattr(sock, "getsockopt") else None
    stream = getattr(link, "stream", None)
    while stream is not None:  # SSLStream -> SocketStream; bounded by the wrapping depth
        sock = getattr(stream, "socket", None)
        if hasattr(sock, "getsockopt"):
            return cast(SockOpts, sock)
        stream = getattr(stream, "transport_stream", None)
    return None
