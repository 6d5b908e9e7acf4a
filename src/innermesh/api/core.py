"""The core group, v1: Namespace, Service, ServiceAccount, Secret.

Fields and rules follow Kubernetes' ``core/v1`` types and ``ValidateService`` and friends. What
innermesh does not implement is refused by name rather than silently ignored: Service types NodePort
and LoadBalancer (the mesh gives every Service a virtual IP, DNS name and client-side balancing; nodes'
external ports are not part of it), and the fields only those types use.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Annotated, Literal

from pydantic import Field

from innermesh.api import addresses, names
from innermesh.api.fielderrors import (
    ErrorList,
    FieldPath,
    duplicate,
    forbidden,
    invalid,
    required,
    too_long,
)
from innermesh.api.meta import Resource, check_labels
from innermesh.api.model import IntOrString, MergeKey, MergeSet, Model, max_items, rule
from innermesh.api.registry import Column, Kind

Protocol = Literal["TCP", "UDP", "SCTP"]
IPFamily = Literal["IPv4", "IPv6"]

# ---------------------------------------------------------------------------------------------------
# Namespace


class NamespaceSpec(Model):
    finalizers: Annotated[list[str], MergeSet()] | None = None


class NamespaceStatus(Model):
    phase: Literal["Active", "Terminating"] | None = None


class Namespace(Resource):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)
    status: NamespaceStatus = Field(default_factory=lambda: NamespaceStatus(phase="Active"))


# ---------------------------------------------------------------------------------------------------
# Service


def _check_app_protocol(value: str) -> list[str]:
    return names.is_qualified_name(value)


class ServicePort(Model):
    name: Annotated[str, rule(names.is_dns1123_label)] | None = None
    protocol: Protocol = "TCP"
    app_protocol: Annotated[str, rule(_check_app_protocol)] | None = None
    port: Annotated[int, rule(names.is_port_number)]
    target_port: IntOrString | None = None
    node_port: int | None = None

    def model_post_init(self, context: object, /) -> None:
        # Kubernetes defaults targetPort to the port.
        if self.target_port is None:
            self.target_port = self.port

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        tp = self.target_port
        if isinstance(tp, int):
            for msg in names.is_port_number(tp):
                errs.add(invalid(path.child("targetPort"), tp, msg))
        elif isinstance(tp, str):
            for msg in names.is_port_name(tp):
                errs.add(invalid(path.child("targetPort"), tp, msg))
        if self.node_port is not None:
            errs.add(
                forbidden(
                    path.child("nodePort"), "may not be used when `type` is 'ClusterIP' or 'ExternalName'"
                )
            )


class ClientIPConfig(Model):
    timeout_seconds: int = 10800

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if not 0 < self.timeout_seconds <= 86400:
            errs.add(
                invalid(
                    path.child("timeoutSeconds"),
                    self.timeout_seconds,
                    "must be greater than 0 and less than 86400",
                )
            )


class SessionAffinityConfig(Model):
    client_ip: ClientIPConfig | None = Field(default=None, alias="clientIP")


ServiceType = Literal["ClusterIP", "ExternalName"]


class ServiceSpec(Model):
    type: ServiceType = "ClusterIP"
    ports: Annotated[list[ServicePort], MergeKey("port")] | None = None
    selector: dict[str, str] | None = None
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: Annotated[list[str], max_items(2)] | None = Field(default=None, alias="clusterIPs")
    ip_families: list[IPFamily] | None = None
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = None
    external_name: str | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    publish_not_ready_addresses: bool | None = None
    internal_traffic_policy: Literal["Cluster", "Local"] | None = None
    # Topology-aware routing hint (Kubernetes 1.31+): prefer endpoints in the client's zone.
    traffic_distribution: Literal["PreferClose", "PreferSameZone", "PreferSameNode"] | None = None

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    def model_post_init(self, context: object, /) -> None:
        if self.type == "ClusterIP" and self.internal_traffic_policy is None:
            self.internal_traffic_policy = "Cluster"
        if self.session_affinity == "ClientIP" and self.session_affinity_config is None:
            self.session_affinity_config = SessionAffinityConfig(client_ip=ClientIPConfig())
        # clusterIP and clusterIPs say the same thing; fill whichever is missing from the other.
        if self.cluster_ips and not self.cluster_ip:
            self.cluster_ip = self.cluster_ips[0]
        elif self.cluster_ip and not self.cluster_ips:
            self.cluster_ips = [self.cluster_ip]

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        ports = self.ports or []
        if self.type == "ExternalName":
            self._check_external_name(path, errs)
        elif not ports and not self.headless:
            errs.add(required(path.child("ports")))
        self._check_ports(ports, path.child("ports"), errs)
        if self.selector:
            check_labels(self.selector, path.child("selector"), errs)
        self._check_cluster_ips(path, errs)
        if self.session_affinity_config is not None and self.session_affinity != "ClientIP":
            errs.add(
                forbidden(
                    path.child("sessionAffinityConfig"), "must not be set when `sessionAffinity` is None"
                )
            )
        if self.ip_families:
            for i, fam in enumerate(self.ip_families[1:], 1):
                if fam == self.ip_families[0]:
                    errs.add(duplicate(path.child("ipFamilies").index(i), fam))
            if len(self.ip_families) > 2:
                errs.add(
                    invalid(
                        path.child("ipFamilies"),
                        self.ip_families,
                        "may specify no more than one IP for each IP family",
                    )
                )
            if self.ip_family_policy == "SingleStack" and len(self.ip_families) > 1:
                errs.add(
                    invalid(
                        path.child("ipFamilies"),
                        self.ip_families,
                        "when ipFamilyPolicy is SingleStack, at most one family may be given",
                    )
                )

    def _check_external_name(self, path: FieldPath, errs: ErrorList) -> None:
        if not self.external_name:
            errs.add(required(path.child("externalName")))
        else:
            for msg in names.is_dns1123_subdomain(self.external_name.rstrip(".")):
                errs.add(invalid(path.child("externalName"), self.external_name, msg))
        if self.cluster_ip:
            errs.add(forbidden(path.child("clusterIP"), "may not be set for ExternalName services"))
        if self.selector:
            errs.add(forbidden(path.child("selector"), "may not be set for ExternalName services"))

    @staticmethod
    def _check_ports(ports: list[ServicePort], path: FieldPath, errs: ErrorList) -> None:
        seen_names: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for i, p in enumerate(ports):
            ppath = path.index(i)
            if len(ports) > 1 and not p.name:
                errs.add(required(ppath.child("name")))
            if p.name:
                if p.name in seen_names:
                    errs.add(duplicate(ppath.child("name"), p.name))
                seen_names.add(p.name)
            if (p.port, p.protocol) in seen_ports:
                errs.add(duplicate(ppath, {"port": p.port, "protocol": p.protocol}))
            seen_ports.add((p.port, p.protocol))

    def _check_cluster_ips(self, path: FieldPath, errs: ErrorList) -> None:
        ips = self.cluster_ips or []
        if self.cluster_ip and ips and ips[0] != self.cluster_ip:
            errs.add(invalid(path.child("clusterIPs"), ips, "first value must match `clusterIP`"))
        families: list[int] = []
        for i, ip in enumerate(ips):
            ipath = path.child("clusterIPs").index(i)
            if ip == "None":
                if len(ips) > 1:
                    errs.add(invalid(ipath, ip, "must be a valid IP address, `None` is only allowed alone"))
                continue
            problems = addresses.ip_problems(ip)
            for msg in problems:
                errs.add(invalid(ipath, ip, msg))
            if not problems:
                families.append(ipaddress.ip_address(ip).version)
        if len(families) == 2 and families[0] == families[1]:
            errs.add(
                invalid(path.child("clusterIPs"), ips, "may specify no more than one IP for each IP family")
            )
        if len(ips) == 2 and self.ip_family_policy in (None, "SingleStack"):
            errs.add(
                invalid(
                    path.child("clusterIPs"),
                    ips,
                    "must be a single IP when `ipFamilyPolicy` is SingleStack (or unset); use PreferDualStack or RequireDualStack",
                )
            )
        if self.ip_families and families:
            want = {"IPv4": 4, "IPv6": 6}
            for i, (fam, ver) in enumerate(zip(self.ip_families, families, strict=False)):
                if want[fam] != ver:
                    errs.add(
                        invalid(
                            path.child("clusterIPs").index(i),
                            ips[i],
                            f"expected an {fam} value as indicated by `ipFamilies[{i}]`",
                        )
                    )


class LoadBalancerStatus(Model):
    ingress: list[dict[str, object]] | None = None


class ServiceStatus(Model):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)
    conditions: list[dict[str, object]] | None = None


class Service(Resource):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus = Field(default_factory=ServiceStatus)

    def check_update(self, old: Service, errs: ErrorList) -> None:
        path = FieldPath.root("spec")
        new_ips, old_ips = self.spec.cluster_ips or [], old.spec.cluster_ips or []
        # Once allocated, a ClusterIP stays with the Service for its life (unless it becomes or stops
        # being ExternalName, which has none), because clients and DNS caches hold on to it. A
        # secondary address may be added (upgrade to dual-stack) or given up (downgrade to
        # SingleStack); the primary never changes.
        if not old_ips or self.spec.type != old.spec.type:
            return
        shared = min(len(new_ips), len(old_ips))
        if not new_ips or new_ips[:shared] != old_ips[:shared]:
            errs.add(invalid(path.child("clusterIPs").index(0), new_ips, "may not change once set"))
        elif len(new_ips) < len(old_ips) and self.spec.ip_family_policy != "SingleStack":
            errs.add(
                invalid(
                    path.child("clusterIPs"),
                    new_ips,
                    "the secondary address may be removed only when `ipFamilyPolicy` is SingleStack",
                )
            )


# ---------------------------------------------------------------------------------------------------
# ServiceAccount and Secret


class ObjectReference(Model):
    name: str | None = None
    namespace: str | None = None
    kind: str | None = None
    api_version: str | None = None
    uid: str | None = None


class ServiceAccount(Resource):
    api_version: Literal["v1"] = "v1"
    kind: Literal["ServiceAccount"] = "ServiceAccount"
    secrets: Annotated[list[ObjectReference], MergeKey("name")] | None = None
    image_pull_secrets: list[dict[str, str]] | None = None
    automount_service_account_token: bool | None = None


SECRET_DATA_MAX = 1024 * 1024


def _secret_key_rules(key: str) -> list[str]:
    import re

    if not re.fullmatch(r"[-._a-zA-Z0-9]+", key) or len(key) > 253:
        return [
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', or 'KEY_NAME', or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
        ]
    return []


class Secret(Resource):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Secret"] = "Secret"
    type: str = "Opaque"
    # base64-encoded values, as on the wire; string_data is write-only plain text merged into data.
    data: dict[str, str] | None = None
    string_data: dict[str, str] | None = None
    immutable: bool | None = None

    def model_post_init(self, context: object, /) -> None:
        # Kubernetes folds stringData into data on write and never stores stringData.
        if self.string_data:
            data = dict(self.data or {})
            for k, v in self.string_data.items():
                data[k] = base64.b64encode(v.encode()).decode()
            self.data = data
            self.string_data = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        total = 0
        for k, v in (self.data or {}).items():
            for msg in _secret_key_rules(k):
                errs.add(invalid(path.child("data").key(k), k, msg))
            try:
                total += len(base64.b64decode(v, validate=True))
            except (binascii.Error, ValueError):
                errs.add(
                    invalid(path.child("data").key(k), "<secret contents redacted>", "must be base64-encoded")
                )
        if total > SECRET_DATA_MAX:
            errs.add(too_long(path.child("data"), SECRET_DATA_MAX))

    def check_update(self, old: Secret, errs: ErrorList) -> None:
        if old.immutable:
            if self.data != old.data:
                errs.add(forbidden(FieldPath.root("data"), "field is immutable when `immutable` is set"))
            if not self.immutable:
                errs.add(forbidden(FieldPath.root("immutable"), "field is immutable when `immutable` is set"))


# ---------------------------------------------------------------------------------------------------
# Table columns and the kinds


def _ports(svc: Service) -> str:
    out = []
    for p in svc.spec.ports or []:
        out.append(f"{p.port}/{p.protocol}")
    return ",".join(out) or "<none>"


def _selector(svc: Service) -> str:
    sel = svc.spec.selector or {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


def _cluster_ip(svc: Service) -> str:
    if svc.spec.type == "ExternalName":
        return "<none>"
    return ",".join(svc.spec.cluster_ips or []) or "<pending>"


KINDS = [
    Kind(
        group="",
        version="v1",
        kind="Namespace",
        plural="namespaces",
        model=Namespace,
        namespaced=False,
        short_names=("ns",),
        name_rule=names.is_dns1123_label,
        strategic_merge=True,
        columns=(Column("Status", lambda o: o.status.phase or ""),),
        subresources=("status", "finalize"),
    ),
    Kind(
        group="",
        version="v1",
        kind="Service",
        plural="services",
        model=Service,
        short_names=("svc",),
        categories=("all",),
        name_rule=names.is_dns1035_label,
        strategic_merge=True,
        columns=(
            Column("Type", lambda o: o.spec.type),
            Column("Cluster-IP", _cluster_ip),
            Column("External-IP", lambda o: o.spec.external_name or "<none>"),
            Column("Port(s)", _ports),
            Column("Selector", _selector, priority=1),
        ),
        subresources=("status",),
    ),
    Kind(
        group="",
        version="v1",
        kind="ServiceAccount",
        plural="serviceaccounts",
        model=ServiceAccount,
        short_names=("sa",),
        strategic_merge=True,
        columns=(Column("Secrets", lambda o: len(o.secrets or []), type="integer"),),
    ),
    Kind(
        group="",
        version="v1",
        kind="Secret",
        plural="secrets",
        model=Secret,
        strategic_merge=True,
        columns=(
            Column("Type", lambda o: o.type),
            Column("Data", lambda o: len(o.data or {}), type="integer"),
        ),
    ),
]
