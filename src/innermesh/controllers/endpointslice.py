"""EndpointSlices for Services with a selector: upstream's EndpointSlice controller, over Workloads.

For each Service with a selector, the Workloads of its namespace whose labels match become endpoints,
one slice set per address family the Service has (``spec.ipFamilies``; ``addressType`` IPv4 / IPv6).
An endpoint is the Workload's address of that family, with

- ``conditions.serving``: the Workload is ready (``Workload.is_ready``: no Ready condition, or
  Ready=True), whether or not it is terminating;
- ``conditions.ready``: serving and not terminating, or always with ``publishNotReadyAddresses``;
- ``conditions.terminating``: ``metadata.deletionTimestamp`` is set;
- ``nodeName`` and ``zone`` from the Workload; ``targetRef`` the Workload; ``hints`` for
  ``trafficDistribution`` (PreferClose / PreferSameZone: the endpoint's zone; PreferSameNode: its node
  and zone).

Ports: each Service port's ``targetPort`` is resolved per Workload (a number as it is; a name looked up
in the Workload's ports by name and protocol; a Workload without it is left out of that port), and
endpoints are grouped into slices by their resolved port set, at most ``max_endpoints`` per slice.

Slices are labelled ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by``
(plus the Service's own labels, and ``service.kubernetes.io/headless`` for headless Services), owned by
the Service (a controller ownerReference), and named ``<service>-<random>``.

Minimal churn, as upstream's reconciler (``staging/src/k8s.io/endpointslice/reconciler.go``): endpoints
stay in the slice they are in and are updated in place; slices that changed are filled up before a new
one is made; leftovers go into one existing slice that fits them all, else into new slices; a slice
that would be deleted while another is created is updated instead; nothing is written when nothing
changed. A Service whose selector matches nothing keeps one empty *placeholder* slice per family, so
consumers can tell "no endpoints" from "not processed yet". Slices of deleted Services, of Services
that lost their selector or became ExternalName, and slices owned by an earlier Service of the same
name are deleted.

The desired state (``desired_groups``) and the diff (``plan_slices``) are pure; ``EndpointSliceController``
reads the informers, applies the plan, and tracks its own writes so that it never acts on a cache that
has not yet seen them (upstream's EndpointSliceTracker).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from innermesh.api import status as errors
from innermesh.api.core import Service
from innermesh.api.discovery import (
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointHints,
    EndpointPort,
    EndpointSlice,
    ForNode,
    ForZone,
    ObjectReference,
)
from innermesh.api.mesh import Workload
from innermesh.api.meta import ObjectMeta, OwnerReference
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.client.informer import Informer, Key
from innermesh.controllers.clock import Clock, LoopClock
from innermesh.controllers.runtime import DONE, Controller, Result

log = logging.getLogger(__name__)

CONTROLLER_NAME = "endpointslice-controller.innermesh.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
DEFAULT_MAX_ENDPOINTS_PER_SLICE = 100

AddressType = Literal["IPv4", "IPv6"]
PortsKey = tuple[tuple[str, str, int | None, str | None], ...]
EndpointKey = tuple[str, str]  # (targetRef name, address)

_FAMILY: dict[int, AddressType] = {4: "IPv4", 6: "IPv6"}


# ---------------------------------------------------------------------------------------------------
# Desired state (pure)


def manages(svc: Service) -> bool:
    """Whether this controller keeps slices for ``svc``: it has a non-empty selector and is not
    ExternalName (an empty selector is no selector, as upstream reads it after a round trip)."""
    return bool(svc.spec.selector) and svc.spec.type != "ExternalName"


def selects(svc: Service, wl: Workload) -> bool:
    if not manages(svc) or wl.namespace != svc.namespace:
        return False
    labels = wl.metadata.labels or {}
    return all(labels.get(k) == v for k, v in (svc.spec.selector or {}).items())


def address_types(svc: Service) -> list[AddressType]:
    """The families the Service has slices for: ``ipFamilies`` (set by the API server), else the
    families of its cluster IPs, else both (a headless Service from before families were recorded)."""
    if svc.spec.ip_families:
        return list(svc.spec.ip_families)
    fams: list[AddressType] = []
    for ip in svc.spec.cluster_ips or []:
        try:
            fam = _FAMILY[ipaddress.ip_address(ip).version]
        except ValueError:
            continue
        if fam not in fams:
            fams.append(fam)
    return fams or ["IPv4", "IPv6"]


def resolve_ports(svc: Service, wl: Workload) -> list[EndpointPort]:
    """The Service's ports as this Workload serves them (upstream's getEndpointPorts + FindPort)."""
    out: list[EndpointPort] = []
    for sp in svc.spec.ports or []:
        target = sp.target_port if sp.target_port is not None else sp.port
        number: int | None
        if isinstance(target, int):
            number = target
        else:
            number = next(
                (p.port for p in wl.spec.ports or [] if p.name == target and p.protocol == sp.protocol), None
            )
            if number is None:
                continue  # this Workload does not serve that named port
        out.append(
            EndpointPort(name=sp.name or "", protocol=sp.protocol, port=number, app_protocol=sp.app_protocol)
        )
    return out


def ports_key(ports: Iterable[EndpointPort] | None) -> PortsKey:
    return tuple(sorted((p.name, p.protocol, p.port, p.app_protocol) for p in ports or []))


def workload_address(wl: Workload, address_type: AddressType) -> str | None:
    for address in wl.spec.addresses:
        try:
            if _FAMILY[ipaddress.ip_address(address).version] == address_type:
                return address
        except ValueError:
            continue
    return None


def _hints(svc: Service, wl: Workload) -> EndpointHints | None:
    dist = svc.spec.traffic_distribution
    if dist is None:
        return None
    zones = [ForZone(name=wl.spec.zone)] if wl.spec.zone else None
    nodes = [ForNode(name=wl.spec.node)] if dist == "PreferSameNode" and wl.spec.node else None
    if zones is None and nodes is None:
        return None
    return EndpointHints(for_zones=zones, for_nodes=nodes)


def endpoint_for(svc: Service, wl: Workload, address_type: AddressType) -> Endpoint | None:
    """The endpoint ``wl`` contributes to ``svc``'s slices of ``address_type`` (None: no address)."""
    address = workload_address(wl, address_type)
    if address is None:
        return None
    terminating = wl.metadata.deletion_timestamp is not None
    serving = wl.is_ready
    ready = bool(svc.spec.publish_not_ready_addresses) or (serving and not terminating)
    return Endpoint(
        addresses=[address],
        conditions=EndpointConditions(ready=ready, serving=serving, terminating=terminating),
        target_ref=ObjectReference(
            kind="Workload",
            api_version=wl.api_version,
            namespace=wl.namespace,
            name=wl.name,
            uid=wl.metadata.uid,
        ),
        node_name=wl.spec.node,
        zone=wl.spec.zone,
        hints=_hints(svc, wl),
    )


def endpoint_key(ep: Endpoint) -> EndpointKey:
    name = ep.target_ref.name if ep.target_ref is not None and ep.target_ref.name else ""
    return (name, ep.addresses[0] if ep.addresses else "")


@dataclass(frozen=True, slots=True)
class EndpointGroup:
    """Endpoints of one address type that serve one set of ports: they share slices."""

    address_type: AddressType
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]


def desired_groups(
    svc: Service, workloads: Iterable[Workload]
) -> dict[tuple[AddressType, PortsKey], EndpointGroup]:
    """Every endpoint ``svc`` should have, grouped by (address type, port set), in a stable order (by
    Workload name). Empty when the Service has no selector."""
    if not manages(svc):
        return {}
    chosen = sorted((wl for wl in workloads if selects(svc, wl)), key=lambda w: w.name)
    ports: dict[tuple[AddressType, PortsKey], tuple[EndpointPort, ...]] = {}
    members: dict[tuple[AddressType, PortsKey], list[Endpoint]] = {}
    for address_type in address_types(svc):
        for wl in chosen:
            ep = endpoint_for(svc, wl, address_type)
            if ep is None:
                continue
            wl_ports = resolve_ports(svc, wl)
            key = (address_type, ports_key(wl_ports))
            ports.setdefault(key, tuple(wl_ports))
            members.setdefault(key, []).append(ep)
    return {k: EndpointGroup(k[0], ports[k], tuple(eps)) for k, eps in members.items()}


def desired_labels(svc: Service) -> dict[str, str]:
    """The Service's labels, then the ones this controller owns (upstream's setEndpointSliceLabels)."""
    labels = {
        k: v
        for k, v in (svc.metadata.labels or {}).items()
        if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)
    }
    labels[SERVICE_NAME_LABEL] = svc.name
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    if svc.spec.headless:
        labels[HEADLESS_LABEL] = ""
    return labels


def owner_reference(svc: Service) -> OwnerReference:
    return OwnerReference(
        api_version="v1",
        kind="Service",
        name=svc.name,
        uid=svc.metadata.uid or "",
        controller=True,
        block_owner_deletion=True,
    )


def owned_by(slice_: EndpointSlice, svc: Service) -> bool:
    return any(
        ref.controller and ref.kind == "Service" and ref.uid == svc.metadata.uid
        for ref in slice_.metadata.owner_references or []
    )


def new_slice(svc: Service, address_type: AddressType, ports: Sequence[EndpointPort]) -> EndpointSlice:
    return EndpointSlice(
        metadata=ObjectMeta(
            generate_name=f"{svc.name}-",
            namespace=svc.namespace,
            labels=desired_labels(svc),
            owner_references=[owner_reference(svc)],
        ),
        address_type=address_type,
        endpoints=[],
        ports=list(ports),
    )


def _copy(slice_: EndpointSlice) -> EndpointSlice:
    return slice_.model_copy(deep=True)


@dataclass
class SlicePlan:
    """What to write: new slices (generateName), changed slices (at their resourceVersion), and
    slices to delete."""

    create: list[EndpointSlice] = field(default_factory=list)
    update: list[EndpointSlice] = field(default_factory=list)
    delete: list[EndpointSlice] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


def _is_placeholder(slice_: EndpointSlice, svc: Service, address_type: AddressType) -> bool:
    return (
        not slice_.endpoints
        and not slice_.ports
        and slice_.address_type == address_type
        and owned_by(slice_, svc)
        and (slice_.metadata.labels or {}) == desired_labels(svc)
    )


def _slice_to_fill(
    candidates: Iterable[EndpointSlice], count: int, max_endpoints: int
) -> EndpointSlice | None:
    """The fullest unchanged slice that still has room for all ``count`` leftovers (upstream's
    getSliceToFill)."""
    best: EndpointSlice | None = None
    for s in candidates:
        if len(s.endpoints) + count <= max_endpoints and (
            best is None or len(s.endpoints) > len(best.endpoints)
        ):
            best = s
    return best


def _plan_port_group(
    svc: Service,
    existing: list[EndpointSlice],
    group: EndpointGroup,
    max_endpoints: int,
) -> SlicePlan:
    """upstream's reconcileByPortMapping, for the slices of one (address type, port set)."""
    desired: dict[EndpointKey, Endpoint] = {endpoint_key(ep): ep for ep in group.endpoints}
    labels = desired_labels(svc)
    unchanged: dict[str, EndpointSlice] = {}
    updated: dict[str, EndpointSlice] = {}
    plan = SlicePlan()

    # 1. Keep desired endpoints where they are (updated in place); drop the others.
    for s in existing:
        kept: list[Endpoint] = []
        endpoint_changed = False
        for ep in s.endpoints:
            want = desired.pop(endpoint_key(ep), None)
            if want is None:
                continue
            kept.append(want)
            if want.to_dict() != ep.to_dict():
                endpoint_changed = True
        labels_changed = (s.metadata.labels or {}) != labels
        if endpoint_changed or len(kept) != len(s.endpoints):
            if not kept:
                plan.delete.append(s)
                continue
            copy = _copy(s)
            copy.endpoints = kept
            copy.metadata.labels = dict(labels)
            updated[s.name] = copy
        elif labels_changed:
            copy = _copy(s)
            copy.metadata.labels = dict(labels)
            updated[s.name] = copy
        else:
            unchanged[s.name] = s

    # 2. Fill the slices that are being written anyway, fullest first.
    if desired and updated:
        for s in sorted(updated.values(), key=lambda x: -len(x.endpoints)):
            while desired and len(s.endpoints) < max_endpoints:
                s.endpoints.append(desired.pop(next(iter(desired))))

    # 3. Leftovers: into one unchanged slice that fits them all, else into new slices.
    while desired:
        target: EndpointSlice | None = None
        if len(desired) < max_endpoints and unchanged:
            found = _slice_to_fill(unchanged.values(), len(desired), max_endpoints)
            if found is not None:
                target = _copy(found)
                del unchanged[found.name]
                updated[target.name] = target
        if target is None:
            target = new_slice(svc, group.address_type, group.ports)
            plan.create.append(target)
        while desired and len(target.endpoints) < max_endpoints:
            target.endpoints.append(desired.pop(next(iter(desired))))

    plan.update.extend(updated.values())
    return plan


def _plan_address_type(
    svc: Service,
    address_type: AddressType,
    groups: list[EndpointGroup],
    existing: list[EndpointSlice],
    max_endpoints: int,
) -> SlicePlan:
    """upstream's reconcileByAddressType and finalize, for one address type."""
    plan = SlicePlan()
    by_ports: dict[PortsKey, list[EndpointSlice]] = {}
    for s in existing:
        if owned_by(s, svc):
            by_ports.setdefault(ports_key(s.ports), []).append(s)
        else:
            plan.delete.append(s)  # left by an earlier Service of the same name
    wanted = {ports_key(g.ports): g for g in groups}
    for pk, group in wanted.items():
        sub = _plan_port_group(svc, by_ports.get(pk, []), group, max_endpoints)
        plan.create += sub.create
        plan.update += sub.update
        plan.delete += sub.delete
    for pk, slices in by_ports.items():
        if pk not in wanted:
            plan.delete += slices

    # No endpoints at all: keep (or make) one empty placeholder slice.
    if len(existing) == len(plan.delete) and not plan.create:
        if len(plan.delete) == 1 and _is_placeholder(plan.delete[0], svc, address_type):
            plan.delete = []
        else:
            plan.create.append(new_slice(svc, address_type, []))

    # A slice about to be deleted while another is created is updated into it instead.
    kept_deletes: list[EndpointSlice] = []
    for doomed in plan.delete:
        if plan.create and doomed.address_type == address_type and owned_by(doomed, svc):
            fresh = plan.create.pop()
            reused = _copy(doomed)
            reused.metadata.labels = fresh.metadata.labels
            reused.metadata.owner_references = fresh.metadata.owner_references
            reused.endpoints = fresh.endpoints
            reused.ports = fresh.ports
            plan.update.append(reused)
        else:
            kept_deletes.append(doomed)
    plan.delete = kept_deletes
    return plan


def plan_slices(
    svc: Service | None,
    workloads: Iterable[Workload],
    existing: Iterable[EndpointSlice],
    max_endpoints: int = DEFAULT_MAX_ENDPOINTS_PER_SLICE,
) -> SlicePlan:
    """The writes that bring ``existing`` (the slices labelled with the Service's name and managed by
    this controller) to what ``svc`` and ``workloads`` call for. ``svc`` None: the Service is gone."""
    if max_endpoints < 1:
        raise ValueError("max_endpoints must be at least 1")
    existing = list(existing)
    if svc is None or not manages(svc):
        return SlicePlan(delete=existing)
    families = address_types(svc)
    groups = desired_groups(svc, workloads)
    plan = SlicePlan()
    by_type: dict[str, list[EndpointSlice]] = {}
    for s in existing:
        if s.address_type in families:
            by_type.setdefault(s.address_type, []).append(s)
        else:
            plan.delete.append(s)  # a family the Service no longer has (or FQDN, never ours)
    for fam in families:
        sub = _plan_address_type(
            svc,
            fam,
            [g for g in groups.values() if g.address_type == fam],
            by_type.get(fam, []),
            max_endpoints,
        )
        plan.create += sub.create
        plan.update += sub.update
        plan.delete += sub.delete
    if svc.metadata.deletion_timestamp is not None:
        plan.create = []  # never make new slices for a Service on its way out (upstream)
    return plan


# ---------------------------------------------------------------------------------------------------
# The controller


class _Expectations:
    """Our own writes the slice cache has not shown yet (upstream's EndpointSliceTracker). While any is
    outstanding for a Service, its reconcile waits: acting on the older cache would create duplicates
    or write at a stale resourceVersion. An expectation lapses after ``ttl`` seconds, in case the event
    that would satisfy it was missed (for example the slice was deleted by someone else meanwhile)."""

    def __init__(self, clock: Clock, ttl: float = 5.0) -> None:
        self.clock = clock
        self.ttl = ttl
        # service key -> slice name -> (minimum resourceVersion, or None for "deleted"; when recorded)
        self._by_service: dict[Key, dict[str, tuple[int | None, float]]] = {}

    def expect_write(self, service: Key, name: str, resource_version: int) -> None:
        self._by_service.setdefault(service, {})[name] = (resource_version, self.clock.now())

    def expect_deletion(self, service: Key, name: str) -> None:
        self._by_service.setdefault(service, {})[name] = (None, self.clock.now())

    def forget_slice(self, service: Key, name: str) -> None:
        pending = self._by_service.get(service)
        if pending is not None:
            pending.pop(name, None)
            if not pending:
                del self._by_service[service]

    def forget(self, service: Key) -> None:
        self._by_service.pop(service, None)

    def stale(self, service: Key, cache: Informer[EndpointSlice]) -> bool:
        pending = self._by_service.get(service)
        if not pending:
            return False
        now = self.clock.now()
        for name, (rv, at) in list(pending.items()):
            cached = cache.get(service[0], name)
            if rv is None:
                satisfied = cached is None
            else:
                satisfied = cached is not None and int(cached.metadata.resource_version or 0) >= rv
            if satisfied or now - at > self.ttl:
                del pending[name]
        if not pending:
            del self._by_service[service]
            return False
        return True


def _service_key_of_slice(s: EndpointSlice) -> list[Key]:
    name = s.service_name
    return [(s.namespace, name)] if name else []


class EndpointSliceController:
    """Reconciles the slices of one Service per key (namespace, name)."""

    def __init__(
        self,
        client: Client,
        slice_kind: Kind,
        services: Informer[Service],
        workloads: Informer[Workload],
        slices: Informer[EndpointSlice],
        *,
        max_endpoints: int = DEFAULT_MAX_ENDPOINTS_PER_SLICE,
        workers: int = 2,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.kind = slice_kind
        self.services = services
        self.workloads = workloads
        self.slices = slices
        self.max_endpoints = max_endpoints
        self._expectations = _Expectations(clock or LoopClock())
        self.controller: Controller[Key] = Controller(
            "endpointslice", self.reconcile, workers=workers, resync=self._all_keys
        )
        self.controller.watch(services, lambda svc: [(svc.namespace, svc.name)])
        self.controller.watch(workloads, self._services_selecting)
        self.controller.watch(slices, _service_key_of_slice)
        slices.add_handler(self._on_slice)
        # Counters of writes, for tests and status.
        self.writes = {"create": 0, "update": 0, "delete": 0}

    def _all_keys(self) -> list[Key]:
        keys = {(s.namespace, s.name) for s in self.services.list()}
        keys.update(k for s in self.slices.list() for k in _service_key_of_slice(s))
        return sorted(keys)

    def _services_selecting(self, wl: Workload) -> list[Key]:
        return [(svc.namespace, svc.name) for svc in self.services.list(wl.namespace) if selects(svc, wl)]

    def _on_slice(self, old: EndpointSlice | None, new: EndpointSlice | None) -> None:
        if new is None and old is not None:
            for key in _service_key_of_slice(old):
                self._expectations.forget_slice(key, old.name)

    def _owned_slices(self, key: Key) -> list[EndpointSlice]:
        namespace, name = key
        return [s for s in self.slices.list(namespace) if s.service_name == name]

    async def reconcile(self, key: Key) -> Result:
        namespace, name = key
        if self._expectations.stale(key, self.slices):
            # The slice event that satisfies the expectation enqueues this key again; the requeue is a
            # safety net.
            return Result(requeue_after=0.5)
        svc = self.services.get(namespace, name)
        workloads = self.workloads.list(namespace) if svc is not None else []
        plan = plan_slices(svc, workloads, self._owned_slices(key), self.max_endpoints)
        if not plan:
            if svc is None:
                self._expectations.forget(key)
            return DONE
        await self._apply(key, plan)
        return DONE

    async def _apply(self, key: Key, plan: SlicePlan) -> None:
        namespace = key[0]
        for s in plan.create:
            try:
                created = await self.client.create(self.kind, namespace, s.to_dict())
            except errors.ApiError as e:
                if e.code in (403, 404):
                    # The namespace is being deleted (or gone): nothing to publish there.
                    log.debug("endpointslice: not creating a slice for %s/%s: %s", *key, e.message)
                    return
                raise
            self.writes["create"] += 1
            meta = created.get("metadata") or {}
            self._expectations.expect_write(key, str(meta.get("name")), int(meta.get("resourceVersion") or 0))
        for s in plan.update:
            updated = await self.client.update(self.kind, namespace, s.name, s.to_dict())
            self.writes["update"] += 1
            meta = updated.get("metadata") or {}
            self._expectations.expect_write(key, s.name, int(meta.get("resourceVersion") or 0))
        for s in plan.delete:
            try:
                await self.client.delete(self.kind, namespace, s.name, uid=s.metadata.uid)
            except errors.ApiError as e:
                if e.code != 404:
                    raise
            self.writes["delete"] += 1
            self._expectations.expect_deletion(key, s.name)
