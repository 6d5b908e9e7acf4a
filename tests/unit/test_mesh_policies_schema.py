"""mesh.innermesh.io/v1alpha1: FaultInjection, BackendTrafficPolicy (and which policy wins a Service), and
Workload ``spec.egress``; every rule refused with its path and message, and the helpers the translator
uses."""

from __future__ import annotations

from typing import Any

import pytest

from innermesh.api import core, mesh
from innermesh.api.mesh import (
    BackendTrafficPolicy,
    FaultInjection,
    Workload,
    effective_backend_policy,
    egress_allows,
    per_million,
)
from innermesh.api.model import Model, ParseFailed, parse
from innermesh.api.registry import Registry
from innermesh.api.scheme import REGISTRY

DNS1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_LABEL = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex "
    "used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
DURATION = "should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'"
EGRESS_SHAPE = "must be `<namespace>/<service>`, `<namespace>/*` or `*/*`"


def errors(model: type[Model], data: Any) -> list[str]:
    """Every error ``parse`` reports, as the API server would print them."""
    with pytest.raises(ParseFailed) as exc:
        parse(model, data)
    return [str(e) for e in exc.value.errors]


def fault(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "FaultInjection",
        "metadata": {"name": "flaky", "namespace": "prod"},
        "spec": spec,
    }


def btp(name: str = "p", namespace: str = "prod", created: str | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created is not None:
        metadata["creationTimestamp"] = created
    return {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": metadata,
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], **spec},
    }


def load_balancer(**lb: Any) -> dict[str, Any]:
    return btp(loadBalancer=lb)


def workload(egress: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "vm-1", "namespace": "prod"},
        "spec": {"addresses": ["10.0.0.5"], "egress": egress},
    }


# ---------------------------------------------------------------------------------------------------
# FaultInjection


def test_fault_with_delay_and_abort_parses_and_defaults_percentages() -> None:
    """Both faults parse; an omitted percentage is 100, and whole percentages stay integers on the wire."""
    obj = parse(
        FaultInjection,
        fault({"delay": {"fixedDelay": "1s500ms"}, "abort": {"httpStatus": 503, "percentage": 12.5}}),
    )
    assert obj.to_dict()["spec"] == {
        "delay": {"fixedDelay": "1s500ms", "percentage": 100},
        "abort": {"httpStatus": 503, "percentage": 12.5},
    }
    assert obj.spec.delay is not None and obj.spec.abort is not None
    assert obj.spec.delay.delay_seconds() == 1.5
    assert obj.spec.delay.per_million() == 1_000_000
    assert obj.spec.abort.per_million() == 125_000


def test_grpc_abort_alone_parses() -> None:
    """An abort with a gRPC status and no delay is a whole FaultInjection."""
    obj = parse(FaultInjection, fault({"abort": {"grpcStatus": 14, "percentage": 0}}))
    assert obj.spec.delay is None
    assert obj.spec.abort is not None and obj.spec.abort.grpc_status == 14
    assert obj.spec.abort.per_million() == 0


def test_fault_needs_a_delay_or_an_abort() -> None:
    """An empty spec injects nothing: refused on spec; a missing spec is required."""
    assert errors(FaultInjection, fault({})) == [
        "spec: Required value: must specify at least one of `delay` or `abort`"
    ]
    data = fault({})
    del data["spec"]
    assert errors(FaultInjection, data) == ["spec: Required value"]


def test_fixed_delay_is_a_positive_gateway_api_duration() -> None:
    """fixedDelay is required, uses the Gateway API Duration syntax, and may not be zero."""
    assert errors(FaultInjection, fault({"delay": {"percentage": 5}})) == [
        "spec.delay.fixedDelay: Required value"
    ]
    assert errors(FaultInjection, fault({"delay": {"fixedDelay": "2.5s"}})) == [
        f'spec.delay.fixedDelay: Invalid value: "2.5s": {DURATION}'
    ]
    assert errors(FaultInjection, fault({"delay": {"fixedDelay": "0s"}})) == [
        'spec.delay.fixedDelay: Invalid value: "0s": must be greater than 0'
    ]
    obj = parse(FaultInjection, fault({"delay": {"fixedDelay": "1h2m3s4ms"}}))
    assert obj.spec.delay is not None and obj.spec.delay.delay_seconds() == 3723.004


@pytest.mark.parametrize(
    ("percentage", "want"),
    [
        (150, "Invalid value: 150: must be between 0 and 100, inclusive"),
        (-0.5, "Invalid value: -0.5: must be between 0 and 100, inclusive"),
        (33.33333, "Invalid value: 33.33333: must have at most 4 decimal places"),
        (1e-05, "Invalid value: 1e-05: must have at most 4 decimal places"),
        ("50", 'Invalid value: "50": must be a number'),
        (True, "Invalid value: true: must be a number"),
    ],
)
def test_percentage_rules(percentage: Any, want: str) -> None:
    """A percentage is a number 0..100 with at most 4 decimal places, in delay and abort alike."""
    assert errors(FaultInjection, fault({"delay": {"fixedDelay": "1s", "percentage": percentage}})) == [
        f"spec.delay.percentage: {want}"
    ]
    assert errors(FaultInjection, fault({"abort": {"httpStatus": 500, "percentage": percentage}})) == [
        f"spec.abort.percentage: {want}"
    ]


@pytest.mark.parametrize(
    ("percentage", "ppm"),
    [(0, 0), (0.0001, 1), (0.1, 1000), (33.3333, 333_333), (99.9999, 999_999), (100, 1_000_000)],
)
def test_per_million_is_exact(percentage: float, ppm: int) -> None:
    """Four decimal places convert to parts per million without float rounding errors."""
    parse(FaultInjection, fault({"abort": {"httpStatus": 500, "percentage": percentage}}))
    assert per_million(percentage) == ppm


def test_abort_has_exactly_one_status() -> None:
    """Neither status is required; both is forbidden; each has its range."""
    assert errors(FaultInjection, fault({"abort": {"percentage": 10}})) == [
        "spec.abort: Required value: must specify one of `httpStatus` or `grpcStatus`"
    ]
    assert errors(FaultInjection, fault({"abort": {"httpStatus": 503, "grpcStatus": 14}})) == [
        "spec.abort.grpcStatus: Forbidden: may not be specified together with `httpStatus`"
    ]
    assert errors(FaultInjection, fault({"abort": {"httpStatus": 199}})) == [
        "spec.abort.httpStatus: Invalid value: 199: must be between 200 and 599, inclusive"
    ]
    assert errors(FaultInjection, fault({"abort": {"grpcStatus": 17}})) == [
        "spec.abort.grpcStatus: Invalid value: 17: must be between 0 and 16, inclusive"
    ]
    assert errors(FaultInjection, fault({"abort": {"httpStatus": 503, "code": 1}})) == [
        "spec.abort.code: Unknown field"
    ]


def test_fault_kind_names_and_columns() -> None:
    """fault is the short name; the kind is namespaced, without status; columns show both faults."""
    kind = REGISTRY.resolve("fault")
    assert (kind.group, kind.version, kind.kind, kind.plural, kind.namespaced) == (
        "mesh.innermesh.io",
        "v1alpha1",
        "FaultInjection",
        "faultinjections",
        True,
    )
    assert not kind.has_status
    assert not kind.strategic_merge
    both = parse(
        FaultInjection, fault({"delay": {"fixedDelay": "2s", "percentage": 50}, "abort": {"grpcStatus": 14}})
    )
    delay_only = parse(FaultInjection, fault({"delay": {"fixedDelay": "2s", "percentage": 0.5}}))
    abort_only = parse(FaultInjection, fault({"abort": {"httpStatus": 503, "percentage": 10}}))
    assert [[c.value(o) for c in kind.columns] for o in (both, delay_only, abort_only)] == [
        ["2s (50%)", "gRPC 14 (100%)"],
        ["2s (0.5%)", "<none>"],
        ["<none>", "HTTP 503 (10%)"],
    ]
    assert [c.name for c in kind.columns] == ["Delay", "Abort"]


# ---------------------------------------------------------------------------------------------------
# BackendTrafficPolicy


def test_full_backend_traffic_policy_parses_with_defaults() -> None:
    """Every field parses; cookie path defaults to "/", zoneAware to true; the helpers give seconds."""
    obj = parse(
        BackendTrafficPolicy,
        btp(
            loadBalancer={
                "type": "RingHash",
                "consistentHash": {"type": "Cookie", "cookie": {"name": "session", "ttl": "1h"}},
            },
            connectionPool={
                "maxConnections": 1024,
                "maxPendingRequests": 1024,
                "maxRequests": 1024,
                "maxRequestsPerConnection": 0,
                "idleTimeout": "60s",
            },
        ),
    )
    assert obj.to_dict()["spec"]["loadBalancer"] == {
        "type": "RingHash",
        "consistentHash": {"type": "Cookie", "cookie": {"name": "session", "ttl": "1h", "path": "/"}},
        "zoneAware": True,
    }
    lb, pool = obj.spec.load_balancer, obj.spec.connection_pool
    assert lb is not None and lb.consistent_hash is not None and lb.consistent_hash.cookie is not None
    assert lb.consistent_hash.cookie.ttl_seconds() == 3600.0
    assert pool is not None and pool.idle_timeout_seconds() == 60.0


def test_minimal_policy_defaults() -> None:
    """targetRefs alone is a policy; an empty loadBalancer is round robin, zone aware."""
    assert parse(BackendTrafficPolicy, btp()).spec.load_balancer is None
    obj = parse(BackendTrafficPolicy, load_balancer())
    assert obj.to_dict()["spec"]["loadBalancer"] == {"type": "RoundRobin", "zoneAware": True}


def test_target_refs_are_required_and_bounded() -> None:
    """No targetRefs field, an empty list, or more than 16 entries are refused."""
    data = btp()
    del data["spec"]["targetRefs"]
    assert errors(BackendTrafficPolicy, data) == ["spec.targetRefs: Required value"]
    assert errors(BackendTrafficPolicy, btp(targetRefs=[])) == [
        "spec.targetRefs: Required value: must contain at least one target"
    ]
    many = [{"group": "", "kind": "Service", "name": f"s{i}"} for i in range(17)]
    assert errors(BackendTrafficPolicy, btp(targetRefs=many)) == [
        "spec.targetRefs: Too many: 17: must have at most 16 items"
    ]
    assert len(parse(BackendTrafficPolicy, btp(targetRefs=many[:16])).spec.target_refs) == 16


def test_only_core_services_can_be_targets() -> None:
    """Another kind or group is an unsupported value on that field; names are DNS-1035 labels."""
    refs = [
        {"group": "", "kind": "Namespace", "name": "prod"},
        {"group": "mesh.innermesh.io", "kind": "Service", "name": "echo"},
        {"group": "", "kind": "Service", "name": "1echo"},
    ]
    assert errors(BackendTrafficPolicy, btp(targetRefs=refs)) == [
        'spec.targetRefs[0].kind: Unsupported value: "Namespace": supported values: "Service"',
        'spec.targetRefs[1].group: Unsupported value: "mesh.innermesh.io": supported values: ""',
        f'spec.targetRefs[2].name: Invalid value: "1echo": {DNS1035_LABEL}',
    ]


def test_duplicate_targets_are_refused() -> None:
    """The same Service twice is a duplicate."""
    ref = {"group": "", "kind": "Service", "name": "echo"}
    assert errors(
        BackendTrafficPolicy, btp(targetRefs=[ref, {"group": "", "kind": "Service", "name": "x"}, ref])
    ) == ['spec.targetRefs[2]: Duplicate value: {"group":"","kind":"Service","name":"echo"}']


def test_load_balancer_type_is_an_enum() -> None:
    """Only the five balancers are supported."""
    assert errors(BackendTrafficPolicy, load_balancer(type="WeightedRandom")) == [
        (
            'spec.loadBalancer.type: Unsupported value: "WeightedRandom": supported values: '
            '"RoundRobin", "LeastRequest", "Random", "RingHash", "Maglev"'
        )
    ]
    for lb in ("RoundRobin", "LeastRequest", "Random"):
        parse(BackendTrafficPolicy, load_balancer(type=lb, zoneAware=False))


def test_consistent_hash_goes_with_ring_hash_and_maglev_only() -> None:
    """RingHash and Maglev need consistentHash; the other balancers may not have it."""
    assert errors(BackendTrafficPolicy, load_balancer(type="Maglev")) == [
        "spec.loadBalancer.consistentHash: Required value: must be specified when `type` is 'RingHash' or 'Maglev'"
    ]
    assert errors(
        BackendTrafficPolicy, load_balancer(type="LeastRequest", consistentHash={"type": "SourceIP"})
    ) == [
        "spec.loadBalancer.consistentHash: Forbidden: may only be specified when `type` is 'RingHash' or 'Maglev'"
    ]
    obj = parse(BackendTrafficPolicy, load_balancer(type="Maglev", consistentHash={"type": "SourceIP"}))
    assert obj.spec.load_balancer is not None and obj.spec.load_balancer.consistent_hash is not None


def test_hash_header_and_cookie_go_with_their_type() -> None:
    """header is required iff type is Header, cookie iff type is Cookie; SourceIP takes neither."""

    def hashed(**h: Any) -> dict[str, Any]:
        return load_balancer(type="RingHash", consistentHash=h)

    assert errors(BackendTrafficPolicy, hashed(type="Header")) == [
        "spec.loadBalancer.consistentHash.header: Required value: must be specified when `type` is 'Header'"
    ]
    assert errors(BackendTrafficPolicy, hashed(type="Cookie", header={"name": "x-user"})) == [
        "spec.loadBalancer.consistentHash.header: Forbidden: may only be specified when `type` is 'Header'",
        "spec.loadBalancer.consistentHash.cookie: Required value: must be specified when `type` is 'Cookie'",
    ]
    assert errors(BackendTrafficPolicy, hashed(type="SourceIP", cookie={"name": "s"})) == [
        "spec.loadBalancer.consistentHash.cookie: Forbidden: may only be specified when `type` is 'Cookie'"
    ]
    assert errors(BackendTrafficPolicy, hashed(type="Body")) == [
        (
            'spec.loadBalancer.consistentHash.type: Unsupported value: "Body": supported values: '
            '"Header", "Cookie", "SourceIP"'
        )
    ]
    parse(BackendTrafficPolicy, hashed(type="Header", header={"name": "x-user"}))


def test_hash_header_and_cookie_values() -> None:
    """Header and cookie names are tokens; the cookie path is absolute, without ';'; ttl is a Duration."""
    header = load_balancer(type="RingHash", consistentHash={"type": "Header", "header": {"name": "x user"}})
    assert errors(BackendTrafficPolicy, header) == [
        (
            'spec.loadBalancer.consistentHash.header.name: Invalid value: "x user": '
            "must be an HTTP header name (an RFC 9110 token)"
        )
    ]
    long_header = load_balancer(
        type="RingHash", consistentHash={"type": "Header", "header": {"name": "x" * 257}}
    )
    assert errors(BackendTrafficPolicy, long_header) == [
        "spec.loadBalancer.consistentHash.header.name: Too long: may not be more than 256 bytes"
    ]
    cookie = {"name": "a=b", "ttl": "1d", "path": "/x;y"}
    data = load_balancer(type="RingHash", consistentHash={"type": "Cookie", "cookie": cookie})
    assert errors(BackendTrafficPolicy, data) == [
        f'spec.loadBalancer.consistentHash.cookie.ttl: Invalid value: "1d": {DURATION}',
    ]
    cookie["ttl"] = "0s"
    assert errors(BackendTrafficPolicy, data) == [
        (
            'spec.loadBalancer.consistentHash.cookie.name: Invalid value: "a=b": '
            "must be a cookie name (an RFC 9110 token)"
        ),
        (
            'spec.loadBalancer.consistentHash.cookie.path: Invalid value: "/x;y": '
            "may contain only printable ASCII characters other than ';'"
        ),
    ]
    cookie.update(name="session", path="app")
    assert errors(BackendTrafficPolicy, data) == [
        (
            'spec.loadBalancer.consistentHash.cookie.path: Invalid value: "app": '
            "must be an absolute path (start with '/')"
        )
    ]
    cookie["path"] = "/app"
    obj = parse(BackendTrafficPolicy, data)
    lb = obj.spec.load_balancer
    assert lb is not None and lb.consistent_hash is not None and lb.consistent_hash.cookie is not None
    assert lb.consistent_hash.cookie.ttl_seconds() == 0.0  # a session cookie, as Envoy has it
    no_ttl = load_balancer(type="RingHash", consistentHash={"type": "Cookie", "cookie": {"name": "s"}})
    lb = parse(BackendTrafficPolicy, no_ttl).spec.load_balancer
    assert lb is not None and lb.consistent_hash is not None and lb.consistent_hash.cookie is not None
    assert lb.consistent_hash.cookie.ttl_seconds() is None


def test_connection_pool_limits_are_positive() -> None:
    """Limits are 1..2^32-1; maxRequestsPerConnection may be 0 (unlimited); idleTimeout a Duration."""
    pool = {
        "maxConnections": 0,
        "maxPendingRequests": -1,
        "maxRequests": 2**32,
        "maxRequestsPerConnection": -1,
        "idleTimeout": "1m30",
    }
    assert errors(BackendTrafficPolicy, btp(connectionPool=pool)) == [
        "spec.connectionPool.maxConnections: Invalid value: 0: must be between 1 and 4294967295, inclusive",
        "spec.connectionPool.maxPendingRequests: Invalid value: -1: must be between 1 and 4294967295, inclusive",
        "spec.connectionPool.maxRequests: Invalid value: 4294967296: must be between 1 and 4294967295, inclusive",
        "spec.connectionPool.maxRequestsPerConnection: Invalid value: -1: must be between 0 and 4294967295, inclusive",
        f'spec.connectionPool.idleTimeout: Invalid value: "1m30": {DURATION}',
    ]
    assert errors(BackendTrafficPolicy, btp(connectionPool={"maxConnections": "10"})) == [
        'spec.connectionPool.maxConnections: Invalid value: "10": must be an integer'
    ]
    obj = parse(BackendTrafficPolicy, btp(connectionPool={"maxRequests": 1}))
    assert obj.to_dict()["spec"]["connectionPool"] == {"maxRequests": 1}
    assert obj.spec.connection_pool is not None and obj.spec.connection_pool.idle_timeout_seconds() is None


def test_backend_traffic_policy_kind_names_and_columns() -> None:
    """btp is the short name; the kind has a status subresource; columns show targets and balancer."""
    registry = Registry([*core.KINDS, *mesh.KINDS])
    kind = registry.resolve("btp")
    assert (kind.kind, kind.plural, kind.namespaced, kind.has_status) == (
        "BackendTrafficPolicy",
        "backendtrafficpolicies",
        True,
        True,
    )
    assert REGISTRY.resolve("backendtrafficpolicies.mesh.innermesh.io") is kind
    two = [{"group": "", "kind": "Service", "name": "a"}, {"group": "", "kind": "Service", "name": "b"}]
    obj = parse(BackendTrafficPolicy, btp(targetRefs=two, loadBalancer={"type": "LeastRequest"}))
    assert [(c.name, c.value(obj)) for c in kind.columns] == [
        ("Targets", "Service/a,Service/b"),
        ("LoadBalancer", "LeastRequest"),
    ]
    assert [c.value(parse(BackendTrafficPolicy, btp())) for c in kind.columns] == [
        "Service/echo",
        "RoundRobin",
    ]


# ---------------------------------------------------------------------------------------------------
# Which BackendTrafficPolicy applies to a Service


def policy_obj(
    name: str, created: str | None, namespace: str = "prod", targets: tuple[str, ...] = ("echo",)
) -> BackendTrafficPolicy:
    refs = [{"group": "", "kind": "Service", "name": t} for t in targets]
    return parse(BackendTrafficPolicy, btp(name, namespace, created, targetRefs=refs))


def test_oldest_policy_wins() -> None:
    """Of two policies on one Service, the older by creationTimestamp applies, whatever their names."""
    young = policy_obj("a-young", "2026-01-02T00:00:00Z")
    old = policy_obj("z-old", "2026-01-01T23:59:59Z")
    assert effective_backend_policy([young, old], "prod", "echo") is old
    assert effective_backend_policy([old, young], "prod", "echo") is old


def test_same_age_falls_back_to_name() -> None:
    """Policies created in the same second are ordered by name."""
    b = policy_obj("b", "2026-01-01T00:00:00Z")
    a = policy_obj("a", "2026-01-01T00:00:00Z")
    assert effective_backend_policy([b, a], "prod", "echo") is a


def test_only_policies_in_the_services_namespace_and_targeting_it_count() -> None:
    """A policy in another namespace, or targeting another Service, never applies; none may apply."""
    elsewhere = policy_obj("old", "2020-01-01T00:00:00Z", namespace="staging")
    other_target = policy_obj("older", "2019-01-01T00:00:00Z", targets=("web",))
    mine = policy_obj("mine", "2026-01-01T00:00:00Z", targets=("web", "echo"))
    assert effective_backend_policy([elsewhere, other_target, mine], "prod", "echo") is mine
    assert effective_backend_policy([elsewhere, other_target, mine], "prod", "web") is other_target
    assert effective_backend_policy([elsewhere, other_target], "prod", "echo") is None
    assert effective_backend_policy([], "prod", "echo") is None


def test_policy_without_creation_time_sorts_last() -> None:
    """An object never stored (no creationTimestamp) loses to any stored one."""
    unstored = policy_obj("a", None)
    stored = policy_obj("b", "2026-01-01T00:00:00Z")
    assert effective_backend_policy([unstored, stored], "prod", "echo") is stored
    assert effective_backend_policy([unstored], "prod", "echo") is unstored


# ---------------------------------------------------------------------------------------------------
# Workload egress


def test_egress_hosts_parse() -> None:
    """The three host forms parse and are kept as written; egress is absent by default."""
    hosts = ["billing/api", "monitoring/*", "*/*"]
    assert parse(Workload, workload(hosts)).spec.egress == hosts
    data = workload([])
    del data["spec"]["egress"]
    obj = parse(Workload, data)
    assert obj.spec.egress is None
    assert "egress" not in obj.to_dict()["spec"]


@pytest.mark.parametrize(
    ("host", "messages"),
    [
        ("billing", [EGRESS_SHAPE]),
        ("billing/api/v1", [EGRESS_SHAPE]),
        ("*/api", [EGRESS_SHAPE]),
        ("/api", [f"namespace: {DNS1123_LABEL}"]),
        ("Billing/api", [f"namespace: {DNS1123_LABEL}"]),
        ("billing/1api", [f"service: {DNS1035_LABEL}"]),
        ("billing/", [f"service: {DNS1035_LABEL}"]),
        ("b_x/API", [f"namespace: {DNS1123_LABEL}", f"service: {DNS1035_LABEL}"]),
        ("billing/api*", [f"service: {DNS1035_LABEL}"]),
    ],
)
def test_bad_egress_host_is_refused_at_its_index(host: str, messages: list[str]) -> None:
    """Each bad host is an Invalid value at its own index, naming which part is wrong."""
    assert errors(Workload, workload(["ok/*", host])) == [
        f'spec.egress[1]: Invalid value: "{host}": {m}' for m in messages
    ]


def test_egress_is_bounded_and_unique() -> None:
    """At most 64 hosts; the same host twice is a duplicate; it must be a list of strings."""
    many = [f"ns{i}/*" for i in range(65)]
    assert errors(Workload, workload(many)) == ["spec.egress: Too many: 65: must have at most 64 items"]
    assert len(parse(Workload, workload(many[:64])).spec.egress or []) == 64
    assert errors(Workload, workload(["a/*", "b/c", "a/*"])) == ['spec.egress[2]: Duplicate value: "a/*"']
    assert errors(Workload, workload("a/*")) == ['spec.egress: Invalid value: "a/*": must be a list']


@pytest.mark.parametrize(
    ("egress", "namespace", "service", "allowed"),
    [
        (["billing/api"], "billing", "api", True),
        (["billing/api"], "billing", "db", False),
        (["billing/api"], "other", "api", False),
        (["billing/*"], "billing", "db", True),
        (["billing/*"], "billingx", "db", False),
        (["*/*"], "anything", "at-all", True),
        ([], "billing", "api", False),
        (None, "billing", "api", False),
        (["a/b", "billing/*"], "billing", "api", True),
    ],
)
def test_egress_allows(egress: list[str] | None, namespace: str, service: str, allowed: bool) -> None:
    """Exact hosts, namespace wildcards and the mesh wildcard; nothing when egress is empty or absent."""
    assert egress_allows(egress, namespace, service) is allowed
