"""ClusterIP repair: Kubernetes' repair loop for the IPAddress allocator (KEP-1880, ``RepairIPAddress``).

The API server allocates a Service's ClusterIPs in admission (``apiserver.admission.ServiceIPs``): it
creates one ``networking.k8s.io/v1`` IPAddress per address (the store's create-if-absent is the lock),
then stores the Service; deleting the Service deletes them. A crash between those writes leaves
either an IPAddress without its Service (the address leaks) or a Service without its IPAddress (the
address could be handed out twice). This loop mends both, on every Service or IPAddress change and
every ``interval`` seconds:

- A Service holding an address with no IPAddress: the IPAddress is recreated (after re-reading the
  Service from the API, so a Service deleted a moment ago is not resurrected in the allocator).
- An IPAddress made by the allocator whose parent Service is gone, or no longer holds that address:
  deleted, but only when it was seen orphaned on two passes at least ``grace`` seconds apart, and the
  parent is confirmed missing by a fresh read, because a create (or an upgrade to dual-stack) stands
  between its two writes for a moment. The delete is conditional on the IPAddress's uid.

After a pass that changed something, and at least every ``interval``, it calls the allocator's
``refresh()`` so that the in-memory hint of used addresses matches the store.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Protocol

from innermesh.api import status as errors
from innermesh.api.core import Service
from innermesh.api.networking import (
    IPADDRESS_MANAGED_BY,
    IPADDRESS_MANAGED_BY_LABEL,
    IPAddress,
    service_ip_address,
)
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.client.informer import Informer
from innermesh.controllers.clock import Clock, LoopClock
from innermesh.controllers.runtime import Controller, Result

log = logging.getLogger(__name__)

# The label the allocator puts on the IPAddresses it makes (apiserver.admission.ServiceIPs._claim).

REPAIR_KEY = "repair"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ServiceIPAllocator(Protocol):
    """What the repair loop needs of the API server's allocator."""

    @property
    def cidrs(self) -> Mapping[int, IPNetwork]: ...

    async def refresh(self) -> None: ...


def holds(svc: Service | None, ip: str) -> bool:
    return svc is not None and svc.spec.type != "ExternalName" and ip in (svc.spec.cluster_ips or [])


def is_managed(addr: IPAddress) -> bool:
    return (addr.metadata.labels or {}).get(IPADDRESS_MANAGED_BY_LABEL) == IPADDRESS_MANAGED_BY


def parent_service(addr: IPAddress) -> tuple[str, str] | None:
    """The (namespace, name) of the Service ``addr`` says it belongs to, or None if it names none."""
    ref = addr.spec.parent_ref
    if ref is None or (ref.group or "") != "" or ref.resource != "services" or not ref.name:
        return None
    return (ref.namespace or "", ref.name)


class ClusterIPRepair:
    """One key, one full pass over the informers' caches per reconcile."""

    def __init__(
        self,
        client: Client,
        ip_address_kind: Kind,
        service_kind: Kind,
        services: Informer[Service],
        addresses: Informer[IPAddress],
        allocator: ServiceIPAllocator | None,
        *,
        grace: float = 60.0,
        interval: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.ip_kind = ip_address_kind
        self.svc_kind = service_kind
        self.services = services
        self.addresses = addresses
        self.allocator = allocator
        self.grace = grace
        self.interval = interval
        self._clock: Clock = clock or LoopClock()
        # Orphans seen on an earlier pass: address -> (uid, when first seen).
        self._orphans: dict[str, tuple[str, float]] = {}
        self._last_refresh: float | None = None
        self._warned_out_of_range: set[str] = set()
        self.controller: Controller[str] = Controller(
            "clusterip-repair", self.reconcile, clock=self._clock, resync=lambda: [REPAIR_KEY]
        )
        self.controller.watch(services, lambda _svc: [REPAIR_KEY])
        self.controller.watch(addresses, lambda _addr: [REPAIR_KEY])
        self.repaired = 0  # IPAddresses recreated
        self.released = 0  # orphans deleted

    def _in_range(self, ip: str) -> bool:
        if self.allocator is None:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        net = self.allocator.cidrs.get(addr.version)
        return net is not None and addr in net

    async def reconcile(self, key: str) -> Result:
        now = self._clock.now()
        changed = False

        # Every Service's addresses have their IPAddress.
        for svc in self.services.list():
            if svc.spec.type == "ExternalName":
                continue
            for ip in svc.spec.cluster_ips or []:
                if ip == "None" or self.addresses.get(None, ip) is not None:
                    continue
                if not self._in_range(ip):
                    if ip not in self._warned_out_of_range:
                        self._warned_out_of_range.add(ip)
                        log.warning(
                            "Service %s/%s holds %s, outside every service range; recreate the Service",
                            svc.namespace,
                            svc.name,
                            ip,
                        )
                    continue
                changed |= await self._recreate(svc, ip)

        # Every allocator-made IPAddress has a Service holding it, or is an orphan on probation.
        orphans: dict[str, tuple[str, float]] = {}
        next_due: float | None = None
        for addr in self.addresses.list():
            if not is_managed(addr):
                continue
            parent = parent_service(addr)
            if parent is not None and holds(self.services.get(*parent), addr.name):
                continue
            uid = addr.metadata.uid or ""
            seen = self._orphans.get(addr.name)
            first = seen[1] if seen is not None and seen[0] == uid else now
            if now - first >= self.grace:
                if await self._delete_orphan(addr, parent):
                    changed = True
                continue
            orphans[addr.name] = (uid, first)
            due = first + self.grace
            next_due = due if next_due is None else min(next_due, due)
        self._orphans = orphans

        if self.allocator is not None and (
            changed or self._last_refresh is None or now - self._last_refresh >= self.interval
        ):
            await self.allocator.refresh()
            self._last_refresh = now
        wait = self.interval if next_due is None else min(self.interval, next_due - now)
        return Result(requeue_after=max(wait, 0.001))

    async def _recreate(self, svc: Service, ip: str) -> bool:
        # Read the Service afresh: the cache may still show a Service deleted (and released) just now.
        try:
            current = Service.model_validate(await self.client.get(self.svc_kind, svc.namespace, svc.name))
        except errors.ApiError as e:
            if e.code == 404:
                return False
            raise
        if current.metadata.uid != svc.metadata.uid or not holds(current, ip):
            return False
        try:
            await self.client.create(
                self.ip_kind, None, service_ip_address(ip, current.namespace, current.name)
            )
        except errors.ApiError as e:
            if e.code == 409:
                return False  # it exists: our cache was behind
            raise
        log.warning("ClusterIP %s of Service %s/%s was not allocated; repaired", ip, svc.namespace, svc.name)
        self.repaired += 1
        return True

    async def _delete_orphan(self, addr: IPAddress, parent: tuple[str, str] | None) -> bool:
        if parent is not None:
            try:
                svc = Service.model_validate(await self.client.get(self.svc_kind, *parent))
            except errors.ApiError as e:
                if e.code != 404:
                    raise
            else:
                if holds(svc, addr.name):
                    return False  # the cache was behind: it is not an orphan
        try:
            await self.client.delete(self.ip_kind, None, addr.name, uid=addr.metadata.uid)
        except errors.ApiError as e:
            if e.code in (404, 409):  # gone already, or replaced by a new allocation (another uid)
                return False
            raise
        where = f"{parent[0]}/{parent[1]}" if parent else "no Service"
        log.warning("IPAddress %s (parent %s) leaked: released", addr.name, where)
        self.released += 1
        return True
