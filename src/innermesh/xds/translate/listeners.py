"""Listeners: the sidecar's outbound and inbound listeners, and proxyless gRPC API listeners.

Every HTTP connection manager ends with the router filter (gRPC NACKs one that does not). Outbound and
API listeners put the fault filter before it, empty: the per-route ``typed_per_filter_config`` of a
FaultInjection is what makes it act, and Envoy and gRPC only read per-route fault config when the
filter is in the chain.

- ``outbound``: bound at the sidecar's ``OUTBOUND`` address; RDS ``outbound`` over ADS; WebSocket and
  CONNECT upgrades allowed (a CONNECT route decides which authorities may tunnel).
- ``inbound|<port>``: bound at the Workload's address and port. HTTP ports get a connection manager
  with an inline route table sending everything to ``inbound|<port>``; TCP ports a ``tcp_proxy`` to it;
  ports of unknown protocol the ``http_inspector`` listener filter and two filter chains, HTTP when it
  saw HTTP/1.x or prior-knowledge HTTP/2 within the detection timeout, TCP otherwise.
- ``<host>:<port>`` (proxyless): an ``api_listener`` holding a connection manager with RDS of the same
  name.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from innermesh.xds.translate.filters import FAULT_FILTER
from innermesh.xds.translate.protocol import PortProtocol
from innermesh.xds.translate.protos import ads, duration, pack, socket_address
from innermesh.xds.types import OUTBOUND_LISTENER, OUTBOUND_ROUTE

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ROUTER_FILTER = "envoy.filters.http.router"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
# What http_inspector reports for HTTP it recognised.
HTTP_APPLICATION_PROTOCOLS = ("http/1.0", "http/1.1", "h2c")
# How long an inbound listener of unknown protocol waits for the first bytes before treating the
# connection as TCP (server-first protocols send nothing until the server speaks).
DETECT_TIMEOUT = 0.1

HCM = hcm_pb2.HttpConnectionManager


def _http_filters(*, fault: bool) -> list[hcm_pb2.HttpFilter]:
    out = []
    if fault:
        out.append(hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault())))
    out.append(hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router())))
    return out


def _rds(stat_prefix: str, route_config_name: str) -> hcm_pb2.HttpConnectionManager:
    return HCM(
        stat_prefix=stat_prefix,
        rds=hcm_pb2.Rds(config_source=ads(), route_config_name=route_config_name),
        http_filters=_http_filters(fault=True),
    )


def _network_filter(name: str, config: object) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=pack(config))


def outbound_listener(host: str, port: int) -> listener_pb2.Listener:
    hcm = _rds(OUTBOUND_LISTENER, OUTBOUND_ROUTE)
    hcm.upgrade_configs.extend(
        [HCM.UpgradeConfig(upgrade_type="websocket"), HCM.UpgradeConfig(upgrade_type="CONNECT")]
    )
    return listener_pb2.Listener(
        name=OUTBOUND_LISTENER,
        address=socket_address(host, port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[listener_components_pb2.FilterChain(filters=[_network_filter(HCM_FILTER, hcm)])],
    )


def _inbound_hcm(name: str) -> hcm_pb2.HttpConnectionManager:
    route = rc.Route(
        name="default",
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(cluster=name, timeout=duration(0)),
    )
    table = route_pb2.RouteConfiguration(
        name=name, virtual_hosts=[rc.VirtualHost(name=name, domains=["*"], routes=[route])]
    )
    hcm = HCM(stat_prefix=name, route_config=table, http_filters=_http_filters(fault=False))
    hcm.upgrade_configs.append(HCM.UpgradeConfig(upgrade_type="websocket"))
    return hcm


def inbound_listener(name: str, address: str, port: int, protocol: PortProtocol) -> listener_pb2.Listener:
    """``name`` is both the listener's and the cluster's (``inbound|<port>``)."""
    out = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.INBOUND
    )
    http = listener_components_pb2.FilterChain(filters=[_network_filter(HCM_FILTER, _inbound_hcm(name))])
    tcp = listener_components_pb2.FilterChain(
        filters=[_network_filter(TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=name))]
    )
    if protocol in ("http1", "http2"):
        out.filter_chains.append(http)
    elif protocol == "tcp":
        out.filter_chains.append(tcp)
    else:
        out.listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name=HTTP_INSPECTOR, typed_config=pack(http_inspector_pb2.HttpInspector())
            )
        )
        out.listener_filters_timeout.CopyFrom(duration(DETECT_TIMEOUT))
        out.continue_on_listener_filters_timeout = True
        http.filter_chain_match.application_protocols.extend(HTTP_APPLICATION_PROTOCOLS)
        out.filter_chains.extend([http, tcp])
    return out


def api_listener(name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(_rds(name, name)))
    )
