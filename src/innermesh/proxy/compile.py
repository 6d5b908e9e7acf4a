"""Compile the Envoy v3 resources a proxy holds into its immutable ``Plan``.

The sidecar implements a documented subset of Envoy (docs/design/0005-xds-and-proxy.md). Every
message is read against two lists: the fields we implement, and the fields that do not change what
a request gets (names, stats prefixes, metadata, access logs, tuning of buffers). Any other field
that is set raises ``PlanError`` naming the resource and the field, and the xDS client NACKs with
that message; the proxy keeps serving its previous plan. Silently ignoring a field would route
differently from what the control plane meant.

Compilation has two phases. First every resource is read into plain values (this is where errors
are raised); only when all of it is valid are clusters materialised, sharing the previous plan's
in-flight request counts (same cluster, same host and port) so that they survive the swap, without
changing anything the previous plan reads (it keeps running if this one is never installed). A
previous cluster is reused whole when nothing it was built from changed (so rings, Maglev tables and
round-robin positions survive too), else the pickers of its priority levels whose healthy endpoints
did not change. Endpoint state is kept per cluster, as Envoy keeps hosts per cluster.

Defaults we take from Envoy: a route without ``timeout`` has 15 s (``0s`` means none); a retry
policy without ``num_retries`` retries once; a fault percentage left unset is 0 %; clusters connect
within 5 s. Deviations: ``prefix_rewrite`` is slash-aware (Gateway API's ReplacePrefixMatch, see
``PathRewrite``); ``STRICT_DNS``/``LOGICAL_DNS`` clusters keep their host names and the runtime
resolves them when it connects; HTTP-level upgrade and connection settings of the connection
manager are the runtime's own.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from innermesh.proxy.balance import (
    MAGLEV_TABLE_SIZE,
    OVERPROVISIONING,
    RING_MAX,
    RING_MIN,
    BalancedCluster,
    LbSettings,
    build_cluster,
)
from innermesh.proxy.matching import (
    AnyPath,
    Conditions,
    ConnectMatch,
    ExactPath,
    HeaderMatch,
    IntRange,
    PrefixPath,
    QueryMatch,
    RegexPath,
    SeparatedPrefixPath,
    StringMatch,
    UnsupportedRegex,
    compile_re2,
    compile_substitution,
)
from innermesh.proxy.plan import (
    Backend,
    Cluster,
    ConnectionLimits,
    DirectResponse,
    EndpointState,
    Fault,
    Forward,
    HashPolicy,
    HeaderMutation,
    LbPolicy,
    ListenerPlan,
    Mirror,
    PathRewrite,
    Plan,
    Redirect,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteTable,
    UpstreamProtocol,
    VirtualHost,
)
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Message, Resources


class PlanError(ValueError):
    """A resource the sidecar cannot run as Envoy would: ``<Kind> "<name>": <field path>: <problem>``."""


class _Invalid(Exception):
    """Raised inside one resource; ``_resource`` adds the kind and name."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


@contextmanager
def _resource(kind: str, name: str) -> Iterator[None]:
    try:
        yield
    except _Invalid as e:
        where = f"{e.path}: " if e.path else ""
        raise PlanError(f'{kind} "{name}": {where}{e.problem}') from None


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _only(msg: Message, allowed: frozenset[str], path: str) -> None:
    """Refuse any set field outside ``allowed`` (implemented or without effect on requests)."""
    for fd, _ in msg.ListFields():
        if fd.name not in allowed:
            raise _Invalid(_at(path, fd.name), "not supported by the sidecar")


def _regex(matcher: Message, path: str) -> re.Pattern[bytes]:
    """An envoy.type.matcher.v3.RegexMatcher, compiled."""
    _only(matcher, frozenset({"regex", "google_re2"}), path)
    try:
        return compile_re2(matcher.regex)
    except UnsupportedRegex as e:
        raise _Invalid(_at(path, "regex"), f'"{matcher.regex}": {e}') from None


def _seconds(duration: Message) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


_PER_MILLION = {0: 10_000, 1: 100, 2: 1}  # FractionalPercent denominators HUNDRED, TEN_THOUSAND, MILLION


def _per_million(fraction: Message) -> int:
    return min(1_000_000, int(fraction.numerator) * _PER_MILLION[fraction.denominator])


# --- listeners ----------------------------------------------------------------------------------------

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
_PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_LISTENER_FIELDS = frozenset(
    {
        "name",
        "address",
        "filter_chains",
        "default_filter_chain",
        "listener_filters",
        "listener_filters_timeout",
        "continue_on_listener_filters_timeout",
        "traffic_direction",
        # no effect on what a request gets:
        "stat_prefix",
        "metadata",
        "access_log",
        "per_connection_buffer_limit_bytes",
        "drain_type",
        "tcp_backlog_size",
        "enable_reuse_port",
        "max_connections_to_accept_per_socket_event",
    }
)
_CHAIN_FIELDS = frozenset({"filter_chain_match", "filters", "name", "metadata"})
_HCM_FIELDS = frozenset(
    {
        "rds",
        "route_config",
        "http_filters",
        "upgrade_configs",
        # the runtime has its own codecs, timeouts and limits for the downstream connection:
        "stat_prefix",
        "codec_type",
        "access_log",
        "tracing",
        "generate_request_id",
        "use_remote_address",
        "xff_num_trusted_hops",
        "skip_xff_append",
        "via",
        "server_name",
        "server_header_transformation",
        "http_protocol_options",
        "http2_protocol_options",
        "common_http_protocol_options",
        "stream_idle_timeout",
        "request_timeout",
        "request_headers_timeout",
        "drain_timeout",
        "delayed_close_timeout",
        "max_request_headers_kb",
        "preserve_external_request_id",
        "always_set_request_id_in_response",
    }
)


@dataclass(frozen=True, slots=True)
class _Chain:
    kind: Literal["http", "tcp"]
    route_table: str | None = None
    tcp_cluster: str | None = None


Known = Mapping[bytes, VirtualHost]  # the previous plan's virtual hosts by digest of their source


def _listener(name: str, msg: Message, inline_tables: dict[str, RouteTable], known: Known) -> ListenerPlan:
    if msg.HasField("api_listener"):
        raise _Invalid("api_listener", "API listeners are for proxyless gRPC clients, not the sidecar")
    _only(msg, _LISTENER_FIELDS, "")
    host, port = _socket_address(msg.address, "address")
    inspector = False
    for i, lf in enumerate(msg.listener_filters):
        path = f"listener_filters[{i}]"
        _only(lf, frozenset({"name", "typed_config"}), path)
        if lf.typed_config.type_url != _HTTP_INSPECTOR:
            raise _Invalid(path, f'unsupported listener filter "{lf.name or lf.typed_config.type_url}"')
        inspector = True
    chains = [
        _chain(name, c, f"filter_chains[{i}]", inline_tables, known) for i, c in enumerate(msg.filter_chains)
    ]
    if msg.HasField("default_filter_chain"):
        chains.append(_chain(name, msg.default_filter_chain, "default_filter_chain", inline_tables, known))
    http = [c for c in chains if c.kind == "http"]
    tcp = [c for c in chains if c.kind == "tcp"]
    protocol: Literal["http", "tcp", "detect"]
    if len(chains) == 1:
        protocol = chains[0].kind
    elif inspector and len(http) == 1 and len(tcp) == 1:
        protocol = "detect"
    else:
        raise _Invalid(
            "filter_chains",
            "expected one filter chain, or one HTTP and one TCP chain with the http_inspector listener filter",
        )
    if msg.traffic_direction == 1:
        direction: Literal["inbound", "outbound"] = "inbound"
    elif msg.traffic_direction == 2:
        direction = "outbound"
    else:
        direction = "inbound" if name.startswith("inbound|") else "outbound"
    if protocol == "detect" and not msg.continue_on_listener_filters_timeout:
        # Envoy would close a connection that sent nothing in time; the sidecar serves it as TCP
        # (server-first protocols), which is what continue_on_listener_filters_timeout says.
        raise _Invalid("continue_on_listener_filters_timeout", "must be true for protocol detection")
    timeout: dict[str, float] = {}
    if msg.HasField("listener_filters_timeout"):
        timeout["detect_timeout"] = _seconds(msg.listener_filters_timeout)
        if timeout["detect_timeout"] <= 0:
            raise _Invalid("listener_filters_timeout", "0 (wait forever) is not supported")
    return ListenerPlan(
        name=name,
        host=host,
        port=port,
        direction=direction,
        protocol=protocol,
        route_table=http[0].route_table if http else None,
        tcp_cluster=tcp[0].tcp_cluster if tcp else None,
        **timeout,
    )


def _socket_address(address: Message, path: str) -> tuple[str, int]:
    if address.WhichOneof("address") != "socket_address":
        raise _Invalid(path, "only socket_address is supported")
    sa = address.socket_address
    path = _at(path, "socket_address")
    _only(sa, frozenset({"address", "port_value", "ipv4_compat"}), path)
    if not sa.address:
        raise _Invalid(_at(path, "address"), "required")
    return sa.address, sa.port_value


def _chain(
    listener: str, chain: Message, path: str, inline_tables: dict[str, RouteTable], known: Known
) -> _Chain:
    _only(chain, _CHAIN_FIELDS, path)
    if chain.HasField("filter_chain_match"):
        fcm = chain.filter_chain_match
        _only(
            fcm, frozenset({"application_protocols", "transport_protocol"}), _at(path, "filter_chain_match")
        )
        if fcm.transport_protocol not in ("", "raw_buffer"):
            raise _Invalid(
                _at(path, "filter_chain_match.transport_protocol"),
                f'"{fcm.transport_protocol}" is not supported',
            )
    if len(chain.filters) != 1:
        raise _Invalid(
            _at(path, "filters"), "expected exactly one network filter (http_connection_manager or tcp_proxy)"
        )
    f = chain.filters[0]
    fpath = _at(path, "filters[0]")
    _only(f, frozenset({"name", "typed_config"}), fpath)
    if f.typed_config.type_url == _HCM:
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        f.typed_config.Unpack(hcm)
        return _Chain(
            "http", route_table=_hcm(listener, hcm, _at(fpath, "typed_config"), inline_tables, known)
        )
    if f.typed_config.type_url == _TCP_PROXY:
        tp = tcp_proxy_pb2.TcpProxy()
        f.typed_config.Unpack(tp)
        tpath = _at(fpath, "typed_config")
        _only(tp, frozenset({"cluster", "stat_prefix", "access_log"}), tpath)
        if not tp.cluster:
            raise _Invalid(_at(tpath, "cluster"), "required (weighted_clusters are not supported)")
        return _Chain("tcp", tcp_cluster=tp.cluster)
    raise _Invalid(fpath, f'unsupported network filter "{f.name or f.typed_config.type_url}"')


def _hcm(listener: str, hcm: Message, path: str, inline_tables: dict[str, RouteTable], known: Known) -> str:
    """Check the connection manager; the name of its route table in the plan."""
    _only(hcm, _HCM_FIELDS, path)
    filters = list(hcm.http_filters)
    for i, hf in enumerate(filters):
        fpath = f"{path}.http_filters[{i}]"
        _only(hf, frozenset({"name", "typed_config", "is_optional", "disabled"}), fpath)
        kind = hf.typed_config.type_url
        if kind == _ROUTER:
            if i != len(filters) - 1:
                raise _Invalid(fpath, "the router must be the last HTTP filter")
        elif kind == _FAULT:
            # The per-route HTTPFault configures faults; one here would apply to every route.
            fault = fault_pb2.HTTPFault()
            hf.typed_config.Unpack(fault)
            if fault.HasField("delay") or fault.HasField("abort"):
                raise _Invalid(
                    _at(fpath, "typed_config"),
                    "listener-wide faults are not supported (configure them per route)",
                )
        elif not (hf.is_optional or hf.disabled):
            raise _Invalid(fpath, f'unsupported HTTP filter "{hf.name or kind}"')
    if not filters or filters[-1].typed_config.type_url != _ROUTER:
        raise _Invalid(_at(path, "http_filters"), "the last HTTP filter must be envoy.filters.http.router")
    for i, uc in enumerate(hcm.upgrade_configs):
        _upgrade(uc, f"{path}.upgrade_configs[{i}]")
    specifier = hcm.WhichOneof("route_specifier")
    if specifier == "rds":
        _only(hcm.rds, frozenset({"route_config_name", "config_source"}), _at(path, "rds"))
        if not hcm.rds.route_config_name:
            raise _Invalid(_at(path, "rds.route_config_name"), "required")
        return str(hcm.rds.route_config_name)
    if specifier == "route_config":
        key = f"{listener}#route_config"
        inline_tables[key] = _route_table(hcm.route_config, known, _at(path, "route_config"))
        return key
    raise _Invalid(path, f'unsupported route specifier "{specifier}"')


def _upgrade(uc: Message, path: str) -> bool:
    """Websocket and CONNECT upgrades (the runtime implements both). True for a CONNECT that the
    proxy terminates (``connect_config``): it answers 200 and tunnels the bytes to the endpoint."""
    _only(uc, frozenset({"upgrade_type", "enabled", "connect_config"}), path)
    if uc.upgrade_type.lower() not in ("websocket", "connect"):
        raise _Invalid(_at(path, "upgrade_type"), f'"{uc.upgrade_type}" is not supported')
    if uc.HasField("enabled") and not uc.enabled.value:
        raise _Invalid(_at(path, "enabled"), "disabled upgrades are not supported")
    for fd, value in uc.ListFields():  # the connection manager's UpgradeConfig has no connect_config
        if fd.name == "connect_config":
            _only(value, frozenset(), _at(path, "connect_config"))
            return True
    return False


# --- route configurations ---------------------------------------------------------------------------

_ROUTE_CONFIG_FIELDS = frozenset(
    {
        "name",
        "virtual_hosts",
        "validate_clusters",
        "most_specific_header_mutations_wins",
        "max_direct_response_body_size_bytes",
        "metadata",
    }
)
_VHOST_FIELDS = frozenset(
    {
        "name",
        "domains",
        "routes",
        "retry_policy",
        "metadata",
        "virtual_clusters",
        "per_request_buffer_limit_bytes",
        "request_body_buffer_limit",
    }
)
_ROUTE_FIELDS = frozenset(
    {
        "name",
        "match",
        "route",
        "redirect",
        "direct_response",
        "typed_per_filter_config",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "metadata",
        "decorator",
        "tracing",
        "stat_prefix",
        "per_request_buffer_limit_bytes",
        "request_body_buffer_limit",
    }
)
_MATCH_FIELDS = frozenset(
    {"prefix", "path", "safe_regex", "connect_matcher", "path_separated_prefix"}
    | {"case_sensitive", "headers", "query_parameters", "grpc"}
)
_ACTION_FIELDS = frozenset(
    {
        "cluster",
        "weighted_clusters",
        "cluster_not_found_response_code",
        "prefix_rewrite",
        "regex_rewrite",
        "host_rewrite_literal",
        "auto_host_rewrite",
        "timeout",
        "max_stream_duration",
        "retry_policy",
        "request_mirror_policies",
        "hash_policy",
        "upgrade_configs",
    }
)
_NOT_FOUND_STATUS = {0: 503, 1: 404, 2: 500}  # ClusterNotFoundResponseCode
_REDIRECT_STATUS = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}  # RedirectResponseCode
_DEFAULT_ROUTE_TIMEOUT = 15.0  # Envoy's, for a route without `timeout`


def _route_table(msg: Message, known: Known, path: str = "") -> RouteTable:
    _only(msg, _ROUTE_CONFIG_FIELDS, path)
    vhosts: list[VirtualHost] = []
    for i, v in enumerate(msg.virtual_hosts):
        # A virtual host depends on its own message only: one unchanged since the previous plan
        # is reused (a plan swap for an endpoint change then costs a digest per virtual host).
        digest = hashlib.blake2b(v.SerializeToString(deterministic=True), digest_size=16).digest()
        vhost = known.get(digest)
        vhosts.append(vhost or _virtual_host(v, f"{_at(path, 'virtual_hosts')}[{i}]", digest))
    try:
        return RouteTable(msg.name, tuple(vhosts))
    except ValueError as e:
        raise _Invalid(path, str(e)) from None


def _virtual_host(msg: Message, path: str, digest: bytes) -> VirtualHost:
    _only(msg, _VHOST_FIELDS, path)
    default_retry = (
        _retry(msg.retry_policy, _at(path, "retry_policy")) if msg.HasField("retry_policy") else None
    )
    routes = tuple(
        _route(r, f"{path}.routes[{i}]", f"{msg.name}/routes[{i}]", default_retry)
        for i, r in enumerate(msg.routes)
    )
    return VirtualHost(msg.name, tuple(msg.domains), routes, digest)


def _route(msg: Message, path: str, default_name: str, default_retry: RetryPolicy | None) -> Route:
    _only(msg, _ROUTE_FIELDS, path)
    if not msg.HasField("match"):
        raise _Invalid(_at(path, "match"), "required")
    match, matched_prefix = _match(msg.match, _at(path, "match"))
    action_kind = msg.WhichOneof("action")
    apath = _at(path, str(action_kind))
    action: Forward | Redirect | DirectResponse
    if action_kind == "route":
        action = _forward(
            msg.route, apath, matched_prefix, default_retry, connect=isinstance(match, ConnectMatch)
        )
    elif action_kind == "redirect":
        action = _redirect(msg.redirect, apath, matched_prefix)
    elif action_kind == "direct_response":
        action = _direct_response(msg.direct_response, apath)
    else:
        raise _Invalid(
            path, f'unsupported action "{action_kind}"' if action_kind else "an action is required"
        )
    fault = None
    for key, config in msg.typed_per_filter_config.items():
        fault = _per_filter_fault(config, f'{path}.typed_per_filter_config["{key}"]') or fault
    return Route(
        name=msg.name or default_name,
        match=match,
        action=action,
        request_headers=_mutation(msg.request_headers_to_add, msg.request_headers_to_remove, path, "request"),
        response_headers=_mutation(
            msg.response_headers_to_add, msg.response_headers_to_remove, path, "response"
        ),
        fault=fault,
    )


def _match(msg: Message, path: str) -> tuple[RouteMatch, bytes | None]:
    """The compiled match, and the prefix a prefix rewrite replaces (None where there is none)."""
    specifier = msg.WhichOneof("path_specifier")
    if specifier not in ("prefix", "path", "safe_regex", "connect_matcher", "path_separated_prefix"):
        raise _Invalid(
            path, f'unsupported path specifier "{specifier}"' if specifier else "a path specifier is required"
        )
    _only(msg, _MATCH_FIELDS, path)
    headers = tuple(_header_match(h, f"{path}.headers[{i}]") for i, h in enumerate(msg.headers))
    query = tuple(
        _query_match(q, f"{path}.query_parameters[{i}]") for i, q in enumerate(msg.query_parameters)
    )
    when = (
        Conditions(headers, query, msg.HasField("grpc")) if headers or query or msg.HasField("grpc") else None
    )
    case_sensitive = msg.case_sensitive.value if msg.HasField("case_sensitive") else True

    def fold(s: str) -> bytes:
        return s.encode() if case_sensitive else s.lower().encode()

    if specifier == "prefix":
        if not msg.prefix:
            return AnyPath(when), b""
        return PrefixPath(fold(msg.prefix), case_sensitive, when), msg.prefix.encode()
    if specifier == "path":
        return ExactPath(fold(msg.path), case_sensitive, when), msg.path.encode()
    if specifier == "path_separated_prefix":
        p = msg.path_separated_prefix
        if not p.startswith("/") or p.endswith("/") or "?" in p or "#" in p:
            raise _Invalid(_at(path, "path_separated_prefix"), f'"{p}" must start and not end with "/"')
        return SeparatedPrefixPath(fold(p), case_sensitive, when), p.encode()
    if specifier == "safe_regex":
        return RegexPath(_regex(msg.safe_regex, _at(path, "safe_regex")), when), None
    return ConnectMatch(when), None


_HEADER_STRING_KINDS: dict[str, Literal["exact", "prefix", "suffix", "contains"]] = {
    "exact_match": "exact",
    "prefix_match": "prefix",
    "suffix_match": "suffix",
    "contains_match": "contains",
}


def _header_name(raw: str, path: str) -> bytes:
    if not raw:
        raise _Invalid(path, "required")
    return raw.lower().encode()


def _header_match(msg: Message, path: str) -> HeaderMatch:
    _only(
        msg,
        frozenset(
            {"name", "invert_match", "treat_missing_header_as_empty", "string_match", "safe_regex_match"}
            | {"present_match", "range_match", *_HEADER_STRING_KINDS}
        ),
        path,
    )
    name = _header_name(msg.name, _at(path, "name"))
    kind = msg.WhichOneof("header_match_specifier")
    test: StringMatch | IntRange | None = None
    present = True
    if kind == "string_match":
        test = _string_match(msg.string_match, _at(path, "string_match"))
    elif kind == "safe_regex_match":
        test = StringMatch("regex", regex=_regex(msg.safe_regex_match, _at(path, "safe_regex_match")))
    elif kind == "range_match":
        test = IntRange(msg.range_match.start, msg.range_match.end)
    elif kind == "present_match":
        present = msg.present_match
    elif kind in _HEADER_STRING_KINDS:
        value = getattr(msg, kind)
        # Envoy's legacy exact_match with an empty value matches any value.
        if not (kind == "exact_match" and not value):
            test = StringMatch(_HEADER_STRING_KINDS[kind], value.encode())
    return HeaderMatch(name, test, present, msg.invert_match, msg.treat_missing_header_as_empty)


def _query_match(msg: Message, path: str) -> QueryMatch:
    _only(msg, frozenset({"name", "string_match", "present_match"}), path)
    if not msg.name:
        raise _Invalid(_at(path, "name"), "required")
    kind = msg.WhichOneof("query_parameter_match_specifier")
    if kind == "string_match":
        return QueryMatch(msg.name.encode(), _string_match(msg.string_match, _at(path, "string_match")))
    if kind == "present_match":
        return QueryMatch(msg.name.encode(), present=msg.present_match)
    return QueryMatch(msg.name.encode())


def _string_match(msg: Message, path: str) -> StringMatch:
    _only(msg, frozenset({"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"}), path)
    kind = msg.WhichOneof("match_pattern")
    if kind == "safe_regex":
        if msg.ignore_case:
            raise _Invalid(_at(path, "ignore_case"), "has no effect with safe_regex (Envoy refuses it)")
        return StringMatch("regex", regex=_regex(msg.safe_regex, _at(path, "safe_regex")))
    if kind not in ("exact", "prefix", "suffix", "contains"):
        raise _Invalid(path, "a match pattern is required")
    value: str = getattr(msg, kind)
    encoded = value.lower().encode() if msg.ignore_case else value.encode()
    return StringMatch(kind, encoded, msg.ignore_case)


# --- route actions -------------------------------------------------------------------------------------


def _forward(
    msg: Message, path: str, matched_prefix: bytes | None, default_retry: RetryPolicy | None, *, connect: bool
) -> Forward:
    specifier = msg.WhichOneof("cluster_specifier")
    if specifier not in ("cluster", "weighted_clusters"):
        raise _Invalid(
            path, f'unsupported cluster specifier "{specifier}"' if specifier else "a cluster is required"
        )
    _only(msg, _ACTION_FIELDS, path)
    if msg.HasField("auto_host_rewrite") and msg.auto_host_rewrite.value:
        raise _Invalid(_at(path, "auto_host_rewrite"), "not supported by the sidecar")
    if specifier == "cluster":
        backends: tuple[Backend, ...] = (Backend(msg.cluster, 1),)
    else:
        backends = _weighted(msg.weighted_clusters, _at(path, "weighted_clusters"))
    terminates = [_upgrade(uc, f"{path}.upgrade_configs[{i}]") for i, uc in enumerate(msg.upgrade_configs)]
    tunnel = any(terminates)
    if connect and not tunnel:
        # Envoy would forward the CONNECT request itself to the upstream; the sidecar only
        # terminates CONNECT.
        raise _Invalid(
            _at(path, "upgrade_configs"), "a CONNECT route needs a CONNECT upgrade with connect_config"
        )
    if tunnel and not connect:
        raise _Invalid(_at(path, "upgrade_configs"), "connect_config needs a connect_matcher route")
    timeout: float | None = _seconds(msg.timeout) if msg.HasField("timeout") else _DEFAULT_ROUTE_TIMEOUT
    if timeout == 0:
        timeout = None
    if msg.HasField("max_stream_duration"):
        msd = msg.max_stream_duration
        _only(msd, frozenset({"max_stream_duration"}), _at(path, "max_stream_duration"))
        limit = _seconds(msd.max_stream_duration)
        if limit > 0:
            timeout = limit if timeout is None else min(timeout, limit)
    return Forward(
        backends=backends,
        missing_cluster_status=_NOT_FOUND_STATUS[msg.cluster_not_found_response_code],
        timeout=timeout,
        retry=_retry(msg.retry_policy, _at(path, "retry_policy"))
        if msg.HasField("retry_policy")
        else default_retry,
        mirrors=tuple(
            _mirror(m, f"{path}.request_mirror_policies[{i}]")
            for i, m in enumerate(msg.request_mirror_policies)
        ),
        host_rewrite=msg.host_rewrite_literal.encode() if msg.host_rewrite_literal else None,
        path_rewrite=_path_rewrite(msg, path, matched_prefix),
        hash_policies=tuple(
            _hash_policy(h, f"{path}.hash_policy[{i}]") for i, h in enumerate(msg.hash_policy)
        ),
        tunnel=tunnel,
    )


def _weighted(msg: Message, path: str) -> tuple[Backend, ...]:
    _only(msg, frozenset({"clusters", "total_weight", "runtime_key_prefix"}), path)
    backends: list[Backend] = []
    for i, cw in enumerate(msg.clusters):
        cpath = f"{path}.clusters[{i}]"
        _only(
            cw,
            frozenset(
                {"name", "weight", "request_headers_to_add", "request_headers_to_remove"}
                | {"response_headers_to_add", "response_headers_to_remove", "metadata"}
            ),
            cpath,
        )
        if not cw.name:
            raise _Invalid(_at(cpath, "name"), "required")
        backends.append(
            Backend(
                cluster=cw.name,
                weight=cw.weight.value,
                request_headers=_mutation(
                    cw.request_headers_to_add, cw.request_headers_to_remove, cpath, "request"
                ),
                response_headers=_mutation(
                    cw.response_headers_to_add, cw.response_headers_to_remove, cpath, "response"
                ),
            )
        )
    total = sum(b.weight for b in backends)
    if total <= 0:
        raise _Invalid(_at(path, "clusters"), "the sum of the weights must be greater than 0")
    if msg.HasField("total_weight") and msg.total_weight.value != total:
        raise _Invalid(
            _at(path, "total_weight"), f"{msg.total_weight.value} is not the sum of the weights ({total})"
        )
    return tuple(backends)


def _path_rewrite(msg: Message, path: str, matched_prefix: bytes | None) -> PathRewrite | None:
    """``prefix_rewrite`` or ``regex_rewrite`` of a RouteAction or RedirectAction."""
    if msg.prefix_rewrite and msg.HasField("regex_rewrite"):
        raise _Invalid(path, "prefix_rewrite and regex_rewrite are exclusive")
    if msg.prefix_rewrite:
        if matched_prefix is None:
            raise _Invalid(_at(path, "prefix_rewrite"), "needs a prefix, path_separated_prefix or path match")
        return PathRewrite("prefix", msg.prefix_rewrite.encode(), matched_prefix)
    if msg.HasField("regex_rewrite"):
        rpath = _at(path, "regex_rewrite")
        rr = msg.regex_rewrite
        _only(rr, frozenset({"pattern", "substitution"}), rpath)
        pattern = _regex(rr.pattern, _at(rpath, "pattern"))
        try:
            template = compile_substitution(rr.substitution, pattern.groups)
        except UnsupportedRegex as e:
            raise _Invalid(_at(rpath, "substitution"), str(e)) from None
        return PathRewrite("regex", pattern=pattern, template=template)
    return None


def _retry(msg: Message, path: str) -> RetryPolicy:
    _only(
        msg,
        frozenset(
            {"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off"}
            | {"retry_host_predicate", "host_selection_retry_max_attempts"}
        ),
        path,
    )
    statuses: set[int] = set()
    connect_failure = reset = refused = False
    for condition in filter(None, (c.strip() for c in msg.retry_on.split(","))):
        if condition in ("5xx", "gateway-error"):
            # Envoy retries resets (refused streams among them) and connection failures under both.
            statuses |= set(range(500, 600)) if condition == "5xx" else {502, 503, 504}
            connect_failure = reset = refused = True
        elif condition == "reset":
            connect_failure = reset = True
        elif condition == "connect-failure":
            connect_failure = True
        elif condition == "retriable-status-codes":
            statuses |= set(msg.retriable_status_codes)
        elif condition == "retriable-4xx":
            statuses.add(409)
        elif condition == "refused-stream":
            refused = True
        else:
            raise _Invalid(_at(path, "retry_on"), f'unsupported retry condition "{condition}"')
    for i, predicate in enumerate(msg.retry_host_predicate):
        # We always avoid endpoints already tried (PickContext.exclude): that is previous_hosts.
        if predicate.typed_config.type_url != _PREVIOUS_HOSTS:
            raise _Invalid(f"{path}.retry_host_predicate[{i}]", f'unsupported predicate "{predicate.name}"')
    base, maximum = 0.025, None
    if msg.HasField("retry_back_off"):
        bo = msg.retry_back_off
        _only(bo, frozenset({"base_interval", "max_interval"}), _at(path, "retry_back_off"))
        base = _seconds(bo.base_interval)
        if base <= 0:
            raise _Invalid(_at(path, "retry_back_off.base_interval"), "must be greater than 0")
        if bo.HasField("max_interval"):
            maximum = _seconds(bo.max_interval)
            if maximum < base:
                raise _Invalid(
                    _at(path, "retry_back_off.max_interval"), "must not be less than base_interval"
                )
    return RetryPolicy(
        attempts=msg.num_retries.value if msg.HasField("num_retries") else 1,
        on_status=frozenset(statuses),
        on_connect_failure=connect_failure,
        on_reset=reset,
        backoff_base=base,
        per_try_timeout=(_seconds(msg.per_try_timeout) or None) if msg.HasField("per_try_timeout") else None,
        backoff_max=maximum,
        on_refused_stream=refused or reset,
    )


def _mirror(msg: Message, path: str) -> Mirror:
    _only(msg, frozenset({"cluster", "runtime_fraction", "trace_sampled"}), path)
    if not msg.cluster:
        raise _Invalid(_at(path, "cluster"), "required")
    if not msg.HasField("runtime_fraction"):
        return Mirror(msg.cluster)
    return Mirror(msg.cluster, _per_million(msg.runtime_fraction.default_value))


def _hash_policy(msg: Message, path: str) -> HashPolicy:
    kind = msg.WhichOneof("policy_specifier")
    _only(msg, frozenset({"header", "cookie", "connection_properties", "terminal"}), path)
    if kind == "header":
        _only(msg.header, frozenset({"header_name"}), _at(path, "header"))
        return HashPolicy(
            "header",
            _header_name(msg.header.header_name, _at(path, "header.header_name")),
            terminal=msg.terminal,
        )
    if kind == "cookie":
        c = msg.cookie
        _only(c, frozenset({"name", "ttl", "path"}), _at(path, "cookie"))
        if not c.name:
            raise _Invalid(_at(path, "cookie.name"), "required")
        return HashPolicy(
            "cookie",
            c.name.encode(),
            cookie_ttl=_seconds(c.ttl) if c.HasField("ttl") else None,
            cookie_path=c.path.encode() or b"/",
            terminal=msg.terminal,
        )
    if kind == "connection_properties" and msg.connection_properties.source_ip:
        return HashPolicy("source_ip", terminal=msg.terminal)
    raise _Invalid(path, f'unsupported hash policy "{kind}"' if kind else "a policy is required")


def _redirect(msg: Message, path: str, matched_prefix: bytes | None) -> Redirect:
    _only(
        msg,
        frozenset(
            {"https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect"}
            | {"prefix_rewrite", "regex_rewrite", "response_code", "strip_query"}
        ),
        path,
    )
    scheme = b"https" if msg.https_redirect else (msg.scheme_redirect.lower().encode() or None)
    rewrite = PathRewrite("full", msg.path_redirect.encode()) if msg.path_redirect else None
    if rewrite is not None and (msg.prefix_rewrite or msg.HasField("regex_rewrite")):
        raise _Invalid(path, "path_redirect excludes prefix_rewrite and regex_rewrite")
    return Redirect(
        status=_REDIRECT_STATUS[msg.response_code],
        scheme=scheme,
        host=msg.host_redirect.lower().encode() or None,
        port=msg.port_redirect or None,
        path=rewrite or _path_rewrite(msg, path, matched_prefix),
        strip_query=msg.strip_query,
    )


def _direct_response(msg: Message, path: str) -> DirectResponse:
    _only(msg, frozenset({"status", "body"}), path)
    if not 200 <= msg.status < 600:
        raise _Invalid(_at(path, "status"), f"{msg.status} is not between 200 and 599")
    body = b""
    if msg.HasField("body"):
        kind = msg.body.WhichOneof("specifier")
        if kind == "inline_string":
            body = msg.body.inline_string.encode()
        elif kind == "inline_bytes":
            body = msg.body.inline_bytes
        else:
            raise _Invalid(_at(path, "body"), f'unsupported data source "{kind}"')
    return DirectResponse(msg.status, body)


def _per_filter_fault(config: Message, path: str) -> Fault | None:
    """A route's typed_per_filter_config entry: the fault filter's HTTPFault (maybe wrapped in a
    FilterConfig). An optional config for a filter we do not have is skipped, as Envoy does."""
    if config.type_url == _FILTER_CONFIG:
        wrapper = route_components_pb2.FilterConfig()
        config.Unpack(wrapper)
        if wrapper.disabled or (wrapper.config.type_url != _FAULT and wrapper.is_optional):
            return None  # the filter is off for this route, or one we do not have and may skip
        config = wrapper.config
    if config.type_url != _FAULT:
        raise _Invalid(path, f'unsupported filter config "{config.type_url}"')
    fault = fault_pb2.HTTPFault()
    config.Unpack(fault)
    _only(
        fault,
        frozenset(
            {"delay", "abort", "disable_downstream_cluster_stats"}
            # runtime keys: the sidecar has no runtime, so their defaults (the fields above) apply
            | {"delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime"}
            | {"abort_http_status_runtime", "abort_grpc_status_runtime", "max_active_faults_runtime"}
        ),
        path,
    )
    delay_pm = 0
    seconds: float | None = None
    if fault.HasField("delay"):
        d = fault.delay
        _only(d, frozenset({"fixed_delay", "percentage"}), _at(path, "delay"))
        if not d.HasField("fixed_delay"):
            raise _Invalid(_at(path, "delay.fixed_delay"), "required (header delays are not supported)")
        seconds = _seconds(d.fixed_delay)
        delay_pm = _per_million(d.percentage)
    http_status = grpc_status = None
    abort_pm = 0
    if fault.HasField("abort"):
        a = fault.abort
        _only(a, frozenset({"http_status", "grpc_status", "percentage"}), _at(path, "abort"))
        kind = a.WhichOneof("error_type")
        if kind == "http_status":
            if not 200 <= a.http_status < 600:
                raise _Invalid(_at(path, "abort.http_status"), f"{a.http_status} is not between 200 and 599")
            http_status = a.http_status
        elif kind == "grpc_status":
            grpc_status = a.grpc_status
        else:
            raise _Invalid(_at(path, "abort"), "http_status or grpc_status is required")
        abort_pm = _per_million(a.percentage)
    if seconds is None and http_status is None and grpc_status is None:
        return None
    return Fault(seconds, delay_pm, http_status, grpc_status, abort_pm)


# --- header mutations ---------------------------------------------------------------------------------

_OVERWRITE_IF_EXISTS_OR_ADD, _ADD_IF_ABSENT, _OVERWRITE_IF_EXISTS = 2, 1, 3


def _mutation(adds: Any, removes: Any, path: str, direction: str) -> HeaderMutation | None:
    """``<direction>_headers_to_add`` / ``_to_remove`` as one HeaderMutation (None when empty)."""
    if not adds and not removes:
        return None
    by_action: dict[int, list[tuple[bytes, bytes]]] = {0: [], 1: [], 2: [], 3: []}
    for i, option in enumerate(adds):
        opath = f"{path}.{direction}_headers_to_add[{i}]"
        _only(option, frozenset({"header", "append", "append_action", "keep_empty_value"}), opath)
        name = _mutable_header(option.header.key, _at(opath, "header.key"))
        raw = option.header.raw_value or option.header.value.encode()
        value = _literal_header_value(raw, _at(opath, "header.value"))
        if not value and not option.keep_empty_value:
            continue  # Envoy skips empty values
        action = option.append_action
        if option.HasField("append"):
            if action:
                raise _Invalid(opath, "append and append_action are exclusive")
            action = 0 if option.append.value else _OVERWRITE_IF_EXISTS_OR_ADD
        by_action[action].append((name, value))
    removed = frozenset(
        _mutable_header(r, f"{path}.{direction}_headers_to_remove[{i}]") for i, r in enumerate(removes)
    )
    # Envoy overwrites in order, so the last value set for a name wins.
    sets = tuple({n: (n, v) for n, v in by_action[_OVERWRITE_IF_EXISTS_OR_ADD]}.values())
    set_if_exists = tuple({n: (n, v) for n, v in by_action[_OVERWRITE_IF_EXISTS]}.values())
    mutation = HeaderMutation(
        set=sets,
        add=tuple(by_action[0]),
        remove=removed,
        add_if_absent=tuple(by_action[_ADD_IF_ABSENT]),
        set_if_exists=set_if_exists,
    )
    return mutation if sets or removed or mutation.add or mutation.add_if_absent or set_if_exists else None


def _mutable_header(raw: str, path: str) -> bytes:
    name = _header_name(raw, path)
    if name.startswith(b":") or name == b"host":
        raise _Invalid(
            path, f'"{raw}": pseudo-headers and host may not be modified (use host_rewrite_literal)'
        )
    return name


def _literal_header_value(raw: bytes, path: str) -> bytes:
    """Envoy reads header values as format strings: ``%%`` is a literal ``%`` and ``%NAME%`` a
    command operator, which the sidecar does not evaluate."""
    if b"%" not in raw:
        return raw
    parts = raw.split(b"%%")
    if any(b"%" in p for p in parts):
        raise _Invalid(
            path, f'"{raw.decode(errors="replace")}": formatters (%...%) are not supported; write % as %%'
        )
    return b"%".join(parts)


# --- clusters ----------------------------------------------------------------------------------------

_CLUSTER_FIELDS = frozenset(
    {
        "name",
        "type",
        "eds_cluster_config",
        "load_assignment",
        "connect_timeout",
        "lb_policy",
        "least_request_lb_config",
        "ring_hash_lb_config",
        "maglev_lb_config",
        "common_lb_config",
        "circuit_breakers",
        "typed_extension_protocol_options",
        "http2_protocol_options",
        "max_requests_per_connection",
        # no effect on which endpoint serves a request or how:
        "alt_stat_name",
        "metadata",
        "per_connection_buffer_limit_bytes",
        "upstream_connection_options",
        "cleanup_interval",
        "track_cluster_stats",
        "wait_for_warm_on_init",
        "dns_lookup_family",
        "dns_refresh_rate",
        "dns_failure_refresh_rate",
        "respect_dns_ttl",
        "ignore_health_on_host_removal",
    }
)
_DISCOVERY = {0: "STATIC", 1: "STRICT_DNS", 2: "LOGICAL_DNS", 3: "EDS"}
_LB_POLICIES: dict[int, LbPolicy] = {
    0: "round_robin",
    1: "least_request",
    2: "ring_hash",
    3: "random",
    5: "maglev",
}
_HEALTHY = frozenset({0, 1})  # HealthStatus UNKNOWN, HEALTHY


@dataclass(frozen=True, slots=True)
class _EndpointSpec:
    host: str
    port: int
    zone: str
    priority: int
    weight: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class _ClusterSpec:
    """A cluster read and checked, before its endpoint state and pickers exist."""

    name: str
    protocol: UpstreamProtocol
    lb: LbSettings
    limits: ConnectionLimits
    endpoints: tuple[_EndpointSpec, ...]


def _cluster(name: str, msg: Message, assignments: Mapping[str, Message]) -> _ClusterSpec:
    _only(msg, _CLUSTER_FIELDS, "")
    kind = _DISCOVERY.get(msg.type) if msg.WhichOneof("cluster_discovery_type") in ("type", None) else None
    if kind is None:
        raise _Invalid("type", "only STATIC, STRICT_DNS, LOGICAL_DNS and EDS clusters are supported")
    policy = _LB_POLICIES.get(msg.lb_policy)
    if policy is None:
        raise _Invalid("lb_policy", f'"{_lb_policy_name(msg.lb_policy)}" is not supported')
    lb = _lb_settings(msg, policy)
    overprovisioning = OVERPROVISIONING
    endpoints: tuple[_EndpointSpec, ...] = ()
    if kind == "EDS":
        _only(msg.eds_cluster_config, frozenset({"service_name", "eds_config"}), "eds_cluster_config")
        assignment = assignments.get(msg.eds_cluster_config.service_name or name)
        if assignment is not None:
            with _resource("ClusterLoadAssignment", msg.eds_cluster_config.service_name or name):
                endpoints, overprovisioning = _assignment(assignment, "")
    elif msg.HasField("load_assignment"):
        endpoints, overprovisioning = _assignment(msg.load_assignment, "load_assignment")
    if overprovisioning != lb.overprovisioning:
        lb = LbSettings(
            lb.policy, lb.choice_count, lb.ring_min, lb.ring_max, lb.maglev_size, overprovisioning
        )
    return _ClusterSpec(name, _protocol(msg), lb, _limits(msg), endpoints)


def _lb_policy_name(value: int) -> str:
    return str(cluster_pb2.Cluster.LbPolicy.Name(value))


def _lb_settings(msg: Message, policy: LbPolicy) -> LbSettings:
    choice_count, ring_min, ring_max, maglev_size = 2, RING_MIN, RING_MAX, MAGLEV_TABLE_SIZE
    if msg.HasField("least_request_lb_config"):
        c = msg.least_request_lb_config
        _only(c, frozenset({"choice_count"}), "least_request_lb_config")
        if c.HasField("choice_count"):
            choice_count = c.choice_count.value
            if choice_count < 2:
                raise _Invalid("least_request_lb_config.choice_count", "must be at least 2")
    if msg.HasField("ring_hash_lb_config"):
        c = msg.ring_hash_lb_config
        # hash_function only changes where points land; ours is blake2b either way.
        _only(
            c, frozenset({"minimum_ring_size", "maximum_ring_size", "hash_function"}), "ring_hash_lb_config"
        )
        if c.HasField("maximum_ring_size"):
            ring_max = min(ring_max, c.maximum_ring_size.value)
        if c.HasField("minimum_ring_size"):
            ring_min = c.minimum_ring_size.value
        ring_min = min(ring_min, ring_max)
        if ring_min < 1:
            raise _Invalid("ring_hash_lb_config.minimum_ring_size", "must be at least 1")
    if msg.HasField("maglev_lb_config"):
        _only(msg.maglev_lb_config, frozenset({"table_size"}), "maglev_lb_config")
        if msg.maglev_lb_config.HasField("table_size"):
            maglev_size = msg.maglev_lb_config.table_size.value
            if not _is_prime(maglev_size) or maglev_size > MAGLEV_TABLE_SIZE:
                raise _Invalid(
                    "maglev_lb_config.table_size",
                    f"{maglev_size} must be a prime no greater than {MAGLEV_TABLE_SIZE}",
                )
    if msg.HasField("common_lb_config"):
        c = msg.common_lb_config
        _only(c, frozenset({"healthy_panic_threshold", "update_merge_window"}), "common_lb_config")
        if c.HasField("healthy_panic_threshold") and c.healthy_panic_threshold.value != 0:
            raise _Invalid("common_lb_config.healthy_panic_threshold", "only 0 (no panic mode) is supported")
    return LbSettings(policy, choice_count, ring_min, ring_max, maglev_size)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _protocol(msg: Message) -> UpstreamProtocol:
    protocol: UpstreamProtocol = "http2" if msg.HasField("http2_protocol_options") else "http1"
    for key, config in msg.typed_extension_protocol_options.items():
        path = f'typed_extension_protocol_options["{key}"]'
        if config.type_url != _HTTP_OPTIONS:
            raise _Invalid(path, f'unsupported protocol options "{config.type_url}"')
        options = http_protocol_options_pb2.HttpProtocolOptions()
        config.Unpack(options)
        _only(
            options,
            frozenset(
                {"explicit_http_config", "use_downstream_protocol_config", "common_http_protocol_options"}
            ),
            path,
        )
        kind = options.WhichOneof("upstream_protocol_options")
        if kind == "explicit_http_config":
            explicit = options.explicit_http_config.WhichOneof("protocol_config")
            if explicit == "http2_protocol_options":
                protocol = "http2"
            elif explicit != "http_protocol_options":
                raise _Invalid(_at(path, "explicit_http_config"), f'"{explicit}" is not supported')
        elif kind == "use_downstream_protocol_config":
            _only(
                options.use_downstream_protocol_config,
                frozenset({"http_protocol_options", "http2_protocol_options"}),
                _at(path, "use_downstream_protocol_config"),
            )
            protocol = "downstream"
    return protocol


def _limits(msg: Message) -> ConnectionLimits:
    values: dict[str, Any] = {}
    if msg.HasField("connect_timeout"):
        values["connect_timeout"] = _seconds(msg.connect_timeout)
    if msg.HasField("max_requests_per_connection"):
        values["max_requests_per_connection"] = msg.max_requests_per_connection.value or None
    for t_index, t in enumerate(msg.circuit_breakers.thresholds):
        path = f"circuit_breakers.thresholds[{t_index}]"
        _only(
            t,
            frozenset(
                {"priority", "max_connections", "max_pending_requests", "max_requests", "track_remaining"}
            ),
            path,
        )
        if t.priority != 0:
            continue  # HIGH priority routing does not exist here
        for name in ("max_connections", "max_pending_requests", "max_requests"):
            if t.HasField(name):
                values[name] = getattr(t, name).value
    if msg.circuit_breakers.per_host_thresholds:
        raise _Invalid("circuit_breakers.per_host_thresholds", "not supported by the sidecar")
    for key, config in msg.typed_extension_protocol_options.items():
        options = http_protocol_options_pb2.HttpProtocolOptions()
        config.Unpack(options)
        if options.HasField("common_http_protocol_options"):
            common = options.common_http_protocol_options
            path = f'typed_extension_protocol_options["{key}"].common_http_protocol_options'
            _only(
                common, frozenset({"idle_timeout", "max_requests_per_connection", "max_headers_count"}), path
            )
            if common.HasField("idle_timeout"):
                values["idle_timeout"] = _seconds(common.idle_timeout)
            if common.HasField("max_requests_per_connection"):
                values["max_requests_per_connection"] = common.max_requests_per_connection.value or None
    return ConnectionLimits(**values)


def _assignment(msg: Message, path: str) -> tuple[tuple[_EndpointSpec, ...], int]:
    """A ClusterLoadAssignment: its endpoints and the overprovisioning factor (percent)."""
    _only(msg, frozenset({"cluster_name", "endpoints", "policy"}), path)
    overprovisioning = OVERPROVISIONING
    if msg.HasField("policy"):
        _only(msg.policy, frozenset({"overprovisioning_factor", "endpoint_stale_after"}), _at(path, "policy"))
        if msg.policy.HasField("overprovisioning_factor"):
            overprovisioning = msg.policy.overprovisioning_factor.value
    specs: list[_EndpointSpec] = []
    seen: set[tuple[str, int]] = set()
    for i, group in enumerate(msg.endpoints):
        gpath = f"{_at(path, 'endpoints')}[{i}]"
        _only(
            group,
            frozenset({"locality", "lb_endpoints", "priority", "load_balancing_weight", "metadata"}),
            gpath,
        )
        for j, lbe in enumerate(group.lb_endpoints):
            epath = f"{gpath}.lb_endpoints[{j}]"
            _only(lbe, frozenset({"endpoint", "health_status", "load_balancing_weight", "metadata"}), epath)
            _only(
                lbe.endpoint,
                frozenset({"address", "hostname", "health_check_config"}),
                _at(epath, "endpoint"),
            )
            host, port = _socket_address(lbe.endpoint.address, _at(epath, "endpoint.address"))
            if (host, port) in seen:
                raise _Invalid(epath, f"endpoint {host}:{port} is listed twice")
            seen.add((host, port))
            weight = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
            if weight < 1:
                raise _Invalid(_at(epath, "load_balancing_weight"), "must be at least 1")
            specs.append(
                _EndpointSpec(
                    host, port, group.locality.zone, group.priority, weight, lbe.health_status in _HEALTHY
                )
            )
    return tuple(specs), overprovisioning


def _materialise(spec: _ClusterSpec, previous: Cluster | None, rng: random.Random) -> BalancedCluster:
    """The cluster with its endpoint state: the previous plan's object for an address whose zone,
    priority, weight and health are unchanged, else a new one sharing the old one's in-flight count
    (``ActiveRequests``), so that nothing the running plan reads is changed; the previous cluster
    itself when nothing changed, and its pickers for the priority levels that did not change."""
    signature = (spec.protocol, spec.lb, spec.limits, spec.endpoints)
    balanced = previous if isinstance(previous, BalancedCluster) else None
    if balanced is not None and balanced.signature == signature:
        return balanced
    known = {(e.host, e.port): e for e in previous.endpoints} if previous is not None else {}
    states: list[EndpointState] = []
    for e in spec.endpoints:
        old = known.get((e.host, e.port))
        if old is not None and (old.zone, old.priority, old.weight, old.healthy) == (
            e.zone,
            e.priority,
            e.weight,
            e.healthy,
        ):
            states.append(old)
        else:
            shared = old.requests if old is not None else None
            states.append(
                EndpointState(e.host, e.port, e.zone, e.priority, e.weight, e.healthy, requests=shared)
            )
    return build_cluster(
        spec.name, spec.protocol, spec.lb, spec.limits, tuple(states), rng, signature, previous=balanced
    )


# --- the whole plan -------------------------------------------------------------------------------------


def compile_plan(
    resources: Resources, previous: Plan | None, *, version: str, rng: random.Random | None = None
) -> Plan:
    """The plan for ``resources``, carrying endpoint state over from ``previous``.

    Raises PlanError (nothing of ``previous`` is changed then). ``rng`` drives the balancers'
    random choices (injected by tests)."""
    rng = rng or random.Random()
    known: dict[bytes, VirtualHost] = {}
    if previous is not None:
        for table in previous.route_tables.values():
            known.update((v.digest, v) for v in table.virtual_hosts if v.digest)
    assignments = resources.get(ENDPOINT, {})
    specs: list[_ClusterSpec] = []
    for name, msg in sorted(resources.get(CLUSTER, {}).items()):
        with _resource("Cluster", name):
            specs.append(_cluster(name, msg, assignments))
    route_tables: dict[str, RouteTable] = {}
    for name, msg in sorted(resources.get(ROUTE, {}).items()):
        with _resource("RouteConfiguration", name):
            route_tables[name] = _route_table(msg, known)
    listeners: dict[str, ListenerPlan] = {}
    for name, msg in sorted(resources.get(LISTENER, {}).items()):
        with _resource("Listener", name):
            listeners[name] = _listener(name, msg, route_tables, known)
    for listener in listeners.values():
        # A listener whose routes have not arrived answers 404 rather than failing a lookup.
        if listener.route_table is not None and listener.route_table not in route_tables:
            route_tables[listener.route_table] = RouteTable(listener.route_table, ())
    before: Mapping[str, Cluster] = previous.clusters if previous is not None else {}
    clusters: dict[str, Cluster] = {s.name: _materialise(s, before.get(s.name), rng) for s in specs}
    return Plan(version=version, listeners=listeners, route_tables=route_tables, clusters=clusters)
