"""MeshState: the cluster objects the translator reads, as one immutable value.

The server builds a new MeshState from its informers' caches after each (debounced) burst of changes;
the translator only reads it. Keys are (namespace, name).

The indexes below (Services by namespace, EndpointSlices and routes by Service, ...) are computed once
per state, on first use, and shared by every proxy translated from it: building them costs O(mesh)
once, so that translating one proxy costs what that proxy's scope holds, not what the mesh holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from innermesh.api.core import Namespace, Service
from innermesh.api.discovery import EndpointSlice
from innermesh.api.gateway import GRPCRoute, HTTPRoute, ReferenceGrant
from innermesh.api.mesh import BackendTrafficPolicy, FaultInjection, Workload, effective_backend_policy
from innermesh.api.meta import Resource

Key = tuple[str, str]
Route = HTTPRoute | GRPCRoute

# MeshState field for each kind it holds, for ``from_objects``.
_FIELD_BY_KIND = {
    "Service": "services",
    "EndpointSlice": "endpoint_slices",
    "Workload": "workloads",
    "HTTPRoute": "http_routes",
    "GRPCRoute": "grpc_routes",
    "ReferenceGrant": "reference_grants",
    "FaultInjection": "fault_injections",
    "BackendTrafficPolicy": "backend_traffic_policies",
}


@dataclass(frozen=True)
class MeshState:
    services: Mapping[Key, Service] = field(default_factory=dict)
    endpoint_slices: Mapping[Key, EndpointSlice] = field(default_factory=dict)
    workloads: Mapping[Key, Workload] = field(default_factory=dict)
    http_routes: Mapping[Key, HTTPRoute] = field(default_factory=dict)
    grpc_routes: Mapping[Key, GRPCRoute] = field(default_factory=dict)
    reference_grants: Mapping[Key, ReferenceGrant] = field(default_factory=dict)
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    fault_injections: Mapping[Key, FaultInjection] = field(default_factory=dict)
    backend_traffic_policies: Mapping[Key, BackendTrafficPolicy] = field(default_factory=dict)
    cluster_domain: str = "cluster.local"

    @classmethod
    def from_objects(cls, objects: Iterable[Resource], cluster_domain: str = "cluster.local") -> MeshState:
        """A state holding ``objects`` (kinds the translator does not read are ignored)."""
        fields: dict[str, dict[Any, Any]] = {name: {} for name in (*_FIELD_BY_KIND.values(), "namespaces")}
        for obj in objects:
            if isinstance(obj, Namespace):
                fields["namespaces"][obj.name] = obj
            elif obj.kind in _FIELD_BY_KIND:
                fields[_FIELD_BY_KIND[obj.kind]][(obj.namespace, obj.name)] = obj
        return cls(**fields, cluster_domain=cluster_domain)

    # -- indexes (computed once per state) -----------------------------------------------------------

    @cached_property
    def services_by_namespace(self) -> Mapping[str, tuple[Service, ...]]:
        out: dict[str, list[Service]] = defaultdict(list)
        for (ns, _), svc in sorted(self.services.items()):
            out[ns].append(svc)
        return {ns: tuple(svcs) for ns, svcs in out.items()}

    @cached_property
    def services_by_cluster_ip(self) -> Mapping[str, Service]:
        out: dict[str, Service] = {}
        for svc in self.services.values():
            if svc.spec.headless:
                continue
            for ip in svc.spec.cluster_ips or []:
                out[ip] = svc
        return out

    @cached_property
    def slices_by_service(self) -> Mapping[Key, tuple[EndpointSlice, ...]]:
        out: dict[Key, list[EndpointSlice]] = defaultdict(list)
        for (ns, _), eps in sorted(self.endpoint_slices.items()):
            svc = eps.service_name
            if svc is not None:
                out[(ns, svc)].append(eps)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def routes_by_service(self) -> Mapping[Key, tuple[Route, ...]]:
        """HTTPRoutes and GRPCRoutes by the Services their parentRefs name (whether or not accepted)."""
        out: dict[Key, list[Route]] = defaultdict(list)
        routes: list[Route] = [*self.grpc_routes.values(), *self.http_routes.values()]
        for route in routes:
            parents = {
                (ref.namespace or route.namespace, ref.name)
                for ref in route.spec.parent_refs or []
                if ref.is_service
            }
            for parent in sorted(parents):
                out[parent].append(route)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def _routes_by_namespace(self) -> Mapping[str, tuple[Route, ...]]:
        out: dict[str, list[Route]] = defaultdict(list)
        routes: list[Route] = [*self.grpc_routes.values(), *self.http_routes.values()]
        for route in routes:
            out[route.namespace].append(route)
        return {ns: tuple(v) for ns, v in out.items()}

    def routes_in(self, namespace: str) -> tuple[Route, ...]:
        return self._routes_by_namespace.get(namespace, ())

    @cached_property
    def _grants_by_namespace(self) -> Mapping[str, tuple[ReferenceGrant, ...]]:
        out: dict[str, list[ReferenceGrant]] = defaultdict(list)
        for (ns, _), grant in sorted(self.reference_grants.items()):
            out[ns].append(grant)
        return {ns: tuple(v) for ns, v in out.items()}

    def reference_grants_in(self, namespace: str) -> tuple[ReferenceGrant, ...]:
        return self._grants_by_namespace.get(namespace, ())

    @cached_property
    def _policies_by_namespace(self) -> Mapping[str, tuple[BackendTrafficPolicy, ...]]:
        out: dict[str, list[BackendTrafficPolicy]] = defaultdict(list)
        for (ns, _), policy in sorted(self.backend_traffic_policies.items()):
            out[ns].append(policy)
        return {ns: tuple(v) for ns, v in out.items()}

    def backend_policy(self, namespace: str, service: str) -> BackendTrafficPolicy | None:
        """The BackendTrafficPolicy that applies to Service ``namespace/service``, if any."""
        return effective_backend_policy(self._policies_by_namespace.get(namespace, ()), namespace, service)

    def service(self, namespace: str, name: str) -> Service | None:
        return self.services.get((namespace, name))
