"""Gateway API schemas (gateway.networking.k8s.io, standard channel v1.7.0): upstream's example manifests
parse and default as the API server would, and every OpenAPI and CEL rule refuses what upstream refuses,
naming the field path and the rule."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import pytest
import yaml

from innermesh.api import gateway as gw
from innermesh.api.fielderrors import ErrorList
from innermesh.api.model import Model, ParseFailed, parse
from innermesh.api.scheme import REGISTRY

M = TypeVar("M", bound=Model)


def load(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def errors(model: type[Model], data: Any) -> list[str]:
    """Every error ``parse`` reports, as the API server would print them."""
    with pytest.raises(ParseFailed) as exc:
        parse(model, data)
    return [str(e) for e in exc.value.errors]


def route(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": spec,
    }


def rule(**fields: Any) -> dict[str, Any]:
    return route({"rules": [fields]})


def grpc_route(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "g"},
        "spec": spec,
    }


def gateway(listeners: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": "example", "listeners": listeners, **spec},
    }


HTTP80 = {"name": "http", "protocol": "HTTP", "port": 80}
SVC = {"name": "svc", "port": 8080}
CEL_PATH = 'spec.rules[0].matches[0].path: Invalid value: "object": '


# ---------------------------------------------------------------------------------------------------
# Upstream's examples, parsed and defaulted


def test_simple_gateway_example_defaults_as_upstream() -> None:
    """The simple-gateway example gets allowedRoutes.from Same and the two Pending conditions."""
    obj = parse(
        gw.Gateway,
        load("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: prod-web
spec:
  gatewayClassName: example
  listeners:
  - protocol: HTTP
    port: 80
    name: prod-web-gw
"""),
    )
    listener = obj.spec.listeners[0]
    assert listener.allowed_routes.namespaces.from_ == "Same"
    assert listener.allowed_routes.to_dict() == {"namespaces": {"from": "Same"}}
    assert [(c.type, c.status, c.reason, c.message) for c in obj.status.conditions] == [
        ("Accepted", "Unknown", "Pending", "Waiting for controller"),
        ("Programmed", "Unknown", "Pending", "Waiting for controller"),
    ]
    assert obj.status.conditions[0].last_transition_time == "1970-01-01T00:00:00Z"


def test_tls_gateway_example_defaults_certificate_refs_and_mode() -> None:
    """An HTTPS listener's tls defaults to mode Terminate; certificateRefs default group "" and kind Secret."""
    obj = parse(
        gw.Gateway,
        load("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: example-gateway
spec:
  gatewayClassName: example-gateway-class
  addresses:
  - value: 192.0.2.10
  listeners:
  - name: https
    protocol: HTTPS
    port: 443
    hostname: foo.example.com
    tls:
      certificateRefs:
      - name: foo-example-com-cert
"""),
    )
    tls = obj.spec.listeners[0].tls
    assert tls is not None
    assert tls.to_dict() == {
        "mode": "Terminate",
        "certificateRefs": [{"group": "", "kind": "Secret", "name": "foo-example-com-cert"}],
    }
    assert obj.spec.addresses is not None
    assert obj.spec.addresses[0].type == "IPAddress"


def test_http_routing_example_defaults_refs_and_matches() -> None:
    """The http-routing example: parentRef group/kind, backendRef group/kind/weight, path and header match defaults."""
    obj = parse(
        gw.HTTPRoute,
        load("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bar-route
spec:
  parentRefs:
  - name: example-gateway
  hostnames:
  - "bar.example.com"
  rules:
  - matches:
    - headers:
      - name: env
        value: canary
    backendRefs:
    - name: bar-svc-canary
      port: 8080
  - backendRefs:
    - name: bar-svc
      port: 8080
"""),
    )
    spec = obj.to_dict()["spec"]
    assert spec["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "example-gateway"}
    ]
    assert spec["rules"][0]["matches"] == [
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": "env", "value": "canary"}],
        }
    ]
    # A rule without matches gets upstream's default match: PathPrefix "/".
    assert spec["rules"][1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert spec["rules"][1]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "bar-svc", "port": 8080, "weight": 1}
    ]
    assert obj.status is None


def test_route_without_rules_gets_the_default_rule() -> None:
    """An HTTPRoute with no rules gets one rule matching PathPrefix "/", as the CRD's default says."""
    obj = parse(gw.HTTPRoute, route({"parentRefs": [{"name": "gw"}]}))
    assert obj.to_dict()["spec"]["rules"] == [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]


def test_traffic_splitting_example_keeps_weights() -> None:
    """The traffic-splitting example keeps explicit weights, including 0."""
    obj = parse(
        gw.HTTPRoute,
        route(
            {
                "parentRefs": [{"name": "gw"}],
                "rules": [
                    {
                        "backendRefs": [
                            {"name": "v1", "port": 80, "weight": 90},
                            {"name": "v2", "port": 80, "weight": 0},
                        ]
                    }
                ],
            }
        ),
    )
    assert [b.weight for b in obj.spec.rules[0].backend_refs or []] == [90, 0]


def test_redirect_and_rewrite_examples_parse_with_defaults() -> None:
    """The http-redirect and http-rewrite examples parse; a redirect's statusCode defaults to 302."""
    redirect = parse(
        gw.HTTPRoute, rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}])
    )
    filters = redirect.spec.rules[0].filters or []
    assert filters[0].request_redirect is not None
    assert filters[0].request_redirect.status_code == 302
    rewrite = parse(
        gw.HTTPRoute,
        load("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: http-filter-rewrite
spec:
  hostnames:
  - rewrite.example
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /cardamom
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: elsewhere.example
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /fennel
    backendRefs:
    - name: example-svc
      weight: 1
      port: 80
"""),
    )
    assert rewrite.spec.rules[0].filters is not None


def test_full_featured_http_rule_parses() -> None:
    """Mirror, CORS, header modifiers, timeouts and retry (standard in v1.7) parse together, with defaults."""
    obj = parse(
        gw.HTTPRoute,
        rule(
            name="api",
            matches=[
                {
                    "path": {"type": "Exact", "value": "/api"},
                    "method": "GET",
                    "queryParams": [{"name": "q", "value": "1"}],
                }
            ],
            filters=[
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]},
                },
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": "shadow", "port": 80},
                        "fraction": {"numerator": 5},
                    },
                },
                {
                    "type": "CORS",
                    "cors": {
                        "allowOrigins": ["https://a.example.com", "https://*.example.org"],
                        "allowMethods": ["GET"],
                    },
                },
                {
                    "type": "ExtensionRef",
                    "extensionRef": {"group": "example.net", "kind": "Filter", "name": "f"},
                },
            ],
            backendRefs=[SVC],
            timeouts={"request": "10s", "backendRequest": "2s"},
            retry={"codes": [500, 503], "attempts": 2, "backoff": "100ms"},
        ),
    )
    d = obj.to_dict()["spec"]["rules"][0]
    assert d["matches"][0]["queryParams"] == [{"type": "Exact", "name": "q", "value": "1"}]
    assert d["filters"][1]["requestMirror"]["fraction"] == {"numerator": 5, "denominator": 100}
    assert d["filters"][1]["requestMirror"]["backendRef"] == {
        "group": "",
        "kind": "Service",
        "name": "shadow",
        "port": 80,
    }
    assert d["filters"][2]["cors"]["maxAge"] == 5
    assert d["retry"] == {"codes": [500, 503], "attempts": 2, "backoff": "100ms"}


def test_grpc_route_example_defaults_match_types() -> None:
    """The basic GRPCRoute example: method and header match types default to Exact."""
    obj = parse(
        gw.GRPCRoute,
        load("""
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: foo-route
spec:
  parentRefs:
  - name: example-gateway
  hostnames:
  - "foo.example.com"
  rules:
  - matches:
    - method:
        service: com.example.User
        method: Login
    backendRefs:
    - name: foo-svc
      port: 50051
  - matches:
    - headers:
      - name: magic
        value: foo
      method:
        service: com.Example.Login
        method: Login
    backendRefs:
    - name: foo-svc
      port: 50051
"""),
    )
    d = obj.to_dict()["spec"]["rules"]
    assert d[0]["matches"][0]["method"] == {"type": "Exact", "service": "com.example.User", "method": "Login"}
    assert d[1]["matches"][0]["headers"] == [{"type": "Exact", "name": "magic", "value": "foo"}]
    assert d[0]["backendRefs"][0] == {
        "group": "",
        "kind": "Service",
        "name": "foo-svc",
        "port": 50051,
        "weight": 1,
    }
    assert obj.spec.parent_refs is not None
    assert obj.spec.parent_refs[0].kind == "Gateway"


def test_gateway_class_example_defaults_status() -> None:
    """A GatewayClass gets the Accepted/Unknown/Pending condition by default."""
    obj = parse(
        gw.GatewayClass,
        load("""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: example
spec:
  controllerName: "example.net/gateway-controller"
  description: An example class
"""),
    )
    assert [(c.type, c.status, c.reason) for c in obj.status.conditions] == [
        ("Accepted", "Unknown", "Pending")
    ]


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_reference_grant_example_parses_at_both_served_versions(version: str) -> None:
    """The ReferenceGrant example parses at v1 and at v1beta1 with one model."""
    obj = parse(
        gw.ReferenceGrant,
        load(f"""
apiVersion: gateway.networking.k8s.io/{version}
kind: ReferenceGrant
metadata:
  name: allow-prod-traffic
  namespace: bar
spec:
  from:
  - group: gateway.networking.k8s.io
    kind: HTTPRoute
    namespace: foo
  to:
  - group: ""
    kind: Service
"""),
    )
    assert obj.api_version == f"gateway.networking.k8s.io/{version}"
    assert obj.spec.to[0].name is None


# ---------------------------------------------------------------------------------------------------
# Structure: unknown fields, types, required fields, versions


def test_unknown_fields_are_refused_with_their_path() -> None:
    """Unknown fields are refused wherever they are, including experimental-only ones."""
    assert errors(gw.HTTPRoute, route({"bogus": 1})) == ["spec.bogus: Unknown field"]
    assert errors(gw.HTTPRoute, rule(sessionPersistence={"sessionName": "s"})) == [
        "spec.rules[0].sessionPersistence: Unknown field"
    ]
    assert errors(gw.Gateway, gateway([HTTP80], defaultScope="All")) == ["spec.defaultScope: Unknown field"]
    assert errors(gw.HTTPRoute, rule(backendRefs=[{**SVC, "appProtocol": "h2"}])) == [
        "spec.rules[0].backendRefs[0].appProtocol: Unknown field"
    ]


def test_wrong_types_are_refused_with_their_path() -> None:
    """Strict types: a string port, a bool weight, a string list are refused."""
    assert errors(gw.HTTPRoute, rule(backendRefs=[{"name": "svc", "port": "80"}])) == [
        'spec.rules[0].backendRefs[0].port: Invalid value: "80": must be an integer'
    ]
    assert errors(gw.HTTPRoute, rule(backendRefs=[{**SVC, "weight": True}])) == [
        "spec.rules[0].backendRefs[0].weight: Invalid value: true: must be an integer"
    ]
    assert errors(gw.HTTPRoute, route({"hostnames": "a.example.com"})) == [
        'spec.hostnames: Invalid value: "a.example.com": must be a list'
    ]


def test_required_fields_are_reported() -> None:
    """spec, names and listeners are required where upstream requires them."""
    assert errors(gw.HTTPRoute, {"metadata": {"name": "r"}}) == ["spec: Required value"]
    assert errors(gw.HTTPRoute, route({"parentRefs": [{}]})) == ["spec.parentRefs[0].name: Required value"]
    assert errors(gw.Gateway, {"metadata": {"name": "g"}, "spec": {"gatewayClassName": "x"}}) == [
        "spec.listeners: Required value"
    ]
    assert errors(
        gw.ReferenceGrant, {"metadata": {"name": "g"}, "spec": {"to": [{"group": "", "kind": "Service"}]}}
    ) == ["spec.from: Required value"]


def test_unserved_versions_are_refused() -> None:
    """Only the served versions parse: v1beta1 Gateways and v1alpha2 ReferenceGrants are not registered here."""
    assert errors(gw.Gateway, {**gateway([HTTP80]), "apiVersion": "gateway.networking.k8s.io/v1beta1"}) == [
        (
            'apiVersion: Unsupported value: "gateway.networking.k8s.io/v1beta1": supported values: '
            '"gateway.networking.k8s.io/v1"'
        )
    ]
    grant = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "metadata": {"name": "g"}}
    assert errors(gw.ReferenceGrant, grant)[0] == (
        'apiVersion: Unsupported value: "gateway.networking.k8s.io/v1alpha2": supported values: '
        '"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"'
    )


def test_enums_report_supported_values() -> None:
    """Enums (string and integer) answer with the supported values."""
    assert errors(gw.HTTPRoute, rule(matches=[{"path": {"type": "Prefix", "value": "/"}}])) == [
        (
            'spec.rules[0].matches[0].path.type: Unsupported value: "Prefix": supported values: '
            '"Exact", "PathPrefix", "RegularExpression"'
        )
    ]
    assert errors(
        gw.HTTPRoute, rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}])
    ) == [
        (
            "spec.rules[0].filters[0].requestRedirect.statusCode: Unsupported value: 304: supported values: "
            '"301", "302", "303", "307", "308"'
        )
    ]
    assert errors(
        gw.HTTPRoute, rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}])
    ) == [
        'spec.rules[0].filters[0].requestRedirect.scheme: Unsupported value: "ftp": supported values: "http", "https"'
    ]
    assert errors(gw.HTTPRoute, rule(matches=[{"method": "get"}]))[0].startswith(
        'spec.rules[0].matches[0].method: Unsupported value: "get": supported values: "GET"'
    )


# ---------------------------------------------------------------------------------------------------
# HTTPRoute: field rules


def test_hostnames_follow_the_hostname_pattern_and_limit() -> None:
    """Route hostnames are lowercase DNS names with an optional leading wildcard label, at most 16."""
    assert parse(gw.HTTPRoute, route({"hostnames": ["*.example.com", "a-b.example.com"]}))
    assert errors(gw.HTTPRoute, route({"hostnames": ["Foo.example.com"]})) == [
        f"spec.hostnames[0]: Invalid value: \"Foo.example.com\": should match '{gw.HOSTNAME_PATTERN}'"
    ]
    assert errors(gw.HTTPRoute, route({"hostnames": ["a.*.example.com"]}))[0].startswith(
        'spec.hostnames[0]: Invalid value: "a.*.example.com": should match'
    )
    many = [f"h{i}.example.com" for i in range(17)]
    assert errors(gw.HTTPRoute, route({"hostnames": many})) == [
        "spec.hostnames: Too many: 17: must have at most 16 items"
    ]


def test_redirect_hostname_must_be_precise() -> None:
    """A redirect's hostname is a PreciseHostname: no wildcard."""
    assert errors(
        gw.HTTPRoute, rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"hostname": "*.a.com"}}])
    ) == [
        (
            'spec.rules[0].filters[0].requestRedirect.hostname: Invalid value: "*.a.com": '
            f"should match '{gw.PRECISE_HOSTNAME_PATTERN}'"
        )
    ]


def test_ports_and_weights_are_range_checked() -> None:
    """backendRef port is 1..65535 and weight 0..1000000."""
    assert errors(gw.HTTPRoute, rule(backendRefs=[{"name": "svc", "port": 0}])) == [
        "spec.rules[0].backendRefs[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    ]
    assert errors(gw.HTTPRoute, rule(backendRefs=[{**SVC, "weight": 1000001}])) == [
        "spec.rules[0].backendRefs[0].weight: Invalid value: 1000001: must be between 0 and 1000000, inclusive"
    ]


def test_reference_names_follow_upstream_patterns() -> None:
    """Group, kind, namespace and sectionName patterns and lengths on a parentRef."""
    assert errors(
        gw.HTTPRoute,
        route(
            {
                "parentRefs": [
                    {
                        "name": "gw",
                        "group": "Example.com",
                        "kind": "1Gateway",
                        "namespace": "a.b",
                        "sectionName": "A",
                    }
                ]
            }
        ),
    ) == [
        f"spec.parentRefs[0].group: Invalid value: \"Example.com\": should match '{gw.GROUP_PATTERN}'",
        f"spec.parentRefs[0].kind: Invalid value: \"1Gateway\": should match '{gw.KIND_PATTERN}'",
        f"spec.parentRefs[0].namespace: Invalid value: \"a.b\": should match '{gw.NAMESPACE_PATTERN}'",
        f"spec.parentRefs[0].sectionName: Invalid value: \"A\": should match '{gw.SECTION_NAME_PATTERN}'",
    ]
    assert errors(gw.HTTPRoute, route({"parentRefs": [{"name": "x" * 254}]})) == [
        "spec.parentRefs[0].name: Too long: may not be more than 253 bytes"
    ]


def test_header_match_value_and_name_rules() -> None:
    """Header match names follow the header-name pattern; values are 1..4096 characters."""
    assert errors(gw.HTTPRoute, rule(matches=[{"headers": [{"name": ":method", "value": "GET"}]}])) == [
        (
            'spec.rules[0].matches[0].headers[0].name: Invalid value: ":method": '
            f"should match '{gw.HEADER_NAME_PATTERN}'"
        )
    ]
    assert errors(gw.HTTPRoute, rule(matches=[{"headers": [{"name": "x", "value": ""}]}])) == [
        'spec.rules[0].matches[0].headers[0].value: Invalid value: "": must be at least 1 characters long'
    ]


def test_list_limits_on_rules_matches_and_refs() -> None:
    """rules 1..16, matches 64, filters 16, backendRefs 16 and parentRefs 32, as the CRD's maxItems."""
    assert errors(gw.HTTPRoute, route({"rules": []})) == [
        "spec.rules: Invalid value: []: must have at least 1 items"
    ]
    assert errors(gw.HTTPRoute, route({"rules": [{}] * 17})) == [
        "spec.rules: Too many: 17: must have at most 16 items"
    ]
    assert errors(gw.HTTPRoute, rule(matches=[{}] * 65)) == [
        "spec.rules[0].matches: Too many: 65: must have at most 64 items"
    ]
    assert errors(gw.HTTPRoute, rule(backendRefs=[SVC] * 17)) == [
        "spec.rules[0].backendRefs: Too many: 17: must have at most 16 items"
    ]
    parents = [{"name": f"gw{i}"} for i in range(33)]
    assert errors(gw.HTTPRoute, route({"parentRefs": parents})) == [
        "spec.parentRefs: Too many: 33: must have at most 32 items"
    ]


# ---------------------------------------------------------------------------------------------------
# HTTPRoute: CEL rules


def test_path_value_must_start_with_slash_for_prefix_and_exact() -> None:
    """PathPrefix and Exact values must be absolute paths."""
    for path_type in ("PathPrefix", "Exact"):
        assert errors(gw.HTTPRoute, rule(matches=[{"path": {"type": path_type, "value": "foo"}}])) == [
            CEL_PATH
            + "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"
        ]


@pytest.mark.parametrize("seq", ["//", "/./", "/../", "%2f", "%2F", "#"])
def test_path_value_must_not_contain_traversal_sequences(seq: str) -> None:
    """PathPrefix values may not contain '//', '/./', '/../', encoded slashes or '#'."""
    errs = errors(gw.HTTPRoute, rule(matches=[{"path": {"value": f"/a{seq}b"}}]))
    assert errs[0] == CEL_PATH + f"must not contain '{seq}' when type one of ['Exact', 'PathPrefix']"


@pytest.mark.parametrize("suffix", ["/..", "/."])
def test_path_value_must_not_end_with_dot_segments(suffix: str) -> None:
    """Exact values may not end with '/..' or '/.'."""
    assert errors(gw.HTTPRoute, rule(matches=[{"path": {"type": "Exact", "value": f"/a{suffix}"}}])) == [
        CEL_PATH + f"must not end with '{suffix}' when type one of ['Exact', 'PathPrefix']"
    ]


def test_path_value_must_use_valid_characters() -> None:
    """PathPrefix values are limited to RFC 3986 path characters."""
    assert errors(gw.HTTPRoute, rule(matches=[{"path": {"value": "/a b"}}])) == [
        CEL_PATH + "must only contain valid characters (matching "
        "^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']"
    ]


def test_regular_expression_paths_skip_the_path_rules() -> None:
    """RegularExpression paths are implementation-specific and only length-checked."""
    assert parse(
        gw.HTTPRoute, rule(matches=[{"path": {"type": "RegularExpression", "value": "^/a b/(.*)//"}}])
    )
    assert errors(
        gw.HTTPRoute, rule(matches=[{"path": {"type": "RegularExpression", "value": "/" * 1025}}])
    ) == ["spec.rules[0].matches[0].path.value: Too long: may not be more than 1024 bytes"]


_FILTER_CONFIG = {
    "RequestHeaderModifier": ("requestHeaderModifier", {"set": [{"name": "x", "value": "1"}]}),
    "ResponseHeaderModifier": ("responseHeaderModifier", {"add": [{"name": "x", "value": "1"}]}),
    "RequestMirror": ("requestMirror", {"backendRef": {"name": "m", "port": 80}}),
    "RequestRedirect": ("requestRedirect", {"scheme": "https"}),
    "URLRewrite": ("urlRewrite", {"hostname": "a.example.com"}),
    "CORS": ("cors", {"allowOrigins": ["*"]}),
    "ExtensionRef": ("extensionRef", {"group": "example.net", "kind": "F", "name": "f"}),
}


@pytest.mark.parametrize("filter_type", sorted(_FILTER_CONFIG))
def test_filter_type_requires_its_own_config(filter_type: str) -> None:
    """Each filter type needs exactly its own config field."""
    field, _ = _FILTER_CONFIG[filter_type]
    assert errors(gw.HTTPRoute, rule(filters=[{"type": filter_type}])) == [
        f'spec.rules[0].filters[0]: Invalid value: "object": filter.{field} must be specified for {filter_type} filter.type'
    ]


@pytest.mark.parametrize("filter_type", sorted(_FILTER_CONFIG))
def test_filter_config_must_match_the_type(filter_type: str) -> None:
    """A config field for another type is refused."""
    field, config = _FILTER_CONFIG[filter_type]
    other_type = "ExtensionRef" if filter_type != "ExtensionRef" else "CORS"
    other_field, other_config = _FILTER_CONFIG[other_type]
    assert errors(
        gw.HTTPRoute, rule(filters=[{"type": other_type, other_field: other_config, field: config}])
    ) == [
        f'spec.rules[0].filters[0]: Invalid value: "object": filter.{field} must be nil if the filter.type is not {filter_type}'
    ]


@pytest.mark.parametrize(
    "filter_type",
    ["CORS", "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"],
)
def test_core_filters_cannot_be_repeated(filter_type: str) -> None:
    """CORS, the header modifiers, RequestRedirect and URLRewrite appear at most once per rule and per backendRef."""
    field, config = _FILTER_CONFIG[filter_type]
    f = {"type": filter_type, field: config}
    assert errors(gw.HTTPRoute, rule(filters=[f, f])) == [
        f'spec.rules[0].filters: Invalid value: "array": {filter_type} filter cannot be repeated'
    ]
    assert errors(gw.HTTPRoute, rule(backendRefs=[{**SVC, "filters": [f, f]}])) == [
        f'spec.rules[0].backendRefs[0].filters: Invalid value: "array": {filter_type} filter cannot be repeated'
    ]


def test_mirror_and_extension_filters_may_repeat() -> None:
    """RequestMirror and ExtensionRef filters may be used more than once."""
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}}}
    ext = {"type": "ExtensionRef", "extensionRef": {"group": "example.net", "kind": "F", "name": "f"}}
    assert parse(gw.HTTPRoute, rule(filters=[mirror, mirror, ext, ext], backendRefs=[SVC]))


def test_redirect_and_rewrite_are_not_allowed_together() -> None:
    """RequestRedirect and URLRewrite cannot share a rule."""
    filters = [
        {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
        {"type": "URLRewrite", "urlRewrite": {"hostname": "a.example.com"}},
    ]
    assert errors(gw.HTTPRoute, rule(filters=filters)) == [
        (
            'spec.rules[0].filters: Invalid value: "array": '
            "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both"
        )
    ]


def test_redirect_is_not_allowed_with_backend_refs() -> None:
    """A rule that redirects has no backends."""
    assert errors(
        gw.HTTPRoute,
        rule(
            filters=[{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}], backendRefs=[SVC]
        ),
    ) == [
        'spec.rules[0]: Invalid value: "object": RequestRedirect filter must not be used together with backendRefs'
    ]


def _prefix_modifier(kind: str) -> dict[str, Any]:
    field = "requestRedirect" if kind == "RequestRedirect" else "urlRewrite"
    return {"type": kind, field: {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}


def test_replace_prefix_match_needs_exactly_one_prefix_match() -> None:
    """replacePrefixMatch needs a single PathPrefix match, in the rule or in a backendRef's filters."""
    exact = [{"path": {"type": "Exact", "value": "/old"}}]
    assert errors(gw.HTTPRoute, rule(matches=exact, filters=[_prefix_modifier("RequestRedirect")])) == [
        (
            'spec.rules[0]: Invalid value: "object": '
            "When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        )
    ]
    two = [{"path": {"value": "/a"}}, {"path": {"value": "/b"}}]
    assert errors(
        gw.HTTPRoute, rule(matches=two, filters=[_prefix_modifier("URLRewrite")], backendRefs=[SVC])
    ) == [
        (
            'spec.rules[0]: Invalid value: "object": '
            "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        )
    ]
    assert errors(
        gw.HTTPRoute, rule(matches=exact, backendRefs=[{**SVC, "filters": [_prefix_modifier("URLRewrite")]}])
    ) == [
        (
            'spec.rules[0]: Invalid value: "object": Within backendRefs, '
            "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        )
    ]
    assert errors(
        gw.HTTPRoute,
        rule(matches=two, backendRefs=[{**SVC, "filters": [_prefix_modifier("RequestRedirect")]}]),
    ) == [
        (
            'spec.rules[0]: Invalid value: "object": Within backendRefs, '
            "when using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        )
    ]
    # The default match is a single PathPrefix "/", so a rule without matches may replace the prefix.
    assert parse(gw.HTTPRoute, rule(filters=[_prefix_modifier("URLRewrite")], backendRefs=[SVC]))


def test_path_modifier_type_and_value_go_together() -> None:
    """A path modifier's type names the one value it carries."""
    base = 'spec.rules[0].filters[0].urlRewrite.path: Invalid value: "object": '

    def rewrite(path: dict[str, Any]) -> dict[str, Any]:
        return rule(filters=[{"type": "URLRewrite", "urlRewrite": {"path": path}}])

    assert errors(gw.HTTPRoute, rewrite({"type": "ReplaceFullPath"})) == [
        base + "replaceFullPath must be specified when type is set to 'ReplaceFullPath'"
    ]
    assert errors(gw.HTTPRoute, rewrite({"type": "ReplacePrefixMatch"})) == [
        base + "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'"
    ]
    assert errors(
        gw.HTTPRoute,
        rewrite({"type": "ReplaceFullPath", "replaceFullPath": "/x", "replacePrefixMatch": "/y"}),
    ) == [base + "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set"]
    assert errors(
        gw.HTTPRoute,
        rewrite({"type": "ReplacePrefixMatch", "replaceFullPath": "/x", "replacePrefixMatch": "/y"}),
    ) == [base + "type must be 'ReplaceFullPath' when replaceFullPath is set"]


def test_service_backend_ref_needs_a_port() -> None:
    """A backendRef to a core Service needs a port; other kinds do not."""
    assert errors(gw.HTTPRoute, rule(backendRefs=[{"name": "svc"}])) == [
        'spec.rules[0].backendRefs[0]: Invalid value: "object": Must have port for Service reference'
    ]
    assert errors(
        gw.HTTPRoute,
        rule(filters=[{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m"}}}]),
    ) == [
        'spec.rules[0].filters[0].requestMirror.backendRef: Invalid value: "object": Must have port for Service reference'
    ]
    assert parse(gw.HTTPRoute, rule(backendRefs=[{"group": "example.net", "kind": "Backend", "name": "b"}]))


def test_header_match_names_are_unique_case_insensitively() -> None:
    """Matching the same header twice in one match is refused, whatever the case."""
    headers = [{"name": "X-Env", "value": "a"}, {"name": "x-env", "value": "b"}]
    assert errors(gw.HTTPRoute, rule(matches=[{"headers": headers}])) == [
        (
            'spec.rules[0].matches[0].headers[1].name: Invalid value: "x-env": '
            "cannot match the same header multiple times in the same rule"
        )
    ]


def test_query_param_names_are_unique_case_sensitively() -> None:
    """Query parameter names are case-sensitive: "q" and "Q" may both be matched, "q" twice may not."""
    assert parse(
        gw.HTTPRoute,
        rule(matches=[{"queryParams": [{"name": "q", "value": "1"}, {"name": "Q", "value": "1"}]}]),
    )
    assert errors(
        gw.HTTPRoute,
        rule(matches=[{"queryParams": [{"name": "q", "value": "1"}, {"name": "q", "value": "2"}]}]),
    ) == [
        (
            'spec.rules[0].matches[0].queryParams[1].name: Invalid value: "q": '
            "cannot match the same query parameter multiple times in the same rule"
        )
    ]


def test_header_modifier_allows_one_action_per_header() -> None:
    """A header modifier may act on a header name once across add, set and remove, case-insensitively."""
    modifier = {
        "add": [{"name": "X-A", "value": "1"}],
        "set": [{"name": "x-a", "value": "2"}],
        "remove": ["X-a"],
    }
    assert errors(
        gw.HTTPRoute, rule(filters=[{"type": "ResponseHeaderModifier", "responseHeaderModifier": modifier}])
    ) == [
        (
            'spec.rules[0].filters[0].responseHeaderModifier.set[0].name: Invalid value: "x-a": '
            "cannot specify multiple actions for header"
        )
    ]


def test_parent_refs_to_the_same_parent_need_distinct_section_names() -> None:
    """Two parentRefs to one Gateway need a sectionName each, and different ones."""
    path = 'spec.parentRefs: Invalid value: "array": '
    assert errors(gw.HTTPRoute, route({"parentRefs": [{"name": "gw"}, {"name": "gw"}]})) == [
        path + "sectionName must be unique when parentRefs includes 2 or more references to the same parent"
    ]
    assert errors(
        gw.HTTPRoute, route({"parentRefs": [{"name": "gw"}, {"name": "gw", "sectionName": "https"}]})
    ) == [
        path
        + "sectionName must be specified when parentRefs includes 2 or more references to the same parent"
    ]
    same = {"name": "gw", "sectionName": "https"}
    assert errors(gw.HTTPRoute, route({"parentRefs": [same, same]})) == [
        path + "sectionName must be unique when parentRefs includes 2 or more references to the same parent"
    ]
    ok = [
        {"name": "gw", "sectionName": "http"},
        {"name": "gw", "sectionName": "https"},
        {"name": "gw", "namespace": "infra"},
    ]
    assert parse(gw.HTTPRoute, route({"parentRefs": ok}))


def test_rule_names_are_unique() -> None:
    """Rule names, when given, are unique within a route (standard since v1.7)."""
    assert errors(gw.HTTPRoute, route({"rules": [{"name": "a"}, {"name": "a"}, {}]})) == [
        'spec.rules: Invalid value: "array": Rule name must be unique within the route'
    ]
    assert parse(gw.HTTPRoute, route({"rules": [{"name": "a"}, {"name": "b"}, {}, {}]}))


def test_total_matches_across_rules_are_limited() -> None:
    """At most 128 matches across all rules, although 16 rules of 64 would allow more."""
    rules = [{"matches": [{"path": {"value": f"/{i}"}}] * 64} for i in range(2)] + [{}]
    assert errors(gw.HTTPRoute, route({"rules": rules})) == [
        (
            'spec.rules: Invalid value: "array": While 16 rules and 64 matches per rule are allowed, '
            "the total number of matches across all rules in a route must be less than 128"
        )
    ]
    assert parse(gw.HTTPRoute, route({"rules": rules[:2]}))


def test_backend_request_timeout_cannot_exceed_request_timeout() -> None:
    """timeouts.backendRequest <= timeouts.request, unless request is 0s (disabled)."""
    assert errors(gw.HTTPRoute, rule(timeouts={"request": "1s", "backendRequest": "1500ms"})) == [
        'spec.rules[0].timeouts: Invalid value: "object": backendRequest timeout cannot be longer than request timeout'
    ]
    assert parse(gw.HTTPRoute, rule(timeouts={"request": "0s", "backendRequest": "1h"}))
    assert parse(gw.HTTPRoute, rule(timeouts={"request": "1m", "backendRequest": "60s"}))


def test_durations_follow_gep_2257() -> None:
    """Durations are 1 to 4 groups of up to 5 digits and h, m, s or ms."""
    assert errors(gw.HTTPRoute, rule(timeouts={"request": "1.5s"})) == [
        f"spec.rules[0].timeouts.request: Invalid value: \"1.5s\": should match '{gw.DURATION_PATTERN}'"
    ]
    assert gw.parse_duration("1h2m3s4ms") == dt.timedelta(hours=1, minutes=2, seconds=3, milliseconds=4)


def test_retry_codes_are_5xx_or_4xx_and_unique() -> None:
    """retry.codes are 400..599 and a set."""
    assert errors(gw.HTTPRoute, rule(retry={"codes": [399]})) == [
        "spec.rules[0].retry.codes[0]: Invalid value: 399: must be between 400 and 599, inclusive"
    ]
    assert errors(gw.HTTPRoute, rule(retry={"codes": [503, 503]})) == [
        "spec.rules[0].retry.codes[1]: Duplicate value: 503"
    ]


def test_mirror_percent_and_fraction_are_exclusive() -> None:
    """A mirror sets percent or fraction, not both; a fraction is at most 1."""
    mirror = {"backendRef": {"name": "m", "port": 80}, "percent": 10, "fraction": {"numerator": 1}}
    assert errors(gw.HTTPRoute, rule(filters=[{"type": "RequestMirror", "requestMirror": mirror}])) == [
        (
            'spec.rules[0].filters[0].requestMirror: Invalid value: "object": '
            "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter"
        )
    ]
    mirror = {"backendRef": {"name": "m", "port": 80}, "fraction": {"numerator": 3, "denominator": 2}}
    assert errors(gw.HTTPRoute, rule(filters=[{"type": "RequestMirror", "requestMirror": mirror}])) == [
        (
            'spec.rules[0].filters[0].requestMirror.fraction: Invalid value: "object": '
            "numerator must be less than or equal to denominator"
        )
    ]
    mirror = {"backendRef": {"name": "m", "port": 80}, "percent": 101}
    assert errors(gw.HTTPRoute, rule(filters=[{"type": "RequestMirror", "requestMirror": mirror}])) == [
        "spec.rules[0].filters[0].requestMirror.percent: Invalid value: 101: must be between 0 and 100, inclusive"
    ]


def test_cors_wildcards_stand_alone() -> None:
    """CORS '*' cannot be listed with other origins, methods or headers; lists are sets."""
    base = 'spec.rules[0].filters[0].cors.{}: Invalid value: "array": {}'

    def cors(config: dict[str, Any]) -> dict[str, Any]:
        return rule(filters=[{"type": "CORS", "cors": config}])

    assert errors(gw.HTTPRoute, cors({"allowOrigins": ["*", "https://a.com"]})) == [
        base.format("allowOrigins", "AllowOrigins cannot contain '*' alongside other origins")
    ]
    assert errors(gw.HTTPRoute, cors({"allowMethods": ["*", "GET"]})) == [
        base.format("allowMethods", "AllowMethods cannot contain '*' alongside other methods")
    ]
    assert errors(gw.HTTPRoute, cors({"allowHeaders": ["*", "x-a"]})) == [
        base.format("allowHeaders", "AllowHeaders cannot contain '*' alongside other methods")
    ]
    assert errors(gw.HTTPRoute, cors({"allowMethods": ["GET", "GET"]})) == [
        'spec.rules[0].filters[0].cors.allowMethods[1]: Duplicate value: "GET"'
    ]


def test_cors_origins_and_max_age_are_checked() -> None:
    """CORS origins are scheme://host[:port] or '*'; maxAge is at least 1."""
    assert errors(
        gw.HTTPRoute, rule(filters=[{"type": "CORS", "cors": {"allowOrigins": ["example.com"]}}])
    ) == [
        (
            'spec.rules[0].filters[0].cors.allowOrigins[0]: Invalid value: "example.com": '
            f"should match '{gw.CORS_ORIGIN_PATTERN}'"
        )
    ]
    assert errors(gw.HTTPRoute, rule(filters=[{"type": "CORS", "cors": {"maxAge": 0}}])) == [
        "spec.rules[0].filters[0].cors.maxAge: Invalid value: 0: must be greater than or equal to 1"
    ]


# ---------------------------------------------------------------------------------------------------
# GRPCRoute


def test_grpc_method_match_needs_service_or_method() -> None:
    """A method match names a service, a method, or both."""
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"matches": [{"method": {}}]}]})) == [
        "spec.rules[0].matches[0].method: Invalid value: \"object\": One or both of 'service' or 'method' must be specified"
    ]


def test_grpc_exact_service_and_method_use_valid_characters() -> None:
    """Exact service and method names follow protobuf's identifier rules; RegularExpression ones do not."""
    bad = {"service": "foo/bar", "method": "Get-All"}
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"matches": [{"method": bad}]}]})) == [
        (
            'spec.rules[0].matches[0].method: Invalid value: "object": service must only contain valid characters '
            r"(matching ^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$)"
        ),
        (
            'spec.rules[0].matches[0].method: Invalid value: "object": method must only contain valid characters '
            "(matching ^[A-Za-z_][A-Za-z_0-9]*$)"
        ),
    ]
    assert parse(
        gw.GRPCRoute, grpc_route({"rules": [{"matches": [{"method": {**bad, "type": "RegularExpression"}}]}]})
    )


def test_grpc_filters_follow_their_union_and_repeat_rules() -> None:
    """GRPCRoute filters need their own config, and header modifiers appear once."""
    f = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"filters": [f, f]}]})) == [
        'spec.rules[0].filters: Invalid value: "array": RequestHeaderModifier filter cannot be repeated'
    ]
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"filters": [{"type": "RequestMirror"}]}]})) == [
        'spec.rules[0].filters[0]: Invalid value: "object": filter.requestMirror must be specified for RequestMirror filter.type'
    ]
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"filters": [{"type": "URLRewrite"}]}]}))[0].startswith(
        'spec.rules[0].filters[0].type: Unsupported value: "URLRewrite"'
    )


def test_grpc_limits_and_rule_names() -> None:
    """GRPCRoute rules hold at most 8 matches, and rule names are unique."""
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"matches": [{"method": {"method": "M"}}] * 9}]})) == [
        "spec.rules[0].matches: Too many: 9: must have at most 8 items"
    ]
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"name": "a"}, {"name": "a"}]})) == [
        'spec.rules: Invalid value: "array": Rule name must be unique within the route'
    ]


def test_grpc_header_match_names_are_unique_case_insensitively() -> None:
    """gRPC metadata names match case-insensitively too."""
    headers = [{"name": "Magic", "value": "a"}, {"name": "magic", "value": "b"}]
    assert errors(gw.GRPCRoute, grpc_route({"rules": [{"matches": [{"headers": headers}]}]})) == [
        (
            'spec.rules[0].matches[0].headers[1].name: Invalid value: "magic": '
            "cannot match the same header multiple times in the same rule"
        )
    ]


def test_grpc_parent_refs_follow_the_route_rules() -> None:
    """GRPCRoute shares HTTPRoute's parentRef rules and backendRef port rule."""
    assert errors(
        gw.GRPCRoute,
        grpc_route(
            {"parentRefs": [{"name": "gw"}, {"name": "gw"}], "rules": [{"backendRefs": [{"name": "s"}]}]}
        ),
    ) == [
        (
            'spec.parentRefs: Invalid value: "array": '
            "sectionName must be unique when parentRefs includes 2 or more references to the same parent"
        ),
        'spec.rules[0].backendRefs[0]: Invalid value: "object": Must have port for Service reference',
    ]


# ---------------------------------------------------------------------------------------------------
# Gateway


def test_tls_is_refused_for_plaintext_protocols() -> None:
    """HTTP, TCP and UDP listeners carry no tls."""
    listener = {**HTTP80, "tls": {"certificateRefs": [{"name": "c"}]}}
    assert errors(gw.Gateway, gateway([listener])) == [
        "spec.listeners: Invalid value: \"array\": tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"
    ]


def test_https_listeners_terminate_tls() -> None:
    """An HTTPS listener's tls mode is Terminate."""
    listener = {"name": "https", "protocol": "HTTPS", "port": 443, "tls": {"mode": "Passthrough"}}
    assert errors(gw.Gateway, gateway([listener])) == [
        'spec.listeners: Invalid value: "array": tls mode must be Terminate for protocol HTTPS'
    ]


def test_tls_listeners_need_tls_config() -> None:
    """A TLS listener needs a tls mode (so a tls block)."""
    assert errors(gw.Gateway, gateway([{"name": "tls", "protocol": "TLS", "port": 443}])) == [
        'spec.listeners: Invalid value: "array": tls mode must be set for protocol TLS'
    ]
    passthrough = {"name": "tls", "protocol": "TLS", "port": 443, "tls": {"mode": "Passthrough"}}
    assert parse(gw.Gateway, gateway([passthrough]))


def test_terminating_tls_needs_certificates_or_options() -> None:
    """tls mode Terminate (the default) needs certificateRefs or options."""
    listener = {"name": "https", "protocol": "HTTPS", "port": 443, "tls": {}}
    assert errors(gw.Gateway, gateway([listener])) == [
        'spec.listeners[0].tls: Invalid value: "object": certificateRefs or options must be specified when mode is Terminate'
    ]
    listener["tls"] = {"options": {"example.com/cert-source": "vault"}}
    assert parse(gw.Gateway, gateway([listener]))


def test_tcp_and_udp_listeners_have_no_hostname() -> None:
    """TCP and UDP listeners cannot match on hostname."""
    assert errors(
        gw.Gateway, gateway([{"name": "tcp", "protocol": "TCP", "port": 9000, "hostname": "a.example.com"}])
    ) == [
        "spec.listeners: Invalid value: \"array\": hostname must not be specified for protocols ['TCP', 'UDP']"
    ]


def test_listener_names_and_combinations_are_unique() -> None:
    """Listener names are unique, and so is each port/protocol/hostname combination."""
    assert errors(gw.Gateway, gateway([HTTP80, {**HTTP80, "port": 8080}])) == [
        'spec.listeners: Invalid value: "array": Listener name must be unique within the Gateway'
    ]
    assert errors(gw.Gateway, gateway([HTTP80, {**HTTP80, "name": "other"}])) == [
        'spec.listeners: Invalid value: "array": Combination of port, protocol and hostname must be unique for each listener'
    ]
    assert parse(gw.Gateway, gateway([HTTP80, {**HTTP80, "name": "foo", "hostname": "foo.example.com"}]))


def test_listener_count_and_protocol_pattern() -> None:
    """1..64 listeners; protocols are a core name or a domain-prefixed path."""
    assert errors(gw.Gateway, gateway([])) == [
        "spec.listeners: Invalid value: []: must have at least 1 items"
    ]
    listeners = [{**HTTP80, "name": f"l{i}", "port": 1000 + i} for i in range(65)]
    assert errors(gw.Gateway, gateway(listeners)) == [
        "spec.listeners: Too many: 65: must have at most 64 items"
    ]
    assert parse(gw.Gateway, gateway([{**HTTP80, "protocol": "example.com/quic"}]))
    assert errors(gw.Gateway, gateway([{**HTTP80, "protocol": "not a protocol"}])) == [
        f"spec.listeners[0].protocol: Invalid value: \"not a protocol\": should match '{gw.PROTOCOL_PATTERN}'"
    ]


def test_allowed_routes_from_is_an_enum() -> None:
    """allowedRoutes.namespaces.from is All, Selector or Same."""
    listener = {**HTTP80, "allowedRoutes": {"namespaces": {"from": "None"}}}
    assert errors(gw.Gateway, gateway([listener])) == [
        'spec.listeners[0].allowedRoutes.namespaces.from: Unsupported value: "None": supported values: "All", "Selector", "Same"'
    ]
    listener = {
        **HTTP80,
        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}},
    }
    assert parse(gw.Gateway, gateway([listener]))


def test_spec_addresses_are_valid_and_unique() -> None:
    """IPAddress values are IPs, Hostname values hostnames, and neither repeats."""
    assert errors(gw.Gateway, gateway([HTTP80], addresses=[{"value": "not-an-ip"}])) == [
        'spec.addresses[0].value: Invalid value: "not-an-ip": must be of type ipv4 or ipv6 when type is IPAddress'
    ]
    assert errors(gw.Gateway, gateway([HTTP80], addresses=[{"type": "Hostname", "value": "Bad_Host"}])) == [
        (
            'spec.addresses[0]: Invalid value: "object": Hostname value must be empty or contain only valid characters '
            f"(matching {gw.HOSTNAME_PATTERN})"
        )
    ]
    assert errors(
        gw.Gateway, gateway([HTTP80], addresses=[{"value": "10.0.0.1"}, {"value": "10.0.0.1"}])
    ) == ['spec.addresses: Invalid value: "array": IPAddress values must be unique']
    hosts = [{"type": "Hostname", "value": "lb.example.com"}] * 2
    assert errors(gw.Gateway, gateway([HTTP80], addresses=hosts)) == [
        'spec.addresses: Invalid value: "array": Hostname values must be unique'
    ]
    assert parse(
        gw.Gateway,
        gateway([HTTP80], addresses=[{"type": "example.com/pool", "value": "pool-a"}, {"type": "Hostname"}]),
    )


def test_address_type_pattern() -> None:
    """An address type is IPAddress, Hostname, NamedAddress or domain-prefixed."""
    assert errors(gw.Gateway, gateway([HTTP80], addresses=[{"type": "Custom"}])) == [
        f"spec.addresses[0].type: Invalid value: \"Custom\": should match '{gw.ADDRESS_TYPE_PATTERN}'"
    ]


def test_infrastructure_labels_and_annotations_are_checked() -> None:
    """Infrastructure label/annotation keys are qualified names; values and counts are limited."""
    infra = {"labels": {"bad key": "v"}, "annotations": {"example.com/ok": "v"}}
    assert errors(gw.Gateway, gateway([HTTP80], infrastructure=infra)) == [
        (
            'spec.infrastructure.labels: Invalid value: "object": Label keys must be in the form of an optional DNS '
            "subdomain prefix followed by a required name segment of up to 63 characters."
        )
    ]
    assert errors(gw.Gateway, gateway([HTTP80], infrastructure={"labels": {"app": "bad value"}})) == [
        (
            'spec.infrastructure.labels[app]: Invalid value: "bad value": '
            f"should match '{gw.LABEL_VALUE_PATTERN}'"
        )
    ]
    labels = {f"l{i}": "v" for i in range(9)}
    assert errors(gw.Gateway, gateway([HTTP80], infrastructure={"labels": labels})) == [
        "spec.infrastructure.labels: Too many: 9: must have at most 8 items"
    ]
    long_prefix = "a" * 253 + "/name"
    # The key pattern bounds no label's length, so only the prefix length rule catches this one.
    assert errors(gw.Gateway, gateway([HTTP80], infrastructure={"annotations": {long_prefix: "v"}})) == [
        (
            'spec.infrastructure.annotations: Invalid value: "object": If specified, the annotation key\'s prefix must be '
            "a DNS subdomain not longer than 253 characters in total."
        ),
    ]


def test_frontend_tls_validation_rules() -> None:
    """Frontend TLS: at least one CA reference, per-port ports unique, validation mode defaulted."""
    ca = {"group": "", "kind": "ConfigMap", "name": "ca"}
    tls: dict[str, Any] = {"frontend": {"default": {"validation": {"caCertificateRefs": [ca]}}}}
    obj = parse(gw.Gateway, gateway([HTTP80], tls=tls))
    assert obj.to_dict()["spec"]["tls"]["frontend"]["default"]["validation"]["mode"] == "AllowValidOnly"
    tls = {"frontend": {"default": {"validation": {"caCertificateRefs": []}}}}
    assert errors(gw.Gateway, gateway([HTTP80], tls=tls)) == [
        "spec.tls.frontend.default.validation.caCertificateRefs: Invalid value: []: must have at least 1 items"
    ]
    per_port = [{"port": 443, "tls": {}}, {"port": 443, "tls": {}}]
    tls = {"frontend": {"default": {}, "perPort": per_port}}
    assert errors(gw.Gateway, gateway([HTTP80], tls=tls)) == [
        'spec.tls.frontend.perPort: Invalid value: "array": Port for TLS configuration must be unique within the Gateway'
    ]


def test_allowed_listeners_default_to_none() -> None:
    """allowedListeners.namespaces defaults to from None (no ListenerSets)."""
    obj = parse(gw.Gateway, gateway([HTTP80], allowedListeners={}))
    assert obj.to_dict()["spec"]["allowedListeners"] == {"namespaces": {"from": "None"}}


def test_gateway_status_rules() -> None:
    """Status addresses are checked like spec ones; condition types and listener names are list-map keys."""
    cond = {
        "type": "Programmed",
        "status": "True",
        "reason": "Programmed",
        "lastTransitionTime": "2026-01-02T15:04:05Z",
    }
    status = {
        "addresses": [{"value": "10.0.0.300"}],
        "conditions": [cond, cond],
        "listeners": [{"name": "http", "attachedRoutes": 1, "conditions": []}] * 2,
    }
    assert errors(gw.Gateway, {**gateway([HTTP80]), "status": status}) == [
        'status.conditions[1]: Duplicate value: {"type":"Programmed"}',
        'status.listeners[1]: Duplicate value: {"name":"http"}',
        'status.addresses[0].value: Invalid value: "10.0.0.300": must be of type ipv4 or ipv6 when type is IPAddress',
    ]


# ---------------------------------------------------------------------------------------------------
# GatewayClass and ReferenceGrant


def test_gateway_class_controller_name_pattern_and_description_length() -> None:
    """controllerName is a domain-prefixed path; description is at most 64 characters."""
    assert errors(
        gw.GatewayClass, {"metadata": {"name": "c"}, "spec": {"controllerName": "example.net"}}
    ) == [
        f"spec.controllerName: Invalid value: \"example.net\": should match '{gw.GATEWAY_CONTROLLER_PATTERN}'"
    ]
    spec = {"controllerName": "example.net/gw", "description": "d" * 65}
    assert errors(gw.GatewayClass, {"metadata": {"name": "c"}, "spec": spec}) == [
        "spec.description: Too long: may not be more than 64 bytes"
    ]


def test_gateway_class_controller_name_is_immutable() -> None:
    """Changing controllerName on update is refused with upstream's message."""
    old = parse(gw.GatewayClass, {"metadata": {"name": "c"}, "spec": {"controllerName": "example.net/a"}})
    new = parse(gw.GatewayClass, {"metadata": {"name": "c"}, "spec": {"controllerName": "example.net/b"}})
    errs = ErrorList()
    new.check_update(old, errs)
    assert [str(e) for e in errs] == ['spec.controllerName: Invalid value: "string": Value is immutable']
    errs = ErrorList()
    old.check_update(old, errs)
    assert not errs


def test_reference_grant_lists_are_bounded() -> None:
    """from and to hold 1..16 entries; from entries need a namespace."""
    spec = {"from": [], "to": [{"group": "", "kind": "Service"}] * 17}
    assert errors(gw.ReferenceGrant, {"metadata": {"name": "g"}, "spec": spec}) == [
        "spec.from: Invalid value: []: must have at least 1 items",
        "spec.to: Too many: 17: must have at most 16 items",
    ]
    spec = {"from": [{"group": GROUP, "kind": "HTTPRoute"}], "to": [{"group": "", "kind": "Service"}]}
    assert errors(gw.ReferenceGrant, {"metadata": {"name": "g"}, "spec": spec}) == [
        "spec.from[0].namespace: Required value"
    ]


def test_route_status_rules() -> None:
    """A route's status names each parent with at least one condition, condition types unique."""
    cond = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "lastTransitionTime": "2026-01-02T15:04:05Z",
    }
    parent = {"parentRef": {"name": "gw"}, "controllerName": "example.net/gw", "conditions": [cond, cond]}
    assert errors(gw.HTTPRoute, {**route({}), "status": {"parents": [parent]}}) == [
        'status.parents[0].conditions[1]: Duplicate value: {"type":"Accepted"}'
    ]
    parent["conditions"] = []
    assert errors(gw.GRPCRoute, {**grpc_route({}), "status": {"parents": [parent]}}) == [
        "status.parents[0].conditions: Invalid value: []: must have at least 1 items"
    ]
    parent["conditions"] = [cond]
    obj = parse(gw.HTTPRoute, {**route({}), "status": {"parents": [parent]}})
    assert obj.status is not None
    assert obj.status.parents[0].parent_ref.kind == "Gateway"
    assert errors(gw.HTTPRoute, {**route({}), "status": {}}) == ["status.parents: Required value"]


def test_gateway_class_supported_features_are_a_list_map() -> None:
    """status.supportedFeatures is keyed by name."""
    status = {"supportedFeatures": [{"name": "HTTPRoute"}, {"name": "HTTPRoute"}]}
    obj = {"metadata": {"name": "c"}, "spec": {"controllerName": "example.net/gw"}, "status": status}
    assert errors(gw.GatewayClass, obj) == [
        'status.supportedFeatures[1]: Duplicate value: {"name":"HTTPRoute"}'
    ]


def test_listener_tls_options_are_bounded() -> None:
    """A listener's tls options hold at most 16 entries of at most 4096 characters."""
    options = {f"example.com/o{i}": "v" for i in range(17)}
    listener = {"name": "https", "protocol": "HTTPS", "port": 443, "tls": {"options": options}}
    assert errors(gw.Gateway, gateway([listener])) == [
        "spec.listeners[0].tls.options: Too many: 17: must have at most 16 items"
    ]
    listener["tls"] = {"options": {"example.com/o": "v" * 4097}}
    assert errors(gw.Gateway, gateway([listener])) == [
        "spec.listeners[0].tls.options[example.com/o]: Too long: may not be more than 4096 bytes"
    ]


GROUP = "gateway.networking.k8s.io"


# ---------------------------------------------------------------------------------------------------
# Registry entries, columns and helpers


def test_kinds_are_registered_as_upstream_serves_them() -> None:
    """Every kind is in the scheme with upstream's names, scope, short names and subresources."""
    found = {(k.kind, k.version): k for k in REGISTRY if k.group == GROUP}
    assert set(found) == {
        ("GatewayClass", "v1"),
        ("Gateway", "v1"),
        ("HTTPRoute", "v1"),
        ("GRPCRoute", "v1"),
        ("ReferenceGrant", "v1"),
        ("ReferenceGrant", "v1beta1"),
    }
    assert not found["GatewayClass", "v1"].namespaced
    assert found["Gateway", "v1"].short_names == ("gtw",)
    assert found["GatewayClass", "v1"].short_names == ("gc",)
    assert found["ReferenceGrant", "v1"].short_names == ("refgrant",)
    assert found["HTTPRoute", "v1"].short_names == ()
    assert found["ReferenceGrant", "v1"].model is found["ReferenceGrant", "v1beta1"].model
    # Both ReferenceGrant versions share one store prefix.
    assert found["ReferenceGrant", "v1"].key("ns", "g") == found["ReferenceGrant", "v1beta1"].key("ns", "g")
    for k in found.values():
        assert not k.strategic_merge
        assert k.categories == ("gateway-api",)
        assert k.has_status == (k.kind != "ReferenceGrant")
    assert REGISTRY.resolve("refgrant").version == "v1"
    assert REGISTRY.resolve("httproutes.gateway.networking.k8s.io").kind == "HTTPRoute"


def test_table_columns_match_the_printer_columns() -> None:
    """kubectl get shows Class/Address/Programmed, Controller/Accepted and Hostnames."""
    kinds = {k.kind: k for k in REGISTRY if k.group == GROUP}
    g = parse(
        gw.Gateway,
        {**gateway([HTTP80]), "status": {"addresses": [{"value": "10.0.0.1"}, {"value": "10.0.0.2"}]}},
    )
    assert [(c.name, c.value(g)) for c in kinds["Gateway"].columns] == [
        ("Class", "example"),
        ("Address", "10.0.0.1,10.0.0.2"),
        ("Programmed", "Unknown"),
    ]
    gc = parse(gw.GatewayClass, {"metadata": {"name": "c"}, "spec": {"controllerName": "example.net/gw"}})
    assert [(c.name, c.value(gc), c.priority) for c in kinds["GatewayClass"].columns] == [
        ("Controller", "example.net/gw", 0),
        ("Accepted", "Unknown", 0),
        ("Description", "", 1),
    ]
    r = parse(gw.HTTPRoute, route({"hostnames": ["a.example.com", "b.example.com"]}))
    assert [(c.name, c.value(r)) for c in kinds["HTTPRoute"].columns] == [
        ("Hostnames", '["a.example.com","b.example.com"]')
    ]
    assert kinds["HTTPRoute"].columns[0].value(parse(gw.HTTPRoute, route({}))) == ""


def test_parent_reference_key_fills_defaults_and_namespace() -> None:
    """ParentReference.key() names the parent with defaults and the route's namespace."""
    ref = parse(gw.ParentReference, {"name": "gw", "sectionName": "https"})
    assert ref.key("apps") == gw.ParentKey(GROUP, "Gateway", "apps", "gw", "https", 0)
    ref = parse(
        gw.ParentReference, {"name": "svc", "group": "", "kind": "Service", "namespace": "db", "port": 5432}
    )
    assert ref.key("apps") == gw.ParentKey("", "Service", "db", "svc", "", 5432)
