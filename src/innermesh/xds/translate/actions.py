"""One route rule -> Envoy routes (one per match, each a copy of the rule's action).

What a rule does, in this order of decision:

1. A rule with a regular expression that RE2 and Python would not read alike is left out.
2. A rule the mesh cannot implement as written (``api.attachment.rule_problems``, which route status
   reports too: a filter the mesh lacks, such as CORS or anything but the header modifiers on a
   backendRef, or an ExtensionRef that is not a FaultInjection or names none that exists) answers
   every request it matches with 500 (a ``direct_response`` whose body says why): upstream says a
   filter must never be skipped, and its requests must not fall through to another rule either.
3. A RequestRedirect answers with a redirect.
4. Otherwise requests are forwarded to the backendRefs by weight. A backendRef that cannot be resolved
   (``backends.resolve``) stands for an ``invalid|...`` cluster that Envoy and the sidecar are never
   given, so its share of requests gets the route's ``cluster_not_found_response_code``: 500 for
   HTTPRoute, 503 for GRPCRoute (gRPC reads it as UNAVAILABLE, which GRPCRoute requires); proxyless
   gRPC gets it as a cluster without endpoints (see ``outbound``). Weight-0 refs get nothing; when
   nothing is left, or nothing valid, every request gets that status directly.

Timeouts: ``timeouts.request`` -> ``RouteAction.timeout``, and ``0s`` when unset, because Gateway API
routes have no timeout unless one is given while Envoy's default is 15 s. ``timeouts.backendRequest``
-> ``retry_policy.per_try_timeout``. A ``retry`` -> ``retry_policy``: ``connect-failure`` and
``refused-stream`` (requests the backend never processed, which upstream says to retry; not
``reset``, since upstream says not to retry what the backend may have processed), plus
``retriable-status-codes`` for ``codes``; ``attempts`` retries (1 when unset, Envoy's default; an
explicit 0 disables retries); ``backoff`` as the base interval; each retry to an endpoint not tried
yet when there is one (``previous_hosts``).

Proxyless gRPC reads a subset (gRFC A28, A31, A33, A42, A44): the request timeout goes into
``max_stream_duration``, mirrors are left out (gRPC has none), and a retry policy is only written with at
least one retry (gRPC NACKs ``num_retries: 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from innermesh.api.attachment import Unresolved, rule_problems
from innermesh.api.gateway import (
    GRPCBackendRef,
    GRPCRouteMatch,
    GRPCRouteRule,
    HTTPBackendRef,
    HTTPRouteRule,
)
from innermesh.xds.state import MeshState, Route
from innermesh.xds.translate import filters, hashing
from innermesh.xds.translate.attachment import StateWorld
from innermesh.xds.translate.backends import Target, resolve
from innermesh.xds.translate.matches import (
    bad_regexes,
    grpc_match,
    grpc_rule_regexes,
    http_match,
    http_rule_regexes,
)
from innermesh.xds.translate.naming import invalid_cluster, route_name
from innermesh.xds.translate.precedence import MatchKey, grpc_match_key, http_match_key
from innermesh.xds.translate.protos import duration, gateway_duration, pack, u32

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
HOST_SELECTION_ATTEMPTS = 5  # Istio's choice: tries to find an endpoint not yet tried
_NOT_FOUND_HTTP = rc.RouteAction.INTERNAL_SERVER_ERROR
_NOT_FOUND_GRPC = rc.RouteAction.SERVICE_UNAVAILABLE


@dataclass
class Clusters:
    """The clusters the routes built so far send to, by name (filled as routes are built): Service
    ports, and the names standing for backendRefs that cannot be resolved."""

    targets: dict[str, Target] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)

    def add(self, target: Target) -> str:
        self.targets[target.cluster] = target
        return target.cluster

    def add_invalid(self, name: str) -> str:
        self.invalid.add(name)
        return name


@dataclass(frozen=True)
class RuleContext:
    state: MeshState
    route: Route
    rule_index: int
    listener_port: int  # the Service port the client called
    proxyless: bool
    clusters: Clusters

    @property
    def grpc(self) -> bool:
        return self.route.kind == "GRPCRoute"

    @property
    def error_status(self) -> int:
        return 503 if self.grpc else 500


def _direct(status: int, reason: str) -> rc.DirectResponseAction:
    return rc.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=reason))


def _problems(ctx: RuleContext) -> list[str]:
    """Why the rule cannot be implemented as written (it then answers 500); empty when it can."""
    return [p.message for p in rule_problems(ctx.route, ctx.rule_index, StateWorld(ctx.state))]


def _rule_error(ctx: RuleContext, problems: list[str]) -> rc.DirectResponseAction:
    route = ctx.route
    where = f"{route.kind} {route.namespace}/{route.name} rules[{ctx.rule_index}]"
    return _direct(500, f"innermesh: {where}: {'; '.join(problems)}")


def _apply_rule_filters(ctx: RuleContext, template: rc.Route, rule_filters: list[Any]) -> None:
    """Header modifiers and faults onto ``template`` (a rule whose ExtensionRefs resolve)."""
    for f in rule_filters:
        if f.type == "RequestHeaderModifier":
            filters.request_headers(template, f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            filters.response_headers(template, f.response_header_modifier)
        elif f.type == "ExtensionRef":
            fi = ctx.state.fault_injections[(ctx.route.namespace, f.extension_ref.name)]
            template.typed_per_filter_config[filters.FAULT_FILTER].CopyFrom(pack(filters.fault(fi)))


def _mirrors(ctx: RuleContext, action: rc.RouteAction, rule_filters: list[Any]) -> None:
    if ctx.proxyless:
        return
    for f in rule_filters:
        if f.type != "RequestMirror":
            continue
        # Upstream: a mirror whose backend cannot be resolved is dropped, not answered with errors.
        target = resolve(ctx.state, ctx.route, f.request_mirror.backend_ref)
        if isinstance(target, Target):
            action.request_mirror_policies.append(filters.mirror(ctx.clusters.add(target), f.request_mirror))


def _forward(
    ctx: RuleContext, refs: Sequence[HTTPBackendRef | GRPCBackendRef]
) -> rc.RouteAction | rc.DirectResponseAction:
    weighted: list[rc.WeightedCluster.ClusterWeight] = []
    targets: list[Target] = []
    invalid: list[str] = []
    unresolved: list[str] = []
    for i, ref in enumerate(refs):
        if ref.weight == 0:
            continue
        target = resolve(ctx.state, ctx.route, ref)
        entry = rc.WeightedCluster.ClusterWeight(weight=u32(ref.weight))
        if isinstance(target, Unresolved):
            entry.name = invalid_cluster(ctx.route, ctx.rule_index, i)
            invalid.append(entry.name)
            unresolved.append(target.message)
        else:
            entry.name = target.cluster
            targets.append(target)
            for f in ref.filters or []:
                if f.request_header_modifier is not None:
                    filters.request_headers(entry, f.request_header_modifier)
                if f.response_header_modifier is not None:
                    filters.response_headers(entry, f.response_header_modifier)
        weighted.append(entry)
    if not targets:
        route = ctx.route
        if weighted:
            what = f"no backendRef can be resolved ({'; '.join(unresolved)})"
        else:
            what = "no backendRef has a weight above 0"
        where = f"{route.kind} {route.namespace}/{route.name} rules[{ctx.rule_index}]"
        return _direct(ctx.error_status, f"innermesh: {where}: {what}")
    for target in targets:
        ctx.clusters.add(target)
    for name in invalid:
        ctx.clusters.add_invalid(name)
    action = rc.RouteAction(cluster_not_found_response_code=_NOT_FOUND_GRPC if ctx.grpc else _NOT_FOUND_HTTP)
    single = weighted[0]
    plain = not (single.request_headers_to_add or single.request_headers_to_remove)
    plain = plain and not (single.response_headers_to_add or single.response_headers_to_remove)
    if len(weighted) == 1 and plain:
        action.cluster = single.name
    else:
        action.weighted_clusters.clusters.extend(weighted)
    action.hash_policy.extend(hashing.route_hash_policies(ctx.state, targets))
    return action


def _retry(rule: HTTPRouteRule, proxyless: bool) -> rc.RetryPolicy | None:
    retry = rule.retry
    backend_timeout = rule.timeouts.backend_request if rule.timeouts is not None else None
    retries = 0 if retry is None else (1 if retry.attempts is None else retry.attempts)
    if retries == 0 and (backend_timeout is None or proxyless):
        return None
    policy = rc.RetryPolicy(num_retries=u32(retries))
    if retry is not None and retries:
        on = ["connect-failure", "refused-stream"]
        if retry.codes:
            on.append("retriable-status-codes")
            policy.retriable_status_codes.extend(retry.codes)
        policy.retry_on = ",".join(on)
        backoff = gateway_duration(retry.backoff) if retry.backoff is not None else None
        if backoff is not None and backoff.ToNanoseconds() > 0:  # Envoy requires a positive interval
            policy.retry_back_off.base_interval.CopyFrom(backoff)
        if not proxyless:
            # A retry goes to another endpoint when there is one (Envoy may otherwise pick the same).
            policy.retry_host_predicate.append(
                rc.RetryPolicy.RetryHostPredicate(
                    name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
                )
            )
            policy.host_selection_retry_max_attempts = HOST_SELECTION_ATTEMPTS
    if backend_timeout is not None:
        policy.per_try_timeout.CopyFrom(gateway_duration(backend_timeout))
    return policy


def _timeouts(action: rc.RouteAction, rule: HTTPRouteRule | None, proxyless: bool) -> None:
    request = rule.timeouts.request if rule is not None and rule.timeouts is not None else None
    action.timeout.CopyFrom(gateway_duration(request) if request is not None else duration(0))
    if proxyless and request is not None and action.timeout.ToNanoseconds() > 0:
        action.max_stream_duration.max_stream_duration.CopyFrom(action.timeout)
    if rule is not None:
        retry = _retry(rule, proxyless)
        if retry is not None:
            action.retry_policy.CopyFrom(retry)


Entry = tuple[MatchKey, int, rc.Route]  # (precedence, match index, route)


def _expand(
    ctx: RuleContext, template: rc.Route, matches: list[tuple[MatchKey, rc.RouteMatch]]
) -> list[Entry]:
    out: list[Entry] = []
    for j, (key, match) in enumerate(matches):
        r = rc.Route()
        r.CopyFrom(template)
        r.name = route_name(ctx.route, ctx.rule_index, j)
        r.match.CopyFrom(match)
        out.append((key, j, r))
    return out


def http_rule(ctx: RuleContext, rule: HTTPRouteRule) -> list[Entry]:
    if bad_regexes(http_rule_regexes(rule)):
        return []
    rule_filters = list(rule.filters or [])
    template = rc.Route()
    # replacePrefixMatch needs exactly one PathPrefix match (a CEL rule of the API), whose prefix it replaces.
    matched_prefix = rule.matches[0].path.value if len(rule.matches) == 1 else "/"
    redirect = next((f.request_redirect for f in rule_filters if f.request_redirect is not None), None)
    rewrite = next((f.url_rewrite for f in rule_filters if f.url_rewrite is not None), None)
    problems = _problems(ctx)
    if problems:
        template.direct_response.CopyFrom(_rule_error(ctx, problems))
    elif redirect is not None:
        _apply_rule_filters(ctx, template, rule_filters)
        template.redirect.CopyFrom(filters.redirect(redirect, matched_prefix, ctx.listener_port))
    else:
        _apply_rule_filters(ctx, template, rule_filters)
        action = _forward(ctx, list(rule.backend_refs or []))
        if isinstance(action, rc.DirectResponseAction):
            template.direct_response.CopyFrom(action)
        else:
            if rewrite is not None:
                filters.url_rewrite(action, rewrite.hostname, rewrite.path, matched_prefix)
            _mirrors(ctx, action, rule_filters)
            _timeouts(action, rule, ctx.proxyless)
            template.route.CopyFrom(action)
    return _expand(
        ctx, template, [(http_match_key(m), http_match(m, proxyless=ctx.proxyless)) for m in rule.matches]
    )


def grpc_rule(ctx: RuleContext, rule: GRPCRouteRule) -> list[Entry]:
    if bad_regexes(grpc_rule_regexes(rule)):
        return []
    rule_filters = list(rule.filters or [])
    template = rc.Route()
    problems = _problems(ctx)
    if problems:
        template.direct_response.CopyFrom(_rule_error(ctx, problems))
    else:
        _apply_rule_filters(ctx, template, rule_filters)
        action = _forward(ctx, list(rule.backend_refs or []))
        if isinstance(action, rc.DirectResponseAction):
            template.direct_response.CopyFrom(action)
        else:
            _mirrors(ctx, action, rule_filters)
            _timeouts(action, None, ctx.proxyless)
            template.route.CopyFrom(action)
    matches: list[GRPCRouteMatch | None] = list(rule.matches or []) or [None]
    return _expand(
        ctx, template, [(grpc_match_key(m), grpc_match(m, proxyless=ctx.proxyless)) for m in matches]
    )


def default_action(state: MeshState, target: Target) -> rc.RouteAction:
    """Where a Service port's requests go when no route is attached: its own endpoints."""
    action = rc.RouteAction(cluster=target.cluster, timeout=duration(0))
    action.hash_policy.extend(hashing.route_hash_policies(state, [target]))
    return action
