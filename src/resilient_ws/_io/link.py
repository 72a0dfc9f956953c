"""The view of one underlying link that the ``on_connect`` hook gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .._core.outbox import Message
from . import backend as _backend
from .backend import RawLink

if TYPE_CHECKING:
    from .replaylink import ReplayLink

__all__ = ["Link", "OnConnect"]


class Link:
    """One underlying WebSocket link, as seen by the ``on_connect`` hook.

    Use it to authenticate or resubscribe before queued messages flush. Errors are raised
    as :class:`~resilient_ws.LinkError`.

    Attributes:
        url: The URL connected to (not redacted: it is yours).
        number: 1 for the connection's first link, then 2, 3...
        subprotocol: The negotiated subprotocol, if any.
    """

    __slots__ = ("_raw", "_replay", "number", "subprotocol", "url")

    def __init__(
        self, raw: RawLink, url: str, number: int, replay: ReplayLink | None = None
    ) -> None:
        self._raw = raw
        # The link's ReplayLink when it speaks the replay protocol: its messages are
        # numbered like any other.
        self._replay = replay
        self.url = url
        self.number = number
        self.subprotocol = raw.subprotocol

    async def send(self, message: Message) -> None:
        """Send one message on this link, ahead of anything queued."""
        if self._replay is not None:
            self._replay.record(message)
        try:
            await self._raw.send(message)
        except _backend.ConnectionClosed as exc:
            raise _backend.translate(exc) from exc

    async def recv(self) -> Message:
        """Receive one message on this link (a reply to authentication, say)."""
        try:
            message = await self._raw.recv()
        except _backend.ConnectionClosed as exc:
            raise _backend.translate(exc) from exc
        if self._replay is not None:
            self._replay.delivered()
        return message


OnConnect = Callable[[Link], Awaitable[None]]
"""The ``on_connect`` hook: ``async def on_connect(link: Link) -> None``."""
