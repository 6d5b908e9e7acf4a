"""mesh.innermesh.io/v1alpha1: innermesh's own kinds: Workload, AuthorizationPolicy, FaultInjection and
BackendTrafficPolicy.

Like Kubernetes' custom resources, these kinds accept JSON merge patch and JSON patch, not strategic
merge patch.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer

from innermesh.api import names
from innermesh.api.addresses import cidr_problems, endpoint_ip_problems, ip_problems, parse_ip
from innermesh.api.fielderrors import (
    ErrorList,
    FieldPath,
    duplicate,
    forbidden,
    invalid,
    not_supported,
    required,
    too_long,
    too_many,
)
from innermesh.api.gateway import Duration, parse_duration
from innermesh.api.meta import Condition, Resource, check_immutable, parse_time
from innermesh.api.model import Model, int_range, rule
from innermesh.api.networking import ServiceAccountRef, check_service_account_refs
from innermesh.api.registry import Column, Kind

GROUP = "mesh.innermesh.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Protocol = Literal["TCP", "UDP", "SCTP"]

READY = "Ready"

# ---------------------------------------------------------------------------------------------------
# Workload


class WorkloadPort(Model):
    """A port the workload listens on. ``name`` is what a Service's string ``targetPort`` refers to."""

    name: str | None = None
    port: int
    protocol: Protocol = "TCP"
    app_protocol: str | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.name is not None:
            for msg in names.is_port_name(self.name):
                errs.add(invalid(path.child("name"), self.name, msg))
        for msg in names.is_port_number(self.port):
            errs.add(invalid(path.child("port"), self.port, msg))
        if self.app_protocol is not None:
            for msg in names.is_qualified_name(self.app_protocol):
                errs.add(invalid(path.child("appProtocol"), self.app_protocol, msg))


class WorkloadSpec(Model):
    """Where a workload can be reached and who it is.

    - ``serviceAccount`` (default ``default``): the identity; the workload's SVID carries
      ``spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>``. Immutable: SVIDs already issued
      keep the old identity until they expire, so re-register instead of renaming.
    - ``addresses``: at most one IP per family, in canonical form. Required unless ``node`` is set: a
      workload placed on a node is given its address by that node's agent (from the pod range, once its
      network namespace exists); a workload with neither could never be reached. Loopback addresses are
      allowed (workloads run on loopback when the agent has no root).
    - ``ports``: names are IANA service names and unique; (port, protocol) pairs are unique.
    - ``node``: the node (agent) that runs it, if any; a VM registered by hand has none. Once set it may
      not change: another node means another process, so register another Workload.
    - ``zone``: for topology-aware routing, copied into EndpointSlices.
    - ``egress``: the hosts outside its own namespace that its sidecar should know, at most 64:
      ``<namespace>/<service>``, ``<namespace>/*`` (every Service of a namespace) or ``*/*`` (the whole
      mesh). A sidecar always knows the Services of its own namespace (and those its routes send to);
      ``egress`` adds others, so that a proxy receives only the configuration it needs (see
      docs/design/0005-xds-and-proxy.md, "Scope"). ``egress_allows`` evaluates it.
    """

    service_account: str = "default"
    addresses: list[str] = Field(default_factory=list)
    ports: list[WorkloadPort] | None = None
    node: str | None = None
    zone: str | None = None
    egress: list[str] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        for msg in names.is_dns1123_subdomain(self.service_account):
            errs.add(invalid(path.child("serviceAccount"), self.service_account, msg))
        self._check_addresses(path.child("addresses"), errs)
        self._check_ports(path.child("ports"), errs)
        if self.node is not None:
            for msg in names.is_dns1123_subdomain(self.node):
                errs.add(invalid(path.child("node"), self.node, msg))
        if self.zone is not None:
            for msg in names.is_label_value(self.zone):
                errs.add(invalid(path.child("zone"), self.zone, msg))
        if self.egress is not None:
            _check_egress(self.egress, path.child("egress"), errs)

    def _check_addresses(self, path: FieldPath, errs: ErrorList) -> None:
        if not self.addresses and self.node is None:
            errs.add(required(path, "must contain at least one address unless `node` is set"))
        families: list[int] = []
        for i, address in enumerate(self.addresses):
            problems = ip_problems(address) or endpoint_ip_problems(address)
            for msg in problems:
                errs.add(invalid(path.index(i), address, msg))
            ip = parse_ip(address)
            if ip is not None and ip.is_multicast and not problems:
                errs.add(invalid(path.index(i), address, "may not be a multicast address"))
            if ip is not None:
                families.append(ip.version)
        if len(families) != len(set(families)):
            errs.add(invalid(path, self.addresses, "may specify no more than one IP for each IP family"))

    def _check_ports(self, path: FieldPath, errs: ErrorList) -> None:
        seen_names: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for i, p in enumerate(self.ports or []):
            if p.name is not None:
                if p.name in seen_names:
                    errs.add(duplicate(path.index(i).child("name"), p.name))
                seen_names.add(p.name)
            if (p.port, p.protocol) in seen_ports:
                errs.add(duplicate(path.index(i), {"port": p.port, "protocol": p.protocol}))
            seen_ports.add((p.port, p.protocol))


MAX_EGRESS_HOSTS = 64
_EGRESS_SHAPE = "must be `<namespace>/<service>`, `<namespace>/*` or `*/*`"


def _egress_host_problems(host: str) -> list[str]:
    namespace, slash, service = host.partition("/")
    if not slash or "/" in service or (namespace == "*" and service != "*"):
        return [_EGRESS_SHAPE]
    problems: list[str] = []
    if namespace != "*":
        problems += [f"namespace: {msg}" for msg in names.is_dns1123_label(namespace)]
    if service != "*":
        # Service names are DNS-1035 labels (they become DNS names that may not start with a digit).
        problems += [f"service: {msg}" for msg in names.is_dns1035_label(service)]
    return problems


def _check_egress(egress: list[str], path: FieldPath, errs: ErrorList) -> None:
    if len(egress) > MAX_EGRESS_HOSTS:
        errs.add(too_many(path, len(egress), MAX_EGRESS_HOSTS))
        return
    seen: set[str] = set()
    for i, host in enumerate(egress):
        for msg in _egress_host_problems(host):
            errs.add(invalid(path.index(i), host, msg))
        if host in seen:
            errs.add(duplicate(path.index(i), host))
        seen.add(host)


def egress_allows(egress: Iterable[str] | None, namespace: str, service: str) -> bool:
    """Whether a Workload's ``spec.egress`` names Service ``namespace/service``. The Services of the
    workload's own namespace are in its scope regardless; that is the caller's rule, not this one."""
    return any(host in ("*/*", f"{namespace}/*", f"{namespace}/{service}") for host in egress or ())


class WorkloadStatus(Model):
    """Written by agents and health checkers. ``conditions`` holds at most one condition per type."""

    observed_generation: int | None = None
    conditions: list[Condition] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.observed_generation is not None and self.observed_generation < 0:
            errs.add(
                invalid(
                    path.child("observedGeneration"),
                    self.observed_generation,
                    "must be greater than or equal to 0",
                )
            )
        seen: set[str] = set()
        for i, cond in enumerate(self.conditions or []):
            if cond.type in seen:
                errs.add(duplicate(path.child("conditions").index(i).child("type"), cond.type))
            seen.add(cond.type)


class Workload(Resource):
    """A registered endpoint: a process, a VM, anything with an address.

    Its ``metadata.labels`` are what Service selectors match, as Pods' labels are in Kubernetes; the
    EndpointSlice controller turns each selected Workload into an endpoint.

    Readiness: the ``Ready`` condition in ``status.conditions``, written by the node's agent (process
    state, probes) and by health checks. A Workload *without* a ``Ready`` condition counts as ready, so
    that a VM registered by hand is reachable at once; whoever starts checking it adds the condition.
    ``Ready=False`` and ``Ready=Unknown`` both count as not ready: ``Unknown`` is what a writer reports
    when it can no longer vouch for the workload (its agent lost), and traffic is withdrawn until someone
    can.
    """

    api_version: Literal["mesh.innermesh.io/v1alpha1"] = "mesh.innermesh.io/v1alpha1"
    kind: Literal["Workload"] = "Workload"
    spec: WorkloadSpec = Field(default_factory=WorkloadSpec)
    status: WorkloadStatus = Field(default_factory=WorkloadStatus)

    def ready_condition(self) -> Condition | None:
        return next((c for c in self.status.conditions or [] if c.type == READY), None)

    @property
    def is_ready(self) -> bool:
        cond = self.ready_condition()
        return cond is None or cond.status == "True"

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.spec.service_account}"

    def check_update(self, old: Workload, errs: ErrorList) -> None:
        path = FieldPath.root("spec")
        check_immutable(
            self.spec.service_account, old.spec.service_account, path.child("serviceAccount"), errs
        )
        if old.spec.node is not None and self.spec.node != old.spec.node:
            errs.add(invalid(path.child("node"), self.spec.node, "may not change once set"))


# ---------------------------------------------------------------------------------------------------
# String patterns, shared by principals and header values (Istio's syntax)


def string_matches(pattern: str, value: str) -> bool:
    """Istio's string match: ``*`` matches any value, ``abc*`` a prefix, ``*abc`` a suffix, else exact."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _wildcard_problems(pattern: str) -> list[str]:
    stars = pattern.count("*")
    if stars == 0 or pattern == "*" or (stars == 1 and (pattern[0] == "*" or pattern[-1] == "*")):
        return []
    return ["may contain '*' only once, as its first or last character"]


# ---------------------------------------------------------------------------------------------------
# SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md)

SPIFFE_ID_MAX = 2048
_TRUST_DOMAIN_CHARS = re.compile(r"^[a-z0-9._-]*$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._/-]*$")


def spiffe_id_problems(value: str) -> list[str]:
    """Why ``value`` is not a SPIFFE ID (``spiffe://<trust-domain>[/<path>]``), or nothing."""
    if len(value) > SPIFFE_ID_MAX:
        return [f"must be no more than {SPIFFE_ID_MAX} characters"]
    if not value.startswith("spiffe://"):
        return ['must be a SPIFFE ID starting with "spiffe://"']
    trust_domain, slash, path = value[len("spiffe://") :].partition("/")
    out = []
    if not trust_domain:
        out.append("trust domain must be non-empty")
    elif not _TRUST_DOMAIN_CHARS.match(trust_domain):
        out.append("trust domain may contain only lower case letters, digits, '.', '-' and '_'")
    if slash:
        out.extend(_spiffe_path_problems(path, complete=True))
    return out


def _spiffe_path_problems(path: str, *, complete: bool) -> list[str]:
    if not _PATH_CHARS.match(path):
        return ["path may contain only letters, digits, '.', '-', '_' and '/'"]
    segments = path.split("/")
    if not complete:
        # A prefix may stop anywhere, so only its finished segments can be judged.
        segments = segments[:-1]
    if any(s == "" for s in segments):
        return ["path may not contain empty segments or end with '/'"]
    if any(s in (".", "..") for s in segments):
        return ["path segments may not be '.' or '..'"]
    return []


def principal_problems(pattern: str) -> list[str]:
    """A SPIFFE ID, or a pattern: ``*`` (any authenticated peer), ``spiffe://td/ns/prod/*`` (prefix),
    ``*/sa/frontend`` (suffix)."""
    if pattern == "*":
        return []
    problems = _wildcard_problems(pattern)
    if problems:
        return problems
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if not prefix.startswith("spiffe://"):
            return ['must be a SPIFFE ID starting with "spiffe://"']
        trust_domain, slash, path = prefix[len("spiffe://") :].partition("/")
        if not _TRUST_DOMAIN_CHARS.match(trust_domain):
            return ["trust domain may contain only lower case letters, digits, '.', '-' and '_'"]
        if slash and not trust_domain:
            return ["trust domain must be non-empty"]
        return _spiffe_path_problems(path, complete=False) if slash else []
    if pattern.startswith("*"):
        suffix = pattern[1:]
        if not _PATH_CHARS.match(suffix):
            return ["path may contain only letters, digits, '.', '-', '_' and '/'"]
        return []
    return spiffe_id_problems(pattern)


# ---------------------------------------------------------------------------------------------------
# Regular expressions: Python's re evaluates them in the proxy, but they must also mean the same to
# RE2 (Envoy, proxyless gRPC), which has no backreferences, lookaround, atomic groups or possessive
# repeats. Python 3.11's parser (re._parser) exposes the parsed program; we refuse those constructs.

_re_parser: Any = importlib.import_module("re._parser")

_NOT_RE2 = {
    "GROUPREF": "backreferences",
    "GROUPREF_EXISTS": "conditional groups",
    "ASSERT": "lookahead or lookbehind",
    "ASSERT_NOT": "lookahead or lookbehind",
    "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive repeats",
}

REGEX_MAX = 1024


def _walk_regex(node: Any, found: set[str]) -> None:
    if isinstance(node, _re_parser.SubPattern):
        for op, arg in node:
            unsupported = _NOT_RE2.get(getattr(op, "name", ""))
            if unsupported:
                found.add(unsupported)
            _walk_regex(arg, found)
    elif isinstance(node, list | tuple):
        for item in node:
            _walk_regex(item, found)


def regex_problems(pattern: str) -> list[str]:
    if len(pattern) > REGEX_MAX:
        return [f"must be no more than {REGEX_MAX} characters"]
    found: set[str] = set()
    try:
        re.compile(pattern)
        _walk_regex(_re_parser.parse(pattern), found)
    except (re.error, RecursionError, OverflowError) as e:
        return [f"must be a valid regular expression: {e}"]
    return [f"must be RE2-compatible (no {what})" for what in sorted(found)]


# ---------------------------------------------------------------------------------------------------
# AuthorizationPolicy


class PolicyTargetReference(Model):
    """Gateway API's LocalPolicyTargetReference: an object in the policy's namespace."""

    group: str
    kind: str
    name: str


# kind -> (group, name rule)
_TARGETS = {
    "Namespace": ("", names.is_dns1123_label),
    "Service": ("", names.is_dns1035_label),
    "Workload": (GROUP, names.is_dns1123_subdomain),
}

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HOST_DETAIL = (
    "must be a lower case hostname, optionally with a leading '*.' wildcard label "
    "(e.g. 'backend.default.svc' or '*.example.com')"
)
HEADER_NAME_MAX = 256
PATH_MAX = 1024
MAX_TARGET_REFS = 16
MAX_RULES = 64
MAX_VALUES = 256


def _nonempty(values: list[Any] | None, path: FieldPath, errs: ErrorList) -> bool:
    """Present lists must hold something (an empty OR would match nothing) and be bounded."""
    if values is None:
        return False
    if not values:
        errs.add(required(path, "must contain at least one value when specified"))
        return False
    if len(values) > MAX_VALUES:
        errs.add(too_many(path, len(values), MAX_VALUES))
        return False
    return True


def _each(values: Iterable[Any], path: FieldPath, errs: ErrorList, problems: Any) -> None:
    for i, v in enumerate(values):
        for msg in problems(v):
            errs.add(invalid(path.index(i), v, msg))


def _ip_block_problems(value: str) -> list[str]:
    if "/" in value:
        return cidr_problems(value)
    problems = ip_problems(value)
    return [f"must be an IP address or a CIDR: {problems[0]}"] if problems else []


class Source(Model):
    """Who sends the request. Fields are AND-ed; the values of one field are OR-ed.

    ``principals``, ``serviceAccounts`` and ``namespaces`` match the peer's authenticated SPIFFE ID
    (from its mTLS certificate); a plaintext peer matches none of them. ``ipBlocks`` (IPs or CIDRs)
    match the source address of the connection the proxy accepted."""

    principals: list[str] | None = None
    service_accounts: list[ServiceAccountRef] | None = None
    namespaces: list[str] | None = None
    ip_blocks: list[str] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if all(f is None for f in (self.principals, self.service_accounts, self.namespaces, self.ip_blocks)):
            errs.add(
                required(
                    path,
                    "must specify at least one of `principals`, `serviceAccounts`, `namespaces` or `ipBlocks`",
                )
            )
        if _nonempty(self.principals, path.child("principals"), errs):
            _each(self.principals or [], path.child("principals"), errs, principal_problems)
        if self.service_accounts is not None:
            check_service_account_refs(self.service_accounts, path.child("serviceAccounts"), errs)
        if _nonempty(self.namespaces, path.child("namespaces"), errs):
            _each(self.namespaces or [], path.child("namespaces"), errs, names.is_dns1123_label)
        if _nonempty(self.ip_blocks, path.child("ipBlocks"), errs):
            _each(self.ip_blocks or [], path.child("ipBlocks"), errs, _ip_block_problems)


PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]


class PathMatch(Model):
    """Gateway API's HTTPPathMatch. ``PathPrefix`` matches whole segments (``/api`` matches
    ``/api`` and ``/api/v1``, not ``/apis``); ``RegularExpression`` must match the whole path."""

    type: PathMatchType = "PathPrefix"
    value: str = "/"

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        vpath = path.child("value")
        if len(self.value) > PATH_MAX:
            errs.add(too_long(vpath, PATH_MAX))
            return
        if self.type == "RegularExpression":
            for msg in regex_problems(self.value):
                errs.add(invalid(vpath, self.value, msg))
            return
        if not self.value.startswith("/"):
            errs.add(invalid(vpath, self.value, "must be an absolute path (start with '/')"))
        for seq in ("//", "/./", "/../", "%2f", "%2F", "#"):
            if seq in self.value:
                errs.add(invalid(vpath, self.value, f"must not contain '{seq}'"))
        for suffix in ("/..", "/."):
            if self.value.endswith(suffix):
                errs.add(invalid(vpath, self.value, f"must not end with '{suffix}'"))
                break


def _check_header_name(value: str, path: FieldPath, errs: ErrorList) -> None:
    if len(value) > HEADER_NAME_MAX:
        errs.add(too_long(path, HEADER_NAME_MAX))
    elif not _TOKEN.match(value):
        errs.add(invalid(path, value, "must be an HTTP header name (an RFC 9110 token)"))


def _method_problems(value: str) -> list[str]:
    return [] if _TOKEN.match(value) else ["must be an HTTP method (an RFC 9110 token, e.g. GET)"]


def _host_problems(value: str) -> list[str]:
    if len(value) > names.DNS1123_SUBDOMAIN_MAX:
        return [f"must be no more than {names.DNS1123_SUBDOMAIN_MAX} characters"]
    if _HOSTNAME.match(value):
        return []
    return [_HOST_DETAIL]


class Operation(Model):
    """What the request asks for. Fields are AND-ed; the values of one field are OR-ed.

    ``methods``, ``paths`` and ``hosts`` (the request authority without its port, compared case
    insensitively; ``*.example.com`` matches one or more labels) need HTTP; ``ports`` is the port the
    workload received the connection on (a Service's targetPort, not its port)."""

    methods: list[str] | None = None
    paths: list[PathMatch] | None = None
    ports: list[int] | None = None
    hosts: list[str] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if all(f is None for f in (self.methods, self.paths, self.ports, self.hosts)):
            errs.add(required(path, "must specify at least one of `methods`, `paths`, `ports` or `hosts`"))
        if _nonempty(self.methods, path.child("methods"), errs):
            _each(self.methods or [], path.child("methods"), errs, _method_problems)
        _nonempty(self.paths, path.child("paths"), errs)
        if _nonempty(self.ports, path.child("ports"), errs):
            _each(self.ports or [], path.child("ports"), errs, names.is_port_number)
        if _nonempty(self.hosts, path.child("hosts"), errs):
            _each(self.hosts or [], path.child("hosts"), errs, _host_problems)

    @property
    def needs_http(self) -> bool:
        return self.methods is not None or self.paths is not None or self.hosts is not None


class HeaderCondition(Model):
    """A request header whose value matches one of ``values`` (Istio's syntax: ``v1`` exact, ``v1*``
    prefix, ``*-canary`` suffix, ``*`` present with any value). Header names are case-insensitive."""

    header: str
    values: list[str]

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_header_name(self.header, path.child("header"), errs)
        if _nonempty(self.values, path.child("values"), errs):
            _each(self.values, path.child("values"), errs, _wildcard_problems)


class Rule(Model):
    """Matches a request when ``from`` AND ``to`` AND ``when`` all match; a missing or empty ``from``
    or ``to`` matches every source or operation, so ``{}`` matches every request."""

    from_: list[Source] | None = Field(default=None, alias="from")
    to: list[Operation] | None = None
    when: list[HeaderCondition] | None = None

    @property
    def needs_http(self) -> bool:
        return bool(self.when) or any(op.needs_http for op in self.to or [])


Action = Literal["ALLOW", "DENY"]


class AuthorizationPolicySpec(Model):
    target_refs: list[PolicyTargetReference]
    action: Action = "ALLOW"
    rules: list[Rule] = Field(default_factory=list)

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        tpath = path.child("targetRefs")
        if not self.target_refs:
            errs.add(required(tpath, "must contain at least one target"))
        elif len(self.target_refs) > MAX_TARGET_REFS:
            errs.add(too_many(tpath, len(self.target_refs), MAX_TARGET_REFS))
        seen: set[tuple[str, str, str]] = set()
        for i, ref in enumerate(self.target_refs):
            self._check_target(ref, tpath.index(i), errs)
            key = (ref.group, ref.kind, ref.name)
            if key in seen:
                errs.add(duplicate(tpath.index(i), ref.to_dict()))
            seen.add(key)
        if len(self.rules) > MAX_RULES:
            errs.add(too_many(path.child("rules"), len(self.rules), MAX_RULES))

    @staticmethod
    def _check_target(ref: PolicyTargetReference, path: FieldPath, errs: ErrorList) -> None:
        target = _TARGETS.get(ref.kind)
        if target is None:
            errs.add(not_supported(path.child("kind"), ref.kind, sorted(_TARGETS)))
            return
        group, name_rule = target
        if ref.group != group:
            errs.add(not_supported(path.child("group"), ref.group, [group]))
        for msg in name_rule(ref.name):
            errs.add(invalid(path.child("name"), ref.name, msg))


class PolicyStatus(Model):
    observed_generation: int | None = None
    conditions: list[Condition] | None = None


class AuthorizationPolicy(Resource):
    """L7 authorization for requests arriving at workloads, attached the Gateway API way.

    ``targetRefs`` name what it protects, in the policy's namespace: a Service (group ``""``; the
    Workloads it selects, for requests on its target ports), a Workload (group ``mesh.innermesh.io``), or
    the Namespace itself (group ``""``, name: the policy's namespace; every Workload in it).

    Semantics, as Istio users expect them:

    - ``rules`` are OR-ed: a policy matches a request if any rule does. Within a rule, ``from``, ``to``
      and ``when`` are AND-ed; within ``from`` (or ``to``) the entries are OR-ed; within an entry the
      fields are AND-ed; the values of one field are OR-ed; ``when`` conditions are all required.
    - ``action`` defaults to ``ALLOW``. For each request: if any ``DENY`` policy targeting the workload
      matches, it is denied (403; for TCP, the connection is closed). Otherwise, if no ``ALLOW`` policy
      targets the workload, it is allowed; if some do, it is allowed only if one of them matches.
    - So an ``ALLOW`` policy with no rules (``rules: []`` or none) denies everything that no other ALLOW
      policy allows, and ``rules: [{}]`` allows everything. A ``DENY`` policy with no rules does nothing.
    - Fail closed: a rule that needs what the traffic cannot show never helps it. On plain TCP, a rule
      with ``methods``, ``paths``, ``hosts`` or ``when`` never matches in an ALLOW policy, and in a DENY
      policy those HTTP-only fields are ignored (so the rule denies more). A peer without an mTLS
      identity matches no ``principals``, ``serviceAccounts`` or ``namespaces``.

    Not (yet) supported, compared with Istio: the ``AUDIT`` and ``CUSTOM`` actions, negated fields
    (``notPrincipals``, ``notPaths``...), request principals (JWT) and ``remoteIpBlocks``.
    """

    api_version: Literal["mesh.innermesh.io/v1alpha1"] = "mesh.innermesh.io/v1alpha1"
    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec
    status: PolicyStatus = Field(default_factory=PolicyStatus)

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        namespace = self.metadata.namespace
        if not namespace:
            return
        for i, ref in enumerate(self.spec.target_refs):
            if ref.kind == "Namespace" and ref.group == "" and ref.name != namespace:
                errs.add(
                    invalid(
                        path.child("spec", "targetRefs").index(i).child("name"),
                        ref.name,
                        f'must be the policy\'s own namespace ("{namespace}")',
                    )
                )


# ---------------------------------------------------------------------------------------------------
# Percentages and durations, shared by FaultInjection and BackendTrafficPolicy

PERCENTAGE_DECIMALS = 4


def _percentage_problems(value: float) -> list[str]:
    if not 0 <= value <= 100:  # also refuses NaN
        return ["must be between 0 and 100, inclusive"]
    # Four decimals are what parts per million can carry exactly (0.0001% = 1 ppm); repr is the
    # shortest form that reads back as the same float, so it shows the decimals the user wrote.
    exponent = Decimal(repr(value)).as_tuple().exponent
    if isinstance(exponent, int) and exponent < -PERCENTAGE_DECIMALS:
        return [f"must have at most {PERCENTAGE_DECIMALS} decimal places"]
    return []


def _number_wire(value: float) -> float | int:
    """A whole percentage is written back as the integer the user most likely wrote (``50``, not
    ``50.0``)."""
    return int(value) if value.is_integer() else value


Percentage = Annotated[
    float, rule(_percentage_problems), PlainSerializer(_number_wire, return_type=float | int)
]
"""A share of requests, 0..100 with at most 4 decimal places (strict float: integers are accepted)."""


def per_million(percentage: float) -> int:
    """A validated percentage as parts per million (Envoy's ``FractionalPercent``, denominator
    MILLION). Exact, because a percentage carries at most 4 decimal places."""
    return int(Decimal(repr(percentage)) * 10_000)


def _seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


# ---------------------------------------------------------------------------------------------------
# FaultInjection


class FaultDelay(Model):
    """Hold ``percentage`` of the requests for ``fixedDelay`` (a Gateway API Duration, more than 0)
    before forwarding them."""

    fixed_delay: Duration
    percentage: Percentage = 100.0

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if parse_duration(self.fixed_delay) <= dt.timedelta(0):
            errs.add(invalid(path.child("fixedDelay"), self.fixed_delay, "must be greater than 0"))

    def delay_seconds(self) -> float:
        return _seconds(self.fixed_delay)

    def per_million(self) -> int:
        return per_million(self.percentage)


class FaultAbort(Model):
    """Answer ``percentage`` of the requests at once, without forwarding them: with HTTP status
    ``httpStatus``, or with gRPC status ``grpcStatus`` (HTTP 200 and a ``grpc-status`` trailer).
    Exactly one of the two."""

    http_status: Annotated[int, int_range(200, 599)] | None = None
    grpc_status: Annotated[int, int_range(0, 16)] | None = None
    percentage: Percentage = 100.0

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.http_status is None and self.grpc_status is None:
            errs.add(required(path, "must specify one of `httpStatus` or `grpcStatus`"))
        elif self.http_status is not None and self.grpc_status is not None:
            errs.add(forbidden(path.child("grpcStatus"), "may not be specified together with `httpStatus`"))

    def per_million(self) -> int:
        return per_million(self.percentage)


class FaultInjectionSpec(Model):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.delay is None and self.abort is None:
            errs.add(required(path, "must specify at least one of `delay` or `abort`"))


class FaultInjection(Resource):
    """Faults injected into the requests a route rule matches, to test how clients cope.

    Referenced from an HTTPRoute or GRPCRoute filter of the same namespace::

        filters:
        - type: ExtensionRef
          extensionRef: {group: mesh.innermesh.io, kind: FaultInjection, name: <name>}

    The delay (if any) comes first, then the abort (if any); each picks its own share of requests, as
    Envoy's fault filter does. A route whose ExtensionRef names a FaultInjection that does not exist has
    ``ResolvedRefs=False`` and the requests that filter would have seen get a 500: upstream says a
    filter that cannot be resolved must not be skipped.
    """

    api_version: Literal["mesh.innermesh.io/v1alpha1"] = "mesh.innermesh.io/v1alpha1"
    kind: Literal["FaultInjection"] = "FaultInjection"
    spec: FaultInjectionSpec


# ---------------------------------------------------------------------------------------------------
# BackendTrafficPolicy

LoadBalancerType = Literal["RoundRobin", "LeastRequest", "Random", "RingHash", "Maglev"]
HashType = Literal["Header", "Cookie", "SourceIP"]
_HASHING = ("RingHash", "Maglev")
UINT32_MAX = 2**32 - 1


class HashHeader(Model):
    name: str

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_header_name(self.name, path.child("name"), errs)


def _cookie_path_problems(value: str) -> list[str]:
    if len(value) > PATH_MAX:
        return [f"must be no more than {PATH_MAX} characters"]
    if not value.startswith("/"):
        return ["must be an absolute path (start with '/')"]
    # RFC 6265 path-value: any CHAR except CTLs or ';'.
    if any(c == ";" or not " " <= c <= "~" for c in value):
        return ["may contain only printable ASCII characters other than ';'"]
    return []


class HashCookie(Model):
    """Hash on a cookie. With ``ttl`` the proxy sets the cookie on responses to requests that came
    without it (as Envoy does: ``0s`` makes it a session cookie); without ``ttl`` a request without the
    cookie is hashed as if it had none."""

    name: str
    ttl: Duration | None = None
    path: str = "/"

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if not _TOKEN.match(self.name):
            errs.add(invalid(path.child("name"), self.name, "must be a cookie name (an RFC 9110 token)"))
        for msg in _cookie_path_problems(self.path):
            errs.add(invalid(path.child("path"), self.path, msg))

    def ttl_seconds(self) -> float | None:
        return _seconds(self.ttl) if self.ttl is not None else None


class ConsistentHash(Model):
    """What RingHash and Maglev hash on: a request header, a cookie, or the client's address."""

    type: HashType
    header: HashHeader | None = None
    cookie: HashCookie | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        for field, wanted in (("header", "Header"), ("cookie", "Cookie")):
            present = getattr(self, field) is not None
            if self.type == wanted and not present:
                errs.add(required(path.child(field), f"must be specified when `type` is '{wanted}'"))
            elif self.type != wanted and present:
                errs.add(forbidden(path.child(field), f"may only be specified when `type` is '{wanted}'"))


class LoadBalancer(Model):
    """How a client's proxy picks an endpoint of the Service.

    ``LeastRequest`` is the power of two choices (Envoy's default ``choice_count``); ``RingHash`` and
    ``Maglev`` keep requests with the same ``consistentHash`` key on the same endpoint while the
    endpoints do not change. ``zoneAware`` (default true): prefer ready endpoints in the client's zone,
    and fail over to the others only when none is ready there.
    """

    type: LoadBalancerType = "RoundRobin"
    consistent_hash: ConsistentHash | None = None
    zone_aware: bool = True

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        hpath = path.child("consistentHash")
        if self.type in _HASHING and self.consistent_hash is None:
            errs.add(required(hpath, "must be specified when `type` is 'RingHash' or 'Maglev'"))
        elif self.type not in _HASHING and self.consistent_hash is not None:
            errs.add(forbidden(hpath, "may only be specified when `type` is 'RingHash' or 'Maglev'"))


ConnectionLimit = Annotated[int, int_range(1, UINT32_MAX)]


class ConnectionPool(Model):
    """Limits on what the client proxies open and send to the Service's endpoints (Envoy's circuit
    breakers), per client proxy and Service. An absent field means Envoy's default;
    ``maxRequestsPerConnection`` 0 (or absent) means unlimited; ``idleTimeout`` ``0s`` disables the idle
    timeout."""

    max_connections: ConnectionLimit | None = None
    max_pending_requests: ConnectionLimit | None = None
    max_requests: ConnectionLimit | None = None
    max_requests_per_connection: Annotated[int, int_range(0, UINT32_MAX)] | None = None
    idle_timeout: Duration | None = None

    def idle_timeout_seconds(self) -> float | None:
        return _seconds(self.idle_timeout) if self.idle_timeout is not None else None


class BackendTrafficPolicySpec(Model):
    target_refs: list[PolicyTargetReference]
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        tpath = path.child("targetRefs")
        if not self.target_refs:
            errs.add(required(tpath, "must contain at least one target"))
        elif len(self.target_refs) > MAX_TARGET_REFS:
            errs.add(too_many(tpath, len(self.target_refs), MAX_TARGET_REFS))
        seen: set[tuple[str, str, str]] = set()
        for i, ref in enumerate(self.target_refs):
            rpath = tpath.index(i)
            if ref.kind != "Service":
                errs.add(not_supported(rpath.child("kind"), ref.kind, ["Service"]))
            if ref.group != "":
                errs.add(not_supported(rpath.child("group"), ref.group, [""]))
            for msg in names.is_dns1035_label(ref.name):
                errs.add(invalid(rpath.child("name"), ref.name, msg))
            key = (ref.group, ref.kind, ref.name)
            if key in seen:
                errs.add(duplicate(rpath, ref.to_dict()))
            seen.add(key)


class BackendTrafficPolicy(Resource):
    """How clients' proxies talk to a Service: load balancing and connection limits, attached to
    Services of the policy's namespace the Gateway API way (``targetRefs``, core ``Service`` only).

    An absent ``loadBalancer`` means round robin, zone aware; an absent ``connectionPool``, Envoy's
    defaults. When several policies target one Service, the oldest wins (``effective_backend_policy``).
    """

    api_version: Literal["mesh.innermesh.io/v1alpha1"] = "mesh.innermesh.io/v1alpha1"
    kind: Literal["BackendTrafficPolicy"] = "BackendTrafficPolicy"
    spec: BackendTrafficPolicySpec
    status: PolicyStatus = Field(default_factory=PolicyStatus)

    def targets_service(self, namespace: str, name: str) -> bool:
        """Whether this policy attaches to Service ``namespace/name``: only a policy in the Service's
        own namespace can."""
        return self.namespace == namespace and any(
            r.group == "" and r.kind == "Service" and r.name == name for r in self.spec.target_refs
        )


def _age_key(policy: BackendTrafficPolicy) -> tuple[bool, dt.datetime, str]:
    ts = policy.metadata.creation_timestamp
    # The server always stamps creationTimestamp; an object without one (never stored) sorts last.
    return (ts is None, parse_time(ts) if ts else dt.datetime.max.replace(tzinfo=dt.UTC), policy.name)


def effective_backend_policy(
    policies: Iterable[BackendTrafficPolicy], service_namespace: str, service_name: str
) -> BackendTrafficPolicy | None:
    """The one policy that applies to a Service, by the Gateway API's policy attachment rule for
    conflicts: of the policies targeting it, the oldest by ``metadata.creationTimestamp``, then the
    first by name. Policies are not merged: the others are ignored whole."""
    targeting = [p for p in policies if p.targets_service(service_namespace, service_name)]
    return min(targeting, key=_age_key, default=None)


# ---------------------------------------------------------------------------------------------------
# Kinds


def _addresses(wl: Workload) -> str:
    return ",".join(wl.spec.addresses) or "<none>"


def _ready(wl: Workload) -> str:
    cond = wl.ready_condition()
    return cond.status if cond is not None else "True"


def _targets(policy: AuthorizationPolicy | BackendTrafficPolicy) -> str:
    return ",".join(f"{r.kind}/{r.name}" for r in policy.spec.target_refs)


def _delay(fi: FaultInjection) -> str:
    d = fi.spec.delay
    return f"{d.fixed_delay} ({d.percentage:g}%)" if d is not None else "<none>"


def _abort(fi: FaultInjection) -> str:
    a = fi.spec.abort
    if a is None:
        return "<none>"
    status = f"HTTP {a.http_status}" if a.http_status is not None else f"gRPC {a.grpc_status}"
    return f"{status} ({a.percentage:g}%)"


def _load_balancer(btp: BackendTrafficPolicy) -> str:
    lb = btp.spec.load_balancer
    return lb.type if lb is not None else "RoundRobin"


KINDS = [
    Kind(
        group=GROUP,
        version=VERSION,
        kind="Workload",
        plural="workloads",
        model=Workload,
        short_names=("wl",),
        categories=("all",),
        columns=(
            Column("Addresses", _addresses),
            Column("Node", lambda o: o.spec.node or "<none>"),
            Column("Zone", lambda o: o.spec.zone or "<none>"),
            Column("Ready", _ready),
            Column("ServiceAccount", lambda o: o.spec.service_account, priority=1),
        ),
        subresources=("status",),
    ),
    Kind(
        group=GROUP,
        version=VERSION,
        kind="AuthorizationPolicy",
        plural="authorizationpolicies",
        model=AuthorizationPolicy,
        short_names=("ap",),
        columns=(
            Column("Action", lambda o: o.spec.action),
            Column("Targets", _targets),
        ),
        subresources=("status",),
    ),
    Kind(
        group=GROUP,
        version=VERSION,
        kind="FaultInjection",
        plural="faultinjections",
        model=FaultInjection,
        short_names=("fault",),
        columns=(
            Column("Delay", _delay),
            Column("Abort", _abort),
        ),
    ),
    Kind(
        group=GROUP,
        version=VERSION,
        kind="BackendTrafficPolicy",
        plural="backendtrafficpolicies",
        model=BackendTrafficPolicy,
        short_names=("btp",),
        columns=(
            Column("Targets", _targets),
            Column("LoadBalancer", _load_balancer),
        ),
        subresources=("status",),
    ),
]
