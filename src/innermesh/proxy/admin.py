"""The proxy's admin port: /ready, /stats (Prometheus text), /config_dump.

Off the request path, on its own port (loopback by default), reading what the sidecar exposes through
``AdminView``. A few GET endpoints need no web framework: this is an ``asyncio.Protocol`` over
httptools (which the data plane already uses), answering each request and closing the connection,
because a framework would cost every sidecar ~12 MB of memory for three URLs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol, cast

import httptools


class AdminView(Protocol):
    def ready(self) -> tuple[bool, str]:
        """Whether the proxy serves traffic on its configuration, and why not if it doesn't."""
        ...

    def stats_text(self) -> str: ...

    def config_dump(self) -> dict[str, Any]: ...


PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 16 * 1024

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def answer(view: AdminView, method: bytes, path: bytes) -> tuple[int, bytes, bytes]:
    """(status, content type, body) for one admin request (pure over the view)."""
    if method not in (b"GET", b"HEAD"):
        return 405, b"text/plain", b"only GET\n"
    if path == b"/ready":
        ok, why = view.ready()
        return (200, b"text/plain", b"LIVE\n") if ok else (503, b"text/plain", why.encode() + b"\n")
    if path == b"/stats":
        return 200, PROMETHEUS_TEXT, view.stats_text().encode()
    if path == b"/config_dump":
        return (
            200,
            b"application/json",
            json.dumps(view.config_dump(), indent=2, sort_keys=True).encode() + b"\n",
        )
    return 404, b"text/plain", b"try /ready, /stats or /config_dump\n"


class _AdminConnection(asyncio.Protocol):
    def __init__(self, view: AdminView) -> None:
        self.view = view
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_REQUEST_BYTES:
            self._respond(400, b"text/plain", b"request too large\n")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(400, b"text/plain", b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        try:
            status, content_type, body = answer(self.view, method, httptools.parse_url(self.url).path)
        except Exception as e:  # a bug in a view must not take the admin port down
            status, content_type, body = 500, b"text/plain", f"{type(e).__name__}: {e}\n".encode()
        self._respond(status, content_type, b"" if method == b"HEAD" else body, len(body))

    def _respond(self, status: int, content_type: bytes, body: bytes, length: int | None = None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
            status,
            _REASONS.get(status, b""),
            content_type,
            len(body) if length is None else length,
        )
        self.transport.writelines([head, body])
        self.transport.close()


class AdminServer:
    def __init__(self, view: AdminView) -> None:
        self._factory: Callable[[], asyncio.Protocol] = lambda: _AdminConnection(view)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
