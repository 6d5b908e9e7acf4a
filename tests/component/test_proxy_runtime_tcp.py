"""Byte tunnels: opaque TCP listeners (both directions, half-close, backpressure), protocol
detection (HTTP, other client-first bytes, server-first silence), WebSocket upgrades and CONNECT
tunnels, all against echo backend processes."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Iterator
from typing import Literal

import pytest

from innermesh.proxy.matching import ConnectMatch, PrefixPath
from innermesh.proxy.plan import EndpointState, ListenerPlan, Plan
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.proxy_runtime import (
    AUTHORITY,
    LOOPBACK,
    RawClient,
    RssWatch,
    cluster,
    curl,
    endpoint_of,
    forward,
    host,
    http_plan,
    route,
    serve,
    url,
)
from support.server_process import free_port

# The fixtures (backends, runtime) come from the shared support module.

MB = 1 << 20


@pytest.fixture(scope="module")
def greeter() -> Iterator[EchoBackend]:
    """A TCP backend that speaks first (``hello from g``), like SMTP or MySQL."""
    with EchoBackend("g", tcp=True, greeting=True) as b:
        yield b


def tcp_plan(
    endpoints: list[EndpointState],
    protocol: Literal["tcp", "detect"] = "tcp",
    http_backend: EchoBackend | None = None,
) -> Plan:
    listener = ListenerPlan(
        "in",
        LOOPBACK,
        0,
        "inbound",
        protocol,
        route_table="outbound",
        tcp_cluster="tcp",
        detect_timeout=0.2,
    )
    clusters = [cluster("tcp", endpoints)]
    if http_backend is not None:
        clusters.append(cluster("http", [endpoint_of(http_backend)]))
    return http_plan([route(forward("http"))], clusters, listener=listener)


async def test_tcp_listener_splices_both_ways_and_passes_half_close(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Bytes go both ways; the client's half-close reaches the backend, whose last words still come back."""
    port = await serve(runtime, tcp_plan([endpoint_of(backends[0], tcp=True)]), "in")
    async with await RawClient.connect(port) as c:
        await c.send(b"ping")
        assert await c.read_exactly(4) == b"ping"
        c.writer.write_eof()
        assert await c.read_to_end() == b"bye from a\n"
    assert runtime.stats.listeners["in"].cx_total == 1


async def test_tcp_listener_closes_when_no_endpoint_answers(runtime: ProxyRuntime) -> None:
    """No endpoint accepts: the client connection is closed."""
    port = await serve(runtime, tcp_plan([EndpointState(LOOPBACK, free_port())]), "in")
    async with await RawClient.connect(port) as c:
        await c.send(b"hello?")
        async with asyncio.timeout(5):
            try:
                data = await c.read_to_end()
            except ConnectionResetError:
                data = b""
        assert data == b""
    assert runtime.stats.clusters["tcp"].cx_connect_fail >= 1


async def test_tcp_tunnel_has_backpressure(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """30 MB echoed through a client that does not read at first: the proxy stops reading instead of
    buffering, and every byte arrives once the client reads."""
    size = 30 * MB
    port = await serve(runtime, tcp_plan([endpoint_of(backends[0], tcp=True)]), "in")
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    block = os.urandom(MB)
    received = bytearray()

    async def send() -> None:
        for _ in range(size // MB):
            writer.write(block)
            await writer.drain()

    async with RssWatch() as rss:
        sender = asyncio.create_task(send())
        await asyncio.sleep(0.5)
        stalled = rss.growth
        async with asyncio.timeout(30):
            while len(received) < size:
                chunk = await reader.read(MB)
                if not chunk:
                    break
                received += chunk
            await sender
    writer.close()
    assert stalled < 8 * MB, f"RSS grew by {stalled / MB:.1f} MB while nobody read"
    assert bytes(received[:MB]) == block
    assert len(received) == size


async def test_detect_serves_http_as_http(
    runtime: ProxyRuntime, backends: list[EchoBackend], greeter: EchoBackend
) -> None:
    """On a detect listener an HTTP request is routed like on an HTTP listener."""
    port = await serve(runtime, tcp_plan([endpoint_of(greeter, tcp=True)], "detect", backends[1]), "in")
    r = await curl(url(port, "/detected"), *host())
    assert (r.status, r.json()["endpoint"], r.json()["path"]) == (200, "b", "/detected")


async def test_detect_sends_other_bytes_to_tcp(
    runtime: ProxyRuntime, backends: list[EchoBackend], greeter: EchoBackend
) -> None:
    """Client-first bytes that are not HTTP go to the TCP cluster, untouched."""
    port = await serve(runtime, tcp_plan([endpoint_of(greeter, tcp=True)], "detect", backends[1]), "in")
    async with await RawClient.connect(port) as c:
        await c.send(b"\x00\x01binary")
        assert await c.read_exactly(len(b"hello from g\n")) == b"hello from g\n"
        assert await c.read_exactly(8) == b"\x00\x01binary"


async def test_detect_gives_silent_clients_to_tcp_after_the_timeout(
    runtime: ProxyRuntime, backends: list[EchoBackend], greeter: EchoBackend
) -> None:
    """A client that waits for the server (a server-first protocol) is connected after detect_timeout."""
    port = await serve(runtime, tcp_plan([endpoint_of(greeter, tcp=True)], "detect", backends[1]), "in")
    async with await RawClient.connect(port) as c:
        assert await c.read_line(timeout=2) == b"hello from g\n"
        await c.send(b"GET / HTTP/1.1\r\n\r\n")  # too late to be HTTP: spliced
        assert await c.read_exactly(18) == b"GET / HTTP/1.1\r\n\r\n"


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return bytes([0x80 | opcode]) + length + mask + masked


async def read_ws_frame(c: RawClient) -> tuple[int, bytes]:
    first, second = await c.read_exactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await c.read_exactly(2))
    return first & 0x0F, await c.read_exactly(n)


async def test_websocket_upgrade_becomes_a_tunnel(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """An Upgrade: websocket request gets the backend's 101; frames then flow both ways."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    key = base64.b64encode(os.urandom(16)).decode()
    async with await RawClient.connect(port) as c:
        await c.send(
            (
                f"GET /ws HTTP/1.1\r\nHost: {AUTHORITY}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + ws_frame(b"early")  # sent before the 101: held, then delivered
        )
        r = await c.response(head_request=True)
        assert r.status == 101
        assert r.header(b"upgrade") == b"websocket"
        assert await read_ws_frame(c) == (1, b"early")
        for text in (b"hello", b"x" * 1000):
            await c.send(ws_frame(text))
            assert await read_ws_frame(c) == (1, text)


async def test_websocket_refused_upstream_answers_and_closes(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """An upgrade the proxy answers itself (no route) is refused with connection: close."""
    port = await serve(
        runtime,
        http_plan([route(forward("c"), PrefixPath(b"/only"))], [cluster("c", [endpoint_of(backends[0])])]),
    )
    async with await RawClient.connect(port) as c:
        await c.send(
            f"GET /ws HTTP/1.1\r\nHost: {AUTHORITY}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        r = await c.response()
        assert (r.status, r.header(b"connection")) == (404, b"close")
        assert await c.closed()


def connect_plan(endpoints: list[EndpointState]) -> Plan:
    return http_plan([route(forward("tcp", tunnel=True), ConnectMatch())], [cluster("tcp", endpoints)])


async def test_connect_on_a_tunnel_route_opens_a_tunnel(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """CONNECT answers 200 once the endpoint is connected; then the connection is a byte pipe."""
    port = await serve(runtime, connect_plan([endpoint_of(backends[2], tcp=True)]))
    async with await RawClient.connect(port) as c:
        await c.send(f"CONNECT {AUTHORITY}:9000 HTTP/1.1\r\nHost: {AUTHORITY}:9000\r\n\r\n".encode())
        async with asyncio.timeout(5):
            head = await c.reader.readuntil(b"\r\n\r\n")
        assert head == b"HTTP/1.1 200 OK\r\n\r\n"
        await c.send(b"through the tunnel")
        assert await c.read_exactly(18) == b"through the tunnel"
        c.writer.write_eof()
        assert await c.read_to_end() == b"bye from c\n"


async def test_connect_to_an_unreachable_endpoint_is_503(runtime: ProxyRuntime) -> None:
    """CONNECT whose endpoints all refuse: 503 upstream_connect_failure."""
    port = await serve(runtime, connect_plan([EndpointState(LOOPBACK, free_port())]))
    async with await RawClient.connect(port) as c:
        await c.send(f"CONNECT {AUTHORITY}:9000 HTTP/1.1\r\nHost: {AUTHORITY}:9000\r\n\r\n".encode())
        r = await c.response()
        assert (r.status, r.header(b"x-innermesh-reason")) == (503, b"upstream_connect_failure")


async def test_connect_without_a_tunnel_route_is_refused(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """CONNECT to a listener whose routes do not tunnel never reaches an upstream."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    async with await RawClient.connect(port) as c:
        await c.send(f"CONNECT {AUTHORITY}:9000 HTTP/1.1\r\nHost: {AUTHORITY}:9000\r\n\r\n".encode())
        r = await c.response()
        assert r.status in (404, 405)
        assert r.header(b"x-innermesh-reason") in (b"no_route", b"connect_not_allowed")
        assert await c.closed()
    assert socket  # the module is used for options in other tests
