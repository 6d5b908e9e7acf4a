"""Opaque byte tunnels: TCP listeners, CONNECT tunnels and upgraded (WebSocket) connections.

A ``Tunnel`` splices two transports: what one side receives is written to the other. Backpressure:
when a side's write buffer passes the high-water mark, the other side stops reading until it drains.
Half-close: an EOF from one side is passed on as a write EOF to the other, and the tunnel closes
when both directions have ended (or either side is lost).

``TcpDownstream`` is the protocol of a TCP listener's connections: it picks an endpoint of the
listener's cluster, connects, and splices. Bytes that arrive before the upstream connection is ready
are held (reading paused beyond a bound).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from innermesh.proxy.plan import EndpointState, PickContext
from innermesh.proxy.runtime.limits import HIGH_WATER, LOW_WATER

if TYPE_CHECKING:
    from innermesh.proxy.runtime.context import Context, ListenerHandle

log = logging.getLogger(__name__)


class Tunnel:
    """Two spliced transports, side 0 and side 1. Protocols in tunnel mode call ``data``, ``eof``,
    ``paused``, ``resumed`` and ``lost`` with their own side."""

    __slots__ = ("_eof", "closed", "transports")

    def __init__(self, side0: asyncio.Transport, side1: asyncio.Transport) -> None:
        self.transports = (side0, side1)
        self._eof = [False, False]  # side i sent EOF (passed on to the other)
        self.closed = False
        for t in self.transports:
            t.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data(self, side: int, data: bytes) -> None:
        if not self.closed:
            self.transports[1 - side].write(data)

    def eof(self, side: int) -> bool:
        """Side ``side`` will send no more. Returns True to keep its transport open for writing."""
        self._eof[side] = True
        other = self.transports[1 - side]
        if self._eof[0] and self._eof[1]:
            self.close()
            return False
        if other.can_write_eof() and not other.is_closing():
            other.write_eof()
            return True
        self.close()
        return False

    def paused(self, side: int) -> None:
        """Side ``side`` cannot take more: stop reading the other."""
        other = self.transports[1 - side]
        if not other.is_closing():
            other.pause_reading()

    def resumed(self, side: int) -> None:
        other = self.transports[1 - side]
        if not other.is_closing():
            other.resume_reading()

    def lost(self, side: int) -> None:
        """Side ``side`` is gone: close the other once what it has buffered is written."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.transports:
            t.close()


class TunnelEnd(asyncio.Protocol):
    """A protocol that only forwards to its tunnel (the upstream end of TCP and CONNECT tunnels).

    What the upstream sends before the tunnel is attached (a server-first protocol's greeting can
    arrive before ``create_connection`` has returned to its caller) is held, with reading paused,
    and passed on by ``attach``; so is an early EOF or close.
    """

    __slots__ = ("_early", "_eof", "_lost", "side", "transport", "tunnel")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tunnel: Tunnel | None = None
        self.side = 1
        self._early: list[bytes] = []
        self._eof = False
        self._lost = False

    def attach(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        for data in self._early:
            tunnel.data(self.side, data)
        self._early.clear()
        if self._lost:
            tunnel.lost(self.side)
        elif self._eof:
            tunnel.eof(self.side)
        elif self.transport is not None:
            self.transport.resume_reading()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.data(self.side, data)
            return
        self._early.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            return self.tunnel.eof(self.side)
        self._eof = True
        return True

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.paused(self.side)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resumed(self.side)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel is not None:
            self.tunnel.lost(self.side)
        else:
            self._lost = True


async def connect_endpoint(
    loop: asyncio.AbstractEventLoop, endpoint: EndpointState, connect_timeout: float
) -> tuple[asyncio.Transport, TunnelEnd]:
    """A raw TCP connection to ``endpoint`` whose protocol forwards to a tunnel set later."""
    async with asyncio.timeout(connect_timeout):
        transport, end = await loop.create_connection(TunnelEnd, endpoint.host, endpoint.port)
    return transport, end


class TcpDownstream(asyncio.Protocol):
    """A TCP listener's connection: connect to an endpoint of the listener's cluster, then splice.

    Connect failures move on to another endpoint (up to three tries, as Envoy's tcp_proxy
    ``max_connect_attempts`` allows); when none can be reached the client connection is closed.
    """

    __slots__ = (
        "_cluster",
        "_ctx",
        "_early",
        "_early_eof",
        "_endpoint",
        "_listener",
        "_task",
        "transport",
        "tunnel",
    )

    def __init__(self, ctx: Context, listener: ListenerHandle, cluster: str | None = None) -> None:
        self._ctx = ctx
        self._listener = listener
        self._cluster = cluster
        self.transport: asyncio.Transport | None = None
        self.tunnel: Tunnel | None = None
        self._early: list[bytes] = []
        self._early_eof = False
        self._endpoint: EndpointState | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._listener.opened(self)
        self._task = self._ctx.loop.create_task(self._connect())

    def start_with(self, transport: asyncio.Transport, early: bytes) -> None:
        """Take over a connection whose first bytes were read by protocol detection."""
        self.transport = transport
        if early:
            self._early.append(early)
        self._listener.opened(self)
        self._task = self._ctx.loop.create_task(self._connect())

    async def _connect(self) -> None:
        plan = self._listener.plan_now()
        name = self._cluster or self._listener.spec.tcp_cluster
        cluster = plan.clusters.get(name) if name else None
        stats = self._ctx.stats.cluster(name) if name else None
        tried: set[tuple[str, int]] = set()
        for _ in range(3):
            endpoint = cluster.pick(PickContext(exclude=frozenset(tried))) if cluster else None
            if endpoint is None:
                if stats is not None and not tried:
                    stats.no_healthy_upstream += 1
                break
            tried.add((endpoint.host, endpoint.port))
            try:
                assert cluster is not None
                transport, end = await connect_endpoint(
                    self._ctx.loop, endpoint, cluster.limits.connect_timeout
                )
            except (OSError, TimeoutError) as e:
                if stats is not None:
                    stats.cx_connect_fail += 1
                log.debug("tcp %s: connect to %s:%d failed: %s", name, endpoint.host, endpoint.port, e)
                continue
            if self.transport is None or self.transport.is_closing():
                transport.close()
                return
            self._endpoint = endpoint
            endpoint.active += 1
            if stats is not None:
                stats.cx_total += 1
            tunnel = self.tunnel = Tunnel(self.transport, transport)
            end.attach(tunnel)
            for chunk in self._early:
                tunnel.data(0, chunk)
            self._early.clear()
            if self._early_eof:
                tunnel.eof(0)
            else:
                self.transport.resume_reading()
            return
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.data(0, data)
            return
        self._early.append(data)
        if sum(map(len, self._early)) > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            return self.tunnel.eof(0)
        # The client is done sending before the upstream is connected: pass the EOF on later.
        self._early_eof = True
        return True

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.paused(0)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resumed(0)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.closed(self)
        if self.tunnel is not None:
            self.tunnel.lost(0)
        elif self._task is not None:
            self._task.cancel()
        if self._endpoint is not None:
            self._endpoint.active -= 1
            self._endpoint = None

    def drain(self) -> None:
        """The listener is going away: a tunnel has no request boundary, so it keeps running until
        the drain deadline closes it."""

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
