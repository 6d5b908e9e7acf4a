"""Route attachment and reference resolution: the Gateway API's answer to "did the mesh take my route?".

For every HTTPRoute and GRPCRoute, each parentRef this controller owns gets a ``status.parents[]``
entry with ``controllerName: innermesh.io/gateway-controller``, the parentRef copied, and conditions
carrying the route's generation:

- **Accepted**: True/Accepted; False/NoMatchingParent when the parent Service or Gateway does not
  exist (or no listener / Service port matches the sectionName or port); False/NotAllowedByListeners
  when the matching listeners do not admit the route's kind or namespace; False/NoMatchingListenerHostname
  when no admitting listener's hostname intersects the route's; False/IncompatibleFilters when no rule
  of the route can be implemented (``unsupported_filters``); False/Conflicted for an HTTPRoute whose
  every Service port is taken by a GRPCRoute (below).
- **ResolvedRefs**: True/ResolvedRefs; False with InvalidKind (a backendRef that is not a core
  Service), RefNotPermitted (a backendRef into another namespace that no ReferenceGrant there allows
  from this route's kind and namespace to that Service), BackendNotFound (the Service, or its TCP
  port, does not exist). Rule filters of type ExtensionRef count too: one naming a ``mesh.innermesh.io``
  FaultInjection that does not exist in the route's namespace is BackendNotFound, one naming any other
  group or kind is InvalidKind (upstream: such a filter must not be skipped; the requests it would see
  get a 500 instead). The reason is the first problem, backendRefs in rule order before filters in
  rule order; the message lists them all.
- **PartiallyInvalid** (only while some rules can be implemented and some cannot): True/UnsupportedValue,
  the message naming the rules left out and why. A rule left out keeps its matches and answers them
  with 500, so that its requests neither skip a filter nor fall through to another rule.

What a route can be implemented with is decided here once, for the status and for the translator
alike: ``rule_problems`` (filters the mesh does not implement, ExtensionRefs that do not resolve: the
rule answers 500), ``backend_refs`` (what a route sends requests to) and ``resolve_backend``.

HTTPRoute and GRPCRoute on one Service port (GEP-1426, "Route types"): only one kind of route may
apply to a Service port, and GRPCRoute wins; an HTTPRoute that loses gets Accepted=False/Conflicted
and is not programmed there. Routes conflict with routes of their own namespace only: a consumer
GRPCRoute in namespace A changes nothing for the producer's HTTPRoute that every other namespace uses.
A parentRef that selects several ports loses only the ports a GRPCRoute takes; its Accepted message
names them.

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
from typing import Literal, Protocol

from innermesh.api import mesh
from innermesh.api.core import Namespace, Service, ServicePort
from innermesh.api.gateway import (
    GROUP,
    BackendObjectReference,
    Gateway,
    GatewayClass,
    GatewayClassStatus,
    GRPCBackendRef,
    GRPCRoute,
    GRPCRouteFilter,
    GRPCRouteRule,
    HTTPBackendRef,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteRule,
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
PARTIALLY_INVALID = "PartiallyInvalid"
CONFLICTED = "Conflicted"
INCOMPATIBLE_FILTERS = "IncompatibleFilters"
# Written by the xDS server when a data plane rejects (or later accepts) the route's configuration
# (xds/nackstatus.py); kept here as it is.
DATA_PLANE_ACCEPTED = "innermesh.io/DataPlaneAccepted"
MAX_PARENT_STATUSES = 32

Route = HTTPRoute | GRPCRoute
Rule = HTTPRouteRule | GRPCRouteRule
RouteKey = tuple[str, str, str]  # (kind, namespace, name)
Verdict = tuple[bool, str, str]  # a condition's (status, reason, message)

# Filters the mesh implements on a rule (HTTPRoute's CORS is the one it does not) and on a backendRef.
_RULE_FILTERS = frozenset(
    {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite"}
    | {"ExtensionRef"}
)
_BACKEND_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier")

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

    def grpc_routes_for_service(self, namespace: str, name: str) -> Sequence[GRPCRoute]:
        """The GRPCRoutes (of any namespace) with a parentRef naming Service ``namespace/name``."""
        ...


@dataclass
class StaticWorld:
    """A RouteWorld from plain lists (tests, and anything that has the objects at hand)."""

    services: list[Service] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    gateway_classes: list[GatewayClass] = field(default_factory=list)
    grants: list[ReferenceGrant] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    fault_injections: list[mesh.FaultInjection] = field(default_factory=list)
    grpc_routes: list[GRPCRoute] = field(default_factory=list)

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

    def grpc_routes_for_service(self, namespace: str, name: str) -> Sequence[GRPCRoute]:
        return [r for r in self.grpc_routes if names_service(r, namespace, name)]


def names_service(route: Route, namespace: str, name: str) -> bool:
    """Whether a parentRef of ``route`` names Service ``namespace/name``."""
    return any(
        ref.is_service and (ref.namespace or route.namespace, ref.name) == (namespace, name)
        for ref in route.spec.parent_refs or []
    )


# ---------------------------------------------------------------------------------------------------
# Pure decisions


def is_gateway_parent(ref: ParentReference) -> bool:
    return ref.group == GROUP and ref.kind == "Gateway"


def owns_parent(ref: ParentReference, route_namespace: str, world: RouteWorld) -> bool:
    """Whether this controller writes the status for ``ref``."""
    if ref.is_service:
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


# -- what a rule can be implemented with ----------------------------------------------------------------


def is_fault_injection(ref: LocalObjectReference) -> bool:
    return ref.group == mesh.GROUP and ref.kind == "FaultInjection"


def unsupported_filters(rule: Rule) -> list[str]:
    """What the mesh does not implement in ``rule``, one message per filter: a rule filter of a type
    it lacks (HTTPRoute's CORS), and on a backendRef that receives requests (weight above 0) any
    filter but the header modifiers. Decided from the rule alone, so the translator's scope can use it
    without the world."""
    out: list[str] = []
    filters: list[HTTPRouteFilter | GRPCRouteFilter] = list(rule.filters or [])
    for i, f in enumerate(filters):
        if f.type not in _RULE_FILTERS:
            out.append(f"filters[{i}]: {f.type} is not supported")
    backends: list[HTTPBackendRef | GRPCBackendRef] = list(rule.backend_refs or [])
    for j, b in enumerate(backends):
        if b.weight == 0:
            continue  # receives nothing, so its filters never run
        backend_filters: list[HTTPRouteFilter | GRPCRouteFilter] = list(b.filters or [])
        for i, f in enumerate(backend_filters):
            if f.type not in _BACKEND_FILTERS:
                out.append(
                    f"backendRefs[{j}].filters[{i}]: {f.type} is not supported on a backendRef "
                    f"(only {' and '.join(_BACKEND_FILTERS)})"
                )
    return out


def rule_extension_refs(rule: Rule) -> list[LocalObjectReference]:
    filters: list[HTTPRouteFilter | GRPCRouteFilter] = list(rule.filters or [])
    return [f.extension_ref for f in filters if f.type == "ExtensionRef" and f.extension_ref is not None]


def extension_refs(route: Route) -> list[LocalObjectReference]:
    """Every rule ExtensionRef filter of the route, in rule order (one on a backendRef is an
    unsupported filter, see ``unsupported_filters``)."""
    rules: list[Rule] = list(route.spec.rules or [])
    return [ref for rule in rules for ref in rule_extension_refs(rule)]


def extension_ref_problem(
    ref: LocalObjectReference, route_namespace: str, world: RouteWorld
) -> tuple[str, str] | None:
    """(reason, message) when an ExtensionRef filter does not resolve to a FaultInjection."""
    if not is_fault_injection(ref):
        group = ref.group or "core"
        supported = f"{mesh.GROUP}/FaultInjection"
        return (
            "InvalidKind",
            f'filter extensionRef "{ref.name}": kind {group}/{ref.kind} is not supported (only {supported})',
        )
    if world.fault_injection(route_namespace, ref.name) is None:
        return (
            "BackendNotFound",
            f'filter extensionRef FaultInjection "{route_namespace}/{ref.name}" does not exist',
        )
    return None


@dataclass(frozen=True)
class RuleProblem:
    """Why a rule cannot be implemented as written: a filter the mesh lacks (``unsupported``: the rule
    is invalid, PartiallyInvalid or Accepted says so) or an ExtensionRef that does not resolve
    (``unresolved``: ResolvedRefs says so). Either way the rule answers its requests with 500."""

    kind: Literal["unsupported", "unresolved"]
    reason: str
    message: str


def rule_problems(route: Route, index: int, world: RouteWorld) -> list[RuleProblem]:
    """The problems of rule ``index`` of ``route``; the translator answers a rule that has any with 500."""
    rule = (route.spec.rules or [])[index]
    out = [RuleProblem("unsupported", "UnsupportedValue", m) for m in unsupported_filters(rule)]
    for ref in rule_extension_refs(rule):
        problem = extension_ref_problem(ref, route.namespace, world)
        if problem is not None:
            out.append(RuleProblem("unresolved", *problem))
    return out


def invalid_rules(route: Route) -> list[tuple[int, list[str]]]:
    """(index, messages) of each rule with filters the mesh does not implement."""
    rules: list[Rule] = list(route.spec.rules or [])
    return [(i, msgs) for i, rule in enumerate(rules) if (msgs := unsupported_filters(rule))]


def _fully_invalid(route: Route) -> Verdict | None:
    """Accepted=False/IncompatibleFilters when no rule of the route can be implemented."""
    rules = route.spec.rules or []
    invalid = invalid_rules(route)
    if not rules or len(invalid) < len(rules):
        return None
    what = "; ".join(f"rules[{i}].{m}" for i, msgs in invalid for m in msgs)
    return False, INCOMPATIBLE_FILTERS, f"no rule can be implemented: {what}"


def _partially_invalid(route: Route) -> str | None:
    """The PartiallyInvalid message when some rules, not all, cannot be implemented."""
    invalid = invalid_rules(route)
    if not invalid or len(invalid) == len(route.spec.rules or []):
        return None
    numbers = ", ".join(str(i) for i, _ in invalid)
    what = "; ".join(f"rules[{i}].{m}" for i, msgs in invalid for m in msgs)
    return f"Dropped Rule {numbers}: the requests matching it get 500 ({what})"


# -- what a route sends requests to -------------------------------------------------------------------


def backend_refs(route: Route) -> list[BackendObjectReference]:
    """Every backend the route sends requests to, in rule order: each rule's request mirrors, then its
    backendRefs with a weight above 0; a rule with filters the mesh does not implement sends nowhere
    (it answers 500). Route status resolves exactly these; the translator's scope and clusters are
    these, resolved."""
    refs: list[BackendObjectReference] = []
    rules: list[Rule] = list(route.spec.rules or [])
    for rule in rules:
        if unsupported_filters(rule):
            continue
        filters: list[HTTPRouteFilter | GRPCRouteFilter] = list(rule.filters or [])
        refs += [f.request_mirror.backend_ref for f in filters if f.request_mirror is not None]
        refs += [b for b in rule.backend_refs or [] if b.weight > 0]
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


def tcp_port(svc: Service, number: int) -> ServicePort | None:
    return next((p for p in svc.spec.ports or [] if p.port == number and p.protocol == "TCP"), None)


@dataclass(frozen=True)
class Unresolved:
    """Why a reference does not resolve, in upstream's ResolvedRefs reasons."""

    reason: str
    message: str


def resolve_backend(
    route: Route, ref: BackendObjectReference, world: RouteWorld
) -> tuple[Service, ServicePort] | Unresolved:
    """The Service port a backendRef names, or why it does not resolve: not a core Service
    (InvalidKind), another namespace without a ReferenceGrant (RefNotPermitted), no such Service or
    TCP port (BackendNotFound)."""
    ns = ref.namespace or route.namespace
    if not ref.is_service:
        group = ref.group or "core"
        return Unresolved(
            "InvalidKind", f'backendRef "{ref.name}": kind {group}/{ref.kind} is not supported (only Service)'
        )
    if ns != route.namespace and not grant_allows(
        world.reference_grants(ns), route.kind, route.namespace, ref.name
    ):
        return Unresolved(
            "RefNotPermitted",
            f'backendRef Service "{ns}/{ref.name}" is in another namespace and no ReferenceGrant there allows it',
        )
    svc = world.service(ns, ref.name)
    if svc is None:
        return Unresolved("BackendNotFound", f'backendRef Service "{ns}/{ref.name}" does not exist')
    port = tcp_port(svc, ref.port) if ref.port is not None else None
    if port is None:
        return Unresolved(
            "BackendNotFound", f'backendRef Service "{ns}/{ref.name}" has no TCP port {ref.port}'
        )
    return svc, port


def resolved_refs(route: Route, world: RouteWorld) -> Verdict:
    problems: list[tuple[str, str]] = []
    for ref in backend_refs(route):
        resolved = resolve_backend(route, ref, world)
        if isinstance(resolved, Unresolved):
            problems.append((resolved.reason, resolved.message))
    rules: list[Rule] = list(route.spec.rules or [])
    for i, rule in enumerate(rules):
        if not unsupported_filters(rule):
            problems += [
                (p.reason, p.message) for p in rule_problems(route, i, world) if p.kind == "unresolved"
            ]
    if not problems:
        return True, "ResolvedRefs", "all references resolved"
    return False, problems[0][0], "; ".join(msg for _, msg in problems)


# -- Service parents ----------------------------------------------------------------------------------


def selected_ports(ref: ParentReference, svc: Service) -> list[ServicePort]:
    """The TCP ports of ``svc`` a parentRef applies to: its port, its sectionName's, or all."""
    return [
        p
        for p in svc.spec.ports or []
        if p.protocol == "TCP"
        and (ref.port is None or p.port == ref.port)
        and (ref.section_name is None or p.name == ref.section_name)
    ]


@dataclass(frozen=True)
class ServiceAttachment:
    """A route's attachment through one Service parentRef: the Accepted condition, and the Service
    ports it applies to (empty unless accepted)."""

    accepted: bool
    reason: str
    message: str
    ports: frozenset[int] = frozenset()

    @property
    def verdict(self) -> Verdict:
        return self.accepted, self.reason, self.message


def _grpc_ports(route_namespace: str, svc: Service, world: RouteWorld) -> dict[int, GRPCRoute]:
    """The ports of ``svc`` that a GRPCRoute of ``route_namespace`` applies to, with the first such
    route by name."""
    out: dict[int, GRPCRoute] = {}
    candidates = world.grpc_routes_for_service(svc.namespace, svc.name)
    for grpc in sorted((r for r in candidates if r.namespace == route_namespace), key=lambda r: r.name):
        for ref in grpc.spec.parent_refs or []:
            if ref.is_service and (ref.namespace or grpc.namespace, ref.name) == (svc.namespace, svc.name):
                for port in service_attachment(grpc, ref, world).ports:
                    out.setdefault(port, grpc)
    return out


def service_attachment(route: Route, ref: ParentReference, world: RouteWorld) -> ServiceAttachment:
    """Whether ``route`` attaches to the Service ``ref`` names, and on which ports."""
    ns = ref.namespace or route.namespace
    svc = world.service(ns, ref.name)
    if svc is None:
        return ServiceAttachment(False, "NoMatchingParent", f'Service "{ns}/{ref.name}" does not exist')
    ports = svc.spec.ports or []
    if ref.port is not None and not any(p.port == ref.port for p in ports):
        return ServiceAttachment(
            False, "NoMatchingParent", f'Service "{ns}/{ref.name}" has no port {ref.port}'
        )
    if ref.section_name is not None and not any(p.name == ref.section_name for p in ports):
        return ServiceAttachment(
            False, "NoMatchingParent", f'Service "{ns}/{ref.name}" has no port named "{ref.section_name}"'
        )
    invalid = _fully_invalid(route)
    if invalid is not None:
        return ServiceAttachment(*invalid)
    selected = {p.port for p in selected_ports(ref, svc)}
    taken = _grpc_ports(route.namespace, svc, world) if isinstance(route, HTTPRoute) else {}
    lost = sorted(p for p in selected if p in taken)
    lost_text = ", ".join(f'port {p} to GRPCRoute "{route.namespace}/{taken[p].name}"' for p in lost)
    if lost and len(lost) == len(selected):
        return ServiceAttachment(
            False,
            CONFLICTED,
            f'Service "{ns}/{ref.name}": a GRPCRoute takes every port this route would apply to '
            f"({lost_text}); an HTTPRoute and a GRPCRoute may not share a Service port, and GRPCRoute wins",
        )
    message = f'accepted for Service "{ns}/{ref.name}"'
    if lost:
        message += f"; not on the ports a GRPCRoute takes ({lost_text})"
    return ServiceAttachment(True, "Accepted", message, frozenset(selected - set(lost)))


# -- the status ---------------------------------------------------------------------------------------


def _parent_key(ref: ParentReference, route_namespace: str) -> tuple[object, ...]:
    return tuple(ref.key(route_namespace))


_OWN_CONDITIONS = (ACCEPTED, RESOLVED_REFS, PARTIALLY_INVALID, DATA_PLANE_ACCEPTED)


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
    resolved: Verdict | None = None
    partially = _partially_invalid(route)
    ours: list[RouteParentStatus] = []
    for ref in route.spec.parent_refs or []:
        if not owns_parent(ref, route.namespace, world):
            continue
        accepted: Verdict
        if ref.is_service:
            accepted = service_attachment(route, ref, world).verdict
        else:
            accepted = accepted_for_gateway(route, route_kind, ref, world)
            if accepted[0]:
                accepted = _fully_invalid(route) or accepted
        if resolved is None:
            resolved = resolved_refs(route, world)
        prev = ours_before.get(_parent_key(ref, route.namespace))
        conditions = [c for c in (prev.conditions if prev else []) if c.type in _OWN_CONDITIONS]
        conditions = set_condition(conditions, _condition(ACCEPTED, *accepted, generation, now))
        conditions = set_condition(conditions, _condition(RESOLVED_REFS, *resolved, generation, now))
        if partially is not None and accepted[0]:
            cond = _condition(PARTIALLY_INVALID, True, "UnsupportedValue", partially, generation, now)
            conditions = set_condition(conditions, cond)
        else:
            conditions = [c for c in conditions if c.type != PARTIALLY_INVALID]
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
