"""Protocol detection for listeners whose protocol is not known (``ListenerPlan.protocol ==
"detect"``), as Envoy's http_inspector does: the first bytes decide.

An HTTP/1.x request starts with a method and a space; HTTP/2 with prior knowledge starts with the
connection preface. Anything else is opaque TCP, and so is silence: a server-first protocol (SMTP,
MySQL) sends nothing until the server speaks, so after ``detect_timeout`` without bytes the
connection is handed to TCP.

HTTP listeners use the same hand-over with ``http_only``: HTTP/2 when the preface comes, HTTP/1.1
for anything else (Envoy's codec_type AUTO), and no timeout (an HTTP client always speaks first).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal, cast

from innermesh.proxy.runtime.h2 import H2Server
from innermesh.proxy.runtime.http1 import Http1Server
from innermesh.proxy.runtime.tcp import TcpDownstream

if TYPE_CHECKING:
    from innermesh.proxy.runtime.context import Context, ListenerHandle

Kind = Literal["http1", "h2c", "tcp"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# RFC 9110's methods and the WebDAV ones llhttp knows that clients commonly send.
_METHODS = tuple(
    m + b" "
    for m in (
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"CONNECT",
        b"OPTIONS",
        b"TRACE",
        b"PATCH",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"REPORT",
        b"SEARCH",
        b"PURGE",
    )
)


def classify(data: bytes) -> Kind | None:
    """The protocol ``data`` (a connection's first bytes) starts, or None when more bytes are needed."""
    if data.startswith(H2_PREFACE):
        return "h2c"
    if H2_PREFACE.startswith(data):
        return None
    for prefix in _METHODS:
        if data.startswith(prefix):
            return "http1"
        if prefix.startswith(data):
            return None
    return "tcp"


def classify_http(data: bytes) -> Kind | None:
    """For an HTTP listener: HTTP/2 with prior knowledge, HTTP/1.1, or None when more bytes are needed."""
    if data.startswith(H2_PREFACE):
        return "h2c"
    return None if H2_PREFACE.startswith(data) else "http1"


class DetectProtocol(asyncio.Protocol):
    """Reads the first bytes, then hands the transport (and those bytes) to the protocol they show."""

    __slots__ = ("_buf", "_ctx", "_http_only", "_listener", "_timer", "transport")

    def __init__(self, ctx: Context, listener: ListenerHandle, *, http_only: bool = False) -> None:
        self._ctx = ctx
        self._listener = listener
        self._http_only = http_only
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # The listener's connection until it is handed over: drained (an idle one, which has said
        # nothing yet, closes at once) and counted.
        self._listener.opened(self)
        if not self._http_only:
            self._timer = self._ctx.loop.call_later(
                self._listener.spec.detect_timeout, self._hand_over, "tcp"
            )

    def data_received(self, data: bytes) -> None:
        self._buf += data
        kind = classify_http(self._buf) if self._http_only else classify(self._buf)
        if kind is not None:
            self._hand_over(kind)

    def eof_received(self) -> bool:
        # The client said all it will say: what it said decides (TCP when undecided), and the
        # protocol it goes to learns of the EOF.
        undecided: Kind = "http1" if self._http_only else "tcp"
        classified = classify_http(self._buf) if self._http_only else classify(self._buf)
        protocol = self._hand_over(classified or undecided)
        return protocol.eof_received() if protocol is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:  # lost before it was handed over
            self._listener.closed(self)

    def drain(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _hand_over(self, kind: Kind) -> Http1Server | H2Server | TcpDownstream | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        self.transport = None
        self._listener.closed(self)
        self._listener.stats.cx_total -= 1  # the protocol it goes to counts it
        early, self._buf = self._buf, b""
        protocol: Http1Server | H2Server | TcpDownstream
        if kind == "http1":
            protocol = Http1Server(self._ctx, self._listener)
        elif kind == "h2c":
            protocol = H2Server(self._ctx, self._listener)
        else:
            protocol = TcpDownstream(self._ctx, self._listener)
        transport.set_protocol(protocol)
        protocol.start_with(transport, early)
        return protocol
