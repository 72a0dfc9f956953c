"""The server's replay sessions between handshakes: granted, resumed, detached, expired.

Part of the server's I/O layer (it reads the clock and sleeps). ``serve()`` hands it every
opening handshake that negotiated the replay protocol, while websockets builds the response
(``process_response``): it grants a new session or the resume of a known one, so the grant
headers describe exactly the state the new link starts from, or refuses with 400/429/503
(``docs/protocol.md`` sections 4 and 7). It holds each grant until its link is served
(:meth:`Grants.take`), learns when a session's link is gone (:meth:`Grants.link_gone`),
and once a second drops grants whose link never came and ends sessions whose client did
not come back within the store's TTL.
"""

from __future__ import annotations

import http
import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .._core.protocol import SUBPROTOCOL, Resume, grant_headers, parse_resume
from .._core.replay import Budget
from .._core.resume import accept_resume, grant_of
from .._core.sessions import SessionLimit, SessionStore, SourceLimit, Throttled, Unknown
from .._logging import log
from ..config import Replay
from ..exceptions import ProtocolViolation
from . import backend as _backend
from .serversession import TAKEN_OVER, LinkOutcome, ServerSession

__all__ = ["Grants", "select_subprotocol"]

# How often detached sessions are checked for expiry, at most (seconds).
_EXPIRY_INTERVAL = 1.0
# Retry-After for a server at its session limit (seconds).
_FULL_RETRY_AFTER = 5


class Grants:
    """The replay sessions of one server, from the handshake that grants them to their end.

    Args:
        store: Where sessions are kept (ids, tokens, TTL, limits).
        policy: The replay protocol's settings for new sessions.
        budget: The bytes all sessions' replay buffers may hold together, if bounded.
        open_timeout: Seconds a granted link has to be served before its grant is dropped.
        spawn: Starts a background task (``start_soon``): a link taken over is closed in
            one.
    """

    def __init__(
        self,
        store: SessionStore[ServerSession],
        *,
        policy: Replay,
        budget: Budget | None,
        open_timeout: float,
        spawn: Callable[..., object],
    ) -> None:
        self._store = store
        self._policy = policy
        self._budget = budget
        self._open_timeout = open_timeout
        self._spawn = spawn
        # Links whose resume or new session was granted in process_response, until their
        # handler runs: (session, resumed, when).
        self._granted: weakref.WeakKeyDictionary[Any, tuple[ServerSession, bool, float]] = (
            weakref.WeakKeyDictionary()
        )

    def take(self, connection: Any) -> tuple[ServerSession, bool] | None:
        """The session granted to ``connection`` and whether it resumed, now that the link
        is served; ``None`` if none was (or the grant was dropped as stale)."""
        granted = self._granted.pop(connection, None)
        return None if granted is None else granted[:2]

    def ended(self, session: ServerSession) -> None:
        """The session's handler is done: the session is over."""
        assert session.id is not None
        self._store.close(session.id)

    def process_response_hook(self, theirs: Any) -> Callable[..., Awaitable[Any]]:
        """websockets' ``process_response``: the application's hook ``theirs`` (if any),
        then the grant."""

        async def process_response(connection: Any, request: Any, response: Any) -> Any:
            if theirs is not None:
                replaced = await _backend.run_hook(theirs, connection, request, response)
                if replaced is not None:
                    response = replaced
            # No await from here on: the grant must describe the state the link starts from.
            return self._admit(connection, request, response)

        return process_response

    def _admit(self, connection: Any, request: Any, response: Any) -> Any:
        """Grant a new or resumed session to a link that negotiated the replay protocol,
        or answer 400/429/503 (docs/protocol.md sections 4 and 7)."""
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            return response
        if response.headers.get("Sec-WebSocket-Protocol") != SUBPROTOCOL:
            return response
        peer = str(_backend.peer_address(connection))
        try:
            resume = parse_resume(_backend.header_dict(request.headers))
        except ProtocolViolation as exc:
            return _reject(connection, http.HTTPStatus.BAD_REQUEST, exc.reason, peer)
        now = anyio.current_time()
        source = _backend.peer_host(connection)
        session = token = None
        if resume is not None:
            found = self._store.resume(resume.session, resume.token, now, source)
            if isinstance(found, Throttled):
                retry_after = max(1, math.ceil(found.retry_after))
                return _reject(connection, http.HTTPStatus.TOO_MANY_REQUESTS,
                               "too many failed resume attempts", peer, retry_after)  # fmt: skip
            if isinstance(found, Unknown):
                log("resume_rejected", session_id=resume.session, reason=found.reason, peer=peer)
            else:
                session, token = found.record.state, found.record.token
                try:
                    self._resume(session, resume, connection)
                except ProtocolViolation as exc:
                    return _reject(connection, http.HTTPStatus.BAD_REQUEST, exc.reason, peer)
        resumed = session is not None
        if session is None:
            session = ServerSession(
                session_id=None, policy=self._policy, request=request, budget=self._budget
            )
            try:
                # (An unknown address is not counted.)
                record = self._store.open(session, now, source or None)
            except SourceLimit as exc:
                return _reject(connection, http.HTTPStatus.TOO_MANY_REQUESTS, str(exc), peer,
                               _FULL_RETRY_AFTER)  # fmt: skip
            except SessionLimit as exc:
                return _reject(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, str(exc), peer,
                               _FULL_RETRY_AFTER)  # fmt: skip
            session.id, token = record.id, record.token
        assert session.id is not None
        assert token is not None
        self._granted[connection] = (session, resumed, now)
        grant = grant_of(
            session.id, token, resumed=resumed, outbound=session.outbound, inbound=session.inbound
        )
        response.headers.update(grant_headers(grant))
        return response

    def _resume(self, session: ServerSession, resume: Resume, connection: Any) -> None:
        """Apply a resume request with the right token; take the session over.

        Raises:
            ProtocolViolation: Its numbers contradict the session; nothing changed.
        """
        gap = accept_resume(session.outbound, session.inbound, resume)
        assert session.id is not None
        self._store.attach(session.id)
        old = session.granted(connection, gap)
        if old is not None:
            log("session_taken_over", logging.WARNING, session_id=session.id)
            self._spawn(_backend.close_link, old, TAKEN_OVER, "session taken over")

    def _drop_stale(self, now: float) -> None:
        """A granted link whose handshake never completed, or that closed before its
        handler ran (websockets then runs none), must not hold the session."""
        for connection, (session, _, granted_at) in list(self._granted.items()):
            if _backend.closing(connection):
                del self._granted[connection]
                outcome = session.grant_closed(connection)
                code, reason = _backend.end_code(connection), connection.close_reason or ""
                self.link_gone(session, outcome, code, reason)
            elif now - granted_at >= self._open_timeout:
                del self._granted[connection]
                session.abandon_grant(connection)
                self.detach_if_away(session)

    def link_gone(
        self, session: ServerSession, outcome: LinkOutcome, code: int | None, reason: str
    ) -> None:
        """A link of ``session`` (served, or granted and not served yet) is gone: log it
        once, and end the session in the store or start its TTL."""
        assert session.id is not None
        log("session_detached", session_id=session.id, code=code, reason=reason,
            outcome=outcome)  # fmt: skip
        if outcome == "ended":
            self._store.close(session.id)
        else:
            self.detach_if_away(session)

    def detach_if_away(self, session: ServerSession) -> None:
        """Start the session's TTL if no link serves it (nor is about to)."""
        if not session.connected and not session.resuming and not session.ended:
            assert session.id is not None
            self._store.detach(session.id, anyio.current_time())

    async def run(self) -> None:
        """Housekeeping, once a second: drop stale grants, end expired sessions."""
        while True:
            await anyio.sleep(_EXPIRY_INTERVAL)
            now = anyio.current_time()
            self._drop_stale(now)
            self._expire(now)

    def _expire(self, now: float) -> None:
        """End the sessions whose TTL passed. (A method of its own: a loop variable in
        the loop above would keep the last one, and its buffers, until the next pass.)"""
        for record in self._store.expire(now):
            record.state.expired()
            log("session_expired", session_id=record.id)


def select_subprotocol(theirs: Any, their_select: Any) -> Callable[[Any, Any], Any]:
    """websockets' ``select_subprotocol``: the replay protocol when offered, else the
    application's choice; a client that offers none of them gets no subprotocol (not a
    400, so plain clients keep working)."""

    def select(connection: Any, offered: Any) -> Any:
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        if their_select is not None:
            return their_select(connection, offered)
        return next((name for name in theirs or () if name in offered), None)

    return select


def _reject(
    connection: Any,
    status: http.HTTPStatus,
    reason: str,
    peer: str,
    retry_after: int | None = None,
) -> Any:
    log("session_refused", logging.WARNING, status=int(status), reason=reason, peer=peer)
    response = connection.respond(status, f"{reason}\n")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
