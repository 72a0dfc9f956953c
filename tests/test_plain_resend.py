"""Plain links (no replay protocol): the window of recent messages, the kernel's count of
acknowledged bytes, the reset on abort, and an outage that loses and reorders nothing."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from _firewall import Firewall
from _helpers import TIMEOUT
from _servers import ThreadServer
from websockets.asyncio.server import ServerConnection

import resilient_ws
from resilient_ws._core.plainwindow import PlainWindow
from resilient_ws._core.tcpinfo import TcpInfo, parse_linux
from resilient_ws._io import backend as _backend

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="tcpi_bytes_acked and the iptables faults are Linux's",
)

# ---- the window, pure ------------------------------------------------------------------


def window_of(ends: list[int], pending: int = 0, **bounds: int) -> PlainWindow:
    """A window holding messages "m0", "m1"... whose frames end at ``ends``, then
    ``pending`` messages whose sends have not returned."""
    window = PlainWindow(**bounds)
    for index, end in enumerate(ends):
        window.push(f"m{index}")
        window.done(end)
        if end > window.check_at:
            window.trim(end)
    for index in range(len(ends), len(ends) + pending):
        window.push(f"m{index}")
    return window


def test_everything_acknowledged_resends_nothing() -> None:
    resend = window_of([10, 20, 30]).unreceived(acked=30, transmitted=30)
    assert resend.messages == []
    assert (resend.uncertain, resend.overflowed) == (0, 0)


@pytest.mark.parametrize(
    ("acked", "expected"),
    [
        (0, ["m0", "m1", "m2"]),
        (9, ["m0", "m1", "m2"]),  # m0's frame is one byte short: not delivered
        (10, ["m1", "m2"]),
        (25, ["m2"]),
        (29, ["m2"]),
    ],
)
def test_resends_exactly_the_messages_past_the_acknowledged_count(
    acked: int, expected: list[str]
) -> None:
    # Nothing transmitted past the acknowledged count: each resend is certainly unreceived.
    resend = window_of([10, 20, 30]).unreceived(acked=acked, transmitted=acked)
    assert resend.messages == expected
    assert resend.uncertain == 0


def test_transmitted_but_unacknowledged_messages_are_uncertain() -> None:
    # m1 went out in full (its ACK may have been lost); m2 was still partly unsent.
    resend = window_of([10, 20, 30]).unreceived(acked=10, transmitted=25)
    assert resend.messages == ["m1", "m2"]
    assert resend.uncertain == 1


def test_pending_messages_are_uncertain_only_if_bytes_went_past_the_last_done() -> None:
    window = window_of([10, 20], pending=2)
    certain = window.unreceived(acked=20, transmitted=20)
    assert certain.messages == ["m2", "m3"]
    assert certain.uncertain == 0
    # Bytes went out after m1's end: they may be m2's frame.
    maybe = window.unreceived(acked=20, transmitted=26)
    assert maybe.messages == ["m2", "m3"]
    assert maybe.uncertain == 2


def test_unknown_acknowledgement_resends_everything_at_least_once() -> None:
    resend = window_of([10, 20], pending=1).unreceived(acked=None)
    assert resend.messages == ["m0", "m1", "m2"]
    assert resend.uncertain == 3


def test_count_bound_drops_the_oldest_and_reports_them_if_unacknowledged() -> None:
    window = window_of([10, 20, 30, 40, 50], max_messages=2, check_every=1)
    assert len(window) == 2
    assert window.evicted == 3
    # The server acknowledged everything the window dropped: nothing is unaccounted for.
    assert window.unreceived(acked=30, transmitted=30).overflowed == 0
    # It did not: the three dropped messages may be lost, and that is said.
    lost = window.unreceived(acked=15, transmitted=15)
    assert lost.messages == ["m3", "m4"]
    assert lost.overflowed == 3


def test_byte_bound_keeps_the_messages_ending_within_max_bytes_of_the_newest() -> None:
    window = window_of([100, 200, 300, 400], max_bytes=150, check_every=1)
    assert window.unreceived(acked=0, transmitted=0).messages == ["m2", "m3"]
    assert window.evicted == 2


def test_bounds_never_drop_the_newest_or_pending_messages() -> None:
    window = window_of([10, 10_000], pending=1, max_bytes=5, check_every=1)
    assert window.unreceived(acked=0, transmitted=0).messages == ["m1", "m2"]


def test_bounds_are_checked_every_check_every_bytes() -> None:
    window = window_of([10, 20, 30, 40], max_messages=1, check_every=25)
    # Trimmed once, at 30 (past 25); 40 is within the next 25 bytes.
    assert window.evicted == 2
    assert len(window) == 2


def test_confirm_forgets_acknowledged_messages_only() -> None:
    window = window_of([10, 20, 30], pending=1)
    window.confirm(20)
    assert window.unreceived(acked=None).messages == ["m2", "m3"]


def test_window_rejects_empty_bounds() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PlainWindow(max_messages=0)


# ---- the kernel's counts ----------------------------------------------------------------


def test_parse_linux_reads_bytes_acked_where_the_kernel_has_it() -> None:
    buf = bytearray(280)
    struct.pack_into("=Q", buf, 120, 123_456_789_012)  # tcpi_bytes_acked, a u64
    assert parse_linux(bytes(buf)).bytes_acked == 123_456_789_012
    assert parse_linux(bytes(buf[:104])).bytes_acked is None  # a kernel before 4.1


def fake_link(**fields: Any) -> Any:
    info = TcpInfo(state=1, unacked=0, retransmits=0, total_retrans=0, rto=0.2, rtt=0.0,
                   rttvar=0.0, bytes_acked=fields.pop("bytes_acked", None))  # fmt: skip
    return SimpleNamespace(end_info=info, end_written=500, end_transmitted=480, **fields)


def test_acked_offset_discounts_the_syn() -> None:
    assert _backend.acked_offset(fake_link(bytes_acked=301)) == (300, 480, "tcp_acked")


def test_acked_offset_under_tls_is_not_the_kernel_count() -> None:
    # The kernel counts ciphertext: it says nothing exact about frames.
    tls = fake_link(bytes_acked=301, stream=SimpleNamespace(transport_stream=None))
    assert _backend.acked_offset(tls) == (None, None, "none")
    drained = fake_link(bytes_acked=301, end_drained=True, stream=tls.stream)
    assert _backend.acked_offset(drained) == (500, 500, "send_queue")


def test_acked_offset_without_a_sample_is_unknown() -> None:
    assert _backend.acked_offset(SimpleNamespace()) == (None, None, "none")


# ---- real links: a plain websockets server that numbers what it receives -----------------


class NumberingServer(ThreadServer):
    """A plain websockets server recording ``(link, message)`` in arrival order, and when
    each link's handler ended (``(link, None)``). It pings every 0.2 s, so that a link the
    client dropped during an outage ends (by the client kernel's reset) once the path heals.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, str | None]] = []
        self._links = 0
        self._lock = threading.Lock()
        super().__init__(self._record, ping_interval=0.2, ping_timeout=30)

    async def _record(self, ws: ServerConnection) -> None:
        with self._lock:
            self._links += 1
            link = self._links
        try:
            async for message in ws:
                self.arrivals.append((link, str(message)))
        except Exception as exc:  # how the link ended does not matter here
            del exc
        finally:
            self.arrivals.append((link, None))

    def messages(self) -> list[str]:
        return [message for _, message in list(self.arrivals) if message is not None]

    def ended(self, link: int) -> bool:
        return (link, None) in list(self.arrivals)


async def wait_for(predicate: Any) -> bool:
    """Poll a condition set by the server thread, up to TIMEOUT (a bound on a hang, not a
    timing); return whether it holds."""
    with anyio.move_on_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - a server thread's list, no event
            await anyio.sleep(0.02)
    return bool(predicate())


def orphans(local_port: int, server_port: int) -> str:
    """Sockets the kernel still keeps for our end of a link (``ss``, any state). Both
    ports: another process may take the local port the moment the kernel frees it."""
    query = f"( sport = :{local_port} and dport = :{server_port} )"
    result = subprocess.run(["ss", "-tanH", query], capture_output=True, text=True, timeout=10)
    return result.stdout.strip()


@linux_only
@pytest.mark.root
@pytest.mark.anyio
async def test_abort_resets_the_link_and_discards_what_the_kernel_buffered(
    firewall: Firewall,
) -> None:
    """No byte of an aborted link reaches the server after the next link's bytes.

    Without SO_LINGER 0 the closed socket stays (FIN-WAIT-1) with the unsent messages and
    retransmits them once the path heals: after the next link's.
    """
    options = {"compression": None, "ping_interval": None, "open_timeout": 5}
    with NumberingServer() as server:
        async with _backend.open_link(server.url, options) as first:
            await first.send("1:before")
            assert await wait_for(lambda: "1:before" in server.messages())
            local_port = first.local_address[1]  # type: ignore[attr-defined]
            with firewall.drop(server.port):
                for index in range(10):
                    await first.send(f"1:stranded-{index}")
                assert "ESTAB" in orphans(local_port, server.port)
                _backend.abort_link(first)
                with anyio.fail_after(TIMEOUT):
                    await _backend.wait_link_closed(first)
                # The kernel let go of the socket: nothing is left to retransmit.
                assert orphans(local_port, server.port) == ""
        async with _backend.open_link(server.url, options) as second:
            for index in range(3):
                await second.send(f"2:{index}")
            assert await wait_for(lambda: "2:2" in server.messages())
            # The server's pings reach the old link's port: the client's kernel resets it.
            assert await wait_for(lambda: server.ended(1))
    messages = server.messages()
    assert not [message for message in messages if message.startswith("1:stranded")]
    assert messages == ["1:before", "2:0", "2:1", "2:2"]


SENDS = 400  # one every 10 ms: 4 s of traffic
DROP_AT = 100
DROP_FOR = 3.0


@linux_only
@pytest.mark.root
@pytest.mark.anyio
async def test_plain_outage_loses_and_reorders_nothing(firewall: Firewall) -> None:
    """The issue's scenario on defaults: a message every 10 ms, a 3 s DROP."""
    with NumberingServer() as server:
        async with resilient_ws.connect(server.url) as ws:
            await send_every_10ms(ws, server.port, firewall)
            expected = [str(index) for index in range(SENDS)]
            await wait_for(lambda: set(server.messages()) >= set(expected))
            resent: list[resilient_ws.Resent] = []
            # The history holds every event so far; stop once it is read.
            with anyio.move_on_after(0.5):
                async for event in ws.events():
                    if isinstance(event, resilient_ws.Resent):
                        resent.append(event)
    arrivals = server.messages()
    lost = sorted(set(expected) - set(arrivals), key=int)
    assert not lost, f"{len(lost)} lost: {lost[:5]}...{lost[-5:]}"
    duplicates = len(arrivals) - len(set(arrivals))
    assert reordered(arrivals) == 0, arrivals
    # The outage ended a link with messages stranded in its kernel: they were resent,
    # and each duplicate the server saw had been reported as possible.
    assert resent, "no Resent event: the outage stranded nothing?"
    assert all(event.evidence == "tcp_acked" for event in resent)
    assert sum(event.resent for event in resent) > 0
    assert duplicates <= sum(event.uncertain for event in resent)
    assert all(event.overflowed == 0 for event in resent)


async def send_every_10ms(ws: resilient_ws.Connection, port: int, firewall: Firewall) -> None:
    """Send SENDS numbered messages, 10 ms apart, with a DROP_FOR s outage from DROP_AT."""
    with ExitStack() as outage:
        lift_at = None
        for index in range(SENDS):
            if index == DROP_AT:
                outage.enter_context(firewall.drop(port))
                lift_at = anyio.current_time() + DROP_FOR
            elif lift_at is not None and anyio.current_time() >= lift_at:
                outage.close()
                lift_at = None
            await ws.send(str(index))
            await anyio.sleep(0.01)


def reordered(arrivals: list[str]) -> int:
    """Messages that arrived (for the first time) after a later-sent one."""
    seen: set[str] = set()
    highest = -1
    count = 0
    for message in arrivals:
        if message in seen:
            continue
        seen.add(message)
        number = int(message)
        count += number < highest
        highest = max(highest, number)
    return count
