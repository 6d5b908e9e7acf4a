"""HTTPRoute and GRPCRoute matches as Envoy ``RouteMatch`` messages.

HTTPRoute:

- ``Exact`` -> ``path``; ``RegularExpression`` -> ``safe_regex`` (RE2, matched against the whole path);
- ``PathPrefix`` -> ``path_separated_prefix`` (Envoy's element-wise prefix: ``/abc`` matches ``/abc``
  and ``/abc/def``, not ``/abcd``), or ``prefix: /`` for ``/``. Proxyless gRPC NACKs
  ``path_separated_prefix``, so for it a prefix becomes ``safe_regex: <prefix>(/.*)?``;
- headers -> ``headers[].string_match`` (names lower-case: HTTP/2 and gRPC carry them so);
- method -> a ``:method`` header match; query parameters -> ``query_parameters[].string_match``.

GRPCRoute method matches become paths, since a gRPC call's path is ``/<service>/<method>``: both given
-> ``path``; service only -> ``prefix: /<service>/``; method only or regular expressions ->
``safe_regex``. A rule without matches matches every gRPC request (``prefix: /``). For the sidecar every
GRPCRoute match also sets ``grpc`` (content-type ``application/grpc`` or ``application/grpc+...``), so
that a GRPCRoute never takes plain HTTP requests; proxyless gRPC gets no ``grpc`` field, as every call
of its channel is gRPC and gRFC A28 ignores the field anyway.

Regular expressions must mean the same to RE2 (Envoy, gRPC) and to Python's ``re`` (our sidecar);
``regex_problems`` finds the ones that would not, and a rule holding one is left out (the Gateway API
allows ignoring an invalid rule), so that one bad pattern cannot make a proxy reject the whole route
table.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc

from innermesh.api.gateway import GRPCRouteMatch, GRPCRouteRule, HTTPRouteMatch, HTTPRouteRule
from innermesh.api.mesh import regex_problems
from innermesh.xds.translate.protos import exact, re_escape, regex, regex_string

_ANY_SEGMENT = "[^/]+"


def _string_match(match_type: str, value: str) -> Any:
    return regex_string(value) if match_type == "RegularExpression" else exact(value)


def http_match(match: HTTPRouteMatch, *, proxyless: bool) -> rc.RouteMatch:
    out = rc.RouteMatch()
    path = match.path
    if path.type == "Exact":
        out.path = path.value
    elif path.type == "RegularExpression":
        out.safe_regex.CopyFrom(regex(path.value))
    else:
        prefix = path.value.rstrip("/")
        if not prefix:
            out.prefix = "/"
        elif proxyless:
            out.safe_regex.CopyFrom(regex(f"{re_escape(prefix)}(/.*)?"))
        else:
            out.path_separated_prefix = prefix
    for h in match.headers or []:
        out.headers.append(rc.HeaderMatcher(name=h.name.lower(), string_match=_string_match(h.type, h.value)))
    if match.method is not None:
        out.headers.append(rc.HeaderMatcher(name=":method", string_match=exact(match.method)))
    for q in match.query_params or []:
        out.query_parameters.append(
            rc.QueryParameterMatcher(name=q.name, string_match=_string_match(q.type, q.value))
        )
    return out


def grpc_match(match: GRPCRouteMatch | None, *, proxyless: bool) -> rc.RouteMatch:
    out = rc.RouteMatch()
    if not proxyless:
        out.grpc.SetInParent()
    method = match.method if match is not None else None
    if method is None:
        out.prefix = "/"
    elif method.type == "Exact":
        if method.service is not None and method.method is not None:
            out.path = f"/{method.service}/{method.method}"
        elif method.service is not None:
            out.prefix = f"/{method.service}/"
        else:
            out.safe_regex.CopyFrom(regex(f"/{_ANY_SEGMENT}/{re_escape(method.method or '')}"))
    else:
        service = f"(?:{method.service})" if method.service is not None else _ANY_SEGMENT
        name = f"(?:{method.method})" if method.method is not None else _ANY_SEGMENT
        out.safe_regex.CopyFrom(regex(f"/{service}/{name}"))
    for h in (match.headers if match is not None else None) or []:
        out.headers.append(rc.HeaderMatcher(name=h.name.lower(), string_match=_string_match(h.type, h.value)))
    return out


def http_rule_regexes(rule: HTTPRouteRule) -> list[str]:
    out: list[str] = []
    for m in rule.matches:
        if m.path.type == "RegularExpression":
            out.append(m.path.value)
        out += [h.value for h in m.headers or [] if h.type == "RegularExpression"]
        out += [q.value for q in m.query_params or [] if q.type == "RegularExpression"]
    return out


def grpc_rule_regexes(rule: GRPCRouteRule) -> list[str]:
    out: list[str] = []
    for m in rule.matches or []:
        if m.method is not None and m.method.type == "RegularExpression":
            out += [v for v in (m.method.service, m.method.method) if v is not None]
        out += [h.value for h in m.headers or [] if h.type == "RegularExpression"]
    return out


def bad_regexes(patterns: list[str]) -> list[str]:
    """The patterns that RE2 and Python would not both accept with one meaning, with the reason."""
    return [f"{p!r}: {'; '.join(problems)}" for p in patterns if (problems := regex_problems(p))]
