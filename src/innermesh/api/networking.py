"""networking.k8s.io/v1: NetworkPolicy and IPAddress.

Fields, defaults and rules follow Kubernetes' ``networking/v1`` types and
``pkg/apis/networking/validation``, so that a NetworkPolicy written for Kubernetes applies unchanged:

- ``spec.podSelector`` is optional and defaults to the empty selector (every workload in the
  namespace), as the API server has always decoded it (kubernetes/kubernetes#131354 fixed the docs).
- ``spec.policyTypes`` defaults to ``["Ingress"]``, plus ``"Egress"`` when egress rules exist.
- ``ports[].protocol`` defaults to TCP; ``endPort`` needs a numeric ``port`` and is ``>= port``.
- a peer sets ``podSelector`` and/or ``namespaceSelector``, or ``ipBlock`` alone; ``except`` CIDRs are
  strict subsets of ``cidr``.

Two upstream leniencies exist only to keep objects stored by older Kubernetes releases valid (invalid
label values in selectors, sloppy CIDRs that predate strict parsing); innermesh has no such objects and
applies the strict rules always.

One innermesh extension, ``NetworkPolicyPeer.serviceAccounts``, is described on that class.

"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from innermesh.api import names
from innermesh.api.addresses import cidr_problems, ip_problems, parse_cidr
from innermesh.api.fielderrors import (
    ErrorList,
    FieldPath,
    duplicate,
    forbidden,
    invalid,
    required,
)
from innermesh.api.meta import LabelSelector, Resource
from innermesh.api.model import IntOrString, Model
from innermesh.api.registry import Column, Kind
from innermesh.api.selectors import format_selector, from_label_selector

GROUP = "networking.k8s.io"
VERSION = "v1"

Protocol = Literal["TCP", "UDP", "SCTP"]
PolicyType = Literal["Ingress", "Egress"]

# ---------------------------------------------------------------------------------------------------
# NetworkPolicy


class NetworkPolicyPort(Model):
    """A port (or a range ``port``..``endPort``) on a protocol; no ``port`` means every port."""

    protocol: Protocol = "TCP"
    port: IntOrString | None = None
    end_port: int | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        port, end = self.port, self.end_port
        if isinstance(port, int):
            for msg in names.is_port_number(port):
                errs.add(invalid(path.child("port"), port, msg))
            if end is not None:
                if end < port:
                    errs.add(invalid(path.child("endPort"), end, "must be greater than or equal to `port`"))
                for msg in names.is_port_number(end):
                    errs.add(invalid(path.child("endPort"), end, msg))
        elif isinstance(port, str):
            if end is not None:
                errs.add(
                    invalid(path.child("endPort"), end, "may not be specified when `port` is non-numeric")
                )
            for msg in names.is_port_name(port):
                errs.add(invalid(path.child("port"), port, msg))
        elif end is not None:
            errs.add(invalid(path.child("endPort"), end, "may not be specified when `port` is not specified"))


class IPBlock(Model):
    """A CIDR, minus ``except`` CIDRs inside it."""

    cidr: str
    except_: list[str] | None = Field(default=None, alias="except")

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if not self.cidr:
            errs.add(required(path.child("cidr")))
            return
        for msg in cidr_problems(self.cidr, canonical=False):
            errs.add(invalid(path.child("cidr"), self.cidr, msg))
        net = parse_cidr(self.cidr)
        if net is None:
            return
        for i, exc in enumerate(self.except_ or []):
            epath = path.child("except").index(i)
            problems = cidr_problems(exc, canonical=False)
            for msg in problems:
                errs.add(invalid(epath, exc, msg))
            exc_net = parse_cidr(exc)
            if exc_net is None:
                continue
            # Kubernetes: the except's address lies in cidr and its prefix is strictly longer.
            inside = exc_net.version == net.version and exc_net.network_address in net
            if not inside or exc_net.prefixlen <= net.prefixlen:
                errs.add(invalid(epath, exc, "must be a strict subset of `cidr`"))


class ServiceAccountRef(Model):
    """A ServiceAccount by namespace and name; the namespace defaults to the referring object's."""

    namespace: str | None = None
    name: str

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if not self.name:
            errs.add(required(path.child("name")))
        else:
            for msg in names.is_dns1123_subdomain(self.name):
                errs.add(invalid(path.child("name"), self.name, msg))
        if self.namespace is not None:
            for msg in names.is_dns1123_label(self.namespace):
                errs.add(invalid(path.child("namespace"), self.namespace, msg))

    def resolved_namespace(self, default: str) -> str:
        return self.namespace or default

    def spiffe_id(self, trust_domain: str, default_namespace: str) -> str:
        """The SPIFFE ID the mesh issues to workloads running as this ServiceAccount."""
        return f"spiffe://{trust_domain}/ns/{self.resolved_namespace(default_namespace)}/sa/{self.name}"


def check_service_account_refs(refs: list[ServiceAccountRef], path: FieldPath, errs: ErrorList) -> None:
    """No empty list (it would match nothing, which is never what was meant) and no duplicates."""
    if not refs:
        errs.add(required(path, "must contain at least one service account"))
    seen: set[tuple[str | None, str]] = set()
    for i, ref in enumerate(refs):
        key = (ref.namespace, ref.name)
        if key in seen:
            errs.add(duplicate(path.index(i), ref.to_dict()))
        seen.add(key)


class NetworkPolicyPeer(Model):
    """Who may connect (ingress ``from``) or be connected to (egress ``to``).

    Upstream fields: ``podSelector`` (workloads in the policy's namespace, or in the namespaces that
    ``namespaceSelector`` selects when both are set), ``namespaceSelector`` (every workload in the
    selected namespaces), ``ipBlock`` (addresses; must be alone in its peer).

    innermesh extension, ``serviceAccounts``: a list of ``{namespace, name}`` (``namespace`` defaults to
    the policy's own). It matches a peer by its *authenticated* identity, the SPIFFE ID
    ``spiffe://<trust-domain>/ns/<namespace>/sa/<name>`` in the X.509-SVID the peer presented over mTLS,
    never by its address or labels. It must be the only field of its peer:

    - combining it with ``ipBlock`` or the selectors would make one peer half cryptographic and half
      address-based, and the conjunction is no stronger than its weaker half;
    - the namespace is already part of each entry, so ``namespaceSelector`` would add nothing but a
      second, conflicting way to say which namespace is meant.

    Write a second peer in the same ``from``/``to`` list to OR it with other kinds of peers. Only data
    planes that terminate mTLS (the sidecar proxy) can evaluate it; one that cannot (the kernel data
    plane) treats such a peer as matching nothing, so the policy fails closed: NetworkPolicy only ever
    allows, and a peer that cannot be verified allows nothing.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
    service_accounts: list[ServiceAccountRef] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        set_fields = [
            f
            for f in (self.pod_selector, self.namespace_selector, self.ip_block, self.service_accounts)
            if f is not None
        ]
        if not set_fields:
            errs.add(required(path, "must specify a peer"))
        elif len(set_fields) > 1 and self.ip_block is not None:
            errs.add(forbidden(path, "may not specify both ipBlock and another peer"))
        elif len(set_fields) > 1 and self.service_accounts is not None:
            errs.add(forbidden(path, "may not specify both serviceAccounts and another peer"))
        if self.service_accounts is not None:
            check_service_account_refs(self.service_accounts, path.child("serviceAccounts"), errs)


class NetworkPolicyIngressRule(Model):
    """Traffic matching a port in ``ports`` AND a peer in ``from`` (an empty or missing list matches
    everything)."""

    ports: list[NetworkPolicyPort] | None = None
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")


class NetworkPolicyEgressRule(Model):
    ports: list[NetworkPolicyPort] | None = None
    to: list[NetworkPolicyPeer] | None = None


class NetworkPolicySpec(Model):
    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policy_types: list[PolicyType] | None = None

    def model_post_init(self, context: object, /) -> None:
        # Kubernetes' SetDefaults_NetworkPolicy: every policy is about ingress; egress when it has rules.
        if not self.policy_types:
            self.policy_types = ["Ingress", "Egress"] if self.egress else ["Ingress"]

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.policy_types and len(self.policy_types) > 2:
            errs.add(
                invalid(
                    path.child("policyTypes"), self.policy_types, "may not specify more than two policyTypes"
                )
            )

    @property
    def affects_ingress(self) -> bool:
        return "Ingress" in (self.policy_types or [])

    @property
    def affects_egress(self) -> bool:
        return "Egress" in (self.policy_types or [])


class NetworkPolicy(Resource):
    api_version: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)


# ---------------------------------------------------------------------------------------------------
# IPAddress


def ip_address_name(name: str) -> list[str]:
    """Kubernetes' ValidateIPAddressName: the name is an IP address in canonical form."""
    return ip_problems(name, canonical=True)


def _path_segment_name(value: str) -> list[str]:
    """apimachinery's IsValidPathSegmentName: the value can be one segment of a URL path."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


class ParentReference(Model):
    """The object an IPAddress is allocated to: ``{group: "", resource: services, namespace, name}``
    for a Service's ClusterIP."""

    group: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        # The core group is the empty string, so group can not be required.
        if self.group:
            for msg in names.is_dns1123_subdomain(self.group):
                errs.add(invalid(path.child("group"), self.group, msg))
        for fname, value, needed in (
            ("resource", self.resource, True),
            ("name", self.name, True),
            ("namespace", self.namespace, False),
        ):
            if not value:
                if needed:
                    errs.add(required(path.child(fname)))
                continue
            for msg in _path_segment_name(value):
                errs.add(invalid(path.child(fname), value, msg))

    def normalized(self) -> tuple[str, str, str, str]:
        """The reference with unset and empty fields made equal, as Go's omitempty strings are."""
        return (self.group or "", self.resource or "", self.namespace or "", self.name or "")


class IPAddressSpec(Model):
    parent_ref: ParentReference | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.parent_ref is None:
            errs.add(required(path.child("parentRef")))


class IPAddress(Resource):
    """One allocated IP (cluster-scoped; ``metadata.name`` is the address in canonical form). The
    ClusterIP allocator creates one per Service IP, so that two Services can never hold the same
    address: the store's create-if-absent on the name is the lock."""

    api_version: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["IPAddress"] = "IPAddress"
    spec: IPAddressSpec = Field(default_factory=IPAddressSpec)

    @classmethod
    def for_service(cls, ip: str, namespace: str, name: str) -> IPAddress:
        """The IPAddress recording that ``ip`` is the ClusterIP of Service ``namespace/name``."""
        return cls.model_validate(
            {
                "metadata": {"name": ip},
                "spec": {
                    "parentRef": {"group": "", "resource": "services", "namespace": namespace, "name": name}
                },
            }
        )

    def check_update(self, old: IPAddress, errs: ErrorList) -> None:
        new_ref, old_ref = self.spec.parent_ref, old.spec.parent_ref
        same = (new_ref.normalized() if new_ref else None) == (old_ref.normalized() if old_ref else None)
        if not same:
            value = new_ref.to_dict() if new_ref else None
            errs.add(invalid(FieldPath.root("spec", "parentRef"), value, "field is immutable"))


# ---------------------------------------------------------------------------------------------------
# Kinds


def _pod_selector(np: NetworkPolicy) -> str:
    return format_selector(from_label_selector(np.spec.pod_selector)) or "<none>"


def _parent_ref(ip: IPAddress) -> str:
    ref = ip.spec.parent_ref
    if ref is None:
        return "<none>"
    group, resource, namespace, name = ref.normalized()
    out = f"{resource}.{group}" if group else resource
    if namespace:
        out += f"/{namespace}"
    return f"{out.lower()}/{name}"


KINDS = [
    Kind(
        group=GROUP,
        version=VERSION,
        kind="NetworkPolicy",
        plural="networkpolicies",
        model=NetworkPolicy,
        short_names=("netpol",),
        strategic_merge=True,
        columns=(Column("Pod-Selector", _pod_selector),),
    ),
    Kind(
        group=GROUP,
        version=VERSION,
        kind="IPAddress",
        plural="ipaddresses",
        model=IPAddress,
        namespaced=False,
        name_rule=ip_address_name,
        strategic_merge=True,
        columns=(Column("ParentRef", _parent_ref),),
    ),
]


# The label and value on the IPAddresses the ClusterIP allocator makes (Kubernetes' own label name).
IPADDRESS_MANAGED_BY_LABEL = "ipaddress.kubernetes.io/managed-by"
IPADDRESS_MANAGED_BY = "innermesh"


def service_ip_address(ip: str, namespace: str, name: str) -> dict[str, object]:
    """The IPAddress that records ``ip`` as allocated to the Service ``namespace/name``."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "IPAddress",
        "metadata": {"name": ip, "labels": {IPADDRESS_MANAGED_BY_LABEL: IPADDRESS_MANAGED_BY}},
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": namespace, "name": name}},
    }
