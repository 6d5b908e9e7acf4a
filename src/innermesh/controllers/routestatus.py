"""The route status controller: writes what ``api/attachment.py`` decides into route status.

For every HTTPRoute and GRPCRoute it writes the ``status.parents[]`` entries our controller owns
(``route_status``), and Accepted=True on GatewayClasses with our controllerName
(``gateway_class_status``), from informer caches; nothing is written when nothing changed.

A route's status depends on more than the route: its Services, Gateways, GatewayClasses,
ReferenceGrants, namespaces and FaultInjections, and, for an HTTPRoute, the GRPCRoutes of its namespace
on the same Service (a GRPCRoute takes the Service ports it applies to, GEP-1426). A change to any of
them re-queues the routes it can affect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from innermesh.api import mesh
from innermesh.api import status as errors
from innermesh.api.attachment import (
    Route,
    RouteKey,
    backend_refs,
    extension_refs,
    gateway_class_status,
    is_fault_injection,
    is_gateway_parent,
    names_service,
    route_status,
    route_status_changed,
)
from innermesh.api.core import Namespace, Service
from innermesh.api.gateway import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    ReferenceGrant,
)
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.client.informer import Informer
from innermesh.controllers.runtime import DONE, Controller, Result

log = logging.getLogger(__name__)

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
        fault_injections: Informer[mesh.FaultInjection] | None,
        grpc_routes: Informer[GRPCRoute] | None,
    ) -> None:
        self._services = services
        self._gateways = gateways
        self._classes = classes
        self._grants = grants
        self._namespaces = namespaces
        self._fault_injections = fault_injections
        self._grpc_routes = grpc_routes

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

    def fault_injection(self, namespace: str, name: str) -> mesh.FaultInjection | None:
        if self._fault_injections is None:
            return None
        return self._fault_injections.get(namespace, name)

    def grpc_routes_for_service(self, namespace: str, name: str) -> Sequence[GRPCRoute]:
        if self._grpc_routes is None:
            return []
        return [r for r in self._grpc_routes.list() if names_service(r, namespace, name)]


class RouteStatusController:
    """Route status (keys: (kind, namespace, name)) and GatewayClass status (keys: class names).

    ``fault_injections`` feeds the ExtensionRef check; without it no FaultInjection can be found, so
    every route with a FaultInjection filter reports BackendNotFound."""

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
        fault_injections: Informer[mesh.FaultInjection] | None = None,
        workers: int = 2,
    ) -> None:
        self.client = client
        self.route_kinds = dict(route_kinds)
        self.class_kind = gateway_class_kind
        self.routes = dict(routes)
        self.gateways = gateways
        self.classes = classes
        grpc_routes: Informer[GRPCRoute] | None = self.routes.get("GRPCRoute")
        self.world = _InformerWorld(
            services, gateways, classes, grants, namespaces, fault_injections, grpc_routes
        )
        self.controller: Controller[RouteKey] = Controller(
            "routestatus", self.reconcile, workers=workers, resync=self._all_routes
        )
        self.class_controller: Controller[str] = Controller(
            "gatewayclass-status", self.reconcile_class, resync=lambda: [c.name for c in classes.list()]
        )
        for kind_name, informer in self.routes.items():
            self.controller.watch(informer, self._route_key(kind_name))
        if grpc_routes is not None:
            self.controller.watch(grpc_routes, self._http_routes_sharing_a_service)
        self.controller.watch(services, lambda s: self._routes_where(lambda r: self._mentions_service(r, s)))
        self.controller.watch(
            gateways, lambda g: self._routes_where(lambda r: self._mentions_gateway(r, g.namespace, g.name))
        )
        self.controller.watch(classes, self._routes_of_class)
        self.controller.watch(
            grants, lambda g: self._routes_where(lambda r: self._references_namespace(r, g.namespace))
        )
        self.controller.watch(namespaces, lambda n: self._routes_where(lambda r: r.namespace == n.name))
        if fault_injections is not None:
            self.controller.watch(
                fault_injections, lambda f: self._routes_where(lambda r: self._mentions_fault(r, f))
            )
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

    def _http_routes_sharing_a_service(self, grpc: GRPCRoute) -> list[RouteKey]:
        """The HTTPRoutes of the GRPCRoute's namespace with a Service parent it names too: the ports
        it takes (or gives back) change their Accepted condition."""
        parents = {
            (ref.namespace or grpc.namespace, ref.name)
            for ref in grpc.spec.parent_refs or []
            if ref.is_service
        }
        informer = self.routes.get("HTTPRoute")
        if informer is None or not parents:
            return []
        return [
            ("HTTPRoute", r.namespace, r.name)
            for r in informer.list(grpc.namespace)
            if any(names_service(r, ns, name) for ns, name in parents)
        ]

    @staticmethod
    def _mentions_service(route: Route, svc: Service) -> bool:
        if names_service(route, svc.namespace, svc.name):
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
    def _mentions_fault(route: Route, fault: mesh.FaultInjection) -> bool:
        return route.namespace == fault.namespace and any(
            is_fault_injection(ref) and ref.name == fault.name for ref in extension_refs(route)
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
