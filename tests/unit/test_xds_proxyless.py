"""Proxyless gRPC: listener names resolve as 0005 says, and the output stays within what gRPC's xDS
client accepts (the rules below are the ones gRPC C-core's parsers enforce with a NACK)."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_xds_golden import mesh_state, translate_case

from innermesh.xds.translate import translate
from innermesh.xds.translate.proxyless import resolve_listener_name, split_host_port
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, ProxyInfo, Resources

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
KNOWN_FILTERS = {ROUTER, "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _listener_problems(name: str, listener: Any) -> list[str]:
    any_hcm = listener.api_listener.api_listener
    if any_hcm.type_url != HCM:
        return [f"{name}: api_listener is not an HttpConnectionManager"]
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    any_hcm.Unpack(hcm)
    out = []
    names = [f.name for f in hcm.http_filters]
    types = [f.typed_config.type_url for f in hcm.http_filters]
    if not types or types[-1] != ROUTER or ROUTER in types[:-1] or len(set(names)) != len(names):
        out.append(f"{name}: the router must be the last HTTP filter, once")
    out += [f"{name}: unknown HTTP filter {t}" for t in types if t not in KNOWN_FILTERS]
    if not hcm.rds.config_source.HasField("ads") or hcm.rds.route_config_name != name:
        out.append(f"{name}: RDS must be over ADS, named like the listener")
    return out


def _route_problems(name: str, table: Any) -> list[str]:
    out = []
    domains = [d for vh in table.virtual_hosts for d in vh.domains]
    if name not in domains:
        out.append(f"{name}: no virtual host lists the name asked for")
    for vh in table.virtual_hosts:
        for r in vh.routes:
            where = f"{name}: route {r.name}"
            if r.match.WhichOneof("path_specifier") not in ("prefix", "path", "safe_regex"):
                out.append(f"{where}: path specifier {r.match.WhichOneof('path_specifier')} is not supported")
            action = r.route
            if action.HasField("retry_policy"):
                rp = action.retry_policy
                if rp.HasField("num_retries") and rp.num_retries.value == 0:
                    out.append(f"{where}: num_retries 0")
                if rp.HasField("retry_back_off") and not rp.retry_back_off.HasField("base_interval"):
                    out.append(f"{where}: retry_back_off without base_interval")
            if action.HasField("weighted_clusters"):
                weights = [c.weight.value for c in action.weighted_clusters.clusters if c.HasField("weight")]
                if len(weights) != len(action.weighted_clusters.clusters) or not any(weights):
                    out.append(f"{where}: every weighted cluster needs a weight, and one above 0")
            for hp in action.hash_policy:
                if hp.HasField("header") and not hp.header.header_name:
                    out.append(f"{where}: empty hash header")
            for key, cfg in r.typed_per_filter_config.items():
                if cfg.type_url not in KNOWN_FILTERS:
                    out.append(f"{where}: per-route config for unknown filter {key}")
    return out


def _cluster_problems(name: str, c: Any) -> list[str]:
    out = []
    if c.type == cluster_pb2.Cluster.EDS:
        if not c.eds_cluster_config.eds_config.HasField("ads"):
            out.append(f"{name}: EDS config source is not ADS")
    elif c.type == cluster_pb2.Cluster.LOGICAL_DNS:
        localities = c.load_assignment.endpoints
        if len(localities) != 1 or len(localities[0].lb_endpoints) != 1:
            out.append(f"{name}: LOGICAL_DNS needs exactly one locality and endpoint")
    else:
        out.append(
            f"{name}: discovery type {cluster_pb2.Cluster.DiscoveryType.Name(c.type)} is not supported"
        )
    if c.lb_policy not in (cluster_pb2.Cluster.ROUND_ROBIN, cluster_pb2.Cluster.RING_HASH):
        out.append(f"{name}: lb_policy {cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)} is not supported")
    return out


def _endpoint_problems(name: str, cla: Any) -> list[str]:
    out = []
    priorities: dict[int, set[str]] = {}
    addresses: list[tuple[str, int]] = []
    for loc in cla.endpoints:
        if not loc.HasField("locality") or loc.load_balancing_weight.value == 0:
            out.append(f"{name}: every locality needs the locality field and a weight")
        zones = priorities.setdefault(loc.priority, set())
        if loc.locality.zone in zones:
            out.append(f"{name}: locality {loc.locality.zone!r} twice in priority {loc.priority}")
        zones.add(loc.locality.zone)
        addresses += [
            (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
            for e in loc.lb_endpoints
        ]
        # gRPC skips UNHEALTHY and DRAINING endpoints, while the locality's weight (which splits its
        # calls between localities) would still count them.
        out += [
            f"{name}: endpoint {e.endpoint.address.socket_address.address} is {health_check_pb2.HealthStatus.Name(e.health_status)}"
            for e in loc.lb_endpoints
            if e.health_status not in (health_check_pb2.UNKNOWN, health_check_pb2.HEALTHY)
        ]
    if priorities and sorted(priorities) != list(range(len(priorities))):
        out.append(f"{name}: priorities {sorted(priorities)} have a gap")
    if len(addresses) != len(set(addresses)):
        out.append(f"{name}: duplicate endpoint address")
    return out


def grpc_problems(resources: Resources) -> list[str]:
    """What gRPC's xDS client would NACK (or silently mis-handle) in ``resources``."""
    out: list[str] = []
    for name, listener in resources[LISTENER].items():
        out += _listener_problems(name, listener)
    for name, table in resources[ROUTE].items():
        out += _route_problems(name, table)
    for name, cluster in resources[CLUSTER].items():
        out += _cluster_problems(name, cluster)
    for name, cla in resources[ENDPOINT].items():
        out += _endpoint_problems(name, cla)
    return out


def test_the_proxyless_golden_is_acceptable_to_grpc() -> None:
    """The recorded proxyless output breaks none of gRPC's rules."""
    assert grpc_problems(translate_case("proxyless")) == []


def test_the_checker_sees_what_grpc_would_reject() -> None:
    """The same rules flag the sidecar's output, which uses what gRPC does not accept (element-wise
    prefixes, LEAST_REQUEST, num_retries 0, endpoints that are down) - so the check above can fail."""
    problems = " ".join(
        p
        for case in ("match_precedence", "ring_hash", "timeouts_retry", "default_route")
        for p in grpc_problems(translate_case(case))
    )
    assert "path_separated_prefix is not supported" in problems
    assert "LEAST_REQUEST is not supported" in problems
    assert "num_retries 0" in problems
    assert "endpoint 10.0.0.2 is UNHEALTHY" in problems
    assert "endpoint 10.0.0.3 is DRAINING" in problems


def test_listener_names_resolve_like_the_virtual_host_domains() -> None:
    """Every domain form but the short name resolves from any namespace; the short name resolves in
    the client's namespace; port 80 may be left out; IPv6 ClusterIPs are bracketed."""
    state = mesh_state(
        """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80}, {name: grpc, port: 9090}, {name: dns, port: 53, protocol: UDP}]
"""
    )

    def resolves(name: str, namespace: str = "other") -> tuple[str, int] | None:
        found = resolve_listener_name(state, name, namespace)
        return (found[0].name, found[1].port) if found else None

    for name in (
        "web.shop.svc.cluster.local:9090",
        "web.shop.svc:9090",
        "web.shop:9090",
        "10.96.0.10:9090",
        "[fd00:10:96::10]:9090",
        "WEB.Shop:9090",
    ):
        assert resolves(name) == ("web", 9090), name
    assert resolves("web.shop") == ("web", 80)
    assert resolves("web:9090", namespace="shop") == ("web", 9090)
    for name in (
        "web:9090",
        "web.shop:9999",
        "web.shop:53",
        "web.shop.svc.example.org:9090",
        "web.shop:http",
        "10.96.0.99:80",
    ):
        assert resolves(name) is None, name
    assert split_host_port("[::1]") == ("::1", 80)
    assert split_host_port("[::1]x") is None


LB_TYPES = ("RoundRobin", "LeastRequest", "Random", "RingHash", "Maglev")
CONDITIONS: tuple[dict[str, bool], ...] = (
    {},
    {"ready": False},
    {"ready": False, "serving": True, "terminating": True},
    {"ready": False, "serving": False, "terminating": True},
)


@st.composite
def proxyless_mesh(draw: st.DrawFn) -> str:
    docs: list[str] = []
    zones = ["z1", "z2", "z3", None]
    for name in ("a", "b"):
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.{10 + len(docs)}\n  ports: [{{name: grpc, port: 50051}}]"
        )
        endpoints = [
            {
                "addresses": [f"10.0.{len(docs)}.{i}"],
                **({"zone": z} if (z := draw(st.sampled_from(zones))) else {}),
                "conditions": draw(st.sampled_from(CONDITIONS)),
            }
            for i in range(1, draw(st.integers(0, 4)) + 1)
        ]
        docs.append(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: {name}-x, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n"
            f"addressType: IPv4\nports: [{{name: grpc, port: 50051}}]\nendpoints: {endpoints}"
        )
        lb = draw(st.sampled_from(LB_TYPES))
        hashing = (
            "\n    consistentHash: {type: Header, header: {name: x-user}}"
            if lb in ("RingHash", "Maglev")
            else ""
        )
        docs.append(
            "apiVersion: mesh.innermesh.io/v1alpha1\nkind: BackendTrafficPolicy\n"
            f"metadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: {name}}}]\n"
            f"  loadBalancer:\n    type: {lb}\n    zoneAware: {draw(st.booleans())}{hashing}"
        )
    attempts = draw(st.sampled_from([None, 0, 1, 3]))
    retry = (
        ""
        if attempts is None
        else f"\n    retry: {{attempts: {attempts}, codes: [503], backoff: {draw(st.sampled_from(['0s', '10ms']))}}}"
    )
    docs.append(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n"
        "spec:\n  parentRefs: [{group: '', kind: Service, name: a}]\n  rules:\n"
        f"  - matches: [{{path: {{type: PathPrefix, value: {draw(st.sampled_from(['/', '/pkg.Svc', '/pkg.Svc/']))}}}}}]\n"
        f"    timeouts: {{backendRequest: 1s}}{retry}\n"
        f"    backendRefs: [{{name: a, port: 50051, weight: {draw(st.integers(0, 2))}}}, {{name: b, port: 50051, weight: {draw(st.integers(0, 2))}}}, {{name: zz, port: 50051}}]"
    )
    return "\n---\n".join(docs)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proxyless_mesh(), st.sampled_from(["z1", "z2", None]))
def test_proxyless_output_is_always_acceptable_to_grpc(manifests: str, zone: str | None) -> None:
    """Whatever the balancers, zones, endpoint readiness, weights, retries and prefixes, gRPC's rules
    hold."""
    proxy = ProxyInfo(node_id="grpc", kind="proxyless", namespace="shop", zone=zone)
    resources = translate(mesh_state(manifests), proxy, frozenset({"a.shop:50051", "b.shop:50051"}))
    assert sorted(resources[LISTENER]) == ["a.shop:50051", "b.shop:50051"]
    assert grpc_problems(resources) == []
