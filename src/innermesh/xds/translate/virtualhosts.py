"""One Service port -> one Envoy VirtualHost: its domains and its routes, in Gateway API precedence.

Routes, in order:

1. For a port that may carry opaque TCP (protocol ``tcp`` or unknown) on the sidecar's explicit
   outbound listener: a CONNECT route (``connect_matcher``, upgrade ``CONNECT`` terminated by the proxy)
   to the port's own endpoints. Routes do not apply to ``tcp`` ports.
2. The attached routes' rules, one Envoy route per match: consumer routes before producer routes
   (GAMMA); within each, GRPCRoute rules before HTTPRoute rules, each kind sorted by ``precedence``
   (the Gateway API forbids merging the two kinds; within one namespace they never share a port, the
   HTTPRoute being Conflicted, but a consumer group and a producer group may hold one kind each).
3. When no route is attached at all: a default route, ``/`` to the port's own endpoints. When routes
   are attached, a request that matches none of them gets 404, as GAMMA requires.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc

from innermesh.api.core import Service, ServicePort
from innermesh.api.gateway import GRPCRoute
from innermesh.xds.state import MeshState
from innermesh.xds.translate.actions import Clusters, RuleContext, default_action, grpc_rule, http_rule
from innermesh.xds.translate.attachment import Attached
from innermesh.xds.translate.backends import Target
from innermesh.xds.translate.naming import virtual_host_name
from innermesh.xds.translate.precedence import MatchKey, RouteKey, route_key
from innermesh.xds.translate.protocol import may_tunnel, port_protocol, speaks_http
from innermesh.xds.translate.protos import duration
from innermesh.xds.types import outbound_cluster_name

CONNECT_ROUTE = "connect"
DEFAULT_ROUTE = "default"

SortKey = tuple[MatchKey, RouteKey, int, int]  # precedence, route age and name, rule, match


def port_target(state: MeshState, svc: Service, port: ServicePort) -> Target:
    return Target(svc, port, outbound_cluster_name(svc.namespace, svc.name, port.port, state.cluster_domain))


def connect_route(cluster: str) -> rc.Route:
    action = rc.RouteAction(cluster=cluster, timeout=duration(0))
    action.upgrade_configs.append(
        rc.RouteAction.UpgradeConfig(
            upgrade_type="CONNECT", connect_config=rc.RouteAction.UpgradeConfig.ConnectConfig()
        )
    )
    return rc.Route(
        name=CONNECT_ROUTE, match=rc.RouteMatch(connect_matcher=rc.RouteMatch.ConnectMatcher()), route=action
    )


def ordered_routes(
    state: MeshState, attached: Attached, port: ServicePort, *, proxyless: bool, clusters: Clusters
) -> list[rc.Route]:
    out: list[rc.Route] = []
    for group in (attached.consumer, attached.producer):
        grpc_entries: list[tuple[SortKey, rc.Route]] = []
        http_entries: list[tuple[SortKey, rc.Route]] = []
        for route in group:
            age = route_key(route)
            if isinstance(route, GRPCRoute):
                for i, grule in enumerate(route.spec.rules or []):
                    ctx = RuleContext(state, route, i, port.port, proxyless, clusters)
                    grpc_entries += [((key, age, i, j), r) for key, j, r in grpc_rule(ctx, grule)]
            else:
                for i, hrule in enumerate(route.spec.rules):
                    ctx = RuleContext(state, route, i, port.port, proxyless, clusters)
                    http_entries += [((key, age, i, j), r) for key, j, r in http_rule(ctx, hrule)]
        for entries in (grpc_entries, http_entries):
            entries.sort(key=lambda e: e[0])
            out += [r for _, r in entries]
    return out


def virtual_host(
    state: MeshState,
    svc: Service,
    port: ServicePort,
    attached: Attached,
    domains: list[str],
    *,
    proxyless: bool,
    clusters: Clusters,
) -> rc.VirtualHost:
    vh = rc.VirtualHost(
        name=virtual_host_name(svc.namespace, svc.name, port.port, state.cluster_domain), domains=domains
    )
    own = port_target(state, svc, port)
    protocol = port_protocol(port.app_protocol, port.name)
    if not proxyless and may_tunnel(protocol):
        vh.routes.append(connect_route(clusters.add(own)))
    if proxyless or speaks_http(protocol):
        if attached:
            vh.routes.extend(ordered_routes(state, attached, port, proxyless=proxyless, clusters=clusters))
        else:
            clusters.add(own)
            vh.routes.append(
                rc.Route(
                    name=DEFAULT_ROUTE, match=rc.RouteMatch(prefix="/"), route=default_action(state, own)
                )
            )
    return vh
