"""discovery.k8s.io/v1: EndpointSlice, the addresses behind a Service.

Fields, defaults and rules follow Kubernetes' ``discovery/v1`` types and
``pkg/apis/discovery/validation``: every address is valid for the slice's ``addressType`` (which is
immutable), at most 1000 endpoints per slice, at most 100 addresses per endpoint (consumers use only
the first), unique port names, ``protocol`` defaulting to TCP, zone and node hints.

Where innermesh differs, on purpose:

- Loopback addresses are allowed: without root, innermesh runs workloads on loopback (127.0.0.0/8),
  and their EndpointSlices must be able to say so. Unspecified, link-local and link-local multicast
  addresses are refused as Kubernetes refuses them.
- IP addresses must be in canonical form, as the v1 type documents (Kubernetes itself still accepts
  other spellings with a warning, for objects stored by older releases).
- A port number is 1..65535 (Kubernetes only bounds it to int32); the data planes can use nothing else.
- The ``kubernetes.io/service-name`` label, which ties a slice to its Service, must hold a valid
  Service name (a DNS-1035 label), so that a typo is refused rather than silently orphaning the slice.
- At most 20000 ports per slice: the v1 type's comment still says 100, but Kubernetes' validation
  has allowed 20000 since kubernetes/kubernetes#99795, because Services have no port limit and the
  EndpointSlice controller puts all of a Service's ports in each slice.

``deprecatedTopology`` is accepted and dropped, as Kubernetes' v1 API ignores writes to it.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field

from innermesh.api import core, names
from innermesh.api.addresses import endpoint_ip_problems, parse_ip
from innermesh.api.fielderrors import (
    ErrorList,
    FieldPath,
    duplicate,
    invalid,
    required,
    too_many,
)
from innermesh.api.meta import Resource, check_immutable
from innermesh.api.model import Model
from innermesh.api.registry import Column, Kind

GROUP = "discovery.k8s.io"
VERSION = "v1"

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"

MAX_ENDPOINTS = 1000
MAX_ADDRESSES = 100
MAX_PORTS = 20000
MAX_ZONE_HINTS = 8
MAX_NODE_HINTS = 8

# Kubernetes lists supported values sorted, so the orders here give its exact messages.
AddressType = Literal["FQDN", "IPv4", "IPv6"]
Protocol = Literal["SCTP", "TCP", "UDP"]


def _fqdn_problems(value: str) -> tuple[str, str] | None:
    """apimachinery's IsFullyQualifiedDomainName: the offending value and message, or None."""
    name = value[:-1] if value.endswith(".") else value
    problems = names.is_dns1123_subdomain(name)
    if problems:
        return name, ",".join(problems)
    labels = name.split(".")
    if len(labels) < 2:
        return name, "should be a domain with at least two segments separated by dots"
    for label in labels:
        problems = names.is_dns1123_label(label)
        if problems:
            return label, ",".join(problems)
    return None


def _address_problems(address: str, address_type: AddressType) -> list[tuple[str, str]]:
    """(value, message) pairs for one address of a slice of ``address_type``."""
    if address_type == "FQDN":
        if not address:
            return [(address, "")]  # rendered as Required by the caller
        found = _fqdn_problems(address)
        return [found] if found else []
    want = 4 if address_type == "IPv4" else 6
    ip = parse_ip(address)
    if ip is None or ip.version != want or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped):
        return [(address, f"must be a valid {address_type} address")]
    if str(ip) != address:
        return [(address, f'must be in canonical form ("{ip}")')]
    return [(address, msg) for msg in endpoint_ip_problems(address)]


class EndpointConditions(Model):
    """Unset ``ready`` and ``serving`` mean true; unset ``terminating`` means false."""

    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready is not False

    @property
    def is_serving(self) -> bool:
        return self.serving is not False

    @property
    def is_terminating(self) -> bool:
        return self.terminating is True


class ForZone(Model):
    name: str


class ForNode(Model):
    name: str


class EndpointHints(Model):
    """Topology-aware routing: the zones (or nodes) whose clients should use this endpoint."""

    for_zones: list[ForZone] | None = None
    for_nodes: list[ForNode] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        zones = self.for_zones or []
        zpath = path.child("forZones")
        if len(zones) > MAX_ZONE_HINTS:
            errs.add(too_many(zpath, len(zones), MAX_ZONE_HINTS))
        else:
            seen: set[str] = set()
            for i, zone in enumerate(zones):
                npath = zpath.index(i).child("name")
                if zone.name in seen:
                    errs.add(duplicate(npath, zone.name))
                seen.add(zone.name)
                for msg in names.is_label_value(zone.name):
                    errs.add(invalid(npath, zone.name, msg))
        nodes = self.for_nodes or []
        npath_ = path.child("forNodes")
        if len(nodes) > MAX_NODE_HINTS:
            errs.add(too_many(npath_, len(nodes), MAX_NODE_HINTS))
            return
        seen_nodes: set[str] = set()
        for i, node in enumerate(nodes):
            npath = npath_.index(i).child("name")
            if node.name in seen_nodes:
                errs.add(duplicate(npath, node.name))
            seen_nodes.add(node.name)
            for msg in names.is_dns1123_subdomain(node.name):
                errs.add(invalid(npath, node.name, msg))


class ObjectReference(core.ObjectReference):
    """core/v1 ObjectReference with every upstream field (``targetRef`` of controller-made slices may
    carry ``resourceVersion``)."""

    resource_version: str | None = None
    field_path: str | None = None


class Endpoint(Model):
    """One backend: its addresses (only the first is used), conditions, and where it runs."""

    addresses: list[str] = Field(default_factory=list)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: str | None = None
    target_ref: ObjectReference | None = None
    deprecated_topology: dict[str, str] | None = None
    node_name: str | None = None
    zone: str | None = None
    hints: EndpointHints | None = None

    def model_post_init(self, context: object, /) -> None:
        # Not writable through discovery/v1: Kubernetes silently drops it, so do we.
        self.deprecated_topology = None

    @property
    def address(self) -> str:
        """The address consumers use (the first; the others have no defined meaning)."""
        return self.addresses[0]

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.hostname is not None:
            for msg in names.is_dns1123_label(self.hostname):
                errs.add(invalid(path.child("hostname"), self.hostname, msg))
        if self.node_name is not None:
            for msg in names.is_dns1123_subdomain(self.node_name):
                errs.add(invalid(path.child("nodeName"), self.node_name, msg))


class EndpointPort(Model):
    """A port every endpoint of the slice serves. A missing ``port`` means "all ports"."""

    name: str = ""
    protocol: Protocol = "TCP"
    port: int | None = None
    app_protocol: str | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.name:
            for msg in names.is_dns1123_label(self.name):
                errs.add(invalid(path.child("name"), self.name, msg))
        if self.port is not None:
            for msg in names.is_port_number(self.port):
                errs.add(invalid(path.child("port"), self.port, msg))
        if self.app_protocol is not None:
            for msg in names.is_qualified_name(self.app_protocol):
                errs.add(invalid(path.child("appProtocol"), self.app_protocol, msg))


class EndpointSlice(Resource):
    api_version: Literal["discovery.k8s.io/v1"] = "discovery.k8s.io/v1"
    kind: Literal["EndpointSlice"] = "EndpointSlice"
    address_type: AddressType
    endpoints: list[Endpoint] = Field(default_factory=list)
    ports: list[EndpointPort] | None = None

    @property
    def service_name(self) -> str | None:
        """The Service this slice belongs to (its ``kubernetes.io/service-name`` label)."""
        return (self.metadata.labels or {}).get(SERVICE_NAME_LABEL)

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        service = self.service_name
        if service is not None:
            for msg in names.is_dns1035_label(service):
                errs.add(invalid(path.child("metadata", "labels").key(SERVICE_NAME_LABEL), service, msg))
        self._check_endpoints(path.child("endpoints"), errs)
        self._check_ports(path.child("ports"), errs)

    def _check_endpoints(self, path: FieldPath, errs: ErrorList) -> None:
        if len(self.endpoints) > MAX_ENDPOINTS:
            errs.add(too_many(path, len(self.endpoints), MAX_ENDPOINTS))
            return
        for i, ep in enumerate(self.endpoints):
            apath = path.index(i).child("addresses")
            if not ep.addresses:
                errs.add(required(apath, "must contain at least 1 address"))
            elif len(ep.addresses) > MAX_ADDRESSES:
                errs.add(too_many(apath, len(ep.addresses), MAX_ADDRESSES))
                continue
            for j, address in enumerate(ep.addresses):
                for value, msg in _address_problems(address, self.address_type):
                    if not msg:
                        errs.add(required(apath.index(j)))
                    else:
                        errs.add(invalid(apath.index(j), value, msg))

    def _check_ports(self, path: FieldPath, errs: ErrorList) -> None:
        ports = self.ports or []
        if len(ports) > MAX_PORTS:
            errs.add(too_many(path, len(ports), MAX_PORTS))
            return
        seen: set[str] = set()
        for i, port in enumerate(ports):
            if port.name in seen:
                errs.add(duplicate(path.index(i).child("name"), port.name))
            seen.add(port.name)

    def check_update(self, old: EndpointSlice, errs: ErrorList) -> None:
        check_immutable(self.address_type, old.address_type, FieldPath.root("addressType"), errs)


# ---------------------------------------------------------------------------------------------------
# Table columns, as kubectl prints them


def _list_with_more(items: list[str], total: int, limit: int) -> str:
    text = ",".join(items)
    if total > limit:
        return f"{text} + {total - limit} more..."
    return text or "<unset>"


def format_ports(ports: list[EndpointPort] | None, limit: int = 3) -> str:
    shown = [str(p.port) if p.port is not None else (p.name or "*") for p in (ports or [])[:limit]]
    return _list_with_more(shown, len(ports or []), limit)


def format_endpoints(endpoints: list[Endpoint], limit: int = 3) -> str:
    addresses = [a for ep in endpoints for a in ep.addresses]
    return _list_with_more(addresses[:limit], len(addresses), limit)


KINDS = [
    Kind(
        group=GROUP,
        version=VERSION,
        kind="EndpointSlice",
        plural="endpointslices",
        model=EndpointSlice,
        # In Kubernetes "ep" names the legacy v1 Endpoints, which innermesh does not serve; its
        # successor answers to it here, so `get ep` shows a Service's endpoints as users expect.
        short_names=("ep",),
        strategic_merge=True,
        columns=(
            Column("AddressType", lambda o: o.address_type),
            Column("Ports", lambda o: format_ports(o.ports)),
            Column("Endpoints", lambda o: format_endpoints(o.endpoints)),
        ),
    ),
]
