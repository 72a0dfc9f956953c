"""Admission control for opening handshakes. Pure: times and random draws are passed in.

When a crowd reconnects at once (ten thousand devices after a network blip), a server that
works on every handshake at the same time finishes none of them before the clients' open
timeout: the clients retry and the wasted work repeats (congestion collapse). serve()
bounds the handshakes in progress instead, counted from the arrival of the HTTP request
to the sending of the 101 (or the decision to reject it), and answers any request
beyond the bound at once with ``503 Service Unavailable`` and a ``Retry-After``
(RFC 9110 section 10.2.3), which makes the client back off.

The ``Retry-After`` values spread the shed crowd over time at about the rate the server
completes handshakes: each shed request takes the next slot of a virtual schedule that
advances by ``1 / rate`` per request (the generic cell rate algorithm), so a crowd twice
as large is told to come back over a range of seconds twice as long, never all in the same
second.

:class:`Admission` is the pure core (times are passed in); :func:`hooks` are serve()'s
thin adapters, websockets' ``process_request`` and ``process_response``, the same on
asyncio and trio.
"""

from __future__ import annotations

import http
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from .._logging import log
from . import backend as _backend

__all__ = ["Admission", "Penalties", "ShedReport", "hooks", "refusing"]

# Longest Retry-After handed out (seconds): a resilient_ws client honours up to 300 s
# (Backoff.max_retry_after) and a crowd this far ahead is better re-spread when it returns.
MAX_RETRY_AFTER = 120
# Shortest time between two handshakes_shed events (seconds).
REPORT_INTERVAL = 1.0
# Width of the window over which completed handshakes are counted (seconds).
_RATE_WINDOW = 1.0


@dataclass(frozen=True, slots=True)
class ShedReport:
    """Handshakes shed since the last report, for one aggregated log event."""

    count: int
    retry_after_min: int
    retry_after_max: int


class Admission:
    """Bound on handshakes in progress, and the ``Retry-After`` of those beyond it.

    Past the bound, a request is shed unless its source address is a light one: one with
    at most a tenth of the bound in progress, admitted up to twice the bound in all. So one
    address that floods the server with handshakes fills the bound and is shed, and the
    other clients still get in; a crowd from one address (a NAT, a reverse proxy, a
    benchmark on 127.0.0.1) is bounded as before.

    The I/O layer calls :meth:`arrived` when a request is read, :meth:`admit` before
    answering it, and :meth:`left` once the response is sent or the handshake failed.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_handshakes must be >= 1")
        self.limit = limit
        self.light = max(1, limit // 10)
        """Most handshakes in progress from a source that is admitted past the bound."""
        # Requests read, neither rejected nor answered 101 yet; of them, per source
        # address (only those with some: at most one entry per request in progress).
        self.in_progress = 0
        self._by_source: dict[str, int] = {}
        # Completed handshakes: in the current window, and the rate of the last full one.
        self._window_start = -math.inf
        self._window_count = 0
        self._rate = 0.0
        # Virtual schedule of the shed requests' return (a time on the caller's clock).
        self._horizon = -math.inf
        self._shed = 0
        self._shed_min = self._shed_max = 0

    def arrived(self, source: str) -> None:
        """A handshake request was read from ``source``."""
        self.in_progress += 1
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def left(self, now: float, source: str, *, completed: bool) -> None:
        """A handshake counted by :meth:`arrived` ended; ``completed`` if it succeeded."""
        self.in_progress -= 1
        count = self._by_source[source] - 1
        if count:
            self._by_source[source] = count
        else:
            del self._by_source[source]
        if completed:
            self._roll(now)
            self._window_count += 1

    def admit(self, now: float, source: str) -> int | None:
        """Whether to serve a request from ``source`` counted by :meth:`arrived`: ``None``
        if so, else the ``Retry-After`` (whole seconds, >= 1) to answer with 503."""
        if self.in_progress <= self.limit or (
            self.in_progress <= 2 * self.limit and self._by_source[source] <= self.light
        ):
            return None
        self._roll(now)
        # The completions measured understate what the server can do when few arrive
        # (measured at 150/s, it told a crowd of 9,000 to come back over 40 s and served
        # 150/s). Erring high is cheaper: a request back too early costs one more 503.
        measured = max(self._rate, self._window_count / _RATE_WINDOW)
        rate = max(measured, float(self.limit))
        # This request's slot: the first free one at least a second ahead.
        slot = max(self._horizon, now + 1.0)
        self._horizon = slot + 1.0 / rate
        retry_after = min(MAX_RETRY_AFTER, math.ceil(slot - now))
        self._shed += 1
        self._shed_min = retry_after if self._shed == 1 else min(self._shed_min, retry_after)
        self._shed_max = max(self._shed_max, retry_after)
        return retry_after

    def report(self) -> ShedReport | None:
        """What was shed since the last report, if anything; starts a new tally."""
        if not self._shed:
            return None
        report = ShedReport(self._shed, self._shed_min, self._shed_max)
        self._shed = self._shed_min = self._shed_max = 0
        return report

    def _roll(self, now: float) -> None:
        """Start a new counting window once the current one is over."""
        if now - self._window_start >= _RATE_WINDOW:
            elapsed = now - self._window_start
            # A window followed by idle time says nothing of the rate now.
            self._rate = self._window_count / _RATE_WINDOW if elapsed < 2 * _RATE_WINDOW else 0.0
            self._window_start, self._window_count = now, 0


class Penalties:
    """Source addresses turned away for a while after abuse (a control frame flood).

    A flooder cut off reconnects at once and floods again: each new link's first frames
    are parsed before it is cut (issue 11: another client's echo took 97 ms instead of
    1.1 ms). Its address is refused instead: 10 s after a first offence, twice as long after
    each one that follows while it is remembered (up to 300 s), which is until as long
    again after the last penalty ends.

    Args:
        max_sources: Most addresses remembered (the oldest offence is forgotten first).
    """

    FIRST = 10.0
    LONGEST = 300.0

    def __init__(self, max_sources: int = 10_000) -> None:
        self._max = max_sources
        # source: (penalty ends, its length), the most recent offence last.
        self._sources: dict[str, tuple[float, float]] = {}

    def punish(self, source: str, now: float) -> float:
        """``source`` abused the server at ``now``; how long it is turned away."""
        previous = self._sources.pop(source, None)
        length = self.FIRST
        if previous is not None and now < previous[0] + previous[1]:
            length = min(self.LONGEST, 2 * previous[1])
        if len(self._sources) >= self._max:
            del self._sources[next(iter(self._sources))]
        self._sources[source] = (now + length, length)
        return length

    def retry_after(self, source: str, now: float) -> int | None:
        """Whole seconds ``source`` is still turned away for, if it is."""
        entry = self._sources.get(source)
        if entry is None or now >= entry[0]:
            return None
        return max(1, math.ceil(entry[0] - now))


# ---- adapters to websockets' server connections (I/O: they read the clock, sleep, log) ----


def hooks(
    admission: Admission,
    their_request: Callable[..., Any] | None,
    their_response: Callable[..., Any] | None,
    spawn: Callable[..., object],
) -> tuple[Callable[[Any, Any], Awaitable[Any]], Callable[[Any, Any, Any], Awaitable[Any]]]:
    """websockets' ``process_request`` and ``process_response`` for a server bounded by
    ``admission``.

    A handshake counts from the arrival of its request (``process_request`` runs as soon
    as it is read) until the response is decided (``process_response`` returned, or the
    handshake was cancelled in between); it completed if the response is the 101.
    Beyond the bound the request is answered 503 with a ``Retry-After`` at once, logged as
    one ``handshakes_shed`` event per :data:`REPORT_INTERVAL` at most; else it goes to
    the application's hooks (``their_request``, ``their_response``, sync or async).

    A peer that connects and sends nothing is not counted: it costs a socket, not work,
    and websockets' ``open_timeout`` closes it; counted, a few idle sockets would shed
    everyone else.

    Args:
        admission: The server's bound.
        their_request: The application's ``process_request``, if any.
        their_response: The ``process_response`` to run after the bound's (the
            application's and serve()'s session grant).
        spawn: Starts a background task (the server's task group ``start_soon``).
    """
    reporting = False
    counted: dict[Any, str] = {}  # the connections whose handshake is counted: their source

    def leave(connection: Any, completed: bool) -> None:
        source = counted.pop(connection, None)
        if source is not None:
            admission.left(anyio.current_time(), source, completed=completed)

    async def report() -> None:
        nonlocal reporting
        await anyio.sleep(REPORT_INTERVAL)
        reporting = False
        shed = admission.report()
        if shed is not None:
            log("handshakes_shed", logging.WARNING, count=shed.count,
                retry_after_min=shed.retry_after_min, retry_after_max=shed.retry_after_max,
                in_progress=admission.in_progress, max_handshakes=admission.limit,
                interval=REPORT_INTERVAL)  # fmt: skip

    async def process_request(connection: Any, request: Any) -> Any:
        nonlocal reporting
        source = counted[connection] = _backend.peer_host(connection)
        admission.arrived(source)
        retry_after = admission.admit(anyio.current_time(), source)
        if retry_after is not None:
            if not reporting:
                reporting = True
                spawn(report)
            response = connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "too many handshakes in progress\n"
            )
            response.headers["Retry-After"] = str(retry_after)
            return response
        if their_request is None:
            return None
        try:
            return await _backend.run_hook(their_request, connection, request)
        except Exception:
            raise  # websockets answers 500 and calls process_response, which leaves
        except BaseException:
            leave(connection, False)  # cancelled: process_response will not run
            raise

    async def process_response(connection: Any, request: Any, response: Any) -> Any:
        completed = False
        try:
            if their_response is not None:
                replaced = await _backend.run_hook(their_response, connection, request, response)
                if replaced is not None:
                    response = replaced
            completed = response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS
            return response
        finally:
            leave(connection, completed)

    return process_request, process_response


def refusing(
    penalties: Penalties, theirs: Callable[..., Any] | None
) -> Callable[[Any, Any], Awaitable[Any]]:
    """websockets' ``process_request``: 429 with a ``Retry-After`` at once for an address
    that ``penalties`` turns away, before any other work; else ``theirs``, if any."""

    async def process_request(connection: Any, request: Any) -> Any:
        retry_after = penalties.retry_after(_backend.peer_host(connection), anyio.current_time())
        if retry_after is not None:
            response = connection.respond(
                http.HTTPStatus.TOO_MANY_REQUESTS, "turned away for abuse\n"
            )
            response.headers["Retry-After"] = str(retry_after)
            return response
        if theirs is None:
            return None
        return await _backend.run_hook(theirs, connection, request)

    return process_request
