"""The server helper: a websockets server that reports its own event-loop lag.

``resilient_ws.serve()`` wraps websockets' asyncio or trio server (whichever the running
event loop is) and adds, for every connection:

- lag beacons: unsolicited pongs carrying the server's loop lag (see ``_core.protocol``), which
  resilient_ws clients use to tell a slow server from a dead link and other clients ignore;
- a stall-aware keepalive: the same adaptive probing and verdicts as the client's, so after
  the server's own loop was frozen it blames itself, not clients whose pongs sat unread in
  its buffer;

and, for the whole server, a :class:`~resilient_ws.LoopLagMonitor` and a
:class:`~resilient_ws.StallWatchdog` that logs ``resilient_ws.loop_stalled`` naming the code
that blocked the loop.

Clients that offer the replay protocol (``docs/protocol.md``) get sessions that survive
their reconnects: the handler runs once per :class:`ServerSession`, not once per link.
Session ids, tokens and the per-session replay state live in a
:class:`~resilient_ws.SessionStore`, granted and resumed during the handshake by
:mod:`resilient_ws._io.grants`; the beacons are :mod:`resilient_ws._io.beacons`'s.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import sys
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from ._core.protocol import SUBPROTOCOL
from ._core.replay import Budget
from ._core.sessions import MemorySessionStore, SessionStore
from ._io import admission as _admission
from ._io import backend as _backend
from ._io import sockopts as _sockopts
from ._io import taskgroup as _taskgroup
from ._io.beacons import Beacons
from ._io.grants import Grants, select_subprotocol
from ._io.keepalive import LinkKeepalive
from ._io.lag import LoopLagMonitor
from ._io.serversession import TAKEN_OVER, LinkOutcome, ServerSession
from ._io.watchdog import StallWatchdog
from ._logging import log, log_error, log_event
from .config import Keepalive, Replay
from .exceptions import LinkClosed

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Server", "ServerSession", "serve"]

Handler = Callable[[ServerSession], Awaitable[None]]
# Listen backlog on asyncio (the kernel caps it at net.core.somaxconn, 4096 by default).
_BACKLOG = 4096
DEFAULT_REPLAY_MEMORY = 1 << 30
"""serve()'s default ``replay_memory``: 1 GiB for all sessions' replay buffers together."""
# How long closing the server lets handlers finish once their links are closed, before it
# cancels them: a handler that ignores the end of its session must not hold the server.
_HANDLER_GRACE = 5.0


class Server:
    """A running server; create it with :func:`serve` and use it with ``async with``.

    Attributes:
        monitor: The event loop's :class:`~resilient_ws.LoopLagMonitor`, shared with its other
            users (see ``LoopLagMonitor.acquire()``) while the server runs.
        watchdog: The process's shared :class:`~resilient_ws.StallWatchdog` while the
            server runs (see ``StallWatchdog.acquire()``), or ``None`` when disabled.
        port: The TCP port it listens on (useful with ``port=0``).
        replay_budget: The bytes all its sessions' replay buffers hold (``.used``) and may
            hold (``.limit``, ``serve(replay_memory=)``); ``None`` without a bound.
    """

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        keepalive: Keepalive | None,
        beacon_interval: float | None,
        stall_threshold: float | None,
        replay: Replay | None,
        sessions: SessionStore[ServerSession] | None,
        max_handshakes: int | None,
        replay_memory: int | None,
        options: dict[str, Any],
    ) -> None:
        self._handler = handler
        self._max_handshakes = max_handshakes
        self.replay_budget = None if replay_memory is None else Budget(replay_memory)
        self.sessions: SessionStore[ServerSession] = (
            MemorySessionStore() if sessions is None else sessions
        )
        self._grants = None
        if replay is not None:
            self._grants = Grants(
                self.sessions,
                policy=replay,
                budget=self.replay_budget,
                open_timeout=float(options.get("open_timeout") or 10.0),
                spawn=lambda *task: self._tasks.start_soon(*task),
            )
        self._host = host
        self._port = port
        self._keepalive = keepalive
        # The listening sockets carry the kernel's keepalive options for their links.
        self._inherit_keepalive = False
        self._beacon_interval = beacon_interval
        self._options = options
        self.monitor = LoopLagMonitor()
        self._stall_threshold = stall_threshold
        self.watchdog: StallWatchdog | None = None
        self.port = port
        self._ws_server: Any = None
        self._tasks: anyio.abc.TaskGroup
        # One cancel scope per link being served (websockets runs _handle for each).
        self._serving: set[anyio.CancelScope] = set()
        # The links being served, for lag beacons.
        self._links: set[Any] = set()
        self._monitors: anyio.CancelScope | None = None  # the background work's
        self._beacons: Beacons  # made with the monitors
        self._penalties = _admission.Penalties()

    async def __aenter__(self) -> Server:
        self._acquire_monitors()
        self._tasks = anyio.create_task_group()
        try:
            await self._tasks.__aenter__()
        except BaseException:
            self._release_monitors()
            raise
        try:
            await self._tasks.start(self._run_monitors)
            self._ws_server = await self._start()
        except BaseException as exc:
            try:
                await _taskgroup.leave(self._tasks, exc)
            finally:
                self._release_monitors()
            raise
        self.port = _listening_port(self._ws_server)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Left on a cancellation, the caller cannot wait for handlers to finish.
        grace = 0.0 if _taskgroup.is_cancellation(exc) else _HANDLER_GRACE
        with anyio.CancelScope(shield=True):
            await self._close(grace)
        self._tasks.cancel_scope.cancel()
        # The block's own exception, if not a cancellation, propagates as itself.
        try:
            return await _taskgroup.leave(self._tasks, exc)
        finally:
            self._release_monitors()

    def _acquire_monitors(self) -> None:
        """The loop-lag monitor (one per event loop) and the stall watchdog (one per
        process: its stack dumps are process-wide), shared with their other users."""
        self.monitor = LoopLagMonitor.acquire()
        if self._stall_threshold is None:
            return
        try:
            self.watchdog = StallWatchdog.acquire(self._stall_threshold)
        except BaseException:
            self.monitor.release()
            raise
        if self.watchdog is None:
            log("stall_watchdog_unavailable", logging.WARNING,
                reason="the process's watchdog watches another event loop")  # fmt: skip

    def _release_monitors(self) -> None:
        try:
            if self.watchdog is not None:
                self.watchdog.release()
        finally:
            self.monitor.release()

    async def aclose(self) -> None:
        """Stop accepting, close every connection (code 1001) and stop the monitors; the
        body of ``async with`` goes on.

        Handlers get 5 seconds to return once their links are closed; those still running
        then are cancelled.
        """
        await self._close(_HANDLER_GRACE)

    async def _close(self, grace: float) -> None:
        server, self._ws_server = self._ws_server, None
        if server is not None:
            with anyio.move_on_after(grace):
                await _close_listener(server)
            if self._serving:  # handlers that outlived the grace
                for scope in list(self._serving):
                    scope.cancel()
                await _close_listener(server)  # again: now the handlers end
        # The server's own background work ends; the task group's scope is not cancelled
        # here: it also covers the body of ``async with``, which aclose() must not end.
        if self._monitors is not None:
            self._monitors.cancel()

    async def serve_forever(self) -> None:
        """Wait until the server is closed (or the caller is cancelled)."""
        await anyio.sleep_forever()

    async def _serve_shielded(
        self, serve: Callable[..., Awaitable[None]], *, task_status: anyio.abc.TaskStatus[Any]
    ) -> None:
        """Run websockets' trio server out of reach of the caller's cancellation.

        Its ``aclose()`` waits for the serving task to finish its handlers; had that task
        been cancelled with the caller's scope, leaving ``async with`` on a cancellation
        would wait forever. :meth:`aclose` ends it instead.
        """
        with anyio.CancelScope(shield=True):
            await serve(task_status=task_status)

    async def _run_monitors(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tasks:
            self._monitors = tasks.cancel_scope
            self._beacons = Beacons(self.monitor, self.watchdog, self._links)
            if self._grants is not None:
                tasks.start_soon(self._grants.run)
            if self._beacon_interval is not None:
                tasks.start_soon(self._beacons.broadcast, self._beacon_interval)
            task_status.started()

    async def _start(self) -> Any:
        options = dict(self._options)
        options["create_connection"] = _backend.connection_class("server", _backend.is_trio())
        _backend.keepalive_off(options, self._keepalive)
        if self._grants is not None:
            options["select_subprotocol"] = select_subprotocol(
                options.pop("subprotocols", None), options.get("select_subprotocol")
            )
            options["process_response"] = self._grants.process_response_hook(
                options.get("process_response")
            )
        if self._max_handshakes is not None:
            # Bound the handshakes in progress: a crowd beyond it gets 503 at once.
            options["process_request"], options["process_response"] = _admission.hooks(
                _admission.Admission(self._max_handshakes),
                options.get("process_request"),
                options.get("process_response"),
                self._tasks.start_soon,
            )
        # First of all: an address turned away for abuse gets 429 at once.
        options["process_request"] = _admission.refusing(
            self._penalties, options.get("process_request")
        )
        if _backend.is_trio():
            from websockets.trio.server import serve as trio_serve

            start = functools.partial(trio_serve, self._handle, self._port, host=self._host)
            serving = functools.partial(start, **options)
            return await self._tasks.start(self._serve_shielded, serving)
        from websockets.asyncio.server import serve as asyncio_serve

        if "sock" not in options:
            # asyncio listens with a backlog of 100: ten thousand devices reconnecting at once
            # after a blip would overflow it, and each dropped SYN waits 1 s, then 3, 7...
            # trio already asks for the largest the system allows.
            options.setdefault("backlog", _BACKLOG)
        # Accepting only once the listening sockets carry the kernel's keepalive: every
        # link accepted then has it (trio starts accepting as it listens: each link sets
        # its own).
        start = options.pop("start_serving", True)
        server = await asyncio_serve(
            self._handle, self._host, self._port, start_serving=False, **options
        )
        if self._keepalive is not None:
            self._inherit_keepalive = _keepalive_on_listeners(server, self._keepalive)
        if start:
            await server.start_serving()
        return server

    # ---- serving links -----------------------------------------------------------------

    async def _handle(self, connection: Any) -> None:
        """websockets' handler: serve one link; let no exception out.

        Whatever websockets' server catches it logs as a raw traceback ("connection
        handler failed"); every end of a link is one of our events instead. Closing the
        server may cancel it (see :meth:`aclose`).
        """
        scope = anyio.CancelScope()
        self._serving.add(scope)
        self._links.add(connection)
        connection.on_flood = self._flooded
        # The 101 response was sent and nothing reads it again (the handler sees the
        # session's request, not the response): ~1.5 KiB per link with a replay grant.
        connection.response = None
        try:
            with scope:
                await self._serve_link(connection)
        except Exception as exc:
            # Not the application's handler (its errors are handler_failed): a fault of
            # serve() itself, still one event, and the link ends as websockets would end it.
            log_error("link_failed", exc, session_id=None, peer=_peer(connection))
            with anyio.CancelScope(shield=True), anyio.move_on_after(_backend.EXIT_TIMEOUT):
                await _backend.close_link(connection, 1011, "internal error")
        finally:
            self._serving.discard(scope)
            self._links.discard(connection)
            # However the link ended, let websockets' trio connection read to its end:
            # with its read paused on a full buffer it would never close.
            _backend.resume_reading(connection)

    async def _serve_link(self, connection: Any) -> None:
        grants = self._grants
        granted = None if grants is None else grants.take(connection)
        if granted is None and connection.subprotocol == SUBPROTOCOL:
            return  # a replay link whose grant was dropped as stale: it is closing
        if grants is None or granted is None:
            session = ServerSession(session_id=None, policy=None, request=connection.request)
            await session.attach(connection, None)
            await self._serve_plain(connection, session)
            return
        session, resumed = granted
        try:
            await session.attach(connection, connection if resumed else None)
        except LinkClosed as exc:
            outcome: LinkOutcome
            if session.ended:  # the client closed it normally during the resend
                outcome = "ended"
            else:
                outcome = "superseded" if exc.code == TAKEN_OVER else "detached"
            grants.link_gone(session, outcome, exc.code, exc.reason)
            await _backend.close_link(connection, exc.code, exc.reason)
            return
        if resumed:
            log("session_resumed", session_id=session.id, resent=session.resent)
        else:
            self._tasks.start_soon(self._run_session, grants, session, _peer(connection))
        await self._serve_replay(connection, session, grants)

    async def _serve_plain(self, connection: Any, session: ServerSession) -> None:
        peer = _peer(connection)  # now: on trio a vanished peer has no address
        keepalive = self._watch_link(connection)
        try:
            failed = await self._run_handler(session, peer)
        finally:
            if keepalive is not None:
                keepalive.stop()
        # Otherwise returning to websockets closes the link with 1000.
        if failed:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_backend.EXIT_TIMEOUT):
                await _backend.close_link(connection, 1011, "handler failed")

    async def _serve_replay(self, connection: Any, session: ServerSession, grants: Grants) -> None:
        keepalive = self._watch_link(connection)
        try:
            await connection.wait_closed()
        finally:
            if keepalive is not None:
                keepalive.stop()
        outcome = session.link_ended(connection)
        grants.link_gone(session, outcome, connection.close_code, connection.close_reason or "")

    async def _run_session(self, grants: Grants, session: ServerSession, peer: str | None) -> None:
        """Run the handler once for the session's whole life."""
        try:
            failed = await self._run_handler(session, peer)
            with anyio.CancelScope(shield=True), anyio.move_on_after(_backend.EXIT_TIMEOUT):
                if failed:
                    await session.close(1011, "handler failed")
                else:
                    await session.close()
        finally:
            grants.ended(session)
            session.release()

    async def _run_handler(self, session: ServerSession, peer: str | None) -> bool:
        """Run the application's handler on ``session`` and log how it ended, as one
        event: ``session_ended``, or ``handler_failed``; whether it failed.

        A client that vanished is a normal end: the handler returned, or let out the
        exception with which the session's ``recv()``/``send()`` reported the end (alone
        or in an exception group of such). Anything else it raises is a failure; it is
        logged here, with its traceback as a field, and not raised further: websockets
        would log it again as a raw traceback.
        """
        cause = None
        try:
            await self._handler(session)
        except Exception as exc:
            if not _only(exc, session.ended_by):
                log_error(
                    "handler_failed", exc, session_id=session.id, peer=_peer_of(session) or peer
                )
                return True
            cause = str(exc)
        log("session_ended", session_id=session.id, peer=_peer_of(session) or peer, cause=cause)
        return False

    def _flooded(self, connection: Any) -> None:
        """A link was cut for a control frame flood: turn its address away a while."""
        source = _backend.peer_host(connection)
        if source:
            # (The frame's arrival time: on asyncio this runs in a protocol callback,
            # outside any task, where anyio cannot tell the event loop.)
            seconds = self._penalties.punish(source, connection.last_inbound)
            log("source_turned_away", logging.WARNING, peer=source, seconds=seconds,
                reason="control_flood")  # fmt: skip

    def _watch_link(self, connection: Any) -> LinkKeepalive | None:
        """Answer the link's probes with beacons; start its keepalive (on the loop's
        timers: no task per link), which the caller stops when the link ends."""
        if self._beacon_interval is not None:
            connection.on_ping = self._beacons.answer_probe
        if self._keepalive is None:
            return None
        connection_id = secrets.token_hex(4)
        keepalive = LinkKeepalive(
            connection,
            self._keepalive,
            url=f"peer:{_backend.peer_address(connection)}",
            connection_id=connection_id,
            kernel_set=self._inherit_keepalive,
            # No event history on a server link: its events go to the log alone.
            emit=functools.partial(log_event, connection_id=connection_id),
            monitor=self.monitor,
            # Its clients probe the links they use; the kernel watches idle ones.
            quiet=math.inf,
        )
        keepalive.start(lazily=True)
        return keepalive


async def _close_listener(server: Any) -> None:
    """Close websockets' server: stop listening, close every link (1001), wait for the
    handlers to return. Cancellable, and safe to call again."""
    if _backend.is_trio():
        await server.aclose()
    else:
        server.close()
        await server.wait_closed()


def _listening_sockets(server: Any) -> list[Any]:
    """The listening sockets (asyncio ``sockets``, trio ``listeners``)."""
    sockets = getattr(server, "sockets", None)
    if sockets is None:
        sockets = [listener.socket for listener in server.listeners]
    return list(sockets)


def _listening_port(server: Any) -> int:
    """The port of the first listening socket."""
    return int(_listening_sockets(server)[0].getsockname()[1])


def _keepalive_on_listeners(server: Any, policy: Keepalive) -> bool:
    """Set the kernel's TCP keepalive (see :func:`_sockopts.keep_alive`) on the listening
    sockets, for every link they accept: Linux copies the options into each accepted
    socket, four system calls per link fewer. Whether that was done (elsewhere each link
    sets them itself)."""
    if not (policy.kernel and sys.platform.startswith("linux")):
        return False
    return all(_sockopts.keep_alive(sock, policy.idle) for sock in _listening_sockets(server))


def _peer(connection: Any) -> str | None:
    """A link's remote address for the log, or ``None`` once the peer is gone (trio)."""
    address = _backend.peer_address(connection)
    return None if address is None else str(address)


def _peer_of(session: ServerSession) -> str | None:
    address = session.remote_address
    return None if address is None else str(address)


def _only(exc: Exception, match: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` matches, or is an exception group of nothing but matches."""
    if isinstance(exc, BaseExceptionGroup):
        # split() takes plain functions only, not bound methods.
        return exc.split(lambda error: match(error))[1] is None
    return match(exc)


def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    keepalive: Keepalive | None = Keepalive(),
    beacon_interval: float | None = 1.0,
    stall_threshold: float | None = 1.0,
    replay: Replay | None = Replay(),
    sessions: SessionStore[ServerSession] | None = None,
    compression: str | None = None,
    max_handshakes: int | None = 1000,
    replay_memory: int | None = DEFAULT_REPLAY_MEMORY,
    **websockets_options: Any,
) -> Server:
    """Create a :class:`Server`; use it with ``async with``.

    Example::

        async def echo(session):
            async for message in session:
                await session.send(message)

        async with resilient_ws.serve(echo, "127.0.0.1", 8765) as server:
            await server.serve_forever()

    Args:
        handler: ``async def handler(session)``, run once per :class:`ServerSession`:
            for a client that speaks the replay protocol, once for the session's whole
            life across its reconnects; for any other client, once per connection. When
            it returns the session ends (its link is closed with code 1000). It may let
            out the exception with which the session reports the client gone (a normal
            end: ``resilient_ws.session_ended``); anything else it raises is logged as
            one ``resilient_ws.handler_failed`` event, traceback included, and its link is
            closed with code 1011. No exception reaches websockets' own logging.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see :attr:`Server.port`).
        keepalive: The server's probing of its clients, stall-aware; ``None`` leaves
            websockets' fixed ``ping_interval``/``ping_timeout`` in charge.
        beacon_interval: Seconds between lag beacons to each client; ``None`` disables them.
        stall_threshold: Loop lag, in seconds, that the :class:`~resilient_ws.StallWatchdog`
            reports as a stall; ``None`` disables the watchdog. It is process-wide: a
            second ``serve()`` in the process shares the first one's watchdog (and its
            threshold) until the last of them leaves (log event
            ``stall_watchdog_shared``); one in another thread's event loop runs without
            (``stall_watchdog_unavailable``).
        replay: Settings of the replay protocol, offered to every client (bounds of each
            session's replay buffer, which also holds what ``session.send()`` sends while
            the client is away); ``None`` turns it off: every link is a plain session.
        sessions: Where replay sessions are kept; default: a
            :class:`~resilient_ws.MemorySessionStore` (10 000 sessions, 60 s TTL after a
            client goes away, 100 failed resumes per source address per 10 s; a right token is
            never throttled).
        compression: ``None`` (default) or ``"deflate"``.
        max_handshakes: Opening handshakes in progress (request read, response not sent
            yet) beyond which a request is answered at once with ``503`` and a
            ``Retry-After`` that spreads the crowd over time at about the rate the server
            completes handshakes; the requests so shed are logged as one
            ``resilient_ws.handshakes_shed`` event per second at most. Without it, ten
            thousand clients reconnecting at once all time out together and retry
            together. The default, 1000, is several times what a server completes per
            event-loop iteration at its busiest, and a second or more of handshakes for
            one core: normal load never reaches it. Past it, an address with at most a
            tenth of it in progress is still admitted, up to twice the bound in all: one
            address that floods does not shed the others. ``None`` disables the bound.
        replay_memory: Bytes that the replay buffers of all sessions may hold together,
            1 GiB by default (each message charged its payload and 64 bytes). A session
            that sends past it drops its own oldest unacknowledged messages (its client
            gets an exact gap if it lacks them, ``replay_overflowed`` is logged), so that
            clients that stay away cannot take the process's memory: without it, 10,000
            sessions could hold 4 MiB each, 40 GiB. ``None``: no bound but each session's.
        **websockets_options: Passed to websockets' ``serve`` (``process_request``,
            ``process_response``, ``max_size``...).
    """
    _backend.keepalive_off(dict(websockets_options), keepalive)  # fails now, not at start
    return Server(
        handler,
        host,
        port,
        keepalive=keepalive,
        beacon_interval=beacon_interval,
        stall_threshold=stall_threshold,
        replay=replay,
        sessions=sessions,
        max_handshakes=max_handshakes,
        replay_memory=replay_memory,
        options={"compression": compression, **websockets_options},
    )
