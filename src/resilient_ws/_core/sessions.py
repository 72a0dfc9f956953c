"""Where a server keeps its sessions between links (docs/protocol.md sections 4, 5 and 7).

Pure: times are passed in. :class:`SessionStore` is the interface; :class:`MemorySessionStore`
the default, in-process implementation. The interface deals in session ids, tokens and an
opaque ``state`` (the replay bookkeeping), so a shared store (Redis, say) can implement it
later to let a session resume on another server node, by serializing ``state``.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = [
    "MemorySessionStore",
    "Found",
    "SessionLimit",
    "SessionRecord",
    "SessionStore",
    "SourceLimit",
    "Throttled",
    "Unknown",
]

S = TypeVar("S")

# Resume tokens: 24 random bytes (192 bits; the spec asks for >= 128), URL-safe base64.
_TOKEN_BYTES = 24
_ID_BYTES = 12


class SessionLimit(Exception):
    """The store holds ``max_sessions`` already; answer the handshake with 503 + Retry-After."""


class SourceLimit(SessionLimit):
    """``max_away_per_source`` sessions opened from the request's address are away (no
    link) already; answer the handshake with 429 + Retry-After."""


@dataclass(slots=True, eq=False)
class SessionRecord(Generic[S]):
    """One session as the store keeps it.

    Attributes:
        id: Public session id.
        token: Secret resume token.
        state: The server's bookkeeping for the session (opaque to the store).
        detached_at: When its last link ended; ``None`` while a link is live.
        source: The address it was opened from, if the store counts sessions per source.
    """

    id: str
    token: str
    state: S
    detached_at: float | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Found(Generic[S]):
    """The request named a live or detached session and held its token."""

    record: SessionRecord[S]


@dataclass(frozen=True, slots=True)
class Unknown:
    """No such session (never existed, expired, forgotten) or a wrong token: start a new one.

    Attributes:
        reason: ``"unknown"`` or ``"bad_token"``, for the log; never sent to the client.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Throttled:
    """Too many failed resume attempts from this source: answer 429 with ``Retry-After``."""

    retry_after: float


class SessionStore(Protocol[S]):
    """What the server needs from a session store."""

    def open(self, state: S, now: float, source: str | None = None) -> SessionRecord[S]:
        """Create a session with a fresh id and token, attached to a live link.

        Args:
            state: The server's bookkeeping for it.
            now: The time.
            source: The client's address, for a limit per source (``None``: not counted).

        Raises:
            SessionLimit: The store is full.
            SourceLimit: As many sessions opened from ``source`` are away as one source
                may have.
        """

    def resume(
        self, session_id: str, token: str, now: float, source: str
    ) -> Found[S] | Unknown | Throttled:
        """Look up a session for a resume request, checking its token in constant time.

        A request with the right token is never throttled. Failed ones (unknown session,
        wrong token) may be, per ``source`` (the client's address), and never count
        against the session they name: knowing a session's id must not lock its owner out.
        """

    def detach(self, session_id: str, now: float) -> None:
        """Its link ended; the TTL starts now."""

    def attach(self, session_id: str) -> None:
        """A link took it over again; it no longer expires."""

    def close(self, session_id: str) -> None:
        """Forget it now (closed normally)."""

    def expire(self, now: float) -> list[SessionRecord[S]]:
        """Forget and return the detached sessions whose TTL has passed."""

    def __len__(self) -> int: ...


class MemorySessionStore(Generic[S]):
    """Sessions in a dict, bounded in number, forgotten ``ttl`` seconds after detaching.

    Args:
        max_sessions: Most sessions held at once.
        ttl: Seconds a detached session is kept for a resume.
        failed_resume_limit: Most failed resume attempts (unknown session or wrong token)
            from one source address per ``failed_resume_window``; past it, further failed
            attempts from that address are answered 429. A client with the right token is
            never throttled, however often its network flaps. Clients behind one NAT share
            an address: after a server restart each of them fails once.
        failed_resume_window: Seconds of that window.
        max_sources: Most source addresses tracked for that limit (the least recently
            failed are forgotten first), so that the bookkeeping stays bounded.
        max_away_per_source: Most sessions opened from one source address that may be
            away (no link, waiting for a resume) at once; past it, that address opens no
            new session until some end or come back (a tenth of ``max_sessions`` by
            default). An address that opens sessions and drops them cannot take every
            session, while clients that stay connected are not limited: clients behind
            one NAT or one reverse proxy share an address, and they are mostly connected.
            Resumes are never limited.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        ttl: float = 60.0,
        failed_resume_limit: int = 100,
        failed_resume_window: float = 10.0,
        max_sources: int = 10_000,
        max_away_per_source: int | None = None,
    ) -> None:
        if max_away_per_source is None:
            max_away_per_source = max(1, max_sessions // 10)
        if (
            max_sessions < 1
            or max_away_per_source < 1
            or ttl < 0
            or failed_resume_limit < 1
            or failed_resume_window <= 0
            or max_sources < 1
        ):
            raise ValueError("invalid session store limits")
        self._sessions: dict[str, SessionRecord[S]] = {}
        # Detached session ids in the order they detached: with one TTL for all, the
        # oldest expires first, so expiring costs only what it removes. (Every handshake
        # expires: copying every entry each time took 0.9 s of the server's 4 s of CPU in
        # a storm of 2,500 resumes; a dict's oldest key is O(deleted) to find, an
        # OrderedDict's O(1).)
        self._detached: OrderedDict[str, float] = OrderedDict()
        # Times of recent failed resumes per source, least recently failed source first.
        self._failures: dict[str, deque[float]] = {}
        self._max = max_sessions
        self._ttl = ttl
        self._failed_limit = failed_resume_limit
        self._failed_window = failed_resume_window
        self._max_sources = max_sources
        self._max_away_per_source = max_away_per_source
        # Away sessions per source address (only those with some: at most one entry per
        # away session).
        self._away: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, state: S, now: float, source: str | None = None) -> SessionRecord[S]:
        self.expire(now)
        if len(self._sessions) >= self._max:
            raise SessionLimit(f"{self._max} sessions already")
        if source is not None and self._away.get(source, 0) >= self._max_away_per_source:
            raise SourceLimit(
                f"{self._max_away_per_source} sessions opened from this address are away"
            )
        record = SessionRecord(
            id=secrets.token_urlsafe(_ID_BYTES),
            token=secrets.token_urlsafe(_TOKEN_BYTES),
            state=state,
            source=source,
        )
        self._sessions[record.id] = record
        return record

    def _count_away(self, record: SessionRecord[S], change: int) -> None:
        """It went away (+1) or is back or forgotten (-1): count it against its source."""
        source = record.source
        if source is not None:
            away = self._away.get(source, 0) + change
            if away:
                self._away[source] = away
            else:
                del self._away[source]

    def resume(
        self, session_id: str, token: str, now: float, source: str
    ) -> Found[S] | Unknown | Throttled:
        self.expire(now)
        record = self._sessions.get(session_id)
        # Constant time: the comparison must not reveal how much of a guess was right.
        if record is not None and hmac.compare_digest(token.encode(), record.token.encode()):
            return Found(record)
        failures = self._failures.pop(source, None)
        if failures is None:
            failures = deque(maxlen=self._failed_limit)
            if len(self._failures) >= self._max_sources:
                del self._failures[next(iter(self._failures))]
        self._failures[source] = failures  # now the most recently failed source
        while failures and failures[0] <= now - self._failed_window:
            failures.popleft()
        if len(failures) >= self._failed_limit:
            return Throttled(failures[0] + self._failed_window - now)
        failures.append(now)
        return Unknown("unknown" if record is None else "bad_token")

    def detach(self, session_id: str, now: float) -> None:
        record = self._sessions.get(session_id)
        if record is not None:
            if record.detached_at is None:
                self._count_away(record, +1)
            record.detached_at = now
            self._detached.pop(session_id, None)
            self._detached[session_id] = now

    def attach(self, session_id: str) -> None:
        record = self._sessions.get(session_id)
        if record is not None:
            if record.detached_at is not None:
                self._count_away(record, -1)
            record.detached_at = None
            self._detached.pop(session_id, None)

    def close(self, session_id: str) -> None:
        record = self._sessions.pop(session_id, None)
        if record is not None and record.detached_at is not None:
            self._count_away(record, -1)
        self._detached.pop(session_id, None)

    def expire(self, now: float) -> list[SessionRecord[S]]:
        expired = []
        detached = self._detached
        while detached:
            session_id = next(iter(detached))  # the oldest: O(1) in an OrderedDict
            if now - detached[session_id] < self._ttl:
                break
            del detached[session_id]
            record = self._sessions.pop(session_id)
            self._count_away(record, -1)
            expired.append(record)
        return expired
