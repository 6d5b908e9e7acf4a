"""The downstream HTTP/2 server protocol: one client connection, each request stream an ``Exchange``.

h2c with prior knowledge: a connection that starts with the HTTP/2 preface (listeners.py and
detect.py send such connections here; with TLS, ALPN's "h2" will). Each stream is routed, balanced
and forwarded on its own by the same forwarder as an HTTP/1.1 request (forward.py), through
``H2Downstream``, this module's ``messages.Downstream``: a gRPC channel's calls on one connection
spread over the endpoints, each call to whichever the balancer picks.

Requests: the headers of a new stream become a ``Request`` (``raw`` None: the upstream head is built
from parts); its exchange starts once the events of the current read are handled, so that a small
request's body (and its end) is in hand when it is routed, and forwarded with its length. Request
trailers are not forwarded. ``grpc-timeout`` caps the route timeout (``Request.deadline``).

Responses: the forwarder's response head, body and end become HEADERS, DATA and END_STREAM (with the
upstream's trailers when it sent some: ``Exchange.trailers``). A gRPC call answered by the proxy
itself (no route, no endpoint, a timeout, a fault) gets a trailers-only response (grpc.py).

Flow control, both ways, never holding a whole body:

- request body: each DATA frame goes to the exchange at once, and its window is given back
  (WINDOW_UPDATE) only while the exchange is not holding the body (``pause_request_body``: the
  upstream cannot take more); the client can then send at most one stream window beyond.
- response body: sent as the client's windows allow; what waits is kept in the stream, and above
  ``HIGH_WATER`` (or while the socket's buffer is full) the exchange stops reading the upstream.

Resets: a client's RST_STREAM drops the exchange (its upstream request is reset or its connection
closed); an exchange that cannot complete a response already started resets the stream
(INTERNAL_ERROR); a response that ends before the request does is followed by RST_STREAM(NO_ERROR),
which tells the client to stop sending (RFC 9113 section 8.1).

Draining (the listener goes away): a GOAWAY names the last stream taken; streams up to it finish,
newer ones are refused (REFUSED_STREAM, which clients retry elsewhere), and the connection closes
when the last stream ends (or the drain deadline aborts it).

CONNECT (RFC 9113 section 8.5) on a tunnel route makes the stream a byte tunnel (``StreamTunnel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError

from innermesh.proxy.plan import Headers, RequestHead
from innermesh.proxy.runtime import grpc
from innermesh.proxy.runtime.forward import Exchange
from innermesh.proxy.runtime.h2upstream import H2Link, new_link
from innermesh.proxy.runtime.limits import HIGH_WATER, LOW_WATER
from innermesh.proxy.runtime.messages import Request, ResponseHead
from innermesh.proxy.runtime.tcp import Tunnel
from innermesh.proxy.runtime.wire import dropped_names

if TYPE_CHECKING:
    from innermesh.proxy.runtime.context import Context, ListenerHandle

log = logging.getLogger(__name__)

# Response headers HTTP/2 forbids (RFC 9113 section 8.2.2): HTTP/1.1 hop-by-hop ones, which an
# HTTP/1.1 upstream may send. ``wire.dropped_names`` adds those its Connection header names.
_NOT_IN_H2 = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)


def request_from_h2(
    headers: Sequence[tuple[bytes, bytes]], *, ended: bool, source_ip: str, now: float
) -> tuple[Request, bool]:
    """The forwarder's ``Request`` for a stream's headers (validated by h2), and whether it is a
    gRPC call. Cookie crumbs are joined into one header (RFC 9113 section 8.2.3), as HTTP/1.1 and
    the hash policies expect."""
    method = path = authority = b""
    scheme = b"http"
    fields: Headers = []
    cookies: list[bytes] = []
    host = b""
    length: int | None = None
    forwarded_for: bytes | None = None
    has_proto = has_request_id = False
    deadline: float | None = None
    grpc_call = False
    expect_continue = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
            continue
        if name == b"expect" and value.lower() == b"100-continue":
            expect_continue = True  # answered by the proxy (Exchange._forward), as for HTTP/1.1
            continue
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"content-type":
            grpc_call = grpc.is_grpc(value)
        elif name == b"grpc-timeout":
            timeout = grpc.parse_timeout(value)
            if timeout is not None:
                deadline = now + timeout
        elif name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        elif name == b"x-forwarded-proto":
            has_proto = True
        elif name == b"x-request-id":
            has_request_id = True
        fields.append((name, value))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    target, _, query = path.partition(b"?")
    if method == b"CONNECT":
        target = query = b""
    head = RequestHead(method, target, query, (authority or host).lower(), fields, scheme, source_ip)
    if ended:
        length = None
    request = Request(
        head,
        None,
        length,
        chunked=not ended and length is None,
        forwarded_for=forwarded_for,
        has_proto=has_proto,
        has_request_id=has_request_id,
        expect_continue=expect_continue and not ended,
        http2=True,
        deadline=deadline,
    )
    return request, grpc_call


def response_fields(status: int, headers: Headers) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 response header list: ``:status`` first, HTTP/1.1-only headers dropped."""
    drop = dropped_names(headers) | _NOT_IN_H2
    return [(b":status", b"%d" % status), *((k, v) for k, v in headers if k not in drop)]


class H2Server(asyncio.Protocol):
    """One client connection speaking HTTP/2."""

    __slots__ = (
        "_ctx",
        "_draining",
        "_flush_pending",
        "_goaway_last",
        "_lost",
        "_peer",
        "_starting",
        "link",
        "listener",
        "streams",
        "transport",
        "write_paused",
    )

    def __init__(self, ctx: Context, listener: ListenerHandle) -> None:
        self._ctx = ctx
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.link: H2Link = new_link(client=False)
        self.streams: dict[int, H2Downstream] = {}
        self._starting: list[H2Downstream] = []  # opened in this read; their exchanges start after it
        self._peer = ""
        self._draining = False
        self._goaway_last: int | None = None  # the last stream a GOAWAY we sent lets in
        self._lost = False
        self._flush_pending = False
        self.write_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.start_with(cast(asyncio.Transport, transport), b"")

    def start_with(self, transport: asyncio.Transport, early: bytes) -> None:
        """Serve ``transport`` (accepted here, or handed over by protocol detection with the bytes it
        had read, which start with the client's preface)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self.listener.opened(self)
        self.flush()  # our SETTINGS
        if early:
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.link.receive_data(data)
        except ProtocolError as e:
            log.debug("client %s on %s broke HTTP/2: %s", self._peer, self.listener.name, e)
            self.listener.stats.bad_request += 1
            self.flush()  # h2's GOAWAY
            self._drop_all()
            if self.transport is not None:
                self.transport.close()
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                assert isinstance(event, DataReceived)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.request_data(event.data, event.flow_controlled_length)
                else:
                    self.link.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is RequestReceived:
                assert isinstance(event, RequestReceived)
                self._request(event)
            elif kind is StreamEnded:
                assert isinstance(event, StreamEnded)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.request_ended()
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.cancelled()
            elif kind is WindowUpdated or kind is RemoteSettingsChanged:
                for stream in list(streams.values()):
                    stream.pump()
            elif kind is ConnectionTerminated:
                assert isinstance(event, ConnectionTerminated)
                self._client_goaway(event)
            # Request trailers (TrailersReceived) are not forwarded; StreamEnded follows them.
        if self._starting:
            self._start_exchanges()
        self.flush()

    def eof_received(self) -> bool:
        # As for HTTP/1.1: a client's EOF ends the connection, and connection_lost drops its streams.
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.sync_response_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.pump()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.listener.closed(self)
        self._drop_all()

    # -- draining (the listener is going away) -----------------------------------------------------------

    def drain(self) -> None:
        if self._draining or self._lost:
            return
        self._draining = True
        if not self.streams:
            self._close()
            return
        self._goaway_last = self.link.highest_inbound_stream_id
        self.link.announce_goaway(self._goaway_last)
        self.flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- writing ------------------------------------------------------------------------------------------

    def flush(self) -> None:
        self._flush_pending = False
        data = self.link.data_to_send()
        if data and self.transport is not None and not self._lost:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write at the end of this loop turn: the responses many upstream reads produced in one turn
        leave in one write."""
        if not self._flush_pending:
            self._flush_pending = True
            self._ctx.loop.call_soon(self.flush)

    def forget(self, stream: H2Downstream) -> None:
        """``stream`` is over on both sides."""
        stream.settle_window()
        if self.streams.pop(stream.stream_id, None) is not None and self._draining and not self.streams:
            self._close()

    # -- internals ----------------------------------------------------------------------------------------

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self._draining and (self._goaway_last is None or sid > self._goaway_last):
            self._refuse(sid)  # opened after our GOAWAY: never processed, so the client may retry
            return
        request, grpc_call = request_from_h2(
            event.headers,
            ended=event.stream_ended is not None,
            source_ip=self._peer,
            now=self._ctx.loop.time(),
        )
        stream = H2Downstream(self, sid, request, grpc_call)
        self.streams[sid] = stream
        self._starting.append(stream)

    def _start_exchanges(self) -> None:
        starting, self._starting = self._starting, []
        for stream in starting:
            if self.streams.get(stream.stream_id) is stream:
                stream.start(self._ctx)

    def _refuse(self, sid: int) -> None:
        try:
            self.link.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        except ProtocolError:
            return

    def _client_goaway(self, event: ConnectionTerminated) -> None:
        """The client will open no more streams: a graceful GOAWAY lets the open ones finish; any
        other ends them."""
        if event.error_code != ErrorCodes.NO_ERROR:
            self._drop_all()
            if self.transport is not None:
                self.transport.close()
            return
        self._draining = True
        self._goaway_last = self.link.highest_inbound_stream_id
        if not self.streams:
            self._close()

    def _close(self) -> None:
        if self._lost or self.transport is None:
            return
        with contextlib.suppress(ProtocolError):  # already closed on the client's side
            self.link.close_connection()
        self.flush()
        self.transport.close()

    def _drop_all(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self._starting.clear()
        for stream in streams:
            stream.lost()


class H2Downstream:
    """One request stream of an ``H2Server``: the ``messages.Downstream`` of its exchange."""

    __slots__ = (
        "_early",
        "_end_pending",
        "_exchange_done",
        "_finished",
        "_head",
        "_holding",
        "_out",
        "_out_size",
        "_paused_upstream",
        "_response_started",
        "_unacked",
        "conn",
        "exchange",
        "grpc",
        "request",
        "request_done",
        "stream_id",
        "tunnel",
    )

    def __init__(self, conn: H2Server, stream_id: int, request: Request, grpc_call: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.request = request
        self.grpc = grpc_call
        self.exchange: Exchange | None = None
        self.tunnel: StreamTunnel | None = None
        self.request_done = False
        self._early: list[bytes] = []  # body received before the exchange starts
        self._unacked = 0  # request bytes whose window is not given back yet
        self._holding = False
        self._out: deque[bytes] = deque()  # response body the client's windows do not take yet
        self._out_size = 0
        self._end_pending = False  # END_STREAM (or trailers) once _out is sent
        self._finished = False  # END_STREAM or RST_STREAM sent
        self._response_started = False
        self._head: list[tuple[bytes, bytes]] | None = None  # the response head, until it is flushed
        self._paused_upstream = False
        self._exchange_done = False

    # -- the request (from the connection) ----------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        """Create and start the exchange with the body and end that arrived with the headers."""
        request = self.request
        if self.request_done and request.chunked:
            # The whole body came with the headers: it goes upstream with its length.
            size = sum(map(len, self._early))
            request.length, request.chunked = (size or None), False
        exchange = self.exchange = Exchange(ctx, self, self.conn.listener, request)
        if not self._connecting():
            early, self._early = self._early, []
            for data in early:
                exchange.request_body(data)
            if self.request_done:
                exchange.request_end()
            self._give_back()
        exchange.start()

    def request_data(self, data: bytes, flow_controlled: int) -> None:
        self._unacked += flow_controlled
        if self.tunnel is not None:
            self.tunnel.data(0, data)
        elif self.exchange is not None and not self._connecting():
            self.exchange.request_body(data)
        else:
            self._early.append(data)
            return  # given back when the exchange starts, or the tunnel opens
        self._give_back()

    def request_ended(self) -> None:
        self.request_done = True
        if self.tunnel is not None:
            self.tunnel.eof(0)
        elif self.exchange is not None and not self._connecting():
            self.exchange.request_end()
        if self._finished:
            self.conn.forget(self)

    def cancelled(self) -> None:
        """The client reset the stream."""
        self._finished = True
        self.conn.forget(self)
        self._out.clear()
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.exchange is not None:
            self.exchange.downstream_lost()

    def lost(self) -> None:
        """The connection is gone."""
        self._finished = True
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.exchange is not None:
            self.exchange.downstream_lost()

    def _give_back(self) -> None:
        """Return the request bytes' window to the client unless the destination is full."""
        if self._unacked and not self._holding:
            self.conn.link.acknowledge_received_data(self._unacked, self.stream_id)
            self._unacked = 0

    def settle_window(self) -> None:
        """The stream is over: bytes it held unacknowledged still count against the connection's
        window, which gets them back (h2 skips the stream's own window once it is closed)."""
        if self._unacked:
            self.conn.link.acknowledge_received_data(self._unacked, self.stream_id)
            self._unacked = 0

    # -- Downstream (called by the exchange) --------------------------------------------------------------

    def send_continue(self) -> None:
        if not self._finished and not self._response_started:
            try:
                self.conn.link.send_headers(self.stream_id, [(b":status", b"100")])
            except ProtocolError:
                return
            self.conn.schedule_flush()

    def send_response_head(self, head: ResponseHead, headers: Headers | None, end: bool) -> None:
        self._response_started = True
        fields = response_fields(head.status, headers if headers is not None else head.headers)
        if end:
            self._send_headers(fields, True)
        else:
            # Held until the end of this upstream read: a response that ends in the same read (gRPC's
            # trailers-only answers) must leave as one HEADERS frame with END_STREAM.
            self._head = fields

    def send_response_body(self, data: bytes) -> None:
        if self._finished or self._end_pending or not data:
            return
        self._send_head()
        self._out.append(data)
        self._out_size += len(data)
        self.pump()

    def flush_response(self) -> None:
        self._send_head()
        self.conn.schedule_flush()

    def end_response(self) -> None:
        if self._finished:
            return
        head, self._head = self._head, None
        if head is not None and not (self.exchange is not None and self.exchange.trailers):
            self._send_headers(head, True)
        else:
            if head is not None:
                self._send_headers(head, False)
            self._end_pending = True
            self.pump()
        self.conn.schedule_flush()

    def send_local(self, status: int, headers: Headers, body: bytes) -> None:
        self._response_started = True
        if self.grpc:
            self._send_headers(response_fields(200, grpc.local_answer(status, headers, body)), True)
        else:
            fields = [*response_fields(status, headers), (b"content-length", b"%d" % len(body))]
            bodyless = not body or self.request.head.method == b"HEAD"
            self._send_headers(fields, bodyless)
            if not bodyless:
                self._out.append(body)
                self._out_size += len(body)
                self._end_pending = True
                self.pump()
        self.conn.schedule_flush()

    def pause_request_body(self) -> None:
        self._holding = True

    def resume_request_body(self) -> None:
        self._holding = False
        self._give_back()
        self.conn.schedule_flush()

    def exchange_done(self) -> None:
        self._exchange_done = True
        if self._finished:
            self._close_request_side()

    def reset(self) -> None:
        self._reset(ErrorCodes.INTERNAL_ERROR)

    def open_tunnel(self, peer: asyncio.Transport, head: ResponseHead, headers: Headers | None) -> Tunnel:
        self._response_started = True
        self._send_headers(
            response_fields(head.status, headers if headers is not None else head.headers), False
        )
        self.conn.schedule_flush()
        tunnel = self.tunnel = StreamTunnel(self, peer)
        for data in self._early:
            tunnel.data(0, data)
        self._early.clear()
        self._give_back()
        if self.request_done:
            tunnel.eof(0)
        return tunnel

    # -- the response's flow control ------------------------------------------------------------------------

    def pump(self) -> None:
        """Send as much of the held response body as the client's windows allow, then the end."""
        if self._finished:
            return
        link = self.conn.link
        sid = self.stream_id
        out = self._out
        try:
            while out and not self.conn.write_paused:
                window = min(link.local_flow_control_window(sid), link.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = out[0]
                if len(chunk) > window:
                    out[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    out.popleft()
                self._out_size -= len(chunk)
                link.send_data(sid, chunk)
            if self._end_pending and not out:
                trailers = self.exchange.trailers if self.exchange is not None else None
                if trailers:
                    link.send_headers(
                        sid, [(k, v) for k, v in trailers if k not in _NOT_IN_H2], end_stream=True
                    )
                else:
                    link.end_stream(sid)
                self._end_pending = False
                self._finish()
        except ProtocolError as e:
            log.debug("stream %d on %s: %s", sid, self.conn.listener.name, e)
            self._finish()
            return
        self.sync_response_pause()
        if self.tunnel is not None:
            self.tunnel.stream_drained(self._out_size)

    def sync_response_pause(self) -> None:
        """Stop the upstream while the response waits here (or in the socket); resume it below the
        low mark."""
        exchange = self.exchange
        if exchange is None:
            return
        full = self._out_size > HIGH_WATER or self.conn.write_paused
        if full and not self._paused_upstream:
            self._paused_upstream = True
            exchange.downstream_paused()
        elif self._paused_upstream and not self.conn.write_paused and self._out_size <= LOW_WATER:
            self._paused_upstream = False
            exchange.downstream_resumed()

    # -- internals ------------------------------------------------------------------------------------------

    def _connecting(self) -> bool:
        """A CONNECT whose tunnel is not open yet: what the client sends waits for it."""
        return self.tunnel is None and self.request.head.method == b"CONNECT"

    def _send_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self._send_headers(head, False)

    def _send_headers(self, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if self._finished:
            return
        try:
            self.conn.link.send_headers(self.stream_id, fields, end_stream=end)
        except ProtocolError as e:
            # A header HTTP/2 cannot carry, or a stream the client closed meanwhile.
            log.debug("stream %d on %s: cannot send headers: %s", self.stream_id, self.conn.listener.name, e)
            self._reset(ErrorCodes.INTERNAL_ERROR)
            return
        if end:
            self._finish()

    def _finish(self) -> None:
        """END_STREAM went out: the response side is over."""
        self._finished = True
        self._out.clear()
        self._out_size = 0
        if self.tunnel is not None:
            # A half-closed tunnel: the client may still send (TCP half-close).
            if self.request_done:
                self.conn.forget(self)
        elif self._exchange_done:
            self._close_request_side()

    def _close_request_side(self) -> None:
        if not self.request_done:
            # The response is complete but the client still sends: tell it to stop, without error.
            self._reset_quietly(ErrorCodes.NO_ERROR)
        self.conn.forget(self)

    def _reset(self, code: ErrorCodes) -> None:
        self._head = None
        if not self._finished:
            self._finished = True
            self._out.clear()
            self._out_size = 0
            self._reset_quietly(code)
        self.conn.forget(self)
        self.conn.schedule_flush()

    def _reset_quietly(self, code: ErrorCodes) -> None:
        try:
            self.conn.link.reset_stream(self.stream_id, code)
        except ProtocolError:
            return  # the client closed it already


class StreamTunnel(Tunnel):
    """A CONNECT stream spliced with a TCP connection to the upstream: side 0 is the stream (DATA
    frames), side 1 the upstream socket. Backpressure as in ``Tunnel``: the stream's held output
    above the high mark pauses the socket's reading, and the socket's full buffer holds the
    stream's window updates."""

    __slots__ = ("_stream",)

    def __init__(self, stream: H2Downstream, peer: asyncio.Transport) -> None:
        super().__init__(peer, peer)
        self._stream = stream

    def data(self, side: int, data: bytes) -> None:
        if self.closed:
            return
        peer = self.transports[1]
        if side == 0:
            peer.write(data)
        else:
            stream = self._stream
            stream.send_response_body(data)
            stream.flush_response()
            if stream._out_size > HIGH_WATER and not peer.is_closing():
                peer.pause_reading()

    def stream_drained(self, held: int) -> None:
        peer = self.transports[1]
        if held <= LOW_WATER and not self.closed and not peer.is_closing():
            peer.resume_reading()

    def eof(self, side: int) -> bool:
        self._eof[side] = True
        peer = self.transports[1]
        if side == 0:
            if self._eof[1]:
                self.close()
                return False
            if peer.can_write_eof() and not peer.is_closing():
                peer.write_eof()
                return True
            self.close()
            return False
        self._stream.end_response()
        if self._eof[0]:
            self.close()
            return False
        return True

    def paused(self, side: int) -> None:
        if side == 1:
            self._stream.pause_request_body()

    def resumed(self, side: int) -> None:
        if side == 1:
            self._stream.resume_request_body()

    def lost(self, side: int) -> None:
        if side == 1 and not self._stream._finished:
            self._stream.reset()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transports[1].close()
