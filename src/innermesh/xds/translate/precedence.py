"""The Gateway API's order of matches, as sort keys (smaller sorts first, i.e. is tried first).

Envoy tries a virtual host's routes in order and takes the first that matches, so the translator emits
one Envoy route per (rule, match) in this order.

HTTPRoute (``HTTPRouteRule.matches`` in upstream's API): across all rules of the applicable routes,
precedence goes to the match with

1. an ``Exact`` path; then a ``RegularExpression`` path (upstream leaves regular expressions
   implementation-specific; we rank them before prefixes, as Envoy Gateway does, because a pattern is
   usually written to be more specific than a prefix), longer patterns first; then a ``PathPrefix``,
   the longest first (a trailing ``/`` does not count: ``/abc/`` and ``/abc`` are the same prefix);
2. a method match;
3. the most header matches;
4. the most query parameter matches.

GRPCRoute (hostnames do not apply in the mesh): the most characters in the matched service, then in the
matched method, then the most header matches.

Ties across routes go to the oldest route (``creationTimestamp``), then to the first by
``<namespace>/<name>``; ties within a route go to the first rule, then the first match, in list order.
"""

from __future__ import annotations

import datetime as dt

from innermesh.api.gateway import GRPCRouteMatch, HTTPRouteMatch
from innermesh.api.meta import parse_time
from innermesh.xds.state import Route

_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)

MatchKey = tuple[int, ...]
RouteKey = tuple[bool, dt.datetime, str]


def http_match_key(match: HTTPRouteMatch) -> MatchKey:
    path = match.path
    length = len(path.value.rstrip("/")) if path.type == "PathPrefix" else len(path.value)
    return (
        _PATH_RANK[path.type],
        -length,
        0 if match.method is not None else 1,
        -len(match.headers or []),
        -len(match.query_params or []),
    )


def grpc_match_key(match: GRPCRouteMatch | None) -> MatchKey:
    if match is None:
        return (0, 0, 0)
    method = match.method
    service_chars = len(method.service or "") if method is not None else 0
    method_chars = len(method.method or "") if method is not None else 0
    return (-service_chars, -method_chars, -len(match.headers or []))


def route_key(route: Route) -> RouteKey:
    """Oldest first; a route without a creationTimestamp (never stored) after all that have one."""
    ts = route.metadata.creation_timestamp
    return (ts is None, parse_time(ts) if ts else _NEVER, f"{route.namespace}/{route.name}")
