"""The vocabulary shared by the translator, the ADS server and the sidecar's xDS client.

``Resources`` is what one proxy is told: by type URL, by resource name, an Envoy v3 message. The
translator produces it (pure), the server versions and sends it, the proxy compiles it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105 (a type URL)

# The order in which a state-of-the-world server sends a change, so that a proxy never sees a name
# before what it names (Envoy's "make before break": clusters and endpoints before the routes and
# listeners that use them).
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

Message = Any  # an Envoy v3 protobuf message (xds-protos ships no type information)
Resources = dict[str, dict[str, Message]]  # type URL -> resource name -> message

CLUSTER_DOMAIN = "cluster.local"
OUTBOUND_LISTENER = "outbound"
OUTBOUND_ROUTE = "outbound"
DEFAULT_OUTBOUND = ("127.0.0.1", 15001)


def inbound_name(port: int) -> str:
    return f"inbound|{port}"


def outbound_cluster_name(namespace: str, service: str, port: int, domain: str = CLUSTER_DOMAIN) -> str:
    return f"outbound|{port}||{service}.{namespace}.svc.{domain}"


ProxyKind = Literal["sidecar", "proxyless"]


@dataclass(frozen=True)
class ProxyInfo:
    """Who is asking, parsed from the xDS Node (see docs/design/0005-xds-and-proxy.md).

    ``zone`` is the Node's locality zone, or the Workload's ``spec.zone`` when the Node gives none.
    """

    node_id: str
    kind: ProxyKind
    namespace: str
    workload: str | None = None
    outbound: tuple[str, int] | None = None
    app_ports: Mapping[int, int] = field(default_factory=dict)
    zone: str | None = None


class ConfigSource(Protocol):
    """What the ADS server serves from: the translator over the current mesh state.

    ``generate`` is pure over the state it holds at the time of the call. ``listener_names`` is what
    the proxy asked for on LDS: ``None`` for a wildcard subscription (a sidecar gets all of its own
    listeners), a set of names for a proxyless client (it gets the API listeners it named, and the
    routes, clusters and endpoints they lead to). ``on_change`` registers a callback the source calls,
    without arguments and possibly many times in a burst, whenever its state changed; the server
    debounces.
    """

    def generate(self, proxy: ProxyInfo, listener_names: frozenset[str] | None) -> Resources: ...

    def on_change(self, callback: Callable[[], None]) -> None: ...
