"""Upstream HTTP/1.1: the client connection protocol and the connection pools.

``UpstreamConnection`` carries one request at a time (no pipelining) and reports its response to the
``ResponseSink`` that sent the request. Pools are kept per cluster (``ClusterPool``: the limits of
the plan's ``ConnectionLimits`` apply to the cluster as a whole, as Envoy's circuit breakers do) and
per endpoint within it (``EndpointPool``: the idle connections to one address, warmest first).

Getting a connection (``ClusterPool.acquire``) answers at once with an idle connection, or with a
``Waiter`` that is told later (a new connection is being opened, or the request waits for one to
free up under ``max_connections``), or with None when ``max_pending_requests`` waiters already wait
(overflow). Waiters are served first come, first served; when a connection frees up at an endpoint
nobody waits for while others wait elsewhere in the cluster, it is closed to make room.

A connection goes back to its pool only when both its request and its response are complete and the
response allowed keep-alive (read inside ``on_message_complete``: after it httptools reports True
whatever the response said). Idle connections are closed after the cluster's ``idle_timeout`` and
after ``max_requests_per_connection`` requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol, cast

import httptools

from innermesh.proxy.plan import ConnectionLimits, EndpointState, Plan
from innermesh.proxy.runtime import wire
from innermesh.proxy.runtime.h2upstream import H2Pools
from innermesh.proxy.runtime.limits import (
    HIGH_WATER,
    IDLE_SWEEP_INTERVAL,
    LOW_WATER,
    MAX_RESPONSE_HEAD_BYTES,
)
from innermesh.proxy.runtime.messages import ResponseHead, ResponseSink
from innermesh.proxy.runtime.tcp import Tunnel
from innermesh.proxy.stats import ClusterStats, ProxyStats

log = logging.getLogger(__name__)


class _NoEvents:
    """The whole-response path's parser protocol: llhttp validates, nothing is called back."""


_NO_EVENTS = _NoEvents()


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an endpoint; after a 101 it becomes one end of a ``Tunnel``.

    A response head is read from its bytes (``wire.scan_response``) once llhttp has found its end, so
    the parser calls back per message and per body piece, never per field. A head that can go to an
    HTTP/1.1 client as received is handed on as ``ResponseHead.raw`` with an empty header list (the
    exchange parses it for a client that needs one); any other comes with its header list and no
    ``raw``.
    """

    __slots__ = (
        "_checker",
        "_chunked_request",
        "_close_delimited",
        "_delivered",
        "_fresh_parser",
        "_head_buf",
        "_head_request",
        "_in_head",
        "_interim",
        "_read_paused",
        "_request_done",
        "_tunnel",
        "_upgrade_head",
        "closed",
        "idle_since",
        "in_idle",
        "owner",
        "parser",
        "pool",
        "requests",
        "transport",
        "write_paused",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.owner: ConnectionSink | None = None
        self.parser = httptools.HttpResponseParser(self)  # the general path's
        self._checker = httptools.HttpResponseParser(_NO_EVENTS)  # the whole-response path's
        self.requests = 0
        self.idle_since = 0.0
        self.in_idle = False
        self.closed = False
        self.write_paused = False
        self._tunnel: Tunnel | None = None
        self._fresh_parser = False
        self._read_paused = False
        self._request_done = True
        self._chunked_request = False
        self._head_request = False
        # The response being read (reset by send_request):
        self._in_head = True  # the bytes read are (the start of) a response head
        self._head_buf = b""  # the current head's bytes so far
        self._interim = False  # an interim (1xx) response is being read
        self._delivered = False  # its head went to the owner
        self._close_delimited = False
        self._upgrade_head: ResponseHead | None = None

    # -- what the owner calls ----------------------------------------------------------------------------

    def send_request(
        self,
        owner: ConnectionSink,
        head: bytes,
        body: list[bytes],
        *,
        end: bool,
        chunked: bool,
        head_request: bool,
    ) -> None:
        """Write a request head and the body received so far, in one write."""
        assert self.transport is not None
        assert self.owner is None
        if self._fresh_parser:
            # The last response answered a HEAD request: its parser expected a body that never came.
            self.parser = httptools.HttpResponseParser(self)
            self._fresh_parser = False
        self.owner = owner
        self.requests += 1
        self._request_done = end
        self._chunked_request = chunked
        self._head_request = head_request
        self._in_head = True
        self._head_buf = b""
        self._interim = self._delivered = self._close_delimited = False
        self._upgrade_head = None
        if chunked:
            parts = [head]
            for data in body:
                if data:
                    parts += wire.chunk(data)
            if end:
                parts.append(wire.LAST_CHUNK)
            self.transport.writelines(parts)
        elif body:
            self.transport.writelines([head, *body])
        else:
            self.transport.write(head)

    def send_body(self, data: bytes) -> None:
        if self.closed or not data:
            return
        assert self.transport is not None
        if self._chunked_request:
            self.transport.writelines(wire.chunk(data))
        else:
            self.transport.write(data)

    def end_request(self) -> None:
        self._request_done = True
        if self._chunked_request and not self.closed:
            assert self.transport is not None
            self.transport.write(wire.LAST_CHUNK)

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """The owner gives up on this request (a timeout, a client that left): drop the connection."""
        self.owner = None
        self.close(abort=True)

    def join_tunnel(self, tunnel: Tunnel, leftover: bytes) -> None:
        self._tunnel = tunnel
        if leftover:
            tunnel.data(1, leftover)
        self.resume_reading()

    def close(self, *, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.cluster.lost(self)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.data(1, data)
            return
        owner = self.owner
        if owner is None:
            # Bytes nobody asked for (on an idle connection, or after a response we gave up on).
            self.close(abort=True)
            return
        if self._in_head:
            if not self._head_buf and not self._interim and not self._head_request:
                end = data.find(b"\r\n\r\n") + 4
                head = data[:end]
                if end > 4 and wire.simple_response_length(head) == len(data) - end:
                    # A whole response framed by Content-Length, forwardable as received: llhttp
                    # validates it without callbacks, and the owner gets it in one call once the
                    # connection is back in its pool.
                    try:
                        self._checker.feed_data(data)
                    except httptools.HttpParserError as e:
                        log.debug("upstream %s:%d sent malformed HTTP: %s", self.pool.host, self.pool.port, e)
                        self._fail(reset=False)
                        return
                    self.owner = None
                    per_connection = self.pool.cluster.limits.max_requests_per_connection
                    if self._request_done and (per_connection is None or self.requests < per_connection):
                        if self._read_paused:
                            self.resume_reading()
                        self.pool.cluster.release(self)
                    else:
                        self.close()
                    owner.response_whole(head, data)
                    return
            self._head_buf = self._head_buf + data if self._head_buf else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0] :])
            return
        except httptools.HttpParserError as e:
            log.debug("upstream %s:%d sent malformed HTTP: %s", self.pool.host, self.pool.port, e)
            self._fail(reset=False)
            return
        if self._in_head and len(self._head_buf) > MAX_RESPONSE_HEAD_BYTES:
            self._fail(reset=False)
        elif self.owner is owner and self._delivered:
            owner.response_flush()

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            return self._tunnel.eof(1)
        return None  # the transport closes; connection_lost decides what the EOF meant

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._tunnel is not None:
            self._tunnel.paused(1)
        elif self.owner is not None:
            self.owner.upstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._tunnel is not None:
            self._tunnel.resumed(1)
        elif self.owner is not None:
            self.owner.upstream_write_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.pool.cluster.lost(self)
        if self._tunnel is not None:
            self._tunnel.lost(1)
            return
        owner, self.owner = self.owner, None
        if owner is None:
            return
        if self._close_delimited and self._delivered:
            owner.response_end()  # a body without framing ends with the connection
        else:
            owner.upstream_failed(reset=True)

    # -- httptools callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.owner is None:
            # A response nobody asked for, right behind the last one: the server is out of step
            # with its requests, so the connection must not carry another (the raise ends it).
            raise ValueError("unsolicited response")

    def on_headers_complete(self) -> None:
        buf = self._head_buf
        end = buf.find(b"\r\n\r\n") + 4
        head = buf[:end]
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # 100 Continue and other interim responses are not forwarded: the proxy answered the
            # client's Expect itself. The final response's head follows.
            self._interim = True
            self._head_buf = buf[end:]
            return
        self._in_head = False
        self._head_buf = b""
        scan = wire.scan_response(head)
        if scan is None:
            raise ValueError("a transfer coding other than chunked")
        length, chunked = scan.length, scan.chunked
        # The reason phrase is not kept: a head that is rebuilt gets the standard phrase, as HTTP/2
        # has none anyway; one forwarded as received keeps its own.
        if status == 101:
            self._upgrade_head = ResponseHead(status, b"", wire.header_fields(head), None, length, chunked)
            return
        forwardable = scan.forwardable
        if length is None and not chunked and not self._head_request and status != 204 and status != 304:
            self._close_delimited = True
            forwardable = False  # re-framed for the client
        if forwardable:
            response = ResponseHead(status, b"", [], head, length, chunked)
        else:
            response = ResponseHead(status, b"", wire.header_fields(head), None, length, chunked)
        owner = self.owner
        if owner is None:
            return
        self._delivered = True
        owner.response_head(response)
        if self._head_request and self.owner is owner:
            # The answer to HEAD ends with its head. A server that declared a body might send one
            # anyway (some do); its bytes would then be read as the next request's response, maybe
            # another client's, so such a connection is not reused.
            self._fresh_parser = True
            declared = bool(length) or chunked
            self._finish(self.parser.should_keep_alive() and not declared)

    def on_body(self, body: bytes) -> None:
        if self.owner is not None:
            self.owner.response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._upgrade_head is not None or self.owner is None:
            return
        self._finish(self.parser.should_keep_alive())

    # -- internals ---------------------------------------------------------------------------------------

    def _finish(self, keep_alive: bool) -> None:
        owner, self.owner = self.owner, None
        per_connection = self.pool.cluster.limits.max_requests_per_connection
        if (
            keep_alive
            and self._request_done
            and not self._close_delimited
            and (per_connection is None or self.requests < per_connection)
        ):
            if self._read_paused:
                self.resume_reading()
            self.pool.cluster.release(self)
        else:
            self.close()
        if owner is not None:
            owner.response_end()

    def _fail(self, *, reset: bool) -> None:
        owner, self.owner = self.owner, None
        self.close(abort=True)
        if owner is not None:
            owner.upstream_failed(reset=reset)

    def _upgraded(self, leftover: bytes) -> None:
        head, owner = self._upgrade_head, self.owner
        if head is None or owner is None:
            self._fail(reset=False)
            return
        self.owner = None
        self.pause_reading()  # until the owner joins the tunnel
        owner.upgraded(head, leftover)


class Waiter:
    """A request waiting for a connection to one endpoint; ``cancel`` when it no longer wants one."""

    __slots__ = ("cluster", "done", "pool", "sink")

    def __init__(self, cluster: ClusterPool, pool: EndpointPool, sink: ConnectionSink) -> None:
        self.cluster = cluster
        self.pool = pool
        self.sink = sink
        self.done = False

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.cluster.pending -= 1


class ConnectionSink(ResponseSink, Protocol):
    """A ``ResponseSink`` that asked a pool for a connection and is told when it has one, and that
    takes a whole response in one call."""

    def connection_ready(self, conn: UpstreamConnection) -> None: ...

    def connection_failed(self) -> None: ...

    def response_whole(self, head: bytes, data: bytes) -> None:
        """A whole response read at once, framed by Content-Length and forwardable as received
        (``wire.simple_response_length``): ``data`` is its head (``head``) and its body; the
        connection is already back in its pool (or closed). As ``response_head`` (with ``head`` as
        ``ResponseHead.raw``), ``response_body`` and ``response_end`` would say it."""


class EndpointPool:
    """Connections to one endpoint of one cluster."""

    __slots__ = ("cluster", "count", "host", "idle", "kept", "port")

    def __init__(self, cluster: ClusterPool, host: str, port: int, kept: bool) -> None:
        self.cluster = cluster
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []  # the last one is the warmest
        self.count = 0  # open or opening
        self.kept = kept  # the current plan has this endpoint: its connections go back to the pool


class ClusterPool:
    """The connections of one cluster, with the cluster's limits."""

    __slots__ = (
        "_pools",
        "active",
        "connections",
        "endpoints",
        "keep",
        "limits",
        "name",
        "pending",
        "stats",
        "waiting",
    )

    def __init__(self, pools: Pools, name: str, limits: ConnectionLimits, stats: ClusterStats) -> None:
        self._pools = pools
        self.name = name
        self.limits = limits
        self.stats = stats
        self.endpoints: dict[tuple[str, int], EndpointPool] = {}
        self.connections = 0  # open or opening, all endpoints
        self.pending = 0  # requests waiting for a connection
        self.active = 0  # requests in flight (max_requests)
        self.waiting: deque[Waiter] = deque()
        # The endpoints the current plan has (None: all of them); a connection to any other is
        # closed when its request ends instead of going back to the pool.
        self.keep: frozenset[tuple[str, int]] | None = None

    def acquire(self, endpoint: EndpointState, sink: ConnectionSink) -> UpstreamConnection | Waiter | None:
        key = (endpoint.host, endpoint.port)
        pool = self.endpoints.get(key)
        if pool is None:
            kept = self.keep is None or key in self.keep
            pool = self.endpoints[key] = EndpointPool(self, endpoint.host, endpoint.port, kept)
        idle = pool.idle
        if idle:
            deadline = self._pools.loop.time() - self.limits.idle_timeout
            while idle:
                conn = idle.pop()
                conn.in_idle = False
                if conn.idle_since >= deadline:
                    return conn
                conn.close()
        if self.pending >= self.limits.max_pending_requests:
            self.stats.cx_overflow += 1
            return None
        waiter = Waiter(self, pool, sink)
        self.pending += 1
        if self.connections < self.limits.max_connections:
            self._open(waiter)
        else:
            self.waiting.append(waiter)
            self._reclaim_idle()
        return waiter

    def release(self, conn: UpstreamConnection) -> None:
        """A connection that finished a request and may carry another."""
        pool = conn.pool
        if not pool.kept:
            conn.close()  # its endpoint (or its whole cluster) left the plan
            return
        if self.waiting:
            for waiter in self.waiting:
                if waiter.pool is pool and not waiter.done:
                    self.waiting.remove(waiter)
                    self._deliver(waiter, conn)
                    return
            if any(not w.done for w in self.waiting):
                conn.close()  # make room for a request waiting at another endpoint
                return
            self.waiting.clear()
        conn.idle_since = self._pools.loop.time()
        conn.in_idle = True
        pool.idle.append(conn)

    def lost(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side): account for it and let a waiter have the slot."""
        pool = conn.pool
        pool.count -= 1
        self.connections -= 1
        self.stats.cx_active -= 1
        if conn.in_idle:
            conn.in_idle = False
            pool.idle.remove(conn)
        self._slot_freed()

    def sweep(self, now: float) -> None:
        deadline = now - self.limits.idle_timeout
        for pool in list(self.endpoints.values()):
            for conn in [c for c in pool.idle if c.idle_since < deadline]:
                conn.close()
            if pool.count == 0:
                del self.endpoints[(pool.host, pool.port)]

    def close_idle(self, keep: frozenset[tuple[str, int]] = frozenset()) -> None:
        """Close the idle connections of every endpoint not in ``keep`` (and those in use when their
        requests end)."""
        for key, pool in list(self.endpoints.items()):
            pool.kept = key in keep
            if not pool.kept:
                for conn in list(pool.idle):
                    conn.close()
                if pool.count == 0:
                    del self.endpoints[key]

    def _reclaim_idle(self) -> None:
        for pool in self.endpoints.values():
            if pool.idle:
                pool.idle[0].close()  # the coldest; lost() hands the slot to the first waiter
                return

    def _slot_freed(self) -> None:
        while self.waiting and self.connections < self.limits.max_connections:
            waiter = self.waiting.popleft()
            if not waiter.done:
                self._open(waiter)

    def _deliver(self, waiter: Waiter, conn: UpstreamConnection) -> None:
        waiter.done = True
        self.pending -= 1
        waiter.sink.connection_ready(conn)

    def _open(self, waiter: Waiter) -> None:
        pool = waiter.pool
        self.connections += 1
        pool.count += 1
        self.stats.cx_total += 1
        self.stats.cx_active += 1
        self._pools.spawn(self._connect(waiter))

    async def _connect(self, waiter: Waiter) -> None:
        pool = waiter.pool
        loop = self._pools.loop
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(pool), pool.host, pool.port)
        except (OSError, TimeoutError) as e:
            log.debug("connect to %s:%d (%s) failed: %s", pool.host, pool.port, self.name, e)
            pool.count -= 1
            self.connections -= 1
            self.stats.cx_active -= 1
            self.stats.cx_connect_fail += 1
            if not waiter.done:
                waiter.done = True
                self.pending -= 1
                waiter.sink.connection_failed()
            self._slot_freed()
            return
        if conn.closed:
            if not waiter.done:
                waiter.done = True
                self.pending -= 1
                waiter.sink.connection_failed()
        elif waiter.done:
            self.release(conn)
        else:
            self._deliver(waiter, conn)


class Pools:
    """Every cluster's pool, kept across plans by cluster name; sweeps idle connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: ProxyStats) -> None:
        self.loop = loop
        self._stats = stats
        self.by_name: dict[str, ClusterPool] = {}  # read directly on the hot path (forward.py)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.h2 = H2Pools(loop, stats)  # clusters whose protocol is HTTP/2 (h2upstream.py)

    def cluster(self, name: str, limits: ConnectionLimits) -> ClusterPool:
        cp = self.by_name.get(name)
        if cp is None:
            cp = self.by_name[name] = ClusterPool(self, name, limits, self._stats.cluster(name))
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(IDLE_SWEEP_INTERVAL, self._sweep)
        elif cp.limits is not limits:
            cp.limits = limits
            cp._slot_freed()  # a higher max_connections lets waiters in
        return cp

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the pools own (cancelled by ``close``)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retain(self, plan: Plan) -> None:
        """After a plan swap: close idle connections to clusters and endpoints it no longer has
        (those in use close when their requests end), and forget pools with no connection left."""
        for name, cp in list(self.by_name.items()):
            cluster = plan.clusters.get(name)
            cp.keep = (
                frozenset((e.host, e.port) for e in cluster.endpoints) if cluster is not None else frozenset()
            )
            cp.close_idle(cp.keep)
            if cp.connections == 0 and cp.pending == 0 and cp.active == 0:
                del self.by_name[name]
        self.h2.retain(plan)

    def _sweep(self) -> None:
        now = self.loop.time()
        for cp in self.by_name.values():
            cp.sweep(now)
        self._sweeper = self.loop.call_later(IDLE_SWEEP_INTERVAL, self._sweep)

    async def close(self) -> None:
        """Close every idle connection and stop opening new ones (connections in use close when
        their exchanges end or are aborted)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for cp in self.by_name.values():
            cp.close_idle()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.h2.close()
