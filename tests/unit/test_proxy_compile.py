"""compile_plan: hand-built Envoy v3 resources (as the translator writes them) into a plan, the
exact PlanError for what the sidecar does not implement, and state carried across plans."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2

from innermesh.proxy.balance import BalancedCluster
from innermesh.proxy.compile import PlanError, compile_plan
from innermesh.proxy.matching import ConnectMatch, ExactPath, RegexPath, SeparatedPrefixPath
from innermesh.proxy.plan import (
    DirectResponse,
    Forward,
    HashPolicy,
    Mirror,
    PickContext,
    Plan,
    Redirect,
    RequestHead,
    RetryPolicy,
)
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources

SVC = "outbound|8080||echo.ns.svc.cluster.local"


def pack(msg: Any) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def hcm(rds: str | None = "outbound", *, fault_filter: bool = True) -> hcm_pb2.HttpConnectionManager:
    m = hcm_pb2.HttpConnectionManager(stat_prefix="outbound", codec_type=hcm_pb2.HttpConnectionManager.AUTO)
    if rds is not None:
        m.rds.route_config_name = rds
        m.rds.config_source.ads.SetInParent()
    if fault_filter:
        m.http_filters.add(name="envoy.filters.http.fault", typed_config=pack(fault_pb2.HTTPFault()))
    m.http_filters.add(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    m.upgrade_configs.add(upgrade_type="websocket")
    m.upgrade_configs.add(upgrade_type="CONNECT")
    return m


def listener(
    name: str, host: str, port: int, *chains: listener_components_pb2.FilterChain
) -> listener_pb2.Listener:
    m = listener_pb2.Listener(name=name)
    m.address.socket_address.address = host
    m.address.socket_address.port_value = port
    m.filter_chains.extend(chains)
    return m


def http_chain(config: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.FilterChain:
    c = listener_components_pb2.FilterChain()
    c.filters.add(name="envoy.filters.network.http_connection_manager", typed_config=pack(config))
    return c


def tcp_chain(cluster: str) -> listener_components_pb2.FilterChain:
    c = listener_components_pb2.FilterChain()
    c.filters.add(
        name="envoy.filters.network.tcp_proxy",
        typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster=cluster)),
    )
    return c


def header_option(key: str, value: str, action: int) -> base_pb2.HeaderValueOption:
    o = base_pb2.HeaderValueOption(append_action=action)
    o.header.key, o.header.value = key, value
    return o


def route_config() -> route_pb2.RouteConfiguration:
    """One virtual host using every field of the Gateway API mapping table."""
    cfg = route_pb2.RouteConfiguration(name="outbound")
    vh = cfg.virtual_hosts.add(
        name="echo.ns:8080", domains=["echo.ns.svc.cluster.local:8080", "echo.ns:8080", "10.96.0.10:8080"]
    )

    r = vh.routes.add(name="exact")
    r.match.path = "/exact"
    h = r.match.headers.add(name=":method")
    h.string_match.exact = "POST"
    q = r.match.query_parameters.add(name="v")
    q.string_match.safe_regex.regex = r"\d+"
    wc = r.route.weighted_clusters
    a = wc.clusters.add(name=SVC)
    a.weight.value = 80
    a.request_headers_to_add.append(header_option("x-backend", "a", 2))
    a.response_headers_to_remove.append("x-internal")
    b = wc.clusters.add(name="invalid|ns/route/0/1")
    b.weight.value = 20
    r.route.cluster_not_found_response_code = rc.RouteAction.INTERNAL_SERVER_ERROR
    r.request_headers_to_add.append(header_option("x-set", "1", 2))
    r.request_headers_to_add.append(header_option("x-add", "2", 0))
    r.request_headers_to_add.append(header_option("x-pct", "100%%", 0))
    r.request_headers_to_remove.append("X-Remove")
    r.response_headers_to_add.append(header_option("x-served-by", "mesh", 2))

    r = vh.routes.add(name="prefix")
    r.match.path_separated_prefix = "/api"
    hm = r.match.headers.add(name="x-env")
    hm.string_match.prefix = "can"
    r.route.cluster = SVC
    r.route.prefix_rewrite = "/"
    r.route.host_rewrite_literal = "backend.local"
    r.route.timeout.seconds = 3
    rp = r.route.retry_policy
    rp.retry_on = "retriable-status-codes,connect-failure,reset"
    rp.retriable_status_codes.extend([503, 502])
    rp.num_retries.value = 3
    rp.per_try_timeout.nanos = 500_000_000
    rp.retry_back_off.base_interval.nanos = 50_000_000
    m = r.route.request_mirror_policies.add(cluster="outbound|80||mirror.ns.svc.cluster.local")
    m.runtime_fraction.default_value.numerator = 25
    m2 = r.route.request_mirror_policies.add(cluster="outbound|80||all.ns.svc.cluster.local")
    del m2
    hp = r.route.hash_policy.add()
    hp.header.header_name = "X-User"
    hp2 = r.route.hash_policy.add(terminal=True)
    hp2.cookie.name = "session"
    hp2.cookie.ttl.seconds = 3600
    r.route.hash_policy.add().connection_properties.source_ip = True
    fault = fault_pb2.HTTPFault()
    fault.delay.fixed_delay.seconds = 2
    fault.delay.percentage.numerator = 50
    fault.abort.http_status = 503
    fault.abort.percentage.numerator = 10
    fault.abort.percentage.denominator = percent_pb2.FractionalPercent.TEN_THOUSAND
    r.typed_per_filter_config["envoy.filters.http.fault"].CopyFrom(pack(fault))

    r = vh.routes.add(name="regex")
    r.match.safe_regex.regex = r"/v\d+/.*"
    r.route.cluster = SVC
    r.route.regex_rewrite.pattern.regex = r"^/v\d+/(.*)$"
    r.route.regex_rewrite.substitution = r"/\1"
    r.route.timeout.SetInParent()  # 0s: no timeout

    r = vh.routes.add(name="redirect")
    r.match.prefix = "/old"
    r.redirect.scheme_redirect = "https"
    r.redirect.host_redirect = "new.example"
    r.redirect.prefix_rewrite = "/new"
    r.redirect.response_code = rc.RedirectAction.PERMANENT_REDIRECT

    r = vh.routes.add(name="teapot")
    r.match.prefix = "/teapot"
    r.direct_response.status = 418
    r.direct_response.body.inline_string = "short and stout"

    r = vh.routes.add(name="connect")
    r.match.connect_matcher.SetInParent()
    r.route.cluster = SVC
    r.route.upgrade_configs.add(upgrade_type="CONNECT").connect_config.SetInParent()

    r = vh.routes.add(name="default")
    r.match.prefix = "/"
    r.route.cluster = SVC
    return cfg


def eds_cluster(name: str = SVC, policy: int = cluster_pb2.Cluster.ROUND_ROBIN) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, lb_policy=policy)
    c.eds_cluster_config.service_name = name
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.connect_timeout.seconds = 2
    return c


def assignment(
    name: str = SVC, *groups: tuple[str, int, list[tuple[str, int, int]]]
) -> endpoint_pb2.ClusterLoadAssignment:
    """groups: (zone, priority, [(address, weight, health_status)])."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for zone, priority, members in groups:
        g = cla.endpoints.add(priority=priority)
        g.locality.zone = zone
        for address, weight, health in members:
            e = g.lb_endpoints.add(health_status=health)
            e.endpoint.address.socket_address.address = address
            e.endpoint.address.socket_address.port_value = 8080
            e.load_balancing_weight.value = weight
    return cla


def resources() -> Resources:
    inbound = listener(
        "inbound|8080", "10.1.0.5", 8080, http_chain(hcm("inbound|8080")), tcp_chain("inbound|8080")
    )
    inbound.filter_chains[0].filter_chain_match.application_protocols.extend(["http/1.1", "h2c"])
    inbound.listener_filters.add(
        name="envoy.filters.listener.http_inspector", typed_config=pack(http_inspector_pb2.HttpInspector())
    )
    inbound.traffic_direction = base_pb2.INBOUND
    inbound.continue_on_listener_filters_timeout = True
    inbound.listener_filters_timeout.nanos = 250_000_000
    static = cluster_pb2.Cluster(name="inbound|8080", type=cluster_pb2.Cluster.STATIC)
    static.load_assignment.CopyFrom(assignment("inbound|8080", ("", 0, [("127.0.0.1", 1, 0)])))
    h2 = eds_cluster("outbound|9090||grpc.ns.svc.cluster.local", cluster_pb2.Cluster.LEAST_REQUEST)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    options.common_http_protocol_options.idle_timeout.seconds = 30
    options.common_http_protocol_options.max_requests_per_connection.value = 100
    h2.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
        pack(options)
    )
    t = h2.circuit_breakers.thresholds.add()
    t.max_connections.value, t.max_pending_requests.value, t.max_requests.value = 10, 20, 30
    return {
        LISTENER: {
            "outbound": listener("outbound", "127.0.0.1", 15001, http_chain(hcm())),
            "inbound|8080": inbound,
            "inbound|5432": listener("inbound|5432", "10.1.0.5", 5432, tcp_chain("inbound|5432")),
        },
        ROUTE: {"outbound": route_config()},
        CLUSTER: {
            SVC: eds_cluster(),
            "inbound|8080": static,
            "outbound|9090||grpc.ns.svc.cluster.local": h2,
        },
        ENDPOINT: {
            SVC: assignment(
                SVC,
                ("zone-a", 0, [("10.1.0.7", 1, 1), ("10.1.0.8", 2, 0), ("10.1.0.9", 1, 2)]),
                ("zone-b", 1, [("10.2.0.7", 1, 1)]),
            ),
        },
    }


def head(
    path: bytes, query: bytes = b"", method: bytes = b"GET", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> RequestHead:
    return RequestHead(method, path, query, b"echo.ns:8080", list(headers))


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_plan(resources(), None, version="v1", rng=random.Random(1))


# --- listeners ---------------------------------------------------------------------------------------------


def test_listeners_by_protocol(plan: Plan) -> None:
    """HCM -> http, tcp_proxy -> tcp, both with the http_inspector -> detect."""
    out = plan.listeners["outbound"]
    assert (out.host, out.port, out.direction, out.protocol, out.route_table) == (
        "127.0.0.1",
        15001,
        "outbound",
        "http",
        "outbound",
    )
    detect = plan.listeners["inbound|8080"]
    assert (
        detect.direction,
        detect.protocol,
        detect.route_table,
        detect.tcp_cluster,
        detect.detect_timeout,
    ) == (
        "inbound",
        "detect",
        "inbound|8080",
        "inbound|8080",
        0.25,
    )
    tcp = plan.listeners["inbound|5432"]
    assert (tcp.direction, tcp.protocol, tcp.route_table, tcp.tcp_cluster) == (
        "inbound",
        "tcp",
        None,
        "inbound|5432",
    )


def test_a_route_table_not_received_yet_answers_no_route(plan: Plan) -> None:
    """The inbound listener names RDS "inbound|8080", absent here: an empty table, not a KeyError."""
    assert plan.route_tables["inbound|8080"].lookup(b"anything") is None


# --- routes ---------------------------------------------------------------------------------------------


def test_routes_compile_every_mapped_field(plan: Plan) -> None:
    """Weighted clusters with per-backend headers and 500 for unresolvable refs, rule headers."""
    vhost = plan.route_tables["outbound"].lookup(b"echo.ns:8080")
    assert vhost is not None
    assert plan.route_tables["outbound"].lookup(b"10.96.0.10:8080") is vhost
    exact = vhost.routes[0]
    assert isinstance(exact.match, ExactPath)
    assert isinstance(exact.action, Forward)
    assert exact.action.missing_cluster_status == 500
    assert exact.action.timeout == 15.0  # Envoy's default route timeout
    assert [(b.cluster, b.weight) for b in exact.action.backends] == [(SVC, 80), ("invalid|ns/route/0/1", 20)]
    backend = exact.action.backends[0]
    assert backend.request_headers is not None
    assert backend.request_headers.set == ((b"x-backend", b"a"),)
    assert backend.response_headers is not None
    assert backend.response_headers.remove == frozenset({b"x-internal"})
    assert exact.request_headers is not None
    assert exact.request_headers.set == ((b"x-set", b"1"),)
    assert exact.request_headers.add == ((b"x-add", b"2"), (b"x-pct", b"100%"))
    assert exact.request_headers.remove == frozenset({b"x-remove"})
    assert exact.response_headers is not None
    assert exact.response_headers.set == ((b"x-served-by", b"mesh"),)


def test_forward_details(plan: Plan) -> None:
    """Rewrites, timeout, retry, mirrors, hash policies, fault."""
    vhost = plan.route_tables["outbound"].virtual_hosts[0]
    route = vhost.routes[1]
    assert isinstance(route.match, SeparatedPrefixPath)
    f = route.action
    assert isinstance(f, Forward)
    assert f.host_rewrite == b"backend.local"
    assert f.path_rewrite is not None
    assert f.path_rewrite.apply(b"/api/users") == b"/users"
    assert f.timeout == 3.0
    assert f.retry == RetryPolicy(
        attempts=3,
        on_status=frozenset({502, 503}),
        on_connect_failure=True,
        on_reset=True,
        backoff_base=0.05,
        per_try_timeout=0.5,
        on_refused_stream=True,  # a refused stream is a reset
    )
    assert f.mirrors == (
        Mirror("outbound|80||mirror.ns.svc.cluster.local", 250_000),
        Mirror("outbound|80||all.ns.svc.cluster.local", 1_000_000),
    )
    assert f.hash_policies == (
        HashPolicy("header", b"x-user"),
        HashPolicy("cookie", b"session", cookie_ttl=3600.0, terminal=True),
        HashPolicy("source_ip"),
    )
    assert route.fault is not None
    assert (route.fault.delay, route.fault.delay_per_million) == (2.0, 500_000)
    assert (route.fault.abort_http_status, route.fault.abort_per_million) == (503, 1_000)

    regex = vhost.routes[2]
    assert isinstance(regex.match, RegexPath)
    assert isinstance(regex.action, Forward)
    assert regex.action.timeout is None
    assert regex.action.path_rewrite is not None
    assert regex.action.path_rewrite.apply(b"/v2/users") == b"/users"

    connect = vhost.routes[5]
    assert isinstance(connect.match, ConnectMatch)
    assert isinstance(connect.action, Forward)
    assert connect.action.tunnel


def test_redirect_and_direct_response(plan: Plan) -> None:
    vhost = plan.route_tables["outbound"].virtual_hosts[0]
    redirect = vhost.routes[3].action
    assert isinstance(redirect, Redirect)
    assert redirect.status == 308
    assert redirect.location(head(b"/old/page", b"a=1")) == b"https://new.example/new/page?a=1"
    teapot = vhost.routes[4].action
    assert teapot == DirectResponse(418, b"short and stout")


SELECTIONS = [
    (head(b"/exact", b"v=12", b"POST"), "exact"),
    (head(b"/exact", b"v=x", b"POST"), "default"),  # the query regex fails
    (head(b"/exact", b"v=12", b"GET"), "default"),  # the method fails
    (head(b"/api/x", headers=((b"x-env", b"canary"),)), "prefix"),
    (head(b"/apix", headers=((b"x-env", b"canary"),)), "default"),
    (head(b"/v3/users"), "regex"),
    (head(b"/old"), "redirect"),
    (head(b"/teapot/spout"), "teapot"),
    (head(b"", method=b"CONNECT"), "connect"),
    (head(b"/"), "default"),
]


@pytest.mark.parametrize(("request_head", "expected"), SELECTIONS)
def test_requests_select_routes_in_order(plan: Plan, request_head: RequestHead, expected: str) -> None:
    """The runtime's path: lookup by authority, then the first route whose match holds."""
    vhost = plan.route_tables["outbound"].lookup(b"echo.ns:8080")
    assert vhost is not None
    route = vhost.select(request_head)
    assert route is not None
    assert route.name == expected


# --- clusters ---------------------------------------------------------------------------------------------


def test_clusters_and_endpoints(plan: Plan) -> None:
    """Zones, priorities, weights and health from EDS; limits and HTTP/2 from the Cluster."""
    c = plan.clusters[SVC]
    assert (c.lb_policy, c.protocol, c.limits.connect_timeout) == ("round_robin", "http1", 2.0)
    assert [(e.host, e.zone, e.priority, e.weight, e.healthy) for e in c.endpoints] == [
        ("10.1.0.7", "zone-a", 0, 1, True),
        ("10.1.0.8", "zone-a", 0, 2, True),  # UNKNOWN counts as healthy
        ("10.1.0.9", "zone-a", 0, 1, False),  # UNHEALTHY
        ("10.2.0.7", "zone-b", 1, 1, True),
    ]
    grpc = plan.clusters["outbound|9090||grpc.ns.svc.cluster.local"]
    assert (grpc.lb_policy, grpc.protocol) == ("least_request", "http2")
    limits = grpc.limits
    assert (limits.max_connections, limits.max_pending_requests, limits.max_requests) == (10, 20, 30)
    assert (limits.idle_timeout, limits.max_requests_per_connection) == (30.0, 100)
    assert grpc.pick(PickContext()) is None  # EDS not received: no endpoints, a 503
    static = plan.clusters["inbound|8080"]
    e = static.pick(PickContext())
    assert e is not None
    assert (e.host, e.port) == ("127.0.0.1", 8080)


def test_picks_stay_in_the_local_zone_while_it_is_healthy(plan: Plan) -> None:
    """Zone-a (priority 0) has 2 of 3 endpoints healthy: 2/3 x 1.4 = 93% stays local."""
    c = plan.clusters[SVC]
    picks = [c.pick(PickContext()) for _ in range(3000)]
    zones = [p.zone for p in picks if p is not None]
    assert 0.90 < zones.count("zone-a") / 3000 < 0.96
    assert all(p is not None and p.host != "10.1.0.9" for p in picks)


# --- state across plans ---------------------------------------------------------------------------------


def test_endpoint_state_survives_a_plan_swap() -> None:
    """Same cluster, same address: the new plan's endpoint shares the in-flight count of the old one
    (whatever else changed about it), so requests that started on the old plan end on the same count."""
    res = resources()
    first = compile_plan(res, None, version="1")
    kept = next(e for e in first.clusters[SVC].endpoints if e.host == "10.1.0.7")
    kept.active = 4
    res[ENDPOINT][SVC] = assignment(SVC, ("zone-a", 0, [("10.1.0.7", 5, 1), ("10.1.0.50", 1, 1)]))
    second = compile_plan(res, first, version="2")
    after = {e.host: e for e in second.clusters[SVC].endpoints}
    assert (after["10.1.0.7"].active, after["10.1.0.7"].weight) == (4, 5)
    after["10.1.0.7"].active -= 1  # a request begun on the first plan ends
    kept.active += 2  # two begin on the first plan's objects (connections that kept it)
    assert after["10.1.0.7"].active == kept.active == 5
    assert after["10.1.0.50"].active == 0
    assert set(after) == {"10.1.0.7", "10.1.0.50"}


def test_a_plan_that_is_never_installed_changes_nothing_in_the_running_one() -> None:
    """A plan compiled and then not installed (the runtime may refuse it, e.g. a listener that cannot
    bind) leaves every endpoint of the running plan as it was, and the running least-request and
    round-robin pickers keep the weights they were built with."""
    res = resources()
    res[CLUSTER][SVC].lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
    first = compile_plan(res, None, version="1")
    running = first.clusters[SVC]

    def seen() -> list[tuple[str, str, int, int, bool]]:
        return [(e.host, e.zone, e.priority, e.weight, e.healthy) for e in running.endpoints]

    before = seen()
    res[ENDPOINT][SVC] = assignment(
        SVC, ("zone-b", 1, [("10.1.0.7", 9, 2), ("10.1.0.8", 1, 2), ("10.1.0.9", 3, 1)])
    )
    compile_plan(res, first, version="2")
    assert seen() == before
    light = next(e for e in running.endpoints if e.host == "10.1.0.7")
    heavy = next(e for e in running.endpoints if e.host == "10.1.0.8")
    light.active, heavy.active = 1, 1  # per unit of weight the weight-2 endpoint is less loaded
    picks = [running.pick(PickContext()) for _ in range(400)]
    assert sum(1 for p in picks if p is heavy) > sum(1 for p in picks if p is light)


def test_unchanged_clusters_and_virtual_hosts_are_reused() -> None:
    """An endpoint change elsewhere keeps other clusters (rings, round-robin position) and vhosts."""
    res = resources()
    first = compile_plan(res, None, version="1")
    res[ENDPOINT][SVC] = assignment(SVC, ("zone-a", 0, [("10.1.0.60", 1, 1)]))
    second = compile_plan(res, first, version="2")
    assert second.clusters["inbound|8080"] is first.clusters["inbound|8080"]
    assert second.clusters[SVC] is not first.clusters[SVC]
    assert second.route_tables["outbound"].virtual_hosts[0] is first.route_tables["outbound"].virtual_hosts[0]
    assert isinstance(second.clusters[SVC], BalancedCluster)


@pytest.mark.parametrize("policy", [cluster_pb2.Cluster.MAGLEV, cluster_pb2.Cluster.RING_HASH])
def test_a_change_in_another_zone_keeps_the_local_table(policy: int) -> None:
    """Maglev and ring hash: an endpoint of the other zone going down, or a not-ready endpoint
    joining the local zone, rebuilds no table whose endpoints did not change (a Maglev table is
    65,537 slots to fill); a change among the local zone's healthy endpoints rebuilds its table."""
    res = resources()
    res[CLUSTER][SVC].lb_policy = policy
    first = compile_plan(res, None, version="1")
    local = ("zone-a", 0, [("10.1.0.7", 1, 1), ("10.1.0.8", 2, 0), ("10.1.0.9", 1, 2), ("10.1.0.10", 1, 2)])
    res[ENDPOINT][SVC] = assignment(SVC, local, ("zone-b", 1, [("10.2.0.7", 1, 2), ("10.2.0.8", 1, 1)]))
    second = compile_plan(res, first, version="2")
    one, two = first.clusters[SVC], second.clusters[SVC]
    assert isinstance(one, BalancedCluster)
    assert isinstance(two, BalancedCluster)
    assert two is not one
    assert two.levels[0].picker is one.levels[0].picker
    assert two.levels[1].picker is not one.levels[1].picker
    assert all(two.pick(PickContext(hash=h)) in two.endpoints for h in range(0, 2**64, 2**58))
    res[ENDPOINT][SVC] = assignment(SVC, ("zone-a", 0, [("10.1.0.7", 3, 1), ("10.1.0.8", 2, 0)]))
    three = compile_plan(res, second, version="3").clusters[SVC]
    assert isinstance(three, BalancedCluster)
    assert three.levels[0].picker is not two.levels[0].picker


def test_a_rejected_update_leaves_the_previous_plan_alone() -> None:
    """Nothing is changed in the running plan until every resource compiled."""
    res = resources()
    first = compile_plan(res, None, version="1")
    res[ENDPOINT][SVC] = assignment(SVC, ("zone-a", 0, [("10.1.0.7", 9, 1)]))
    res[ROUTE]["outbound"].virtual_hosts[0].routes[0].match.path_match_policy.name = "x"
    with pytest.raises(PlanError):
        compile_plan(res, first, version="2")
    assert next(e for e in first.clusters[SVC].endpoints if e.host == "10.1.0.7").weight == 1


def test_a_thousand_routes_compile_quickly() -> None:
    """~1000 rich routes well under 100 ms on first compile (bound generous for a loaded CI box);
    a recompile with unchanged routes reuses every virtual host."""
    cfg = route_pb2.RouteConfiguration(name="outbound")
    for v in range(100):
        vh = cfg.virtual_hosts.add(name=f"s{v}", domains=[f"s{v}.ns:80", f"s{v}.ns"])
        for i in range(10):
            r = vh.routes.add()
            r.match.path_separated_prefix = f"/api/v{i}"
            r.match.headers.add(name="x-user").string_match.exact = "bob"
            r.route.weighted_clusters.clusters.add(name=f"a{v}").weight.value = 90
            r.route.weighted_clusters.clusters.add(name=f"b{v}").weight.value = 10
            r.route.retry_policy.retry_on = "5xx"
            r.request_headers_to_add.append(header_option("x-a", "1", 2))
    res: Resources = {ROUTE: {"outbound": cfg}}
    started = time.perf_counter()
    first = compile_plan(res, None, version="1")
    assert time.perf_counter() - started < 0.25
    started = time.perf_counter()
    second = compile_plan(res, first, version="2")
    assert time.perf_counter() - started < 0.05
    assert all(
        a is b
        for a, b in zip(
            first.route_tables["outbound"].virtual_hosts,
            second.route_tables["outbound"].virtual_hosts,
            strict=True,
        )
    )


# --- what the sidecar refuses, and the exact message ---------------------------------------------------------


def _refuse(change: Any) -> str:
    res = resources()
    change(res)
    with pytest.raises(PlanError) as e:
        compile_plan(res, None, version="x")
    return str(e.value)


def _route(res: Resources, index: int = 0) -> rc.Route:
    route: rc.Route = res[ROUTE]["outbound"].virtual_hosts[0].routes[index]
    return route


def _set_path_match_policy(res: Resources) -> None:
    _route(res).match.path_match_policy.name = "envoy.path.match.uri_template.uri_template_matcher"


def _lookahead(res: Resources) -> None:
    _route(res, 2).match.safe_regex.regex = "/(?!admin).*"


def _unknown_http_filter(res: Resources) -> None:
    m = hcm()
    m.http_filters.insert(
        0, hcm_pb2.HttpFilter(name="envoy.filters.http.cors", typed_config=pack(router_pb2.Router()))
    )
    m.http_filters[0].typed_config.type_url = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
    res[LISTENER]["outbound"] = listener("outbound", "127.0.0.1", 15001, http_chain(m))


def _cluster_provided(res: Resources) -> None:
    res[CLUSTER][SVC].lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED


def _outlier_detection(res: Resources) -> None:
    res[CLUSTER][SVC].outlier_detection.consecutive_5xx.value = 5


def _host_header(res: Resources) -> None:
    _route(res).request_headers_to_add.append(header_option("Host", "x", 2))


def _formatter(res: Resources) -> None:
    _route(res).request_headers_to_add.append(header_option("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%", 0))


def _retry_on(res: Resources) -> None:
    _route(res, 1).route.retry_policy.retry_on = "5xx,unavailable"


def _duplicate_domain(res: Resources) -> None:
    res[ROUTE]["outbound"].virtual_hosts.add(name="dup", domains=["echo.ns:8080"])


def _tls(res: Resources) -> None:
    res[CLUSTER][SVC].transport_socket.name = "envoy.transport_sockets.tls"


def _runtime_fraction(res: Resources) -> None:
    _route(res).match.runtime_fraction.default_value.numerator = 50


def _api_listener(res: Resources) -> None:
    res[LISTENER]["outbound"].api_listener.api_listener.CopyFrom(pack(hcm()))


def _original_dst(res: Resources) -> None:
    res[CLUSTER][SVC].type = cluster_pb2.Cluster.ORIGINAL_DST


def _bad_cla(res: Resources) -> None:
    res[ENDPOINT][SVC].endpoints[0].lb_endpoints[0].load_balancing_weight.value = 0


def _no_router(res: Resources) -> None:
    m = hcm()
    del m.http_filters[-1]
    res[LISTENER]["outbound"] = listener("outbound", "127.0.0.1", 15001, http_chain(m))


def _two_chains_without_inspector(res: Resources) -> None:
    del res[LISTENER]["inbound|8080"].listener_filters[:]


def _detect_without_fallback(res: Resources) -> None:
    res[LISTENER]["inbound|8080"].continue_on_listener_filters_timeout = False


def _header_delay(res: Resources) -> None:
    f = fault_pb2.HTTPFault()
    f.delay.header_delay.SetInParent()
    _route(res).typed_per_filter_config["envoy.filters.http.fault"].CopyFrom(pack(f))


def _substitution(res: Resources) -> None:
    _route(res, 2).route.regex_rewrite.substitution = r"/\2"


REFUSALS = [
    (
        _set_path_match_policy,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[0].match: unsupported path specifier "path_match_policy"',
    ),
    (
        _lookahead,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[2].match.safe_regex.regex: "/(?!admin).*": lookahead is not RE2 syntax',
    ),
    (
        _unknown_http_filter,
        'Listener "outbound": filter_chains[0].filters[0].typed_config.http_filters[0]: unsupported HTTP filter "envoy.filters.http.cors"',
    ),
    (_cluster_provided, f'Cluster "{SVC}": lb_policy: "CLUSTER_PROVIDED" is not supported'),
    (_outlier_detection, f'Cluster "{SVC}": outlier_detection: not supported by the sidecar'),
    (
        _host_header,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[0].request_headers_to_add[3].header.key: "Host": pseudo-headers and host may not be modified (use host_rewrite_literal)',
    ),
    (
        _formatter,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[0].request_headers_to_add[3].header.value: "%DOWNSTREAM_REMOTE_ADDRESS%": formatters (%...%) are not supported; write % as %%',
    ),
    (
        _retry_on,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[1].route.retry_policy.retry_on: unsupported retry condition "unavailable"',
    ),
    (
        _duplicate_domain,
        'RouteConfiguration "outbound": virtual_hosts[1].domains[0]: domain "echo.ns:8080" is used by another virtual host',
    ),
    (_tls, f'Cluster "{SVC}": transport_socket: not supported by the sidecar'),
    (
        _runtime_fraction,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[0].match.runtime_fraction: not supported by the sidecar',
    ),
    (
        _api_listener,
        'Listener "outbound": api_listener: API listeners are for proxyless gRPC clients, not the sidecar',
    ),
    (
        _original_dst,
        f'Cluster "{SVC}": type: only STATIC, STRICT_DNS, LOGICAL_DNS and EDS clusters are supported',
    ),
    (
        _bad_cla,
        f'ClusterLoadAssignment "{SVC}": endpoints[0].lb_endpoints[0].load_balancing_weight: must be at least 1',
    ),
    (
        _no_router,
        'Listener "outbound": filter_chains[0].filters[0].typed_config.http_filters: the last HTTP filter must be envoy.filters.http.router',
    ),
    (
        _two_chains_without_inspector,
        'Listener "inbound|8080": filter_chains: expected one filter chain, or one HTTP and one TCP chain with the http_inspector listener filter',
    ),
    (
        _detect_without_fallback,
        'Listener "inbound|8080": continue_on_listener_filters_timeout: must be true for protocol detection',
    ),
    (
        _header_delay,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[0].typed_per_filter_config["envoy.filters.http.fault"].delay.header_delay: not supported by the sidecar',
    ),
    (
        _substitution,
        'RouteConfiguration "outbound": virtual_hosts[0].routes[2].route.regex_rewrite.substitution: substitution uses group \\2 but the pattern has 1',
    ),
]


@pytest.mark.parametrize(("change", "message"), REFUSALS, ids=[c[0].__name__.strip("_") for c in REFUSALS])
def test_unsupported_input_is_refused_with_a_precise_message(change: Any, message: str) -> None:
    """What would change behaviour and is not implemented NACKs, naming resource and field."""
    assert _refuse(change) == message


def _connect_without_config(res: Resources) -> None:
    del _route(res, 5).route.upgrade_configs[:]


def test_connect_routes_must_terminate() -> None:
    """Envoy forwards a CONNECT without connect_config upstream; the sidecar only terminates it."""
    assert _refuse(_connect_without_config) == (
        'RouteConfiguration "outbound": virtual_hosts[0].routes[5].route.upgrade_configs: '
        "a CONNECT route needs a CONNECT upgrade with connect_config"
    )


# --- smaller mappings ---------------------------------------------------------------------------------


def _single_route(configure: Any) -> rc.Route:
    cfg = route_pb2.RouteConfiguration(name="t")
    vh = cfg.virtual_hosts.add(name="v", domains=["*"])
    r = vh.routes.add(name="r")
    r.match.prefix = "/"
    r.route.cluster = "c"
    configure(r, vh)
    return cfg


def _compile_route(configure: Any) -> Any:
    plan = compile_plan({ROUTE: {"t": _single_route(configure)}}, None, version="1")
    return plan.route_tables["t"].virtual_hosts[0].routes[0]


RETRY_ON = [
    ("5xx", frozenset(range(500, 600)), True, True, True),
    ("gateway-error", frozenset({502, 503, 504}), True, True, True),
    ("connect-failure", frozenset(), True, False, False),
    ("reset", frozenset(), True, True, True),
    ("refused-stream", frozenset(), False, False, True),
    ("retriable-status-codes", frozenset({429}), False, False, False),
    ("retriable-4xx", frozenset({409}), False, False, False),
]


@pytest.mark.parametrize(("retry_on", "statuses", "connect", "reset", "refused"), RETRY_ON)
def test_retry_conditions(
    retry_on: str, statuses: frozenset[int], connect: bool, reset: bool, refused: bool
) -> None:
    """Envoy's retry_on vocabulary, as far as the sidecar implements it."""

    def configure(r: rc.Route, vh: Any) -> None:
        r.route.retry_policy.retry_on = retry_on
        r.route.retry_policy.retriable_status_codes.append(429)

    retry = _compile_route(configure).action.retry
    assert (retry.on_status, retry.on_connect_failure, retry.on_reset, retry.on_refused_stream) == (
        statuses,
        connect,
        reset,
        refused,
    )
    assert (retry.attempts, retry.backoff_base, retry.backoff_max) == (1, 0.025, None)  # Envoy's defaults


def test_virtual_host_retry_policy_is_the_routes_default() -> None:
    """A route without its own retry policy takes its virtual host's."""

    def configure(r: rc.Route, vh: Any) -> None:
        vh.retry_policy.retry_on = "connect-failure"
        vh.retry_policy.num_retries.value = 4

    retry = _compile_route(configure).action.retry
    assert (retry.attempts, retry.on_connect_failure) == (4, True)


def test_fault_wrapped_in_filter_config() -> None:
    """FilterConfig{config: HTTPFault} applies; FilterConfig{disabled: true} turns it off."""
    fault = fault_pb2.HTTPFault()
    fault.abort.grpc_status = 14
    fault.abort.percentage.numerator = 1
    fault.abort.percentage.denominator = percent_pb2.FractionalPercent.MILLION

    def wrapped(disabled: bool) -> Any:
        def configure(r: rc.Route, vh: Any) -> None:
            config = rc.FilterConfig(config=pack(fault), disabled=disabled)
            r.typed_per_filter_config["envoy.filters.http.fault"].CopyFrom(pack(config))

        return configure

    on = _compile_route(wrapped(False)).fault
    assert (on.abort_grpc_status, on.abort_per_million, on.delay) == (14, 1, None)
    assert _compile_route(wrapped(True)).fault is None


def test_https_redirect_and_strip_query() -> None:
    def configure(r: rc.Route, vh: Any) -> None:
        r.ClearField("route")
        r.redirect.https_redirect = True
        r.redirect.strip_query = True

    redirect = _compile_route(configure).action
    assert redirect.location(head(b"/p", b"x=1")) == b"https://echo.ns/p"
    assert redirect.status == 301


def test_inline_route_config_and_upstream_protocol_choices() -> None:
    """An HCM's inline route_config becomes its own table; use_downstream_protocol_config and
    DNS clusters keep what they say."""
    inline = hcm(None, fault_filter=False)
    inline.route_config.CopyFrom(_single_route(lambda r, vh: None))
    downstream = cluster_pb2.Cluster(name="inbound|7000", type=cluster_pb2.Cluster.STATIC)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.use_downstream_protocol_config.http_protocol_options.SetInParent()
    options.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    downstream.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].CopyFrom(pack(options))
    dns = cluster_pb2.Cluster(name="external", type=cluster_pb2.Cluster.STRICT_DNS)
    e = dns.load_assignment.endpoints.add().lb_endpoints.add()
    e.endpoint.address.socket_address.address = "api.example.com"
    e.endpoint.address.socket_address.port_value = 443
    plan = compile_plan(
        {
            LISTENER: {"l": listener("l", "127.0.0.1", 15002, http_chain(inline))},
            CLUSTER: {"inbound|7000": downstream, "external": dns},
        },
        None,
        version="1",
    )
    assert plan.listeners["l"].route_table == "l#route_config"
    assert plan.route_tables["l#route_config"].lookup(b"any") is not None
    assert plan.clusters["inbound|7000"].protocol == "downstream"
    picked = plan.clusters["external"].pick(PickContext())
    assert picked is not None
    assert (picked.host, picked.port) == ("api.example.com", 443)
