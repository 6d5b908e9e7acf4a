"""EndpointSlices against a running server: every kind of change shows in the slices within a second
(measured), with minimal churn, and slices go away with their Service or its selector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from innermesh.controllers.manager import ControllerManager, ManagerConfig
from innermesh.server import ControlPlane
from support.eventually import eventually, timed

SVC = REGISTRY.by_gvk("v1", "Service")
WL = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
SLICE = REGISTRY.by_gvk("discovery.k8s.io/v1", "EndpointSlice")
NS = "default"
BUDGET = 1.0  # a change must reach the slices within this many seconds

Connect = Callable[[ControlPlane], HttpClient]


def workload(name: str, address: str, app: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"addresses": [address], "ports": [{"name": "http", "port": 8080}], **spec},
    }


def service(name: str = "web", selector: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": "web"} if selector is None else selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            **spec,
        },
    }


async def slices_of(api: HttpClient, service_name: str) -> list[dict[str, Any]]:
    items, _ = await api.list(SLICE, NS, label_selector=f"kubernetes.io/service-name={service_name}")
    return items


async def endpoints_of(api: HttpClient, service_name: str) -> dict[str, dict[str, Any]]:
    """address -> endpoint, over every slice of the Service."""
    return {
        ep["addresses"][0]: ep for s in await slices_of(api, service_name) for ep in s.get("endpoints") or []
    }


def ready_condition(status: str) -> dict[str, Any]:
    return {
        "conditions": [
            {
                "type": "Ready",
                "status": status,
                "reason": "Probe",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    }


async def set_ready(api: HttpClient, name: str, status: str) -> None:
    obj = await api.get(WL, NS, name)
    await api.update(WL, NS, name, {**obj, "status": ready_condition(status)}, subresource="status")


def manager(plane: ControlPlane) -> ControllerManager:
    assert isinstance(plane.controllers, ControllerManager)
    return plane.controllers


async def test_changes_reach_the_slices_within_a_second(api: HttpClient) -> None:
    """Every Workload and Service change reaches the slices in under a second (latencies printed)."""
    latencies: dict[str, float] = {}

    async def measure(step: str, check: Callable[[], Any]) -> None:
        latencies[step] = await timed(check, BUDGET * 3, what=step)

    await api.create(SVC, NS, service())
    await measure("service created -> placeholder slice", lambda: _has_placeholder(api))

    async def eps() -> dict[str, dict[str, Any]]:
        return await endpoints_of(api, "web")

    await api.create(WL, NS, workload("w1", "127.0.0.11"))
    await measure("workload added", lambda: _check(eps, lambda e: "127.0.0.11" in e))
    slice_ports = [p["port"] for p in (await slices_of(api, "web"))[0]["ports"]]
    assert slice_ports == [8080]

    await api.create(WL, NS, workload("w2", "127.0.0.12"))
    await measure(
        "second workload added", lambda: _check(eps, lambda e: set(e) == {"127.0.0.11", "127.0.0.12"})
    )

    await set_ready(api, "w1", "False")
    await measure(
        "readiness flipped to False",
        lambda: _check(
            eps,
            lambda e: (
                e["127.0.0.11"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
            ),
        ),
    )
    await set_ready(api, "w1", "True")
    await measure(
        "readiness flipped to True", lambda: _check(eps, lambda e: e["127.0.0.11"]["conditions"]["ready"])
    )

    await api.patch(WL, NS, "w2", "merge", {"metadata": {"labels": {"app": "other"}}})
    await measure("workload relabelled out", lambda: _check(eps, lambda e: set(e) == {"127.0.0.11"}))
    await api.patch(WL, NS, "w2", "merge", {"metadata": {"labels": {"app": "web"}}})
    await measure(
        "workload relabelled in", lambda: _check(eps, lambda e: set(e) == {"127.0.0.11", "127.0.0.12"})
    )

    await api.delete(WL, NS, "w1")
    await measure("workload deleted", lambda: _check(eps, lambda e: set(e) == {"127.0.0.12"}))

    await api.create(WL, NS, workload("a1", "127.0.0.21", app="api"))
    await api.patch(SVC, NS, "web", "merge", {"spec": {"selector": {"app": "api"}}})
    await measure("service selector changed", lambda: _check(eps, lambda e: set(e) == {"127.0.0.21"}))

    await api.patch(
        SVC, NS, "web", "merge", {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9090}]}}
    )
    await measure("service ports changed", lambda: _slice_ports_are(api, [9090]))

    await api.patch(SVC, NS, "web", "merge", {"spec": {"selector": None}})
    await measure("service selector removed", lambda: _no_slices(api, "web"))

    report = "\n".join(f"  {step:40s} {secs * 1000:7.1f} ms" for step, secs in latencies.items())
    print(f"\nchange -> EndpointSlice latency (HTTP write to slice visible over HTTP):\n{report}")
    slow = {step: secs for step, secs in latencies.items() if secs >= BUDGET}
    assert not slow, f"over {BUDGET}s: {slow}"


async def test_slices_of_a_deleted_service_are_deleted(api: HttpClient) -> None:
    """Deleting a Service deletes its slices."""
    await api.create(WL, NS, workload("w1", "127.0.0.11"))
    await api.create(SVC, NS, service())
    await eventually(lambda: _check(lambda: endpoints_of(api, "web"), bool), 3.0)
    await api.delete(SVC, NS, "web")
    await eventually(lambda: _no_slices(api, "web"), 3.0, what="slices deleted")


async def test_slices_are_owned_and_labelled(api: HttpClient) -> None:
    """Slices name their Service in a label and a controller ownerReference, and say who manages them."""
    svc = await api.create(SVC, NS, service())
    await api.create(WL, NS, workload("w1", "127.0.0.11", node="node-1", zone="zone-a"))
    await eventually(lambda: _check(lambda: endpoints_of(api, "web"), bool), 3.0)
    (s,) = await slices_of(api, "web")
    assert s["metadata"]["name"].startswith("web-")
    assert (
        s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
        == "endpointslice-controller.innermesh.io"
    )
    assert s["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": "web",
            "uid": svc["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    (ep,) = s["endpoints"]
    assert ep["nodeName"] == "node-1"
    assert ep["zone"] == "zone-a"
    assert ep["targetRef"]["kind"] == "Workload"
    assert ep["targetRef"]["name"] == "w1"


async def test_one_change_is_one_update_in_place_and_no_change_is_no_write(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    """A readiness flip is one in-place slice update; an irrelevant change is reconciled with no write."""
    ctl = manager(control_plane).endpointslices
    await api.create(SVC, NS, service())
    for i in range(3):
        await api.create(WL, NS, workload(f"w{i}", f"127.0.0.{i + 1}"))
    await eventually(lambda: _check(lambda: endpoints_of(api, "web"), lambda e: len(e) == 3), 3.0)
    (before,) = await slices_of(api, "web")
    writes = dict(ctl.writes)

    await set_ready(api, "w1", "False")
    await eventually(
        lambda: _check(lambda: endpoints_of(api, "web"), lambda e: not e["127.0.0.2"]["conditions"]["ready"]),
        3.0,
    )
    (after,) = await slices_of(api, "web")
    assert after["metadata"]["name"] == before["metadata"]["name"]
    assert ctl.writes == {**writes, "update": writes["update"] + 1}

    reconciles = ctl.controller.reconciles
    writes = dict(ctl.writes)
    await api.patch(WL, NS, "w0", "merge", {"metadata": {"annotations": {"note": "irrelevant"}}})
    await eventually(lambda: ctl.controller.reconciles > reconciles, 3.0, what="reconciled")
    await eventually(lambda: ctl.controller.queue is not None and not ctl.controller.queue.processing, 3.0)
    assert ctl.writes == writes
    (still,) = await slices_of(api, "web")
    assert still["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


async def test_slices_hold_at_most_the_configured_number_of_endpoints(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """With 10 endpoints per slice, 25 Workloads make slices of 10, 10 and 5."""
    plane = await start_control_plane(manager_config=ManagerConfig(max_endpoints_per_slice=10))
    api = connect(plane)
    await api.create(SVC, NS, service())
    for i in range(25):
        await api.create(WL, NS, workload(f"w{i:02d}", f"127.0.1.{i + 1}"))
    await eventually(lambda: _check(lambda: endpoints_of(api, "web"), lambda e: len(e) == 25), 3.0)
    sizes = sorted(len(s.get("endpoints") or []) for s in await slices_of(api, "web"))
    assert sizes == [5, 10, 10]


async def test_dual_stack_service_has_a_slice_per_family(api: HttpClient) -> None:
    """A PreferDualStack Service gets IPv4 and IPv6 slices from dual-stack Workloads."""
    await api.create(SVC, NS, service(ipFamilyPolicy="PreferDualStack"))
    wl = workload("w1", "127.0.0.11")
    wl["spec"]["addresses"] = ["127.0.0.11", "::1"]
    await api.create(WL, NS, wl)

    async def by_family() -> dict[str, list[str]]:
        return {
            s["addressType"]: [ep["addresses"][0] for ep in s.get("endpoints") or []]
            for s in await slices_of(api, "web")
        }

    assert await eventually(
        lambda: _check(by_family, lambda f: f == {"IPv4": ["127.0.0.11"], "IPv6": ["::1"]}), 3.0
    )


async def test_publish_not_ready_addresses_publishes_unready_workloads_as_ready(api: HttpClient) -> None:
    """publishNotReadyAddresses: a Ready=False Workload is still a ready endpoint."""
    await api.create(SVC, NS, service(publishNotReadyAddresses=True))
    await api.create(WL, NS, workload("w1", "127.0.0.11"))
    await set_ready(api, "w1", "False")
    await eventually(
        lambda: _check(
            lambda: endpoints_of(api, "web"),
            lambda e: (
                e.get("127.0.0.11", {}).get("conditions")
                == {"ready": True, "serving": False, "terminating": False}
            ),
        ),
        3.0,
    )


async def test_terminating_workload_is_serving_but_not_ready(api: HttpClient) -> None:
    """A Workload held by a finalizer after delete is terminating: serving, not ready; then it goes."""
    await api.create(SVC, NS, service())
    wl = workload("w1", "127.0.0.11")
    wl["metadata"]["finalizers"] = ["example.com/drain"]
    await api.create(WL, NS, wl)
    await eventually(lambda: _check(lambda: endpoints_of(api, "web"), bool), 3.0)
    await api.delete(WL, NS, "w1")
    await eventually(
        lambda: _check(
            lambda: endpoints_of(api, "web"),
            lambda e: e["127.0.0.11"]["conditions"] == {"ready": False, "serving": True, "terminating": True},
        ),
        3.0,
    )
    await api.patch(WL, NS, "w1", "merge", {"metadata": {"finalizers": None}})
    await eventually(lambda: _check(lambda: endpoints_of(api, "web"), lambda e: not e), 3.0)


# ---------------------------------------------------------------------------------------------------


async def _check(get: Callable[[], Any], pred: Callable[[Any], Any]) -> bool:
    return bool(pred(await get()))


async def _has_placeholder(api: HttpClient) -> bool:
    slices = await slices_of(api, "web")
    return len(slices) == 1 and not slices[0].get("endpoints")


async def _no_slices(api: HttpClient, name: str) -> bool:
    return not await slices_of(api, name)


async def _slice_ports_are(api: HttpClient, ports: list[int]) -> bool:
    slices = await slices_of(api, "web")
    return bool(slices) and all([p["port"] for p in s.get("ports") or []] == ports for s in slices)
