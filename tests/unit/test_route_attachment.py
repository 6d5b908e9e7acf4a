"""Route and GatewayClass status, computed from a route and the objects it refers to (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from innermesh.api.attachment import (
    CONTROLLER_NAME,
    StaticWorld,
    extension_refs,
    gateway_class_status,
    hostnames_intersect,
    route_status,
    route_status_changed,
)
from innermesh.api.core import Namespace, Service
from innermesh.api.gateway import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    ReferenceGrant,
    RouteParentStatus,
)
from innermesh.api.mesh import FaultInjection

NS = "shop"
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"
GW_GROUP = "gateway.networking.k8s.io"


def service(name: str = "web", namespace: str = NS, ports: list[dict[str, Any]] | None = None) -> Service:
    return Service.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": ports or [{"name": "http", "port": 80}]},
        }
    )


def gateway_class(name: str = "mesh", controller: str = CONTROLLER_NAME) -> GatewayClass:
    return GatewayClass.model_validate(
        {"metadata": {"name": name, "generation": 3}, "spec": {"controllerName": controller}}
    )


def gateway(
    name: str = "gw", klass: str = "mesh", namespace: str = NS, listeners: list[dict[str, Any]] | None = None
) -> Gateway:
    return Gateway.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "gatewayClassName": klass,
                "listeners": listeners or [{"name": "http", "port": 80, "protocol": "HTTP"}],
            },
        }
    )


def http_route(
    parents: list[dict[str, Any]],
    backends: list[dict[str, Any]] | None = None,
    *,
    hostnames: list[str] | None = None,
    status: dict[str, Any] | None = None,
    namespace: str = NS,
    generation: int = 7,
) -> HTTPRoute:
    body: dict[str, Any] = {
        "metadata": {"name": "r", "namespace": namespace, "generation": generation},
        "spec": {
            "parentRefs": parents,
            "rules": [{"backendRefs": backends if backends is not None else [{"name": "web", "port": 80}]}],
        },
    }
    if hostnames:
        body["spec"]["hostnames"] = hostnames
    if status is not None:
        body["status"] = status
    return HTTPRoute.model_validate(body)


def grant(
    namespace: str, from_ns: str, kind: str = "HTTPRoute", to_name: str | None = None
) -> ReferenceGrant:
    to: dict[str, Any] = {"group": "", "kind": "Service"}
    if to_name is not None:
        to["name"] = to_name
    return ReferenceGrant.model_validate(
        {
            "metadata": {"name": "g", "namespace": namespace},
            "spec": {"from": [{"group": GW_GROUP, "kind": kind, "namespace": from_ns}], "to": [to]},
        }
    )


SVC_PARENT = {"group": "", "kind": "Service", "name": "web"}
GW_PARENT = {"name": "gw"}


def conditions(status_parents: list[Any], parent_name: str = "web") -> dict[str, tuple[str, str]]:
    (entry,) = [
        p for p in status_parents if p.parent_ref.name == parent_name and p.controller_name == CONTROLLER_NAME
    ]
    return {c.type: (c.status, c.reason) for c in entry.conditions}


# ---------------------------------------------------------------------------------------------------
# Service parents (GAMMA)


def test_route_to_an_existing_service_is_accepted_and_resolved() -> None:
    """A mesh route whose parent and backend exist: Accepted and ResolvedRefs True, with generation."""
    route = http_route([SVC_PARENT])
    status = route_status(route, StaticWorld(services=[service()]), now=T0)
    (entry,) = status.parents
    assert entry.controller_name == CONTROLLER_NAME
    assert entry.parent_ref.to_dict() == {"group": "", "kind": "Service", "name": "web"}
    assert conditions(status.parents) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    assert {c.observed_generation for c in entry.conditions} == {7}
    assert {c.last_transition_time for c in entry.conditions} == {T0}


def test_missing_parent_service_is_no_matching_parent() -> None:
    """A Service parent that does not exist: Accepted False / NoMatchingParent."""
    status = route_status(http_route([SVC_PARENT], backends=[]), StaticWorld(), now=T0)
    assert conditions(status.parents)["Accepted"] == ("False", "NoMatchingParent")


def test_service_parent_port_must_exist() -> None:
    """A parentRef port the Service does not have is NoMatchingParent."""
    route = http_route([{**SVC_PARENT, "port": 8080}])
    status = route_status(route, StaticWorld(services=[service()]), now=T0)
    assert conditions(status.parents)["Accepted"] == ("False", "NoMatchingParent")


# ---------------------------------------------------------------------------------------------------
# Backend references


@pytest.mark.parametrize(
    ("backend", "world", "want"),
    [
        ({"name": "missing", "port": 80}, StaticWorld(services=[service()]), ("False", "BackendNotFound")),
        (
            {"group": "example.com", "kind": "Bucket", "name": "web"},
            StaticWorld(services=[service()]),
            ("False", "InvalidKind"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(services=[service(), service("db", "data")]),
            ("False", "RefNotPermitted"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(services=[service(), service("db", "data")], grants=[grant("data", NS)]),
            ("True", "ResolvedRefs"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(
                services=[service(), service("db", "data")], grants=[grant("data", NS, to_name="db")]
            ),
            ("True", "ResolvedRefs"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(
                services=[service(), service("db", "data")], grants=[grant("data", NS, to_name="other")]
            ),
            ("False", "RefNotPermitted"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(
                services=[service(), service("db", "data")], grants=[grant("data", NS, kind="GRPCRoute")]
            ),
            ("False", "RefNotPermitted"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(services=[service(), service("db", "data")], grants=[grant("data", "elsewhere")]),
            ("False", "RefNotPermitted"),
        ),
        (
            {"name": "db", "namespace": "data", "port": 80},
            StaticWorld(services=[service()], grants=[grant("data", NS)]),
            ("False", "BackendNotFound"),
        ),
    ],
    ids=[
        "missing-service",
        "not-a-service",
        "cross-namespace-without-grant",
        "grant-for-all-services",
        "grant-for-this-service",
        "grant-for-another-service",
        "grant-for-another-kind",
        "grant-for-another-namespace",
        "granted-but-missing",
    ],
)
def test_resolved_refs_reasons(backend: dict[str, Any], world: StaticWorld, want: tuple[str, str]) -> None:
    """ResolvedRefs says why a backendRef does not resolve, in upstream's reasons."""
    status = route_status(http_route([SVC_PARENT], backends=[backend]), world, now=T0)
    assert conditions(status.parents)["ResolvedRefs"] == want


def test_first_problem_gives_the_reason_and_the_message_lists_all() -> None:
    """Several bad backendRefs: the first one's reason, every problem in the message."""
    backends: list[dict[str, Any]] = [
        {"name": "missing", "port": 80},
        {"group": "x.io", "kind": "Thing", "name": "t"},
    ]
    status = route_status(
        http_route([SVC_PARENT], backends=backends), StaticWorld(services=[service()]), now=T0
    )
    (entry,) = status.parents
    resolved = next(c for c in entry.conditions if c.type == "ResolvedRefs")
    assert resolved.reason == "BackendNotFound"
    assert "missing" in resolved.message
    assert "x.io/Thing" in resolved.message


def test_mirror_backends_are_checked_too() -> None:
    """A RequestMirror filter's backendRef must resolve like any other."""
    route = HTTPRoute.model_validate(
        {
            "metadata": {"name": "r", "namespace": NS, "generation": 1},
            "spec": {
                "parentRefs": [SVC_PARENT],
                "rules": [
                    {
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {"backendRef": {"name": "gone", "port": 80}},
                            }
                        ],
                        "backendRefs": [{"name": "web", "port": 80}],
                    }
                ],
            },
        }
    )
    status = route_status(route, StaticWorld(services=[service()]), now=T0)
    assert conditions(status.parents)["ResolvedRefs"] == ("False", "BackendNotFound")


def test_grpc_routes_get_the_same_treatment() -> None:
    """GRPCRoute parents and backends are handled as HTTPRoute's; grants must name GRPCRoute."""
    route = GRPCRoute.model_validate(
        {
            "metadata": {"name": "g", "namespace": NS, "generation": 2},
            "spec": {
                "parentRefs": [SVC_PARENT],
                "rules": [{"backendRefs": [{"name": "db", "namespace": "data", "port": 80}]}],
            },
        }
    )
    world = StaticWorld(
        services=[service(), service("db", "data")], grants=[grant("data", NS, kind="GRPCRoute")]
    )
    status = route_status(route, world, now=T0)
    assert conditions(status.parents) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


# ---------------------------------------------------------------------------------------------------
# ExtensionRef filters (FaultInjection)

FAULT_REF = {"group": "mesh.innermesh.io", "kind": "FaultInjection", "name": "flaky"}


def fault_injection(name: str = "flaky", namespace: str = NS) -> FaultInjection:
    return FaultInjection.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"abort": {"httpStatus": 503}}}
    )


def route_with_filter(
    *refs: dict[str, Any], on_backend: bool = False, kind: str = "HTTPRoute", backend: str = "web"
) -> HTTPRoute | GRPCRoute:
    """A route with ExtensionRef filters, on its rule or on its backendRef."""
    filters = [{"type": "ExtensionRef", "extensionRef": ref} for ref in refs]
    rule: dict[str, Any] = {"backendRefs": [{"name": backend, "port": 80}]}
    if on_backend:
        rule["backendRefs"][0]["filters"] = filters
    else:
        rule["filters"] = filters
    body = {
        "metadata": {"name": "r", "namespace": NS, "generation": 1},
        "spec": {"parentRefs": [SVC_PARENT], "rules": [rule]},
    }
    if kind == "HTTPRoute":
        return HTTPRoute.model_validate(body)
    return GRPCRoute.model_validate(body)


def resolved_condition(route: HTTPRoute | GRPCRoute, world: StaticWorld) -> tuple[str, str, str]:
    (entry,) = route_status(route, world, now=T0).parents
    cond = next(c for c in entry.conditions if c.type == "ResolvedRefs")
    return cond.status, cond.reason, cond.message


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_existing_fault_injection_resolves(kind: str) -> None:
    """A FaultInjection filter naming one that exists in the route's namespace resolves."""
    route = route_with_filter(FAULT_REF, kind=kind)
    world = StaticWorld(services=[service()], fault_injections=[fault_injection()])
    assert resolved_condition(route, world) == ("True", "ResolvedRefs", "all references resolved")


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_missing_fault_injection_is_backend_not_found(kind: str) -> None:
    """A FaultInjection that does not exist (or exists only in another namespace): BackendNotFound."""
    route = route_with_filter(FAULT_REF, kind=kind)
    elsewhere = StaticWorld(services=[service()], fault_injections=[fault_injection(namespace="other")])
    assert resolved_condition(route, elsewhere) == (
        "False",
        "BackendNotFound",
        'filter extensionRef FaultInjection "shop/flaky" does not exist',
    )
    other_name = StaticWorld(services=[service()], fault_injections=[fault_injection("steady")])
    assert resolved_condition(route, other_name)[:2] == ("False", "BackendNotFound")


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_a_fault_injection_on_a_backend_ref_is_an_unsupported_filter(kind: str) -> None:
    """On a backendRef only the header modifiers are implemented: a FaultInjection there, existing or
    not, makes the rule one the mesh cannot implement (the data plane answers it with 500), and a
    route of that one rule is not accepted."""
    route = route_with_filter(FAULT_REF, on_backend=True, kind=kind)
    world = StaticWorld(services=[service()], fault_injections=[fault_injection()])
    assert conditions(route_status(route, world, now=T0).parents) == {
        "Accepted": ("False", "IncompatibleFilters"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


@pytest.mark.parametrize(
    "ref",
    [
        {"group": "example.com", "kind": "RateLimit", "name": "flaky"},
        {"group": "example.com", "kind": "FaultInjection", "name": "flaky"},
        {"group": "mesh.innermesh.io", "kind": "Workload", "name": "flaky"},
        {"group": "", "kind": "ConfigMap", "name": "flaky"},
    ],
    ids=["other-group-and-kind", "other-group", "other-kind", "core-group"],
)
def test_other_extension_kinds_are_invalid_kind(ref: dict[str, str]) -> None:
    """An ExtensionRef to anything but mesh.innermesh.io/FaultInjection: InvalidKind, even if a
    FaultInjection of that name exists."""
    world = StaticWorld(services=[service()], fault_injections=[fault_injection()])
    group = ref["group"] or "core"
    assert resolved_condition(route_with_filter(ref), world) == (
        "False",
        "InvalidKind",
        (
            f'filter extensionRef "flaky": kind {group}/{ref["kind"]} is not supported '
            "(only mesh.innermesh.io/FaultInjection)"
        ),
    )


def test_backend_problems_come_before_filter_problems() -> None:
    """A missing backend and a missing FaultInjection: the backend's reason, both in the message;
    among filters, the first problem gives the reason."""
    route = route_with_filter({**FAULT_REF, "name": "gone"}, backend="missing")
    assert resolved_condition(route, StaticWorld(services=[service()])) == (
        "False",
        "BackendNotFound",
        (
            'backendRef Service "shop/missing" does not exist; '
            'filter extensionRef FaultInjection "shop/gone" does not exist'
        ),
    )
    route = route_with_filter({"group": "x.io", "kind": "Thing", "name": "t"}, {**FAULT_REF, "name": "gone"})
    status, reason, message = resolved_condition(route, StaticWorld(services=[service()]))
    assert (status, reason) == ("False", "InvalidKind")
    assert message.endswith('; filter extensionRef FaultInjection "shop/gone" does not exist')


def test_extension_refs_lists_the_rules_filters() -> None:
    """extension_refs walks the rule filters, rule by rule (one on a backendRef is not supported)."""
    route = HTTPRoute.model_validate(
        {
            "metadata": {"name": "r", "namespace": NS},
            "spec": {
                "rules": [
                    {
                        "filters": [
                            {"type": "ExtensionRef", "extensionRef": {**FAULT_REF, "name": "a"}},
                            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x"]}},
                        ],
                        "backendRefs": [
                            {
                                "name": "web",
                                "port": 80,
                                "filters": [
                                    {"type": "ExtensionRef", "extensionRef": {**FAULT_REF, "name": "b"}}
                                ],
                            }
                        ],
                    },
                    {"filters": [{"type": "ExtensionRef", "extensionRef": {**FAULT_REF, "name": "c"}}]},
                ]
            },
        }
    )
    assert [r.name for r in extension_refs(route)] == ["a", "c"]


# ---------------------------------------------------------------------------------------------------
# Rules the mesh cannot implement (finding 6): status says what the data plane does

CORS = {"type": "CORS", "cors": {"allowOrigins": ["https://example.com"]}}
REWRITE = {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal"}}


def route_of_rules(*rules: dict[str, Any], generation: int = 1) -> HTTPRoute:
    return HTTPRoute.model_validate(
        {
            "metadata": {"name": "r", "namespace": NS, "generation": generation},
            "spec": {"parentRefs": [SVC_PARENT], "rules": list(rules)},
        }
    )


GOOD_RULE: dict[str, Any] = {"backendRefs": [{"name": "web", "port": 80}]}


def parent_conditions(route: HTTPRoute | GRPCRoute, world: StaticWorld) -> dict[str, tuple[str, str, str]]:
    (entry,) = route_status(route, world, now=T0).parents
    return {c.type: (c.status, c.reason, c.message) for c in entry.conditions}


def test_a_backend_filter_the_mesh_lacks_is_not_accepted() -> None:
    """The reviewer's reproduction: a URLRewrite on the only backendRef. The data plane answers 500,
    so the route is not Accepted (IncompatibleFilters), where it used to say Accepted and resolved."""
    route = route_of_rules({"backendRefs": [{"name": "web", "port": 80, "filters": [REWRITE]}]})
    got = parent_conditions(route, StaticWorld(services=[service()]))
    assert got["Accepted"] == (
        "False",
        "IncompatibleFilters",
        (
            "no rule can be implemented: rules[0].backendRefs[0].filters[0]: URLRewrite is not supported on a "
            "backendRef (only RequestHeaderModifier and ResponseHeaderModifier)"
        ),
    )
    assert "PartiallyInvalid" not in got


def test_some_rules_the_mesh_lacks_make_the_route_partially_invalid() -> None:
    """A CORS rule beside a good one: Accepted, and PartiallyInvalid names the rule left out, with
    the message prefix upstream requires; fixing the rule removes the condition."""
    world = StaticWorld(services=[service()])
    route = route_of_rules(GOOD_RULE, {**GOOD_RULE, "filters": [CORS]})
    got = parent_conditions(route, world)
    assert got["Accepted"][:2] == ("True", "Accepted")
    status, reason, message = got["PartiallyInvalid"]
    assert (status, reason) == ("True", "UnsupportedValue")
    assert message == (
        "Dropped Rule 1: the requests matching it get 500 (rules[1].filters[0]: CORS is not supported)"
    )
    fixed = route_of_rules(GOOD_RULE, GOOD_RULE, generation=2).model_copy(
        update={"status": route_status(route, world, now=T0)}
    )
    assert "PartiallyInvalid" not in parent_conditions(fixed, world)


def test_a_weight_zero_backend_runs_no_filter() -> None:
    """A backendRef that receives nothing makes no rule invalid, whatever its filters."""
    route = route_of_rules(
        {
            "backendRefs": [
                {"name": "web", "port": 80},
                {"name": "web", "port": 80, "weight": 0, "filters": [REWRITE]},
            ]
        }
    )
    assert conditions(route_status(route, StaticWorld(services=[service()]), now=T0).parents) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


def test_a_backend_port_the_service_lacks_is_backend_not_found() -> None:
    """The data plane has no cluster for a port the Service does not have, so ResolvedRefs says so."""
    route = route_of_rules({"backendRefs": [{"name": "web", "port": 8080}]})
    assert parent_conditions(route, StaticWorld(services=[service()]))["ResolvedRefs"] == (
        "False",
        "BackendNotFound",
        'backendRef Service "shop/web" has no TCP port 8080',
    )


# ---------------------------------------------------------------------------------------------------
# HTTPRoute and GRPCRoute on one Service port (GEP-1426): GRPCRoute wins


def grpc_route(
    name: str = "g",
    namespace: str = NS,
    parent: dict[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
) -> GRPCRoute:
    return GRPCRoute.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {
                "parentRefs": [parent or {**SVC_PARENT, "namespace": NS}],
                "rules": rules if rules is not None else [{"backendRefs": [{"name": "web", "port": 80}]}],
            },
        }
    )


TWO_PORTS = [{"name": "http", "port": 80}, {"name": "grpc", "port": 9090}]


def test_an_http_route_on_a_grpc_route_s_port_is_conflicted() -> None:
    """Same Service port, same namespace: the HTTPRoute is Accepted=False/Conflicted, the GRPCRoute
    is accepted as if the HTTPRoute were not there."""
    grpc = grpc_route()
    world = StaticWorld(services=[service()], grpc_routes=[grpc])
    accepted = parent_conditions(http_route([{**SVC_PARENT, "port": 80}]), world)["Accepted"]
    assert accepted[:2] == ("False", "Conflicted")
    assert 'port 80 to GRPCRoute "shop/g"' in accepted[2]
    assert conditions(route_status(grpc, world, now=T0).parents)["Accepted"] == ("True", "Accepted")


def test_an_http_route_keeps_the_ports_no_grpc_route_takes() -> None:
    """An HTTPRoute for every port of a two-port Service, a GRPCRoute for one: the HTTPRoute stays
    accepted and its message names the port it lost."""
    svc = service(ports=TWO_PORTS)
    grpc = grpc_route(parent={**SVC_PARENT, "port": 9090})
    world = StaticWorld(services=[svc], grpc_routes=[grpc])
    status, reason, message = parent_conditions(http_route([SVC_PARENT]), world)["Accepted"]
    assert (status, reason) == ("True", "Accepted")
    assert message.endswith('not on the ports a GRPCRoute takes (port 9090 to GRPCRoute "shop/g")')


@pytest.mark.parametrize(
    "grpc",
    [
        grpc_route(namespace="consumer", parent={**SVC_PARENT, "namespace": NS}),
        grpc_route(parent={**SVC_PARENT, "port": 9090}),
        grpc_route(
            rules=[
                {
                    "backendRefs": [
                        {
                            "name": "web",
                            "port": 80,
                            "filters": [
                                {
                                    "type": "RequestMirror",
                                    "requestMirror": {"backendRef": {"name": "web", "port": 80}},
                                }
                            ],
                        }
                    ]
                }
            ]
        ),
        grpc_route(parent={**SVC_PARENT, "name": "other"}),
    ],
    ids=["another-namespace", "another-port", "not-accepted-itself", "another-service"],
)
def test_grpc_routes_that_do_not_take_the_port_leave_the_http_route_alone(grpc: GRPCRoute) -> None:
    """A GRPCRoute of another namespace (a consumer route is that namespace's business), for another
    port or Service, or one not accepted itself, takes nothing from the HTTPRoute."""
    world = StaticWorld(services=[service(ports=TWO_PORTS), service("other")], grpc_routes=[grpc])
    accepted = parent_conditions(http_route([{**SVC_PARENT, "port": 80}]), world)["Accepted"]
    assert accepted == ("True", "Accepted", 'accepted for Service "shop/web"')


# ---------------------------------------------------------------------------------------------------
# Gateway parents


def test_gateway_of_our_class_is_owned_and_accepted() -> None:
    """A Gateway whose class names our controller gets an entry, Accepted."""
    world = StaticWorld(services=[service()], gateways=[gateway()], gateway_classes=[gateway_class()])
    status = route_status(http_route([GW_PARENT]), world, now=T0)
    assert conditions(status.parents, "gw") == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


def test_gateway_of_another_controller_is_left_alone() -> None:
    """A Gateway whose class belongs to someone else gets no entry from us."""
    world = StaticWorld(
        services=[service()],
        gateways=[gateway()],
        gateway_classes=[gateway_class(controller="example.com/gw")],
    )
    assert route_status(http_route([GW_PARENT]), world, now=T0).parents == []


def test_missing_gateway_is_no_matching_parent() -> None:
    """A Gateway parent that does not exist: Accepted False / NoMatchingParent."""
    status = route_status(http_route([GW_PARENT]), StaticWorld(services=[service()]), now=T0)
    assert conditions(status.parents, "gw")["Accepted"] == ("False", "NoMatchingParent")


def test_unknown_section_name_is_no_matching_parent() -> None:
    """A sectionName no listener has: NoMatchingParent."""
    world = StaticWorld(services=[service()], gateways=[gateway()], gateway_classes=[gateway_class()])
    status = route_status(http_route([{**GW_PARENT, "sectionName": "nope"}]), world, now=T0)
    assert conditions(status.parents, "gw")["Accepted"] == ("False", "NoMatchingParent")


@pytest.mark.parametrize(
    ("listener", "route_ns", "want"),
    [
        ({"allowedRoutes": {"namespaces": {"from": "Same"}}}, "other", ("False", "NotAllowedByListeners")),
        ({"allowedRoutes": {"namespaces": {"from": "All"}}}, "other", ("True", "Accepted")),
        (
            {
                "allowedRoutes": {
                    "namespaces": {"from": "Selector", "selector": {"matchLabels": {"env": "prod"}}}
                }
            },
            "other",
            ("True", "Accepted"),
        ),
        (
            {
                "allowedRoutes": {
                    "namespaces": {"from": "Selector", "selector": {"matchLabels": {"env": "dev"}}}
                }
            },
            "other",
            ("False", "NotAllowedByListeners"),
        ),
        ({"allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}}, NS, ("False", "NotAllowedByListeners")),
        ({"protocol": "TCP"}, NS, ("False", "NotAllowedByListeners")),
    ],
    ids=["same-ns-only", "all-ns", "selector-match", "selector-miss", "kind-not-allowed", "tcp-listener"],
)
def test_listeners_allowed_routes(listener: dict[str, Any], route_ns: str, want: tuple[str, str]) -> None:
    """Listeners admit routes by namespace (Same, All, Selector) and kind: NotAllowedByListeners."""
    spec = {"name": "l", "port": 80, "protocol": "HTTP", **listener}
    world = StaticWorld(
        services=[service(namespace=route_ns)],
        gateways=[gateway(listeners=[spec])],
        gateway_classes=[gateway_class()],
        namespaces=[Namespace.model_validate({"metadata": {"name": "other", "labels": {"env": "prod"}}})],
    )
    route = http_route([{**GW_PARENT, "namespace": NS}], namespace=route_ns)
    status = route_status(route, world, now=T0)
    assert conditions(status.parents, "gw")["Accepted"] == want


def test_listener_hostnames_must_intersect_the_route_hostnames() -> None:
    """No admitting listener hostname matches: NoMatchingListenerHostname; a wildcard matches."""
    gw = gateway(listeners=[{"name": "l", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"}])
    world = StaticWorld(services=[service()], gateways=[gw], gateway_classes=[gateway_class()])
    miss = route_status(http_route([GW_PARENT], hostnames=["shop.other.org"]), world, now=T0)
    assert conditions(miss.parents, "gw")["Accepted"] == ("False", "NoMatchingListenerHostname")
    hit = route_status(http_route([GW_PARENT], hostnames=["shop.example.com"]), world, now=T0)
    assert conditions(hit.parents, "gw")["Accepted"] == ("True", "Accepted")


def test_hostnames_intersect() -> None:
    """Exact names, and wildcards on either side, as the Gateway API matches them."""
    assert hostnames_intersect("a.example.com", "a.example.com")
    assert hostnames_intersect("*.example.com", "a.example.com")
    assert hostnames_intersect("a.b.example.com", "*.example.com")
    assert not hostnames_intersect("*.example.com", "example.com")
    assert not hostnames_intersect("a.example.com", "b.example.com")


# ---------------------------------------------------------------------------------------------------
# Merging with what is there


def test_other_controllers_entries_are_kept() -> None:
    """Entries written by other controllers stay as they are."""
    theirs = {
        "parentRef": {"name": "their-gw"},
        "controllerName": "example.com/gw",
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": T0}
        ],
    }
    route = http_route([SVC_PARENT, {"name": "their-gw"}], status={"parents": [theirs]})
    world = StaticWorld(
        services=[service()],
        gateways=[gateway("their-gw", "theirs")],
        gateway_classes=[gateway_class("theirs", "example.com/gw")],
    )
    status = route_status(route, world, now=T0)
    assert status.parents[0] == RouteParentStatus.model_validate(theirs)
    assert [p.controller_name for p in status.parents] == ["example.com/gw", CONTROLLER_NAME]


def test_transition_time_is_kept_while_the_status_holds() -> None:
    """Recomputing with no change keeps lastTransitionTime and asks for no write; a flip moves it."""
    world = StaticWorld(services=[service()])
    first = route_status(http_route([SVC_PARENT]), world, now=T0)
    route = http_route([SVC_PARENT], status=first.to_dict())
    again = route_status(route, world, now=T1)
    assert not route_status_changed(route, again)
    flipped = route_status(route, StaticWorld(), now=T1)
    assert route_status_changed(route, flipped)
    times = {c.type: c.last_transition_time for c in flipped.parents[0].conditions}
    assert times == {"Accepted": T1, "ResolvedRefs": T1}


def test_new_generation_is_a_change() -> None:
    """A spec change (new generation) rewrites observedGeneration but keeps the transition time."""
    world = StaticWorld(services=[service()])
    first = route_status(http_route([SVC_PARENT]), world, now=T0)
    route = http_route([SVC_PARENT], status=first.to_dict(), generation=8)
    new = route_status(route, world, now=T1)
    assert route_status_changed(route, new)
    assert {c.observed_generation for c in new.parents[0].conditions} == {8}
    assert {c.last_transition_time for c in new.parents[0].conditions} == {T0}


def test_entries_for_removed_parents_are_dropped() -> None:
    """Our entry for a parentRef no longer in the spec is removed."""
    world = StaticWorld(services=[service(), service("api")])
    first = route_status(http_route([SVC_PARENT, {**SVC_PARENT, "name": "api"}]), world, now=T0)
    assert len(first.parents) == 2
    route = http_route([SVC_PARENT], status=first.to_dict())
    assert [p.parent_ref.name for p in route_status(route, world, now=T1).parents] == ["web"]


def test_route_with_no_owned_parents_needs_no_write() -> None:
    """A route attached only to other controllers' parents: nothing to write."""
    world = StaticWorld(
        gateways=[gateway(klass="theirs")], gateway_classes=[gateway_class("theirs", "example.com/gw")]
    )
    route = http_route([GW_PARENT])
    assert not route_status_changed(route, route_status(route, world, now=T0))


# ---------------------------------------------------------------------------------------------------
# GatewayClass


def test_our_gateway_class_is_accepted() -> None:
    """A class naming our controller gets Accepted=True with its generation; others get nothing."""
    status = gateway_class_status(gateway_class(), now=T0)
    assert status is not None
    (accepted,) = status.conditions
    assert (accepted.type, accepted.status, accepted.reason, accepted.observed_generation) == (
        "Accepted",
        "True",
        "Accepted",
        3,
    )
    assert gateway_class_status(gateway_class(controller="example.com/gw"), now=T0) is None
