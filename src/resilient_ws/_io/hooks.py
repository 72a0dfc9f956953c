"""websockets' connection classes with our hooks: the one module that overrides
websockets' private methods and reaches into its connection's internals.

:func:`connection_class` builds, per side and event loop, a subclass of websockets'
``ClientConnection``/``ServerConnection`` that notes each frame's arrival, keeps the peer's
lag beacon, hands replay control messages on, cuts control-frame floods, counts the bytes
written and samples the kernel's TCP state before the socket closes. :func:`send_control`
writes a control frame without waiting. What they rely on in websockets (``process_event``,
``recv_messages``, ``protocol.data_to_send``, ``send_data``, ``connection_lost``,
``close_stream``, ``set_connection_exc``...) is checked by ``tests/test_hooks.py``, which
fails, naming the hook, when a websockets release changes it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from websockets.frames import Opcode
from websockets.protocol import State

from .._core import tcpinfo as _tcpinfo
from .._core.protocol import BEACON_PREFIX, Beacon, beacon_of, decode_control
from .._logging import log
from ..exceptions import ProtocolViolation
from . import sockopts as _sockopts
from . import timers as _timers

__all__ = [
    "MAX_CONTROL_FRAMES",
    "ControlHandler",
    "connection_class",
    "is_stream_error",
    "is_trio_stream_error",
    "peer_address",
    "send_control",
]

_OPEN = State.OPEN


class ControlHandler(Protocol):
    """Receives the replay protocol's control messages of one link (``_io.replaylink``)."""

    def on_control(self, fields: Mapping[str, float]) -> None:
        """A control message with these fields arrived."""

    def malformed(self, error: ProtocolViolation) -> None:
        """A control message could not be decoded."""


class _Recording:
    """Mixed into websockets' connection classes: notes when each frame arrives (any
    inbound frame is proof of life), keeps the last lag beacon from the peer, and hands
    control messages to :attr:`control` on replay links."""

    # Slots of the classes connection_class() builds (no per-link dict growth), set here.
    last_inbound: float
    # When the last message frame arrived or was sent, and what to call at the next one
    # (a keepalive that parked a quiet link; called once, then cleared).
    last_data: float
    waker: Callable[[], None] | None
    # Called with the link after each ping is processed (and answered): serve() answers
    # probes with a lag beacon.
    on_ping: Callable[[Any], None] | None
    # Called with the payload and arrival time of each pong that is not a control
    # message: the keepalive matches its probes' pongs.
    on_pong: Callable[[bytes, float], None] | None
    # Called with the link when it is cut for a control frame flood: serve() turns the
    # flooder's address away for a while.
    on_flood: Callable[[Any], None] | None
    last_beacon: Beacon | None
    control: ControlHandler | None
    beacon_at: float  # when serve() last answered a probe with a beacon
    beacon_state: object  # what serve()'s last beacon to this link said, in short
    # Control frames (pings, pongs) received in the current second, and when it began.
    control_frames: int
    control_since: float
    # trio: whether frames are queued for the link's flush task, and whether it runs
    # (see send_control).
    unflushed: bool
    flushing: bool

    _trio = False  # set by connection_class()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.last_inbound = 0.0
        self.last_data = self.beacon_at = self.control_since = -math.inf
        self.waker = self.on_ping = self.on_pong = self.on_flood = None
        self.last_beacon = self.control = None
        self.beacon_state = None
        self.control_frames = 0
        self.unflushed = self.flushing = False
        super().__init__(*args, **kwargs)

    def _now(self) -> float:
        raise NotImplementedError

    def process_event(self, event: Any) -> None:
        now = self.last_inbound = self._now()
        # Handshake events (Request, Response) come through here too: they have no opcode.
        opcode = getattr(event, "opcode", None)
        if (opcode is Opcode.PONG or opcode is Opcode.PING) and self._flooding(now):
            return  # websockets answered the ping already; nothing else is done with it
        if opcode is Opcode.PONG:
            if event.data.startswith(BEACON_PREFIX):
                self._control(bytes(event.data))
            elif self.on_pong is not None:
                self.on_pong(bytes(event.data), now)
        elif opcode in _DATA_OPCODES:
            if self.recv_messages.closed:  # type: ignore[attr-defined]
                # websockets' trio connection closed its message stream while it still
                # held frames it had parsed: handing one on makes it log "unexpected
                # internal error". The link is closing; the peer resends what we lack.
                return
            self._data(now)
        super().process_event(event)  # type: ignore[misc]
        if opcode is Opcode.PING and self.on_ping is not None:
            self.on_ping(self)

    def _flooding(self, now: float) -> bool:
        """Count a control frame; past :data:`MAX_CONTROL_FRAMES` in a second, close the
        link (1008) and ignore the rest: a flood of pongs or pings from one peer would
        take the whole process's CPU."""
        if now - self.control_since >= 1.0:
            self.control_since, self.control_frames = now, 0
        self.control_frames += 1
        if self.control_frames <= MAX_CONTROL_FRAMES:
            return False
        if self.control_frames == MAX_CONTROL_FRAMES + 1:
            log("control_flood", logging.WARNING, peer=str(peer_address(self)),
                frames=self.control_frames, limit=MAX_CONTROL_FRAMES)  # fmt: skip
            if self.on_flood is not None:
                self.on_flood(self)
            # Fail the connection: the close frame goes out, and websockets discards what
            # else arrives unparsed (a closing handshake would parse the flood on while it
            # waited for the peer's close, which a flooder never sends).
            protocol: Any = getattr(self, "protocol")  # noqa: B009 - set by websockets
            protocol.fail(1008, "control frame flood")
            if self._trio:  # its writes wait for the socket: a task writes it
                _timers.Timers.current(trio=True).spawn(_flush_queued, self, True)
            else:
                getattr(self, "send_data")()  # noqa: B009 - websockets'
                # Stop reading now; the socket closes once the close frame is written.
                getattr(self, "transport").close()  # noqa: B009 - websockets'
        return True

    async def send(self, message: Any, *, text: bool | None = None) -> None:
        self._data(self._now())
        await super().send(message, text=text)  # type: ignore[misc]

    def _data(self, now: float) -> None:
        self.last_data = now
        waker = self.waker
        if waker is not None:
            self.waker = None
            waker()

    def _control(self, data: bytes) -> None:
        try:
            fields = decode_control(data)
        except ProtocolViolation as exc:
            # Only a peer that negotiated the protocol is held to its grammar.
            if self.control is not None:
                self.control.malformed(exc)
            return
        assert fields is not None  # the prefix was checked
        beacon = beacon_of(fields)
        if beacon is not None:
            self.last_beacon = beacon
        if self.control is not None:
            self.control.on_control(fields)


_DATA_OPCODES = frozenset((Opcode.TEXT, Opcode.BINARY, Opcode.CONT))

MAX_CONTROL_FRAMES = 5000
"""Pings and pongs a link may receive per second; beyond, it is closed with 1008. A replay
peer's acks (one pong per 64 messages by default) stay far below it."""


class _Counting:
    """Mixed into websockets' client connection classes: counts the bytes written on the
    link (:attr:`bytes_written`) and samples the kernel's TCP state just before the socket
    closes (:attr:`end_info`): together they tell which messages of a plain link the
    server's TCP never acknowledged. (Servers need neither.)
    """

    bytes_written: int
    # The last TCP_INFO sample before the socket closed; bytes_written at that moment,
    # and the offset up to which the kernel had transmitted them (None: unknown).
    end_info: _tcpinfo.TcpInfo | None
    end_written: int
    end_transmitted: int | None
    # Whether abort_link found nothing unsent or unacknowledged anywhere, user space
    # included (None: it did not look, or could not tell).
    end_drained: bool | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.bytes_written = self.end_written = 0
        self.end_info = self.end_transmitted = self.end_drained = None
        super().__init__(*args, **kwargs)
        # Both websockets connections write exactly what data_to_send() returns, and
        # nothing else: counting there makes each frame's end offset exact, handshake
        # included, at the cost of one call per write (not a syscall).
        protocol: Any = getattr(self, "protocol")  # noqa: B009 - set by websockets
        take = protocol.data_to_send

        def data_to_send() -> list[bytes]:
            writes: list[bytes] = take()
            for data in writes:  # usually one
                self.bytes_written += len(data)
            return writes

        protocol.data_to_send = data_to_send

    def capture_end(self) -> None:
        """Sample the kernel's view of the socket; call it just before the socket closes.

        ``tcpi_bytes_acked`` only grows, so the last successful sample is the best one;
        once the socket is closed, sampling fails and keeps the previous one.
        """
        sock = _sockopts.raw_socket(self)
        info = None if sock is None else _sockopts.read(sock)
        if info is not None:
            self.end_info = info
            self.end_written = written = self.bytes_written
            # Past this offset, bytes never left the kernel or user space: the server
            # cannot have them. (asyncio's buffer is already empty after an abort: then
            # this overestimates, which only counts more messages as possible duplicates.)
            unsent = info.notsent_bytes
            transport: Any = getattr(self, "transport", None)
            buffered = 0 if transport is None else transport.get_write_buffer_size()
            self.end_transmitted = None if unsent is None else written - unsent - buffered


class _AsyncioEnd:
    """asyncio: the transport closes the socket right after ``connection_lost``."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.capture_end()  # type: ignore[attr-defined]
        super().connection_lost(exc)  # type: ignore[misc]


class _TrioEnd:
    """trio: websockets closes the stream in ``close_stream``, however the link ends."""

    async def close_stream(self) -> None:
        self.capture_end()  # type: ignore[attr-defined]
        await super().close_stream()  # type: ignore[misc]


class _TrioWrites:
    """trio: a failed write after the peer's end of stream ends the link; it is no bug.

    At the end of the stream websockets' reader writes what the protocol still buffers,
    expecting only the closing of the TCP connection there, whose errors it handles. Our
    control frames wait in that buffer for the link's flush task (:func:`send_control`):
    when the peer reset the link first, their write fails and websockets logged
    "unexpected internal error". Such a failure is kept as the link's
    ``connection_exc`` instead; every other write fails as before.
    """

    async def send_data(self) -> None:
        try:
            await super().send_data()  # type: ignore[misc]
        except Exception as exc:
            protocol: Any = getattr(self, "protocol")  # noqa: B009 - set by websockets
            if protocol.state is not State.CLOSED or not is_stream_error(exc):
                raise
            getattr(self, "set_connection_exc")(exc)  # noqa: B009 - websockets'


def _asyncio_now(self: Any) -> float:
    # A protocol callback: no task is current, so read the loop's clock directly
    # (it is anyio.current_time() on asyncio).
    return float(self.loop.time())


def _trio_now(self: Any) -> float:
    import trio

    return trio.current_time()


@functools.cache
def connection_class(side: Literal["client", "server"], trio: bool) -> type[Any]:
    """websockets' connection class for ``side`` and the event loop, with :class:`_Recording`."""
    if trio:
        import websockets.trio.client
        import websockets.trio.server

        module: Any = websockets.trio
        now = _trio_now
    else:
        import websockets.asyncio.client
        import websockets.asyncio.server

        module = websockets.asyncio
        now = _asyncio_now
    writes: tuple[type, ...] = (_TrioWrites,) if trio else ()
    if side == "server":
        base = module.server.ServerConnection
        slots = {"_now": now, "_trio": trio, "__slots__": _RECORDING_SLOTS}
        return type(f"Recording{base.__name__}", (_Recording, *writes, base), slots)
    base = module.client.ClientConnection
    end = _TrioEnd if trio else _AsyncioEnd
    slots = {"_now": now, "_trio": trio, "__slots__": _RECORDING_SLOTS + _COUNTING_SLOTS}
    return type(f"Recording{base.__name__}", (_Counting, _Recording, end, *writes, base), slots)


# The attributes of _Recording and _Counting: slots, so that thousands of links do not
# each grow websockets' instance dict (a dict resize per link: ~1.6 KiB).
_RECORDING_SLOTS = tuple(_Recording.__annotations__)
_COUNTING_SLOTS = tuple(_Counting.__annotations__)


def peer_address(raw: Any) -> Any:
    """The link's remote address, or ``None``: on trio it calls ``getpeername()``, which
    raises once the peer is gone."""
    try:
        return getattr(raw, "remote_address", None)
    except OSError:
        return None


def send_control(raw: Any, data: bytes, *, ping: bool = False) -> None:
    """Send an unsolicited pong carrying ``data`` (or, with ``ping``, a ping whose pong the
    caller watches through the connection's ``on_pong``) now, without waiting.

    asyncio: into the transport's buffer, as websockets answers pings itself. trio, whose
    writes wait for the socket: the frame is queued and one task per link writes what is
    queued (a peer that does not read holds one task, not one per frame). Nothing is sent
    on a link that is not open; a link that breaks meanwhile is not an error (its reader
    sees it).
    """
    if raw.protocol.state is not _OPEN:
        return
    if ping:
        raw.protocol.send_ping(data)
    else:
        raw.protocol.send_pong(data)
    if not raw._trio:
        raw.send_data()
        return
    raw.unflushed = True
    if not raw.flushing:
        raw.flushing = True
        _timers.Timers.current(trio=True).spawn(_flush_queued, raw)


async def _flush_queued(link: Any, close: bool = False) -> None:
    """trio: write the link's queued frames until none is queued (see send_control); with
    ``close``, then close its stream, so that nothing more is read from it (a link failed
    for a flood). A link already broken is not an error."""
    try:
        # Closing, write at least once ourselves: another flush task may have taken the
        # flag and not yet written the close frame (send_data writes under its lock).
        if close:
            link.unflushed = True
        while link.unflushed:
            link.unflushed = False
            await link.send_data()
        if close:
            await link.stream.aclose()
    except Exception as exc:
        if not is_stream_error(exc):
            raise
    finally:
        link.flushing = False


def is_stream_error(exc: BaseException) -> bool:
    """A socket's failure, as asyncio (``OSError``) or trio reports it."""
    return isinstance(exc, OSError) or is_trio_stream_error(exc)


def is_trio_stream_error(exc: BaseException) -> bool:
    try:
        import trio
    except ImportError:
        return False
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))
