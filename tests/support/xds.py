"""Shared pieces of the ADS server and client tests (no tests here).

- Hand-built Envoy resources: ``mesh(...)`` gives one listener -> route -> cluster -> endpoints chain
  per service, as a sidecar (a ``Listener`` with an HCM filter) or as proxyless gRPC sees it (an API
  listener named ``<service>:<port>``).
- ``FakeSource``: a ``ConfigSource`` that serves a ``Resources`` value per node id and counts calls.
- ``RawAds``: an ADS stream driven by hand, as Envoy would drive it, for protocol-level assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, ProxyInfo, ProxyKind, Resources

ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


def packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def _hcm(route: str) -> Any:
    router = hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router_pb2.Router()))
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=route,
        rds=hcm_pb2.Rds(config_source=ADS, route_config_name=route),
        http_filters=[router],
    )


def sidecar_listener(name: str, route: str, port: int = 15001) -> Any:
    hcm = listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=packed(_hcm(route))
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        ),
        filter_chains=[listener_components_pb2.FilterChain(filters=[hcm])],
    )


def api_listener(name: str) -> Any:
    """A proxyless gRPC client's listener: an API listener whose HCM fetches the route of its name."""
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=packed(_hcm(name)))
    )


def route_config(name: str, cluster: str, domains: Iterable[str] = ("*",)) -> Any:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    vhost = route_components_pb2.VirtualHost(name=name, domains=list(domains), routes=[route])
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost])


def eds_cluster(name: str) -> Any:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS, service_name=name),
        connect_timeout=duration_pb2.Duration(seconds=1),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )


def endpoints(name: str, ports: Iterable[int], host: str = "127.0.0.1") -> Any:
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                )
            )
        )
        for port in ports
    ]
    locality = endpoint_components_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(zone="z1"),
        # gRPC ignores localities without a weight.
        load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
        lb_endpoints=lb_endpoints,
    )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[locality])


def mesh(services: dict[str, list[int]], *, proxyless: bool = False) -> Resources:
    """One chain per service: sidecar listener ``l-<svc>`` -> route ``r-<svc>`` -> cluster ``c-<svc>``
    -> endpoints at the given ports; proxyless: API listener and route ``<svc>:80``."""
    out: Resources = {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}}
    for i, (svc, ports) in enumerate(sorted(services.items())):
        cluster = f"c-{svc}"
        if proxyless:
            name = f"{svc}:80"
            out[LISTENER][name] = api_listener(name)
            out[ROUTE][name] = route_config(name, cluster)
        else:
            out[LISTENER][f"l-{svc}"] = sidecar_listener(f"l-{svc}", f"r-{svc}", 15001 + i)
            out[ROUTE][f"r-{svc}"] = route_config(f"r-{svc}", cluster)
        out[CLUSTER][cluster] = eds_cluster(cluster)
        out[ENDPOINT][cluster] = endpoints(cluster, ports)
    return out


def node(node_id: str, **metadata: str) -> Any:
    n = base_pb2.Node(id=node_id)
    for k, v in metadata.items():
        n.metadata.fields[k].string_value = v
    return n


def proxy_info(n: Any) -> ProxyInfo:
    """The tests' identity rule: ids starting with ``bad`` are refused, ``grpc`` ones are proxyless."""
    node_id = str(n.id)
    if node_id.startswith("bad"):
        raise ValueError(f"id: {node_id!r} is not a proxy this server knows")
    kind: ProxyKind = "proxyless" if node_id.startswith("grpc") else "sidecar"
    namespace = n.metadata.fields["NAMESPACE"].string_value or "default"
    return ProxyInfo(node_id=node_id, kind=kind, namespace=namespace)


class FakeSource:
    """A ConfigSource serving ``configs[node_id]`` (or ``default``). ``listener_names`` given, it keeps
    the named listeners and everything else (the server filters the rest by subscription)."""

    def __init__(self, default: Resources | None = None) -> None:
        self.default: Resources = default or {}
        self.configs: dict[str, Resources] = {}
        self.calls: Counter[str] = Counter()  # by node id
        self._callbacks: list[Callable[[], None]] = []

    def generate(self, proxy: ProxyInfo, listener_names: frozenset[str] | None) -> Resources:
        self.calls[proxy.node_id] += 1
        config = self.configs.get(proxy.node_id, self.default)
        if listener_names is None:
            return config
        out = dict(config)
        out[LISTENER] = {n: m for n, m in config.get(LISTENER, {}).items() if n in listener_names}
        return out

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def set(self, config: Resources, node_id: str | None = None) -> None:
        if node_id is None:
            self.default = config
        else:
            self.configs[node_id] = config
        self.changed()

    def changed(self) -> None:
        for callback in self._callbacks:
            callback()


class RawAds:
    """One ADS stream (``sotw`` or ``delta``) driven request by request.

    Responses are read by a task into a queue: cancelling a pending ``read()`` would cancel the RPC.
    """

    def __init__(self, port: int, variant: str = "sotw") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources() if variant == "sotw" else stub.DeltaAggregatedResources()
        self.delta = variant == "delta"
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                response = await self.call.read()
                await self._responses.put(response)
                if response is grpc.aio.EOF:
                    return
        except grpc.aio.AioRpcError as e:
            await self._responses.put(e)

    async def send(self, **fields: Any) -> None:
        cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        await self.call.write(cls(**fields))

    async def next(self, wait: float = 3.0) -> Any:
        """The next response, EOF, or the RPC's error raised, within ``wait`` seconds."""
        async with asyncio.timeout(wait):
            item = await self._responses.get()
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    async def recv(self, wait: float = 3.0) -> Any:
        response = await self.next(wait)
        assert response is not grpc.aio.EOF, "the server ended the stream"
        return response

    async def nothing(self, wait: float = 0.4) -> None:
        """Assert that no response arrives within ``wait`` seconds."""
        await asyncio.sleep(wait)
        assert self._responses.empty(), f"expected no response, got {self._responses.get_nowait()}"

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.channel.close()


def names(response: Any) -> list[str]:
    """The resource names in a response of either variant (SotW: decoded from the messages)."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    out = []
    for r in response.resources:
        cls = {
            LISTENER: listener_pb2.Listener,
            ROUTE: route_pb2.RouteConfiguration,
            CLUSTER: cluster_pb2.Cluster,
            ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
        }[r.type_url]
        m = cls()
        m.ParseFromString(r.value)
        out.append(m.cluster_name if r.type_url == ENDPOINT else m.name)
    return out
