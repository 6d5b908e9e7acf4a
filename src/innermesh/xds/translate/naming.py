"""Names of what the translator emits, and the authorities a Service port answers to.

Resource names are the contract in docs/design/0005-xds-and-proxy.md; cluster names are Istio's
(``outbound|<port>||<host>``), so that a config dump reads familiar.
"""

from __future__ import annotations

from innermesh.api.core import Service
from innermesh.xds.state import Route

HTTP_DEFAULT_PORT = 80


def service_host(namespace: str, service: str, cluster_domain: str) -> str:
    return f"{service}.{namespace}.svc.{cluster_domain}"


def virtual_host_name(namespace: str, service: str, port: int, cluster_domain: str) -> str:
    return f"{service_host(namespace, service, cluster_domain)}:{port}"


def route_name(route: Route, rule: int, match: int) -> str:
    """``<Kind>/<namespace>/<name>/<rule>/<match>``: which rule and match of which route this is."""
    return f"{route.kind}/{route.namespace}/{route.name}/{rule}/{match}"


def invalid_cluster(route: Route, rule: int, ref: int) -> str:
    """The cluster standing for a backendRef that cannot be resolved. A sidecar is never given it, so
    the requests sent to it get the route's ``cluster_not_found_response_code`` (proxyless gRPC gets
    it without endpoints, see ``outbound``)."""
    return f"invalid|{route.namespace}/{route.name}/{rule}/{ref}"


def _with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_domains(svc: Service, port: int, cluster_domain: str, client_namespace: str | None) -> list[str]:
    """The authorities (Host headers) that mean Service port ``svc:port``.

    ``s.n.svc.<domain>``, ``s.n.svc``, ``s.n``, each ClusterIP (not for headless Services), and the
    short name ``s`` for clients of the same namespace (``client_namespace``), as a resolv.conf search
    list would resolve them; each with ``:port``, and also without it when the port is 80 (a client
    omits the default port).
    """
    ns, name = svc.namespace, svc.name
    hosts = [service_host(ns, name, cluster_domain), f"{name}.{ns}.svc", f"{name}.{ns}"]
    if not svc.spec.headless and svc.spec.type == "ClusterIP":
        hosts += list(svc.spec.cluster_ips or [])
    if client_namespace == ns:
        hosts.append(name)
    domains = [_with_port(h, port) for h in hosts]
    if port == HTTP_DEFAULT_PORT:
        domains += [f"[{h}]" if ":" in h else h for h in hosts]
    return domains
