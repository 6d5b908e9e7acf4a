"""The xDS client's pure parts: references between resources, resource sets and changes, the SotW
link's requests, the backoff."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from innermesh.proxy.xdsclient import (
    Change,
    ConfigRejected,
    Held,
    ResourceSet,
    SotwLink,
    XdsClientState,
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


def eds(name: str) -> Held:
    return held(CLUSTER, cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS))


def listener(name: str, route: str) -> Held:
    return held(LISTENER, listener_pb2.Listener(name=name, filter_chains=[chain(hcm(route))]))


def test_a_set_knows_what_it_references_and_what_is_missing() -> None:
    """Routes and endpoint assignments named by the set's listeners and clusters, less those held or
    known not to exist, are missing."""
    rs = ResourceSet({LISTENER: {"l": listener("l", "r")}, CLUSTER: {"c": eds("c"), "d": eds("d")}})
    assert rs.referenced(ROUTE) == {"r"} and rs.referenced(ENDPOINT) == {"c", "d"}
    assert rs.missing({}) == {ROUTE: {"r"}, ENDPOINT: {"c", "d"}}
    rs = rs.updated([Change(ROUTE, {"r": held(ROUTE, route_pb2.RouteConfiguration(name="r"))})])
    assert rs.missing({ENDPOINT: {"d"}}) == {ROUTE: set(), ENDPOINT: {"c"}}


def test_changes_replace_whole_types_or_update_names_and_drop_what_nothing_names() -> None:
    """A whole change replaces its type; others add, replace and remove names; routes and endpoint
    assignments no longer named leave the set; the original set is unchanged."""
    a, b = held(ENDPOINT, cla("a")), held(ENDPOINT, cla("b"))
    base = ResourceSet({CLUSTER: {"a": eds("a"), "b": eds("b")}, ENDPOINT: {"a": a, "b": b}})
    newer_a = held_resource(ENDPOINT, packed(cla("a")), "v2")
    updated = base.updated([Change(ENDPOINT, {"a": newer_a}, frozenset({"b"}))])
    assert updated.versions()[ENDPOINT] == {"a": "v2"}
    assert base.versions()[ENDPOINT] == {"a": "v1", "b": "v1"}

    only_b = base.updated([Change(CLUSTER, {"b": eds("b")}, whole=True)])
    assert set(only_b.held(CLUSTER)) == {"b"} and set(only_b.held(ENDPOINT)) == {"b"}
    assert only_b.resources()[ENDPOINT]["b"] is b.message

    part = Change(ENDPOINT, {"a": a, "b": b}, frozenset({"c"})).only({"b", "c"})
    assert (set(part.resources), part.removed, part.whole) == ({"b"}, frozenset({"c"}), False)


class FakeCall:
    """The write side of a stream: what a link sends."""

    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, request: Any) -> None:
        self.written.append(request)


def sotw_response(type_url: str, nonce: str, *messages: Any) -> Any:
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url, nonce=nonce, version_info=f"v{nonce}", resources=[packed(m) for m in messages]
    )


async def test_sotw_link_sends_a_subscription_again_when_a_newer_response_crossed_it() -> None:
    """A subscription change sent with nonce 1 while response 2 was on its way is stale for the
    server, which may ignore it: once response 2 arrives, the link sends it again with nonce 2."""
    call = FakeCall()
    link = SotwLink(call, base_pb2.Node(id="n"), XdsClientState("s", "sotw"))
    wanted = {CLUSTER: frozenset({"*"}), LISTENER: frozenset({"*"}), ROUTE: frozenset()}
    await link.subscribe({**wanted, ENDPOINT: frozenset({"a"})}, ResourceSet())
    link.receive(sotw_response(ENDPOINT, "1", cla("a")))
    await link.subscribe({**wanted, ENDPOINT: frozenset({"a"})}, ResourceSet())
    assert len(call.written) == 3, "a first subscription has no nonce and is never stale: no resend"

    await link.subscribe({**wanted, ENDPOINT: frozenset({"a", "b"})}, ResourceSet())
    assert (call.written[-1].response_nonce, list(call.written[-1].resource_names)) == ("1", ["a", "b"])
    received = link.receive(sotw_response(ENDPOINT, "2", cla("a")))
    await link.subscribe({**wanted, ENDPOINT: frozenset({"a", "b"})}, ResourceSet())
    again = call.written[-1]
    assert (again.response_nonce, list(again.resource_names), again.version_info) == ("2", ["a", "b"], "")
    assert not again.HasField("error_detail")

    written = len(call.written)
    await link.subscribe({**wanted, ENDPOINT: frozenset({"a", "b"})}, ResourceSet())
    await link.answer(received.pending, None)
    assert len(call.written) == written + 1 and call.written[-1].version_info == "v2"


@pytest.mark.parametrize(("attempt", "nominal"), [(0, 0.1), (1, 0.2), (3, 0.8), (6, 5.0), (40, 5.0)])
def test_backoff_is_jittered_within_half_to_full_nominal(attempt: int, nominal: float) -> None:
    """Doubling from 0.1 s to a 5 s cap, each delay in [nominal/2, nominal]."""
    rng = random.Random(7)
    delays = [backoff_delay(attempt, rng) for _ in range(200)]
    assert min(delays) >= nominal / 2 - 1e-9 and max(delays) <= nominal + 1e-9
    assert max(delays) - min(delays) > nominal / 4  # actually jittered
