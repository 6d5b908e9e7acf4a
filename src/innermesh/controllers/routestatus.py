"""Route status: the Gateway API's answer to "did the mesh take my route?".

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
  The reason is the first problem in rule order; the message lists them all.

Owned parentRefs: Services always (GAMMA, the mesh case, uses the same status field); Gateways whose
GatewayClass names our controller (and Gateways that do not exist, so the route says why it is not
attached). Entries of other controllers are left as they are; ours for parents no longer referenced
are removed; conditions keep their lastTransitionTime while their status holds (``set_condition``);
nothing is written when nothing changed. GatewayClasses with our controllerName get Accepted=True.

``route_status`` and ``gateway_class_status`` are pure; ``RouteStatusController`` feeds them from the
informers and writes the status subresource.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from innermesh.api import status as errors
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
    ParentReference,
    ReferenceGrant,
    RouteParentStatus,
    RouteStatus,
)
from innermesh.api.meta import Condition, now_rfc3339, set_condition
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.client.informer import Informer
from innermesh.controllers.runtime import DONE, Controller, Result

log = logging.getLogger(__name__)

CONTROLLER_NAME = "innermesh.io/gateway-controller"

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
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


@dataclass
class StaticWorld:
    """A RouteWorld from plain lists (tests, and anything that has the objects at hand)."""

    services: list[Service] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    gateway_classes: list[GatewayClass] = field(default_factory=list)
    grants: list[ReferenceGrant] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)

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
        conditions = [c for c in (prev.conditions if prev else []) if c.type in (ACCEPTED, RESOLVED_REFS)]
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


# ---------------------------------------------------------------------------------------------------
# The controller


class _InformerWorld:
    def __init__(
        self,
        services: Informer[Service],
        gateways: Informer[Gateway],
        classes: Informer[GatewayClass],
        grants: Informer[ReferenceGrant],
        namespaces: Informer[Namespace],
    ) -> None:
        self._services = services
        self._gateways = gateways
        self._classes = classes
        self._grants = grants
        self._namespaces = namespaces

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get(namespace, name)

    def gateway(self, namespace: str, name: str) -> Gateway | None:
        return self._gateways.get(namespace, name)

    def gateway_class(self, name: str) -> GatewayClass | None:
        return self._classes.get(None, name)

    def reference_grants(self, namespace: str) -> Sequence[ReferenceGrant]:
        return self._grants.list(namespace)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        ns = self._namespaces.get(None, namespace)
        return (ns.metadata.labels or {}) if ns is not None else {}


class RouteStatusController:
    """Route status (keys: (kind, namespace, name)) and GatewayClass status (keys: class names)."""

    def __init__(
        self,
        client: Client,
        route_kinds: Mapping[str, Kind],
        gateway_class_kind: Kind,
        routes: Mapping[str, Informer[Any]],
        services: Informer[Service],
        gateways: Informer[Gateway],
        classes: Informer[GatewayClass],
        grants: Informer[ReferenceGrant],
        namespaces: Informer[Namespace],
        *,
        workers: int = 2,
    ) -> None:
        self.client = client
        self.route_kinds = dict(route_kinds)
        self.class_kind = gateway_class_kind
        self.routes = dict(routes)
        self.gateways = gateways
        self.classes = classes
        self.world = _InformerWorld(services, gateways, classes, grants, namespaces)
        self.controller: Controller[RouteKey] = Controller(
            "routestatus", self.reconcile, workers=workers, resync=self._all_routes
        )
        self.class_controller: Controller[str] = Controller(
            "gatewayclass-status", self.reconcile_class, resync=lambda: [c.name for c in classes.list()]
        )
        for kind_name, informer in self.routes.items():
            self.controller.watch(informer, self._route_key(kind_name))
        self.controller.watch(services, lambda s: self._routes_where(lambda r: self._mentions_service(r, s)))
        self.controller.watch(
            gateways, lambda g: self._routes_where(lambda r: self._mentions_gateway(r, g.namespace, g.name))
        )
        self.controller.watch(classes, self._routes_of_class)
        self.controller.watch(
            grants, lambda g: self._routes_where(lambda r: self._references_namespace(r, g.namespace))
        )
        self.controller.watch(namespaces, lambda n: self._routes_where(lambda r: r.namespace == n.name))
        self.class_controller.watch(classes, lambda c: [c.name])
        self.writes = 0

    # -- mapping events to routes ---------------------------------------------------------------------

    @staticmethod
    def _route_key(kind_name: str) -> Callable[[Route], list[RouteKey]]:
        return lambda r: [(kind_name, r.namespace, r.name)]

    def _all_routes(self) -> list[RouteKey]:
        return sorted((k, r.namespace, r.name) for k, inf in self.routes.items() for r in inf.list())

    def _routes_where(self, pred: Callable[[Route], bool]) -> list[RouteKey]:
        return [(k, r.namespace, r.name) for k, inf in self.routes.items() for r in inf.list() if pred(r)]

    @staticmethod
    def _mentions_service(route: Route, svc: Service) -> bool:
        for ref in route.spec.parent_refs or []:
            if is_service_parent(ref) and (ref.namespace or route.namespace, ref.name) == (
                svc.namespace,
                svc.name,
            ):
                return True
        return any(
            b.is_service and (b.namespace or route.namespace, b.name) == (svc.namespace, svc.name)
            for b in backend_refs(route)
        )

    @staticmethod
    def _mentions_gateway(route: Route, namespace: str, name: str) -> bool:
        return any(
            is_gateway_parent(ref) and (ref.namespace or route.namespace, ref.name) == (namespace, name)
            for ref in route.spec.parent_refs or []
        )

    @staticmethod
    def _references_namespace(route: Route, namespace: str) -> bool:
        return any((b.namespace or route.namespace) == namespace for b in backend_refs(route))

    def _routes_of_class(self, gc: GatewayClass) -> list[RouteKey]:
        gateways = [
            (g.namespace, g.name) for g in self.gateways.list() if g.spec.gateway_class_name == gc.name
        ]
        return self._routes_where(lambda r: any(self._mentions_gateway(r, ns, n) for ns, n in gateways))

    # -- reconciling ----------------------------------------------------------------------------------

    async def reconcile(self, key: RouteKey) -> Result:
        kind_name, namespace, name = key
        informer = self.routes.get(kind_name)
        if informer is None:
            return DONE
        route = informer.get(namespace, name)
        if route is None:
            return DONE
        new = route_status(route, self.world)
        if not route_status_changed(route, new):
            return DONE
        body = {**route.to_dict(), "status": new.to_dict()}
        try:
            await self.client.update(self.route_kinds[kind_name], namespace, name, body, subresource="status")
        except errors.ApiError as e:
            if e.code == 404:
                return DONE
            raise
        self.writes += 1
        return DONE

    async def reconcile_class(self, name: str) -> Result:
        gc = self.classes.get(None, name)
        if gc is None:
            return DONE
        new = gateway_class_status(gc)
        if new is None or new.to_dict() == gc.status.to_dict():
            return DONE
        body = {**gc.to_dict(), "status": new.to_dict()}
        try:
            await self.client.update(self.class_kind, None, name, body, subresource="status")
        except errors.ApiError as e:
            if e.code == 404:
                return DONE
            raise
        self.writes += 1
        return DONE
