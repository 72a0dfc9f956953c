"""Task groups owned by context managers that must behave like plain ones (STYLE.md rule 17).

``Connection`` and ``Server`` start background tasks in a task group entered in
``__aenter__`` and exited in ``__aexit__``, so the group spans the application's ``async
with`` body. Handed the body's exception, anyio's task group would wrap it in an
``ExceptionGroup``; left unexited when ``__aenter__`` is cancelled, it would corrupt the
caller's cancel scopes (asyncio: "Attempted to exit a cancel scope that isn't the current
task's current cancel scope"; trio: a corrupted nursery stack). :func:`leave` exits such a
group the way the body's own code expects.
"""

from __future__ import annotations

import sys

import anyio
import anyio.abc

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["is_cancellation", "leave"]


def is_cancellation(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the running event loop's cancellation exception."""
    return exc is not None and isinstance(exc, anyio.get_cancelled_exc_class())


async def leave(group: anyio.abc.TaskGroup, exc: BaseException | None) -> bool:
    """Cancel the group's tasks and exit the group, on behalf of a context manager's body.

    A cancellation is handed to the group, so that its cancel scope and the caller's
    scopes account for it exactly as for a plain ``async with`` (a scope catches its own
    cancellation, and only its own). Any other exception of the body is not: it
    propagates as itself once the caller returns ``False``.

    Args:
        group: A task group entered by the caller's ``__aenter__``.
        exc: The exception leaving the body, or ``None``.

    Returns:
        ``True`` when ``exc`` was the group's own cancellation and is swallowed (the
        caller's ``__aexit__`` returns it); ``False`` otherwise.

    Raises:
        BaseException: ``exc``, when it is a cancellation that is not the group's. An
            exception raised by one of the group's tasks (a bug: the tasks handle the
            failures they expect) is raised as itself, not in a group, when it is the only
            one; several come in a group.
    """
    group.cancel_scope.cancel()
    passed = exc if is_cancellation(exc) else None
    try:
        tb = None if passed is None else passed.__traceback__
        swallowed = await group.__aexit__(type(passed) if passed else None, passed, tb)
    except BaseExceptionGroup as errors:
        lone = _lone_error(errors)
        if lone is None:
            raise
        raise lone from None  # where it was raised is in its own traceback
    if passed is None:
        # True here only says that the group caught the cancellation it delivered to
        # this task while exiting: the body's exception, if any, is still to propagate.
        return False
    if swallowed:
        return True
    # trio answers False for "re-raise"; the caller may be unwinding another exception.
    raise passed


def _lone_error(errors: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception in ``errors`` (nested groups flattened) other than cancellations,
    or ``None`` if there are several or none."""
    _, rest = errors.split(anyio.get_cancelled_exc_class())
    leaves: list[BaseException] = []
    pending: list[BaseException] = [] if rest is None else [rest]
    while pending and len(leaves) < 2:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    return leaves[0] if len(leaves) == 1 else None
