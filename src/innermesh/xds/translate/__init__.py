"""The translator: ``MeshState`` + ``ProxyInfo`` -> the Envoy v3 resources for that proxy (pure).

The contract is docs/design/0005-xds-and-proxy.md (names, domains, scope, the Gateway API to Envoy
mapping). The modules, in the order a translation uses them:

- ``scope``: which Services a sidecar is told about (its namespace, its egress, what routes send to);
- ``attachment``: which HTTPRoutes and GRPCRoutes apply to a Service port, for a client namespace;
- ``virtualhosts``: one Service port -> a VirtualHost: domains (``naming``), CONNECT, routes in
  Gateway API order (``precedence``), or a default route;
- ``actions``: one route rule -> Envoy routes (``matches``, ``filters``, ``backends``, ``hashing``);
- ``clusters`` and ``endpoints``: what the routes send to; ``inbound``: the Workload's own ports;
- ``listeners``: outbound, inbound and proxyless API listeners;
- ``sidecar`` and ``proxyless``: the two kinds of data plane, assembled.

Every resource the translator emits is a real Envoy v3 message; what proxyless gRPC would reject is
kept out of what it receives (see ``proxyless`` and the modules' notes).
"""

from __future__ import annotations

from innermesh.xds.state import MeshState
from innermesh.xds.translate.proxyless import add_proxyless
from innermesh.xds.translate.sidecar import add_sidecar
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, ProxyInfo, Resources


def empty_resources() -> Resources:
    return {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}}


def translate(state: MeshState, proxy: ProxyInfo, listener_names: frozenset[str] | None) -> Resources:
    """The resources for ``proxy``. ``listener_names`` is what a proxyless client asked LDS for (a
    sidecar subscribes to all of its listeners, so it is ignored for sidecars)."""
    out = empty_resources()
    if proxy.kind == "sidecar":
        add_sidecar(out, state, proxy)
    else:
        add_proxyless(out, state, proxy, listener_names)
    return out
