"""Clusters: one per Service port the routes send to (``outbound|...``), one per Workload port
(``inbound|<port>``).

Outbound clusters:

- EDS over ADS (``eds_cluster_config.service_name`` = the cluster name), endpoints from
  ``endpoints.load_assignment``. Headless Services are no different here: the proxy balances over their
  endpoints' own addresses.
- ExternalName Services: a ``LOGICAL_DNS`` cluster to ``<externalName>:<port>`` rather than the
  ``STRICT_DNS`` one might expect: an external name usually stands for a large service behind changing
  addresses, which is what Envoy recommends LOGICAL_DNS for; proxyless gRPC accepts only LOGICAL_DNS; and
  a sidecar needs no resolver of its own to honour it (it connects to the name).
- The BackendTrafficPolicy's ``loadBalancer.type`` -> ``lb_policy`` (LeastRequest with Envoy's two
  choices); ``connectionPool`` -> ``circuit_breakers.thresholds[0]`` and ``HttpProtocolOptions``
  (``max_requests_per_connection``, ``idle_timeout``). Proxyless gRPC accepts ROUND_ROBIN and RING_HASH
  only (gRPC C-core), so for it LeastRequest and Random become ROUND_ROBIN and Maglev becomes RING_HASH.
- A Service port that speaks HTTP/2 (``grpc``, ``h2c``, ``http2``, ``kubernetes.io/h2c``) gets HTTP/2
  upstream (``explicit_http_config.http2_protocol_options``).

Inbound clusters are STATIC, to the local app at ``127.0.0.1:<APP_PORTS[port] or port>``. When the
port's protocol is not known, the upstream protocol follows the downstream one
(``use_downstream_protocol_config``), so that detected HTTP/2 stays HTTP/2 on the way to the app.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from innermesh.api.mesh import ConnectionPool
from innermesh.xds.state import MeshState
from innermesh.xds.translate.backends import Target
from innermesh.xds.translate.endpoints import static_assignment
from innermesh.xds.translate.protocol import PortProtocol, port_protocol
from innermesh.xds.translate.protos import ads, duration, pack, u32

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LOCALHOST = "127.0.0.1"

Cluster = cluster_pb2.Cluster
_LB = {
    "RoundRobin": Cluster.ROUND_ROBIN,
    "LeastRequest": Cluster.LEAST_REQUEST,
    "Random": Cluster.RANDOM,
    "RingHash": Cluster.RING_HASH,
    "Maglev": Cluster.MAGLEV,
}
_LB_PROXYLESS = {
    **_LB,
    "LeastRequest": Cluster.ROUND_ROBIN,
    "Random": Cluster.ROUND_ROBIN,
    "Maglev": Cluster.RING_HASH,
}
LEAST_REQUEST_CHOICES = 2


def _common_options(pool: ConnectionPool | None) -> protocol_pb2.HttpProtocolOptions | None:
    if pool is None:
        return None
    out = protocol_pb2.HttpProtocolOptions()
    if pool.max_requests_per_connection:  # 0 means unlimited, as absent does
        out.max_requests_per_connection.CopyFrom(u32(pool.max_requests_per_connection))
    idle = pool.idle_timeout_seconds()
    if idle is not None:
        out.idle_timeout.CopyFrom(duration(idle))
    return out if out.ByteSize() else None


def _protocol_options(protocol: PortProtocol, pool: ConnectionPool | None) -> hpo.HttpProtocolOptions | None:
    if protocol == "tcp":
        return None
    common = _common_options(pool)
    if protocol != "http2" and common is None:
        return None  # HTTP/1.1 with Envoy's defaults needs no options
    out = hpo.HttpProtocolOptions()
    if common is not None:
        out.common_http_protocol_options.CopyFrom(common)
    if protocol == "http2":
        out.explicit_http_config.http2_protocol_options.SetInParent()
    else:
        out.explicit_http_config.http_protocol_options.SetInParent()
    return out


def _circuit_breakers(pool: ConnectionPool | None) -> circuit_breaker_pb2.CircuitBreakers | None:
    if pool is None:
        return None
    limits = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for name in ("max_connections", "max_pending_requests", "max_requests"):
        value = getattr(pool, name)
        if value is not None:
            getattr(limits, name).CopyFrom(u32(value))
    if not limits.ByteSize():
        return None
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[limits])


def outbound_cluster(state: MeshState, target: Target, *, proxyless: bool) -> cluster_pb2.Cluster:
    svc, port = target.service, target.port
    out = Cluster(name=target.cluster)
    if svc.spec.type == "ExternalName" and svc.spec.external_name:
        out.type = Cluster.LOGICAL_DNS
        out.load_assignment.CopyFrom(static_assignment(target.cluster, svc.spec.external_name, port.port))
    else:
        out.type = Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ads())
        out.eds_cluster_config.service_name = target.cluster
    policy = state.backend_policy(svc.namespace, svc.name)
    lb = policy.spec.load_balancer if policy is not None else None
    out.lb_policy = (_LB_PROXYLESS if proxyless else _LB)[lb.type if lb is not None else "RoundRobin"]
    if out.lb_policy == Cluster.LEAST_REQUEST:
        out.least_request_lb_config.choice_count.CopyFrom(u32(LEAST_REQUEST_CHOICES))
    pool = policy.spec.connection_pool if policy is not None else None
    breakers = _circuit_breakers(pool)
    if breakers is not None:
        out.circuit_breakers.CopyFrom(breakers)
    options = _protocol_options(port_protocol(port.app_protocol, port.name), pool)
    if options is not None:
        out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    return out


def uses_eds(cluster: cluster_pb2.Cluster) -> bool:
    """Whether the cluster takes its endpoints over EDS (DNS and static clusters carry their own)."""
    return bool(cluster.type == Cluster.EDS)


def inbound_cluster(name: str, app_port: int, protocol: PortProtocol) -> cluster_pb2.Cluster:
    out = Cluster(
        name=name, type=Cluster.STATIC, load_assignment=static_assignment(name, LOCALHOST, app_port)
    )
    if protocol in ("http2", "unknown"):
        options = hpo.HttpProtocolOptions()
        if protocol == "http2":
            options.explicit_http_config.http2_protocol_options.SetInParent()
        else:
            options.use_downstream_protocol_config.http_protocol_options.SetInParent()
            options.use_downstream_protocol_config.http2_protocol_options.SetInParent()
        out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    return out
