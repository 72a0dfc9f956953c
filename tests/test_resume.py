"""Both sides' resume arithmetic (``_core.resume``), driven through the wire headers with no
I/O: a client session and a server session exchange numbered messages, the link dies, the
client asks to resume, the server grants, and each side learns what to resend and what is
lost (docs/protocol.md section 4)."""

from __future__ import annotations

import dataclasses

import pytest

from resilient_ws import ProtocolViolation, Replay
from resilient_ws._core.outbox import payload_size
from resilient_ws._core.protocol import grant_headers, parse_grant, parse_resume
from resilient_ws._core.replay import LostRange, buffers
from resilient_ws._core.resume import ClientSession, accept_resume, grant_of


class Server:
    """The server's side of one session, as ``serve()`` keeps it, without the I/O."""

    def __init__(self, policy: Replay) -> None:
        self.outbound, self.inbound = buffers(policy)

    def send(self, message: str) -> None:
        self.outbound.record(message, payload_size(message))

    def receive(self, count: int) -> None:
        for _ in range(count):
            self.inbound.deliver(0.0)

    def grant(
        self, headers: dict[str, str], *, resumed: bool
    ) -> tuple[dict[str, str], LostRange | None]:
        """Apply the client's request; the grant's headers and the client's lost range."""
        request = parse_resume(headers)
        gap = None
        if request is not None:
            gap = accept_resume(self.outbound, self.inbound, request)
        grant = grant_of("s1", "t" * 22, resumed=resumed, outbound=self.outbound,
                         inbound=self.inbound)  # fmt: skip
        return grant_headers(grant), gap


def new_session(policy: Replay) -> tuple[ClientSession, Server]:
    client, server = ClientSession(policy), Server(policy)
    response, _ = server.grant(client.headers(), resumed=False)
    assert client.grant(parse_grant(response)).resumed is False
    return client, server


def test_each_side_resends_exactly_what_the_other_lacks() -> None:
    client, server = new_session(Replay())
    for n in range(1, 6):  # client sends 5, the server got 3 before the link died
        client.outbound.record(f"c{n}", 2)
    server.receive(3)
    for n in range(1, 5):  # server sends 4, the client got 1
        server.send(f"s{n}")
    client.inbound.deliver(0.0)

    response, lost = server.grant(client.headers(), resumed=True)
    resumption = client.grant(parse_grant(response))
    assert lost is None
    assert resumption.resumed
    assert resumption.gap is None
    assert resumption.resend == ["c4", "c5"]
    # The server resends from what the client said it received.
    assert [message for _, message in server.outbound.unacked()] == ["s2", "s3", "s4"]


def test_what_a_full_buffer_dropped_is_one_exact_gap_on_each_side() -> None:
    policy = Replay(max_messages=2)
    client, server = new_session(policy)
    for n in range(1, 6):  # only the last two are kept
        client.outbound.record(f"c{n}", 2)
        server.send(f"s{n}")
    response, lost = server.grant(client.headers(), resumed=True)
    resumption = client.grant(parse_grant(response))
    assert lost == LostRange(1, 3)  # the server will never see c1..c3
    assert resumption.gap == LostRange(1, 3)  # nor the client s1..s3
    assert resumption.resend == ["c4", "c5"]


def test_a_resume_that_claims_more_than_was_sent_is_refused() -> None:
    client, server = new_session(Replay())
    server.send("s1")
    request = parse_resume(client.headers())
    assert request is not None
    bad = dataclasses.replace(request, received=5)  # the server sent 1
    with pytest.raises(ProtocolViolation) as caught:
        accept_resume(server.outbound, server.inbound, bad)
    assert caught.value.code == 4002
