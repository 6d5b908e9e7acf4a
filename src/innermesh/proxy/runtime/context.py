"""What every connection of one proxy process shares: the loop, the random source, the upstream
pools, the counters, and the listener it was accepted on.

``Context`` is created once by ``ProxyRuntime``; ``ListenerHandle`` once per bound listener. A
connection reads ``ListenerHandle.plan_now()`` at the start of each request, so a new plan applies
from the next request on while the request in flight keeps the plan it started with.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from typing import TYPE_CHECKING, Protocol

from innermesh.proxy.plan import ListenerPlan, Plan, RouteTable
from innermesh.proxy.stats import ListenerStats, ProxyStats

if TYPE_CHECKING:
    from innermesh.proxy.runtime.upstream import Pools


class Connection(Protocol):
    """A downstream connection, as its listener tracks it for draining."""

    def drain(self) -> None:
        """Finish the request in flight, then close (close now when idle)."""

    def abort(self) -> None: ...


class Context:
    __slots__ = ("_id_prefix", "_ids", "loop", "pools", "rng", "stats")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stats: ProxyStats, pools: Pools, rng: random.Random
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.pools = pools
        self.rng = rng
        # Request ids: UUID4-shaped, a random prefix per process and a counter from a random start in
        # the last 48 bits. Unique within the process for 2^48 requests and across processes as the
        # prefixes are; no syscall (os.urandom is one) and no big-number formatting per request.
        r = rng.getrandbits(76)
        self._id_prefix = b"%08x-%04x-4%03x-%04x-" % (
            r >> 44,
            (r >> 28) & 0xFFFF,
            (r >> 16) & 0xFFF,
            r & 0xFFFF,
        )
        self._ids = itertools.count(rng.getrandbits(48))

    def request_id(self) -> bytes:
        """A new request id (see ``__init__``)."""
        return b"%s%012x" % (self._id_prefix, next(self._ids) & 0xFFFFFFFFFFFF)


def process_rng() -> random.Random:
    """One generator per process, seeded once from the OS (balancing, jitter, faults, request ids)."""
    return random.Random(os.urandom(16))


class ListenerHandle:
    """One bound listener: its current spec and plan (with the route table the spec names, found once
    per plan rather than per request), its connections (for draining) and counters."""

    __slots__ = (
        "_emptied",
        "connections",
        "draining",
        "name",
        "plan",
        "route_table",
        "server",
        "spec",
        "stats",
    )

    def __init__(self, spec: ListenerPlan, plan: Plan, stats: ListenerStats) -> None:
        self.name = spec.name
        self.spec = spec
        self.plan = plan
        self.route_table = _route_table(spec, plan)
        self.stats = stats
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None
        self.draining = False
        self._emptied = asyncio.Event()

    def plan_now(self) -> Plan:
        return self.plan

    def swap(self, spec: ListenerPlan, plan: Plan) -> None:
        self.spec = spec
        self.plan = plan
        self.route_table = _route_table(spec, plan)

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


def _route_table(spec: ListenerPlan, plan: Plan) -> RouteTable | None:
    return plan.route_tables.get(spec.route_table) if spec.route_table else None
