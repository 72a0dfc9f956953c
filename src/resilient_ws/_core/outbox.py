"""The bounded queue of outbound messages held while the link is down.

Pure: it never waits. The I/O layer decides what to do when :meth:`Outbox.has_room`
says no (wait, raise or drop, per :class:`~resilient_ws.SendQueue`).
"""

from __future__ import annotations

from collections import deque

from ..config import SendQueue

__all__ = ["Message", "Outbox", "payload_size"]

Message = str | bytes


def payload_size(message: Message) -> int:
    """Bytes the message occupies on the wire (UTF-8 for text)."""
    if isinstance(message, str):
        # isascii() is O(1) in CPython: skip the encoding for ASCII text.
        return len(message) if message.isascii() else len(message.encode())
    return len(message)


class Outbox:
    """FIFO of messages bounded by count and bytes."""

    __slots__ = ("_items", "_policy", "size")

    def __init__(self, policy: SendQueue) -> None:
        self._policy = policy
        self._items: deque[tuple[Message, int]] = deque()
        self.size = 0
        """Total payload bytes held."""

    def __len__(self) -> int:
        return len(self._items)

    def check_size(self, size: int) -> None:
        """Raise ``ValueError`` for a message that could never fit."""
        if size > self._policy.max_bytes:
            raise ValueError(
                f"message of {size} bytes exceeds SendQueue.max_bytes={self._policy.max_bytes}"
            )

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits now."""
        return (
            len(self._items) < self._policy.max_messages
            and self.size + size <= self._policy.max_bytes
        )

    def append(self, message: Message, size: int) -> None:
        """Queue a message at the back. The caller checked :meth:`has_room`."""
        self._items.append((message, size))
        self.size += size

    def appendleft(self, message: Message, size: int) -> None:
        """Put back a message whose send was interrupted, ahead of the others.

        It may exceed the bounds by the messages in flight when the link died (at most one
        per sending task): dropping them would lose messages the application was told
        were accepted.
        """
        self._items.appendleft((message, size))
        self.size += size

    def make_room(self, size: int) -> tuple[int, int]:
        """Drop the oldest messages until ``size`` bytes fit; return (count, bytes) dropped."""
        count = dropped = 0
        while self._items and not self.has_room(size):
            _, item_size = self._items.popleft()
            self.size -= item_size
            count += 1
            dropped += item_size
        return count, dropped

    def popleft(self) -> tuple[Message, int]:
        """Remove and return the oldest message and its size."""
        message, size = self._items.popleft()
        self.size -= size
        return message, size

    def clear(self) -> list[Message]:
        """Remove and return every message, oldest first."""
        messages = [message for message, _ in self._items]
        self._items.clear()
        self.size = 0
        return messages
