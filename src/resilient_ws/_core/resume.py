"""Both sides' resume arithmetic: what a client asks for on reconnect, what a server
grants, and what the answer means.

Pure. The client's I/O layer builds the request headers from
:meth:`ClientSession.headers`, feeds the server's grant to :meth:`ClientSession.grant`,
and acts on the :class:`Resumption` it gets back (resend, report gaps and a lost session).
The server's applies a resume request with :func:`accept_resume` and answers with
:func:`grant_of`. The rules are ``docs/protocol.md`` section 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Replay
from ..exceptions import ProtocolViolation
from .outbox import Message
from .protocol import ACK_OUT_OF_RANGE, Grant, Resume, resume_headers
from .replay import Inbound, LostRange, Outbound, buffers

__all__ = ["ClientSession", "Resumption", "accept_resume", "grant_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumption:
    """What a new link means for the session.

    Attributes:
        session_id: The session the link belongs to now.
        resumed: The link resumed our session; ``False``: a new session started.
        gap: The server's messages that will never arrive, if any: dropped from its
            replay buffer (``resumed``), or everything after what we received when the
            session was lost (``last`` is ``None``).
        resend: Our messages to send again first, in order (they keep their numbers).
        lost_session: The id of the session that was lost, if one was.
        unacked: The lost session's messages the server had not acknowledged, oldest
            first: their fate is unknown.
        overflowed: Further messages of the lost session, sent and unacknowledged but
            already dropped from the replay buffer: their fate is unknown too.
    """

    session_id: str
    resumed: bool
    gap: LostRange | None = None
    resend: list[Message] = field(default_factory=list)
    lost_session: str | None = None
    unacked: list[Message] = field(default_factory=list)
    overflowed: int = 0


class ClientSession:
    """The client's side of one replay session, across its links.

    Args:
        policy: Replay buffer bounds and ack coalescing.
    """

    def __init__(self, policy: Replay) -> None:
        self.outbound, self.inbound = buffers(policy)
        self.id: str | None = None
        """The session id the server granted; ``None`` before the first replay link."""
        self._token: str | None = None

    def headers(self) -> dict[str, str]:
        """Request headers for the next link: a resume request, or none for a new session."""
        if self.id is None or self._token is None:
            return {}
        return resume_headers(
            Resume(
                session=self.id,
                token=self._token,
                received=self.inbound.received,
                replay_from=self.outbound.replay_from,
            )
        )

    def grant(self, grant: Grant) -> Resumption:
        """Apply the server's grant of a new link.

        Raises:
            ProtocolViolation: The grant contradicts what we sent or received (close the
                link with its code); the session is unchanged.
        """
        if grant.resumed:
            if grant.session != self.id:
                raise ProtocolViolation(
                    ACK_OUT_OF_RANGE, "the server resumed a session that was not requested"
                )
            _, resend = self.outbound.resume(grant.received)
            gap = self.inbound.resume(grant.replay_from)
            return Resumption(
                session_id=grant.session,
                resumed=True,
                gap=gap,
                resend=[message for _, message in resend],
            )
        lost = self.lost()
        self.id, self._token = grant.session, grant.token
        if lost is None:
            return Resumption(session_id=grant.session, resumed=False)
        return Resumption(
            session_id=grant.session,
            resumed=False,
            gap=lost.gap,
            lost_session=lost.lost_session,
            unacked=lost.unacked,
            overflowed=lost.overflowed,
        )

    def lost(self) -> Resumption | None:
        """The session is gone (a new session was granted, or the server stopped speaking
        the protocol); ``None`` if there was none. Numbering starts again from 1."""
        if self.id is None:
            return None
        lost_id = self.id
        self.id = self._token = None
        outbound = self.outbound
        overflowed = outbound.replay_from - 1 - outbound.acked
        return Resumption(
            session_id=lost_id,
            resumed=False,
            gap=self.inbound.lost(),
            lost_session=lost_id,
            unacked=[message for _, message in outbound.restart()],
            overflowed=overflowed,
        )


def accept_resume(outbound: Outbound, inbound: Inbound, resume: Resume) -> LostRange | None:
    """The server's side of a resume request with the right token: drop from its replay
    buffer what the client received, and learn which of the client's messages the client
    can no longer resend.

    Returns:
        The client's messages that will never arrive, if any.

    Raises:
        ProtocolViolation: The request's numbers contradict the session.
    """
    outbound.resume(resume.received)
    return inbound.resume(resume.replay_from)


def grant_of(
    session_id: str, token: str, *, resumed: bool, outbound: Outbound, inbound: Inbound
) -> Grant:
    """The server's answer for a session: from where each side resends."""
    return Grant(
        session=session_id,
        token=token,
        resumed=resumed,
        received=inbound.received,
        replay_from=outbound.replay_from,
    )
