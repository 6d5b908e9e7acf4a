"""The Gateway API group, gateway.networking.k8s.io: GatewayClass, Gateway, HTTPRoute, GRPCRoute (v1) and
ReferenceGrant (v1 and v1beta1).

Release: the **standard channel of Gateway API v1.7.0**. The field set, OpenAPI rules (maxItems,
maxLength, minimum/maximum, patterns, enums), defaults and x-kubernetes-validations (CEL) rules follow
upstream's generated standard CRDs and the ``apis/v1`` Go types they are generated from; fields that only
the experimental channel carries are left out and refused as unknown. What v1.7.0 changed in the standard
channel, and so what this module has that v1.6 had not: HTTPRoute rule ``retry`` (codes, attempts,
backoff) graduated, and rule ``name`` uniqueness is enforced on HTTPRoute and GRPCRoute. HTTPRoute rule
``sessionPersistence`` stays experimental (and deprecated) in v1.7, so it is refused here.

Sources, since the v1.7.0 CRDs themselves could not be read: upstream's generated v1.6.0-rc.1 standard
CRDs for Gateway, GatewayClass and ReferenceGrant (v1.7 changed none of their standard schemas), the
v1.7-era ``apis/v1`` Go types for HTTPRoute and the shared types, the v1.3 standard GRPCRoute CRD, and
the v1.7 changelog for what moved between channels. Two upstream quirks are kept on purpose: the
standard parentRefs rules compare sectionName only, although ``port`` is a standard field; and
``retry.attempts`` carries no bound (an explicit 0 disables retries).

Channel details worth knowing:

- ReferenceGrant is served at v1 and v1beta1 with one schema (storage v1beta1): one ``Kind`` per version
  shares the ``ReferenceGrant`` model; the store keys ignore the version. Upstream gives it no status.
- GatewayClass, Gateway and HTTPRoute are also served at v1beta1 upstream; only v1 is registered here.
- The CRDs are not compiled into kubectl, so these kinds take JSON merge patch, not strategic merge patch.
- Defaults are the CRD's (``+kubebuilder:default``) and apply at parse, as the API server's structural
  defaulting does before validation, so the CEL rules below see defaulted objects as upstream's do.

Validation in two phases (see ``model``): field rules in ``Annotated`` types, and each CEL rule rewritten
as Python in the ``check`` hook of the schema node that declares it, reported at that node's path with the
API server's wording (``spec.rules[0]: Invalid value: "object": <upstream message>``). A few rules come
from upstream's Go validation package (``apis/v1/validation``) rather than the CRD, because the CRD's
list-map keys compare header names case-sensitively: header names must be unique case-insensitively in
header matches and across a header modifier's set/add/remove.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, Field

from innermesh.api import addresses
from innermesh.api.fielderrors import (
    ErrorList,
    ErrorType,
    FieldError,
    FieldPath,
    duplicate,
    invalid,
    too_many,
)
from innermesh.api.meta import Condition, LabelSelector, Resource
from innermesh.api.model import (
    Model,
    check_error,
    int_range,
    max_items,
    max_length,
    min_items,
    min_length,
    min_value,
    pattern,
)
from innermesh.api.registry import Column, Kind

GROUP = "gateway.networking.k8s.io"
BUNDLE_VERSION = "v1.7.0"
CHANNEL = "standard"

# ---------------------------------------------------------------------------------------------------
# Helpers for rules the model module does not have.


def _cel(path: FieldPath, schema_type: str, message: str) -> FieldError:
    """A failed x-kubernetes-validations rule, worded as the API server words it: the "value" is the type
    of the schema node the rule sits on ("object", "array", "string")."""
    return invalid(path, schema_type, message)


def search_pattern(regex: str) -> AfterValidator:
    """An OpenAPI ``pattern`` that is not anchored at both ends. The API server matches patterns with
    search semantics, which only matters for upstream's patterns with a top-level alternation
    (ProtocolType, AddressType)."""
    compiled = re.compile(regex)

    def validate(value: str) -> str:
        if not compiled.search(value):
            raise check_error(ErrorType.INVALID, f"should match '{regex}'")
        return value

    return AfterValidator(validate)


def int_enum(*allowed: int) -> AfterValidator:
    """An OpenAPI enum of integers (Kubernetes: Unsupported value)."""
    listed = ", ".join(f'"{a}"' for a in allowed)

    def validate(value: int) -> int:
        if value not in allowed:
            raise check_error(ErrorType.NOT_SUPPORTED, f"supported values: {listed}")
        return value

    return AfterValidator(validate)


def _check_max_properties(value: dict[str, str] | None, n: int, path: FieldPath, errs: ErrorList) -> None:
    """OpenAPI ``maxProperties``, checked in phase 2: as a field rule the translator would print the whole
    map as the value, where Kubernetes prints the count."""
    if value is not None and len(value) > n:
        errs.add(too_many(path, len(value), n))


def _set_duplicates(values: Sequence[object], path: FieldPath, errs: ErrorList) -> None:
    """``x-kubernetes-list-type: set``: each later copy of a value is a Duplicate value."""
    seen: list[object] = []
    for i, v in enumerate(values):
        if v in seen:
            errs.add(duplicate(path.index(i), v))
        seen.append(v)


def _map_key_duplicates(keys: Sequence[object], key_name: str, path: FieldPath, errs: ErrorList) -> None:
    """``x-kubernetes-list-type: map``: two items with the same key are a Duplicate value."""
    seen: list[object] = []
    for i, k in enumerate(keys):
        if k in seen:
            errs.add(duplicate(path.index(i), {key_name: k}))
        seen.append(k)


def _exists_one(items: Iterable[Any], pred: Callable[[Any], bool]) -> bool:
    """CEL's ``exists_one``: exactly one item satisfies the predicate."""
    return sum(1 for item in items if pred(item)) == 1


_DURATION_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def parse_duration(value: str) -> dt.timedelta:
    """A Gateway API Duration (GEP-2257, e.g. ``1h30m``, ``500ms``), already validated by its pattern."""
    ms = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    return dt.timedelta(milliseconds=ms)


# ---------------------------------------------------------------------------------------------------
# Shared value types (apis/v1/shared_types.go), with the CRD's limits and patterns.

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
HOSTNAME_PATTERN = rf"^(\*\.)?{_SUBDOMAIN}$"
PRECISE_HOSTNAME_PATTERN = rf"^{_SUBDOMAIN}$"
GROUP_PATTERN = rf"^$|^{_SUBDOMAIN}$"
KIND_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
NAMESPACE_PATTERN = rf"^{_LABEL}$"
SECTION_NAME_PATTERN = rf"^{_SUBDOMAIN}$"
GATEWAY_CONTROLLER_PATTERN = rf"^{_SUBDOMAIN}\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"
DURATION_PATTERN = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
CORS_ORIGIN_PATTERN = r"(^\*$)|(^([a-zA-Z][a-zA-Z0-9+\-.]+):\/\/([^:/?#]+)(:([0-9]{1,5}))?$)"
PROTOCOL_PATTERN = rf"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|{_SUBDOMAIN}\/[A-Za-z0-9]+$"
ADDRESS_TYPE_PATTERN = rf"^Hostname|IPAddress|NamedAddress|{_SUBDOMAIN}\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# The key rule of Gateway infrastructure labels and annotations (a CEL rule, not a pattern).
_QUALIFIED_KEY = re.compile(rf"({_SUBDOMAIN}/)?([A-Za-z0-9][-A-Za-z0-9_.]{{0,61}})?[A-Za-z0-9]")

Hostname = Annotated[str, min_length(1), max_length(253), pattern(HOSTNAME_PATTERN)]
PreciseHostname = Annotated[str, min_length(1), max_length(253), pattern(PRECISE_HOSTNAME_PATTERN)]
Group = Annotated[str, max_length(253), pattern(GROUP_PATTERN)]
KindName = Annotated[str, min_length(1), max_length(63), pattern(KIND_PATTERN)]
ObjectName = Annotated[str, min_length(1), max_length(253)]
Namespace = Annotated[str, min_length(1), max_length(63), pattern(NAMESPACE_PATTERN)]
SectionName = Annotated[str, min_length(1), max_length(253), pattern(SECTION_NAME_PATTERN)]
GatewayController = Annotated[str, min_length(1), max_length(253), pattern(GATEWAY_CONTROLLER_PATTERN)]
HeaderName = Annotated[str, min_length(1), max_length(256), pattern(HEADER_NAME_PATTERN)]
Duration = Annotated[str, pattern(DURATION_PATTERN)]
PortNumber = Annotated[int, int_range(1, 65535)]
CORSOrigin = Annotated[str, min_length(1), max_length(253), pattern(CORS_ORIGIN_PATTERN)]
ProtocolType = Annotated[str, min_length(1), max_length(255), search_pattern(PROTOCOL_PATTERN)]
AddressType = Annotated[str, min_length(1), max_length(253), search_pattern(ADDRESS_TYPE_PATTERN)]
LabelValue = Annotated[str, max_length(63), pattern(LABEL_VALUE_PATTERN)]
AnnotationValue = Annotated[str, max_length(4096)]

HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
HTTPMethodWithWildcard = Literal[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*"
]


def _pending(condition_type: str) -> Condition:
    """The placeholder condition upstream's CRDs default into a new object's status."""
    return Condition(
        type=condition_type,
        status="Unknown",
        reason="Pending",
        message="Waiting for controller",
        last_transition_time="1970-01-01T00:00:00Z",
    )


def find_condition(conditions: Iterable[Condition] | None, condition_type: str) -> Condition | None:
    for c in conditions or ():
        if c.type == condition_type:
            return c
    return None


def _check_conditions(conditions: Sequence[Condition], path: FieldPath, errs: ErrorList) -> None:
    # Conditions are a list-map keyed by type.
    _map_key_duplicates([c.type for c in conditions], "type", path, errs)


Conditions = Annotated[list[Condition], max_items(8)]


# ---------------------------------------------------------------------------------------------------
# References (object_reference_types.go, shared_types.go)


class ParentKey(NamedTuple):
    """A parentRef with its defaults and the route's namespace filled in: what it points at."""

    group: str
    kind: str
    namespace: str
    name: str
    section_name: str
    port: int


class ParentReference(Model):
    """A route's parent (usually a Gateway; a Service for mesh routes)."""

    group: Group = GROUP
    kind: KindName = "Gateway"
    namespace: Namespace | None = None
    name: ObjectName
    section_name: SectionName | None = None
    port: PortNumber | None = None

    @property
    def is_service(self) -> bool:
        """A mesh (GAMMA) parent: a Service of the core group, whose name is "" (not "core")."""
        return self.group == "" and self.kind == "Service"

    def key(self, route_namespace: str) -> ParentKey:
        """The parent this reference selects, seen from a route in ``route_namespace`` ("" and 0 stand
        for an unset sectionName and port)."""
        return ParentKey(
            self.group,
            self.kind,
            self.namespace or route_namespace,
            self.name,
            self.section_name or "",
            self.port or 0,
        )

    def _same_parent(self, other: ParentReference) -> bool:
        # As upstream's CEL compares them: an unset namespace equals only another unset (or empty) one.
        return (
            self.group == other.group
            and self.kind == other.kind
            and self.name == other.name
            and (self.namespace or "") == (other.namespace or "")
        )


def _check_parent_refs(refs: Sequence[ParentReference], path: FieldPath, errs: ErrorList) -> None:
    """The standard channel's two rules on CommonRouteSpec.parentRefs (the experimental channel's
    versions also look at ``port``)."""
    same_section_set = all(
        bool(p1.section_name) == bool(p2.section_name) for p1 in refs for p2 in refs if p1._same_parent(p2)
    )
    if not same_section_set:
        errs.add(
            _cel(
                path,
                "array",
                "sectionName must be specified when parentRefs includes 2 or more references to the same parent",
            )
        )
    keys = [(p.group, p.kind, p.namespace or "", p.name, p.section_name or "") for p in refs]
    if len(set(keys)) != len(keys):
        errs.add(
            _cel(
                path,
                "array",
                "sectionName must be unique when parentRefs includes 2 or more references to the same parent",
            )
        )


class LocalObjectReference(Model):
    group: Group
    kind: KindName
    name: ObjectName


class SecretObjectReference(Model):
    group: Group = ""
    kind: KindName = "Secret"
    name: ObjectName
    namespace: Namespace | None = None


class ObjectReference(Model):
    group: Group
    kind: KindName
    name: ObjectName
    namespace: Namespace | None = None


class BackendObjectReference(Model):
    group: Group = ""
    kind: KindName = "Service"
    name: ObjectName
    namespace: Namespace | None = None
    port: PortNumber | None = None

    @property
    def is_service(self) -> bool:
        return self.group == "" and self.kind == "Service"

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.is_service and self.port is None:
            errs.add(_cel(path, "object", "Must have port for Service reference"))


class BackendRef(BackendObjectReference):
    weight: Annotated[int, int_range(0, 1000000)] = 1


class RouteParentStatus(Model):
    parent_ref: ParentReference
    controller_name: GatewayController
    conditions: Annotated[list[Condition], min_items(1), max_items(8)]

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_conditions(self.conditions, path.child("conditions"), errs)


class RouteStatus(Model):
    parents: Annotated[list[RouteParentStatus], max_items(32)]


class Fraction(Model):
    numerator: Annotated[int, min_value(0)]
    denominator: Annotated[int, min_value(1)] = 100

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.numerator > self.denominator:
            errs.add(_cel(path, "object", "numerator must be less than or equal to denominator"))


# ---------------------------------------------------------------------------------------------------
# Filters shared by HTTPRoute and GRPCRoute


class HTTPHeader(Model):
    name: HeaderName
    value: Annotated[str, min_length(1), max_length(4096)]


class HTTPHeaderFilter(Model):
    """Set, add or remove headers. One action per header name (case-insensitively)."""

    set: Annotated[list[HTTPHeader], max_items(16)] | None = None
    add: Annotated[list[HTTPHeader], max_items(16)] | None = None
    remove: Annotated[list[HeaderName], max_items(16)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        # Upstream's Go validation (validateHTTPHeaderModifier): add, then set, then remove; the second
        # action on a name is reported once. This also covers the CRD's exact list-map/set keys.
        seen: dict[str, bool] = {}
        entries: list[tuple[FieldPath, str]] = []
        for i, h in enumerate(self.add or []):
            entries.append((path.child("add").index(i).child("name"), h.name))
        for i, h in enumerate(self.set or []):
            entries.append((path.child("set").index(i).child("name"), h.name))
        for i, name in enumerate(self.remove or []):
            entries.append((path.child("remove").index(i), name))
        for p, name in entries:
            key = name.lower()
            if key in seen:
                if seen[key]:
                    errs.add(invalid(p, name, "cannot specify multiple actions for header"))
                seen[key] = False
            else:
                seen[key] = True


class HTTPRequestMirrorFilter(Model):
    backend_ref: BackendObjectReference
    percent: Annotated[int, int_range(0, 100)] | None = None
    fraction: Fraction | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.percent is not None and self.fraction is not None:
            errs.add(
                _cel(
                    path,
                    "object",
                    "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter",
                )
            )


def _check_header_match_names(names: Sequence[str], path: FieldPath, errs: ErrorList) -> None:
    """Header names match case-insensitively, so a name may be matched once (upstream's Go validation,
    validateHTTPHeaderMatches; stricter than the CRD's case-sensitive list-map key)."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name.lower() in seen:
            errs.add(
                invalid(
                    path.index(i).child("name"),
                    name,
                    "cannot match the same header multiple times in the same rule",
                )
            )
        seen.add(name.lower())


def _filter_union(
    obj: Model, filter_type: str, members: Sequence[tuple[str, str, str]], path: FieldPath, errs: ErrorList
) -> None:
    """The filter's discriminated union: each (attribute, wire name, type) config field is set exactly
    when ``type`` names it."""
    for attr, wire, ftype in members:
        present = getattr(obj, attr) is not None
        if present and filter_type != ftype:
            errs.add(_cel(path, "object", f"filter.{wire} must be nil if the filter.type is not {ftype}"))
        if not present and filter_type == ftype:
            errs.add(_cel(path, "object", f"filter.{wire} must be specified for {ftype} filter.type"))


def _check_not_repeated(
    types: Sequence[str], repeatable: Sequence[str], path: FieldPath, errs: ErrorList
) -> None:
    for ftype in repeatable:
        if types.count(ftype) > 1:
            errs.add(_cel(path, "array", f"{ftype} filter cannot be repeated"))


# ---------------------------------------------------------------------------------------------------
# HTTPRoute (httproute_types.go)

PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+")
_PATH_CHARS_TEXT = r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$"
_WHEN_PATH = "when type one of ['Exact', 'PathPrefix']"


class HTTPPathMatch(Model):
    type: PathMatchType = "PathPrefix"
    value: Annotated[str, max_length(1024)] = "/"

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.type not in ("Exact", "PathPrefix"):
            return
        v = self.value
        rules: list[tuple[bool, str]] = [
            (v.startswith("/"), f"value must be an absolute path and start with '/' {_WHEN_PATH}"),
            *(
                (seq not in v, f"must not contain '{seq}' {_WHEN_PATH}")
                for seq in ("//", "/./", "/../", "%2f", "%2F", "#")
            ),
            *(
                (not v.endswith(suffix), f"must not end with '{suffix}' {_WHEN_PATH}")
                for suffix in ("/..", "/.")
            ),
            (
                _PATH_CHARS.fullmatch(v) is not None,
                f"must only contain valid characters (matching {_PATH_CHARS_TEXT}) for types ['Exact', 'PathPrefix']",
            ),
        ]
        for ok, message in rules:
            if not ok:
                errs.add(_cel(path, "object", message))


class HTTPHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, min_length(1), max_length(4096)]


class HTTPQueryParamMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, min_length(1), max_length(1024)]


class HTTPRouteMatch(Model):
    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)
    headers: Annotated[list[HTTPHeaderMatch], max_items(16)] | None = None
    query_params: Annotated[list[HTTPQueryParamMatch], max_items(16)] | None = None
    method: HTTPMethod | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.headers:
            _check_header_match_names([h.name for h in self.headers], path.child("headers"), errs)
        if self.query_params:
            # Query parameter names are case-sensitive: the CRD's list-map key.
            seen: set[str] = set()
            for i, q in enumerate(self.query_params):
                if q.name in seen:
                    errs.add(
                        invalid(
                            path.child("queryParams").index(i).child("name"),
                            q.name,
                            "cannot match the same query parameter multiple times in the same rule",
                        )
                    )
                seen.add(q.name)


class HTTPPathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: Annotated[str, max_length(1024)] | None = None
    replace_prefix_match: Annotated[str, max_length(1024)] | None = None

    @property
    def replaces_prefix(self) -> bool:
        return self.type == "ReplacePrefixMatch" and self.replace_prefix_match is not None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        for ftype, value, wire in (
            ("ReplaceFullPath", self.replace_full_path, "replaceFullPath"),
            ("ReplacePrefixMatch", self.replace_prefix_match, "replacePrefixMatch"),
        ):
            if self.type == ftype and value is None:
                errs.add(_cel(path, "object", f"{wire} must be specified when type is set to '{ftype}'"))
            if value is not None and self.type != ftype:
                errs.add(_cel(path, "object", f"type must be '{ftype}' when {wire} is set"))


class HTTPRequestRedirectFilter(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Annotated[int, int_enum(301, 302, 303, 307, 308)] = 302


class HTTPURLRewriteFilter(Model):
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None


def _check_star_alone(values: Sequence[str], path: FieldPath, what: str, errs: ErrorList) -> None:
    if "*" in values and len(values) > 1:
        errs.add(_cel(path, "array", what))


class HTTPCORSFilter(Model):
    allow_origins: Annotated[list[CORSOrigin], max_items(64)] | None = None
    allow_credentials: bool | None = None
    allow_methods: Annotated[list[HTTPMethodWithWildcard], max_items(9)] | None = None
    allow_headers: Annotated[list[HeaderName], max_items(64)] | None = None
    expose_headers: Annotated[list[HeaderName], max_items(64)] | None = None
    max_age: Annotated[int, min_value(1)] = 5

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        lists: list[tuple[Sequence[str] | None, str, str]] = [
            (self.allow_origins, "allowOrigins", "AllowOrigins cannot contain '*' alongside other origins"),
            (self.allow_methods, "allowMethods", "AllowMethods cannot contain '*' alongside other methods"),
            # Upstream's message says "methods" for headers too; kept as is.
            (self.allow_headers, "allowHeaders", "AllowHeaders cannot contain '*' alongside other methods"),
            (self.expose_headers, "exposeHeaders", ""),
        ]
        for values, wire, rule in lists:
            if values is None:
                continue
            _set_duplicates(values, path.child(wire), errs)
            if rule:
                _check_star_alone(values, path.child(wire), rule, errs)


HTTPRouteFilterType = Literal[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
]

_HTTP_FILTER_MEMBERS = (
    ("cors", "cors", "CORS"),
    ("request_header_modifier", "requestHeaderModifier", "RequestHeaderModifier"),
    ("response_header_modifier", "responseHeaderModifier", "ResponseHeaderModifier"),
    ("request_mirror", "requestMirror", "RequestMirror"),
    ("request_redirect", "requestRedirect", "RequestRedirect"),
    ("url_rewrite", "urlRewrite", "URLRewrite"),
    ("extension_ref", "extensionRef", "ExtensionRef"),
)


class HTTPRouteFilter(Model):
    type: HTTPRouteFilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    cors: HTTPCORSFilter | None = None
    extension_ref: LocalObjectReference | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _filter_union(self, self.type, _HTTP_FILTER_MEMBERS, path, errs)

    @property
    def redirect_replaces_prefix(self) -> bool:
        r = self.request_redirect
        return r is not None and r.path is not None and r.path.replaces_prefix

    @property
    def rewrite_replaces_prefix(self) -> bool:
        r = self.url_rewrite
        return r is not None and r.path is not None and r.path.replaces_prefix


def _check_http_filters(filters: Sequence[HTTPRouteFilter], path: FieldPath, errs: ErrorList) -> None:
    types = [f.type for f in filters]
    if "RequestRedirect" in types and "URLRewrite" in types:
        errs.add(
            _cel(
                path,
                "array",
                "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both",
            )
        )
    _check_not_repeated(
        types,
        ("CORS", "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"),
        path,
        errs,
    )


class HTTPBackendRef(BackendRef):
    filters: Annotated[list[HTTPRouteFilter], max_items(16)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        super().check(path, errs)
        if self.filters:
            _check_http_filters(self.filters, path.child("filters"), errs)


class HTTPRouteTimeouts(Model):
    request: Duration | None = None
    backend_request: Duration | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.request is None or self.backend_request is None:
            return
        request = parse_duration(self.request)
        # A zero request timeout disables it, so then any backendRequest timeout fits.
        if request and parse_duration(self.backend_request) > request:
            errs.add(_cel(path, "object", "backendRequest timeout cannot be longer than request timeout"))


class HTTPRouteRetry(Model):
    codes: list[Annotated[int, int_range(400, 599)]] | None = None
    attempts: int | None = None
    backoff: Duration | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.codes:
            _set_duplicates(self.codes, path.child("codes"), errs)


_PREFIX_RULE = "exactly one PathPrefix match must be specified"


class HTTPRouteRule(Model):
    name: SectionName | None = None
    matches: Annotated[list[HTTPRouteMatch], max_items(64)] = Field(
        default_factory=lambda: [HTTPRouteMatch()]
    )
    filters: Annotated[list[HTTPRouteFilter], max_items(16)] | None = None
    backend_refs: Annotated[list[HTTPBackendRef], max_items(16)] | None = None
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None

    def _one_prefix_match(self) -> bool:
        return len(self.matches) == 1 and self.matches[0].path.type == "PathPrefix"

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        filters = self.filters or []
        backends = self.backend_refs or []
        if filters:
            _check_http_filters(filters, path.child("filters"), errs)
        if backends and any(f.request_redirect is not None for f in filters):
            errs.add(
                _cel(path, "object", "RequestRedirect filter must not be used together with backendRefs")
            )
        # The four replacePrefixMatch rules, with CEL's exists_one as upstream wrote them.
        checks: list[tuple[bool, str]] = [
            (
                _exists_one(filters, lambda f: f.redirect_replaces_prefix),
                f"When using RequestRedirect filter with path.replacePrefixMatch, {_PREFIX_RULE}",
            ),
            (
                _exists_one(filters, lambda f: f.rewrite_replaces_prefix),
                f"When using URLRewrite filter with path.replacePrefixMatch, {_PREFIX_RULE}",
            ),
            (
                _exists_one(
                    backends, lambda b: _exists_one(b.filters or [], lambda f: f.redirect_replaces_prefix)
                ),
                f"Within backendRefs, when using RequestRedirect filter with path.replacePrefixMatch, {_PREFIX_RULE}",
            ),
            (
                _exists_one(
                    backends, lambda b: _exists_one(b.filters or [], lambda f: f.rewrite_replaces_prefix)
                ),
                f"Within backendRefs, When using URLRewrite filter with path.replacePrefixMatch, {_PREFIX_RULE}",
            ),
        ]
        for applies, message in checks:
            if applies and not self._one_prefix_match():
                errs.add(_cel(path, "object", message))


_TOTAL_MATCHES = (
    "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a "
    "route must be less than 128"
)


def _check_rule_names(names: Sequence[str | None], path: FieldPath, errs: ErrorList) -> None:
    given = [n for n in names if n is not None]
    if len(set(given)) != len(given):
        errs.add(_cel(path, "array", "Rule name must be unique within the route"))


class HTTPRouteSpec(Model):
    parent_refs: Annotated[list[ParentReference], max_items(32)] | None = None
    hostnames: Annotated[list[Hostname], max_items(16)] | None = None
    rules: Annotated[list[HTTPRouteRule], min_items(1), max_items(16)] = Field(
        default_factory=lambda: [HTTPRouteRule()]
    )

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.parent_refs:
            _check_parent_refs(self.parent_refs, path.child("parentRefs"), errs)
        _check_rule_names([r.name for r in self.rules], path.child("rules"), errs)
        if sum(len(r.matches) for r in self.rules) > 128:
            errs.add(_cel(path.child("rules"), "array", _TOTAL_MATCHES))


def _hostnames_column(obj: HTTPRoute | GRPCRoute) -> str:
    # kubectl prints an array column as JSON.
    hostnames = obj.spec.hostnames
    return json.dumps(hostnames, separators=(",", ":")) if hostnames else ""


class HTTPRoute(Resource):
    api_version: Literal["gateway.networking.k8s.io/v1"] = "gateway.networking.k8s.io/v1"
    kind: Literal["HTTPRoute"] = "HTTPRoute"
    spec: HTTPRouteSpec
    status: RouteStatus | None = None


# ---------------------------------------------------------------------------------------------------
# GRPCRoute (grpcroute_types.go)

_GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


class GRPCMethodMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: Annotated[str, max_length(1024)] | None = None
    method: Annotated[str, max_length(1024)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.service is None and self.method is None:
            errs.add(_cel(path, "object", "One or both of 'service' or 'method' must be specified"))
        if self.type != "Exact":
            return
        if self.service is not None and not _GRPC_SERVICE.fullmatch(self.service):
            errs.add(
                _cel(
                    path,
                    "object",
                    r"service must only contain valid characters (matching ^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$)",
                )
            )
        if self.method is not None and not _GRPC_METHOD.fullmatch(self.method):
            errs.add(
                _cel(
                    path,
                    "object",
                    "method must only contain valid characters (matching ^[A-Za-z_][A-Za-z_0-9]*$)",
                )
            )


class GRPCHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, min_length(1), max_length(4096)]


class GRPCRouteMatch(Model):
    method: GRPCMethodMatch | None = None
    headers: Annotated[list[GRPCHeaderMatch], max_items(16)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.headers:
            _check_header_match_names([h.name for h in self.headers], path.child("headers"), errs)


GRPCRouteFilterType = Literal[
    "ResponseHeaderModifier", "RequestHeaderModifier", "RequestMirror", "ExtensionRef"
]

_GRPC_FILTER_MEMBERS = (
    ("request_header_modifier", "requestHeaderModifier", "RequestHeaderModifier"),
    ("response_header_modifier", "responseHeaderModifier", "ResponseHeaderModifier"),
    ("request_mirror", "requestMirror", "RequestMirror"),
    ("extension_ref", "extensionRef", "ExtensionRef"),
)


class GRPCRouteFilter(Model):
    type: GRPCRouteFilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    extension_ref: LocalObjectReference | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _filter_union(self, self.type, _GRPC_FILTER_MEMBERS, path, errs)


def _check_grpc_filters(filters: Sequence[GRPCRouteFilter], path: FieldPath, errs: ErrorList) -> None:
    _check_not_repeated(
        [f.type for f in filters], ("RequestHeaderModifier", "ResponseHeaderModifier"), path, errs
    )


class GRPCBackendRef(BackendRef):
    filters: Annotated[list[GRPCRouteFilter], max_items(16)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        super().check(path, errs)
        if self.filters:
            _check_grpc_filters(self.filters, path.child("filters"), errs)


class GRPCRouteRule(Model):
    name: SectionName | None = None
    matches: Annotated[list[GRPCRouteMatch], max_items(8)] | None = None
    filters: Annotated[list[GRPCRouteFilter], max_items(16)] | None = None
    backend_refs: Annotated[list[GRPCBackendRef], max_items(16)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.filters:
            _check_grpc_filters(self.filters, path.child("filters"), errs)


class GRPCRouteSpec(Model):
    parent_refs: Annotated[list[ParentReference], max_items(32)] | None = None
    hostnames: Annotated[list[Hostname], max_items(16)] | None = None
    rules: Annotated[list[GRPCRouteRule], max_items(16)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.parent_refs:
            _check_parent_refs(self.parent_refs, path.child("parentRefs"), errs)
        rules = self.rules or []
        if sum(len(r.matches or []) for r in rules) > 128:
            errs.add(_cel(path.child("rules"), "array", _TOTAL_MATCHES))
        _check_rule_names([r.name for r in rules], path.child("rules"), errs)


class GRPCRoute(Resource):
    api_version: Literal["gateway.networking.k8s.io/v1"] = "gateway.networking.k8s.io/v1"
    kind: Literal["GRPCRoute"] = "GRPCRoute"
    spec: GRPCRouteSpec = Field(default_factory=GRPCRouteSpec)
    status: RouteStatus | None = None


# ---------------------------------------------------------------------------------------------------
# GatewayClass (gatewayclass_types.go)


class ParametersReference(Model):
    group: Group
    kind: KindName
    name: Annotated[str, min_length(1), max_length(253)]
    namespace: Namespace | None = None


class GatewayClassSpec(Model):
    controller_name: GatewayController
    parameters_ref: ParametersReference | None = None
    description: Annotated[str, max_length(64)] | None = None


class SupportedFeature(Model):
    name: str


class GatewayClassStatus(Model):
    conditions: Conditions = Field(default_factory=lambda: [_pending("Accepted")])
    supported_features: Annotated[list[SupportedFeature], max_items(64)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_conditions(self.conditions, path.child("conditions"), errs)
        if self.supported_features:
            _map_key_duplicates(
                [f.name for f in self.supported_features], "name", path.child("supportedFeatures"), errs
            )


class GatewayClass(Resource):
    api_version: Literal["gateway.networking.k8s.io/v1"] = "gateway.networking.k8s.io/v1"
    kind: Literal["GatewayClass"] = "GatewayClass"
    spec: GatewayClassSpec
    status: GatewayClassStatus = Field(default_factory=GatewayClassStatus)

    def check_update(self, old: GatewayClass, errs: ErrorList) -> None:
        # x-kubernetes-validations on spec.controllerName: self == oldSelf.
        if self.spec.controller_name != old.spec.controller_name:
            errs.add(_cel(FieldPath.root("spec", "controllerName"), "string", "Value is immutable"))


# ---------------------------------------------------------------------------------------------------
# Gateway (gateway_types.go)

FromNamespaces = Literal["All", "Selector", "Same"]


class RouteNamespaces(Model):
    from_: FromNamespaces = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(Model):
    group: Group = GROUP
    kind: KindName


class AllowedRoutes(Model):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: Annotated[list[RouteGroupKind], max_items(8)] | None = None


class ListenerTLSConfig(Model):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: Annotated[list[SecretObjectReference], max_items(64)] | None = None
    # The keys are AnnotationKeys upstream, but a CRD cannot validate map keys and upstream adds no CEL
    # rule for them, so only the values and the count are checked.
    options: dict[str, AnnotationValue] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_max_properties(self.options, 16, path.child("options"), errs)
        if self.mode == "Terminate" and not self.certificate_refs and not self.options:
            errs.add(
                _cel(path, "object", "certificateRefs or options must be specified when mode is Terminate")
            )


class Listener(Model):
    name: SectionName
    hostname: Hostname | None = None
    port: PortNumber
    protocol: ProtocolType
    tls: ListenerTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


def _check_listeners(listeners: Sequence[Listener], path: FieldPath, errs: ErrorList) -> None:
    """The six CEL rules on spec.listeners, in upstream's order. Protocols compare exactly, as the
    standard CRD's rules do ("https" is an implementation-specific protocol, not HTTPS)."""
    if any(lst.protocol in ("HTTP", "TCP", "UDP") and lst.tls is not None for lst in listeners):
        errs.add(_cel(path, "array", "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"))
    if any(
        lst.protocol == "HTTPS" and lst.tls is not None and lst.tls.mode != "Terminate" for lst in listeners
    ):
        errs.add(_cel(path, "array", "tls mode must be Terminate for protocol HTTPS"))
    if any(lst.protocol == "TLS" and lst.tls is None for lst in listeners):
        errs.add(_cel(path, "array", "tls mode must be set for protocol TLS"))
    if any(lst.protocol in ("TCP", "UDP") and lst.hostname for lst in listeners):
        errs.add(_cel(path, "array", "hostname must not be specified for protocols ['TCP', 'UDP']"))
    names = [lst.name for lst in listeners]
    if len(set(names)) != len(names):
        errs.add(_cel(path, "array", "Listener name must be unique within the Gateway"))
    combos = [(lst.port, lst.protocol, lst.hostname) for lst in listeners]
    if len(set(combos)) != len(combos):
        errs.add(
            _cel(path, "array", "Combination of port, protocol and hostname must be unique for each listener")
        )


def _is_ip(value: str) -> bool:
    return addresses.parse_ip(value) is not None


_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
_IP_FORMAT = "must be of type ipv4 or ipv6 when type is IPAddress"


class GatewaySpecAddress(Model):
    type: AddressType = "IPAddress"
    value: Annotated[str, max_length(253)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        # The CRD's oneOf: an IPAddress value must have the ipv4 or ipv6 format.
        if self.type == "IPAddress" and self.value is not None and not _is_ip(self.value):
            errs.add(invalid(path.child("value"), self.value, _IP_FORMAT))
        if self.type == "Hostname" and self.value is not None and not _HOSTNAME_RE.fullmatch(self.value):
            errs.add(
                _cel(
                    path,
                    "object",
                    f"Hostname value must be empty or contain only valid characters (matching {HOSTNAME_PATTERN})",
                )
            )


def _check_spec_addresses(addresses: Sequence[GatewaySpecAddress], path: FieldPath, errs: ErrorList) -> None:
    for address_type in ("IPAddress", "Hostname"):
        values = [a.value for a in addresses if a.type == address_type and a.value is not None]
        if len(set(values)) != len(values):
            errs.add(_cel(path, "array", f"{address_type} values must be unique"))


def _check_infrastructure_keys(keys: Iterable[str], what: str, path: FieldPath, errs: ErrorList) -> None:
    keys = list(keys)
    if not all(_QUALIFIED_KEY.fullmatch(k) for k in keys):
        errs.add(
            _cel(
                path,
                "object",
                f"{what} keys must be in the form of an optional DNS subdomain prefix followed by a required name "
                "segment of up to 63 characters.",
            )
        )
    if not all(len(k.split("/")[0]) < 253 for k in keys):
        errs.add(
            _cel(
                path,
                "object",
                f"If specified, the {what.lower()} key's prefix must be a DNS subdomain not longer than 253 characters "
                "in total.",
            )
        )


class LocalParametersReference(Model):
    group: Group
    kind: KindName
    name: Annotated[str, min_length(1), max_length(253)]


class GatewayInfrastructure(Model):
    labels: dict[str, LabelValue] | None = None
    annotations: dict[str, AnnotationValue] | None = None
    parameters_ref: LocalParametersReference | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_max_properties(self.labels, 8, path.child("labels"), errs)
        _check_max_properties(self.annotations, 16, path.child("annotations"), errs)
        if self.labels:
            _check_infrastructure_keys(self.labels, "Label", path.child("labels"), errs)
        if self.annotations:
            _check_infrastructure_keys(self.annotations, "Annotation", path.child("annotations"), errs)


class ListenerNamespaces(Model):
    from_: Literal["All", "Selector", "Same", "None"] = Field(default="None", alias="from")
    selector: LabelSelector | None = None


class AllowedListeners(Model):
    namespaces: ListenerNamespaces = Field(default_factory=ListenerNamespaces)


class GatewayBackendTLS(Model):
    client_certificate_ref: SecretObjectReference | None = None


class FrontendTLSValidation(Model):
    ca_certificate_refs: Annotated[list[ObjectReference], min_items(1), max_items(16)]
    mode: Literal["AllowValidOnly", "AllowInsecureFallback"] = "AllowValidOnly"


class TLSConfig(Model):
    validation: FrontendTLSValidation | None = None


class TLSPortConfig(Model):
    port: PortNumber
    tls: TLSConfig


class FrontendTLSConfig(Model):
    default: TLSConfig
    per_port: Annotated[list[TLSPortConfig], max_items(64)] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        ports = [p.port for p in self.per_port or []]
        if len(set(ports)) != len(ports):
            errs.add(
                _cel(
                    path.child("perPort"),
                    "array",
                    "Port for TLS configuration must be unique within the Gateway",
                )
            )


class GatewayTLSConfig(Model):
    backend: GatewayBackendTLS | None = None
    frontend: FrontendTLSConfig | None = None


class GatewaySpec(Model):
    gateway_class_name: ObjectName
    listeners: Annotated[list[Listener], min_items(1), max_items(64)]
    addresses: Annotated[list[GatewaySpecAddress], max_items(16)] | None = None
    infrastructure: GatewayInfrastructure | None = None
    allowed_listeners: AllowedListeners | None = None
    tls: GatewayTLSConfig | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_listeners(self.listeners, path.child("listeners"), errs)
        if self.addresses:
            _check_spec_addresses(self.addresses, path.child("addresses"), errs)


class GatewayStatusAddress(Model):
    type: AddressType = "IPAddress"
    value: Annotated[str, min_length(1), max_length(253)]

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.type == "IPAddress" and not _is_ip(self.value):
            errs.add(invalid(path.child("value"), self.value, _IP_FORMAT))
        if self.type == "Hostname" and not _HOSTNAME_RE.fullmatch(self.value):
            errs.add(
                _cel(
                    path,
                    "object",
                    f"Hostname value must only contain valid characters (matching {HOSTNAME_PATTERN})",
                )
            )


class ListenerStatus(Model):
    name: SectionName
    supported_kinds: Annotated[list[RouteGroupKind], max_items(8)] | None = None
    attached_routes: int
    conditions: Conditions

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_conditions(self.conditions, path.child("conditions"), errs)


class GatewayStatus(Model):
    addresses: Annotated[list[GatewayStatusAddress], max_items(16)] | None = None
    conditions: Conditions = Field(default_factory=lambda: [_pending("Accepted"), _pending("Programmed")])
    listeners: Annotated[list[ListenerStatus], max_items(64)] | None = None
    attached_listener_sets: int | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        _check_conditions(self.conditions, path.child("conditions"), errs)
        if self.listeners:
            _map_key_duplicates([lst.name for lst in self.listeners], "name", path.child("listeners"), errs)


class Gateway(Resource):
    api_version: Literal["gateway.networking.k8s.io/v1"] = "gateway.networking.k8s.io/v1"
    kind: Literal["Gateway"] = "Gateway"
    spec: GatewaySpec
    status: GatewayStatus = Field(default_factory=GatewayStatus)


# ---------------------------------------------------------------------------------------------------
# ReferenceGrant (referencegrant_types.go), served at v1 and v1beta1 with one schema.


class ReferenceGrantFrom(Model):
    group: Group
    kind: KindName
    namespace: Namespace


class ReferenceGrantTo(Model):
    group: Group
    kind: KindName
    name: ObjectName | None = None


class ReferenceGrantSpec(Model):
    from_: Annotated[list[ReferenceGrantFrom], min_items(1), max_items(16)] = Field(alias="from")
    to: Annotated[list[ReferenceGrantTo], min_items(1), max_items(16)]


class ReferenceGrant(Resource):
    api_version: Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"] = (
        "gateway.networking.k8s.io/v1"
    )
    kind: Literal["ReferenceGrant"] = "ReferenceGrant"
    spec: ReferenceGrantSpec


# ---------------------------------------------------------------------------------------------------
# Table columns (the CRDs' additionalPrinterColumns) and the kinds


def _condition_status(conditions: list[Condition], condition_type: str) -> str:
    c = find_condition(conditions, condition_type)
    return c.status if c else ""


def _gateway_addresses(gw: Gateway) -> str:
    return ",".join(a.value for a in gw.status.addresses or [])


_CATEGORIES = ("gateway-api",)

KINDS: list[Kind] = [
    Kind(
        group=GROUP,
        version="v1",
        kind="GatewayClass",
        plural="gatewayclasses",
        model=GatewayClass,
        namespaced=False,
        short_names=("gc",),
        categories=_CATEGORIES,
        columns=(
            Column("Controller", lambda o: o.spec.controller_name),
            Column("Accepted", lambda o: _condition_status(o.status.conditions, "Accepted")),
            Column("Description", lambda o: o.spec.description or "", priority=1),
        ),
        subresources=("status",),
    ),
    Kind(
        group=GROUP,
        version="v1",
        kind="Gateway",
        plural="gateways",
        model=Gateway,
        short_names=("gtw",),
        categories=_CATEGORIES,
        columns=(
            Column("Class", lambda o: o.spec.gateway_class_name),
            Column("Address", _gateway_addresses),
            Column("Programmed", lambda o: _condition_status(o.status.conditions, "Programmed")),
        ),
        subresources=("status",),
    ),
    Kind(
        group=GROUP,
        version="v1",
        kind="HTTPRoute",
        plural="httproutes",
        model=HTTPRoute,
        categories=_CATEGORIES,
        columns=(Column("Hostnames", _hostnames_column),),
        subresources=("status",),
    ),
    Kind(
        group=GROUP,
        version="v1",
        kind="GRPCRoute",
        plural="grpcroutes",
        model=GRPCRoute,
        categories=_CATEGORIES,
        columns=(Column("Hostnames", _hostnames_column),),
        subresources=("status",),
    ),
    # Upstream's ReferenceGrant has no status subresource; v1 first so that unqualified names resolve to it.
    *(
        Kind(
            group=GROUP,
            version=version,
            kind="ReferenceGrant",
            plural="referencegrants",
            model=ReferenceGrant,
            short_names=("refgrant",),
            categories=_CATEGORIES,
        )
        for version in ("v1", "v1beta1")
    ),
]
