"""Route semantics, checked by playing Envoy's rules over the translator's output: path rewrites give
the Gateway API's table of results, and the first Envoy route to match a request is the one the
Gateway API's precedence picks."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_xds_golden import mesh_state

from innermesh.xds.translate import translate
from innermesh.xds.types import ROUTE, ProxyInfo

PROXY = ProxyInfo(node_id="sidecar~shop~client", kind="sidecar", namespace="shop", workload="client")
BASE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop}
spec:
  addresses: [127.0.0.2]
"""


def routes_for(rules: str) -> list[Any]:
    manifests = (
        BASE
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n"
        + "spec:\n  parentRefs: [{group: '', kind: Service, name: web}]\n  rules:\n"
        + rules
    )
    table = translate(mesh_state(manifests), PROXY, None)[ROUTE]["outbound"]
    return list(next(vh for vh in table.virtual_hosts if vh.name.startswith("web.")).routes)


# -- Envoy's semantics, as far as these tests need them ---------------------------------------------------


def envoy_matches(match: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> bool:
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        ok = path.startswith(match.prefix)
    elif kind == "path":
        ok = path == match.path
    elif kind == "path_separated_prefix":
        p = match.path_separated_prefix
        ok = path == p or path.startswith(p + "/")
    else:
        ok = re.fullmatch(match.safe_regex.regex, path) is not None
    request = {":method": method, **(headers or {})}
    return ok and all(request.get(h.name) == h.string_match.exact for h in match.headers)


def envoy_rewrite(route: Any, path: str) -> str:
    action = route.redirect if route.HasField("redirect") else route.route
    if route.HasField("redirect") and action.path_redirect:
        return str(action.path_redirect)
    if action.HasField("regex_rewrite"):
        substitution = re.sub(r"\\(\d)", r"\\g<\1>", action.regex_rewrite.substitution)
        return re.sub(action.regex_rewrite.pattern.regex, substitution, path)
    if action.prefix_rewrite:
        matched = route.match.path_separated_prefix or route.match.prefix
        return str(action.prefix_rewrite + path[len(matched) :])
    return path


# The table in the Gateway API's HTTPPathModifier.ReplacePrefixMatch, plus the matched prefix "/".
PREFIX_TABLE = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    ("/a/b", "/", "/xyz", "/xyz/a/b"),
    ("/a/b", "/", "/", "/a/b"),
]


@pytest.mark.parametrize("filter_type", ["URLRewrite", "RequestRedirect"])
@pytest.mark.parametrize(("path", "prefix", "replacement", "expected"), PREFIX_TABLE)
def test_replace_prefix_match_gives_the_gateway_api_table(
    filter_type: str, path: str, prefix: str, replacement: str, expected: str
) -> None:
    """ReplacePrefixMatch, in a rewrite and in a redirect, rewrites every row of upstream's table as
    the table says, once Envoy's prefix_rewrite or regex_rewrite has done its work."""
    field = "urlRewrite" if filter_type == "URLRewrite" else "requestRedirect"
    backends = "\n    backendRefs: [{name: web, port: 80}]" if filter_type == "URLRewrite" else ""
    (route,) = routes_for(
        f"  - matches: [{{path: {{type: PathPrefix, value: '{prefix}'}}}}]\n"
        f"    filters: [{{type: {filter_type}, {field}: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: '{replacement}'}}}}}}]"
        f"{backends}\n"
    )
    assert envoy_matches(route.match, path)
    assert envoy_rewrite(route, path) == expected


@pytest.mark.parametrize("filter_type", ["URLRewrite", "RequestRedirect"])
def test_replace_full_path(filter_type: str) -> None:
    """ReplaceFullPath replaces the whole path, whatever it was."""
    field = "urlRewrite" if filter_type == "URLRewrite" else "requestRedirect"
    backends = "\n    backendRefs: [{name: web, port: 80}]" if filter_type == "URLRewrite" else ""
    (route,) = routes_for(
        "  - matches: [{path: {type: PathPrefix, value: /old}}]\n"
        f"    filters: [{{type: {filter_type}, {field}: {{path: {{type: ReplaceFullPath, replaceFullPath: /new/page}}}}}}]"
        f"{backends}\n"
    )
    for path in ("/old", "/old/deep/er"):
        assert envoy_rewrite(route, path) == "/new/page"


def test_path_prefix_is_element_wise() -> None:
    """PathPrefix /abc matches /abc, /abc/ and /abc/def, never /abcd; /abc/ means the same."""
    for value in ("/abc", "/abc/"):
        (route,) = routes_for(
            f"  - matches: [{{path: {{type: PathPrefix, value: '{value}'}}}}]\n    backendRefs: [{{name: web, port: 80}}]\n"
        )
        assert [envoy_matches(route.match, p) for p in ("/abc", "/abc/", "/abc/def", "/abcd", "/ab")] == [
            True,
            True,
            True,
            False,
            False,
        ]


# -- precedence: the first Envoy route to match is the Gateway API's choice --------------------------------

SEGMENTS = ("a", "b")
paths = st.lists(st.sampled_from(SEGMENTS), max_size=2).map(lambda s: "/" + "/".join(s))
matches = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Exact", "PathPrefix"]),
        "value": paths,
        "method": st.sampled_from([None, "GET", "POST"]),
        "headers": st.lists(st.sampled_from(["x-a", "x-b", "x-c"]), unique=True, max_size=2),
    }
)


def gateway_matches(m: dict[str, Any], path: str, method: str, headers: dict[str, str]) -> bool:
    value = m["value"]
    if m["type"] == "Exact":
        ok = path == value
    else:
        prefix = value.rstrip("/")
        ok = path == prefix or path.startswith(prefix + "/") or not prefix
    return ok and m["method"] in (None, method) and all(headers.get(h) == "1" for h in m["headers"])


def gateway_rank(m: dict[str, Any]) -> tuple[int, int, int, int]:
    """Upstream's criteria, best first: exact path, longest prefix, method, most headers."""
    return (
        0 if m["type"] == "Exact" else 1,
        -len(m["value"].rstrip("/") if m["type"] == "PathPrefix" else m["value"]),
        0 if m["method"] else 1,
        -len(m["headers"]),
    )


def rules_yaml(rules: list[dict[str, Any]]) -> str:
    out = ""
    for m in rules:
        match = f"{{path: {{type: {m['type']}, value: '{m['value']}'}}"
        if m["method"]:
            match += f", method: {m['method']}"
        if m["headers"]:
            match += ", headers: [" + ", ".join(f"{{name: {h}, value: '1'}}" for h in m["headers"]) + "]"
        out += f"  - matches: [{match}}}]\n    backendRefs: [{{name: web, port: 80}}]\n"
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(matches, min_size=1, max_size=6),
    paths,
    st.sampled_from(["GET", "POST"]),
    st.lists(st.sampled_from(["x-a", "x-b", "x-c"]), unique=True),
)
def test_first_envoy_match_is_the_gateway_api_choice(
    rules: list[dict[str, Any]], path: str, method: str, present: list[str]
) -> None:
    """Of the rules that match a request, the one Envoy reaches first ranks best by upstream's
    criteria, and among equals comes first in the route; if none matches, no Envoy route does."""
    headers = dict.fromkeys(present, "1")
    envoy = routes_for(rules_yaml(rules))
    first = next((r for r in envoy if envoy_matches(r.match, path, method, headers)), None)
    candidates = [
        (gateway_rank(m), i) for i, m in enumerate(rules) if gateway_matches(m, path, method, headers)
    ]
    if not candidates:
        assert first is None
        return
    assert first is not None
    _, best = min(candidates)
    assert first.name == f"HTTPRoute/shop/r/{best}/0"
