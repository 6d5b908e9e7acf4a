"""Gateway API filters as Envoy route fields: header modifiers, redirects, URL rewrites, mirrors, faults.

Path rewrites follow the Gateway API's element-wise semantics (``HTTPPathModifier``): a trailing ``/`` of
the matched prefix or of the replacement does not count, and replacing ``/foo`` with ``/`` (or with the
empty string) turns ``/foo/bar`` into ``/bar``, not ``//bar``. Envoy's ``prefix_rewrite`` does exactly
that for a non-empty replacement, since the route matched ``/foo`` element-wise; for an empty
replacement it would leave ``/bar``'s slash doubled or missing, so that case is a ``regex_rewrite``
(``^/foo/*`` -> ``/``). A full-path replacement is a ``regex_rewrite`` of the whole path (``^/.*$``).
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.matcher.v3 import regex_pb2

from innermesh.api.gateway import (
    HTTPHeaderFilter,
    HTTPPathModifier,
    HTTPRequestMirrorFilter,
    HTTPRequestRedirectFilter,
)
from innermesh.api.mesh import FaultInjection
from innermesh.xds.translate.protos import MILLION, duration, per_million, re_escape, regex

_SET = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_SCHEME_PORTS = {"http": 80, "https": 443}


# -- headers --------------------------------------------------------------------------------------------


def header_options(modifier: HTTPHeaderFilter) -> list[base_pb2.HeaderValueOption]:
    """``set`` overwrites, ``add`` appends (the Gateway API's words, Envoy's append actions)."""
    out = [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=h.name.lower(), value=h.value), append_action=_SET
        )
        for h in modifier.set or []
    ]
    out += [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=h.name.lower(), value=h.value), append_action=_ADD
        )
        for h in modifier.add or []
    ]
    return out


def header_removals(modifier: HTTPHeaderFilter) -> list[str]:
    return [name.lower() for name in modifier.remove or []]


def request_headers(target: Any, modifier: HTTPHeaderFilter) -> None:
    """Apply a RequestHeaderModifier to ``target`` (a Route or a WeightedCluster.ClusterWeight)."""
    target.request_headers_to_add.extend(header_options(modifier))
    target.request_headers_to_remove.extend(header_removals(modifier))


def response_headers(target: Any, modifier: HTTPHeaderFilter) -> None:
    target.response_headers_to_add.extend(header_options(modifier))
    target.response_headers_to_remove.extend(header_removals(modifier))


# -- paths ----------------------------------------------------------------------------------------------


def _full_path(value: str) -> regex_pb2.RegexMatchAndSubstitute:
    # A backslash in the substitution would start a group reference.
    return regex_pb2.RegexMatchAndSubstitute(pattern=regex("^/.*$"), substitution=value.replace("\\", "\\\\"))


def _replace_prefix(target: Any, matched_prefix: str, replacement: str) -> None:
    """Set ``target``'s (a RouteAction's or RedirectAction's) prefix_rewrite or regex_rewrite so that
    ``matched_prefix`` is replaced by ``replacement`` element-wise."""
    prefix = matched_prefix.rstrip("/")
    value = replacement.rstrip("/")
    if not prefix:
        # The route matched "/" (``prefix: /``): the whole path follows the new prefix.
        target.prefix_rewrite = value + "/"
    elif value:
        target.prefix_rewrite = value
    else:
        target.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(pattern=regex(f"^{re_escape(prefix)}/*"), substitution="/")
        )


def _path_modifier(target: Any, modifier: HTTPPathModifier, matched_prefix: str, *, redirect: bool) -> None:
    if modifier.type == "ReplaceFullPath":
        value = modifier.replace_full_path or "/"
        if redirect:
            target.path_redirect = value
        else:
            target.regex_rewrite.CopyFrom(_full_path(value))
    else:
        _replace_prefix(target, matched_prefix, modifier.replace_prefix_match or "")


def url_rewrite(
    action: rc.RouteAction, hostname: str | None, path: HTTPPathModifier | None, matched_prefix: str
) -> None:
    if hostname is not None:
        action.host_rewrite_literal = hostname
    if path is not None:
        _path_modifier(action, path, matched_prefix, redirect=False)


def redirect(f: HTTPRequestRedirectFilter, matched_prefix: str, listener_port: int) -> rc.RedirectAction:
    """A RequestRedirect. The port is always written, derived as the Gateway API says when absent: the
    well-known port of a changed scheme, else the port the client called (the Service port). Leaving
    out a well-known port from ``Location`` is the proxy's job when it builds the header."""
    out = rc.RedirectAction(response_code=_REDIRECT_CODES[f.status_code])
    if f.scheme is not None:
        out.scheme_redirect = f.scheme
    if f.hostname is not None:
        out.host_redirect = f.hostname
    if f.port is not None:
        out.port_redirect = f.port
    elif f.scheme is not None:
        out.port_redirect = _SCHEME_PORTS[f.scheme]
    else:
        out.port_redirect = listener_port
    if f.path is not None:
        _path_modifier(out, f.path, matched_prefix, redirect=True)
    return out


# -- mirrors and faults ---------------------------------------------------------------------------------


def mirror_per_million(f: HTTPRequestMirrorFilter) -> int:
    if f.percent is not None:
        return f.percent * (MILLION // 100)
    if f.fraction is not None:
        return f.fraction.numerator * MILLION // f.fraction.denominator
    return MILLION


def mirror(cluster: str, f: HTTPRequestMirrorFilter) -> rc.RouteAction.RequestMirrorPolicy:
    out = rc.RouteAction.RequestMirrorPolicy(cluster=cluster)
    share = mirror_per_million(f)
    if share < MILLION:
        out.runtime_fraction.default_value.CopyFrom(per_million(share))
    return out


FAULT_FILTER = "envoy.filters.http.fault"


def fault(fi: FaultInjection) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    delay = fi.spec.delay
    if delay is not None:
        out.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=duration(delay.delay_seconds()), percentage=per_million(delay.per_million())
            )
        )
    abort = fi.spec.abort
    if abort is not None:
        out.abort.percentage.CopyFrom(per_million(abort.per_million()))
        if abort.http_status is not None:
            out.abort.http_status = abort.http_status
        else:
            out.abort.grpc_status = abort.grpc_status or 0
    return out
