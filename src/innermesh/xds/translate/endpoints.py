"""EndpointSlices -> one ClusterLoadAssignment per Service port.

- Slices are the Service's (label ``kubernetes.io/service-name``, same namespace), of one address family:
  the first of the Service's ``ipFamilies`` that has slices (IPv4 when unset), so that a dual-stack
  workload counts once.
- Endpoints: the first address; the port from the slice's port whose name is the Service port's name
  (``""`` for an unnamed port). An address and port listed twice count once (gRPC rejects duplicates).
- Health, for the sidecar: every endpoint is sent, ready ones without a health status (UNKNOWN: the
  control plane does no health checking of its own, Kubernetes readiness is all there is), serving but
  terminating ones as DRAINING and the others as UNHEALTHY. Neither of the last two gets requests, but
  both count in the size of their priority level, which is what Envoy's overprovisioning factor works
  on: a local zone with 1 of 10 endpoints ready keeps 14% of the traffic instead of all of it.
  Proxyless gRPC gets the ready endpoints only: it skips UNHEALTHY and DRAINING ones anyway, splits
  between localities by their weight, and its priorities are plain failover.
- Localities by ``zone``. With zone-aware balancing (BackendTrafficPolicy ``zoneAware``, on by default)
  and a proxy that knows its zone, the proxy's zone is priority 0 and the others priority 1, so traffic
  stays in the zone while it is healthy enough and spills over as it is not; otherwise all are priority
  0. Priorities never skip a number (gRPC rejects a gap): a zone without endpoints leaves all at
  priority 0.
- Each locality's ``load_balancing_weight`` is its endpoint count: gRPC ignores localities without a
  weight and splits by weight, so this keeps every endpoint's share equal; Envoy ignores it here.
"""

from __future__ import annotations

from collections import defaultdict

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from innermesh.api.core import Service
from innermesh.api.discovery import EndpointSlice
from innermesh.xds.state import MeshState
from innermesh.xds.translate.backends import Target
from innermesh.xds.translate.protos import socket_address, u32

Address = tuple[str, int]
Endpoint = tuple[str, int]  # (zone, HealthStatus)
READY = health_check_pb2.UNKNOWN


def _family_slices(svc: Service, slices: tuple[EndpointSlice, ...]) -> list[EndpointSlice]:
    families = [*(svc.spec.ip_families or []), "IPv4", "IPv6"]
    for family in families:
        chosen = [s for s in slices if s.address_type == family]
        if chosen:
            return chosen
    return []


def endpoint_health(state: MeshState, target: Target, *, ready_only: bool) -> dict[Address, Endpoint]:
    """The endpoints of a Service port: (address, port) -> (zone ("" when unknown), health status)."""
    svc = target.service
    port_name = target.port.name or ""
    out: dict[Address, Endpoint] = {}
    for eps in _family_slices(svc, state.slices_by_service.get((svc.namespace, svc.name), ())):
        number = next((p.port for p in eps.ports or [] if p.name == port_name and p.protocol == "TCP"), None)
        if number is None:
            continue
        for ep in eps.endpoints:
            if not ep.addresses:
                continue
            conditions = ep.conditions
            if conditions.is_ready and not conditions.is_terminating:
                health = READY
            elif conditions.is_terminating and conditions.is_serving:
                health = health_check_pb2.DRAINING
            else:
                health = health_check_pb2.UNHEALTHY
            if health == READY or not ready_only:
                out.setdefault((ep.address, number), (ep.zone or "", health))
    return out


def _lb_endpoint(host: str, port: int, health: int = READY) -> ec.LbEndpoint:
    return ec.LbEndpoint(endpoint=ec.Endpoint(address=socket_address(host, port)), health_status=health)


def locality_endpoints(
    endpoints: dict[Address, Endpoint], proxy_zone: str | None, zone_aware: bool
) -> list[ec.LocalityLbEndpoints]:
    by_zone: dict[str, list[tuple[Address, int]]] = defaultdict(list)
    for address, (zone, health) in endpoints.items():
        by_zone[zone].append((address, health))
    prioritise = zone_aware and proxy_zone is not None and proxy_zone in by_zone
    out: list[ec.LocalityLbEndpoints] = []
    for zone in sorted(by_zone, key=lambda z: (prioritise and z != proxy_zone, z)):
        members = sorted(by_zone[zone])
        out.append(
            ec.LocalityLbEndpoints(
                # gRPC requires the locality field even when it is empty (no zone).
                locality=base_pb2.Locality(zone=zone),
                lb_endpoints=[_lb_endpoint(h, p, health) for (h, p), health in members],
                load_balancing_weight=u32(len(members)),
                priority=1 if prioritise and zone != proxy_zone else 0,
            )
        )
    return out


def load_assignment(
    state: MeshState, target: Target, proxy_zone: str | None, *, proxyless: bool
) -> endpoint_pb2.ClusterLoadAssignment:
    policy = state.backend_policy(target.service.namespace, target.service.name)
    lb = policy.spec.load_balancer if policy is not None else None
    zone_aware = lb.zone_aware if lb is not None else True
    endpoints = endpoint_health(state, target, ready_only=proxyless)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=target.cluster, endpoints=locality_endpoints(endpoints, proxy_zone, zone_aware)
    )


def static_assignment(cluster: str, host: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    """One endpoint, for STATIC and LOGICAL_DNS clusters (gRPC wants exactly one locality and endpoint)."""
    locality = ec.LocalityLbEndpoints(
        locality=base_pb2.Locality(), lb_endpoints=[_lb_endpoint(host, port)], load_balancing_weight=u32(1)
    )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster, endpoints=[locality])
