"""Everything one sidecar is told: the outbound listener and route table over its scope, the clusters
and endpoints those routes send to, and an inbound listener and cluster per Workload port.

A sidecar whose Workload does not exist (yet) gets nothing; its stream stays open and it gets its
configuration once the Workload appears.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2

from innermesh.xds.state import MeshState
from innermesh.xds.translate.actions import Clusters
from innermesh.xds.translate.inbound import add_inbound
from innermesh.xds.translate.listeners import outbound_listener
from innermesh.xds.translate.naming import service_domains
from innermesh.xds.translate.outbound import add_outbound_clusters
from innermesh.xds.translate.scope import sidecar_scope, tcp_ports
from innermesh.xds.translate.virtualhosts import virtual_host
from innermesh.xds.types import (
    DEFAULT_OUTBOUND,
    LISTENER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTE,
    ROUTE,
    ProxyInfo,
    Resources,
)


def add_sidecar(out: Resources, state: MeshState, proxy: ProxyInfo) -> None:
    workload = state.workloads.get((proxy.namespace, proxy.workload or ""))
    if workload is None:
        return
    zone = proxy.zone or workload.spec.zone
    scope = sidecar_scope(state, proxy.namespace, workload.spec.egress)
    clusters = Clusters()
    table = route_pb2.RouteConfiguration(name=OUTBOUND_ROUTE)
    for key in scope.services:
        svc = state.services[key]
        for port in tcp_ports(svc):
            domains = service_domains(svc, port.port, state.cluster_domain, proxy.namespace)
            attached = scope.attached[(svc.namespace, svc.name, port.port)]
            table.virtual_hosts.append(
                virtual_host(state, svc, port, attached, domains, proxyless=False, clusters=clusters)
            )
    host, port_number = proxy.outbound or DEFAULT_OUTBOUND
    out[LISTENER][OUTBOUND_LISTENER] = outbound_listener(host, port_number)
    out[ROUTE][OUTBOUND_ROUTE] = table
    add_outbound_clusters(out, state, clusters, zone, proxyless=False)
    add_inbound(out, state, workload, proxy)
