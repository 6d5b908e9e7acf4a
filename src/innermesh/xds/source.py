"""MeshSource: the ConfigSource the ADS server serves from, fed by informers.

It watches every kind the translator reads, keeps one immutable ``MeshState`` built from the informer
caches (rebuilt lazily after a change, so a burst of events costs one rebuild per push, not one per
event), and tells the server when something changed. ``generate`` is the pure translator over that
state. It runs on every replica (data planes may connect to any), not only on the controllers' leader.

Two things keep pushes proportional to what matters:

- An update that changes only what the translator never reads (``status``, ``resourceVersion``,
  ``managedFields``) is no change: the route status controller's writes, and the data planes' NACKs
  shown on routes, would otherwise each regenerate every proxy.
- Translations are cached per state, by everything the translator reads of the proxy (its
  ``ProxyInfo`` without the node id) and the listener names: identical proxies (proxyless clients of
  one namespace asking for the same listeners, a sidecar's old and new stream while it reconnects, the
  NACK handler asking again) share one translation, and the ADS server then serializes it once. The
  cache goes with the state it was made from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from innermesh.api.meta import Resource
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

# Distinct proxies whose translations one state keeps; beyond it, the oldest is dropped. Connected
# proxies bound it in practice; the cap keeps a client inventing identities from growing it.
MAX_TRANSLATIONS = 4096

# What a write may change without changing what the translator reads.
_UNREAD_METADATA = frozenset({"resource_version", "managed_fields"})
_UNREAD_FIELDS = frozenset({"metadata", "status"})


def translated_part(obj: Resource) -> tuple[dict[str, Any], dict[str, Any]]:
    """What of ``obj`` the translator may read: all but its status and the metadata the server keeps
    for itself. Named by exclusion, so that a field the translator starts reading is never missed."""
    metadata = obj.metadata.model_dump(exclude=set(_UNREAD_METADATA))
    rest = {name: getattr(obj, name) for name in type(obj).model_fields if name not in _UNREAD_FIELDS}
    return metadata, rest


def proxy_key(proxy: ProxyInfo) -> tuple[Hashable, ...]:
    """Everything the translator reads of ``proxy``: all its fields but the node id (mappings as
    sorted pairs, so that the key hashes). Built from the fields themselves, so that a field added to
    ProxyInfo is part of the key without anyone remembering to add it."""
    values: list[Hashable] = []
    for f in dataclasses.fields(proxy):
        if f.name == "node_id":
            continue
        value = getattr(proxy, f.name)
        values.append(tuple(sorted(value.items())) if isinstance(value, Mapping) else value)
    return tuple(values)


class MeshSource:
    def __init__(
        self, client: Client, *, registry: Registry = REGISTRY, cluster_domain: str = "cluster.local"
    ):
        self.cluster_domain = cluster_domain
        self._informers: dict[str, Informer[Any]] = {}
        for field_name, (api_version, kind_name) in WATCHED.items():
            kind: Kind = registry.by_gvk(api_version, kind_name)
            informer: Informer[Any] = Informer(client, kind)
            informer.add_handler(self._changed)
            self._informers[field_name] = informer
        self._callbacks: list[Callable[[], None]] = []
        self._state: MeshState | None = None
        self._translated_from: MeshState | None = None
        self._translations: dict[tuple[Hashable, ...], Resources] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- ConfigSource ---------------------------------------------------------------------------------

    def generate(self, proxy: ProxyInfo, listener_names: frozenset[str] | None) -> Resources:
        """The translation for ``proxy``; the same object for every proxy that differs only in node
        id, until the state changes. Callers must not modify it."""
        state = self.state
        if self._translated_from is not state:
            self._translated_from, self._translations = state, {}
        key = (*proxy_key(proxy), listener_names)
        resources = self._translations.get(key)
        if resources is None:
            resources = translate(state, proxy, listener_names)
            if len(self._translations) >= MAX_TRANSLATIONS:
                del self._translations[next(iter(self._translations))]
            self._translations[key] = resources
        return resources

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

    def _changed(self, old: Resource | None, new: Resource | None) -> None:
        if old is not None and new is not None and translated_part(old) == translated_part(new):
            return  # a status write, or the server's bookkeeping
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
