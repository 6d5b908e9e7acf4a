"""Namespaces against a running server: deletion empties them (waiting for finalizers) and then
completes; every Active namespace has a default ServiceAccount."""

from __future__ import annotations

from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.api.status import ApiError
from innermesh.client.http import HttpClient
from support.eventually import eventually, timed

NSK = REGISTRY.by_gvk("v1", "Namespace")
SVC = REGISTRY.by_gvk("v1", "Service")
SA = REGISTRY.by_gvk("v1", "ServiceAccount")
SECRET = REGISTRY.by_gvk("v1", "Secret")
WL = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
SLICE = REGISTRY.by_gvk("discovery.k8s.io/v1", "EndpointSlice")
IPADDR = REGISTRY.by_gvk("networking.k8s.io/v1", "IPAddress")
HTTPROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")
GRANT = REGISTRY.by_gvk("gateway.networking.k8s.io/v1beta1", "ReferenceGrant")


async def missing(api: HttpClient, kind: Any, namespace: str | None, name: str) -> bool:
    try:
        await api.get(kind, namespace, name)
    except ApiError as e:
        if e.code == 404:
            return True
        raise
    return False


async def test_new_namespace_gets_a_default_service_account_which_comes_back(api: HttpClient) -> None:
    """A default ServiceAccount appears in a new namespace, and again after it is deleted."""
    await api.create(NSK, None, {"metadata": {"name": "team"}})
    created = await timed(lambda: api.get(SA, "team", "default"), 3.0)
    await api.delete(SA, "team", "default")
    recreated = await timed(lambda: api.get(SA, "team", "default"), 3.0)
    print(f"\ndefault ServiceAccount: created {created * 1000:.1f} ms, recreated {recreated * 1000:.1f} ms")
    assert created < 1.0
    assert recreated < 1.0
    assert await api.get(SA, "default", "default")  # the bootstrap namespaces have one too


async def test_deleting_a_namespace_deletes_its_content_then_the_namespace(api: HttpClient) -> None:
    """Every namespaced object goes (Services releasing their ClusterIPs), then the Namespace."""
    await api.create(NSK, None, {"metadata": {"name": "shop"}})
    svc = await api.create(
        SVC,
        "shop",
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
    )
    await api.create(
        WL,
        "shop",
        {"metadata": {"name": "w1", "labels": {"app": "web"}}, "spec": {"addresses": ["127.0.0.5"]}},
    )
    await api.create(SECRET, "shop", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    await api.create(
        HTTPROUTE,
        "shop",
        {
            "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]},
        },
    )
    await api.create(
        GRANT,
        "shop",
        {
            "metadata": {"name": "g"},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                "to": [{"group": "", "kind": "Service"}],
            },
        },
    )
    await eventually(lambda: _listed(api, SLICE, "shop"), 3.0, what="slices made")
    await eventually(lambda: api.get(SA, "shop", "default"), 3.0)

    deleted = await api.delete(NSK, None, "shop")
    assert deleted["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError) as exc:
        await api.create(SECRET, "shop", {"metadata": {"name": "late"}})
    assert exc.value.code == 403
    took = await timed(lambda: missing(api, NSK, None, "shop"), 3.0)
    print(f"\nnamespace with content deleted in {took * 1000:.1f} ms")
    for kind in (SVC, WL, SECRET, HTTPROUTE, GRANT, SLICE, SA):
        items, _ = await api.list(kind, "shop")
        assert items == [], kind.plural
    assert await missing(api, IPADDR, None, svc["spec"]["clusterIP"])


async def test_namespace_waits_for_objects_held_by_finalizers(api: HttpClient) -> None:
    """An object with a finalizer keeps its namespace Terminating until the finalizer is removed."""
    await api.create(NSK, None, {"metadata": {"name": "held"}})
    await api.create(SECRET, "held", {"metadata": {"name": "s", "finalizers": ["example.com/keep"]}})
    await api.delete(NSK, None, "held")
    await eventually(lambda: _marked_deleted(api, "held", "s"), 3.0, what="secret marked deleted")
    ns = await api.get(NSK, None, "held")
    assert ns["status"]["phase"] == "Terminating"
    assert "kubernetes" in ns["spec"]["finalizers"]
    await api.patch(SECRET, "held", "s", "merge", {"metadata": {"finalizers": None}})
    await eventually(lambda: missing(api, NSK, None, "held"), 5.0, what="namespace gone")


async def test_namespace_with_another_finalizer_stays_after_ours_is_removed(api: HttpClient) -> None:
    """Our finalizer is removed once the namespace is empty; another one still holds it."""
    await api.create(NSK, None, {"metadata": {"name": "other", "finalizers": ["example.com/audit"]}})
    await api.delete(NSK, None, "other")

    async def only_theirs() -> bool:
        ns = await api.get(NSK, None, "other")
        return "kubernetes" not in ((ns.get("spec") or {}).get("finalizers") or [])

    await eventually(only_theirs, 3.0)
    await api.patch(NSK, None, "other", "merge", {"metadata": {"finalizers": None}})
    await eventually(lambda: missing(api, NSK, None, "other"), 3.0)


async def _listed(api: HttpClient, kind: Any, namespace: str) -> bool:
    items, _ = await api.list(kind, namespace)
    return bool(items)


async def _marked_deleted(api: HttpClient, namespace: str, name: str) -> bool:
    obj = await api.get(SECRET, namespace, name)
    return bool(obj["metadata"].get("deletionTimestamp"))
