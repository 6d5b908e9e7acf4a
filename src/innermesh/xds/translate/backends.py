"""Resolving a route's backendRefs (and mirror backendRefs) to Service ports, and so to clusters.

A reference resolves when it names a core Service (group ``""``, kind ``Service``) that exists, in the
route's namespace or in one whose ReferenceGrant lets this route kind from this namespace refer to it,
and the Service has the referenced TCP port. Anything else cannot be resolved: its share of the
requests gets an error status (see ``naming.invalid_cluster``), as the Gateway API requires.

The port check goes beyond what the status controller's ResolvedRefs looks at: a port the Service does
not have has no cluster, so treating it as resolved would only send requests to a cluster that does not
exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from innermesh.api.attachment import grant_allows
from innermesh.api.core import Service, ServicePort
from innermesh.api.gateway import BackendObjectReference
from innermesh.xds.state import MeshState, Route
from innermesh.xds.types import outbound_cluster_name


@dataclass(frozen=True)
class Target:
    """A resolved backend: a Service port, and the cluster that stands for it."""

    service: Service
    port: ServicePort
    cluster: str


def service_port(svc: Service, number: int) -> ServicePort | None:
    return next((p for p in svc.spec.ports or [] if p.port == number and p.protocol == "TCP"), None)


def resolve(state: MeshState, route: Route, ref: BackendObjectReference) -> Target | None:
    if not ref.is_service or ref.port is None:
        return None
    namespace = ref.namespace or route.namespace
    if namespace != route.namespace and not grant_allows(
        state.reference_grants_in(namespace), route.kind, route.namespace, ref.name
    ):
        return None
    svc = state.service(namespace, ref.name)
    if svc is None:
        return None
    port = service_port(svc, ref.port)
    if port is None:
        return None
    return Target(svc, port, outbound_cluster_name(namespace, ref.name, ref.port, state.cluster_domain))


def route_targets(state: MeshState, route: Route) -> list[Target]:
    """Every Service port ``route`` sends requests to: backendRefs with a weight, and the rules' request
    mirrors (a mirror inside a backendRef's filters is not supported, see ``actions``)."""
    refs: list[BackendObjectReference] = []
    for rule in route.spec.rules or []:
        refs += [f.request_mirror.backend_ref for f in rule.filters or [] if f.request_mirror is not None]
        refs += [b for b in rule.backend_refs or [] if b.weight > 0]
    return [t for t in (resolve(state, route, ref) for ref in refs) if t is not None]
