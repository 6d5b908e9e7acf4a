"""What the protocol layers and the forwarder exchange: one request, one response head, and the two
seams (``Downstream``: the client side of one exchange; ``ResponseSink``: whoever awaits an upstream
response).

The forwarder (``forward.py``) works only through these, so that the HTTP/2 layer can drive the same
forwarder by implementing ``Downstream`` for a stream. The ``raw`` fields carry HTTP/1.1 head bytes
as received, for the fast path that forwards them untouched; another protocol leaves them None and
the head is rebuilt from its parts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from innermesh.proxy.plan import Headers, RequestHead

if TYPE_CHECKING:
    from innermesh.proxy.runtime.tcp import Tunnel


@dataclass(slots=True)
class Request:
    """One request as the forwarder sees it.

    ``length`` is the request's content-length (None when it has none); ``chunked`` means a body of
    unknown length follows (chunked HTTP/1.1, or an HTTP/2 stream without content-length); with
    neither there is no body. ``raw`` is the HTTP/1.1 head as received when it
    can be forwarded with lines appended only: origin-form target, no hop-by-hop header, no
    ``Expect``, no ``X-Forwarded-For`` to merge. ``forwarded_for`` is the X-Forwarded-For value the
    request carried; ``has_proto`` and ``has_request_id`` whether it carried x-forwarded-proto and
    x-request-id. ``upgrade`` is the Upgrade header of a request that asks to switch protocols
    (``websocket``); ``expect_continue`` whether the client waits for ``100 Continue``.
    ``http2``: the request came over HTTP/2 (clusters of protocol ``downstream`` answer in kind);
    ``deadline``: the loop time by which the client gives up (gRPC's ``grpc-timeout``), which caps
    the route timeout.
    """

    head: RequestHead
    raw: bytes | None
    length: int | None
    chunked: bool = False
    forwarded_for: bytes | None = None
    has_proto: bool = False
    has_request_id: bool = False
    upgrade: bytes | None = None
    expect_continue: bool = False
    http2: bool = False
    deadline: float | None = None


@dataclass(slots=True)
class ResponseHead:
    """An upstream's response head. ``headers`` have lower-case names; ``reason`` is empty for the
    standard phrase. ``length`` is content-length (None when absent); ``chunked`` the upstream's
    framing; ``raw`` the head as received when it can be forwarded untouched (no hop-by-hop header but
    chunked framing, and a final status). When ``raw`` is set, an HTTP/1.1 upstream may leave
    ``headers`` empty: the exchange parses them from ``raw`` only if something reads them (a response
    header mutation, or a downstream that is not HTTP/1.1)."""

    status: int
    reason: bytes
    headers: Headers
    raw: bytes | None
    length: int | None
    chunked: bool


class Downstream(Protocol):
    """The client side of one exchange (an HTTP/1.1 connection's current request, or a stream)."""

    def send_continue(self) -> None:
        """Tell a client that waits (``Expect: 100-continue``) to send its body."""

    def send_response_head(self, head: ResponseHead, headers: Headers | None, end: bool) -> None:
        """Start the response. ``headers`` replace ``head.headers`` when mutated (None: unchanged);
        ``end``: there is no body."""

    def send_response_body(self, data: bytes) -> None: ...

    def flush_response(self) -> None:
        """Write what the response has so far (called once per upstream read, so that a head and
        the body that came with it leave in one write)."""

    def end_response(self) -> None: ...

    def send_local(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response made by the proxy (an error, a redirect, a direct response)."""

    def pause_request_body(self) -> None:
        """Stop reading the request body until ``resume_request_body`` (backpressure)."""

    def resume_request_body(self) -> None: ...

    def exchange_done(self) -> None:
        """The exchange is over: its response is complete (or it was reset)."""

    def reset(self) -> None:
        """Abort: the response cannot be completed (HTTP/1.1 closes the connection)."""

    def open_tunnel(self, peer: asyncio.Transport, head: ResponseHead, headers: Headers | None) -> Tunnel:
        """Answer with ``head`` (a 101, or the 200 to a CONNECT: no framing headers, no body) and
        splice the client connection with ``peer`` from then on."""


class ResponseSink(Protocol):
    """Whoever awaits a response on an upstream connection (an exchange, or a mirrored request)."""

    def response_head(self, head: ResponseHead) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """The end of one upstream read that did not complete the response."""

    def response_end(self) -> None:
        """The response is complete; the connection has been returned to its pool or closed."""

    def upstream_failed(self, reset: bool) -> None:
        """The connection broke: ``reset`` when it closed or reset, else the upstream sent malformed
        HTTP. The connection is closed; whether a head arrived, the sink knows."""

    def upstream_write_paused(self) -> None:
        """The upstream's write buffer is full: stop feeding it the request body."""

    def upstream_write_resumed(self) -> None: ...

    def upgraded(self, head: ResponseHead, leftover: bytes) -> None:
        """The upstream switched protocols (101): the connection is the sink's to splice; it has
        left its pool. ``leftover`` is what the upstream sent after the head."""

    # HTTP/2 upstreams only (h2upstream.py):

    def response_trailers(self, trailers: Headers) -> None:
        """The response's trailers (gRPC's status among them), before ``response_end``."""

    def upstream_refused(self) -> None:
        """The upstream refused the request unprocessed (REFUSED_STREAM, or a GOAWAY that excludes
        its stream): it may be sent again."""
