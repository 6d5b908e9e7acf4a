"""What every connection of one proxy process shares: the loop, the random source, the upstream
pools, the counters, and the listener it was accepted on.

``Context`` is created once by ``ProxyRuntime``; ``ListenerHandle`` once per bound listener. A
connection reads ``ListenerHandle.plan_now()`` at the start of each request, so a new plan applies
from the next request on while the request in flight keeps the plan it started with.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import TYPE_CHECKING, Protocol

from innermesh.proxy.plan import ListenerPlan, Plan
from innermesh.proxy.stats import ListenerStats, ProxyStats

if TYPE_CHECKING:
    from innermesh.proxy.runtime.upstream import Pools


class Connection(Protocol):
    """A downstream connection, as its listener tracks it for draining."""

    def drain(self) -> None:
        """Finish the request in flight, then close (close now when idle)."""

    def abort(self) -> None: ...


class Context:
    __slots__ = ("loop", "pools", "rng", "stats")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stats: ProxyStats, pools: Pools, rng: random.Random
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.pools = pools
        self.rng = rng

    def request_id(self) -> bytes:
        """A UUID4-shaped id from the process's generator: no syscall per request (os.urandom is one)."""
        h = b"%032x" % self.rng.getrandbits(128)
        return b"%s-%s-4%s-%s-%s" % (h[:8], h[8:12], h[13:16], h[16:20], h[20:])


def process_rng() -> random.Random:
    """One generator per process, seeded once from the OS (balancing, jitter, faults, request ids)."""
    return random.Random(os.urandom(16))


class ListenerHandle:
    """One bound listener: its current spec, its connections (for draining) and counters."""

    __slots__ = ("_emptied", "_plan", "connections", "draining", "name", "server", "spec", "stats")

    def __init__(self, spec: ListenerPlan, plan: Plan, stats: ListenerStats) -> None:
        self.name = spec.name
        self.spec = spec
        self._plan = plan
        self.stats = stats
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None
        self.draining = False
        self._emptied = asyncio.Event()

    def plan_now(self) -> Plan:
        return self._plan

    def swap(self, spec: ListenerPlan, plan: Plan) -> None:
        self.spec = spec
        self._plan = plan

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.stats.cx_total += 1
        self.stats.cx_active += 1
        if self.draining:
            conn.drain()

    def closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.stats.cx_active -= 1
            if not self.connections:
                self._emptied.set()

    async def drained(self) -> None:
        """Wait until the listener has no connection left (the caller bounds the wait)."""
        if self.connections:
            self._emptied.clear()
            await self._emptied.wait()
