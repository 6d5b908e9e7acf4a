"""The xDS client's pure parts: references between resources, the resource cache, the backoff."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2

from innermesh.proxy.xdsclient import (
    ConfigRejected,
    Held,
    ResourceCache,
    backoff_delay,
    endpoint_names,
    held_resource,
    route_names,
)
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE


def packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def hcm(route: str) -> Any:
    return packed(hcm_pb2.HttpConnectionManager(rds=hcm_pb2.Rds(route_config_name=route)))


def cla(name: str) -> Any:
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name)


def chain(*configs: Any) -> Any:
    return listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=f"f{i}", typed_config=c) for i, c in enumerate(configs)]
    )


def test_route_names_come_from_every_hcm() -> None:
    """Filter chains, the default chain and an API listener all count; tcp_proxy names no route."""
    listener = listener_pb2.Listener(
        name="l",
        filter_chains=[chain(hcm("r1")), chain(packed(tcp_proxy_pb2.TcpProxy(cluster="c")))],
        default_filter_chain=chain(hcm("r2")),
    )
    assert route_names(listener) == {"r1", "r2"}
    api = listener_pb2.Listener(
        name="a:80", api_listener=api_listener_pb2.ApiListener(api_listener=hcm("a:80"))
    )
    assert route_names(api) == {"a:80"}


def test_endpoint_names_only_for_eds_clusters() -> None:
    """EDS clusters fetch their service_name, or their own name; STATIC clusters fetch nothing."""
    eds = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    assert endpoint_names(eds) == {"c"}
    eds.eds_cluster_config.service_name = "svc"
    assert endpoint_names(eds) == {"svc"}
    assert endpoint_names(cluster_pb2.Cluster(name="s", type=cluster_pb2.Cluster.STATIC)) == set()


def held(type_url: str, message: Any) -> Held:
    return held_resource(type_url, packed(message), "v1")


def test_a_resource_that_does_not_decode_is_rejected_by_name() -> None:
    """A listener whose HCM bytes are garbage, or a resource of another type, is refused, naming it."""
    garbage = any_pb2.Any(type_url=hcm("r").type_url, value=b"\xff\xff")
    listener = listener_pb2.Listener(name="l", filter_chains=[chain(garbage)])
    with pytest.raises(ConfigRejected, match="resource 'l': cannot decode"):
        held_resource(LISTENER, packed(listener), name_hint="l")
    with pytest.raises(ConfigRejected, match=r"type '.*Cluster' in a .*Listener response"):
        held_resource(LISTENER, packed(cluster_pb2.Cluster(name="c")), name_hint="c")


def test_cache_is_consistent_once_references_are_resolved() -> None:
    """LDS and CDS answered and every referenced route and assignment present (or known absent)."""
    cache = ResourceCache()
    assert not cache.consistent()
    cache.replace(
        LISTENER, {"l": held(LISTENER, listener_pb2.Listener(name="l", filter_chains=[chain(hcm("r"))]))}
    )
    cache.replace(CLUSTER, {"c": held(CLUSTER, cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS))})
    assert cache.wanted()[ROUTE] == {"r"} and cache.wanted()[ENDPOINT] == {"c"}
    assert cache.missing() == {ROUTE: {"r"}, ENDPOINT: {"c"}}
    cache.update(ROUTE, {"r": held(ROUTE, route_pb2.RouteConfiguration(name="r"))}, ())
    cache.update(ENDPOINT, {}, ["c"])  # delta: "c" does not exist
    assert cache.consistent()


def test_cache_gives_up_waiting_and_forgets_unsubscribed() -> None:
    """After the timeout, missing names count as absent; unsubscribed names leave the cache."""
    cache = ResourceCache()
    cache.replace(LISTENER, {})
    cache.replace(CLUSTER, {"c": held(CLUSTER, cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS))})
    assert not cache.consistent()
    cache.give_up_waiting()
    assert cache.consistent()
    cache.update(ENDPOINT, {"c": held(ENDPOINT, cla("c")), "old": held(ENDPOINT, cla("old"))}, ())
    cache.forget(ENDPOINT, {"c"})
    assert set(cache.held[ENDPOINT]) == {"c"}


@pytest.mark.parametrize(("attempt", "nominal"), [(0, 0.1), (1, 0.2), (3, 0.8), (6, 5.0), (40, 5.0)])
def test_backoff_is_jittered_within_half_to_full_nominal(attempt: int, nominal: float) -> None:
    """Doubling from 0.1 s to a 5 s cap, each delay in [nominal/2, nominal]."""
    rng = random.Random(7)
    delays = [backoff_delay(attempt, rng) for _ in range(200)]
    assert min(delays) >= nominal / 2 - 1e-9 and max(delays) <= nominal + 1e-9
    assert max(delays) - min(delays) > nominal / 4  # actually jittered
