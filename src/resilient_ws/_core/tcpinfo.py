"""TCP evidence for the liveness verdict: what the kernel knows about a connection.

When a pong is overdue, the kernel can tell a stalled peer from a dead network: if the peer's
kernel ACKed our probe (``unacked == 0``) or closed its window, the peer is alive but slow; if our
bytes sit unACKed while ``retransmits`` and ``backoff`` climb, the path is gone.

Linux gives ``struct tcp_info`` (``getsockopt(IPPROTO_TCP, TCP_INFO)``, layout in
``include/uapi/linux/tcp.h``); macOS gives the smaller ``struct tcp_connection_info``
(``TCP_CONNECTION_INFO``, xnu ``bsd/netinet/tcp.h``). These are the decoders of those
answers, pure; :mod:`resilient_ws._io.sockopts` asks the kernel.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

__all__ = [
    "ESTABLISHED",
    "LAST_ACK_BYTES",
    "TcpInfo",
    "parse_darwin",
    "parse_last_ack",
    "parse_linux",
]

ESTABLISHED = 1
"""``TcpInfo.state`` of an open connection (Linux ``TCP_ESTABLISHED``, on every platform)."""


# struct tcp_info up to tcpi_total_retrans: the 104 bytes every kernel since 2.6 returns.
# Kept: u8 state (0), retransmits, probes, backoff (2-4); u32 rto (8, us), unacked (24),
# last_data_sent (44, ms), last_data_recv (52, ms), last_ack_recv (56, ms), rtt, rttvar (68, us),
# total_retrans (100).
_LINUX_BASE = struct.Struct("=Bx3B3xI12xI16xI4x2I8x2I24xI")
_LINUX_LAST_ACK = 56  # tcpi_last_ack_recv, ms
LAST_ACK_BYTES = _LINUX_LAST_ACK + 4
"""The bytes of Linux's ``tcp_info`` that :func:`parse_last_ack` needs."""
_LINUX_NOTSENT = 144  # tcpi_notsent_bytes: needs a 148-byte struct (Linux 4.6+)
_LINUX_SND_WND = 228  # tcpi_snd_wnd, after tcpi_rcv_ooopack: needs a 232-byte struct
_LINUX_BYTES_ACKED = 120  # u64 tcpi_bytes_acked (Linux 4.1+): needs a 128-byte struct
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

# struct tcp_connection_info (112 bytes), keeping: u8 state; u32 flags, rto (ms), maxseg;
# u32 snd_wnd, snd_sbbytes; u32 srtt, rttvar (ms); u64 txretransmitpackets (the last field).
_DARWIN = struct.Struct("=B3x4xIII8xII8xII4x48xQ")
_DARWIN_LOSS_RECOVERY = 0x1  # TCPCI_FLAG_LOSSRECOVERY: set while t_rxtshift > 0 or fast recovery
# BSD TCPS_* (CLOSED, LISTEN, SYN_SENT, ...) mapped to Linux TCP_* numbers.
_DARWIN_STATES = (7, 10, 2, 3, 1, 8, 4, 11, 9, 5, 6)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """One sample of the kernel's view of a TCP connection, in seconds, bytes and segments.

    Fields a platform or kernel does not report are ``None``.

    Attributes:
        state: TCP state in Linux numbering; :data:`ESTABLISHED` is an open connection.
        unacked: Segments sent and not yet ACKed. On macOS, the send buffer in MSS-sized
            segments (includes data not yet sent): an upper bound, zero exactly when all is ACKed.
        retransmits: Consecutive retransmission timeouts of the oldest unACKed segment
            (``tcpi_retransmits``). On macOS only 0 or 1: whether the connection is in loss
            recovery.
        total_retrans: Segments retransmitted over the connection's life.
        rto: Current retransmission timeout, backoff included. On macOS 0.0 while no data is
            outstanding (the timer is not armed).
        rtt: Smoothed round-trip time.
        rttvar: Round-trip time variation.
        backoff: Exponent of the RTO backoff (``tcpi_backoff``); ``None`` on macOS.
        probes: Unanswered zero-window or keepalive probes; ``None`` on macOS.
        last_data_sent: Time since we last sent data; ``None`` on macOS.
        last_data_recv: Time since we last received data; ``None`` on macOS.
        last_ack_recv: Time since we last received an ACK; ``None`` on macOS.
        snd_wnd: Peer's advertised receive window in bytes; ``None`` on Linux kernels whose
            struct is too short to hold it (under 232 bytes).
        notsent_bytes: Bytes written but not yet sent; ``None`` on macOS and on Linux kernels
            whose struct is under 148 bytes.
        bytes_acked: Sequence space the peer's TCP acknowledged over the connection's life
            (``tcpi_bytes_acked``, RFC 4898 ``tcpEStatsAppHCThruOctetsAcked``): the bytes
            written and acknowledged, plus 1 for our SYN (and 1 for a FIN once it is
            acknowledged). ``None`` on macOS and on Linux kernels before 4.1.
    """

    state: int
    unacked: int
    retransmits: int
    total_retrans: int
    rto: float
    rtt: float
    rttvar: float
    backoff: int | None = None
    probes: int | None = None
    last_data_sent: float | None = None
    last_data_recv: float | None = None
    last_ack_recv: float | None = None
    snd_wnd: int | None = None
    notsent_bytes: int | None = None
    bytes_acked: int | None = None

    @property
    def established(self) -> bool:
        """Whether the connection is open in both directions."""
        return self.state == ESTABLISHED

    @property
    def zero_window(self) -> bool:
        """Whether the peer advertises a zero window: alive, but not reading. False if unknown."""
        return self.snd_wnd == 0


def _optional_u32(data: bytes, offset: int) -> int | None:
    if len(data) < offset + _U32.size:
        return None
    return int(_U32.unpack_from(data, offset)[0])


def _optional_u64(data: bytes, offset: int) -> int | None:
    if len(data) < offset + _U64.size:
        return None
    return int(_U64.unpack_from(data, offset)[0])


def parse_linux(data: bytes) -> TcpInfo:
    """Decode a Linux ``TCP_INFO`` buffer, in the host's byte order as the kernel writes it.

    Args:
        data: The bytes ``getsockopt(IPPROTO_TCP, TCP_INFO, n)`` returned; newer fields are
            ``None`` when the kernel's struct is too short to hold them.

    Returns:
        The decoded sample.

    Raises:
        ValueError: If ``data`` is shorter than the 104 bytes every kernel returns.
    """
    if len(data) < _LINUX_BASE.size:
        raise ValueError(f"TCP_INFO needs {_LINUX_BASE.size} bytes, got {len(data)}")
    (
        state,
        retransmits,
        probes,
        backoff,
        rto,
        unacked,
        last_data_sent,
        last_data_recv,
        last_ack_recv,
        rtt,
        rttvar,
        total_retrans,
    ) = _LINUX_BASE.unpack_from(data)
    return TcpInfo(
        state=state,
        unacked=unacked,
        retransmits=retransmits,
        total_retrans=total_retrans,
        rto=rto / 1e6,
        rtt=rtt / 1e6,
        rttvar=rttvar / 1e6,
        backoff=backoff,
        probes=probes,
        last_data_sent=last_data_sent / 1e3,
        last_data_recv=last_data_recv / 1e3,
        last_ack_recv=last_ack_recv / 1e3,
        notsent_bytes=_optional_u32(data, _LINUX_NOTSENT),
        snd_wnd=_optional_u32(data, _LINUX_SND_WND),
        bytes_acked=_optional_u64(data, _LINUX_BYTES_ACKED),
    )


def parse_darwin(data: bytes) -> TcpInfo:
    """Decode a macOS ``TCP_CONNECTION_INFO`` buffer (best effort; see :class:`TcpInfo`).

    Args:
        data: The bytes ``getsockopt(IPPROTO_TCP, TCP_CONNECTION_INFO, 112)`` returned.

    Returns:
        The decoded sample, with the fields macOS lacks set to ``None``.

    Raises:
        ValueError: If ``data`` is shorter than ``struct tcp_connection_info``.
    """
    if len(data) < _DARWIN.size:
        raise ValueError(f"TCP_CONNECTION_INFO needs {_DARWIN.size} bytes, got {len(data)}")
    state, flags, rto, maxseg, snd_wnd, sbbytes, srtt, rttvar, retrans = _DARWIN.unpack_from(data)
    if state >= len(_DARWIN_STATES):
        raise ValueError(f"unknown TCP state {state}")
    return TcpInfo(
        state=_DARWIN_STATES[state],
        unacked=math.ceil(sbbytes / maxseg) if maxseg else int(sbbytes > 0),
        retransmits=int(bool(flags & _DARWIN_LOSS_RECOVERY)),
        total_retrans=retrans,
        rto=rto / 1e3,
        rtt=srtt / 1e3,
        rttvar=rttvar / 1e3,
        snd_wnd=snd_wnd,
    )


def parse_last_ack(data: bytes) -> float | None:
    """Seconds since the kernel last received an ACK, from the first
    :data:`LAST_ACK_BYTES` bytes of Linux's ``tcp_info``; ``None`` if ``data`` is shorter."""
    if len(data) < LAST_ACK_BYTES:
        return None
    milliseconds: int = _U32.unpack_from(data, _LINUX_LAST_ACK)[0]
    return milliseconds / 1000
