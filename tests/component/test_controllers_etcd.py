"""Two servers on one etcd: one runs the controllers, both allocate ClusterIPs without duplicates, and
the other takes over when the leader stops."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from innermesh.controllers.leader import LeaderElectionConfig
from innermesh.controllers.manager import ControllerManager, ManagerConfig
from innermesh.server import ControlPlane
from support.etcd_server import EtcdServer, running_etcd
from support.eventually import eventually

pytestmark = pytest.mark.etcd

SVC = REGISTRY.by_gvk("v1", "Service")
WL = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
SLICE = REGISTRY.by_gvk("discovery.k8s.io/v1", "EndpointSlice")
IPADDR = REGISTRY.by_gvk("networking.k8s.io/v1", "IPAddress")
NS = "default"
ELECTION = LeaderElectionConfig(lease_duration=2, renew_interval=0.3, renew_deadline=1.2, retry_interval=0.2)

Connect = Callable[[ControlPlane], HttpClient]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path) as server:
        yield server


async def two_servers(
    etcd: EtcdServer, start_control_plane: Callable[..., Any]
) -> tuple[ControlPlane, ControlPlane]:
    common: dict[str, Any] = {
        "store": "etcd",
        "etcd_endpoints": [etcd.url],
        "etcd_prefix": "/innermesh-test",
        "manager_config": ManagerConfig(leader_election=ELECTION),
    }
    first = await start_control_plane(identity="server-a", **common)
    second = await start_control_plane(identity="server-b", **common)
    return first, second


def controllers(plane: ControlPlane) -> ControllerManager:
    assert isinstance(plane.controllers, ControllerManager)
    return plane.controllers


def leading(planes: tuple[ControlPlane, ...]) -> list[ControlPlane]:
    return [p for p in planes if controllers(p).is_leader]


async def test_two_servers_on_one_etcd_elect_one_controller_leader(
    etcd: EtcdServer, start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """Of two servers on one etcd only one runs controllers, and both serve what it writes."""
    a, b = await two_servers(etcd, start_control_plane)
    await eventually(lambda: len(leading((a, b))) == 1, 5.0)
    (leader,) = leading((a, b))
    follower = b if leader is a else a
    assert controllers(follower).running_controllers == []

    api_f = connect(follower)
    await api_f.create(
        SVC, NS, {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    )
    await api_f.create(
        WL, NS, {"metadata": {"name": "w", "labels": {"app": "web"}}, "spec": {"addresses": ["127.0.0.9"]}}
    )
    for api in (connect(a), connect(b)):
        await eventually(functools.partial(_endpoints, api), 5.0)
    assert sum(c.reconciles for c in controllers(follower).controllers) == 0
    assert len(leading((a, b))) == 1


async def test_two_servers_allocate_cluster_ips_without_duplicates(
    etcd: EtcdServer, start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """Services created concurrently through both servers never share an address."""
    a, b = await two_servers(etcd, start_control_plane)
    api_a, api_b = connect(a), connect(b)

    def svc(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}

    created = await asyncio.gather(
        *(api_a.create(SVC, NS, svc(f"a{i}")) for i in range(25)),
        *(api_b.create(SVC, NS, svc(f"b{i}")) for i in range(25)),
    )
    ips = [c["spec"]["clusterIP"] for c in created]
    assert len(set(ips)) == 50
    items, _ = await api_a.list(IPADDR)
    assert {o["metadata"]["name"] for o in items} >= set(ips)


async def test_when_the_leading_server_stops_the_other_takes_over(
    etcd: EtcdServer, start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """Stopping the leading server hands the controllers to the other within the lease time."""
    a, b = await two_servers(etcd, start_control_plane)
    await eventually(lambda: len(leading((a, b))) == 1, 5.0)
    (leader,) = leading((a, b))
    other = b if leader is a else a
    stopped = time.monotonic()
    await leader.stop()
    await eventually(lambda: controllers(other).is_leader, ELECTION.lease_duration + 2)
    took = time.monotonic() - stopped
    print(f"\netcd: hand-over after the leading server stopped took {took * 1000:.0f} ms")
    assert took <= ELECTION.lease_duration
    api = connect(other)
    await api.create(
        SVC, NS, {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    )
    await api.create(
        WL, NS, {"metadata": {"name": "w", "labels": {"app": "web"}}, "spec": {"addresses": ["127.0.0.9"]}}
    )
    await eventually(lambda: _endpoints(api), 5.0)


async def _endpoints(api: HttpClient) -> bool:
    items, _ = await api.list(SLICE, NS, label_selector="kubernetes.io/service-name=web")
    return any(s.get("endpoints") for s in items)
