"""The xDS server inside the real control plane: API objects in, Envoy resources out, NACKs shown.

A raw ADS stream stands for a data plane (as Envoy would be): it sees what the translator made of the
objects applied through the API, how fast a change reaches it, and its NACK shows on the route.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import aiohttp
from envoy.config.route.v3 import route_pb2

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from innermesh.client.local import LocalClient
from innermesh.server import ControlPlane
from innermesh.xds.nackstatus import NackStatus
from innermesh.xds.server import ConnectionStatus
from innermesh.xds.streams import TypeStatus
from innermesh.xds.types import LISTENER, ROUTE, ProxyInfo
from support.eventually import eventually
from support.xds import RawAds, node

NS = "default"
HTTPROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")
GRPCROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "GRPCRoute")
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


async def test_status_writes_do_not_push_but_spec_changes_do(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    """A route's status (the route status controller's, or a data plane's NACK shown there) is not
    something the translator reads: writing it pushes nothing. A spec change pushes."""
    await setup(api)
    await api.create(HTTPROUTE, NS, route("web", "/api"))
    xds = control_plane.xds
    assert xds is not None

    async def route_status_written() -> bool:
        return bool(((await api.get(HTTPROUTE, NS, "web")).get("status") or {}).get("parents"))

    await eventually(route_status_written)
    await asyncio.sleep(0.7)  # the last debounced push of the setup has gone out
    pushes = xds.stats.pushes

    obj = await api.get(HTTPROUTE, NS, "web")
    obj["status"]["parents"][0]["conditions"].append(
        {
            "type": "innermesh.io/Test",
            "status": "True",
            "reason": "Test",
            "message": "a status-only write",
            "lastTransitionTime": "2026-01-02T15:04:05Z",
        }
    )
    await api.update(HTTPROUTE, NS, "web", obj, subresource="status")
    await asyncio.sleep(0.7)
    assert xds.stats.pushes == pushes

    obj = await api.get(HTTPROUTE, NS, "web")
    obj["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/v2"
    await api.update(HTTPROUTE, NS, "web", obj)
    await eventually(lambda: xds.stats.pushes == pushes + 1)


async def test_identical_proxies_share_one_translation_per_state(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    """Two proxies that differ only in node id get the very same translation; a change of state makes
    a new one."""
    await setup(api)
    source = control_plane.mesh
    assert source is not None
    one = ProxyInfo(node_id="grpc-1", kind="proxyless", namespace=NS)
    two = ProxyInfo(node_id="grpc-2", kind="proxyless", namespace=NS)
    names = frozenset({"web.default:80"})
    first = source.generate(one, names)
    assert first[LISTENER], "the listener the client asked for"
    assert source.generate(two, names) is first
    assert source.generate(two, None) is not first
    assert (
        source.generate(ProxyInfo(node_id="grpc-3", kind="proxyless", namespace="other"), names) is not first
    )

    await api.create(HTTPROUTE, NS, route("web", "/api"))
    await eventually(lambda: source.generate(two, names) is not first)


# --- NACKs shown on routes: a flood from one node is rate-limited ---------------------------------


CLIENT = ProxyInfo(node_id="sidecar~default~client", kind="sidecar", namespace=NS, workload="client")
OTHER = ProxyInfo(node_id="sidecar~default~other", kind="sidecar", namespace=NS, workload="client")


class CountingClient(LocalClient):
    """The in-process client, counting status writes."""

    status_writes = 0

    async def update(self, *args: Any, subresource: Literal["", "status", "finalize"] = "", **kw: Any) -> Any:
        if subresource == "status":
            self.status_writes += 1
        return await super().update(*args, subresource=subresource, **kw)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def still_rejecting(*node_ids: str) -> list[ConnectionStatus]:
    """Streams whose last RouteConfiguration is not acknowledged (they keep their routes flagged)."""
    pending = {ROUTE: TypeStatus(("outbound",), sent_version="v2", acked_version="v1")}
    return [ConnectionStatus(n, "sidecar", "delta", "peer", 0.0, pending, None) for n in node_ids]


async def message(api: HttpClient) -> str:
    cond = data_plane_condition(await api.get(HTTPROUTE, NS, "web"))
    assert cond is not None
    return str(cond["message"])


async def test_a_flood_of_nacks_from_one_node_is_one_status_write_per_window(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    """Twenty NACKs with fresh reasons from one node: the first is written at once, the rest are
    coalesced into one write of the latest once the node's window has passed; another node is not
    held back by the first."""
    await setup(api)
    await api.create(HTTPROUTE, NS, route("web", "/api"))

    async def status_written() -> bool:
        return bool(((await api.get(HTTPROUTE, NS, "web")).get("status") or {}).get("parents"))

    await eventually(status_written)
    assert control_plane.resources is not None and control_plane.mesh is not None
    client = CountingClient(control_plane.resources)
    clock = Clock()
    kinds = {
        "HTTPRoute": HTTPROUTE,
        "GRPCRoute": REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "GRPCRoute"),
    }
    nacks = NackStatus(
        client,
        control_plane.mesh,
        kinds,
        lambda: still_rejecting(CLIENT.node_id, OTHER.node_id),
        interval=0.02,
        per_node_interval=3.0,
        clock=clock,
    )
    for i in range(20):
        await nacks.on_nack(CLIENT, ROUTE, ["outbound"], f"virtual_hosts[0].routes[0]: forged {i}")
    assert client.status_writes == 1
    assert (await message(api)).endswith("forged 0")

    runner = asyncio.create_task(nacks.run())
    try:
        await asyncio.sleep(0.2)
        assert client.status_writes == 1, "the node's window has not passed"
        clock.now += 3.0
        await eventually(lambda: client.status_writes == 2)
        assert (await message(api)).endswith("forged 19")
        await asyncio.sleep(0.2)
        assert client.status_writes == 2

        await nacks.on_nack(OTHER, ROUTE, ["outbound"], "virtual_hosts[0].routes[0]: another node")
        assert client.status_writes == 3
        assert (await message(api)).startswith(f"{OTHER.node_id} rejected it")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
