"""Leader election between controller managers: only the holder of the Lease reconciles; when it
stops (or is cut off), another takes over within the lease time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from innermesh.api import status as errors
from innermesh.api.scheme import REGISTRY
from innermesh.client.base import Client
from innermesh.client.http import HttpClient
from innermesh.client.local import LocalClient
from innermesh.controllers.leader import LeaderElectionConfig
from innermesh.controllers.manager import ControllerManager, ManagerConfig
from innermesh.server import ControlPlane
from support.eventually import eventually

SVC = REGISTRY.by_gvk("v1", "Service")
WL = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
SLICE = REGISTRY.by_gvk("discovery.k8s.io/v1", "EndpointSlice")
LEASE = REGISTRY.by_gvk("coordination.k8s.io/v1", "Lease")
NS = "default"

ELECTION = LeaderElectionConfig(lease_duration=1, renew_interval=0.2, renew_deadline=0.6, retry_interval=0.1)
CONFIG = ManagerConfig(leader_election=ELECTION)

Connect = Callable[[ControlPlane], HttpClient]


class Cuttable:
    """A client whose connection to the API can be cut (every call then fails with 503)."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("get", "create", "update", "patch", "delete", "list"):

            async def call(*args: Any, **kwargs: Any) -> Any:
                if self.cut:
                    raise errors.unavailable("connection cut by the test")
                return await attr(*args, **kwargs)

            return call
        return attr


async def managers(plane: ControlPlane, *names: str, cuttable: bool = False) -> dict[str, ControllerManager]:
    assert plane.resources is not None
    out = {}
    for name in names:
        client: Any = LocalClient(plane.resources)
        if cuttable:
            client = Cuttable(client)
        out[name] = ControllerManager(client, identity=name, service_ips=plane.service_ips, config=CONFIG)
    for m in out.values():
        await m.start()
    return out


def leaders(ms: dict[str, ControllerManager]) -> list[str]:
    return [n for n, m in ms.items() if m.is_leader]


def reconciles(m: ControllerManager) -> int:
    return sum(c.reconciles for c in m.controllers)


async def test_only_the_lease_holder_runs_reconcilers(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """Of two managers on one server, only the Lease holder runs controllers; the work still gets done."""
    plane = await start_control_plane(controllers=False)
    api = connect(plane)
    ms = await managers(plane, "alpha", "beta")
    try:
        await eventually(lambda: len(leaders(ms)) == 1, 3.0)
        (leader,) = leaders(ms)
        follower = "beta" if leader == "alpha" else "alpha"
        lease = await api.get(LEASE, "innermesh-system", "innermesh-controllers")
        assert lease["spec"]["holderIdentity"] == leader
        assert lease["spec"]["leaseDurationSeconds"] == 1

        await api.create(
            SVC,
            NS,
            {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
        )
        await api.create(
            WL,
            NS,
            {"metadata": {"name": "w", "labels": {"app": "web"}}, "spec": {"addresses": ["127.0.0.9"]}},
        )
        await eventually(lambda: _has_one_endpoint(api), 3.0, what="the leader made the slice")

        assert len(ms[leader].running_controllers) == len(ms[leader].controllers)
        assert ms[follower].running_controllers == []
        assert reconciles(ms[follower]) == 0
        assert reconciles(ms[leader]) > 0
        assert not (ms["alpha"].is_leader and ms["beta"].is_leader)
    finally:
        for m in ms.values():
            await m.stop()


async def test_when_the_leader_stops_the_other_takes_over_within_the_lease_time(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """A leader that stops releases the Lease; the other leads within the lease time and does the work."""
    plane = await start_control_plane(controllers=False)
    api = connect(plane)
    ms = await managers(plane, "alpha", "beta")
    try:
        await eventually(lambda: len(leaders(ms)) == 1, 3.0)
        (first,) = leaders(ms)
        second = "beta" if first == "alpha" else "alpha"
        stopped = time.monotonic()
        await ms[first].stop()
        await eventually(lambda: ms[second].is_leader, ELECTION.lease_duration + 1)
        took = time.monotonic() - stopped
        print(f"\nclean hand-over took {took * 1000:.0f} ms")
        assert took <= ELECTION.lease_duration
        lease = await api.get(LEASE, "innermesh-system", "innermesh-controllers")
        assert lease["spec"]["holderIdentity"] == second
        assert lease["spec"]["leaseTransitions"] >= 0

        await api.create(
            SVC,
            NS,
            {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
        )
        await api.create(
            WL,
            NS,
            {"metadata": {"name": "w", "labels": {"app": "web"}}, "spec": {"addresses": ["127.0.0.9"]}},
        )
        await eventually(lambda: _has_one_endpoint(api), 3.0, what="the new leader does the work")
    finally:
        for m in ms.values():
            await m.stop()


async def test_a_leader_cut_off_from_the_api_stops_before_another_starts(
    start_control_plane: Callable[..., Any],
) -> None:
    """A leader that cannot renew stops by the renew deadline, before the other starts (within the lease)."""
    plane = await start_control_plane(controllers=False)
    ms = await managers(plane, "alpha", "beta", cuttable=True)
    try:
        await eventually(lambda: len(leaders(ms)) == 1, 3.0)
        (first,) = leaders(ms)
        second = "beta" if first == "alpha" else "alpha"
        client = ms[first].client
        assert isinstance(client, Cuttable)
        both = False

        async def watch_overlap() -> None:
            nonlocal both
            while True:
                if ms[first].running_controllers and ms[second].running_controllers:
                    both = True
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_overlap())
        cut = time.monotonic()
        client.cut = True
        await eventually(lambda: not ms[first].running_controllers, ELECTION.renew_deadline + 1)
        stepped_down = time.monotonic() - cut
        await eventually(lambda: ms[second].is_leader and ms[second].running_controllers, 5.0)
        took_over = time.monotonic() - cut
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        print(
            f"\ncut leader stepped down after {stepped_down * 1000:.0f} ms; peer led after {took_over * 1000:.0f} ms"
        )
        assert not both
        # Bounds with room for a loaded machine: the order is the property, the sums are sanity.
        assert stepped_down <= ELECTION.renew_deadline + 0.5
        assert stepped_down < took_over <= ELECTION.lease_duration + ELECTION.renew_interval + 1.0
    finally:
        for m in ms.values():
            await m.stop()


async def _has_one_endpoint(api: HttpClient) -> bool:
    items, _ = await api.list(SLICE, NS, label_selector="kubernetes.io/service-name=web")
    return sum(len(s.get("endpoints") or []) for s in items) == 1
