"""The plan's per-request calls: domain lookup, route selection, header mutations, rewrites,
redirects and the weighted backend choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from innermesh.proxy.matching import ExactPath, PrefixPath, compile_re2, compile_substitution
from innermesh.proxy.plan import (
    Backend,
    DirectResponse,
    Forward,
    HeaderMutation,
    PathRewrite,
    Redirect,
    RequestHead,
    Route,
    RouteTable,
    VirtualHost,
)


def head(
    path: bytes = b"/",
    query: bytes = b"",
    authority: bytes = b"example.com",
    scheme: bytes = b"http",
) -> RequestHead:
    return RequestHead(method=b"GET", path=path, query=query, authority=authority, headers=[], scheme=scheme)


def vhost(name: str, *domains: str) -> VirtualHost:
    return VirtualHost(name, domains, ())


# --- RouteTable.lookup -----------------------------------------------------------------------------------

TABLE = RouteTable(
    "outbound",
    (
        vhost("exact", "api.example.com", "echo.ns:8080"),
        vhost("suffix-short", "*.com"),
        vhost("suffix-long", "*.example.com"),
        vhost("suffix-dash", "*-canary.example.com"),
        vhost("prefix", "api.*"),
        vhost("prefix-long", "api.example.*"),
        vhost("default", "*"),
    ),
)

LOOKUPS = [
    (b"api.example.com", "exact"),
    (b"echo.ns:8080", "exact"),
    (b"echo.ns:9090", "default"),  # ports are part of the domain
    (b"www.example.com", "suffix-long"),  # the longest suffix wins
    (b"x-canary.example.com", "suffix-dash"),
    (b"www.other.com", "suffix-short"),
    (b"example.com", "suffix-short"),  # "*.example.com" needs at least one character before it
    (b"api.example.org", "prefix-long"),
    (b"api.other", "prefix"),
    (b"nothing", "default"),
]


@pytest.mark.parametrize(("authority", "expected"), LOOKUPS)
def test_domain_lookup_follows_envoy_order(authority: bytes, expected: str) -> None:
    """Exact, then the longest suffix wildcard, then the longest prefix wildcard, then '*'."""
    found = TABLE.lookup(authority)
    assert found is not None
    assert found.name == expected


def test_domains_are_case_insensitive_and_there_may_be_no_default() -> None:
    """Domains are stored lower-case (authorities arrive lower-cased); no '*' means no match."""
    table = RouteTable("t", (vhost("a", "Echo.NS"),))
    assert table.lookup(b"echo.ns") is table.virtual_hosts[0]
    assert table.lookup(b"other") is None


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        (("a.com", "A.com"), 'virtual_hosts[1].domains[0]: domain "A.com" is used by another virtual host'),
        (("*", "*"), 'virtual_hosts[1].domains[0]: domain "*" is used by another virtual host'),
        (("a.*.com",), 'virtual_hosts[0].domains[0]: "a.*.com": a wildcard may only lead or trail a domain'),
    ],
)
def test_invalid_domains_are_refused(domains: tuple[str, ...], message: str) -> None:
    """Envoy refuses a domain used twice and wildcards in the middle."""
    vhosts = (
        tuple(vhost(f"v{i}", d) for i, d in enumerate(domains))
        if len(domains) > 1
        else (vhost("v", *domains),)
    )
    with pytest.raises(ValueError) as e:
        RouteTable("t", vhosts)
    assert str(e.value) == message


# --- VirtualHost.select ------------------------------------------------------------------------------------


def test_select_takes_the_first_route_that_matches() -> None:
    """Routes are in precedence order already (the translator sorts them): first match wins."""
    exact = Route("exact", ExactPath(b"/api/v1"), DirectResponse(200))
    longer = Route("longer", PrefixPath(b"/api/"), DirectResponse(201))
    catch_all = Route("all", PrefixPath(b"/"), DirectResponse(202))
    v = VirtualHost("v", ("*",), (exact, longer, catch_all))
    assert v.select(head(b"/api/v1")) is exact
    assert v.select(head(b"/api/v2")) is longer
    assert v.select(head(b"/x")) is catch_all
    assert VirtualHost("v", ("*",), (exact,)).select(head(b"/x")) is None


# --- HeaderMutation.apply ----------------------------------------------------------------------------------


def test_header_mutation_removes_then_sets_then_adds() -> None:
    """Gateway API modifiers: set replaces every value, add appends, remove deletes every value."""
    m = HeaderMutation(
        set=((b"x-set", b"new"),),
        add=((b"x-add", b"2"),),
        remove=frozenset({b"x-gone"}),
    )
    before = [
        (b"x-set", b"old1"),
        (b"x-gone", b"a"),
        (b"x-add", b"1"),
        (b"x-set", b"old2"),
        (b"x-gone", b"b"),
    ]
    after = m.apply(before)
    assert after == [(b"x-add", b"1"), (b"x-set", b"new"), (b"x-add", b"2")]
    assert before[0] == (b"x-set", b"old1")  # the input is not changed


def test_conditional_append_actions() -> None:
    """ADD_IF_ABSENT and OVERWRITE_IF_EXISTS judge presence after the removals, as Envoy does."""
    m = HeaderMutation(
        add_if_absent=((b"x-a", b"default"), (b"x-b", b"default")),
        set_if_exists=((b"x-c", b"over"), (b"x-d", b"over")),
        remove=frozenset({b"x-b", b"x-d"}),
    )
    out = m.apply([(b"x-a", b"mine"), (b"x-b", b"mine"), (b"x-c", b"mine"), (b"x-d", b"mine")])
    assert sorted(out) == [(b"x-a", b"mine"), (b"x-b", b"default"), (b"x-c", b"over")]


# --- PathRewrite.apply ----------------------------------------------------------------------------------------

# Gateway API's ReplacePrefixMatch table (HTTPPathModifier), plus the "/" prefix.
PREFIX_CASES = [
    (b"/foo/bar", b"/foo", b"/xyz", b"/xyz/bar"),
    (b"/foo/bar", b"/foo", b"/xyz/", b"/xyz/bar"),
    (b"/foo/bar", b"/foo/", b"/xyz", b"/xyz/bar"),
    (b"/foo/bar", b"/foo/", b"/xyz/", b"/xyz/bar"),
    (b"/foo", b"/foo", b"/xyz", b"/xyz"),
    (b"/foo/", b"/foo", b"/xyz", b"/xyz/"),
    (b"/foo/bar", b"/foo", b"", b"/bar"),
    (b"/foo/", b"/foo", b"", b"/"),
    (b"/foo", b"/foo", b"", b"/"),
    (b"/foo/", b"/foo", b"/", b"/"),
    (b"/foo", b"/foo", b"/", b"/"),
    (b"/foo/bar", b"/foo", b"/", b"/bar"),
    (b"/FOO/bar", b"/foo", b"/xyz", b"/xyz/bar"),  # matched case-insensitively: same length replaced
    (b"/anything", b"/", b"/xyz", b"/xyz/anything"),
    (b"/", b"/", b"/xyz", b"/xyz/"),
]


@pytest.mark.parametrize(("path", "prefix", "replacement", "expected"), PREFIX_CASES)
def test_prefix_rewrite_is_gateway_api_replace_prefix_match(
    path: bytes, prefix: bytes, replacement: bytes, expected: bytes
) -> None:
    """Slash-aware: never a doubled or a lost '/'."""
    assert PathRewrite("prefix", replacement, prefix).apply(path) == expected


def test_full_and_regex_rewrites() -> None:
    """ReplaceFullPath replaces everything; regex_rewrite substitutes groups."""
    assert PathRewrite("full", b"/new").apply(b"/old/path") == b"/new"
    pattern = compile_re2(r"^/v1/(.*)$")
    rewrite = PathRewrite("regex", pattern=pattern, template=compile_substitution(r"/v2/\1", pattern.groups))
    assert rewrite.apply(b"/v1/users/7") == b"/v2/users/7"
    assert rewrite.apply(b"/other") == b"/other"


# --- Redirect.location -------------------------------------------------------------------------------------

REDIRECTS = [
    # Gateway API conformance (HTTPRouteRedirectPortAndScheme, mesh redirect tests)
    (
        "scheme change drops the old port",
        Redirect(302, scheme=b"https", host=b"example.org"),
        head(b"/scheme", authority=b"example.com:8080"),
        b"https://example.org/scheme",
    ),
    (
        "no scheme keeps the request port",
        Redirect(302, host=b"example.org"),
        head(b"/p", authority=b"example.com:8080"),
        b"http://example.org:8080/p",
    ),
    (
        "port 80 with http is omitted",
        Redirect(302, host=b"example.org", port=80),
        head(b"/p", authority=b"example.com:8080"),
        b"http://example.org/p",
    ),
    (
        "explicit port",
        Redirect(302, port=8083),
        head(b"/port", authority=b"echo.ns"),
        b"http://echo.ns:8083/port",
    ),
    (
        "https with explicit port",
        Redirect(301, scheme=b"https", port=8443),
        head(b"/", authority=b"echo.ns"),
        b"https://echo.ns:8443/",
    ),
    (
        "http with port 443 keeps it",
        Redirect(302, scheme=b"http", port=443),
        head(b"/", authority=b"h", scheme=b"https"),
        b"http://h:443/",
    ),
    (
        "https with 443 omits it",
        Redirect(302, scheme=b"https", port=443),
        head(b"/", authority=b"h:80"),
        b"https://h/",
    ),
    (
        "request without a port",
        Redirect(302, host=b"other"),
        head(b"/x", authority=b"echo.ns"),
        b"http://other/x",
    ),
    (
        "https request keeps https",
        Redirect(302, host=b"other"),
        head(b"/x", authority=b"echo", scheme=b"https"),
        b"https://other/x",
    ),
    ("query is kept", Redirect(302), head(b"/x", b"a=1", authority=b"h:8080"), b"http://h:8080/x?a=1"),
    ("strip query", Redirect(302, strip_query=True), head(b"/x", b"a=1", authority=b"h"), b"http://h/x"),
    (
        "full path",
        Redirect(302, path=PathRewrite("full", b"/new")),
        head(b"/old", b"q=1", authority=b"h"),
        b"http://h/new?q=1",
    ),
    (
        "path with its own query",
        Redirect(302, path=PathRewrite("full", b"/new?z=9")),
        head(b"/old", b"q=1", authority=b"h"),
        b"http://h/new?z=9",
    ),
    (
        "prefix path",
        Redirect(302, path=PathRewrite("prefix", b"/v2", b"/v1")),
        head(b"/v1/users", authority=b"h"),
        b"http://h/v2/users",
    ),
    (
        "IPv6 authority",
        Redirect(302, path=PathRewrite("full", b"/y")),
        head(b"/x", authority=b"[::1]:8080"),
        b"http://[::1]:8080/y",
    ),
]


@pytest.mark.parametrize(
    ("name", "redirect", "request_head", "expected"), REDIRECTS, ids=[r[0] for r in REDIRECTS]
)
def test_redirect_location(name: str, redirect: Redirect, request_head: RequestHead, expected: bytes) -> None:
    """Gateway API RequestRedirect: unset parts from the request, default ports omitted."""
    assert redirect.location(request_head) == expected


# --- Forward.pick_backend ---------------------------------------------------------------------------------


def test_weighted_backends_are_picked_in_proportion() -> None:
    """weighted_clusters: each backend gets weight / total of the requests; weight 0 gets none."""
    f = Forward((Backend("a", 70), Backend("zero", 0), Backend("b", 20), Backend("c", 10)))
    rng = random.Random(7)
    counts = Counter(f.pick_backend(rng).cluster for _ in range(20_000))
    assert counts["zero"] == 0
    assert abs(counts["a"] / 20_000 - 0.70) < 0.02
    assert abs(counts["b"] / 20_000 - 0.20) < 0.02
    assert abs(counts["c"] / 20_000 - 0.10) < 0.02


def test_weight_boundaries() -> None:
    """The draw is uniform over [0, total): both ends land on the right backend."""

    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    f = Forward((Backend("a", 1), Backend("b", 3)))
    assert f.pick_backend(Fixed(0.0)).cluster == "a"
    assert f.pick_backend(Fixed(0.2499)).cluster == "a"
    assert f.pick_backend(Fixed(0.25)).cluster == "b"
    assert f.pick_backend(Fixed(0.9999)).cluster == "b"


def test_a_forward_needs_some_weight() -> None:
    """All weights 0 is a configuration error, as in Envoy."""
    with pytest.raises(ValueError, match="total weight above 0"):
        Forward((Backend("a", 0),))
