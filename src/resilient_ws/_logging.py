"""One place for logging: event names, the structlog shim, and redaction of secrets.

The library never configures logging. Events go to structlog when the application has
configured structlog, and otherwise to the standard-library logger ``"resilient_ws"``, which
has a ``NullHandler``: nothing is printed unless the application asks.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

if TYPE_CHECKING:
    from .events import Event

__all__ = ["configure_json_logging", "log", "log_error", "redact_url"]

LOGGER_NAME = "resilient_ws"
_stdlib_logger = logging.getLogger(LOGGER_NAME)
_stdlib_logger.addHandler(logging.NullHandler())

# Query parameters whose values are credentials. Matched anywhere in the name, ignoring case.
_SECRET_PARAM = re.compile(
    r"token|key|secret|sig|pass|pwd|auth|credential|session|cookie|jwt|bearer", re.IGNORECASE
)
REDACTED = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with its userinfo and credential-like query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(name, REDACTED if _SECRET_PARAM.search(name) else value) for name, value in pairs],
            safe="*",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Emit one lifecycle event named ``resilient_ws.<event>`` with flat fields."""
    name = f"{LOGGER_NAME}.{event}"
    if structlog.is_configured():
        structlog.get_logger(LOGGER_NAME).log(level, name, **fields)
    elif _stdlib_logger.isEnabledFor(level):
        detail = " ".join(f"{key}={value!r}" for key, value in fields.items())
        _stdlib_logger.log(level, "%s %s", name, detail, extra={"resilient_ws": fields})


def log_event(event: Event, /, **context: Any) -> None:
    """Log a lifecycle event: its :attr:`~resilient_ws.Event.log_name`, level and fields,
    after the ``context`` fields (``connection_id``); nothing for an event not logged."""
    name = event.log_name
    if name is not None:
        log(name, event.log_level, **context, **event.log_fields())


def log_error(event: str, exc: BaseException, **fields: Any) -> None:
    """Log a bug or a crash as one error event, its traceback a field: one JSON line, where
    a logging record with ``exc_info`` would print many."""
    log(
        event,
        logging.ERROR,
        **fields,
        error_type=type(exc).__name__,
        error=str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )


def configure_json_logging(file: TextIO | None = None, level: int = logging.INFO) -> None:
    """Configure structlog to write every event as one JSON line.

    This configures structlog globally, for the whole process; call it from an
    application, never from a library.

    Args:
        file: Where to write; standard error by default.
        level: Lowest level written.
    """
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file or sys.stderr),
        cache_logger_on_first_use=False,
    )
