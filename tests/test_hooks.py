"""What ``resilient_ws._io.hooks`` relies on inside websockets, checked against the installed
release: each test names the hook it guards, so that a websockets release that renames or
reshapes one fails here, loudly, instead of somewhere in the I/O tests (or not at all).
Pure: it reads classes and their source; no connection is opened."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import websockets.asyncio.client
import websockets.asyncio.messages
import websockets.asyncio.server
import websockets.trio.client
import websockets.trio.messages
import websockets.trio.server
from websockets.protocol import Protocol

from resilient_ws._io import hooks

BASES: dict[tuple[str, bool], type[Any]] = {
    ("client", False): websockets.asyncio.client.ClientConnection,
    ("server", False): websockets.asyncio.server.ServerConnection,
    ("client", True): websockets.trio.client.ClientConnection,
    ("server", True): websockets.trio.server.ServerConnection,
}
IDS = [f"{'trio' if trio else 'asyncio'}-{side}" for side, trio in BASES]


def attributes(functions: Iterable[object], on: Callable[[ast.Attribute], bool]) -> set[str]:
    """The names of the attributes ``x.<name>`` in the source of ``functions`` whose node
    ``on`` accepts."""
    names: set[str] = set()
    for function in functions:
        if not inspect.isfunction(function):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        names.update(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and on(n))
    return names


def assigned_in_init(cls: type[Any]) -> set[str]:
    """The ``self.<name>`` attributes that ``cls``'s ``__init__`` (or a base's) sets."""
    return attributes(
        (klass.__dict__.get("__init__") for klass in cls.__mro__),
        lambda node: (
            isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and isinstance(node.ctx, ast.Store)
        ),
    )


def super_calls(cls: type[Any]) -> set[str]:
    """The methods that ``cls``'s own methods call through ``super()``."""
    return attributes(
        cls.__dict__.values(),
        lambda node: (
            isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "super"
        ),
    )


@pytest.mark.parametrize(("side", "trio"), list(BASES), ids=IDS)
def test_every_method_our_hooks_extend_exists_in_websockets(side: str, trio: bool) -> None:
    """process_event (each frame), send, connection_lost / close_stream (the socket's
    end), send_data (trio's writes): each hook calls websockets' own through super()."""
    built = hooks.connection_class(side, trio)  # type: ignore[arg-type]
    base = BASES[side, trio]
    ours = [klass for klass in built.__mro__ if klass.__module__ == hooks.__name__]
    assert ours, "connection_class() no longer mixes our hooks in"
    assert built.__mro__.index(ours[-1]) < built.__mro__.index(base)
    extended: set[str] = set()
    for mixin in ours:
        extended |= super_calls(mixin) - {"__init__"}
    # Not vacuous: the frame hook and the write hook at least.
    assert {"process_event", "send"} <= extended
    for name in extended:
        assert callable(getattr(base, name, None)), f"websockets {base} lost {name}()"


@pytest.mark.parametrize(("side", "trio"), list(BASES), ids=IDS)
def test_the_connection_internals_the_hooks_read_exist(side: str, trio: bool) -> None:
    base = BASES[side, trio]
    # process_event(event): one call per parsed frame, synchronous, on both loops.
    process_event = base.process_event
    assert not inspect.iscoroutinefunction(process_event)
    assert list(inspect.signature(process_event).parameters) == ["self", "event"]
    # The protocol and the message assembler (whose ``closed`` drops late data frames).
    assert {"protocol", "recv_messages"} <= assigned_in_init(base)
    assembler = (
        websockets.trio.messages.Assembler if trio else websockets.asyncio.messages.Assembler
    )
    assert "closed" in assigned_in_init(assembler)
    # send_data writes what the protocol buffered: awaited on trio, called on asyncio.
    assert inspect.iscoroutinefunction(base.send_data) is trio
    if trio:
        assert "stream" in assigned_in_init(base)
        assert callable(base.set_connection_exc)
        assert inspect.iscoroutinefunction(base.close_stream)
    else:
        assert callable(base.connection_lost)


def test_the_protocol_internals_the_hooks_use_exist() -> None:
    """Counting bytes wraps data_to_send; a flood fails the protocol; control frames are
    queued with send_ping/send_pong; close_rcvd/close_sent say how a link ended."""
    for name in ("data_to_send", "fail", "send_ping", "send_pong"):
        assert callable(getattr(Protocol, name, None)), f"websockets Protocol lost {name}()"
    assert {"state", "close_rcvd", "close_sent"} <= assigned_in_init(Protocol)
