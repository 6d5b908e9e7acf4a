"""Upstream HTTP/2: client connections to endpoints, each multiplexing many requests as streams, and
their pools; plus the HTTP/2 connection both sides of the proxy use (``H2Link``).

The forwarder (forward.py) sees an ``H2Stream`` where an HTTP/1.1 exchange sees an
``UpstreamConnection``: the same calls (``send_request``, ``send_body``, ``end_request``,
``pause_reading``, ``resume_reading``, ``abort``) and the same ``ResponseSink`` callbacks, plus two
that HTTP/1.1 never makes: ``response_trailers`` and ``upstream_refused`` (REFUSED_STREAM, or a GOAWAY
that excludes the stream: the request was not processed and may be sent again). The request head it
is given is the HTTP/1.1 head the forwarder built (its one description of what goes upstream, with
every rewrite and added header applied); ``request_headers`` turns it into an HTTP/2 header list.

Pools follow Envoy's HTTP/2 connection pool: per endpoint, as few connections as the streams need
(a new one when every open one is at the peer's SETTINGS_MAX_CONCURRENT_STREAMS, capped at
``MAX_STREAMS_PER_CONNECTION``); the cluster's ``ConnectionLimits`` apply as circuit breakers
(``max_connections`` connections, ``max_pending_requests`` requests waiting for a stream,
``max_requests`` in flight, counted by the forwarder). A connection stops taking streams after
``max_requests_per_connection`` streams, on GOAWAY, or when its endpoint leaves the plan, and closes
once its streams are done; one with no stream for ``idle_timeout`` closes.

Flow control: a stream's request body is sent as the peer's windows allow; what waits beyond that is
held in the stream, and above ``HIGH_WATER`` the forwarder is told to stop reading the client
(``upstream_write_paused``). Response data is acknowledged (WINDOW_UPDATE) as it is handed on, and
not while the forwarder has paused reading (the client is slow): the upstream can then send at most
one window more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame, GoAwayFrame

from innermesh.proxy.plan import ConnectionLimits, EndpointState, Headers, Plan
from innermesh.proxy.runtime import grpc
from innermesh.proxy.runtime.limits import HIGH_WATER, IDLE_SWEEP_INTERVAL, LOW_WATER, MAX_HEAD_BYTES
from innermesh.proxy.runtime.messages import ResponseHead, ResponseSink
from innermesh.proxy.stats import ClusterStats, ProxyStats

log = logging.getLogger(__name__)

# Streams one connection carries at once, whatever the peer allows: h2's own default for what it
# accepts, and gRPC servers' usual limit; more concurrent requests to one endpoint open another
# connection (Envoy's default is unbounded, but a Python proxy gains nothing from longer queues on
# one socket).
MAX_STREAMS_PER_CONNECTION = 100
# Per-stream receive window: the protocol's default (64 KiB), which bounds what one stream can make
# the proxy hold for a slow reader. The connection window is that times the streams allowed, so that
# one stalled stream never starves the others on its connection.
STREAM_WINDOW = 65_535
CONNECTION_WINDOW = STREAM_WINDOW * MAX_STREAMS_PER_CONNECTION

# Headers that describe an HTTP/1.1 connection and are forbidden in HTTP/2 (RFC 9113 section 8.2.2);
# "te" is allowed only as "trailers". Host becomes :authority.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"host"}
)

_NO_ERROR = ErrorCodes.NO_ERROR
_REFUSED = ErrorCodes.REFUSED_STREAM


class H2Link(H2Connection):
    """h2's connection, with GOAWAY as RFC 9113 section 6.8 means it: a graceful GOAWAY (NO_ERROR)
    stops new streams but lets the streams it covers finish, in both directions.

    h2 closes its state machine on sending or receiving any GOAWAY, after which frames of the streams
    still running raise ProtocolError (python-hyper/h2#1181, open). Here a received NO_ERROR GOAWAY
    is reported (``ConnectionTerminated``) without closing, and ``announce_goaway`` sends one without
    closing; the owner refuses new streams itself and closes when the last one ends. Any other
    GOAWAY keeps h2's behaviour.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        if frame.error_code != _NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = _NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def announce_goaway(self, last_stream_id: int) -> None:
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=_NO_ERROR)
        self._prepare_for_sending([frame])


def new_link(*, client: bool, max_streams: int = MAX_STREAMS_PER_CONNECTION) -> H2Link:
    """An HTTP/2 connection with the proxy's settings (its preface is queued: flush it)."""
    link = H2Link(H2Configuration(client_side=client, header_encoding=None))
    settings = {
        SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD_BYTES,
    }
    if client:
        settings[SettingCodes.ENABLE_PUSH] = 0
    link.local_settings = Settings(client=client, initial_values=settings)
    link.initiate_connection()
    link.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
    return link


# --- heads ------------------------------------------------------------------------------------------------


def request_headers(head: bytes, scheme: bytes = b"http") -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header list of an HTTP/1.1 request head (as the forwarder builds it): the request
    line and Host become pseudo-headers, names are lower-cased, connection-specific headers (and the
    headers Connection names) are dropped. A gRPC call gets ``te: trailers``, which gRPC requires
    and HTTP/1.1 heads never carry."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    named: set[bytes] = set()
    fields: list[tuple[bytes, bytes]] = []
    grpc_call = False
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"host":
            authority = value
        elif name == b"connection":
            named |= {t.strip().lower() for t in value.split(b",")}
        elif name not in _CONNECTION_SPECIFIC:
            if name == b"content-type":
                grpc_call = grpc.is_grpc(value)
            fields.append((name, value))
    if named:
        fields = [(k, v) for k, v in fields if k not in named]
    if grpc_call:
        fields.append((b"te", b"trailers"))
    return [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", target),
        *fields,
    ]


def response_head(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    """A ``ResponseHead`` from an HTTP/2 response's headers (h2 has validated them)."""
    status = 0
    fields: Headers = []
    length: int | None = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":status":
                status = int(value)
            continue
        if name == b"content-length" and value.isdigit():
            length = int(value)
        fields.append((name, value))
    return ResponseHead(status, b"", fields, None, length, False)


# --- one stream ---------------------------------------------------------------------------------------------


class H2Stream:
    """One request on an upstream HTTP/2 connection: what the forwarder holds while it is in flight.

    Created with a slot reserved on ``conn``; the stream id is taken when the request is sent, so
    stream ids go out in order whatever order streams are handed out in.
    """

    __slots__ = (
        "_end",
        "_ended",
        "_out",
        "_out_size",
        "_read_paused",
        "_reserved",
        "_unacked",
        "conn",
        "owner",
        "requests",
        "stream_id",
        "write_paused",
    )

    def __init__(self, conn: H2Client) -> None:
        self.conn = conn
        self.owner: ResponseSink | None = None
        self.stream_id = 0
        # What the forwarder reads as "a reused connection" (a request on it that fails unanswered
        # is sent again once): as for HTTP/1.1, only a connection that sat idle after earlier
        # streams, which the upstream may have been closing when this one was sent. A failure on a
        # busy connection may have reached the application and is not resent.
        self.requests = 0 if conn.busy() else conn.streams_opened
        self.write_paused = conn.write_paused
        self._reserved = True
        conn.reserved += 1
        self._out: deque[bytes] = deque()  # request body the peer's windows do not take yet
        self._out_size = 0
        self._end = False  # the request ends once _out is sent
        self._ended = False  # END_STREAM sent
        self._read_paused = False
        self._unacked = 0  # response bytes received while reading is paused

    # -- what the forwarder calls -------------------------------------------------------------------------

    def send_request(
        self,
        owner: ResponseSink,
        head: bytes,
        body: list[bytes],
        *,
        end: bool,
        chunked: bool,
        head_request: bool,
    ) -> None:
        """Open the stream: HEADERS, then the body received so far as the windows allow. (``chunked``
        is HTTP/1.1 framing and ``head_request`` changes nothing in HTTP/2.)"""
        conn = self.conn
        self.owner = owner
        self._unreserve()
        if conn.closed or not conn.accepting:
            # The connection went away (or announced GOAWAY) since the slot was reserved: the peer
            # never saw this request.
            conn.later(self._refused)
            return
        link = conn.link
        sid = self.stream_id = link.get_next_available_stream_id()
        has_body = any(body)
        try:
            link.send_headers(sid, request_headers(head), end_stream=end and not has_body)
        except ProtocolError as e:  # the peer lowered its stream limit meanwhile
            log.debug("stream refused locally on %s:%d: %s", conn.pool.host, conn.pool.port, e)
            self.stream_id = 0
            conn.later(self._refused)
            return
        conn.streams[sid] = self
        conn.streams_opened += 1
        if has_body:
            self._out.extend(b for b in body if b)
            self._out_size = sum(map(len, self._out))
            self._end = end
        else:
            self._ended = end
        self._pump()
        conn.schedule_flush()

    def send_body(self, data: bytes) -> None:
        if not data or self._ended or self.stream_id == 0:
            return
        self._out.append(data)
        self._out_size += len(data)
        self._pump()
        self.conn.schedule_flush()

    def end_request(self) -> None:
        if self._ended or self.stream_id == 0:
            return
        self._end = True
        self._pump()
        self.conn.schedule_flush()

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        self._read_paused = False
        if self._unacked and self.stream_id in self.conn.streams:
            self.conn.link.acknowledge_received_data(self._unacked, self.stream_id)
            self.conn.schedule_flush()
        self._unacked = 0

    def abort(self) -> None:
        """The forwarder gives up on this request (a timeout, a client that left): reset the stream
        (CANCEL), which tells the upstream to stop working on it."""
        self.owner = None
        conn = self.conn
        if conn.streams.pop(self.stream_id, None) is not None:
            conn.reset(self.stream_id, ErrorCodes.CANCEL)
            self._settle_window()
            conn.stream_done()
        else:
            self.release()

    def release(self) -> None:
        """Give back a stream that was never used (its requester gave up while it was handed over)."""
        if self._reserved:
            self._unreserve()
            self.conn.stream_done()

    # -- flow control ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send as much of the held body as the windows allow (nothing while the socket's buffer is
        full), then END_STREAM once all of it is out."""
        conn = self.conn
        link = conn.link
        sid = self.stream_id
        out = self._out
        try:
            while out and not conn.write_paused:
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
                last = self._end and not out
                link.send_data(sid, chunk, end_stream=last)
                if last:
                    self._ended = True
            if self._end and not out and not self._ended:
                link.end_stream(sid)
                self._ended = True
        except ProtocolError:
            return  # the stream was reset or the connection failed: its event says so
        self._sync_write()

    def _sync_write(self) -> None:
        owner = self.owner
        if not self.write_paused and self._out_size > HIGH_WATER:
            self.write_paused = True
            if owner is not None:
                owner.upstream_write_paused()
        elif self.write_paused and self._out_size <= LOW_WATER and not self.conn.write_paused:
            self.write_paused = False
            if owner is not None:
                owner.upstream_write_resumed()

    def _settle_window(self) -> None:
        """The stream is over: response bytes held unacknowledged (reading was paused) go back to
        the connection's window."""
        if self._unacked:
            self.conn.link.acknowledge_received_data(self._unacked, self.stream_id)
            self._unacked = 0

    def _unreserve(self) -> None:
        if self._reserved:
            self._reserved = False
            self.conn.reserved -= 1

    # -- what the connection calls --------------------------------------------------------------------

    def on_response(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.owner is not None:
            self.owner.response_head(response_head(headers))

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        owner = self.owner
        if owner is not None:
            owner.response_body(data)
        if self._read_paused and owner is not None:
            self._unacked += flow_controlled
        elif self.stream_id in self.conn.streams:
            self.conn.link.acknowledge_received_data(flow_controlled, self.stream_id)

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.owner is not None:
            self.owner.response_trailers([(k, v) for k, v in headers if k[:1] != b":"])

    def on_end(self) -> None:
        """The response is complete: free the slot first (the owner may want the next stream at
        once), then tell the owner."""
        conn = self.conn
        conn.streams.pop(self.stream_id, None)
        if not self._ended:
            # The upstream answered before the request body was all sent (a gRPC server that fails
            # a client stream early): the rest is not wanted.
            conn.reset(self.stream_id, ErrorCodes.CANCEL)
        owner, self.owner = self.owner, None
        self._settle_window()
        conn.stream_done()
        if owner is not None:
            owner.response_end()

    def on_reset(self, code: int) -> None:
        conn = self.conn
        conn.streams.pop(self.stream_id, None)
        self._settle_window()
        conn.stream_done()
        if code == _REFUSED:
            self._refused()
        else:
            self.failed(reset=True)

    def failed(self, *, reset: bool) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_failed(reset=reset)

    def _refused(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_refused()


# --- one connection ------------------------------------------------------------------------------------------


class H2Client(asyncio.Protocol):
    """One HTTP/2 connection to an endpoint (h2c, prior knowledge)."""

    __slots__ = (
        "_flush_pending",
        "_touched",
        "accepting",
        "closed",
        "idle_since",
        "link",
        "pool",
        "ready",
        "reserved",
        "settled",
        "streams",
        "streams_opened",
        "transport",
        "write_paused",
    )

    def __init__(self, pool: H2EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.link = new_link(client=True)
        # True once the peer's first SETTINGS arrived (False: the connection was lost before):
        # streams wait for it, so that they never exceed a stream limit not known yet.
        self.settled: asyncio.Future[bool] = pool.cluster.loop.create_future()
        self.streams: dict[int, H2Stream] = {}  # sent and not finished
        self.reserved = 0  # handed out, not sent yet
        self.streams_opened = 0
        self.ready = False
        self.accepting = True
        self.closed = False
        self.write_paused = False
        self.idle_since = 0.0
        self._flush_pending = False
        self._touched: list[H2Stream] = []

    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if not self.ready or not self.accepting or self.closed:
            return 0
        limit = min(self.link.remote_settings.max_concurrent_streams, MAX_STREAMS_PER_CONNECTION)
        free = limit - len(self.streams) - self.reserved
        per_connection = self.pool.cluster.limits.max_requests_per_connection
        if per_connection is not None:
            free = min(free, per_connection - self.streams_opened - self.reserved)
        return free

    def busy(self) -> bool:
        return bool(self.streams) or self.reserved > 0

    # -- writing -------------------------------------------------------------------------------------------

    def flush(self) -> None:
        self._flush_pending = False
        data = self.link.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write what the streams queued at the end of this loop turn: one write for all the requests
        (and window updates) that many exchanges produced in one turn."""
        if not self._flush_pending:
            self._flush_pending = True
            self.pool.cluster.loop.call_soon(self.flush)

    def later(self, callback: Any) -> None:
        """Run ``callback`` on the next loop turn (a failure found inside a call from the forwarder is
        reported after that call returns, never into it)."""
        self.pool.cluster.loop.call_soon(callback)

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        if stream_id and not self.closed:
            try:
                self.link.reset_stream(stream_id, code)
            except ProtocolError:
                return  # already closed on the peer's side
            self.schedule_flush()

    def stream_done(self) -> None:
        """A stream finished: its slot goes to a waiter; a connection that takes no more streams
        closes with its last one."""
        per_connection = self.pool.cluster.limits.max_requests_per_connection
        if per_connection is not None and self.streams_opened >= per_connection:
            self.accepting = False
        if not self.busy():
            self.idle_since = self.pool.cluster.loop.time()
            if not self.accepting:
                self.close()
                return
        self.pool.cluster.serve(self.pool)

    def stop_accepting(self) -> None:
        """Take no more streams; close once the current ones are done."""
        self.accepting = False
        if not self.busy():
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        if self.transport is not None and self.ready:
            with contextlib.suppress(ProtocolError):  # the peer closed it already
                self.link.close_connection()
            self.flush()
        self.closed = True
        self.pool.cluster.lost(self)
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.flush()  # the preface and SETTINGS

    def data_received(self, data: bytes) -> None:
        try:
            events = self.link.receive_data(data)
        except ProtocolError as e:
            log.debug("upstream %s:%d broke HTTP/2: %s", self.pool.host, self.pool.port, e)
            self._fail_all(reset=False)
            self.flush()  # h2's GOAWAY
            self.close()
            return
        streams = self.streams
        touched = self._touched
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                assert isinstance(event, DataReceived)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_data(event.data, event.flow_controlled_length)
                    touched.append(stream)
                else:
                    self.link.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is ResponseReceived:
                assert isinstance(event, ResponseReceived)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_response(event.headers)
                    touched.append(stream)
            elif kind is StreamEnded:
                assert isinstance(event, StreamEnded)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_end()
            elif kind is TrailersReceived:
                assert isinstance(event, TrailersReceived)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_trailers(event.headers)
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_reset(event.error_code)
            elif kind is WindowUpdated or kind is RemoteSettingsChanged:
                if not self.settled.done():
                    self.settled.set_result(True)
                self._pump_all()
                self.pool.cluster.serve(self.pool)
            elif kind is ConnectionTerminated:
                assert isinstance(event, ConnectionTerminated)
                self._goaway(event)
        for stream in touched:
            owner = stream.owner
            if owner is not None:
                owner.response_flush()
        touched.clear()
        self.flush()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            if not stream.write_paused:
                stream.write_paused = True
                if stream.owner is not None:
                    stream.owner.upstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._pump_all()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.settled.done():
            self.settled.set_result(False)
        if not self.closed:
            self.closed = True
            self.pool.cluster.lost(self)
        self._fail_all(reset=True)

    # -- internals ----------------------------------------------------------------------------------------

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            stream._pump()

    def _goaway(self, event: ConnectionTerminated) -> None:
        """The peer will take no new stream: those above ``last_stream_id`` were never processed."""
        self.accepting = False
        last = event.last_stream_id or 0
        for sid, stream in list(self.streams.items()):
            if sid > last:
                del self.streams[sid]
                stream._refused()
        if event.error_code != _NO_ERROR:
            log.debug("upstream %s:%d sent GOAWAY %s", self.pool.host, self.pool.port, event.error_code)
            self._fail_all(reset=True)
        if not self.streams:
            self.close()
        self.pool.cluster.serve(self.pool)

    def _fail_all(self, *, reset: bool) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.failed(reset=reset)


# --- pools ---------------------------------------------------------------------------------------------------


class H2Sink(ResponseSink, Protocol):
    """A ``ResponseSink`` that asked for a stream and is told when it has one."""

    def connection_ready(self, conn: H2Stream) -> None: ...

    def connection_failed(self) -> None: ...


class H2Waiter:
    """A request waiting for a stream to one endpoint; ``cancel`` when it no longer wants one."""

    __slots__ = ("cluster", "done", "pool", "sink")

    def __init__(self, cluster: H2ClusterPool, pool: H2EndpointPool, sink: H2Sink) -> None:
        self.cluster = cluster
        self.pool = pool
        self.sink = sink
        self.done = False

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.cluster.pending -= 1


class H2EndpointPool:
    """The HTTP/2 connections to one endpoint, and the requests waiting for a stream there."""

    __slots__ = ("cluster", "connecting", "conns", "host", "port", "waiting")

    def __init__(self, cluster: H2ClusterPool, host: str, port: int) -> None:
        self.cluster = cluster
        self.host = host
        self.port = port
        self.conns: list[H2Client] = []  # open or opening
        self.connecting = 0
        self.waiting: deque[H2Waiter] = deque()

    def stream(self) -> H2Stream | None:
        """A stream on the busiest connection that has room (so that idle ones can time out)."""
        best: H2Client | None = None
        for conn in self.conns:
            if conn.capacity() > 0 and (best is None or len(conn.streams) > len(best.streams)):
                best = conn
        return H2Stream(best) if best is not None else None


class H2ClusterPool:
    """The HTTP/2 connections of one cluster, with the cluster's limits (the attributes the forwarder
    reads are those of ``upstream.ClusterPool``)."""

    __slots__ = (
        "_pools",
        "active",
        "connections",
        "endpoints",
        "keep",
        "limits",
        "loop",
        "name",
        "pending",
        "stats",
    )

    def __init__(self, pools: H2Pools, name: str, limits: ConnectionLimits, stats: ClusterStats) -> None:
        self._pools = pools
        self.loop: asyncio.AbstractEventLoop = pools.loop
        self.name = name
        self.limits = limits
        self.stats = stats
        self.endpoints: dict[tuple[str, int], H2EndpointPool] = {}
        self.connections = 0  # open or opening, all endpoints
        self.pending = 0  # requests waiting for a stream
        self.active = 0  # requests in flight (max_requests; kept by the forwarder)
        self.keep: frozenset[tuple[str, int]] | None = None  # see upstream.ClusterPool.keep

    def acquire(self, endpoint: EndpointState, sink: H2Sink) -> H2Stream | H2Waiter | None:
        key = (endpoint.host, endpoint.port)
        pool = self.endpoints.get(key)
        if pool is None:
            pool = self.endpoints[key] = H2EndpointPool(self, endpoint.host, endpoint.port)
        if not pool.waiting:
            stream = pool.stream()
            if stream is not None:
                return stream
        if self.pending >= self.limits.max_pending_requests:
            self.stats.cx_overflow += 1
            return None
        waiter = H2Waiter(self, pool, sink)
        self.pending += 1
        pool.waiting.append(waiter)
        self._grow(pool)
        return waiter

    def serve(self, pool: H2EndpointPool) -> None:
        """Hand free streams at ``pool`` to its waiters, first come first served; open a connection
        for those left when the limits allow."""
        waiting = pool.waiting
        while waiting:
            waiter = waiting[0]
            if waiter.done:
                waiting.popleft()
                continue
            stream = pool.stream()
            if stream is None:
                break
            waiting.popleft()
            waiter.done = True
            self.pending -= 1
            waiter.sink.connection_ready(stream)
        if waiting:
            self._grow(pool)

    def lost(self, conn: H2Client) -> None:
        """A connection closed (by either side): forget it; its endpoint's waiters get another."""
        pool = conn.pool
        if conn in pool.conns:
            pool.conns.remove(conn)
            self.connections -= 1
            self.stats.cx_active -= 1
        self._slot_freed()

    def sweep(self, now: float) -> None:
        deadline = now - self.limits.idle_timeout
        for key, pool in list(self.endpoints.items()):
            for conn in [c for c in pool.conns if c.ready and not c.busy() and c.idle_since < deadline]:
                conn.close()
            if not pool.conns and not pool.waiting:
                del self.endpoints[key]

    def retain(self, keep: frozenset[tuple[str, int]]) -> None:
        """Endpoints not in ``keep`` left the plan: their connections take no new stream."""
        self.keep = keep
        for key, pool in list(self.endpoints.items()):
            if key not in keep:
                for conn in list(pool.conns):
                    conn.stop_accepting()
                if not pool.conns and not pool.waiting:
                    del self.endpoints[key]

    def close_idle(self) -> None:
        for pool in list(self.endpoints.values()):
            for conn in [c for c in pool.conns if not c.busy()]:
                conn.close()

    # -- internals ----------------------------------------------------------------------------------------

    def _grow(self, pool: H2EndpointPool) -> None:
        """Open connections at ``pool`` until those opening cover its waiters, within
        ``max_connections`` (closing an idle connection elsewhere to make room)."""
        wanted = sum(not w.done for w in pool.waiting)
        while pool.connecting * MAX_STREAMS_PER_CONNECTION < wanted:
            if self.keep is not None and (pool.host, pool.port) not in self.keep:
                break
            if self.connections >= self.limits.max_connections and not self._reclaim_idle():
                break
            self._open(pool)

    def _reclaim_idle(self) -> bool:
        for other in self.endpoints.values():
            for conn in other.conns:
                if conn.ready and not conn.busy():
                    conn.close()  # lost() frees its slot
                    return self.connections < self.limits.max_connections
        return False

    def _slot_freed(self) -> None:
        for pool in list(self.endpoints.values()):
            if any(not w.done for w in pool.waiting):
                self.serve(pool)
                if self.connections >= self.limits.max_connections:
                    return

    def _open(self, pool: H2EndpointPool) -> None:
        self.connections += 1
        pool.connecting += 1
        self.stats.cx_total += 1
        self.stats.cx_active += 1
        self._pools.spawn(self._connect(pool))

    async def _connect(self, pool: H2EndpointPool) -> None:
        """Connect, then wait for the peer's SETTINGS (its stream limit), both within the cluster's
        connect timeout."""
        conn: H2Client | None = None
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                _, conn = await self.loop.create_connection(lambda: H2Client(pool), pool.host, pool.port)
                settled = await conn.settled
        except (OSError, TimeoutError) as e:
            log.debug("connect to %s:%d (%s, HTTP/2) failed: %s", pool.host, pool.port, self.name, e)
            settled = False
        except asyncio.CancelledError:  # the pools are closing
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        pool.connecting -= 1
        if conn is None or not settled or conn.closed:
            if conn is not None and conn.transport is not None:
                conn.closed = True
                conn.transport.abort()
            self.connections -= 1
            self.stats.cx_active -= 1
            self.stats.cx_connect_fail += 1
            self._connect_failed(pool)
            return
        conn.ready = True
        conn.idle_since = self.loop.time()
        pool.conns.append(conn)
        self.serve(pool)
        if not conn.busy() and (self.keep is not None and (pool.host, pool.port) not in self.keep):
            conn.close()

    def _connect_failed(self, pool: H2EndpointPool) -> None:
        """No connection to ``pool``'s endpoint: its waiters fail (the forwarder may retry elsewhere)
        unless another connection there can still take them."""
        if pool.conns or pool.connecting:
            self.serve(pool)
        else:
            waiting = list(pool.waiting)
            pool.waiting.clear()
            for waiter in waiting:
                if not waiter.done:
                    waiter.done = True
                    self.pending -= 1
                    waiter.sink.connection_failed()
        self._slot_freed()


class H2Pools:
    """Every HTTP/2 cluster's pool, kept across plans by cluster name; sweeps idle connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: ProxyStats) -> None:
        self.loop = loop
        self._stats = stats
        self._clusters: dict[str, H2ClusterPool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def cluster(self, name: str, limits: ConnectionLimits) -> H2ClusterPool:
        cp = self._clusters.get(name)
        if cp is None:
            cp = self._clusters[name] = H2ClusterPool(self, name, limits, self._stats.cluster(name))
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(IDLE_SWEEP_INTERVAL, self._sweep)
        elif cp.limits is not limits:
            cp.limits = limits
            cp._slot_freed()  # higher limits let waiters in
        return cp

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retain(self, plan: Plan) -> None:
        """After a plan swap: connections to clusters and endpoints it no longer has take no new
        stream and close when idle; pools with nothing left are forgotten."""
        for name, cp in list(self._clusters.items()):
            cluster = plan.clusters.get(name)
            cp.retain(
                frozenset((e.host, e.port) for e in cluster.endpoints) if cluster is not None else frozenset()
            )
            if cp.connections == 0 and cp.pending == 0 and cp.active == 0:
                del self._clusters[name]

    def _sweep(self) -> None:
        now = self.loop.time()
        for cp in self._clusters.values():
            cp.sweep(now)
        self._sweeper = self.loop.call_later(IDLE_SWEEP_INTERVAL, self._sweep)

    async def close(self) -> None:
        """Close idle connections and stop opening new ones (busy ones close when their streams end
        or are reset)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for cp in self._clusters.values():
            cp.close_idle()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
