"""``ProxyRuntime``: the sidecar's listeners, bound and unbound as plans change.

``apply(plan)`` makes the bound listeners match the plan: a listener that is new (or whose address
changed) is bound first, with SO_REUSEADDR; only when every bind succeeded does the plan take effect,
so a plan that cannot be served is refused whole (``OSError`` naming the listener) and the previous
one keeps running. Listeners the plan no longer has stop accepting and drain: each connection
finishes the request in flight and closes (idle ones close at once); what is left after
``drain_timeout`` is closed. Listeners that stay get the new plan with one assignment; a connection
reads it at the start of each request, so the request in flight keeps the plan it started with. A
listener's protocol (http, tcp, detect) is read when a connection is accepted, so changing it needs
no rebind.

``stop(drain_timeout)`` drains every listener the same way, then closes the upstream pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from innermesh.proxy.plan import ListenerPlan, Plan
from innermesh.proxy.runtime.context import Context, ListenerHandle, process_rng
from innermesh.proxy.runtime.detect import DetectProtocol
from innermesh.proxy.runtime.tcp import TcpDownstream
from innermesh.proxy.runtime.upstream import Pools
from innermesh.proxy.stats import ProxyStats

log = logging.getLogger(__name__)

BACKLOG = 1024  # accept queue per listener (asyncio's default of 100 drops bursts of connects)


class ProxyRuntime:
    """The data plane of one proxy process: listeners, connections, upstream pools."""

    def __init__(
        self, *, stats: ProxyStats | None = None, rng: random.Random | None = None, drain_timeout: float = 5.0
    ) -> None:
        self.stats = stats if stats is not None else ProxyStats()
        self._rng = rng if rng is not None else process_rng()
        self._drain_timeout = drain_timeout  # for listeners a new plan removes
        self._ctx: Context | None = None
        self._plan: Plan | None = None
        self._listeners: dict[str, ListenerHandle] = {}
        self._retiring: set[ListenerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def plan(self) -> Plan | None:
        return self._plan

    def port(self, name: str) -> int:
        """The port listener ``name`` is bound to (useful when the plan asked for port 0)."""
        handle = self._listeners[name]
        assert handle.server is not None
        port: int = handle.server.sockets[0].getsockname()[1]
        return port

    def _context(self) -> Context:
        if self._ctx is None:
            loop = asyncio.get_running_loop()
            self._ctx = Context(loop, self.stats, Pools(loop, self.stats), self._rng)
        return self._ctx

    async def apply(self, plan: Plan) -> None:
        """Serve ``plan``: bind, swap, drain (see the module docstring). Raises OSError when a
        listener cannot be bound; nothing changes then."""
        async with self._lock:
            ctx = self._context()
            bound: list[ListenerHandle] = []
            try:
                for name, spec in plan.listeners.items():
                    current = self._listeners.get(name)
                    if current is None or (current.spec.host, current.spec.port) != (spec.host, spec.port):
                        bound.append(await self._bind(ctx, spec, plan))
            except OSError:
                for handle in bound:
                    assert handle.server is not None
                    handle.server.close()
                raise
            rebound = {h.name for h in bound}
            for name, handle in list(self._listeners.items()):
                kept = plan.listeners.get(name)
                if kept is None or name in rebound:
                    del self._listeners[name]
                    self._retire(handle, self._drain_timeout)
                else:
                    handle.swap(kept, plan)
            for handle in bound:
                self._listeners[handle.name] = handle
            self._plan = plan
            ctx.pools.retain(plan)

    async def _bind(self, ctx: Context, spec: ListenerPlan, plan: Plan) -> ListenerHandle:
        handle = ListenerHandle(spec, plan, self.stats.listener(spec.name))

        def protocol() -> TcpDownstream | DetectProtocol:
            kind = handle.spec.protocol
            if kind == "http":
                # HTTP/1.1, or HTTP/2 with prior knowledge, by the first bytes (detect.py). With TLS,
                # ALPN will choose instead: Http1Server or H2Server from the handshake's result.
                return DetectProtocol(ctx, handle, http_only=True)
            if kind == "tcp":
                return TcpDownstream(ctx, handle)
            return DetectProtocol(ctx, handle)

        try:
            handle.server = await ctx.loop.create_server(
                protocol, spec.host, spec.port, reuse_address=True, backlog=BACKLOG
            )
        except OSError as e:
            raise OSError(
                e.errno, f'listener "{spec.name}": cannot bind {spec.host}:{spec.port}: {e.strerror or e}'
            ) from e
        log.info("listener %s bound to %s:%d (%s)", spec.name, spec.host, spec.port, spec.protocol)
        return handle

    def _retire(self, handle: ListenerHandle, drain_timeout: float) -> None:
        """Stop accepting on ``handle`` and drain its connections in the background."""
        if handle.server is not None:
            handle.server.close()
        handle.draining = True
        self._retiring.add(handle)
        for conn in list(handle.connections):
            conn.drain()
        task = asyncio.get_running_loop().create_task(self._drained(handle, drain_timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drained(self, handle: ListenerHandle, drain_timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await handle.drained()
        for conn in list(handle.connections):
            conn.abort()
        self._retiring.discard(handle)
        log.info("listener %s closed", handle.name)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting everywhere, let requests in flight finish (up to ``drain_timeout``), then
        close everything."""
        async with self._lock:
            for handle in list(self._listeners.values()):
                self._retire(handle, drain_timeout)
            self._listeners.clear()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._ctx is not None:
                await self._ctx.pools.close()
            # Give the transports closed above one loop turn to report connection_lost.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
