"""Edges of the API's semantics: namespace finalization, dual-stack changes, versions, stale uids,
dry runs, writes with an unknown outcome, hostile bodies, and stopping with watches open."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.api.status import ApiError
from innermesh.client.http import HttpClient
from innermesh.server import ControlPlane
from innermesh.store.backend import Unavailable
from support.eventually import eventually

NS = REGISTRY.by_gvk("v1", "Namespace")
SVC = REGISTRY.by_gvk("v1", "Service")
IPADDR = REGISTRY.by_gvk("networking.k8s.io/v1", "IPAddress")
WL = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
GRANT_V1 = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "ReferenceGrant")
GRANT_V1BETA1 = REGISTRY.by_gvk("gateway.networking.k8s.io/v1beta1", "ReferenceGrant")


def svc(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], "selector": {"app": name}, **spec}}


async def test_namespace_finalizers_change_only_through_finalize(api: HttpClient) -> None:
    """A plain update cannot drop a Namespace's finalizer; deleting it removes its content first."""
    await api.create(NS, None, {"metadata": {"name": "team"}})
    await api.create(SVC, "team", svc("web"))
    patched = await api.patch(NS, None, "team", "merge", {"spec": {"finalizers": None}})
    assert patched["spec"]["finalizers"] == ["kubernetes"]
    await api.delete(NS, None, "team")

    async def gone() -> bool:
        try:
            await api.get(NS, None, "team")
        except ApiError as e:
            return e.code == 404
        return False

    await eventually(gone, timeout=10, what="the namespace to be finalized")
    items, _ = await api.list(SVC, "team")
    assert items == []
    await api.create(NS, None, {"metadata": {"name": "team"}})
    items, _ = await api.list(SVC, "team")
    assert items == [], "re-creating the namespace must not bring its old content back"


async def test_system_namespaces_cannot_be_deleted(api: HttpClient) -> None:
    """default and innermesh-system are refused with 403."""
    for name in ("default", "innermesh-system"):
        with pytest.raises(ApiError) as e:
            await api.delete(NS, None, name)
        assert e.value.code == 403


async def test_dual_stack_upgrade_and_downgrade(api: HttpClient) -> None:
    """SingleStack -> PreferDualStack adds an IPv6 address; back to SingleStack gives it up."""
    created = await api.create(SVC, "default", svc("web"))
    primary = created["spec"]["clusterIP"]
    up = await api.patch(SVC, "default", "web", "merge", {"spec": {"ipFamilyPolicy": "PreferDualStack"}})
    assert up["spec"]["clusterIPs"][0] == primary and len(up["spec"]["clusterIPs"]) == 2
    assert up["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    secondary = up["spec"]["clusterIPs"][1]
    await api.get(IPADDR, None, secondary)
    down = await api.patch(SVC, "default", "web", "merge", {"spec": {"ipFamilyPolicy": "SingleStack"}})
    assert down["spec"]["clusterIPs"] == [primary] and down["spec"]["ipFamilies"] == ["IPv4"]
    with pytest.raises(ApiError) as e:
        await api.get(IPADDR, None, secondary)
    assert e.value.code == 404, "the secondary address is released"
    with pytest.raises(ApiError) as e:
        await api.patch(
            SVC,
            "default",
            "web",
            "merge",
            {"spec": {"clusterIPs": ["10.96.0.77"], "clusterIP": "10.96.0.77"}},
        )
    assert e.value.code == 422, "the primary address never changes"


async def test_headless_service_asking_for_dual_stack_gets_both_families(api: HttpClient) -> None:
    """A headless Service has no address but publishes the families its policy asks for."""
    created = await api.create(SVC, "default", svc("db", clusterIP="None", ipFamilyPolicy="RequireDualStack"))
    assert created["spec"]["clusterIPs"] == ["None"]
    assert created["spec"]["ipFamilies"] == ["IPv4", "IPv6"]


async def test_reference_grant_is_served_in_both_versions(api: HttpClient) -> None:
    """Written through v1beta1, read and patched through v1 (and the other way round)."""
    body = {
        "metadata": {"name": "allow"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    created = await api.create(GRANT_V1BETA1, "default", body)
    assert created["apiVersion"] == "gateway.networking.k8s.io/v1beta1"
    as_v1 = await api.get(GRANT_V1, "default", "allow")
    assert as_v1["apiVersion"] == "gateway.networking.k8s.io/v1"
    patched = await api.patch(GRANT_V1, "default", "allow", "merge", {"metadata": {"labels": {"a": "b"}}})
    assert patched["apiVersion"] == "gateway.networking.k8s.io/v1"
    items, _ = await api.list(GRANT_V1BETA1, "default")
    assert [o["apiVersion"] for o in items] == ["gateway.networking.k8s.io/v1beta1"]


async def test_put_with_the_uid_of_a_deleted_object_is_refused(api: HttpClient) -> None:
    """A PUT carrying an old uid does not overwrite the object that replaced it."""
    old = await api.create(WL, "default", {"metadata": {"name": "w"}, "spec": {"addresses": ["127.0.30.1"]}})
    await api.delete(WL, "default", "w")
    await api.create(WL, "default", {"metadata": {"name": "w"}, "spec": {"addresses": ["127.0.30.2"]}})
    stale = json.loads(json.dumps(old))
    del stale["metadata"]["resourceVersion"]
    with pytest.raises(ApiError) as e:
        await api.update(WL, "default", "w", stale)
    assert e.value.code == 422 and any("metadata.uid" in c for c in e.value.field_causes)
    now = await api.get(WL, "default", "w")
    assert now["spec"]["addresses"] == ["127.0.30.2"]


async def test_dry_run_create_of_an_existing_name_is_409(api: HttpClient) -> None:
    """A dry run answers what the real create would: AlreadyExists."""
    await api.create(SVC, "default", svc("web"))
    with pytest.raises(ApiError) as e:
        await api.create(SVC, "default", svc("web"), dry_run=True)
    assert e.value.code == 409


async def test_a_write_with_an_unknown_outcome_keeps_its_cluster_ip(
    start_control_plane: Any, connect: Any
) -> None:
    """When the store fails after applying a create (the answer is lost), the Service is stored, so its
    ClusterIP must stay allocated rather than be handed to the next Service."""
    plane: ControlPlane = await start_control_plane(controllers=False)
    api: HttpClient = connect(plane)
    assert plane.resources is not None
    backend = plane.resources.store.backend
    real_create = backend.create
    fail_next = {"on": False}

    async def create_then_lose_the_answer(key: str, value: bytes) -> Any:
        result = await real_create(key, value)
        if fail_next["on"] and "/services/" in key:
            fail_next["on"] = False
            raise Unavailable("injected: the answer was lost after the write")
        return result

    backend.create = create_then_lose_the_answer  # type: ignore[method-assign]
    fail_next["on"] = True
    with pytest.raises(ApiError) as e:
        await api.create(SVC, "default", svc("web"))
    assert e.value.code == 503
    stored = await api.get(SVC, "default", "web")
    ip = stored["spec"]["clusterIP"]
    held = await api.get(IPADDR, None, ip)
    assert held["spec"]["parentRef"]["name"] == "web"


async def test_hostile_bodies_are_refused_quickly(control_plane: ControlPlane) -> None:
    """A YAML alias bomb and deeply nested JSON or YAML get a 400 at once, not a stalled server."""
    base = f"http://127.0.0.1:{control_plane.port}/api/v1/namespaces/default/services"
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
        for i in range(8)
    )
    bodies = [
        (bomb.encode(), "application/yaml"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (b"[" * 100_000, "application/yaml"),
    ]
    async with aiohttp.ClientSession() as s:
        for body, ctype in bodies:
            t0 = time.monotonic()
            async with s.post(base, data=body, headers={"Content-Type": ctype}) as r:
                status = await r.json()
                assert r.status == 400, status
            assert time.monotonic() - t0 < 2.0
        async with s.patch(
            base + "/x", data=b"[" * 100_000, headers={"Content-Type": "application/merge-patch+json"}
        ) as r:
            assert r.status == 400


async def test_stopping_the_server_ends_open_watches_promptly(start_control_plane: Any) -> None:
    """stop() with watches open finishes within a few seconds, and the watchers see the stream end."""
    plane: ControlPlane = await start_control_plane(controllers=False)
    url = f"http://127.0.0.1:{plane.port}/api/v1/namespaces/default/services?watch=true"
    async with aiohttp.ClientSession() as s:
        responses = [await s.get(url) for _ in range(3)]
        t0 = time.monotonic()
        await asyncio.wait_for(plane.stop(), 10)
        assert time.monotonic() - t0 < 5.0
        for r in responses:
            rest = await asyncio.wait_for(r.read(), 5)
            assert rest == b""
            r.release()
