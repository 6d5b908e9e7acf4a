"""The ClusterIP repair loop against a running server: missing IPAddresses recreated, leaked ones
released after the grace period, the allocator's hint refreshed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.api.status import ApiError
from innermesh.apiserver.admission import ServiceIPs
from innermesh.client.http import HttpClient
from innermesh.client.local import LocalClient
from innermesh.controllers.clusterip import IPNetwork
from innermesh.controllers.leader import LeaderElectionConfig
from innermesh.controllers.manager import ControllerManager, ManagerConfig
from innermesh.server import ControlPlane
from support.eventually import eventually

SVC = REGISTRY.by_gvk("v1", "Service")
IPADDR = REGISTRY.by_gvk("networking.k8s.io/v1", "IPAddress")
NS = "default"
GRACE = 0.4
FAST = ManagerConfig(ip_repair_grace=GRACE, ip_repair_interval=5.0)

Connect = Callable[[ControlPlane], HttpClient]


def ip_address(ip: str, service: str, *, managed: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": ip}
    if managed:
        meta["labels"] = {"ipaddress.kubernetes.io/managed-by": "innermesh"}
    return {
        "metadata": meta,
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": NS, "name": service}},
    }


async def exists(api: HttpClient, ip: str) -> bool:
    try:
        await api.get(IPADDR, None, ip)
    except ApiError as e:
        if e.code == 404:
            return False
        raise
    return True


async def test_missing_ipaddress_of_a_service_is_recreated(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """A Service whose IPAddress vanished (a crash between the two writes) gets it back."""
    plane = await start_control_plane(manager_config=FAST)
    api = connect(plane)
    ip = (await api.create(SVC, NS, {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}))[
        "spec"
    ]["clusterIP"]
    await api.delete(IPADDR, None, ip)
    recreated = await eventually(lambda: api.get(IPADDR, None, ip), 2.0, what="IPAddress recreated")
    assert recreated["spec"]["parentRef"]["name"] == "web"
    assert recreated["metadata"]["labels"] == {"ipaddress.kubernetes.io/managed-by": "innermesh"}


async def test_leaked_ipaddress_is_released_only_after_the_grace_period(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """A leaked allocator IPAddress is released after the grace period; a foreign one is left alone."""
    plane = await start_control_plane(manager_config=FAST)
    api = connect(plane)
    await api.create(IPADDR, None, ip_address("10.96.200.1", "foreign", managed=False))
    start = time.monotonic()
    await api.create(IPADDR, None, ip_address("10.96.200.2", "ghost"))
    await eventually(lambda: _gone(api, "10.96.200.2"), 3.0, what="orphan released")
    assert time.monotonic() - start >= GRACE
    assert await exists(api, "10.96.200.1")


async def test_ipaddress_of_a_service_that_does_not_hold_it_is_released(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """An IPAddress naming a live Service that holds another address is a leak too."""
    plane = await start_control_plane(manager_config=FAST)
    api = connect(plane)
    held = (await api.create(SVC, NS, {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}))[
        "spec"
    ]["clusterIP"]
    stray = "10.96.201.7" if held != "10.96.201.7" else "10.96.201.8"
    await api.create(IPADDR, None, ip_address(stray, "web"))
    await eventually(lambda: _gone(api, stray), 3.0, what="stray IPAddress released")
    assert await exists(api, held)


async def test_released_leak_makes_its_address_allocatable(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """In a full /29 where one address leaked, a new Service fails until the repair frees it."""
    plane = await start_control_plane(service_cidr="10.99.0.0/29", manager_config=FAST)
    api = connect(plane)
    held = {(await api.create(SVC, NS, _svc(f"s{i}")))["spec"]["clusterIP"] for i in range(5)}
    leaked = next(f"10.99.0.{n}" for n in range(1, 7) if f"10.99.0.{n}" not in held)
    await api.create(IPADDR, None, ip_address(leaked, "crashed-before-store"))
    with pytest.raises(ApiError) as exc:
        await api.create(SVC, NS, _svc("blocked"))
    assert "exhausted" in exc.value.message
    created = await eventually(lambda: api.create(SVC, NS, _svc("after-repair")), 3.0, what="allocation")
    assert created["spec"]["clusterIP"] == leaked


class CountingAllocator:
    """The server's allocator, counting refresh() calls."""

    def __init__(self, inner: ServiceIPs) -> None:
        self.inner = inner
        self.refreshes = 0

    @property
    def cidrs(self) -> Mapping[int, IPNetwork]:
        return self.inner.cidrs

    async def refresh(self) -> None:
        self.refreshes += 1
        await self.inner.refresh()


async def test_repair_refreshes_the_allocation_hint_after_a_change(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """Releasing a leak is followed by the allocator's refresh()."""
    plane = await start_control_plane(controllers=False)
    assert plane.resources is not None
    assert plane.service_ips is not None
    allocator = CountingAllocator(plane.service_ips)
    manager = ControllerManager(
        LocalClient(plane.resources),
        identity="repair-test",
        service_ips=allocator,
        config=ManagerConfig(
            ip_repair_grace=GRACE,
            ip_repair_interval=60.0,
            leader_election=LeaderElectionConfig(
                lease_duration=2, renew_interval=0.5, renew_deadline=1.5, retry_interval=0.2
            ),
        ),
    )
    await manager.start()
    try:
        api = connect(plane)
        await eventually(lambda: allocator.refreshes >= 1, 2.0, what="first pass refreshes")
        before = allocator.refreshes
        await api.create(IPADDR, None, ip_address("10.96.202.2", "ghost"))
        await eventually(lambda: manager.clusterip.released == 1, 3.0, what="leak released")
        await eventually(lambda: allocator.refreshes > before, 1.0, what="refresh after the release")
    finally:
        await manager.stop()


def _svc(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}


async def _gone(api: HttpClient, ip: str) -> bool:
    return not await exists(api, ip)
