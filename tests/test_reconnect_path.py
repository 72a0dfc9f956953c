"""What a connection works out once and reuses on every reconnect: the proxy from the
environment (read at the first connect of each URL), on asyncio and trio."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from _helpers import FAST, TIMEOUT
from _servers import ThreadServer
from anyio.abc import ByteStream, SocketAttribute, SocketStream

import resilient_ws
from resilient_ws import Connected
from resilient_ws._io.backend import resolve_proxy


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any ``*_proxy`` variable (``no_proxy`` included)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 (RFC 9110, section 9.3.6): it records the
    requests it relays and can cut every tunnel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[str] = []
        self._tunnels: list[anyio.CancelScope] = []

    def cut_tunnels(self) -> None:
        for tunnel in self._tunnels:
            tunnel.cancel()
        self._tunnels.clear()

    async def handle(self, client: SocketStream) -> None:
        async with client:
            head = b""
            with anyio.fail_after(TIMEOUT):
                while b"\r\n\r\n" not in head:
                    head += await client.receive()
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.requests.append(f"{method} {target}")
            host, _, port = target.rpartition(":")
            async with await anyio.connect_tcp(host, int(port)) as upstream:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                with anyio.CancelScope() as tunnel:
                    self._tunnels.append(tunnel)
                    async with anyio.create_task_group() as relay:
                        relay.start_soon(_pipe, client, upstream, relay.cancel_scope)
                        relay.start_soon(_pipe, upstream, client, relay.cancel_scope)


async def _pipe(source: ByteStream, sink: ByteStream, scope: anyio.CancelScope) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


@asynccontextmanager
async def connect_proxy() -> AsyncIterator[ConnectProxy]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    proxy = ConnectProxy(f"http://127.0.0.1:{port}")
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, proxy.handle)
        try:
            yield proxy
        finally:
            group.cancel_scope.cancel()


async def echo(ws: resilient_ws.Connection, message: str) -> None:
    await ws.send(message)
    with anyio.fail_after(TIMEOUT):
        assert await ws.recv() == message


async def reconnected(ws: resilient_ws.Connection, link: int) -> None:
    """Wait for link number ``link``."""
    with anyio.fail_after(TIMEOUT):
        async for event in ws.events():
            if isinstance(event, Connected) and event.link == link:
                return


@pytest.mark.anyio
async def test_the_proxy_from_the_environment_carries_every_link(
    environ: pytest.MonkeyPatch,
) -> None:
    with ThreadServer() as server:
        async with connect_proxy() as proxy:
            environ.setenv("ws_proxy", proxy.url)
            async with resilient_ws.connect(server.url, backoff=FAST) as ws:
                await echo(ws, "through the proxy")
                # Read at the first connect of the URL: the reconnect uses it too.
                environ.delenv("ws_proxy")
                proxy.cut_tunnels()
                await reconnected(ws, 2)
                await echo(ws, "through it again")
    assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port}"] * 2


@pytest.mark.anyio
async def test_an_explicit_proxy_is_honoured(environ: pytest.MonkeyPatch) -> None:
    with ThreadServer() as server:
        async with (
            connect_proxy() as proxy,
            resilient_ws.connect(server.url, proxy=proxy.url) as ws,
        ):
            await echo(ws, "through the proxy")
    assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port}"]


@pytest.mark.anyio
async def test_proxy_none_connects_directly(environ: pytest.MonkeyPatch) -> None:
    with ThreadServer() as server:
        async with connect_proxy() as proxy:
            environ.setenv("ws_proxy", proxy.url)
            async with resilient_ws.connect(server.url, proxy=None) as ws:
                await echo(ws, "direct")
    assert proxy.requests == []
    assert server.connections == 1


def test_resolve_proxy_reads_the_environment(environ: pytest.MonkeyPatch) -> None:
    url = "ws://feed.example/ws"
    assert resolve_proxy(url, {"compression": None}) == {"compression": None, "proxy": None}
    environ.setenv("ws_proxy", "http://proxy.example:3128")
    assert resolve_proxy(url, {})["proxy"] == "http://proxy.example:3128"
    assert resolve_proxy(url, {"proxy": True})["proxy"] == "http://proxy.example:3128"
    environ.setenv("no_proxy", "feed.example")
    assert resolve_proxy(url, {})["proxy"] is None


def test_resolve_proxy_leaves_what_websockets_never_proxies(
    environ: pytest.MonkeyPatch,
) -> None:
    environ.setenv("ws_proxy", "http://proxy.example:3128")
    url = "ws://feed.example/ws"
    with socket.socket() as sock:
        for options in (
            {"proxy": None},
            {"proxy": "socks5h://other.example:1080"},
            {"unix": True},
            {"sock": sock},
        ):
            assert resolve_proxy(url, options) is options
