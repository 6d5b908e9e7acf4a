"""Load balancing: the ``Cluster`` implementation the plan holds, its pickers, and request hashes.

A ``BalancedCluster`` splits its endpoints into priority levels (the translator puts the proxy's
zone at priority 0 and the other zones at 1). Each level's healthy endpoints get one picker for the
cluster's policy, built once when the plan is built, so ``pick`` is an index, a bisect or two
random draws:

- round robin: Envoy's weighted round robin (earliest deadline first, endpoint i due every
  1/weight_i), unrolled at build time into one cycle of sum(weights) picks; ``pick`` walks the
  cycle. Over any whole cycle each endpoint gets exactly its weight. Cycles longer than
  ``MAX_CYCLE`` scale the weights down (then the proportions are approximate). A new picker starts
  at a random place in the cycle, as Envoy's does, so that proxies do not march in step.
- least request: power of N choices (N = ``choice_count``, 2 by default): draw N endpoints with
  probability proportional to weight and take the one with the fewest ``active`` requests per unit
  of weight (ties go to the first draw). Envoy switches to a dynamic-weight scheduler when weights
  differ; sampling by weight keeps one algorithm and the same preference for the less loaded.
- random: one draw proportional to weight.
- ring hash: a ketama ring: each endpoint owns 128 points per unit of weight (relative to the
  lightest), more when needed to reach ``ring_min`` (1024) points, fewer when the ring would exceed
  ``ring_max``. An endpoint's points are the 64-bit words of SHAKE-256("host:port"), computed at
  build time (``ring_points``); ``pick`` is one bisect. Envoy instead sizes the ring to about
  ``ring_min`` whatever the number of endpoints, which gives every survivor new points when one
  endpoint leaves; a fixed number per endpoint means that removing one of N (N >= 8) moves only that
  endpoint's keys.
- Maglev: Google's lookup table (table size 65537, a prime) filled with the paper's permutations
  (offset and skip from blake2b of "host:port"), weighted as Envoy does; ``pick`` is one index.

Hash-based policies use the request hash from ``hash_for`` (or a random one when no policy
produced a hash, as Envoy does).

Priorities follow Envoy with its overprovisioning factor (1.4 by default): a level with a fraction
h of healthy endpoints can take min(100%, 1.4 * h) of the load; what it cannot take spills to the
next level. So a fully healthy level 0 takes everything, and traffic moves to level 1 only as level
0 loses endpoints (all of it once level 0 has none). There is no panic mode: when no level has a
healthy endpoint, ``pick`` answers None (the runtime's 503), where Envoy would try unhealthy ones.

``PickContext.exclude`` (endpoints a retry already tried) is honoured when another healthy
endpoint exists: first in the chosen level, then in the other levels in priority order. Such a pick
costs O(endpoints), never O(table): a level whose endpoints were all tried is passed over at once,
and a walk along a ring, Maglev table or round-robin cycle is bounded (``_first_allowed``).

Building pickers is the expensive part of a new plan (a Maglev table is 65,537 slots to fill, a ring
of 500 endpoints 64,000 points to hash and sort), so ``build_cluster`` lends a level the previous
plan's picker when the level's healthy endpoints are the very same objects.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol, cast

from innermesh.proxy.matching import header_value
from innermesh.proxy.plan import (
    ConnectionLimits,
    EndpointState,
    HashPolicy,
    LbPolicy,
    PickContext,
    RequestHead,
    UpstreamProtocol,
)

MAX_CYCLE = 8192  # round-robin cycle length above which weights are scaled down
MAGLEV_TABLE_SIZE = 65537
RING_MIN = 1024
RING_POINTS_PER_UNIT = 128  # ketama's scale: points per endpoint of the lightest weight
RING_MAX = 1 << 16  # Envoy allows 8M; building that in Python would take seconds
OVERPROVISIONING = 140  # percent, Envoy's default

_MASK64 = (1 << 64) - 1


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted per process,
    and every proxy and worker must map a session key to the same endpoint)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _key(e: EndpointState) -> tuple[str, int]:
    return (e.host, e.port)


# --- pickers: one per priority level, over that level's healthy endpoints -------------------------------


class Picker(Protocol):
    def pick(self, hash: int | None) -> EndpointState: ...

    def pick_avoiding(self, hash: int | None, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        """Like ``pick``, but never an excluded endpoint; None when all are excluded."""
        ...


class _WeightedDraw:
    """Draws proportional to weight: uniform when all weights are equal, else a bisect."""

    __slots__ = ("_cumulative", "_endpoints", "_rng", "_total")

    def __init__(self, endpoints: Sequence[EndpointState], rng: random.Random) -> None:
        self._endpoints = tuple(endpoints)
        self._rng = rng
        weights = [e.weight for e in endpoints]
        uniform = len(set(weights)) == 1
        self._cumulative = None if uniform else tuple(accumulate(weights))
        self._total = len(weights) if uniform else sum(weights)

    def draw(self) -> EndpointState:
        r = int(self._rng.random() * self._total)
        if self._cumulative is None:
            return self._endpoints[r]
        return self._endpoints[bisect_right(self._cumulative, r)]

    def draw_avoiding(self, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        allowed = [e for e in self._endpoints if _key(e) not in exclude]
        if not allowed:
            return None
        return _WeightedDraw(allowed, self._rng).draw()


class RoundRobin:
    __slots__ = ("_cursor", "_endpoints", "cycle")

    def __init__(self, endpoints: Sequence[EndpointState], rng: random.Random) -> None:
        self._endpoints = tuple(endpoints)
        self.cycle = round_robin_cycle(endpoints)
        self._cursor = rng.randrange(len(self.cycle))

    def pick(self, hash: int | None) -> EndpointState:
        i = self._cursor
        self._cursor = i + 1 if i + 1 < len(self.cycle) else 0
        return self.cycle[i]

    def pick_avoiding(self, hash: int | None, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        start = self._cursor
        found = _first_allowed(self.cycle, start, exclude, self._endpoints, start)
        if found is not None:
            self._cursor = (start + 1) % len(self.cycle)
        return found


def round_robin_cycle(endpoints: Sequence[EndpointState]) -> tuple[EndpointState, ...]:
    """One cycle of earliest-deadline-first picks: endpoint i is due at k / weight_i (k = 1, 2, ...),
    ties to the earlier endpoint. Over the cycle each endpoint appears exactly weight_i times, spread
    out (weights 5 and 1 give five picks of the first with the second among them, not a block)."""
    weights = [e.weight for e in endpoints]
    if len(set(weights)) == 1:
        return tuple(endpoints)
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    weights = [w // g for w in weights]
    total = sum(weights)
    if total > MAX_CYCLE:
        weights = [max(1, w * MAX_CYCLE // total) for w in weights]
        total = sum(weights)
    # Deadlines k / w as floats: correctly rounded, so equal fractions compare equal and smaller
    # fractions never compare greater.
    heap = [(1 / w, i, 1) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    cycle: list[EndpointState] = []
    for _ in range(total):
        _, i, k = heapq.heappop(heap)
        cycle.append(endpoints[i])
        heapq.heappush(heap, ((k + 1) / weights[i], i, k + 1))
    return tuple(cycle)


class LeastRequest:
    __slots__ = ("_choices", "_draw", "_endpoints", "_single")

    def __init__(self, endpoints: Sequence[EndpointState], rng: random.Random, choice_count: int = 2) -> None:
        self._endpoints = tuple(endpoints)
        self._draw = _WeightedDraw(endpoints, rng)
        self._choices = choice_count
        self._single = endpoints[0] if len(endpoints) == 1 else None

    def pick(self, hash: int | None) -> EndpointState:
        if self._single is not None:
            return self._single
        draw = self._draw.draw
        best = draw()
        for _ in range(self._choices - 1):
            other = draw()
            # fewer active per unit of weight, compared without division (the counters read directly:
            # ``active`` is a property over them)
            if other.requests.value * best.weight < best.requests.value * other.weight:
                best = other
        return best

    def pick_avoiding(self, hash: int | None, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        allowed = [e for e in self._endpoints if _key(e) not in exclude]
        if not allowed:
            return None
        return min(allowed, key=lambda e: e.active / e.weight)


class RandomChoice:
    __slots__ = ("_draw",)

    def __init__(self, endpoints: Sequence[EndpointState], rng: random.Random) -> None:
        self._draw = _WeightedDraw(endpoints, rng)

    def pick(self, hash: int | None) -> EndpointState:
        return self._draw.draw()

    def pick_avoiding(self, hash: int | None, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        return self._draw.draw_avoiding(exclude)


class RingHash:
    """Ketama ring: sorted point hashes and, in parallel, the endpoint owning each point."""

    __slots__ = ("_endpoints", "_owners", "_points", "_rng")

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        rng: random.Random,
        min_size: int = RING_MIN,
        max_size: int = RING_MAX,
    ) -> None:
        self._rng = rng
        self._endpoints = tuple(endpoints)
        lightest = min(e.weight for e in endpoints)
        units = [e.weight / lightest for e in endpoints]
        per_unit = max(RING_POINTS_PER_UNIT, math.ceil(min_size / sum(units)))
        counts = [round(per_unit * u) for u in units]
        total = sum(counts)
        if total > max_size:
            counts = [max(1, c * max_size // total) for c in counts]
        # Sort (point, owner) pairs as single integers, point above the owner's index: one sort of
        # ints is about three times faster than building and sorting tuples.
        shift = max(1, (len(endpoints) - 1).bit_length())
        packed: list[int] = []
        for index, (e, count) in enumerate(zip(endpoints, counts, strict=True)):
            packed.extend((h << shift) | index for h in ring_points(e.host, e.port, count))
        packed.sort()
        mask = (1 << shift) - 1
        self._points = [k >> shift for k in packed]
        self._owners = [endpoints[k & mask] for k in packed]

    def __len__(self) -> int:
        return len(self._points)

    def _index(self, hash: int | None) -> int:
        h = self._rng.getrandbits(64) if hash is None else hash & _MASK64
        i = bisect_left(self._points, h)
        return 0 if i == len(self._points) else i

    def pick(self, hash: int | None) -> EndpointState:
        return self._owners[self._index(hash)]

    def pick_avoiding(self, hash: int | None, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        # Clockwise to the next point owned by an endpoint not yet tried: still consistent.
        start = self._index(hash)
        return _first_allowed(self._owners, start, exclude, self._endpoints, start)


def ring_points(host: str, port: int, count: int) -> tuple[int, ...]:
    """An endpoint's ``count`` ring points: the 64-bit words of SHAKE-256("host:port"). An endpoint
    whose count grows keeps its first points (the output of an XOF extends, it does not change), and
    one digest per endpoint is ~100x cheaper than one per point."""
    data = hashlib.shake_256(f"{host}:{port}".encode()).digest(8 * count)
    return struct.unpack(f"<{count}Q", data)


class Maglev:
    __slots__ = ("_endpoints", "_rng", "table")

    def __init__(
        self, endpoints: Sequence[EndpointState], rng: random.Random, table_size: int = MAGLEV_TABLE_SIZE
    ) -> None:
        self._rng = rng
        self._endpoints = tuple(endpoints)
        self.table = maglev_table(endpoints, table_size)

    def pick(self, hash: int | None) -> EndpointState:
        h = self._rng.getrandbits(64) if hash is None else hash
        return self.table[h % len(self.table)]

    def pick_avoiding(self, hash: int | None, exclude: frozenset[tuple[str, int]]) -> EndpointState | None:
        h = self._rng.getrandbits(64) if hash is None else hash
        return _first_allowed(self.table, h % len(self.table), exclude, self._endpoints, h)


def _first_allowed(
    sequence: Sequence[EndpointState],
    start: int,
    exclude: frozenset[tuple[str, int]],
    endpoints: tuple[EndpointState, ...],
    tiebreak: int,
) -> EndpointState | None:
    """The first endpoint from ``start`` on (wrapping) in ``sequence`` (a cycle, ring or table over
    ``endpoints``) that is not excluded. The walk is bounded by a few times the number of endpoints,
    so that a pick costs O(endpoints) however long the sequence: past the bound (an untried endpoint
    with a sliver of the sequence) the choice among the untried ones is ``tiebreak`` modulo their
    number, still the same for the same request."""
    n = len(sequence)
    for step in range(min(n, 4 * len(endpoints) + 16)):
        e = sequence[(start + step) % n]
        if _key(e) not in exclude:
            return e
    allowed = [e for e in endpoints if _key(e) not in exclude]
    return allowed[tiebreak % len(allowed)] if allowed else None


def maglev_table(endpoints: Sequence[EndpointState], m: int) -> tuple[EndpointState, ...]:
    """Maglev population (Eisenbud et al. 2016, pseudocode 1) with Envoy's weighting: on each
    round an endpoint claims its next free preferred slot only once its weight has accrued enough
    credit, so slots end up in proportion to weight. ``m`` must be prime.

    Filling 65,537 slots is the whole cost (one Python-level claim per slot plus the probes past
    taken slots), so the loops are written for CPython: each endpoint's permutation state in one
    small list, no weight bookkeeping when weights are equal, whole rounds without an end check."""
    n = len(endpoints)
    states: list[list[Any]] = []
    for e in endpoints:
        d = hashlib.blake2b(f"{e.host}:{e.port}".encode(), digest_size=16).digest()
        offset = int.from_bytes(d[:8], "little") % m
        skip = int.from_bytes(d[8:], "little") % (m - 1) + 1
        states.append([offset, skip, e])  # the next candidate slot, the stride, the owner
    owner: list[EndpointState | None] = [None] * m
    weights = [e.weight for e in endpoints]
    if len(set(weights)) == 1:
        rounds, rest = divmod(m, n)
        for r in range(rounds + 1):
            for st in states if r < rounds else states[:rest]:
                c, skip, e = st
                while owner[c] is not None:
                    c += skip
                    if c >= m:
                        c -= m
                owner[c] = e
                c += skip
                st[0] = c - m if c >= m else c
    else:
        top = max(weights)
        credit = [0] * n
        filled = 0
        round_ = 0
        while filled < m:
            round_ += 1
            for i, st in enumerate(states):
                if round_ * weights[i] < credit[i]:
                    continue
                credit[i] += top
                c, skip, e = st
                while owner[c] is not None:
                    c += skip
                    if c >= m:
                        c -= m
                owner[c] = e
                c += skip
                st[0] = c - m if c >= m else c
                filled += 1
                if filled == m:
                    break
    return tuple(cast(list[EndpointState], owner))


# --- the cluster ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Level:
    """One priority level: its healthy endpoints and their picker."""

    priority: int
    healthy: tuple[EndpointState, ...]
    picker: Picker
    keys: frozenset[tuple[str, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = frozenset(_key(e) for e in self.healthy)


def priority_loads(levels: Sequence[tuple[int, int]], overprovisioning: int = OVERPROVISIONING) -> list[int]:
    """Envoy's per-priority load in percent, from (healthy, total) endpoint counts per level.

    All zeros when nothing is healthy."""
    health = [min(100, overprovisioning * h // t) if t else 0 for h, t in levels]
    available = min(100, sum(health))
    if available == 0:
        return [0] * len(levels)
    loads: list[int] = []
    remaining = 100
    for h in health:
        load = min(remaining, h * 100 // available)
        loads.append(load)
        remaining -= load
    if remaining:
        # rounding: the rest goes to the first level that has health
        first = next(i for i, h in enumerate(health) if h > 0)
        loads[first] += remaining
    return loads


@dataclass(frozen=True, slots=True)
class LbSettings:
    """The policy and its knobs, from the Envoy Cluster."""

    policy: LbPolicy = "round_robin"
    choice_count: int = 2
    ring_min: int = RING_MIN
    ring_max: int = RING_MAX
    maglev_size: int = MAGLEV_TABLE_SIZE
    overprovisioning: int = OVERPROVISIONING


@dataclass(eq=False)
class BalancedCluster:
    """The plan's ``Cluster``: endpoints in priority levels, one picker per level.

    ``signature`` is everything the pickers were built from; the compiler reuses a previous
    cluster whose signature is unchanged, so an unrelated configuration change keeps rings,
    Maglev tables and round-robin positions as they were.
    """

    name: str
    protocol: UpstreamProtocol
    lb_policy: LbPolicy
    limits: ConnectionLimits
    endpoints: tuple[EndpointState, ...]
    levels: tuple[Level, ...]
    loads: tuple[int, ...]  # cumulative percent per level, last = 100 (or empty: nothing healthy)
    rng: random.Random
    signature: object = None
    settings: LbSettings = field(default_factory=LbSettings)
    _only: Level | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._only = self.levels[0] if len(self.levels) == 1 and self.loads else None

    def pick(self, ctx: PickContext) -> EndpointState | None:
        level = self._only
        if level is None:
            if not self.loads:
                return None
            # Hash-based policies choose the level from the hash too, so a session stays put.
            r = ctx.hash % 100 if ctx.hash is not None else int(self.rng.random() * 100)
            level = self.levels[bisect_right(self.loads, r)]
        endpoint = level.picker.pick(ctx.hash)
        if ctx.exclude and _key(endpoint) in ctx.exclude:
            return self._pick_avoiding(level, ctx.hash, ctx.exclude) or endpoint
        return endpoint

    def _pick_avoiding(
        self, chosen: Level, hash: int | None, exclude: frozenset[tuple[str, int]]
    ) -> EndpointState | None:
        # A level whose every endpoint was tried is passed over at once (a subset test, O(level)),
        # rather than asking its picker to search a ring or table that holds nothing else.
        for level in (chosen, *(other for other in self.levels if other is not chosen)):
            if not level.keys <= exclude:
                found = level.picker.pick_avoiding(hash, exclude)
                if found is not None:
                    return found
        return None


def make_picker(lb: LbSettings, endpoints: Sequence[EndpointState], rng: random.Random) -> Picker:
    if lb.policy == "round_robin":
        return RoundRobin(endpoints, rng)
    if lb.policy == "least_request":
        return LeastRequest(endpoints, rng, lb.choice_count)
    if lb.policy == "random":
        return RandomChoice(endpoints, rng)
    if lb.policy == "ring_hash":
        return RingHash(endpoints, rng, lb.ring_min, lb.ring_max)
    return Maglev(endpoints, rng, lb.maglev_size)


def _same_objects(a: tuple[EndpointState, ...], b: tuple[EndpointState, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def build_cluster(
    name: str,
    protocol: UpstreamProtocol,
    lb: LbSettings,
    limits: ConnectionLimits,
    endpoints: tuple[EndpointState, ...],
    rng: random.Random,
    signature: object = None,
    previous: BalancedCluster | None = None,
) -> BalancedCluster:
    """Group ``endpoints`` by priority and build each level's picker.

    A level of ``previous`` (built with the same settings) whose healthy endpoints are the very same
    objects, in the same order, lends its picker: nothing it was built from changed, and building a
    ring or a Maglev table is the expensive part of a new plan. So an endpoint going down in one
    zone rebuilds that zone's picker only."""
    reusable: dict[int, Level] = {}
    if previous is not None and previous.settings == lb:
        reusable = {level.priority: level for level in previous.levels}
    by_priority: dict[int, list[EndpointState]] = {}
    for e in endpoints:
        by_priority.setdefault(e.priority, []).append(e)
    levels: list[Level] = []
    counts: list[tuple[int, int]] = []
    for priority in sorted(by_priority):
        members = by_priority[priority]
        healthy = tuple(e for e in members if e.healthy)
        if healthy:
            old = reusable.get(priority)
            if old is not None and _same_objects(old.healthy, healthy):
                picker = old.picker
            else:
                picker = make_picker(lb, healthy, rng)
            levels.append(Level(priority, healthy, picker))
        counts.append((len(healthy), len(members)))
    per_level = [
        load for load, (h, _) in zip(priority_loads(counts, lb.overprovisioning), counts, strict=True) if h
    ]
    loads = tuple(accumulate(per_level)) if per_level and sum(per_level) else ()
    return BalancedCluster(
        name, protocol, lb.policy, limits, endpoints, tuple(levels), loads, rng, signature, lb
    )


# --- request hashes ------------------------------------------------------------------------------------


def hash_for(policies: tuple[HashPolicy, ...], head: RequestHead) -> int | None:
    """The request's hash for ring hash and Maglev, Envoy's way: each policy that finds its input
    contributes (the running hash rotated left by one, xor the new one, so that two identical
    policies do not cancel); once a hash exists, a terminal policy ends the walk. None when no
    policy found its input (the balancer then picks at random)."""
    return _combine(policies, head, None)


def generated_cookie(
    policies: tuple[HashPolicy, ...], head: RequestHead, rng: random.Random
) -> tuple[bytes, int] | None:
    """For a cookie policy with a TTL whose cookie the request lacks: the ``Set-Cookie`` value the
    runtime adds to the response, and the request hash to use now (computed as if the request had
    carried the new cookie, so the next request, which will, lands on the same endpoint). None when
    no cookie is to be set. Envoy derives the value from the client address; a random value
    spreads clients behind one NAT over the endpoints too."""
    for policy in policies:
        if policy.kind != "cookie" or policy.cookie_ttl is None or _cookie(head, policy.name) is not None:
            continue
        value = b"%016x" % rng.getrandbits(64)
        cookie = [policy.name, b"=", value, b"; Path=", policy.cookie_path]
        if policy.cookie_ttl > 0:
            cookie.append(b"; Max-Age=%d" % int(policy.cookie_ttl))
        cookie.append(b"; HttpOnly")
        h = _combine(policies, head, (policy, value))
        assert h is not None  # the generated value is an input
        return b"".join(cookie), h
    return None


def _combine(
    policies: tuple[HashPolicy, ...], head: RequestHead, generated: tuple[HashPolicy, bytes] | None
) -> int | None:
    result: int | None = None
    for policy in policies:
        if generated is not None and policy is generated[0]:
            data: bytes | None = generated[1]
        elif policy.kind == "header":
            data = header_value(head, policy.name)
        elif policy.kind == "cookie":
            data = _cookie(head, policy.name)
        else:
            data = head.source_ip.encode() if head.source_ip else None
        if data is not None:
            h = stable_hash(data)
            result = h if result is None else (((result << 1) | (result >> 63)) & _MASK64) ^ h
        if policy.terminal and result is not None:
            break
    return result


def _cookie(head: RequestHead, name: bytes) -> bytes | None:
    """The value of cookie ``name`` (surrounding quotes removed), from any Cookie header."""
    for k, v in head.headers:
        if k != b"cookie":
            continue
        for part in v.split(b";"):
            key, eq, value = part.strip().partition(b"=")
            if eq and key == name:
                return value[1:-1] if len(value) >= 2 and value[:1] == value[-1:] == b'"' else value
    return None
