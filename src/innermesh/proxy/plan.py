"""The sidecar's compiled configuration (the *plan*): what the runtime consults on every request.

A plan is built from the xDS resources the proxy holds (``proxy/compile.py``) and is immutable: a new
one is swapped in with one assignment, and a request in flight keeps the plan it started with. It
decides everything that can be decided at configuration time, so the hot path is lookups, not
interpretation of protobufs. Nothing here does I/O; the runtime (``proxy/runtime/``) owns sockets.

The runtime's whole view of routing is four calls:

    vhost = plan.route_tables[listener.route_table].lookup(authority)    # None -> 404 no_route
    route = vhost.select(head)                                             # None -> 404 no_route
    backend = route.action.pick_backend(rng) if isinstance(route.action, Forward)
    cluster = plan.clusters.get(backend.cluster)   # None -> route.action.missing_cluster_status
    endpoint = cluster.pick(PickContext(...))      # None -> 503 no_healthy_upstream

and two more for accounting: ``endpoint.active += 1`` when a request starts on it and ``-= 1`` when it
ends (least-request reads these counts; every plan's ``EndpointState`` for one address of one cluster
shares one counter, so a request begun on an old plan ends on the same count). ``proxy/balance.py``
holds the ``Cluster`` implementation and the request-hash helpers (``hash_for``,
``generated_cookie``); ``proxy/matching.py`` the ``RouteMatch`` implementations.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Literal, Protocol

from innermesh.proxy.matching import Template, global_replace

Headers = list[tuple[bytes, bytes]]  # names lower-case, values as received, in order

# The reason header the proxy puts on every answer it makes itself (404, 500, 503, 504, ...).
REASON_HEADER = b"x-innermesh-reason"


@dataclass(slots=True)
class RequestHead:
    """What routing reads from a request. Built by the protocol layer (HTTP/1.1 or HTTP/2).

    ``path`` is the request target's path without the query (as received, percent-encoded; empty for
    CONNECT, whose target is the authority), ``query`` the raw query string without ``?``,
    ``authority`` the Host or ``:authority`` lower-cased.
    ``headers`` excludes HTTP/2 pseudo-headers and Host.
    """

    method: bytes
    path: bytes
    query: bytes
    authority: bytes
    headers: Headers
    scheme: bytes = b"http"
    source_ip: str = ""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


# --- header rewriting --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """Gateway API header modifier semantics: ``set`` replaces (or adds), ``add`` appends, ``remove``
    deletes every value. Applied in the order remove, set, add, as Envoy does.

    Envoy's two other append actions are here too: ``add_if_absent`` (ADD_IF_ABSENT) and
    ``set_if_exists`` (OVERWRITE_IF_EXISTS); whether a header exists is judged after the removals.
    Names are lower-case; at most one ``set`` entry per name (the compiler keeps the last).
    """

    set: tuple[tuple[bytes, bytes], ...] = ()
    add: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()
    add_if_absent: tuple[tuple[bytes, bytes], ...] = ()
    set_if_exists: tuple[tuple[bytes, bytes], ...] = ()
    _drop: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_drop", self.remove | {k for k, _ in self.set})

    def apply(self, headers: Headers) -> Headers:
        """A new header list; ``headers`` is not changed."""
        drop = self._drop
        present: set[bytes] | None = None
        if self.add_if_absent or self.set_if_exists:
            present = {k for k, _ in headers if k not in self.remove}
            overwritten = {k for k, _ in self.set_if_exists if k in present}
            if overwritten:
                drop = drop | overwritten
        out = [h for h in headers if h[0] not in drop] if drop else list(headers)
        out.extend(self.set)
        if present is not None:
            out.extend(h for h in self.set_if_exists if h[0] in present)
        out.extend(self.add)
        if present is not None:
            out.extend(h for h in self.add_if_absent if h[0] not in present)
        return out


# --- matching ----------------------------------------------------------------------------------------


class RouteMatch(Protocol):
    def matches(self, head: RequestHead) -> bool: ...


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection for one route: delay then abort, each applied to a share of requests."""

    delay: float | None = None  # seconds
    delay_per_million: int = 0
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    abort_per_million: int = 0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # retries after the first try
    on_status: frozenset[int] = frozenset()
    on_connect_failure: bool = True
    on_reset: bool = False
    backoff_base: float = 0.025  # seconds; Envoy's default
    per_try_timeout: float | None = None
    backoff_max: float | None = None  # seconds; None = 10x base, as Envoy
    on_refused_stream: bool = False  # HTTP/2 REFUSED_STREAM (the request was not processed)


@dataclass(frozen=True, slots=True)
class Mirror:
    cluster: str
    per_million: int = 1_000_000


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One source of the hash for ring-hash and Maglev: a header, a cookie, or the source address."""

    kind: Literal["header", "cookie", "source_ip"]
    name: bytes = b""
    cookie_ttl: float | None = None  # a cookie policy with a TTL makes the proxy set the cookie
    cookie_path: bytes = b"/"
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Backend:
    cluster: str
    weight: int
    request_headers: HeaderMutation | None = None
    response_headers: HeaderMutation | None = None


@dataclass(frozen=True, slots=True)
class PathRewrite:
    """URLRewrite and redirect paths: replace the whole path, the matched prefix, or a regex.

    ``prefix`` follows Gateway API's ReplacePrefixMatch, which is slash-aware: with
    ``matched_prefix`` "/foo", ``value`` "/" turns "/foo/bar" into "/bar" and "/foo" into "/", and
    "/xyz/" turns "/foo/bar" into "/xyz/bar" (a trailing "/" on either side is not doubled). It is
    Envoy's plain ``prefix_rewrite`` whenever neither string ends in "/". ``regex`` is Envoy's
    ``regex_rewrite`` (RE2 GlobalReplace of ``pattern`` by ``template``). Paths exclude the query.
    """

    kind: Literal["full", "prefix", "regex"]
    value: bytes = b""
    matched_prefix: bytes = b""
    pattern: re.Pattern[bytes] | None = None
    template: Template = ()

    def apply(self, path: bytes) -> bytes:
        if self.kind == "full":
            return self.value
        if self.kind == "regex":
            assert self.pattern is not None
            return global_replace(self.pattern, self.template, path)
        # The route matched, so the path starts with the prefix (possibly in another case); what
        # follows it is "" or begins with "/".
        rest = path[len(self.matched_prefix.rstrip(b"/")) :]
        return self.value.rstrip(b"/") + rest or b"/"


@dataclass(frozen=True, slots=True)
class Forward:
    backends: tuple[Backend, ...]
    missing_cluster_status: int = 503  # 500 when the translator says so (Gateway API unresolved refs)
    timeout: float | None = None  # the whole request, retries included; None = no limit
    retry: RetryPolicy | None = None
    mirrors: tuple[Mirror, ...] = ()
    host_rewrite: bytes | None = None
    path_rewrite: PathRewrite | None = None
    hash_policies: tuple[HashPolicy, ...] = ()
    tunnel: bool = False  # a CONNECT route: the request becomes an opaque TCP tunnel

    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.backends or sum(b.weight for b in self.backends) <= 0:
            raise ValueError("a forward needs backends with a total weight above 0")
        object.__setattr__(self, "_cumulative", tuple(accumulate(b.weight for b in self.backends)))

    def pick_backend(self, rng: random.Random) -> Backend:
        """A backend with probability weight / total (Envoy's weighted_clusters)."""
        backends = self.backends
        if len(backends) == 1:
            return backends[0]
        cumulative = self._cumulative
        return backends[bisect_right(cumulative, int(rng.random() * cumulative[-1]))]


DEFAULT_PORTS = {b"http": 80, b"https": 443}


def split_authority(authority: bytes) -> tuple[bytes, int | None]:
    """``host[:port]`` (or ``[v6]:port``) into the host and the port, if any."""
    if authority.startswith(b"["):
        close = authority.find(b"]")
        host, rest = authority[: close + 1], authority[close + 1 :]
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        host, _, port = authority.rpartition(b":") if b":" in authority else (authority, b"", b"")
    return host, int(port) if port.isdigit() else None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Gateway API RequestRedirect. Unset parts come from the request; an unset port is the
    redirect scheme's well-known port when the scheme changes, else the port the request was sent
    to; the Location omits the port when it is the scheme's default. The query is kept unless
    ``strip_query``, or unless the new path carries its own (Envoy's ``path_redirect`` with ``?``).
    """

    status: int
    scheme: bytes | None = None
    host: bytes | None = None
    port: int | None = None
    path: PathRewrite | None = None
    strip_query: bool = False

    def location(self, head: RequestHead) -> bytes:
        scheme = self.scheme or head.scheme
        request_host, request_port = split_authority(head.authority)
        port: int | None
        if self.port is not None:
            port = self.port
        elif self.scheme is not None and self.scheme in DEFAULT_PORTS:
            port = DEFAULT_PORTS[self.scheme]
        else:
            port = request_port if request_port is not None else DEFAULT_PORTS.get(head.scheme)
        path = self.path.apply(head.path) if self.path is not None else head.path
        if b"?" in path:
            path, _, query = path.partition(b"?")
        else:
            query = b"" if self.strip_query else head.query
        out = [scheme, b"://", self.host or request_host]
        if port is not None and port != DEFAULT_PORTS.get(scheme):
            out.append(b":%d" % port)
        out.append(path)
        if query:
            out += (b"?", query)
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    action: Forward | Redirect | DirectResponse
    request_headers: HeaderMutation | None = None
    response_headers: HeaderMutation | None = None
    fault: Fault | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    digest: bytes = field(default=b"", compare=False, repr=False)  # of the source, to reuse it

    def select(self, head: RequestHead) -> Route | None:
        """The first route whose match holds (routes are already in precedence order)."""
        for route in self.routes:
            if route.match.matches(head):
                return route
        return None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Virtual hosts by domain, as Envoy finds them. Domains are case-insensitive and compared with
    the authority as sent (port included). A wildcard stands for at least one character and may
    only lead (``*.example.com``, ``*-bar.example.com``) or trail (``example.*``); among wildcards
    the longest suffix, then the longest prefix wins. Constructing a table with a domain used twice
    or a misplaced ``*`` raises ValueError naming it."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    _exact: dict[bytes, VirtualHost] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[tuple[int, dict[bytes, VirtualHost]], ...] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[tuple[int, dict[bytes, VirtualHost]], ...] = field(init=False, repr=False, compare=False)
    _default: VirtualHost | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[bytes, VirtualHost] = {}
        suffixes: dict[int, dict[bytes, VirtualHost]] = {}
        prefixes: dict[int, dict[bytes, VirtualHost]] = {}
        default: VirtualHost | None = None
        seen: set[str] = set()
        for i, vhost in enumerate(self.virtual_hosts):
            for j, domain in enumerate(vhost.domains):
                d = domain.lower()
                where = f"virtual_hosts[{i}].domains[{j}]"
                if d in seen:
                    raise ValueError(f'{where}: domain "{domain}" is used by another virtual host')
                seen.add(d)
                raw = d.encode()
                if d == "*":
                    default = vhost
                elif "*" not in d:
                    exact[raw] = vhost
                elif d.startswith("*") and "*" not in d[1:]:
                    suffixes.setdefault(len(raw) - 1, {})[raw[1:]] = vhost
                elif d.endswith("*") and "*" not in d[:-1]:
                    prefixes.setdefault(len(raw) - 1, {})[raw[:-1]] = vhost
                else:
                    raise ValueError(f'{where}: "{domain}": a wildcard may only lead or trail a domain')
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_suffixes", tuple(sorted(suffixes.items(), reverse=True)))
        object.__setattr__(self, "_prefixes", tuple(sorted(prefixes.items(), reverse=True)))
        object.__setattr__(self, "_default", default)

    def lookup(self, authority: bytes) -> VirtualHost | None:
        """Envoy's domain search: exact, then suffix wildcards, then prefix wildcards, then ``*``."""
        found = self._exact.get(authority)
        if found is not None:
            return found
        n = len(authority)
        for length, by_suffix in self._suffixes:
            if length < n:
                found = by_suffix.get(authority[n - length :])
                if found is not None:
                    return found
        for length, by_prefix in self._prefixes:
            if length < n:
                found = by_prefix.get(authority[:length])
                if found is not None:
                    return found
        return self._default


# --- clusters and load balancing -----------------------------------------------------------------------


class ActiveRequests:
    """The requests in flight at one address of one cluster: the only endpoint state that lives
    across plans (the runtime counts, least request reads)."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value


class EndpointState:
    """One upstream address as one plan sees it. Nothing but ``active`` changes once the plan is
    built: a plan whose endpoint has another zone, priority, weight or health gets its own object, so
    that building (and perhaps never installing) a plan leaves the running one as it was. ``active``
    is the live count of requests in flight, in ``requests``, which every plan's object for the
    address shares (``requests.value`` is the same count without the property's cost: about 25 ns
    against 150 ns for an increment and a decrement). The ``active`` argument starts a new count;
    ``requests`` shares an existing one."""

    __slots__ = ("healthy", "host", "port", "priority", "requests", "weight", "zone")

    def __init__(
        self,
        host: str,
        port: int,
        zone: str = "",
        priority: int = 0,
        weight: int = 1,
        healthy: bool = True,
        active: int = 0,
        requests: ActiveRequests | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.zone = zone
        self.priority = priority
        self.weight = weight
        self.healthy = healthy
        self.requests = requests if requests is not None else ActiveRequests(active)

    @property
    def active(self) -> int:
        return self.requests.value

    @active.setter
    def active(self, value: int) -> None:
        self.requests.value = value

    def __repr__(self) -> str:
        return (
            f"EndpointState(host={self.host!r}, port={self.port}, zone={self.zone!r}, "
            f"priority={self.priority}, weight={self.weight}, healthy={self.healthy}, active={self.active})"
        )


@dataclass(frozen=True, slots=True)
class PickContext:
    hash: int | None = None  # from the route's hash policies, for ring hash and Maglev
    exclude: frozenset[tuple[str, int]] = frozenset()  # endpoints already tried by this request


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_requests_per_connection: int | None = None
    idle_timeout: float = 60.0
    connect_timeout: float = 5.0  # seconds; Envoy's default


LbPolicy = Literal["round_robin", "least_request", "ring_hash", "maglev", "random"]


# "downstream": speak to the upstream in the protocol the request came in (Envoy's
# use_downstream_protocol_config; inbound clusters of ports whose protocol is unknown).
UpstreamProtocol = Literal["http1", "http2", "tcp", "downstream"]


class Cluster(Protocol):
    name: str
    protocol: UpstreamProtocol
    lb_policy: LbPolicy
    limits: ConnectionLimits
    endpoints: tuple[EndpointState, ...]

    def pick(self, ctx: PickContext) -> EndpointState | None: ...


# --- listeners and the whole plan ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    name: str
    host: str
    port: int
    direction: Literal["inbound", "outbound"]
    protocol: Literal["http", "tcp", "detect"]
    route_table: str | None = None  # http, detect
    tcp_cluster: str | None = None  # tcp, detect
    detect_timeout: float = 0.1  # seconds to wait for the first bytes before treating it as TCP


@dataclass(frozen=True, slots=True)
class Plan:
    version: str
    listeners: Mapping[str, ListenerPlan] = field(default_factory=dict)
    route_tables: Mapping[str, RouteTable] = field(default_factory=dict)
    clusters: Mapping[str, Cluster] = field(default_factory=dict)
