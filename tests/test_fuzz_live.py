"""Fuzzing a live serve() with hostile handshakes and control messages (issue 11).

One ``resilient_ws.serve()`` with default settings per test function, on 127.0.0.1, both
anyio backends. Hostile peers are raw TCP clients writing their requests and frames by
hand, so that bytes websockets' own client would refuse (non-ASCII, control characters,
huge or repeated headers, pongs over 125 bytes) reach the server. Each hostile input is
checked against what docs/protocol.md (and HTTP/1.1, with websockets' documented limits
of 8192 bytes a line and 128 headers) says the server answers: an exact HTTP status, or an
exact close code, never a 500, a 1011 or a hang. Throughout, a well-behaved
``resilient_ws.connect()`` client opened at the start keeps its one link and gets every echo;
at the end a fresh client is served too; and nothing is logged as an error
(``handler_failed``, ``link_failed``, websockets' ``process_response failed``...). The last
test repeats a race the fuzz found (websockets' trio connection logged an internal error).

Design: hypothesis runs in a worker thread (``anyio.to_thread.run_sync``) while the async
test holds the server and the well-behaved client open on the event loop; each example
runs its hostile cases on that loop (``anyio.from_thread.run``) and checks the bystander
and the logs before it returns. So every example and every shrinking step hits the same
live server, which keeps whatever earlier examples left behind (detached sessions, failed
resume attempts counted against 127.0.0.1, links in their closing handshakes), and
hypothesis still shrinks a failure to a minimal list of cases. The loop keeps running
between examples (hypothesis's own work happens in the thread), so the server's lag monitor,
stall watchdog and keepalive see a normal loop, not one paused by the test. A failure that
depends on what earlier examples left may not replay alone: hypothesis then reports it as
flaky, with the example that failed first. A hang is not shrunk (each attempt would cost
``TIMEOUT``): it is reported at once with its input (``Hang``). Drawing a batch per
``anyio.run`` would restart the server for every example; ``@given`` on the async test with
an async fixture would keep it, but pauses the loop between examples. Examples are
derandomized and not stored, so a CI run is reproducible; a few explicit ones run first
every time, so that each documented answer is seen whatever the draws.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import pytest
from _helpers import TIMEOUT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import resilient_ws
from resilient_ws._core.protocol import SUBPROTOCOL

pytestmark = pytest.mark.anyio

C = TypeVar("C")

# Hypothesis settings of both fuzz tests: bounded, reproducible, no database.
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# websockets' documented limits on a request (websockets.http11): a line, CRLF included,
# and the number of header lines.
MAX_LINE = 8192
MAX_HEADERS = 128
# A link that ended without a close frame (EOF or reset), and one still open.
GONE = "gone"
OPEN = "open"


# ---- the live server and its well-behaved client ---------------------------------------------


async def echo(session: resilient_ws.ServerSession) -> None:
    async for message in session:
        await session.send(message)


@dataclass
class Live:
    """The server under fuzz, its well-behaved client, and what was logged so far."""

    port: int
    bystander: resilient_ws.Connection
    logs: list[MutableMapping[str, Any]]
    caplog: pytest.LogCaptureFixture
    echoes: int = 0
    seen_logs: int = 0
    seen_records: int = 0

    async def run(self, run_case: Callable[[int, C], Awaitable[None]], cases: Sequence[C]) -> None:
        """One hypothesis example: its hostile cases one after the other, then the checks.

        Raises:
            Hang: A case, or the well-behaved client, got no answer within ``TIMEOUT``.
        """
        try:
            for case in cases:
                with anyio.fail_after(TIMEOUT):
                    await run_case(self.port, case)
            await self.check_served()
        except TimeoutError as exc:
            raise Hang(f"no answer within {TIMEOUT} s, in or after {list(cases)!r:.3000}") from exc
        self.check_logs()

    async def check_served(self) -> None:
        """The well-behaved client still gets its echo."""
        self.echoes += 1
        message = f"bystander {self.echoes}"
        with anyio.fail_after(TIMEOUT):
            await self.bystander.send(message)
            assert await self.bystander.recv() == message

    def check_logs(self) -> None:
        """Nothing logged since the last check is an error: no ``handler_failed``,
        ``link_failed``, ``timer_failed``, ``connect_failed``, and no error from websockets'
        loggers (a 500 is logged as ``process_response failed``), but for one known race."""
        new, self.seen_logs = self.logs[self.seen_logs :], len(self.logs)
        failed = [
            entry
            for entry in new
            if str(entry["event"]).endswith("_failed")
            or entry.get("log_level") in ("error", "critical")
        ]
        assert failed == []
        records = self.caplog.records
        new_records, self.seen_records = records[self.seen_records :], len(records)
        errors = [record.getMessage() for record in new_records if is_error(record)]
        assert errors == []


def is_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


class Hang(BaseException):
    """No answer within ``TIMEOUT``. Not an ``Exception``, so that hypothesis reports it at
    once, input included, rather than shrink it at ``TIMEOUT`` per attempt; ``reported()``
    turns it into an ``AssertionError`` before it reaches the test runner."""


@contextmanager
def reported() -> Iterator[None]:
    try:
        yield
    except Hang as exc:
        raise AssertionError(*exc.args) from exc


@asynccontextmanager
async def live_server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Live]:
    """serve() with default settings and a resilient_ws client connected to it; on the
    way out, checks that the client kept its one link and that a new client is served."""
    with capture_logs() as logs:
        async with resilient_ws.serve(echo, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with resilient_ws.connect(url) as bystander:
                live = Live(server.port, bystander, logs, caplog)
                await live.check_served()
                yield live
                await live.check_served()
                assert bystander.stats.links == 1  # it never even reconnected
            async with resilient_ws.connect(url) as fresh:
                with anyio.fail_after(TIMEOUT):
                    await fresh.send("fresh")
                    assert await fresh.recv() == "fresh"
        live.check_logs()


async def fuzz(
    live: Live,
    cases: st.SearchStrategy[C],
    run_case: Callable[[int, C], Awaitable[None]],
    *,
    examples: int,
    explicit: Sequence[C],
) -> None:
    """Run hypothesis in a worker thread; each example runs on the live server's loop.
    The ``explicit`` cases run first, as one example, whatever the random draws."""

    @settings(FUZZ, max_examples=examples)
    @given(st.lists(cases, min_size=1, max_size=4))
    @example(list(explicit))
    def run(batch: list[C]) -> None:
        anyio.from_thread.run(live.run, run_case, batch)

    with reported():
        await anyio.to_thread.run_sync(run)


# ---- raw HTTP and WebSocket framing ----------------------------------------------------------

REQUEST = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
)
BASE_HEADERS = 5  # the header lines of REQUEST


@dataclass
class Peer:
    """A raw TCP client, and what it has read but not parsed yet."""

    stream: anyio.abc.SocketStream
    buffer: bytes = b""

    async def send(self, data: bytes) -> bool:
        """Write ``data``; ``False`` if the server already closed the connection."""
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return False
        return True

    async def fill(self) -> bool:
        """Read more; ``False`` at EOF or reset."""
        try:
            self.buffer += await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return False
        return True

    async def response(self) -> tuple[int | str, dict[str, list[str]]]:
        """The HTTP response's status (or ``GONE``) and its headers (lowercase names)."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self.fill():
                assert self.buffer == b"", f"a truncated response: {self.buffer[:200]!r}"
                return GONE, {}
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return int(status), headers

    async def next_frame(self) -> tuple[int, bytes] | None:
        """The server's next frame (opcode, payload), or ``None`` if the link broke."""
        while True:
            data = self.buffer
            if len(data) >= 2:
                assert data[1] & 0x80 == 0, "a server's frames are not masked"
                length, start = data[1] & 0x7F, 2
                if length >= 126:
                    start = 4 if length == 126 else 10
                    length = int.from_bytes(data[2:start], "big")
                if len(data) >= start and len(data) >= start + length:
                    self.buffer = data[start + length :]
                    return data[0] & 0x0F, data[start : start + length]
            if not await self.fill():
                return None

    async def until(self, text: bytes | None) -> int | str:
        """Read frames until the echo of ``text`` (``OPEN``) or a close frame (its code);
        ``GONE`` if the link broke first. Pings are answered."""
        while True:
            got = await self.next_frame()
            if got is None:
                return GONE
            opcode, payload = got
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if opcode == OP_PING:
                await self.send(frame(OP_PONG, payload))
            elif opcode == OP_TEXT and text is not None and payload == text:
                return OPEN


OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
MASK = b"\x5a\xa5\x0f\xf0"


def frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: final, masked; any length, even for control frames."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))
    return head + MASK + masked


@asynccontextmanager
async def open_peer(
    port: int, headers: Sequence[tuple[bytes, bytes]], *, offer: bool
) -> AsyncIterator[tuple[Peer, int | str, dict[str, list[str]]]]:
    """Send an opening handshake with extra header lines, written by hand; the peer, the
    response's status and headers. The connection is closed on the way out, even when
    cancelled."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = REQUEST.format(key=key).encode()
    if offer:
        request += f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n".encode()
    request += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    peer = Peer(await anyio.connect_tcp("127.0.0.1", port))
    try:
        if not await peer.send(request):
            yield peer, GONE, {}
        else:
            yield peer, *await peer.response()
    finally:
        await anyio.aclose_forcefully(peer.stream)


# ---- hostile handshakes ------------------------------------------------------------------------

RESUME_NAMES = (b"RWS-Session", b"RWS-Token", b"RWS-Received", b"RWS-Replay-From")
# URL-safe base64 without padding, at most 64 characters (docs/protocol.md section 4).
OPAQUE = re.compile(rb"[A-Za-z0-9_-]{1,64}")
DIGITS = re.compile(rb"[0-9]+")
# HTTP/1.1 (RFC 9110 section 5): a field name is a token; a value is VCHAR, obs-text,
# spaces and tabs.
TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
FIELD_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")


@dataclass(frozen=True)
class Handshake:
    """A hostile opening handshake: extra header lines; whether it offers the replay
    protocol; if it gets a 101, whether the peer closes politely or just vanishes; and how
    many times it is sent in a row (guessing tokens)."""

    headers: tuple[tuple[bytes, bytes], ...]
    offer: bool
    polite: bool
    repeat: int = 1


def case_variants(name: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([name, name.lower(), name.upper()])


valid_opaque = st.from_regex(OPAQUE, fullmatch=True)
valid_count = st.integers(0, 10**18 - 1).map(lambda n: str(n).encode())
# A well-formed value of each resume header.
VALID = {
    b"RWS-Session": valid_opaque,
    b"RWS-Token": valid_opaque,
    b"RWS-Received": valid_count,
    b"RWS-Replay-From": st.integers(1, 10**18 - 1).map(lambda n: str(n).encode()),
}
# Values HTTP allows (visible ASCII, spaces, tabs, obs-text), most of them wrong for an
# RWS-* header: near misses of its form, numbers in other notations, non-ASCII, huge.
hostile_value = st.one_of(
    valid_opaque,
    valid_count,
    st.sampled_from(
        [
            *b"-1 +1 1_000 1e3 0x10 1.0 nan inf 0 abc= ab/cd+e 9223372036854775807".split(),
            *(b"", b" 7 ", b"a b", b"\t", b"A" * 65, "été".encode(), b"\xff\xfe"),
            "\N{ARABIC-INDIC DIGIT ONE}".encode(),
        ]
    ),
    st.integers(-(10**30), 10**30).map(lambda n: str(n).encode()),
    st.lists(st.sampled_from([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]), max_size=24).map(
        bytes
    ),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12).map(str.encode),
    st.integers(100, 12_000).map(lambda n: b"A" * n),  # past a line's limit from ~8180
)
# Values that are not HTTP: control characters, a bare CR or LF.
breaking_value = st.one_of(
    st.sampled_from([b"\x00", b"1\r", b"x\ny", b"\x7f", b"a\x1bb"]),
    st.binary(min_size=1, max_size=16),
)
header_name = st.one_of(
    st.sampled_from(RESUME_NAMES).flatmap(case_variants),
    st.sampled_from(
        [b"RWS-Resumed", b"RWS-Future-Field", b"X-Fuzz", b"RWS Session", b"RWS-Token "]
    ),
    st.from_regex(rb"X-[A-Za-z0-9-]{1,12}", fullmatch=True),
)


@st.composite
def handshakes(draw: st.DrawFn) -> Handshake:
    lines: list[tuple[bytes, bytes]] = []
    if draw(st.booleans()):
        # A well-formed resume request (of a session the server never granted), then
        # perhaps one header of it changed, repeated or dropped.
        for name in RESUME_NAMES:
            lines.append((draw(case_variants(name)), draw(VALID[name])))
        index = draw(st.integers(0, len(lines) - 1))
        change = draw(st.sampled_from(["none", "none", "value", "repeat", "drop"]))
        if change == "value":
            lines[index] = (lines[index][0], draw(hostile_value))
        elif change == "repeat":
            lines.append((draw(case_variants(RESUME_NAMES[index])), draw(hostile_value)))
        elif change == "drop":
            del lines[index]
    else:
        # Some of its headers, each well-formed or not.
        for name in RESUME_NAMES:
            if draw(st.booleans()):
                value = st.one_of(VALID[name], hostile_value)
                lines.append((draw(case_variants(name)), draw(value)))
    lines += draw(st.lists(st.tuples(header_name, hostile_value), max_size=3))
    if draw(st.sampled_from([False, False, False, True])):
        lines.append((draw(header_name), draw(breaking_value)))
    filler = draw(st.sampled_from([0, 0, 0, 5, MAX_HEADERS - BASE_HEADERS, 140]))
    lines += [(b"X-Fill-%d" % i, b"x") for i in range(filler)]
    lines = draw(st.permutations(lines)) if draw(st.booleans()) else lines
    offer = draw(st.sampled_from([True, True, True, False]))
    return Handshake(tuple(lines), offer=offer, polite=draw(st.booleans()))


def http_outcome(case: Handshake) -> int | str | None:
    """What the HTTP layer answers before resilient_ws sees the request: 431 (a line or
    the headers too large), ``GONE`` (not HTTP: the connection is closed, no response),
    or ``None`` (a well-formed request)."""
    count = BASE_HEADERS + case.offer
    for name, value in case.headers:
        line = name + b": " + value + b"\r\n"
        first = line.split(b"\n", 1)[0] + b"\n"  # a line ends at its first LF
        if len(first) > MAX_LINE:
            return 431
        if first != line or not TOKEN.fullmatch(name):
            return GONE
        if not FIELD_VALUE.fullmatch(value.strip(b" \t")):
            return GONE
        count += 1
        if count > MAX_HEADERS:
            return 431
    return None


def resume_outcome(case: Handshake) -> set[int]:
    """The statuses docs/protocol.md allows for a well-formed request offering the replay
    protocol: 101 for a new session; for a resume request, 400 if it is malformed (a
    resume header missing, repeated or not of its form), else 101 with a new session (the
    server cannot know the session or its token) or 429 (too many failed resumes from
    this address)."""
    values: dict[bytes, list[bytes]] = {}
    for name, value in case.headers:
        values.setdefault(name.lower(), []).append(value.strip(b" \t"))
    if b"rws-session" not in values:
        return {101}
    found = [values.get(name.lower(), []) for name in RESUME_NAMES]
    if any(len(each) != 1 for each in found):
        return {400}
    session, token, received, replay_from = (each[0] for each in found)
    if not (OPAQUE.fullmatch(session) and OPAQUE.fullmatch(token)):
        return {400}
    if not (DIGITS.fullmatch(received) and DIGITS.fullmatch(replay_from)):
        return {400}
    if int(received) >= 1 << 63 or not 1 <= int(replay_from) < 1 << 63:
        return {400}  # "Message numbers are below 2^63"; replay_from is at least 1
    if max(len(received), len(replay_from)) > 18:
        # Below 2^63 but 19 digits: the spec allows it, serve() refuses it (400).
        return {101, 429, 400}
    return {101, 429}


async def run_handshake(port: int, case: Handshake) -> None:
    for _ in range(case.repeat):
        await handshake_once(port, case)


async def handshake_once(port: int, case: Handshake) -> None:
    expected: set[int | str]
    early = http_outcome(case)
    if early is not None:
        expected = {early}
    elif case.offer:
        expected = set(resume_outcome(case))
    else:
        expected = {101}  # RWS-* headers mean nothing on a plain link
    async with open_peer(port, case.headers, offer=case.offer) as (peer, status, headers):
        assert status in expected, f"{status} for {case}, expected one of {expected}"
        if status == 101:
            check_grant(case, headers)
            if case.polite:
                await peer.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
                assert await peer.until(None) == 1000
        elif status == 429:
            assert int(headers["retry-after"][0]) >= 1


def check_grant(case: Handshake, headers: dict[str, list[str]]) -> None:
    """A 101 names a new session of its own, never the one the request named."""
    if not case.offer:
        assert "sec-websocket-protocol" not in headers
        assert not [name for name in headers if name.startswith("rws-")]
        return
    assert headers["sec-websocket-protocol"] == [SUBPROTOCOL]
    grant = {name: value for name, value in headers.items() if name.startswith("rws-")}
    session, token = grant["rws-session"], grant["rws-token"]
    assert len(session) == 1
    assert OPAQUE.fullmatch(session[0].encode())
    assert len(token) == 1
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,64}", token[0])  # >= 16 random bytes
    assert (grant["rws-resumed"], grant["rws-received"], grant["rws-replay-from"]) == (
        ["0"],
        ["0"],
        ["1"],
    )
    asked = [value for name, value in case.headers if name.lower() == b"rws-session"]
    assert session[0].encode() not in [value.strip(b" \t") for value in asked]


def resume(**changes: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of a well-formed resume request, some replaced (``RWS_Token=...``)."""
    headers = {"RWS-Session": b"c2Vzc2lvbg", "RWS-Token": b"dG9rZW4tdG9rZW4tdG9rZW4",
               "RWS-Received": b"0", "RWS-Replay-From": b"1"}  # fmt: skip
    headers.update({name.replace("_", "-"): value for name, value in changes.items()})
    return tuple((name.encode(), value) for name, value in headers.items())


# Run first, every time: each of the server's answers at least once.
HANDSHAKES = [
    Handshake(resume(), offer=True, polite=True),  # 101, a new session
    Handshake(resume(RWS_Received=b"1e3"), offer=True, polite=True),  # 400
    Handshake((*resume(), (b"rws-session", b"other")), offer=True, polite=True),  # 400
    Handshake(resume(RWS_Token=b"A" * 9000), offer=True, polite=True),  # 431
    Handshake(resume(RWS_Session=b"s\x00"), offer=True, polite=True),  # not HTTP
    Handshake(resume(RWS_Session=b"\xc3\xa9"), offer=False, polite=False),  # a plain 101
]


async def test_hostile_handshakes_get_documented_answers(caplog: pytest.LogCaptureFixture) -> None:
    async with live_server(caplog) as live:
        await fuzz(live, handshakes(), run_handshake, examples=150, explicit=HANDSHAKES)
        # Then a peer guessing tokens: past the 100 failed resumes per 10 s allowed from
        # its address, 429 (and the well-behaved client, at the same address, goes on).
        guessing = Handshake(resume(), offer=True, polite=False, repeat=105)
        with reported():
            await live.run(run_handshake, [guessing])
        # Its resumes were logged by session id, never with the token (docs/security.md).
        logged = [repr(entry) for entry in live.logs]
        assert [entry for entry in logged if "c2Vzc2lvbg" in entry]
        assert [entry for entry in logged if "dG9rZW4tdG9rZW4tdG9rZW4" in entry] == []


# ---- hostile control messages ------------------------------------------------------------------

PREFIX = b"rws1 "
# docs/protocol.md section 3: a field is a lowercase name of at most 16 characters, "=",
# a plain non-negative decimal.
CONTROL_FIELD = re.compile(rb"([a-z][a-z0-9_]{0,15})=([0-9]{1,20}(?:\.[0-9]{1,20})?)")
OTHER_SPACE = re.compile(rb"[\t\n\r\x0b\x0c]")
MALFORMED, OUT_OF_RANGE, PROTOCOL_ERROR = 4001, 4002, 1002


@dataclass(frozen=True)
class Controls:
    """Frames on a replay link: ("pong" | "ping" | "text", payload) in order; then the
    peer closes politely or vanishes."""

    ops: tuple[tuple[str, bytes], ...]
    polite: bool


field_name = st.one_of(
    st.sampled_from([b"ack", b"ack", b"lag", b"max", b"stall", b"ACK", b"x" * 17, b"1a", b""]),
    st.from_regex(rb"[a-z][a-z0-9_]{0,15}", fullmatch=True),
)
field_value = st.one_of(
    st.integers(0, 4).map(lambda n: str(n).encode()),
    st.integers(0, 10**20).map(lambda n: str(n).encode()),
    st.from_regex(rb"[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    st.sampled_from(
        [
            *b"-1 +1 1e3 1_0 nan inf 0x1 1. .5 1.5 0.0 2.000".split(),
            *(b"", b"\xff", b"1" * 21, b"1." + b"0" * 21),
        ]
    ),
)
control_field = st.one_of(
    st.tuples(field_name, field_value).map(lambda pair: pair[0] + b"=" + pair[1]),
    st.tuples(field_name, field_value).map(lambda pair: pair[0] + b"==" + pair[1]),
    field_name,
    st.binary(max_size=8),
)


good_field = st.tuples(
    st.sampled_from([b"ack", b"ack", b"ack", b"lag", b"max", b"stall", b"future_field"]),
    st.one_of(
        st.integers(0, 4).map(lambda n: str(n).encode()),
        st.from_regex(rb"[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    ),
).map(lambda pair: pair[0] + b"=" + pair[1])


@st.composite
def control_payloads(draw: st.DrawFn) -> bytes:
    """Control messages by the grammar, or nearly; some too long for a control frame."""
    if draw(st.booleans()):
        return PREFIX + b" ".join(draw(st.lists(good_field, min_size=1, max_size=4)))
    prefix = draw(st.sampled_from([PREFIX] * 4 + [b"rws1", b"RWS1 ", b"rws2 ", b" rws1 ", b""]))
    separator = draw(st.sampled_from([b" "] * 6 + [b"  ", b"\t"]))
    payload = prefix + separator.join(draw(st.lists(control_field, max_size=5)))
    if draw(st.booleans()):
        payload += draw(st.sampled_from([b" pad=", b""])) + b"0" * draw(st.integers(0, 140))
    return payload


texts = st.tuples(st.just("text"), st.sampled_from([b"m", b"rws1 ack=1", "é".encode()]))
controls_op = st.one_of(
    st.tuples(st.just("pong"), control_payloads()),
    st.tuples(st.just("pong"), control_payloads()),
    st.tuples(st.just("pong"), st.binary(max_size=140)),
    st.tuples(st.just("ping"), st.binary(max_size=140)),
    texts,
    texts,
)
controls = st.builds(
    Controls, st.lists(controls_op, min_size=1, max_size=8).map(tuple), st.booleans()
)


@dataclass
class Oracle:
    """What docs/protocol.md section 3 says the server does with a link's frames: the
    close code of the first violation, or an open link. Where the spec leaves the reading
    open (separators other than one space, repeated acks, an ack like ``1.0``), any
    documented outcome is accepted from then on."""

    sent: int = 0  # the server's data messages (echoes) so far
    acked: int = 0
    violation: int | None = None
    lenient: bool = False
    also: set[int] = field(default_factory=set)

    def feed(self, kind: str, payload: bytes) -> None:
        if self.violation is not None:
            if kind != "text" and len(payload) > 125:
                # Parsed before the first violation's close went out: a WebSocket error.
                self.also.add(PROTOCOL_ERROR)
            return
        if kind == "text":
            self.sent += 1
        elif len(payload) > 125:
            self.violation = PROTOCOL_ERROR
        elif kind == "pong" and payload.startswith(PREFIX):
            self.control(payload[len(PREFIX) :])

    def control(self, body: bytes) -> None:
        items = body.split(b" ")
        if not body:
            self.violation = MALFORMED  # "A pong carries one or more fields"
            return
        if OTHER_SPACE.search(body) or b"" in items:
            self.lenient = True
            return
        fields = [CONTROL_FIELD.fullmatch(item) for item in items]
        if not all(fields):
            self.violation = MALFORMED
            return
        acks = [match[2] for match in fields if match is not None and match[1] == b"ack"]
        if len(set(acks)) > 1:
            self.lenient = True
        elif acks:
            whole, _, fraction = acks[0].partition(b".")
            if fraction.strip(b"0"):
                self.violation = MALFORMED  # numbers of messages are integers
            elif fraction:
                self.lenient = True
            elif not self.acked <= int(whole) <= self.sent:
                self.violation = OUT_OF_RANGE
            else:
                self.acked = int(whole)

    def allowed(self) -> set[int | str]:
        if self.lenient:
            return {OPEN, MALFORMED, OUT_OF_RANGE, PROTOCOL_ERROR}
        if self.violation is None:
            return {OPEN}
        return {self.violation, *self.also}


async def run_controls(port: int, case: Controls) -> None:
    oracle = Oracle()
    for kind, payload in case.ops:
        oracle.feed(kind, payload)
    allowed = oracle.allowed()
    async with open_peer(port, (), offer=True) as (peer, status, headers):
        assert status == 101
        assert headers["sec-websocket-protocol"] == [SUBPROTOCOL]
        outcome = await drive(peer, case, closing=OPEN not in allowed)
        assert outcome in allowed, f"{outcome} for {case}, expected one of {allowed}"


async def drive(peer: Peer, case: Controls, *, closing: bool) -> int | str:
    """Send the case's frames, waiting for each text's echo; then check that the link
    echoes, and end it: wait for the server's close when it must close (``closing``: an
    echo may still win the race), else close it politely or vanish, as the case says.
    Returns the close code the server sent, ``OPEN`` or ``GONE``."""
    opcodes = {"pong": OP_PONG, "ping": OP_PING, "text": OP_TEXT}
    for kind, payload in case.ops:
        await peer.send(frame(opcodes[kind], payload))
        if kind == "text":
            outcome = await peer.until(payload)
            if outcome != OPEN:
                return outcome
    await peer.send(frame(OP_TEXT, b"end"))
    outcome = await peer.until(b"end")
    if outcome != OPEN:
        return outcome
    if closing:
        return await peer.until(None)
    if not case.polite:
        return OPEN
    # The server answers a close with the same code, unless it was closing already.
    await peer.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
    code = await peer.until(None)
    return OPEN if code == 1000 else code


# Run first, every time: each documented close code, and links that stay open.
CONTROLS = [
    Controls((("text", b"m"), ("pong", b"rws1 ack=1 lag=0.5 future=7")), polite=True),
    Controls((("pong", b"rws1 ack=1_0"),), polite=True),  # 4001
    Controls((("text", b"m"), ("pong", b"rws1 ack=1"), ("pong", b"rws1 ack=0")), polite=True),
    Controls((("pong", b"rws1 ack=" + b"0" * 130),), polite=False),  # 1002
    Controls((("ping", b"\x00" * 125), ("pong", b"RWS1 ack=x")), polite=False),  # open
]


async def test_hostile_control_messages_close_only_their_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with live_server(caplog) as live:
        await fuzz(live, controls, run_controls, examples=100, explicit=CONTROLS)


# The fuzz found it: a 4002 while pings are in flight, then the peer resets. On trio
# websockets' reader still held frames it had parsed when the closing task closed its
# message stream, and logged "unexpected internal error" (EOFError "stream of frames
# ended") putting the next one into it, for about 3 % of such links (none in 400 on
# asyncio). _io.hooks._Recording.process_event drops data frames once the stream is closed.
RACE = Controls((("pong", b"rws1 ack=4"), ("ping", b""), ("ping", b""), ("ping", b"")), True)


async def test_a_violation_closed_while_the_peer_resets_logs_no_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with resilient_ws.serve(echo, "127.0.0.1", 0) as server:
        for _ in range(400):
            with anyio.fail_after(TIMEOUT):
                await run_controls(server.port, RACE)  # the link is closed with 4002
            errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
            if errors:
                break
    assert [record.getMessage() for record in errors] == []
