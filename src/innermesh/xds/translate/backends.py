"""A route's backendRefs (and mirror backendRefs) as Service ports, and so as clusters.

What a route sends requests to (``api.attachment.backend_refs``) and whether a reference resolves
(``api.attachment.resolve_backend``: a core Service that exists, in the route's namespace or in one
whose ReferenceGrant lets this route kind from this namespace refer to it, with the referenced TCP
port) are the route status controller's own rules, so that ResolvedRefs says exactly which shares of
requests get an error status (see ``naming.invalid_cluster``), as the Gateway API requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from innermesh.api.attachment import Unresolved, backend_refs, resolve_backend
from innermesh.api.core import Service, ServicePort
from innermesh.api.gateway import BackendObjectReference
from innermesh.xds.state import MeshState, Route
from innermesh.xds.translate.attachment import StateWorld
from innermesh.xds.types import outbound_cluster_name


@dataclass(frozen=True)
class Target:
    """A resolved backend: a Service port, and the cluster that stands for it."""

    service: Service
    port: ServicePort
    cluster: str


def resolve(state: MeshState, route: Route, ref: BackendObjectReference) -> Target | Unresolved:
    """The backendRef's Service port and cluster, or why it has none (as ResolvedRefs says it)."""
    resolved = resolve_backend(route, ref, StateWorld(state))
    if isinstance(resolved, Unresolved):
        return resolved
    svc, port = resolved
    return Target(svc, port, outbound_cluster_name(svc.namespace, svc.name, port.port, state.cluster_domain))


def route_targets(state: MeshState, route: Route) -> list[Target]:
    """Every Service port ``route`` sends requests to."""
    return [t for t in (resolve(state, route, ref) for ref in backend_refs(route)) if isinstance(t, Target)]
