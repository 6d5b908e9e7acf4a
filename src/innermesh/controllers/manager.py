"""The controller manager: shared informers, the controllers, and the leader lease that gates them.

``start()`` starts one informer per kind the controllers read (shared by all of them), waits until every
informer has listed, then campaigns for the Lease ``innermesh-system/innermesh-controllers`` in the
background and returns. While this replica holds the lease, every controller runs (each starting with a
full resync of its keys); when it loses the lease, they are cancelled before any other replica can take
over (see ``leader``). The informers keep running either way, so a replica that becomes leader starts
from a warm cache. ``stop()`` cancels everything it started and releases the lease if held.

Tasks owned here::

    informer-<plural>      one per watched kind, for the manager's life
    leader-election        the campaign; while leading, it owns
      leader-work            a TaskGroup with one task per controller, each owning its workers
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from innermesh.api.core import Namespace, Service, ServiceAccount
from innermesh.api.discovery import MANAGED_BY_LABEL, EndpointSlice
from innermesh.api.gateway import Gateway, GatewayClass, GRPCRoute, HTTPRoute, ReferenceGrant
from innermesh.api.mesh import FaultInjection, Workload
from innermesh.api.networking import IPAddress
from innermesh.api.registry import Kind, Registry
from innermesh.api.scheme import REGISTRY
from innermesh.client.base import Client
from innermesh.client.informer import Informer
from innermesh.controllers import endpointslice
from innermesh.controllers.clock import Clock, LoopClock
from innermesh.controllers.clusterip import ClusterIPRepair, ServiceIPAllocator
from innermesh.controllers.endpointslice import EndpointSliceController
from innermesh.controllers.leader import LEASE_NAME, LEASE_NAMESPACE, LeaderElectionConfig, LeaderElector
from innermesh.controllers.namespace import NamespaceController
from innermesh.controllers.routestatus import RouteStatusController
from innermesh.controllers.runtime import Controller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerConfig:
    leader_election: LeaderElectionConfig = field(default_factory=LeaderElectionConfig)
    max_endpoints_per_slice: int = endpointslice.DEFAULT_MAX_ENDPOINTS_PER_SLICE
    # ClusterIP repair: how long an orphaned IPAddress must stay orphaned before it is released, and
    # how often the full pass runs without being prompted.
    ip_repair_grace: float = 60.0
    ip_repair_interval: float = 60.0
    # How long start() waits for the informers' first lists.
    sync_timeout: float = 30.0
    lease_namespace: str = LEASE_NAMESPACE
    lease_name: str = LEASE_NAME


class ControllerManager:
    def __init__(
        self,
        client: Client,
        identity: str,
        service_ips: ServiceIPAllocator | None = None,
        *,
        config: ManagerConfig | None = None,
        registry: Registry = REGISTRY,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.identity = identity
        self.config = config or ManagerConfig()
        self.registry = registry
        self._clock: Clock = clock or LoopClock()
        self._informers: dict[str, Informer[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._elector_task: asyncio.Task[None] | None = None

        def kind(api_version: str, name: str) -> Kind:
            return registry.by_gvk(api_version, name)

        ns_kind = kind("v1", "Namespace")
        svc_kind = kind("v1", "Service")
        sa_kind = kind("v1", "ServiceAccount")
        slice_kind = kind("discovery.k8s.io/v1", "EndpointSlice")
        ip_kind = kind("networking.k8s.io/v1", "IPAddress")
        wl_kind = kind("mesh.innermesh.io/v1alpha1", "Workload")
        http_kind = kind("gateway.networking.k8s.io/v1", "HTTPRoute")
        grpc_kind = kind("gateway.networking.k8s.io/v1", "GRPCRoute")
        gw_kind = kind("gateway.networking.k8s.io/v1", "Gateway")
        gc_kind = kind("gateway.networking.k8s.io/v1", "GatewayClass")
        grant_kind = kind("gateway.networking.k8s.io/v1", "ReferenceGrant")
        fault_kind = kind("mesh.innermesh.io/v1alpha1", "FaultInjection")

        namespaces: Informer[Namespace] = self._informer(ns_kind)
        services: Informer[Service] = self._informer(svc_kind)
        service_accounts: Informer[ServiceAccount] = self._informer(sa_kind)
        slices: Informer[EndpointSlice] = self._informer(
            slice_kind, f"{MANAGED_BY_LABEL}={endpointslice.CONTROLLER_NAME}"
        )
        addresses: Informer[IPAddress] = self._informer(ip_kind)
        workloads: Informer[Workload] = self._informer(wl_kind)
        http_routes: Informer[HTTPRoute] = self._informer(http_kind)
        grpc_routes: Informer[GRPCRoute] = self._informer(grpc_kind)
        gateways: Informer[Gateway] = self._informer(gw_kind)
        classes: Informer[GatewayClass] = self._informer(gc_kind)
        grants: Informer[ReferenceGrant] = self._informer(grant_kind)
        faults: Informer[FaultInjection] = self._informer(fault_kind)

        self.endpointslices = EndpointSliceController(
            client,
            slice_kind,
            services,
            workloads,
            slices,
            max_endpoints=self.config.max_endpoints_per_slice,
            clock=self._clock,
        )
        self.clusterip = ClusterIPRepair(
            client,
            ip_kind,
            svc_kind,
            services,
            addresses,
            service_ips,
            grace=self.config.ip_repair_grace,
            interval=self.config.ip_repair_interval,
            clock=self._clock,
        )
        self.routestatus = RouteStatusController(
            client,
            {"HTTPRoute": http_kind, "GRPCRoute": grpc_kind},
            gc_kind,
            {"HTTPRoute": http_routes, "GRPCRoute": grpc_routes},
            services,
            gateways,
            classes,
            grants,
            namespaces,
            fault_injections=faults,
        )
        self.namespaces = NamespaceController(
            client, ns_kind, sa_kind, registry, namespaces, service_accounts
        )
        self.controllers: list[Controller[Any]] = [
            self.endpointslices.controller,
            self.clusterip.controller,
            self.routestatus.controller,
            self.routestatus.class_controller,
            *self.namespaces.controllers,
        ]
        self.elector = LeaderElector(
            client,
            kind("coordination.k8s.io/v1", "Lease"),
            identity,
            self.config.leader_election,
            namespace=self.config.lease_namespace,
            name=self.config.lease_name,
            clock=self._clock,
        )

    def _informer(self, kind: Kind, label_selector: str = "") -> Informer[Any]:
        informer: Informer[Any] = Informer(self.client, kind, label_selector=label_selector)
        self._informers[kind.plural] = informer
        return informer

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader

    @property
    def running_controllers(self) -> list[str]:
        return [c.name for c in self.controllers if c.running]

    def controller(self, name: str) -> Controller[Any]:
        return next(c for c in self.controllers if c.name == name)

    async def start(self) -> None:
        """Start the informers, wait for their first lists, then campaign for the lease (in the
        background: this returns without waiting to become leader)."""
        if self._tasks:
            raise RuntimeError("the controller manager is already started")
        for plural, informer in self._informers.items():
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer-{plural}"))
        try:
            async with asyncio.timeout(self.config.sync_timeout):
                await asyncio.gather(*(i.wait_synced() for i in self._informers.values()))
        except TimeoutError:
            unsynced = sorted(p for p, i in self._informers.items() if not i.synced)
            await self.stop()
            raise RuntimeError(
                f"the controllers' informers could not list {', '.join(unsynced)} within "
                f"{self.config.sync_timeout:.0f}s; is the store reachable?"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self._elector_task = asyncio.create_task(self.elector.run(self._lead), name="leader-election")
        log.info("controller manager %s started; campaigning for the controllers' lease", self.identity)

    async def _lead(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for c in self.controllers:
                tg.create_task(c.run(), name=f"controller-{c.name}")

    async def stop(self) -> None:
        """Stop the controllers (releasing the lease if held), then the informers."""
        if self._elector_task is not None:
            self._elector_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._elector_task
            self._elector_task = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
