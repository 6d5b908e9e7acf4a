"""Route status says what the data planes do: the reviewer's two reproductions (an HTTPRoute shadowed
by a GRPCRoute on the same Service port; a rule answered with 500 while its status said Accepted and
resolved), and for a spread of rules, that the translator answers with 500 exactly the rules
``rule_problems`` names and that status reports."""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_xds_scope import CLIENT_NS, PROXY, obj, service, workload

from innermesh.api.attachment import route_status, rule_problems
from innermesh.proxy.compile import compile_plan
from innermesh.proxy.plan import DirectResponse, Forward, Plan, RequestHead
from innermesh.xds.state import MeshState
from innermesh.xds.translate import translate
from innermesh.xds.translate.attachment import StateWorld
from innermesh.xds.types import ROUTE, ProxyInfo

PARENT = [{"group": "", "kind": "Service", "name": "web", "port": 80}]
WEB = "web:80"
PROXYLESS = ProxyInfo(node_id="grpc", kind="proxyless", namespace=CLIENT_NS)


def route(kind: str, name: str, rules: list[dict[str, Any]], parents: list[dict[str, Any]] = PARENT) -> Any:
    return obj(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": CLIENT_NS, "generation": 1},
            "spec": {"parentRefs": parents, "rules": rules},
        }
    )


def mesh(*routes: Any) -> MeshState:
    services = [service(CLIENT_NS, name, i) for i, name in enumerate(("web", "api", "grpc-backend"), 1)]
    return MeshState.from_objects([workload(), *services, *routes])


def sidecar_plan(state: MeshState) -> Plan:
    return compile_plan(translate(state, PROXY, None), None, version="1", rng=random.Random(1))


def request(path: bytes, content_type: bytes | None = None) -> RequestHead:
    headers = [(b"content-type", content_type)] if content_type else [(b"accept", b"application/json")]
    return RequestHead(b"POST" if content_type else b"GET", path, b"", WEB.encode(), headers)


def accepted(state: MeshState, r: Any) -> tuple[str, str]:
    (entry,) = route_status(r, StateWorld(state)).parents
    cond = next(c for c in entry.conditions if c.type == "Accepted")
    return cond.status, cond.reason


# --- finding 5: GRPCRoute and HTTPRoute on one Service port -------------------------------------------

HTTP = route(
    "HTTPRoute",
    "web-http",
    [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "backendRefs": [{"name": "api", "port": 80}],
        }
    ],
)
GRPC = route("GRPCRoute", "web-grpc", [{"backendRefs": [{"name": "grpc-backend", "port": 80}]}])


def test_plain_http_is_not_taken_by_a_grpc_route() -> None:
    """The reviewer's reproduction: a plain GET /api/users went to the GRPCRoute's backend. The
    HTTPRoute is Conflicted and not programmed; the GRPCRoute takes gRPC calls only, so the GET finds
    no route (404), and a gRPC call still reaches the GRPCRoute's backend."""
    state = mesh(HTTP, GRPC)
    assert accepted(state, HTTP) == ("False", "Conflicted")
    assert accepted(state, GRPC) == ("True", "Accepted")
    vhost = sidecar_plan(state).route_tables["outbound"].lookup(WEB.encode())
    assert vhost is not None
    assert vhost.select(request(b"/api/users")) is None
    call = vhost.select(request(b"/pkg.Svc/Get", b"application/grpc"))
    assert call is not None
    assert isinstance(call.action, Forward)
    assert [b.cluster for b in call.action.backends] == ["outbound|80||grpc-backend.team-a.svc.cluster.local"]


def test_without_the_grpc_route_the_http_route_is_back() -> None:
    """Delete the GRPCRoute: the HTTPRoute is accepted and programmed again."""
    state = mesh(HTTP)
    assert accepted(state, HTTP) == ("True", "Accepted")
    vhost = sidecar_plan(state).route_tables["outbound"].lookup(WEB.encode())
    assert vhost is not None
    found = vhost.select(request(b"/api/users"))
    assert found is not None
    assert isinstance(found.action, Forward)
    assert [b.cluster for b in found.action.backends] == ["outbound|80||api.team-a.svc.cluster.local"]


def test_proxyless_grpc_gets_the_grpc_route_without_the_grpc_field() -> None:
    """Proxyless gRPC: the HTTPRoute is left out there too; every call of a gRPC channel is gRPC, so
    its routes carry no ``grpc`` match (gRFC A28 ignores it)."""
    resources = translate(mesh(HTTP, GRPC), PROXYLESS, frozenset({"web." + CLIENT_NS}))
    routes = [r for vh in resources[ROUTE]["web." + CLIENT_NS].virtual_hosts for r in vh.routes]
    assert [r.name for r in routes] == ["GRPCRoute/team-a/web-grpc/0/0"]
    assert not routes[0].match.HasField("grpc")


# --- finding 6: a rule answered with 500 shows in status ----------------------------------------------

REWRITE = [{"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal"}}]
FAULT = {
    "type": "ExtensionRef",
    "extensionRef": {"group": "mesh.innermesh.io", "kind": "FaultInjection", "name": "x"},
}
OTHER_KIND = {
    "type": "ExtensionRef",
    "extensionRef": {"group": "example.com", "kind": "RateLimit", "name": "x"},
}
CORS = {"type": "CORS", "cors": {"allowOrigins": ["https://example.com"]}}


def prefix(value: str) -> list[dict[str, Any]]:
    return [{"path": {"type": "PathPrefix", "value": value}}]


def test_a_rule_answered_with_500_is_not_accepted_and_says_why() -> None:
    """The reviewer's reproduction: a URLRewrite on the only backendRef. Status said Accepted and
    resolved while every request got 500 "no backendRef can be resolved". Now the route is not
    Accepted (IncompatibleFilters) and so not programmed: the Service's default route serves."""
    r = route("HTTPRoute", "web", [{"backendRefs": [{"name": "api", "port": 80, "filters": REWRITE}]}])
    state = mesh(r)
    assert accepted(state, r) == ("False", "IncompatibleFilters")
    vhost = sidecar_plan(state).route_tables["outbound"].lookup(WEB.encode())
    assert vhost is not None
    found = vhost.select(request(b"/"))
    assert found is not None
    assert found.name == "default"


GOOD = {"matches": prefix("/good"), "backendRefs": [{"name": "api", "port": 80}]}
BACKEND = {"name": "api", "port": 80}

# name, rule, what its requests get (a fragment of the 500 body), the condition that reports it
CASES: list[tuple[str, dict[str, Any], str, tuple[str, str, str]]] = [
    (
        "backend-rewrite",
        {"matches": prefix("/rw"), "backendRefs": [{**BACKEND, "filters": REWRITE}]},
        "backendRefs[0].filters[0]: URLRewrite is not supported on a backendRef",
        ("PartiallyInvalid", "True", "UnsupportedValue"),
    ),
    (
        "cors",
        {"matches": prefix("/cors"), "filters": [CORS], "backendRefs": [BACKEND]},
        "filters[0]: CORS is not supported",
        ("PartiallyInvalid", "True", "UnsupportedValue"),
    ),
    (
        "backend-fault",
        {"matches": prefix("/bf"), "backendRefs": [{**BACKEND, "filters": [FAULT]}]},
        "backendRefs[0].filters[0]: ExtensionRef is not supported on a backendRef",
        ("PartiallyInvalid", "True", "UnsupportedValue"),
    ),
    (
        "missing-fault",
        {"matches": prefix("/fault"), "filters": [FAULT], "backendRefs": [BACKEND]},
        'filter extensionRef FaultInjection "team-a/x" does not exist',
        ("ResolvedRefs", "False", "BackendNotFound"),
    ),
    (
        "other-kind",
        {"matches": prefix("/kind"), "filters": [OTHER_KIND], "backendRefs": [BACKEND]},
        "kind example.com/RateLimit is not supported",
        ("ResolvedRefs", "False", "InvalidKind"),
    ),
    (
        "unresolved-backend",
        {"matches": prefix("/gone"), "backendRefs": [{"name": "gone", "port": 80}]},
        'backendRef Service "team-a/gone" does not exist',
        ("ResolvedRefs", "False", "BackendNotFound"),
    ),
]


@pytest.mark.parametrize(("name", "rule", "body", "condition"), CASES, ids=[c[0] for c in CASES])
def test_every_rule_answered_with_500_shows_in_status(
    name: str, rule: dict[str, Any], body: str, condition: tuple[str, str, str]
) -> None:
    """Beside a good rule, each kind of rule the data plane answers with 500: the body names the
    route, the rule and the problem; status reports it (PartiallyInvalid for a filter the mesh lacks,
    ResolvedRefs for a reference that does not resolve); the route stays Accepted for its good rule;
    and the problems the body lists are the ones ``rule_problems`` (the one decision) gives."""
    r = route("HTTPRoute", "web", [GOOD, rule])
    state = mesh(r)
    vhost = sidecar_plan(state).route_tables["outbound"].lookup(WEB.encode())
    assert vhost is not None
    found = vhost.select(request(rule["matches"][0]["path"]["value"].encode()))
    assert found is not None
    assert isinstance(found.action, DirectResponse)
    assert found.action.status == 500
    assert found.action.body.startswith(b"innermesh: HTTPRoute team-a/web rules[1]: ")
    assert body.encode() in found.action.body
    assert all(p.message.encode() in found.action.body for p in rule_problems(r, 1, StateWorld(state)))
    (entry,) = route_status(r, StateWorld(state)).parents
    got = {c.type: (c.status, c.reason, c.message) for c in entry.conditions}
    ctype, status, reason = condition
    assert got[ctype][:2] == (status, reason)
    assert body in got[ctype][2]
    assert got["Accepted"][:2] == ("True", "Accepted")
    if ctype != "PartiallyInvalid":
        assert "PartiallyInvalid" not in got
    good = vhost.select(request(b"/good"))
    assert good is not None
    assert isinstance(good.action, Forward)
