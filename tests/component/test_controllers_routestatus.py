"""Route and GatewayClass status against a running server: conditions written with upstream reasons,
reacting within a second to Services, ReferenceGrants and Gateways, other controllers' entries kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from innermesh.api.attachment import CONTROLLER_NAME
from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from innermesh.controllers.manager import ControllerManager
from innermesh.server import ControlPlane
from support.eventually import eventually, timed

SVC = REGISTRY.by_gvk("v1", "Service")
NSK = REGISTRY.by_gvk("v1", "Namespace")
HTTPROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")
GRPCROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "GRPCRoute")
GATEWAY = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "Gateway")
GWCLASS = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "GatewayClass")
GRANT = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "ReferenceGrant")
NS = "default"
BUDGET = 1.0


def service(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}}


def route(name: str, parents: list[dict[str, Any]], backends: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"parentRefs": parents, "rules": [{"backendRefs": backends}]}}


SVC_PARENT = {"group": "", "kind": "Service", "name": "web", "port": 80}


async def our_conditions(
    api: HttpClient, kind: Any, name: str, parent: str = "web"
) -> dict[str, tuple[str, str]]:
    obj = await api.get(kind, NS, name)
    for entry in (obj.get("status") or {}).get("parents") or []:
        if entry["controllerName"] == CONTROLLER_NAME and entry["parentRef"]["name"] == parent:
            return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}
    return {}


def wants(
    api: HttpClient, kind: Any, name: str, expected: dict[str, tuple[str, str]], parent: str = "web"
) -> Callable[[], Any]:
    async def check() -> bool:
        return await our_conditions(api, kind, name, parent) == expected

    return check


OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


async def test_mesh_route_status_follows_its_services_within_a_second(api: HttpClient) -> None:
    """Mesh route status follows its backend and parent Services within a second."""
    latencies: dict[str, float] = {}
    await api.create(SVC, NS, service("web"))
    await api.create(HTTPROUTE, NS, route("r", [SVC_PARENT], [{"name": "api", "port": 80}]))
    latencies["route created"] = await timed(
        wants(
            api,
            HTTPROUTE,
            "r",
            {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")},
        ),
        3.0,
    )
    await api.create(SVC, NS, service("api"))
    latencies["backend Service created"] = await timed(wants(api, HTTPROUTE, "r", OK), 3.0)
    await api.delete(SVC, NS, "web")
    latencies["parent Service deleted"] = await timed(
        wants(
            api,
            HTTPROUTE,
            "r",
            {"Accepted": ("False", "NoMatchingParent"), "ResolvedRefs": ("True", "ResolvedRefs")},
        ),
        3.0,
    )
    print("\nchange -> route status latency:", {k: f"{v * 1000:.1f} ms" for k, v in latencies.items()})
    assert max(latencies.values()) < BUDGET
    obj = await api.get(HTTPROUTE, NS, "r")
    (entry,) = obj["status"]["parents"]
    assert entry["parentRef"] == SVC_PARENT
    assert {c["observedGeneration"] for c in entry["conditions"]} == {obj["metadata"]["generation"]}


async def test_reference_grant_permits_a_cross_namespace_backend_within_a_second(api: HttpClient) -> None:
    """A ReferenceGrant resolves a cross-namespace backend within a second; deleting it refuses it again."""
    await api.create(NSK, None, {"metadata": {"name": "data"}})
    await api.create(SVC, "data", service("db"))
    await api.create(SVC, NS, service("web"))
    await api.create(
        GRPCROUTE, NS, route("g", [SVC_PARENT], [{"name": "db", "namespace": "data", "port": 80}])
    )
    refused = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}
    await eventually(wants(api, GRPCROUTE, "g", refused), 3.0)
    grant = {
        "metadata": {"name": "from-default"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "namespace": NS}],
            "to": [{"group": "", "kind": "Service", "name": "db"}],
        },
    }
    await api.create(GRANT, "data", grant)
    granted = await timed(wants(api, GRPCROUTE, "g", OK), 3.0)
    await api.delete(GRANT, "data", "from-default")
    revoked = await timed(wants(api, GRPCROUTE, "g", refused), 3.0)
    print(
        f"\nReferenceGrant created -> resolved {granted * 1000:.1f} ms, deleted -> refused {revoked * 1000:.1f} ms"
    )
    assert granted < BUDGET
    assert revoked < BUDGET


async def test_gateway_parent_of_our_class_is_accepted_once_the_gateway_exists(api: HttpClient) -> None:
    """Our GatewayClass is Accepted; a route is accepted once its Gateway exists, if listeners allow it."""
    await api.create(
        GWCLASS, None, {"metadata": {"name": "mesh"}, "spec": {"controllerName": CONTROLLER_NAME}}
    )
    await api.create(
        GWCLASS, None, {"metadata": {"name": "theirs"}, "spec": {"controllerName": "example.com/gw"}}
    )

    async def class_accepted(name: str) -> str:
        obj = await api.get(GWCLASS, None, name)
        return str(next(c["status"] for c in obj["status"]["conditions"] if c["type"] == "Accepted"))

    await eventually(lambda: _eq(class_accepted("mesh"), "True"), 3.0)
    assert await class_accepted("theirs") == "Unknown"  # not ours: left pending

    await api.create(SVC, NS, service("web"))
    await api.create(HTTPROUTE, NS, route("r", [{"name": "gw"}], [{"name": "web", "port": 80}]))
    missing = {"Accepted": ("False", "NoMatchingParent"), "ResolvedRefs": ("True", "ResolvedRefs")}
    await eventually(wants(api, HTTPROUTE, "r", missing, parent="gw"), 3.0)
    gateway = {
        "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": "mesh", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    }
    await api.create(GATEWAY, NS, gateway)
    latency = await timed(wants(api, HTTPROUTE, "r", OK, parent="gw"), 3.0)
    print(f"\nGateway created -> route accepted {latency * 1000:.1f} ms")
    assert latency < BUDGET

    await api.create(NSK, None, {"metadata": {"name": "team"}})
    await api.create(SVC, "team", service("web"))
    await api.create(
        HTTPROUTE, "team", route("r", [{"name": "gw", "namespace": NS}], [{"name": "web", "port": 80}])
    )
    refused = {"Accepted": ("False", "NotAllowedByListeners"), "ResolvedRefs": ("True", "ResolvedRefs")}

    async def team_route() -> bool:
        obj = await api.get(HTTPROUTE, "team", "r")
        entries = (obj.get("status") or {}).get("parents") or []
        return [{c["type"]: (c["status"], c["reason"]) for c in e["conditions"]} for e in entries] == [
            refused
        ]

    await eventually(team_route, 3.0)


async def test_other_controllers_entries_are_kept_and_unchanged_routes_are_not_rewritten(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    """Other controllers' parent entries survive our writes; an unchanged route is not rewritten."""
    await api.create(SVC, NS, service("web"))
    await api.create(
        GWCLASS, None, {"metadata": {"name": "theirs"}, "spec": {"controllerName": "example.com/gw"}}
    )
    gateway = {
        "metadata": {"name": "their-gw"},
        "spec": {
            "gatewayClassName": "theirs",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }
    await api.create(GATEWAY, NS, gateway)
    created = await api.create(
        HTTPROUTE, NS, route("r", [{"name": "their-gw"}], [{"name": "web", "port": 80}])
    )
    theirs = {
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "their-gw"},
        "controllerName": "example.com/gw",
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "theirs",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    await api.update(HTTPROUTE, NS, "r", {**created, "status": {"parents": [theirs]}}, subresource="status")
    await api.patch(HTTPROUTE, NS, "r", "merge", {"spec": {"parentRefs": [{"name": "their-gw"}, SVC_PARENT]}})
    await eventually(wants(api, HTTPROUTE, "r", OK), 3.0)
    obj = await api.get(HTTPROUTE, NS, "r")
    assert obj["status"]["parents"][0] == theirs

    assert isinstance(control_plane.controllers, ControllerManager)
    ctl = control_plane.controllers.routestatus
    writes, reconciles = ctl.writes, ctl.controller.reconciles
    await api.patch(HTTPROUTE, NS, "r", "merge", {"metadata": {"annotations": {"note": "no spec change"}}})
    await eventually(lambda: ctl.controller.reconciles > reconciles, 3.0)
    await eventually(lambda: ctl.controller.queue is not None and not ctl.controller.queue.processing, 3.0)
    assert ctl.writes == writes
    assert (await api.get(HTTPROUTE, NS, "r"))["status"] == obj["status"]


async def test_a_grpc_route_takes_the_port_from_an_http_route_within_a_second(api: HttpClient) -> None:
    """GEP-1426: a GRPCRoute on the HTTPRoute's Service port makes the HTTPRoute Conflicted within a
    second (the GRPCRoute's own change re-queues it); deleting the GRPCRoute gives the port back."""
    await api.create(SVC, NS, service("web"))
    await api.create(HTTPROUTE, NS, route("h", [SVC_PARENT], [{"name": "web", "port": 80}]))
    await eventually(wants(api, HTTPROUTE, "h", OK), 3.0)
    await api.create(GRPCROUTE, NS, route("g", [SVC_PARENT], [{"name": "web", "port": 80}]))
    conflicted = {"Accepted": ("False", "Conflicted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    taken = await timed(wants(api, HTTPROUTE, "h", conflicted), 3.0)
    assert await our_conditions(api, GRPCROUTE, "g") == OK
    await api.delete(GRPCROUTE, NS, "g")
    given_back = await timed(wants(api, HTTPROUTE, "h", OK), 3.0)
    print(
        f"\nGRPCRoute created -> HTTPRoute Conflicted {taken * 1000:.1f} ms, deleted -> {given_back * 1000:.1f} ms"
    )
    assert taken < BUDGET
    assert given_back < BUDGET


async def test_rules_the_mesh_cannot_implement_show_in_status(api: HttpClient) -> None:
    """A rule with a filter the mesh lacks beside a good one: PartiallyInvalid; once the rule is
    fixed the condition goes away."""
    await api.create(SVC, NS, service("web"))
    rewrite = {"type": "URLRewrite", "urlRewrite": {"hostname": "elsewhere"}}
    body = route("r", [SVC_PARENT], [{"name": "web", "port": 80}])
    body["spec"]["rules"].append({"backendRefs": [{"name": "web", "port": 80, "filters": [rewrite]}]})
    await api.create(HTTPROUTE, NS, body)
    partially = {**OK, "PartiallyInvalid": ("True", "UnsupportedValue")}
    await eventually(wants(api, HTTPROUTE, "r", partially), 3.0)
    await api.patch(HTTPROUTE, NS, "r", "merge", {"spec": {"rules": body["spec"]["rules"][:1]}})
    await eventually(wants(api, HTTPROUTE, "r", OK), 3.0)


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
