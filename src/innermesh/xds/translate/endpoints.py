"""EndpointSlices -> one ClusterLoadAssignment per Service port.

- Slices are the Service's (label ``kubernetes.io/service-name``, same namespace), of one address family:
  the first of the Service's ``ipFamilies`` that has slices (IPv4 when unset), so that a dual-stack
  workload counts once.
- Endpoints: ready and not terminating (serving-but-terminating endpoints are left out for now); the
  first address; the port from the slice's port whose name is the Service port's name (``""`` for an
  unnamed port). An address and port listed twice count once (gRPC rejects duplicates).
- Localities by ``zone``. With zone-aware balancing (BackendTrafficPolicy ``zoneAware``, on by default)
  and a proxy that knows its zone, the proxy's zone is priority 0 and the others priority 1, so traffic
  stays in the zone while it has a ready endpoint and fails over when it has none; otherwise all are
  priority 0. Priorities never skip a number (gRPC rejects a gap): a zone without endpoints leaves all
  at priority 0.
- Each locality's ``load_balancing_weight`` is its endpoint count: gRPC ignores localities without a
  weight and splits by weight, so this keeps every endpoint's share equal; Envoy ignores it here.
"""

from __future__ import annotations

from collections import defaultdict

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from innermesh.api.core import Service
from innermesh.api.discovery import EndpointSlice
from innermesh.xds.state import MeshState
from innermesh.xds.translate.backends import Target
from innermesh.xds.translate.protos import socket_address, u32

Address = tuple[str, int]


def _family_slices(svc: Service, slices: tuple[EndpointSlice, ...]) -> list[EndpointSlice]:
    families = [*(svc.spec.ip_families or []), "IPv4", "IPv6"]
    for family in families:
        chosen = [s for s in slices if s.address_type == family]
        if chosen:
            return chosen
    return []


def ready_endpoints(state: MeshState, target: Target) -> dict[Address, str]:
    """Ready endpoints of a Service port: (address, port) -> zone ("" when unknown)."""
    svc = target.service
    port_name = target.port.name or ""
    out: dict[Address, str] = {}
    for eps in _family_slices(svc, state.slices_by_service.get((svc.namespace, svc.name), ())):
        number = next((p.port for p in eps.ports or [] if p.name == port_name and p.protocol == "TCP"), None)
        if number is None:
            continue
        for ep in eps.endpoints:
            if ep.addresses and ep.conditions.is_ready and not ep.conditions.is_terminating:
                out.setdefault((ep.address, number), ep.zone or "")
    return out


def _lb_endpoint(host: str, port: int) -> ec.LbEndpoint:
    return ec.LbEndpoint(endpoint=ec.Endpoint(address=socket_address(host, port)))


def locality_endpoints(
    endpoints: dict[Address, str], proxy_zone: str | None, zone_aware: bool
) -> list[ec.LocalityLbEndpoints]:
    by_zone: dict[str, list[Address]] = defaultdict(list)
    for address, zone in endpoints.items():
        by_zone[zone].append(address)
    prioritise = zone_aware and proxy_zone is not None and proxy_zone in by_zone
    out: list[ec.LocalityLbEndpoints] = []
    for zone in sorted(by_zone, key=lambda z: (prioritise and z != proxy_zone, z)):
        addresses = sorted(by_zone[zone])
        out.append(
            ec.LocalityLbEndpoints(
                # gRPC requires the locality field even when it is empty (no zone).
                locality=base_pb2.Locality(zone=zone),
                lb_endpoints=[_lb_endpoint(h, p) for h, p in addresses],
                load_balancing_weight=u32(len(addresses)),
                priority=1 if prioritise and zone != proxy_zone else 0,
            )
        )
    return out


def load_assignment(
    state: MeshState, target: Target, proxy_zone: str | None
) -> endpoint_pb2.ClusterLoadAssignment:
    policy = state.backend_policy(target.service.namespace, target.service.name)
    lb = policy.spec.load_balancer if policy is not None else None
    zone_aware = lb.zone_aware if lb is not None else True
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=target.cluster,
        endpoints=locality_endpoints(ready_endpoints(state, target), proxy_zone, zone_aware),
    )


def static_assignment(cluster: str, host: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    """One endpoint, for STATIC and LOGICAL_DNS clusters (gRPC wants exactly one locality and endpoint)."""
    locality = ec.LocalityLbEndpoints(
        locality=base_pb2.Locality(), lb_endpoints=[_lb_endpoint(host, port)], load_balancing_weight=u32(1)
    )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster, endpoints=[locality])
