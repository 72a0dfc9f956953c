"""TCP evidence: the decoders on crafted buffers, then ``read`` on real loopback sockets."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import sniffio
from _servers import ThreadServer
from hypothesis import given
from hypothesis import strategies as st

from resilient_ws._core.tcpinfo import ESTABLISHED, parse_darwin, parse_linux
from resilient_ws._io.sockopts import last_ack_recv, raw_socket, read

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="TCP_INFO is a Linux socket option"
)

# Offsets from include/uapi/linux/tcp.h, written out here independently of the module's format.
LINUX_U8 = {"state": 0, "retransmits": 2, "probes": 3, "backoff": 4}
LINUX_U32 = {
    "rto": 8,
    "unacked": 24,
    "last_data_sent": 44,
    "last_data_recv": 52,
    "last_ack_recv": 56,
    "rtt": 68,
    "rttvar": 72,
    "total_retrans": 100,
    "notsent_bytes": 144,
    "snd_wnd": 228,
}
# What the dead-link experiment looks like: the 4th timeout of an unACKed probe.
SAMPLE = {
    "state": 1,
    "retransmits": 4,
    "probes": 0,
    "backoff": 4,
    "rto": 3_264_000,  # us
    "unacked": 2,
    "last_data_sent": 1500,  # ms
    "last_data_recv": 2500,
    "last_ack_recv": 2400,
    "rtt": 48,  # us
    "rttvar": 30,
    "total_retrans": 7,
    "notsent_bytes": 0,
    "snd_wnd": 65483,
}


def linux_buffer(size: int = 232, **fields: int) -> bytes:
    """A ``struct tcp_info`` as the kernel writes it, cut to ``size`` like an older kernel's."""
    buf = bytearray(max(size, 232))
    for name, value in {**SAMPLE, **fields}.items():
        if name in LINUX_U8:
            struct.pack_into("=B", buf, LINUX_U8[name], value)
        else:
            struct.pack_into("=I", buf, LINUX_U32[name], value)
    return bytes(buf[:size])


def test_parse_linux_decodes_every_field_in_seconds() -> None:
    info = parse_linux(linux_buffer())
    assert info.state == ESTABLISHED
    assert info.established
    assert (info.unacked, info.retransmits, info.backoff, info.probes) == (2, 4, 4, 0)
    assert info.total_retrans == 7
    assert info.rto == pytest.approx(3.264)
    assert info.rtt == pytest.approx(48e-6)
    assert info.rttvar == pytest.approx(30e-6)
    assert info.last_data_sent == pytest.approx(1.5)
    assert info.last_data_recv == pytest.approx(2.5)
    assert info.last_ack_recv == pytest.approx(2.4)
    assert info.notsent_bytes == 0
    assert info.snd_wnd == 65483
    assert not info.zero_window


@pytest.mark.parametrize(
    ("size", "has_notsent", "has_snd_wnd"),
    [(104, False, False), (147, False, False), (148, True, False), (231, True, False)],
)
def test_parse_linux_older_kernels_leave_newer_fields_none(
    size: int, has_notsent: bool, has_snd_wnd: bool
) -> None:
    info = parse_linux(linux_buffer(size))
    assert info.unacked == 2
    assert info.total_retrans == 7
    assert (info.notsent_bytes is not None) is has_notsent
    assert (info.snd_wnd is not None) is has_snd_wnd
    assert not info.zero_window  # unknown is not zero


def test_parse_linux_newer_kernels_append_fields_we_ignore() -> None:
    assert parse_linux(linux_buffer(232) + bytes(48)) == parse_linux(linux_buffer(232))


def test_zero_window_needs_a_known_zero() -> None:
    assert parse_linux(linux_buffer(snd_wnd=0)).zero_window


@pytest.mark.parametrize("size", [0, 8, 103])
def test_parse_linux_rejects_a_buffer_without_the_mandatory_part(size: int) -> None:
    with pytest.raises(ValueError, match="104"):
        parse_linux(linux_buffer(size))


@given(st.binary(min_size=104, max_size=300))
def test_parse_linux_any_valid_length_parses(data: bytes) -> None:
    info = parse_linux(data)
    counts = [info.state, info.unacked, info.retransmits, info.total_retrans, info.backoff]
    times = [info.rto, info.rtt, info.rttvar, info.last_data_sent, info.last_ack_recv]
    assert all(value is not None and value >= 0 for value in counts + times)
    assert (info.snd_wnd is None) is (len(data) < 232)
    assert info.snd_wnd is None or info.snd_wnd >= 0


def darwin_buffer(*, state: int = 4, flags: int = 0, sbbytes: int = 0, retrans: int = 0) -> bytes:
    """A macOS ``struct tcp_connection_info`` (112 bytes, xnu bsd/netinet/tcp.h)."""
    return struct.pack(
        "=4B13I7Q",
        *(state, 7, 7, 0),
        *(0x7, flags, 1200, 16344, 0, 0, 0, sbbytes, 0, 1, 3, 2, 0),
        *(10, 1000, 0, 10, 1000, 0, retrans),
    )  # options, flags, rto 1.2 s, maxseg, ..., snd_wnd 0, sbbytes, ..., srtt 3 ms, rttvar 2 ms


def test_parse_darwin_maps_what_maps() -> None:
    info = parse_darwin(darwin_buffer(flags=0x1, sbbytes=20000, retrans=5))
    assert info.established
    assert info.unacked == 2  # 20000 bytes in 16344-byte segments, rounded up
    assert info.retransmits == 1  # in loss recovery; macOS gives no count
    assert info.total_retrans == 5
    assert (info.rto, info.rtt, info.rttvar) == pytest.approx((1.2, 0.003, 0.002))
    assert info.zero_window
    assert info.backoff is info.last_ack_recv is info.notsent_bytes is None


def test_parse_darwin_all_acked_and_bad_buffers() -> None:
    assert parse_darwin(darwin_buffer()).unacked == 0
    with pytest.raises(ValueError, match="112"):
        parse_darwin(darwin_buffer()[:100])
    with pytest.raises(ValueError, match="state"):
        parse_darwin(darwin_buffer(state=11))


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected client/server pair on 127.0.0.1 that has exchanged one round trip."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    with client, server:
        client.sendall(b"ping")
        assert server.recv(4) == b"ping"
        server.sendall(b"pong")  # carries the ACK of our ping
        assert client.recv(4) == b"pong"
        yield client, server


@linux_only
def test_read_a_live_socket(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    info = read(tcp_pair[0])
    assert info is not None
    assert info.state == ESTABLISHED
    assert info.unacked == 0
    assert info.retransmits == 0
    assert 0 < info.rtt < 0.2
    assert 0.2 <= info.rto < 3  # Linux floors the RTO at 200 ms
    assert info.last_ack_recv is not None
    assert info.last_ack_recv < 5
    assert info.snd_wnd is None or info.snd_wnd > 0


@linux_only
def test_read_a_closed_socket_gives_none(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = tcp_pair[0]
    client.close()
    assert read(client) is None


@linux_only
def test_last_ack_recv_is_what_read_gives(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = tcp_pair[0]
    info = read(client)
    cheap = last_ack_recv(client)
    assert info is not None
    assert info.last_ack_recv is not None
    assert cheap is not None
    assert abs(cheap - info.last_ack_recv) < 0.5  # read a moment apart
    client.close()
    assert last_ack_recv(client) is None


def test_last_ack_recv_of_a_short_tcp_info_gives_none() -> None:
    short = SimpleNamespace(getsockopt=lambda *args: bytes(56))
    assert last_ack_recv(short) is None  # type: ignore[arg-type]


@linux_only
def test_read_a_udp_socket_gives_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert read(sock) is None


def test_read_on_a_platform_without_tcp_info_gives_none(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    assert read(tcp_pair[0], platform="win32") is None


@linux_only
def test_read_with_an_option_the_kernel_lacks_gives_none(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    assert read(tcp_pair[0], platform="darwin") is None  # Linux rejects TCP_CONNECTION_INFO


def test_raw_socket_follows_trio_tls_streams() -> None:
    sock = socket.socket()
    with sock:
        tls = SimpleNamespace(stream=SimpleNamespace(transport_stream=SimpleNamespace(socket=sock)))
        assert raw_socket(tls) is sock
        assert raw_socket(SimpleNamespace(stream=SimpleNamespace(socket=sock))) is sock
    assert raw_socket(object()) is None
    assert raw_socket(SimpleNamespace(stream=SimpleNamespace())) is None


@linux_only
@pytest.mark.anyio
async def test_read_a_websockets_connection(anyio_backend: str) -> None:
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect  # type: ignore[assignment]
    with ThreadServer() as server:
        async with connect(server.url) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            sock = raw_socket(ws)
            assert sock is not None
            info = read(sock)
            assert info is not None
            assert info.state == ESTABLISHED
            assert info.unacked == 0
