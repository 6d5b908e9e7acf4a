"""Route hash policies: what RingHash and Maglev hash on, from the backends' BackendTrafficPolicies.

A BackendTrafficPolicy attaches to a Service, but Envoy computes the hash on the route (the cluster only
says how to use it), so every route that sends to a consistent-hashing Service carries that Service's
``consistentHash`` as a ``hash_policy``: a header, a cookie (with ``ttl`` the proxy sets it when the
request has none), or the client's address. A route splitting across several such Services carries each
distinct policy once.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc

from innermesh.api.mesh import ConsistentHash
from innermesh.xds.state import MeshState
from innermesh.xds.translate.backends import Target
from innermesh.xds.translate.protos import duration

HASHING_BALANCERS = ("RingHash", "Maglev")


def hash_policy(h: ConsistentHash) -> rc.RouteAction.HashPolicy:
    if h.type == "Header" and h.header is not None:
        return rc.RouteAction.HashPolicy(
            header=rc.RouteAction.HashPolicy.Header(header_name=h.header.name.lower())
        )
    if h.type == "Cookie" and h.cookie is not None:
        cookie = rc.RouteAction.HashPolicy.Cookie(name=h.cookie.name, path=h.cookie.path)
        ttl = h.cookie.ttl_seconds()
        if ttl is not None:
            cookie.ttl.CopyFrom(duration(ttl))
        return rc.RouteAction.HashPolicy(cookie=cookie)
    return rc.RouteAction.HashPolicy(
        connection_properties=rc.RouteAction.HashPolicy.ConnectionProperties(source_ip=True)
    )


def route_hash_policies(state: MeshState, targets: Iterable[Target]) -> list[rc.RouteAction.HashPolicy]:
    out: list[rc.RouteAction.HashPolicy] = []
    seen: set[bytes] = set()
    for t in targets:
        policy = state.backend_policy(t.service.namespace, t.service.name)
        lb = policy.spec.load_balancer if policy is not None else None
        if lb is None or lb.type not in HASHING_BALANCERS or lb.consistent_hash is None:
            continue
        hp = hash_policy(lb.consistent_hash)
        key = hp.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            out.append(hp)
    return out
