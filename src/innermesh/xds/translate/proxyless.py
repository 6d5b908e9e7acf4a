"""Proxyless gRPC: an API listener and its route table for each listener name the client asks for.

A gRPC client with target ``xds:///<host>[:<port>]`` asks LDS for ``<host>[:<port>]``. The name
resolves to a Service port when ``<host>`` is one of the names the Service's virtual host answers to
(``s.n.svc.<cluster domain>``, ``s.n.svc``, ``s.n``, a ClusterIP, or ``s`` in the client's namespace,
which is ``metadata.NAMESPACE`` or ``default``) and ``<port>`` is one of its TCP ports (80 when
omitted). A name that does not resolve is simply absent from the answer, which the client reports as
"does not exist".

The route table holds one virtual host whose domains include the name exactly as asked: gRPC selects the
virtual host by matching the target's authority against the domains.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2

from innermesh.api.addresses import parse_ip
from innermesh.api.attachment import tcp_port
from innermesh.api.core import Service, ServicePort
from innermesh.xds.state import MeshState
from innermesh.xds.translate.actions import Clusters
from innermesh.xds.translate.attachment import attached_routes
from innermesh.xds.translate.listeners import api_listener
from innermesh.xds.translate.naming import HTTP_DEFAULT_PORT, service_domains
from innermesh.xds.translate.outbound import add_outbound_clusters
from innermesh.xds.translate.virtualhosts import virtual_host
from innermesh.xds.types import LISTENER, ROUTE, ProxyInfo, Resources


def split_host_port(name: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port``, or a bare host (port 80); None when the port is not a number."""
    if name.startswith("["):
        host, _, rest = name[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    elif name.count(":") == 1:
        host, _, port_text = name.partition(":")
    else:
        host, port_text = name, ""
    if port_text is None or (port_text and not port_text.isdigit()):
        return None
    return host.lower(), int(port_text) if port_text else HTTP_DEFAULT_PORT


def _service_for_host(state: MeshState, host: str, client_namespace: str) -> Service | None:
    if parse_ip(host) is not None:
        return state.services_by_cluster_ip.get(host)
    labels = host.split(".")
    if len(labels) == 1:
        return state.service(client_namespace, labels[0])
    if len(labels) == 2 or (len(labels) == 3 and labels[2] == "svc"):
        return state.service(labels[1], labels[0])
    if len(labels) > 3 and labels[2] == "svc" and ".".join(labels[3:]) == state.cluster_domain:
        return state.service(labels[1], labels[0])
    return None


def resolve_listener_name(
    state: MeshState, name: str, client_namespace: str
) -> tuple[Service, ServicePort] | None:
    parsed = split_host_port(name)
    if parsed is None:
        return None
    host, port_number = parsed
    svc = _service_for_host(state, host, client_namespace)
    if svc is None:
        return None
    port = tcp_port(svc, port_number)
    return (svc, port) if port is not None else None


def add_proxyless(
    out: Resources, state: MeshState, proxy: ProxyInfo, listener_names: frozenset[str] | None
) -> None:
    clusters = Clusters()
    for name in sorted(listener_names or ()):
        resolved = resolve_listener_name(state, name, proxy.namespace)
        if resolved is None:
            continue
        svc, port = resolved
        domains = service_domains(svc, port.port, state.cluster_domain, proxy.namespace)
        if name not in domains:
            domains.insert(0, name)
        attached = attached_routes(state, svc, port, proxy.namespace)
        vh = virtual_host(state, svc, port, attached, domains, proxyless=True, clusters=clusters)
        out[LISTENER][name] = api_listener(name)
        out[ROUTE][name] = route_pb2.RouteConfiguration(name=name, virtual_hosts=[vh])
    add_outbound_clusters(out, state, clusters, proxy.zone, proxyless=True)
