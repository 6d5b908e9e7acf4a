"""MeshSource: the ConfigSource the ADS server serves from, fed by informers.

It watches every kind the translator reads, keeps one immutable ``MeshState`` built from the informer
caches (rebuilt lazily after a change, so a burst of events costs one rebuild per push, not one per
event), and tells the server when something changed. ``generate`` is the pure translator over that
state. It runs on every replica (data planes may connect to any), not only on the controllers' leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from innermesh.api.registry import Kind, Registry
from innermesh.api.scheme import REGISTRY
from innermesh.client.base import Client
from innermesh.client.informer import Informer
from innermesh.xds.state import MeshState
from innermesh.xds.translate import translate
from innermesh.xds.types import ProxyInfo, Resources

log = logging.getLogger(__name__)

# MeshState field -> (apiVersion, kind) of the objects it holds.
WATCHED: dict[str, tuple[str, str]] = {
    "services": ("v1", "Service"),
    "endpoint_slices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "workloads": ("mesh.innermesh.io/v1alpha1", "Workload"),
    "http_routes": ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    "grpc_routes": ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    "reference_grants": ("gateway.networking.k8s.io/v1", "ReferenceGrant"),
    "namespaces": ("v1", "Namespace"),
    "fault_injections": ("mesh.innermesh.io/v1alpha1", "FaultInjection"),
    "backend_traffic_policies": ("mesh.innermesh.io/v1alpha1", "BackendTrafficPolicy"),
}


class MeshSource:
    def __init__(
        self, client: Client, *, registry: Registry = REGISTRY, cluster_domain: str = "cluster.local"
    ):
        self.cluster_domain = cluster_domain
        self._informers: dict[str, Informer[Any]] = {}
        for field_name, (api_version, kind_name) in WATCHED.items():
            if field_name not in MeshState.__dataclass_fields__:
                continue  # a kind the translator does not read yet
            kind: Kind = registry.by_gvk(api_version, kind_name)
            informer: Informer[Any] = Informer(client, kind)
            informer.add_handler(self._changed)
            self._informers[field_name] = informer
        self._callbacks: list[Callable[[], None]] = []
        self._state: MeshState | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- ConfigSource ---------------------------------------------------------------------------------

    def generate(self, proxy: ProxyInfo, listener_names: frozenset[str] | None) -> Resources:
        return translate(self.state, proxy, listener_names)

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    # -- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> MeshState:
        if self._state is None:
            fields: dict[str, Any] = {}
            for name, informer in self._informers.items():
                cache = informer.snapshot()
                fields[name] = {k[1]: o for k, o in cache.items()} if name == "namespaces" else cache
            self._state = MeshState(**fields, cluster_domain=self.cluster_domain)
        return self._state

    def _changed(self, old: object, new: object) -> None:
        self._state = None
        for cb in self._callbacks:
            cb()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self, sync_timeout: float = 30.0) -> None:
        for name, informer in self._informers.items():
            self._tasks.append(asyncio.create_task(informer.run(), name=f"xds-informer-{name}"))
        async with asyncio.timeout(sync_timeout):
            await asyncio.gather(*(i.wait_synced() for i in self._informers.values()))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
