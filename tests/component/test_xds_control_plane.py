"""The xDS server inside the real control plane: API objects in, Envoy resources out, NACKs shown.

A raw ADS stream stands for a data plane (as Envoy would be): it sees what the translator made of the
objects applied through the API, how fast a change reaches it, and its NACK shows on the route.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from envoy.config.route.v3 import route_pb2

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from innermesh.server import ControlPlane
from innermesh.xds.types import ROUTE
from support.eventually import eventually
from support.xds import RawAds, node

NS = "default"
HTTPROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")
SERVICE = REGISTRY.by_gvk("v1", "Service")
WORKLOAD = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")


def route(name: str, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": path}}],
        "backendRefs": [{"name": "web", "port": 80}],
    }
    if headers:
        rule["filters"] = [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": k, "value": v} for k, v in headers.items()]},
            }
        ]
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [rule],
        },
    }


async def setup(api: HttpClient) -> None:
    await api.create(
        SERVICE,
        NS,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
        },
    )
    await api.create(WORKLOAD, NS, {"metadata": {"name": "client"}, "spec": {"addresses": ["127.0.0.1"]}})


async def route_config(ads: RawAds) -> tuple[Any, Any]:
    """Read responses until one carries RouteConfigurations; (response, the `outbound` config)."""
    while True:
        response = await ads.recv(wait=5)
        if response.type_url == ROUTE:
            configs = [route_pb2.RouteConfiguration.FromString(r.value) for r in response.resources]
            return response, next(c for c in configs if c.name == "outbound")


def route_names(config: Any) -> list[str]:
    return [r.name for vh in config.virtual_hosts for r in vh.routes]


def data_plane_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    for parent in (obj.get("status") or {}).get("parents") or []:
        for c in parent.get("conditions") or []:
            if c["type"] == "innermesh.io/DataPlaneAccepted":
                return dict(c)
    return None


async def test_a_route_reaches_a_sidecar_within_a_second(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    await setup(api)
    ads = RawAds(control_plane.xds_port)
    try:
        sidecar = node("sidecar~default~client", NAMESPACE=NS, WORKLOAD="client")
        await ads.send(node=sidecar, type_url=ROUTE, resource_names=["outbound"])
        response, config = await route_config(ads)
        assert route_names(config) == ["default"], "no HTTPRoute yet: the Service's default route"
        await ads.send(
            node=sidecar,
            type_url=ROUTE,
            resource_names=["outbound"],
            version_info=response.version_info,
            response_nonce=response.nonce,
        )

        started = time.monotonic()
        await api.create(HTTPROUTE, NS, route("web", "/api"))
        response, config = await route_config(ads)
        elapsed = time.monotonic() - started
        assert route_names(config) == ["HTTPRoute/default/web/0/0"]
        assert elapsed < 1.0, f"the change took {elapsed:.2f}s to reach the data plane"
    finally:
        await ads.close()


async def test_a_nack_shows_on_the_route_and_clears_once_accepted(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    await setup(api)
    await api.create(HTTPROUTE, NS, route("web", "/api"))
    ads = RawAds(control_plane.xds_port)
    try:
        sidecar = node("sidecar~default~client", NAMESPACE=NS, WORKLOAD="client")
        await ads.send(node=sidecar, type_url=ROUTE, resource_names=["outbound"])
        response, config = await route_config(ads)
        assert route_names(config) == ["HTTPRoute/default/web/0/0"]
        # The data plane refuses it, naming the element as innermesh's proxy does.
        reason = 'RouteConfiguration "outbound": virtual_hosts[0].routes[0].match: unsupported'
        await ads.send(
            node=sidecar,
            type_url=ROUTE,
            resource_names=["outbound"],
            response_nonce=response.nonce,
            error_detail={"code": 3, "message": reason},
        )

        async def rejected() -> dict[str, Any]:
            cond = data_plane_condition(await api.get(HTTPROUTE, NS, "web"))
            assert cond is not None and cond["status"] == "False", cond
            return cond

        cond = await eventually(rejected, timeout=5)
        assert cond["reason"] == "Rejected"
        assert cond["message"] == f"sidecar~default~client rejected it: {reason}"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{control_plane.port}/metrics") as r,
        ):
            metrics = await r.text()
        assert 'innermesh_xds_nacks_total{type="RouteConfiguration"} 1' in metrics.splitlines()
        assert 'innermesh_xds_connected_proxies{kind="sidecar"} 1' in metrics.splitlines()

        # A new version of the route, which the data plane accepts: the condition turns True.
        obj = await api.get(HTTPROUTE, NS, "web")
        obj["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/v2"
        await api.update(HTTPROUTE, NS, "web", obj)
        response, config = await route_config(ads)
        await ads.send(
            node=sidecar,
            type_url=ROUTE,
            resource_names=["outbound"],
            version_info=response.version_info,
            response_nonce=response.nonce,
        )

        async def accepted() -> dict[str, Any]:
            cond = data_plane_condition(await api.get(HTTPROUTE, NS, "web"))
            assert cond is not None and cond["status"] == "True", cond
            return cond

        cond = await eventually(accepted, timeout=5)
        assert cond["reason"] == "Accepted"
        # The route status controller keeps the condition beside its own.
        obj = await api.get(HTTPROUTE, NS, "web")
        types = {c["type"] for p in obj["status"]["parents"] for c in p["conditions"]}
        assert types == {"Accepted", "ResolvedRefs", "innermesh.io/DataPlaneAccepted"}
    finally:
        await ads.close()
