"""Which routes apply to a Service port, for a client in a given namespace (GAMMA).

A route attaches to a Service port when one of its parentRefs names the Service (group ``""``, kind
``Service``) with no port or that port, and no sectionName or that port's name, and the route is
Accepted for that parent and that port (``api.attachment.service_attachment``: the same decision the
route status controller writes, computed here from the same state so that status and data plane cannot
disagree). Routes whose parentRefs name the Service but another port are ignored for this port. So are
a route none of whose rules can be implemented (Accepted=False/IncompatibleFilters) and an HTTPRoute on
a port a GRPCRoute of its namespace takes (Accepted=False/Conflicted, GEP-1426).

GAMMA's two kinds of routes (https://gateway-api.sigs.k8s.io/mesh/):

- a *producer* route lives in the Service's namespace and applies to every client;
- a *consumer* route lives in another namespace and applies only to clients in that namespace.

When both match a request, the consumer route wins: the translator puts all consumer rules before all
producer rules, so producer rules still serve what no consumer rule matches.

``hostnames`` of a route are not consulted: with a Service parent the Service port is what the route
binds to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from innermesh.api import mesh
from innermesh.api.attachment import service_attachment
from innermesh.api.core import Service, ServicePort
from innermesh.api.gateway import Gateway, GatewayClass, GRPCRoute, ReferenceGrant
from innermesh.xds.state import MeshState, Route


@dataclass(frozen=True)
class StateWorld:
    """The route status controller's view of the world (``RouteWorld``), over a MeshState."""

    state: MeshState

    def service(self, namespace: str, name: str) -> Service | None:
        return self.state.service(namespace, name)

    def gateway(self, namespace: str, name: str) -> Gateway | None:
        return None  # the mesh data plane does not serve Gateways

    def gateway_class(self, name: str) -> GatewayClass | None:
        return None

    def reference_grants(self, namespace: str) -> Sequence[ReferenceGrant]:
        return self.state.reference_grants_in(namespace)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        ns = self.state.namespaces.get(namespace)
        return (ns.metadata.labels or {}) if ns is not None else {}

    def fault_injection(self, namespace: str, name: str) -> mesh.FaultInjection | None:
        return self.state.fault_injections.get((namespace, name))

    def grpc_routes_for_service(self, namespace: str, name: str) -> Sequence[GRPCRoute]:
        return [
            r for r in self.state.routes_by_service.get((namespace, name), ()) if isinstance(r, GRPCRoute)
        ]


@dataclass(frozen=True)
class Attached:
    """The routes of one Service port that apply to one client namespace."""

    consumer: tuple[Route, ...] = ()
    producer: tuple[Route, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.consumer or self.producer)


def attaches(route: Route, svc: Service, port: ServicePort, world: StateWorld) -> bool:
    return any(
        ref.is_service
        and (ref.namespace or route.namespace, ref.name) == (svc.namespace, svc.name)
        and port.port in service_attachment(route, ref, world).ports
        for ref in route.spec.parent_refs or []
    )


def attached_routes(state: MeshState, svc: Service, port: ServicePort, client_namespace: str) -> Attached:
    world = StateWorld(state)
    consumer: list[Route] = []
    producer: list[Route] = []
    for route in state.routes_by_service.get((svc.namespace, svc.name), ()):
        if route.namespace == svc.namespace:
            bucket = producer
        elif route.namespace == client_namespace:
            bucket = consumer
        else:
            continue
        if attaches(route, svc, port, world):
            bucket.append(route)
    return Attached(tuple(consumer), tuple(producer))


def consumer_parents(state: MeshState, client_namespace: str) -> set[tuple[str, str]]:
    """Services that Accepted routes of ``client_namespace`` attach to: a consumer route says its
    namespace calls that Service, so the Service belongs in the scope of that namespace's proxies."""
    world = StateWorld(state)
    out: set[tuple[str, str]] = set()
    for route in state.routes_in(client_namespace):
        for ref in route.spec.parent_refs or []:
            if ref.is_service and service_attachment(route, ref, world).accepted:
                out.add((ref.namespace or route.namespace, ref.name))
    return out
