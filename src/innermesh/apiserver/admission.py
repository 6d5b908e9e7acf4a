"""Admission: the rules that need more than the object itself.

- ``NamespaceLifecycle``: namespaced objects are created only in a namespace that exists and is not
  being deleted; a new Namespace gets the ``kubernetes`` finalizer that its cleanup removes.
- ``ServiceIPs``: ClusterIP allocation, in the create path as Kubernetes does it, so the answer to
  ``create`` already carries the Service's address.

ClusterIP allocation follows Kubernetes' IPAddress allocator (KEP-1880): every allocated address is an
``networking.k8s.io/v1`` IPAddress object named by the address, whose ``parentRef`` names the Service.
The store's create-if-absent is the lock: two API servers (or two concurrent creates) can never hand
out the same address, because only one create of that name succeeds. An in-memory set of used
addresses is only a hint for picking candidates quickly; the store decides. Releasing deletes the
object. The allocation state therefore survives restarts by construction, and the repair controller
(``controllers.clusterip``) removes IPAddresses whose Service is gone (a crash between the two writes)
and recreates missing ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from innermesh.api import status as errors
from innermesh.api.core import IPFamily, Namespace, Service
from innermesh.api.fielderrors import FieldPath, invalid
from innermesh.api.meta import Resource
from innermesh.api.networking import service_ip_address
from innermesh.api.registry import Kind
from innermesh.store.objects import Object

if TYPE_CHECKING:
    from innermesh.apiserver.resources import Resources

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FAMILY_NAME: dict[int, IPFamily] = {4: "IPv4", 6: "IPv6"}
FAMILY_VERSION = {"IPv4": 4, "IPv6": 6}
NAMESPACE_FINALIZER = "kubernetes"


def parse_service_cidrs(text: str) -> list[IPNetwork]:
    """``--service-cidr``: one CIDR, or two of different families for dual-stack (primary first)."""
    nets: list[IPNetwork] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            net = ipaddress.ip_network(part, strict=True)
        except ValueError as e:
            raise ValueError(f"--service-cidr: {part!r} is not a valid CIDR: {e}") from None
        # Below 4 addresses there is nothing to hand out once the reserved ones are removed.
        if net.num_addresses < 4:
            raise ValueError(f"--service-cidr: {part} is too small (at least 4 addresses)")
        nets.append(net)
    if not nets or len(nets) > 2 or (len(nets) == 2 and nets[0].version == nets[1].version):
        raise ValueError("--service-cidr: give one CIDR, or one IPv4 and one IPv6 CIDR")
    return nets


class Plugin:
    """An admission plugin: checks and changes beyond one object's schema. Every hook is a no-op here;
    plugins override what they need.

    Hooks see typed objects, except ``prepare_update``, which sees the raw body and the stored object
    (for defaults taken from the old object, such as a Service's clusterIP when a PUT leaves it out).
    A claim made in ``on_create``/``on_update`` is given back by ``undo_create``/``undo_update`` when the
    write does not happen; what an update gives up is released in ``after_update``, once it is stored."""

    async def on_create(self, kind: Kind, obj: Resource, dry_run: bool) -> Resource:
        return obj

    async def undo_create(self, kind: Kind, obj: Resource) -> None:
        return None

    def prepare_update(self, kind: Kind, body: Object, old: Object) -> None:
        return None

    async def on_update(self, kind: Kind, new: Resource, old: Resource, dry_run: bool) -> Resource:
        return new

    async def undo_update(self, kind: Kind, new: Resource, old: Resource) -> None:
        return None

    async def after_update(self, kind: Kind, new: Resource, old: Resource) -> None:
        return None

    def before_delete(self, kind: Kind, obj: Resource) -> None:
        """Raise an ApiError to refuse the delete."""
        return

    async def after_delete(self, kind: Kind, old: Resource) -> None:
        return None


class Chain(Plugin):
    """Several plugins in order; each sees the previous one's result."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.plugins = list(plugins)

    async def on_create(self, kind: Kind, obj: Resource, dry_run: bool) -> Resource:
        for p in self.plugins:
            obj = await p.on_create(kind, obj, dry_run)
        return obj

    async def undo_create(self, kind: Kind, obj: Resource) -> None:
        for p in reversed(self.plugins):
            await p.undo_create(kind, obj)

    def prepare_update(self, kind: Kind, body: Object, old: Object) -> None:
        for p in self.plugins:
            p.prepare_update(kind, body, old)

    async def on_update(self, kind: Kind, new: Resource, old: Resource, dry_run: bool) -> Resource:
        for p in self.plugins:
            new = await p.on_update(kind, new, old, dry_run)
        return new

    async def undo_update(self, kind: Kind, new: Resource, old: Resource) -> None:
        for p in reversed(self.plugins):
            await p.undo_update(kind, new, old)

    async def after_update(self, kind: Kind, new: Resource, old: Resource) -> None:
        for p in self.plugins:
            await p.after_update(kind, new, old)

    def before_delete(self, kind: Kind, obj: Resource) -> None:
        for p in self.plugins:
            p.before_delete(kind, obj)

    async def after_delete(self, kind: Kind, old: Resource) -> None:
        for p in self.plugins:
            await p.after_delete(kind, old)


class NamespaceLifecycle(Plugin):
    def __init__(self, resources: Resources, protected: Sequence[str] = ()) -> None:
        self.resources = resources
        # Namespaces the server itself relies on (``default``, and ``innermesh-system`` with the
        # controllers' leader Lease) cannot be deleted, as Kubernetes protects kube-system.
        self.protected = frozenset(protected)

    def before_delete(self, kind: Kind, obj: Resource) -> None:
        if isinstance(obj, Namespace) and obj.name in self.protected:
            raise errors.forbidden("namespaces", obj.name, "this namespace may not be deleted")

    async def on_create(self, kind: Kind, obj: Resource, dry_run: bool) -> Resource:
        if isinstance(obj, Namespace):
            fins = list(obj.spec.finalizers or [])
            if NAMESPACE_FINALIZER not in fins:
                obj.spec.finalizers = [*fins, NAMESPACE_FINALIZER]
            return obj
        if not kind.namespaced:
            return obj
        ns_kind = self.resources.registry.by_gvk("v1", "Namespace")
        try:
            ns = await self.resources.get(ns_kind, None, obj.namespace)
        except errors.ApiError as e:
            if e.code == 404:
                raise errors.not_found("namespaces", obj.namespace) from None
            raise
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.forbidden(
                kind.plural,
                obj.name,
                f"unable to create new content in namespace {obj.namespace} because it is being terminated",
            )
        return obj


class ServiceIPs(Plugin):
    """ClusterIP allocation for Services (see the module docstring)."""

    def __init__(
        self, resources: Resources, cidrs: Sequence[IPNetwork], rng: random.Random | None = None
    ) -> None:
        self.resources = resources
        self.cidrs: dict[int, IPNetwork] = {net.version: net for net in cidrs}
        self.primary: IPFamily = FAMILY_NAME[cidrs[0].version]
        self._rng = rng or random.Random()
        self._used: dict[int, set[int]] = {v: set() for v in self.cidrs}
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._ipaddress = resources.registry.by_gvk("networking.k8s.io/v1", "IPAddress")

    # -- the hint cache -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the used-address hint from the store (at start, when a range looks full, and from the
        repair controller)."""
        items, _ = await self.resources.list(self._ipaddress, None)
        used: dict[int, set[int]] = {v: set() for v in self.cidrs}
        for obj in items:
            try:
                ip = ipaddress.ip_address(obj["metadata"]["name"])
            except (KeyError, ValueError):
                continue
            net = self.cidrs.get(ip.version)
            if net is not None and ip in net:
                used[ip.version].add(int(ip))
        self._used = used
        self._loaded = True

    async def _ensure_loaded(self) -> None:
        if not self._loaded:
            async with self._load_lock:
                if not self._loaded:
                    await self.refresh()

    def _usable(self, net: IPNetwork) -> tuple[int, int]:
        """The first and last address handed out: never the network address, nor IPv4's broadcast."""
        first = int(net.network_address) + 1
        last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
        return first, last

    def _candidate(self, version: int) -> int | None:
        net = self.cidrs[version]
        first, last = self._usable(net)
        size = last - first + 1
        used = self._used[version]
        if len(used) >= size:
            return None
        # Random probing is O(1) expected while the range has room; a scan from a random start finishes
        # the job when it is nearly full.
        for _ in range(32):
            c = first + self._rng.randrange(size)
            if c not in used:
                return c
        start = self._rng.randrange(size)
        for i in range(size):
            c = first + (start + i) % size
            if c not in used:
                return c
        return None

    # -- claims in the store ------------------------------------------------------------------------

    async def _claim(self, ip: str, svc: Service) -> bool:
        """Create the IPAddress for ``ip``; False if somebody holds it already."""
        body = service_ip_address(ip, svc.namespace, svc.name)
        try:
            await self.resources.create(self._ipaddress, None, body)
        except errors.ApiError as e:
            if e.code == 409:
                return False
            raise
        finally:
            addr = ipaddress.ip_address(ip)
            if addr.version in self._used:
                self._used[addr.version].add(int(addr))
        return True

    async def release(self, ip: str, svc_namespace: str, svc_name: str) -> None:
        """Delete the IPAddress for ``ip`` if it belongs to this Service."""
        try:
            obj = await self.resources.get(self._ipaddress, None, ip)
        except errors.ApiError as e:
            if e.code == 404:
                self._forget(ip)
                return
            raise
        ref = (obj.get("spec") or {}).get("parentRef") or {}
        if (
            ref.get("resource") != "services"
            or ref.get("namespace") != svc_namespace
            or ref.get("name") != svc_name
        ):
            return
        try:
            await self.resources.delete(self._ipaddress, None, ip)
        except errors.ApiError as e:
            if e.code != 404:
                raise
        self._forget(ip)

    def _forget(self, ip: str) -> None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return
        self._used.get(addr.version, set()).discard(int(addr))

    async def _allocate(self, version: int, svc: Service, dry_run: bool) -> str:
        await self._ensure_loaded()
        refreshed = False
        for _ in range(64):
            c = self._candidate(version)
            if c is None:
                if refreshed:
                    break
                await self.refresh()  # the hint may be stale: addresses released elsewhere
                refreshed = True
                continue
            ip = str(ipaddress.ip_address(c))
            if dry_run:
                return ip
            if await self._claim(ip, svc):
                return ip
        net = self.cidrs[version]
        first, last = self._usable(net)
        raise errors.internal(
            f'failed to allocate a cluster IP for service "{svc.namespace}/{svc.name}": the service range {net} '
            f"is exhausted (all {last - first + 1} usable addresses are allocated); delete unused Services or "
            "start the server with a larger --service-cidr"
        )

    async def _claim_requested(self, index: int, ip: str, svc: Service, dry_run: bool) -> None:
        addr = ipaddress.ip_address(ip)
        net = self.cidrs.get(addr.version)
        path = FieldPath.root("spec", "clusterIPs").index(index)
        if (
            net is None
            or addr not in net
            or int(addr) < self._usable(net)[0]
            or int(addr) > self._usable(net)[1]
        ):
            ranges = ", ".join(str(n) for n in self.cidrs.values())
            raise errors.invalid(
                "Service",
                svc.name,
                [
                    invalid(
                        path, ip, f"provided IP is not in the valid range. The range of valid IPs is {ranges}"
                    )
                ],
            )
        if dry_run:
            return
        await self._ensure_loaded()
        if not await self._claim(ip, svc):
            raise errors.invalid("Service", svc.name, [invalid(path, ip, "provided IP is already allocated")])

    # -- the hooks ----------------------------------------------------------------------------------

    def _families(self, svc: Service) -> list[IPFamily]:
        spec = svc.spec
        policy = spec.ip_family_policy or "SingleStack"
        fams: list[IPFamily]
        if spec.ip_families:
            fams = list(spec.ip_families)
        elif spec.cluster_ips and spec.cluster_ips != ["None"]:
            fams = [FAMILY_NAME[ipaddress.ip_address(ip).version] for ip in spec.cluster_ips]
        else:
            fams = [self.primary]
        configured = [FAMILY_NAME[v] for v in self.cidrs]
        for i, fam in enumerate(fams):
            if fam not in configured:
                raise errors.invalid(
                    "Service",
                    svc.name,
                    [
                        invalid(
                            FieldPath.root("spec", "ipFamilies").index(i),
                            fam,
                            f"{fam} is not configured on this server (service ranges: {', '.join(str(n) for n in self.cidrs.values())})",
                        )
                    ],
                )
        if policy in ("PreferDualStack", "RequireDualStack") and len(fams) == 1:
            others = [f for f in configured if f != fams[0]]
            if others:
                fams.append(others[0])
            elif policy == "RequireDualStack":
                raise errors.invalid(
                    "Service",
                    svc.name,
                    [
                        invalid(
                            FieldPath.root("spec", "ipFamilyPolicy"),
                            policy,
                            "this server is not configured for dual-stack services (one --service-cidr)",
                        )
                    ],
                )
        return fams

    async def _assign(self, svc: Service, dry_run: bool, keep: list[str]) -> Service:
        """Give ``svc`` one address per family, keeping ``keep`` (already held) and claiming or
        allocating the rest; on failure, release what this call claimed."""
        spec = svc.spec
        fams = self._families(svc)
        requested = [ip for ip in (spec.cluster_ips or []) if ip != "None"]
        ips: list[str] = []
        claimed: list[str] = []
        try:
            for i, fam in enumerate(fams):
                version = FAMILY_VERSION[fam]
                if i < len(keep):
                    ips.append(keep[i])
                elif i < len(requested):
                    await self._claim_requested(i, requested[i], svc, dry_run)
                    ips.append(requested[i])
                    claimed.append(requested[i])
                else:
                    ip = await self._allocate(version, svc, dry_run)
                    ips.append(ip)
                    claimed.append(ip)
        except BaseException:
            if not dry_run:
                for ip in claimed:
                    await self.release(ip, svc.namespace, svc.name)
            raise
        spec.cluster_ip = ips[0]
        spec.cluster_ips = ips
        spec.ip_families = fams
        spec.ip_family_policy = spec.ip_family_policy or "SingleStack"
        return svc

    async def on_create(self, kind: Kind, obj: Resource, dry_run: bool) -> Resource:
        if not isinstance(obj, Service):
            return obj
        spec = obj.spec
        if spec.type == "ExternalName":
            spec.cluster_ip = spec.cluster_ips = spec.ip_families = spec.ip_family_policy = None
            return obj
        if spec.headless:
            # No address, but the families say which endpoints are published: both families when the
            # policy asks for dual-stack and the server has both.
            spec.ip_families = self._families(obj)
            spec.cluster_ips = ["None"]
            spec.ip_family_policy = spec.ip_family_policy or "SingleStack"
            return obj
        return await self._assign(obj, dry_run, keep=[])

    async def undo_create(self, kind: Kind, obj: Resource) -> None:
        if isinstance(obj, Service):
            for ip in _held(obj):
                await self.release(ip, obj.namespace, obj.name)

    def prepare_update(self, kind: Kind, body: Object, old: Object) -> None:
        if kind.kind != "Service":
            return
        new_spec = body.get("spec")
        old_spec = old.get("spec") or {}
        if not isinstance(new_spec, dict) or new_spec.get("type", "ClusterIP") == "ExternalName":
            return
        if old_spec.get("type", "ClusterIP") == "ExternalName":
            return
        # A PUT that leaves the allocated fields out keeps them (Kubernetes does the same), so that
        # `kubectl replace -f` of the original manifest works.
        if not new_spec.get("clusterIP") and not new_spec.get("clusterIPs"):
            for f in ("clusterIP", "clusterIPs"):
                if f in old_spec:
                    new_spec[f] = old_spec[f]
            for f in ("ipFamilies", "ipFamilyPolicy"):
                if f not in new_spec and f in old_spec:
                    new_spec[f] = old_spec[f]
        # A downgrade to SingleStack gives up the secondary address, as Kubernetes does, even when the
        # body (from `kubectl edit`, say) still lists both.
        old_ips = old_spec.get("clusterIPs") or []
        if new_spec.get("ipFamilyPolicy") == "SingleStack" and len(old_ips) == 2:
            if new_spec.get("clusterIPs") == old_ips:
                new_spec["clusterIPs"] = old_ips[:1]
            if new_spec.get("ipFamilies") == old_spec.get("ipFamilies") and new_spec.get("ipFamilies"):
                new_spec["ipFamilies"] = new_spec["ipFamilies"][:1]

    async def on_update(self, kind: Kind, new: Resource, old: Resource, dry_run: bool) -> Resource:
        if not isinstance(new, Service) or not isinstance(old, Service):
            return new
        old_ips = _held(old)
        if new.spec.type == "ExternalName":
            # The addresses are released once the update is stored (after_update).
            new.spec.cluster_ip = new.spec.cluster_ips = None
            new.spec.ip_families = new.spec.ip_family_policy = None
            return new
        if new.spec.headless:
            return new
        fams = self._families(new)
        if len(fams) < len(old_ips):
            # A downgrade to single-stack gives back the secondary address (after_update).
            old_ips = old_ips[: len(fams)]
            new.spec.cluster_ips = old_ips
            new.spec.ip_families = fams
            return new
        if len(old_ips) == len(fams) and old_ips:
            return new
        return await self._assign(new, dry_run, keep=old_ips)

    async def undo_update(self, kind: Kind, new: Resource, old: Resource) -> None:
        if isinstance(new, Service) and isinstance(old, Service):
            for ip in set(_held(new)) - set(_held(old)):
                await self.release(ip, new.namespace, new.name)

    async def after_update(self, kind: Kind, new: Resource, old: Resource) -> None:
        if isinstance(new, Service) and isinstance(old, Service):
            for ip in set(_held(old)) - set(_held(new)):
                await self.release(ip, old.namespace, old.name)

    async def after_delete(self, kind: Kind, old: Resource) -> None:
        if isinstance(old, Service):
            for ip in _held(old):
                await self.release(ip, old.namespace, old.name)


def _held(svc: Service) -> list[str]:
    """The cluster IPs a Service holds (none for headless and ExternalName)."""
    return [ip for ip in (svc.spec.cluster_ips or []) if ip != "None"]
