"""Route attachment and reference resolution: the Gateway API's answer to "did the mesh take my route?".

For every HTTPRoute and GRPCRoute, each parentRef this controller owns gets a ``status.parents[]``
entry with ``controllerName: innermesh.io/gateway-controller``, the parentRef copied, and two
conditions carrying the route's generation:

- **Accepted**: True/Accepted; False/NoMatchingParent when the parent Service or Gateway does not
  exist (or no listener / Service port matches the sectionName or port); False/NotAllowedByListeners
  when the matching listeners do not admit the route's kind or namespace; False/NoMatchingListenerHostname
  when no admitting listener's hostname intersects the route's.
- **ResolvedRefs**: True/ResolvedRefs; False with InvalidKind (a backendRef that is not a core
  Service), RefNotPermitted (a backendRef into another namespace that no ReferenceGrant there allows
  from this route's kind and namespace to that Service), BackendNotFound (the Service does not exist).
  Filters of type ExtensionRef count too: one naming a ``mesh.innermesh.io`` FaultInjection that does not
  exist in the route's namespace is BackendNotFound, one naming any other group or kind is InvalidKind
  (upstream: such a filter must not be skipped; the requests it would see get a 500 instead).
  The reason is the first problem, backendRefs in rule order before filters in rule order; the message
  lists them all.

Owned parentRefs: Services always (GAMMA, the mesh case, uses the same status field); Gateways whose
GatewayClass names our controller (and Gateways that do not exist, so the route says why it is not
attached). Entries of other controllers are left as they are; ours for parents no longer referenced
are removed; conditions keep their lastTransitionTime while their status holds (``set_condition``);
nothing is written when nothing changed. GatewayClasses with our controllerName get Accepted=True.

Everything here is pure (no I/O): ``controllers/routestatus.py`` feeds it from informers and writes
the status subresource; the xDS translator uses the same rules, so that what the status says and what
the data planes do cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from innermesh.api import mesh
from innermesh.api.core import Namespace, Service
from innermesh.api.gateway import (
    GROUP,
    BackendObjectReference,
    Gateway,
    GatewayClass,
    GatewayClassStatus,
    GRPCRoute,
    HTTPRoute,
    Listener,
    LocalObjectReference,
    ParentReference,
    ReferenceGrant,
    RouteParentStatus,
    RouteStatus,
)
from innermesh.api.meta import Condition, now_rfc3339, set_condition

CONTROLLER_NAME = "innermesh.io/gateway-controller"

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
# Written by the xDS server when a data plane rejects (or later accepts) the route's configuration
# (xds/nackstatus.py); kept here as it is.
DATA_PLANE_ACCEPTED = "innermesh.io/DataPlaneAccepted"
MAX_PARENT_STATUSES = 32

Route = HTTPRoute | GRPCRoute
RouteKey = tuple[str, str, str]  # (kind, namespace, name)

# Route kinds a listener admits by default, by protocol (when allowedRoutes.kinds is unset).
_DEFAULT_KINDS: dict[str, frozenset[str]] = {
    "HTTP": frozenset({"HTTPRoute", "GRPCRoute"}),
    "HTTPS": frozenset({"HTTPRoute", "GRPCRoute"}),
    "TLS": frozenset({"TLSRoute"}),
    "TCP": frozenset({"TCPRoute"}),
    "UDP": frozenset({"UDPRoute"}),
}


class RouteWorld(Protocol):
    """What route status depends on besides the route itself."""

    def service(self, namespace: str, name: str) -> Service | None: ...

    def gateway(self, namespace: str, name: str) -> Gateway | None: ...

    def gateway_class(self, name: str) -> GatewayClass | None: ...

    def reference_grants(self, namespace: str) -> Sequence[ReferenceGrant]: ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...

    def fault_injection(self, namespace: str, name: str) -> mesh.FaultInjection | None: ...


@dataclass
class StaticWorld:
    """A RouteWorld from plain lists (tests, and anything that has the objects at hand)."""

    services: list[Service] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    gateway_classes: list[GatewayClass] = field(default_factory=list)
    grants: list[ReferenceGrant] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    fault_injections: list[mesh.FaultInjection] = field(default_factory=list)

    def service(self, namespace: str, name: str) -> Service | None:
        return next((s for s in self.services if (s.namespace, s.name) == (namespace, name)), None)

    def gateway(self, namespace: str, name: str) -> Gateway | None:
        return next((g for g in self.gateways if (g.namespace, g.name) == (namespace, name)), None)

    def gateway_class(self, name: str) -> GatewayClass | None:
        return next((c for c in self.gateway_classes if c.name == name), None)

    def reference_grants(self, namespace: str) -> Sequence[ReferenceGrant]:
        return [g for g in self.grants if g.namespace == namespace]

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        ns = next((n for n in self.namespaces if n.name == namespace), None)
        return (ns.metadata.labels or {}) if ns is not None else {}

    def fault_injection(self, namespace: str, name: str) -> mesh.FaultInjection | None:
        return next((f for f in self.fault_injections if (f.namespace, f.name) == (namespace, name)), None)


# ---------------------------------------------------------------------------------------------------
# Pure decisions


def is_service_parent(ref: ParentReference) -> bool:
    return ref.is_service


def is_gateway_parent(ref: ParentReference) -> bool:
    return ref.group == GROUP and ref.kind == "Gateway"


def owns_parent(ref: ParentReference, route_namespace: str, world: RouteWorld) -> bool:
    """Whether this controller writes the status for ``ref``."""
    if is_service_parent(ref):
        return True
    if not is_gateway_parent(ref):
        return False
    gw = world.gateway(ref.namespace or route_namespace, ref.name)
    if gw is None:
        return True
    gc = world.gateway_class(gw.spec.gateway_class_name)
    return gc is not None and gc.spec.controller_name == CONTROLLER_NAME


def _condition(
    ctype: str, ok: bool, reason: str, message: str, generation: int | None, now: str
) -> Condition:
    return Condition(
        type=ctype,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=now,
    )


def hostnames_intersect(a: str, b: str) -> bool:
    """Whether two hostnames, either possibly a ``*.`` wildcard, can name the same host."""
    if a == b:
        return True
    if a.startswith("*."):
        return b.endswith(a[1:]) and len(b) > len(a) - 1
    if b.startswith("*."):
        return a.endswith(b[1:]) and len(a) > len(b) - 1
    return False


def _listener_admits_kind(listener: Listener, route_kind: str) -> bool:
    kinds = listener.allowed_routes.kinds
    if kinds:
        return any(k.group == GROUP and k.kind == route_kind for k in kinds)
    return route_kind in _DEFAULT_KINDS.get(listener.protocol, frozenset())


def _listener_admits_namespace(
    listener: Listener, gw: Gateway, route_namespace: str, world: RouteWorld
) -> bool:
    ns = listener.allowed_routes.namespaces
    if ns.from_ == "All":
        return True
    if ns.from_ == "Same":
        return route_namespace == gw.namespace
    # Selector: an absent selector selects nothing.
    return ns.selector is not None and ns.selector.matches(dict(world.namespace_labels(route_namespace)))


def accepted_for_gateway(
    route: Route, route_kind: str, ref: ParentReference, world: RouteWorld
) -> tuple[bool, str, str]:
    ns = ref.namespace or route.namespace
    gw = world.gateway(ns, ref.name)
    if gw is None:
        return False, "NoMatchingParent", f'Gateway "{ns}/{ref.name}" does not exist'
    listeners = [
        lst
        for lst in gw.spec.listeners
        if (ref.section_name is None or lst.name == ref.section_name)
        and (ref.port is None or lst.port == ref.port)
    ]
    if not listeners:
        what = " and ".join(
            part
            for part in (
                f'sectionName "{ref.section_name}"' if ref.section_name is not None else "",
                f"port {ref.port}" if ref.port is not None else "",
            )
            if part
        )
        return False, "NoMatchingParent", f'Gateway "{ns}/{ref.name}" has no listener matching {what}'
    admitting = [
        lst
        for lst in listeners
        if _listener_admits_kind(lst, route_kind)
        and _listener_admits_namespace(lst, gw, route.namespace, world)
    ]
    if not admitting:
        return (
            False,
            "NotAllowedByListeners",
            f'no listener of Gateway "{ns}/{ref.name}" allows {route_kind} from namespace "{route.namespace}"',
        )
    hostnames = route.spec.hostnames or []
    if hostnames and not any(
        lst.hostname is None or any(hostnames_intersect(lst.hostname, h) for h in hostnames)
        for lst in admitting
    ):
        return (
            False,
            "NoMatchingListenerHostname",
            f'no listener of Gateway "{ns}/{ref.name}" has a hostname matching the route\'s hostnames',
        )
    return True, "Accepted", f'accepted by Gateway "{ns}/{ref.name}"'


def accepted_for_service(route: Route, ref: ParentReference, world: RouteWorld) -> tuple[bool, str, str]:
    ns = ref.namespace or route.namespace
    svc = world.service(ns, ref.name)
    if svc is None:
        return False, "NoMatchingParent", f'Service "{ns}/{ref.name}" does not exist'
    ports = svc.spec.ports or []
    if ref.port is not None and not any(p.port == ref.port for p in ports):
        return False, "NoMatchingParent", f'Service "{ns}/{ref.name}" has no port {ref.port}'
    if ref.section_name is not None and not any(p.name == ref.section_name for p in ports):
        return False, "NoMatchingParent", f'Service "{ns}/{ref.name}" has no port named "{ref.section_name}"'
    return True, "Accepted", f'accepted for Service "{ns}/{ref.name}"'


def backend_refs(route: Route) -> list[BackendObjectReference]:
    """Every backend the route references, in rule order: backendRefs, and request mirrors in rule and
    backendRef filters."""
    refs: list[BackendObjectReference] = []
    for rule in route.spec.rules or []:
        for f in rule.filters or []:
            if f.request_mirror is not None:
                refs.append(f.request_mirror.backend_ref)
        for b in rule.backend_refs or []:
            refs.append(b)
            for f in b.filters or []:
                if f.request_mirror is not None:
                    refs.append(f.request_mirror.backend_ref)
    return refs


def grant_allows(
    grants: Iterable[ReferenceGrant], route_kind: str, route_namespace: str, service_name: str
) -> bool:
    """Whether a ReferenceGrant (in the Service's namespace) lets ``route_kind`` routes of
    ``route_namespace`` reference Service ``service_name``."""
    for grant in grants:
        from_ok = any(
            f.group == GROUP and f.kind == route_kind and f.namespace == route_namespace
            for f in grant.spec.from_
        )
        to_ok = any(
            t.group == "" and t.kind == "Service" and (t.name is None or t.name == service_name)
            for t in grant.spec.to
        )
        if from_ok and to_ok:
            return True
    return False


def extension_refs(route: Route) -> list[LocalObjectReference]:
    """Every ExtensionRef filter of the route, in rule order: rule filters, then backendRef filters."""
    refs: list[LocalObjectReference] = []
    for rule in route.spec.rules or []:
        filters = [*(rule.filters or []), *(f for b in rule.backend_refs or [] for f in b.filters or [])]
        refs.extend(f.extension_ref for f in filters if f.extension_ref is not None)
    return refs


def is_fault_injection(ref: LocalObjectReference) -> bool:
    return ref.group == mesh.GROUP and ref.kind == "FaultInjection"


def extension_ref_problems(route: Route, world: RouteWorld) -> list[tuple[str, str]]:
    """(reason, message) for each ExtensionRef filter that cannot be resolved."""
    problems: list[tuple[str, str]] = []
    for ref in extension_refs(route):
        if not is_fault_injection(ref):
            group = ref.group or "core"
            supported = f"{mesh.GROUP}/FaultInjection"
            message = f'filter extensionRef "{ref.name}": kind {group}/{ref.kind} is not supported (only {supported})'
            problems.append(("InvalidKind", message))
        elif world.fault_injection(route.namespace, ref.name) is None:
            problems.append(
                (
                    "BackendNotFound",
                    f'filter extensionRef FaultInjection "{route.namespace}/{ref.name}" does not exist',
                )
            )
    return problems


def resolved_refs(route: Route, route_kind: str, world: RouteWorld) -> tuple[bool, str, str]:
    problems: list[tuple[str, str]] = []
    for ref in backend_refs(route):
        ns = ref.namespace or route.namespace
        if not ref.is_service:
            group = ref.group or "core"
            problems.append(
                (
                    "InvalidKind",
                    f'backendRef "{ref.name}": kind {group}/{ref.kind} is not supported (only Service)',
                )
            )
            continue
        if ns != route.namespace and not grant_allows(
            world.reference_grants(ns), route_kind, route.namespace, ref.name
        ):
            problems.append(
                (
                    "RefNotPermitted",
                    f'backendRef Service "{ns}/{ref.name}" is in another namespace and no ReferenceGrant there allows it',
                )
            )
            continue
        if world.service(ns, ref.name) is None:
            problems.append(("BackendNotFound", f'backendRef Service "{ns}/{ref.name}" does not exist'))
    problems.extend(extension_ref_problems(route, world))
    if not problems:
        return True, "ResolvedRefs", "all references resolved"
    return False, problems[0][0], "; ".join(msg for _, msg in problems)


def _parent_key(ref: ParentReference, route_namespace: str) -> tuple[object, ...]:
    return tuple(ref.key(route_namespace))


def route_status(route: Route, world: RouteWorld, now: str | None = None) -> RouteStatus:
    """The route's status with our parent entries brought up to date (others' entries untouched)."""
    now = now or now_rfc3339()
    route_kind = route.kind
    generation = route.metadata.generation
    existing = route.status.parents if route.status is not None else []
    ours_before = {
        _parent_key(p.parent_ref, route.namespace): p
        for p in existing
        if p.controller_name == CONTROLLER_NAME
    }
    others = [p for p in existing if p.controller_name != CONTROLLER_NAME]
    resolved: tuple[bool, str, str] | None = None
    ours: list[RouteParentStatus] = []
    for ref in route.spec.parent_refs or []:
        if not owns_parent(ref, route.namespace, world):
            continue
        if is_service_parent(ref):
            accepted = accepted_for_service(route, ref, world)
        else:
            accepted = accepted_for_gateway(route, route_kind, ref, world)
        if resolved is None:
            resolved = resolved_refs(route, route_kind, world)
        prev = ours_before.get(_parent_key(ref, route.namespace))
        conditions = [c for c in (prev.conditions if prev else []) if c.type in (ACCEPTED, RESOLVED_REFS, DATA_PLANE_ACCEPTED)]
        conditions = set_condition(conditions, _condition(ACCEPTED, *accepted, generation, now))
        conditions = set_condition(conditions, _condition(RESOLVED_REFS, *resolved, generation, now))
        ours.append(RouteParentStatus(parent_ref=ref, controller_name=CONTROLLER_NAME, conditions=conditions))
    room = max(0, MAX_PARENT_STATUSES - len(others))
    return RouteStatus(parents=[*others, *ours[:room]])


def route_status_changed(route: Route, new: RouteStatus) -> bool:
    old = route.status.to_dict() if route.status is not None else {"parents": []}
    return old != new.to_dict()


def gateway_class_status(gc: GatewayClass, now: str | None = None) -> GatewayClassStatus | None:
    """The class's status with Accepted=True, or None if the class is not ours."""
    if gc.spec.controller_name != CONTROLLER_NAME:
        return None
    cond = _condition(
        ACCEPTED,
        True,
        "Accepted",
        "innermesh runs Gateways of this class",
        gc.metadata.generation,
        now or now_rfc3339(),
    )
    return gc.status.model_copy(update={"conditions": set_condition(list(gc.status.conditions), cond)})
