"""The reconnect loop: attempt links, serve each until it ends, decide what comes next.

Part of the client's I/O layer (it sleeps and reads the clock). It drives the link's
lifetime: opening it, its keepalive, ``on_connect``, failback to the primary URL. What to
do next (which URL, how long to wait, whether to give up) and every counter are the
connection's :class:`~resilient_ws._core.client.ClientCore`'s; moving the application's
messages over each link is its :class:`~resilient_ws._io.clientlinks.ClientLinks`'s.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Any

import anyio
from tenacity import RetryCallState, Retrying, retry_if_exception

from .._core.client import ClientCore
from .._core.liveness import Diagnosis, Verdict
from .._logging import log, redact_url
from ..config import Failover, Keepalive
from ..events import Event
from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionFailed,
    LinkClosed,
    LinkError,
    OnConnectFailed,
)
from . import backend as _backend
from .backend import RawLink
from .clientlinks import ClientLinks
from .keepalive import LinkKeepalive
from .lag import LoopLagMonitor
from .link import OnConnect

__all__ = ["Supervisor"]

# Code used when failing back from a backup URL to the primary (RFC 6455: going away).
_GOING_AWAY = 1001


class Supervisor:
    """Drives links for one connection until it is closed or fails for good.

    Args:
        core: The connection's decisions and counters.
        links: Moves the application's messages over each link.
        connection_id: The connection's id, for the log.
        emit: Records an event (history and log).
    """

    def __init__(
        self,
        core: ClientCore,
        links: ClientLinks,
        *,
        connection_id: str,
        emit: Callable[[Event], None],
        failover: Failover,
        on_connect: OnConnect | None,
        keepalive: Keepalive | None,
        options: dict[str, Any],
    ) -> None:
        self._core = core
        self._links = links
        self._connection_id = connection_id
        self._emit = emit
        self._keepalive = keepalive
        self.keepalive: LinkKeepalive | None = None
        """The keepalive of the current or last link."""
        self.monitor: LoopLagMonitor | None = None
        """Our own loop's lag, when the connection runs a monitor (evidence of a client stall)."""
        # The diagnosis when the kernel gave up on the current link (the keepalive's own
        # is its ``diagnosis``).
        self._abandoned: Diagnosis | None = None
        # The keepalive of this attempt's link (None: none yet).
        self._watching: LinkKeepalive | None = None
        # We closed the current link ourselves to return to the primary URL.
        self._failed_back = False
        self._failover = failover
        self._on_connect = on_connect
        self._options = options
        # Per URL: the websockets options with the proxy resolved (at its first connect),
        # and the URL as logged.
        self._url_options: dict[str, dict[str, Any]] = {}
        self._redacted = {url: redact_url(url) for url in core.urls}
        self._random = random.Random()
        # When the current attempt's link opened (None: not, or not yet).
        self._opened_at: float | None = None
        self.outcome: ConnectionClosed = ConnectionClosedOK("connection closed by the application")
        """How the connection ended, once :meth:`run` returned or raised."""
        # Created in run(): anyio cancel scopes need a running event loop.
        self._run_scope: anyio.CancelScope | None = None
        self._link_scope: anyio.CancelScope | None = None
        self._stopped = False

    def stop(self) -> None:
        """End :meth:`run`: gracefully (the link is closed) if a link is up, else at once."""
        if self._link_scope is not None:
            self._link_scope.cancel()
        else:
            self.cancel()

    def cancel(self) -> None:
        """End :meth:`run` at once."""
        self._stopped = True
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def run(self) -> None:
        """Attempt links until the connection closes or a fatal error; set :attr:`outcome`."""
        self._run_scope = anyio.CancelScope()
        if self._stopped:
            self._run_scope.cancel()
        try:
            with self._run_scope:
                await self._retry_loop()
        except LinkError as exc:
            self.outcome = self._core.outcome(exc)
        except Exception as exc:
            # A bug: end the connection visibly rather than leave send() and recv()
            # waiting for a supervisor that is gone. The caller's task group re-raises it.
            self.outcome = ConnectionFailed(f"internal error: {exc!r}", LinkError(repr(exc)))
            raise

    async def _retry_loop(self) -> None:
        """tenacity drives the loop: it retries transient LinkErrors, draws the delays,
        and stops when the budget is spent, re-raising the last error.

        Its synchronous iteration only records each delay, which the loop sleeps here.
        Its asyncio iteration would sleep for us, but it wraps every step of every
        decision in a new coroutine function after ``inspect`` checks, 14 per link: in a
        reconnect storm, 14 % of the client's CPU until the first link was back (py-spy).
        """
        core = self._core
        delays: list[float] = []
        retrying = Retrying(
            sleep=delays.append,
            retry=retry_if_exception(core.should_retry),
            wait=lambda _: core.next_delay(self._random.random()),
            stop=lambda _: core.budget_spent(anyio.current_time()),
            before_sleep=self._retry_scheduled,
            reraise=True,
        )
        for attempt in retrying:
            if delays:
                await anyio.sleep(delays.pop())
            with attempt:
                await self._attempt()

    def _retry_scheduled(self, retry_state: RetryCallState) -> None:
        delay = retry_state.upcoming_sleep
        self._emit(self._core.reconnecting(anyio.current_time(), delay))

    async def _attempt(self) -> None:
        url, connecting = self._core.attempt(anyio.current_time())
        self.keepalive = None
        self._abandoned = None
        self._watching = None
        self._failed_back = False
        self._emit(connecting)
        self._opened_at = None
        try:
            await self._open_and_serve(url)
        except LinkError as error:
            opened_at = self._opened_at
            uptime = None if opened_at is None else anyio.current_time() - opened_at
            self._link_failed(error, uptime)
            raise

    async def _open_and_serve(self, url: str) -> None:
        """Open a link to ``url`` (note when in ``_opened_at``) and serve it until it ends."""
        options = self._links.options(self._options_for(url))
        async with _backend.open_link(url, options) as raw:
            self._opened_at = anyio.current_time()
            await self._serve_link(raw, url)

    def _options_for(self, url: str) -> dict[str, Any]:
        """websockets options for ``url``: the proxy is resolved at its first connect."""
        options = self._url_options.get(url)
        if options is None:
            options = self._url_options[url] = _backend.resolve_proxy(url, self._options)
        return options

    async def _serve_link(self, raw: RawLink, url: str) -> None:
        """Serve the link under watch until it ends.

        The keepalive watches from the moment the link opens (from the loop's timers, no
        task per link): a network that dies while ``on_connect`` runs or the queue flushes
        is noticed too.

        Returns when the application closed the connection; raises LinkError otherwise.
        """
        keepalive = self._watch(raw, url)
        try:
            await self._set_up(raw, url)
            await self._wait_link_end(raw)
        finally:
            if keepalive is not None:
                keepalive.stop()

    async def _set_up(self, raw: RawLink, url: str) -> None:
        """Resume the session, run ``on_connect``, flush the queue, publish the link."""
        run_hook = await self._links.begin(raw)
        _backend.forget_handshake(raw)
        if self._on_connect is not None and run_hook:
            try:
                await self._on_connect(self._links.hook_link(raw, url))
            except LinkError:
                raise
            except Exception as exc:
                raise OnConnectFailed(f"on_connect raised {exc!r}") from exc
        await self._links.go_live(raw)

    async def _wait_link_end(self, raw: RawLink) -> None:
        """Wait until the link dies (raise), the application closes (return) or failback."""
        while True:
            failback = None if self._core.on_primary else self._failover.failback_after
            scope = anyio.CancelScope(
                deadline=math.inf if failback is None else anyio.current_time() + failback
            )
            self._link_scope = scope
            try:
                with scope:
                    await _backend.wait_link_closed(raw)
            finally:
                self._link_scope = None
            if self._core.closing:
                await self._links.close_link(raw)
                return
            if not scope.cancelled_caught:
                self._links.lost()
                if self._diagnosis() is None and _backend.timed_out(raw):
                    self._kernel_gave_up()
                raise _backend.link_closed_error(raw)
            # On a backup for failback_after seconds: move back if the primary answers.
            if await self._primary_answers():
                self._links.lost()
                self._failed_back = True
                reason = "failing back to the primary URL"
                await _backend.close_link(raw, _GOING_AWAY, reason)
                raise LinkClosed(_GOING_AWAY, reason)

    def _watch(self, raw: RawLink, url: str) -> LinkKeepalive | None:
        """Start the link's keepalive, if any: it may abort the link (and say why in its
        ``diagnosis``)."""
        if self._keepalive is None:
            return None
        keepalive = self.keepalive = LinkKeepalive(
            raw,
            self._keepalive,
            url=self._redacted[url],
            connection_id=self._connection_id,
            emit=self._emit,
            monitor=self.monitor,
        )
        self._watching = keepalive
        keepalive.start()
        return keepalive

    def _diagnosis(self) -> Diagnosis | None:
        """Why this attempt's link was given up on: by the keepalive or the kernel (not
        an earlier link's keepalive, which ``self.keepalive`` may still be, for stats)."""
        keepalive = self._watching
        if self._abandoned is None and keepalive is not None:
            return keepalive.diagnosis
        return self._abandoned

    def _kernel_gave_up(self) -> None:
        """The kernel dropped the link (``ETIMEDOUT``): its keepalive probe, or a
        retransmission, went unanswered. A stalled peer's kernel would have answered."""
        diagnosis = self._abandoned = Diagnosis(Verdict.NETWORK_DEAD, "kernel_timeout")
        log(
            "link_abandoned",
            logging.WARNING,
            connection_id=self._connection_id,
            url=self._redacted[self._core.url],
            verdict=diagnosis.verdict.value,
            evidence=diagnosis.evidence,
        )

    async def _primary_answers(self) -> bool:
        try:
            primary = self._core.urls[0]
            async with _backend.open_link(primary, self._options_for(primary)):
                return True
        except LinkError:
            return False

    def _link_failed(self, error: LinkError, uptime: float | None) -> None:
        core = self._core
        verdict = core.verdict(
            error, opened=uptime is not None, diagnosis=self._diagnosis(),
            failed_back=self._failed_back,
        )  # fmt: skip
        keepalive = self.keepalive if uptime is not None else None
        timeout = None if keepalive is None else keepalive.liveness.timeout
        _drop_tracebacks(error)
        disconnected = core.link_failed(
            anyio.current_time(), error, verdict=verdict, uptime=uptime, timeout=timeout
        )
        self._links.lost()
        self._emit(disconnected)


def _drop_tracebacks(error: BaseException) -> None:
    """Drop the tracebacks of ``error`` and the exceptions it chains.

    The error is kept (``last_error``, the ``Disconnected`` event's ``cause``) while the next
    link lives, and its tracebacks' frames hold the dead link in their local variables:
    its websockets connection, transport, protocol and keepalive, ~90 GC-tracked objects
    that would stay alive, and be scanned by every full garbage collection, until the next
    loss. Where
    in the library a link was found lost tells an application nothing.
    """
    seen: set[int] = set()
    chained: list[BaseException | None] = [error]
    while chained:
        exc = chained.pop()
        if exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            exc.__traceback__ = None
            chained += (exc.__cause__, exc.__context__)
