"""The reconnect loop: attempt links, serve each until it ends, decide what comes next.

Part of the client's I/O layer (it sleeps and reads the clock). It owns everything about
links and attempts: URLs and failover, the failure count, backoff and budget, and the
link's lifetime. What the application sees (the send queue, received messages, the state
and the events) belongs to the :class:`Session` it serves, the ``Connection``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
from tenacity import RetryCallState, Retrying, retry_if_exception

from ._core.backoff import forgive, next_delay
from ._core.classify import Classifier
from ._core.liveness import Diagnosis, Verdict
from ._io import backend as _backend
from ._io.backend import RawLink
from ._io.keepalive import LinkKeepalive
from ._io.lag import LoopLagMonitor
from ._io.link import Link, OnConnect
from ._io.replaylink import ReplayLink
from ._logging import log, redact_url
from .config import Backoff, Failover, Keepalive
from .events import Connected, Connecting, Disconnected, Event, Reconnecting
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionFailed,
    LinkClosed,
    LinkError,
    OnConnectFailed,
    RetryBudgetExhausted,
)

__all__ = ["Session", "Supervisor"]

# Code used when failing back from a backup URL to the primary (RFC 6455: going away).
_GOING_AWAY = 1001


class Session(Protocol):
    """What the supervisor needs from the connection it serves (private to the package)."""

    connection_id: str

    @property
    def _closing(self) -> bool:
        """The application asked to close."""

    def _link_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """websockets options for the next attempt (the replay protocol's offer)."""

    async def _begin_link(self, raw: RawLink, number: int) -> bool:
        """Set up a new link (resume the replay session); whether ``on_connect`` runs."""

    def _numbering(self, raw: RawLink) -> ReplayLink | None:
        """The replay protocol on ``raw`` (a ``ReplayLink``), or ``None``."""

    async def _flush(self, raw: RawLink) -> int:
        """Send the queued messages on ``raw``; raise LinkError if it dies."""

    def _readable(self, raw: RawLink, number: int) -> None:
        """Let recv() read ``raw`` (after the links before it)."""

    async def _publish(self, raw: RawLink, number: int) -> None:
        """Make ``raw`` the link that send() writes to."""

    def _link_lost(self) -> None:
        """The published link (if any) is gone."""

    async def _close_link(self, raw: RawLink) -> None:
        """Flush what is queued, then close ``raw`` with the application's code."""

    def _emit(self, event: Event) -> None:
        """Record a lifecycle event, in the event history and the log."""


class Supervisor:
    """Drives links for one :class:`Session` until it is closed or fails for good."""

    def __init__(
        self,
        session: Session,
        urls: Sequence[str],
        *,
        backoff: Backoff,
        failover: Failover,
        classifier: Classifier,
        on_connect: OnConnect | None,
        keepalive: Keepalive | None,
        options: dict[str, Any],
    ) -> None:
        self._session = session
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
        self._urls = list(urls)
        self._backoff = backoff
        self._failover = failover
        self._classifier = classifier
        self._on_connect = on_connect
        self._options = options
        # Per URL: the websockets options with the proxy resolved (at its first connect),
        # and the URL as logged.
        self._url_options: dict[str, dict[str, Any]] = {}
        self._redacted = {url: redact_url(url) for url in self._urls}
        self._random = random.Random()
        self._url_index = 0
        self.url = self._urls[0]
        """The URL of the current or last attempt."""
        self.failures = 0
        """Consecutive failures (attempts and links' ends), less what links' lives forgave."""
        self._failing_since: float | None = None
        # When the current attempt's link opened (None: not, or not yet).
        self._opened_at: float | None = None
        self.last_error: LinkError | None = None
        self.attempts = 0
        self.links = 0
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
        """Attempt links until the session closes or a fatal error; set :attr:`outcome`."""
        self._run_scope = anyio.CancelScope()
        if self._stopped:
            self._run_scope.cancel()
        try:
            with self._run_scope:
                await self._retry_loop()
        except LinkError as exc:
            if self._classifier(exc) == "fatal":
                self.outcome = ConnectionFailed(f"connection failed: {exc}", exc)
            else:
                self.outcome = RetryBudgetExhausted(f"gave up reconnecting: {exc}", exc)
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
        delays: list[float] = []
        retrying = Retrying(
            sleep=delays.append,
            retry=retry_if_exception(self._should_retry),
            wait=self._next_delay,
            stop=self._budget_spent,
            before_sleep=self._retry_scheduled,
            reraise=True,
        )
        for attempt in retrying:
            if delays:
                await anyio.sleep(delays.pop())
            with attempt:
                await self._attempt()

    def _should_retry(self, error: BaseException) -> bool:
        return isinstance(error, LinkError) and self._classifier(error) == "retry"

    def _next_delay(self, retry_state: RetryCallState) -> float:
        retry_after = getattr(self.last_error, "retry_after", None)
        return next_delay(self._backoff, self.failures, self._random.random(), retry_after)

    def _budget_spent(self, retry_state: RetryCallState) -> bool:
        policy = self._backoff
        if policy.max_attempts is not None and self.failures >= policy.max_attempts:
            return True
        if policy.max_elapsed is not None and self._failing_since is not None:
            return anyio.current_time() - self._failing_since >= policy.max_elapsed
        return False

    def _retry_scheduled(self, retry_state: RetryCallState) -> None:
        delay = retry_state.upcoming_sleep
        url = self._redacted[self._urls[self._url_index]]
        attempt = self.failures + 1
        self._session._emit(
            Reconnecting(at=anyio.current_time(), attempt=attempt, delay=delay, url=url)
        )

    async def _attempt(self) -> None:
        url = self.url = self._urls[self._url_index]
        self.attempts += 1
        self.keepalive = None
        self._abandoned = None
        self._watching = None
        self._failed_back = False
        attempt = self.failures + 1
        shown = self._redacted[url]
        self._session._emit(Connecting(at=anyio.current_time(), url=shown, attempt=attempt))
        self._opened_at = None
        try:
            await self._open_and_serve(url)
        except LinkError as error:
            opened_at = self._opened_at
            uptime = None if opened_at is None else anyio.current_time() - opened_at
            self._link_failed(error, url, uptime)
            raise

    async def _open_and_serve(self, url: str) -> None:
        """Open a link to ``url`` (note when in ``_opened_at``) and serve it until it ends."""
        options = self._session._link_options(self._options_for(url))
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
        keepalive = self._watch(raw)
        try:
            await self._set_up(raw, url)
            await self._wait_link_end(raw)
        finally:
            if keepalive is not None:
                keepalive.stop()

    async def _set_up(self, raw: RawLink, url: str) -> None:
        """Resume the session, run ``on_connect``, flush the queue, publish the link."""
        self.links += 1
        number = self.links
        run_hook = await self._session._begin_link(raw, number)
        _backend.forget_handshake(raw)
        if self._on_connect is not None and run_hook:
            try:
                await self._on_connect(Link(raw, url, number, self._session._numbering(raw)))
            except LinkError:
                raise
            except Exception as exc:
                raise OnConnectFailed(f"on_connect raised {exc!r}") from exc
        # Readable before the flush: the peer's acks and replies arrive on the same
        # stream, and websockets stops reading it while unread messages pile up.
        self._session._readable(raw, number)
        flushed = await self._session._flush(raw)
        self._failing_since = None
        shown = self._redacted[url]
        self._session._emit(
            Connected(
                at=anyio.current_time(),
                url=shown,
                link=number,
                subprotocol=raw.subprotocol,
                flushed=flushed,
            )
        )
        await self._session._publish(raw, number)

    async def _wait_link_end(self, raw: RawLink) -> None:
        """Wait until the link dies (raise), the application closes (return) or failback."""
        while True:
            failback = self._failover.failback_after if self._url_index != 0 else None
            scope = anyio.CancelScope(
                deadline=math.inf if failback is None else anyio.current_time() + failback
            )
            self._link_scope = scope
            try:
                with scope:
                    await _backend.wait_link_closed(raw)
            finally:
                self._link_scope = None
            if self._session._closing:
                await self._session._close_link(raw)
                return
            if not scope.cancelled_caught:
                self._session._link_lost()
                if self._diagnosis() is None and _backend.timed_out(raw):
                    self._kernel_gave_up()
                raise _backend.link_closed_error(raw)
            # On a backup for failback_after seconds: move back if the primary answers.
            if await self._primary_answers():
                self._session._link_lost()
                self._failed_back = True
                reason = "failing back to the primary URL"
                await _backend.close_link(raw, _GOING_AWAY, reason)
                raise LinkClosed(_GOING_AWAY, reason)

    def _watch(self, raw: RawLink) -> LinkKeepalive | None:
        """Start the link's keepalive, if any: it may abort the link (and say why in its
        ``diagnosis``)."""
        if self._keepalive is None:
            return None
        keepalive = self.keepalive = LinkKeepalive(
            raw,
            self._keepalive,
            url=self._redacted[self.url],
            connection_id=self._session.connection_id,
            emit=self._session._emit,
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
            connection_id=self._session.connection_id,
            url=self._redacted[self.url],
            verdict=diagnosis.verdict.value,
            evidence=diagnosis.evidence,
        )

    async def _primary_answers(self) -> bool:
        try:
            primary = self._urls[0]
            async with _backend.open_link(primary, self._options_for(primary)):
                return True
        except LinkError:
            return False

    def _verdict(self, error: LinkError, opened: bool) -> str:
        diagnosis = self._diagnosis()
        if diagnosis is not None:
            return diagnosis.verdict.value
        if self._failed_back:
            return "failback"
        if not opened:
            return "unreachable"
        if isinstance(error, LinkClosed) and error.code != _backend.ABNORMAL_CLOSURE:
            return "peer_closed"
        return "connection_lost"

    def _link_failed(self, error: LinkError, url: str, uptime: float | None) -> None:
        fatal = self._classifier(error) == "fatal"
        verdict = self._verdict(error, uptime is not None)
        keepalive = self.keepalive if uptime is not None else None
        timeout = None if keepalive is None else keepalive.liveness.timeout
        stable = uptime is not None and uptime >= self._backoff.stable_after
        _drop_tracebacks(error)
        self.last_error = error
        if uptime is not None:
            # A link that lived forgives the failures before it (a flap is not a storm).
            self.failures = forgive(self._backoff, self.failures, uptime)
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = anyio.current_time()
        # A failed attempt, a link that did not stay up, or a dead network path moves on to
        # the next URL; another stable link that dropped starts again from the primary.
        if stable and verdict != Verdict.NETWORK_DEAD.value:
            self._url_index = 0
        else:
            self._url_index = (self._url_index + 1) % len(self._urls)
        self._session._link_lost()
        shown = self._redacted[url]
        self._session._emit(
            Disconnected(
                at=anyio.current_time(),
                url=shown,
                cause=error,
                fatal=fatal,
                verdict=verdict,
                uptime=uptime,
                timeout=timeout,
            )
        )


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
