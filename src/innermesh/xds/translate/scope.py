"""Scope: the Services one sidecar is told about, so that its configuration does not grow with the mesh.

A sidecar in namespace ``n`` receives (docs/design/0005-xds-and-proxy.md, "Scope"):

- the Services of ``n``;
- the Services its Workload's ``spec.egress`` names (``<ns>/<svc>``, ``<ns>/*``, ``*/*``);
- the Services that Accepted routes of ``n`` attach to (consumer routes: a route written in ``n`` for
  another namespace's Service says ``n`` calls it);
- and, repeatedly until nothing is added, the Services the routes of those Services send to, so that
  every cluster a route names exists.

Each Service port in scope gets a virtual host; the routes that apply to it are computed once here and
reused by the translator. The scope is an input of the translator's virtual host and cluster steps, so
that on-demand discovery can later grow it without changing them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from innermesh.api.core import Service, ServicePort
from innermesh.api.mesh import egress_allows
from innermesh.xds.state import Key, MeshState
from innermesh.xds.translate.attachment import Attached, attached_routes, consumer_parents
from innermesh.xds.translate.backends import route_targets
from innermesh.xds.translate.protocol import port_protocol, speaks_http

PortKey = tuple[str, str, int]  # (namespace, service, port)


@dataclass(frozen=True)
class Scope:
    services: tuple[Key, ...]  # sorted
    attached: Mapping[PortKey, Attached]  # the routes of each Service port in scope, for this client


def tcp_ports(svc: Service) -> list[ServicePort]:
    return [p for p in svc.spec.ports or [] if p.protocol == "TCP"]


def _egress_services(state: MeshState, egress: Iterable[str]) -> set[Key]:
    hosts = list(egress)
    if "*/*" in hosts:
        candidates: Iterable[Service] = state.services.values()
    else:
        namespaces = {h.partition("/")[0] for h in hosts}
        candidates = [s for ns in sorted(namespaces) for s in state.services_by_namespace.get(ns, ())]
    return {(s.namespace, s.name) for s in candidates if egress_allows(hosts, s.namespace, s.name)}


def sidecar_scope(state: MeshState, client_namespace: str, egress: Iterable[str] | None) -> Scope:
    seeds = {(s.namespace, s.name) for s in state.services_by_namespace.get(client_namespace, ())}
    seeds |= _egress_services(state, egress or ())
    seeds |= consumer_parents(state, client_namespace)
    return closed_scope(state, client_namespace, seeds)


def closed_scope(state: MeshState, client_namespace: str, seeds: Iterable[Key]) -> Scope:
    """``seeds`` (those that exist) and every Service their applicable routes send to, transitively."""
    todo = sorted(k for k in set(seeds) if k in state.services)
    seen = set(todo)
    attached: dict[PortKey, Attached] = {}
    while todo:
        key = todo.pop()
        svc = state.services[key]
        for port in tcp_ports(svc):
            # Routes do not apply to opaque TCP ports (see ``virtualhosts``), so they send nowhere.
            if speaks_http(port_protocol(port.app_protocol, port.name)):
                routes = attached_routes(state, svc, port, client_namespace)
            else:
                routes = Attached()
            attached[(svc.namespace, svc.name, port.port)] = routes
            for route in (*routes.consumer, *routes.producer):
                for target in route_targets(state, route):
                    k = (target.service.namespace, target.service.name)
                    if k not in seen:
                        seen.add(k)
                        todo.append(k)
    return Scope(tuple(sorted(seen)), attached)
