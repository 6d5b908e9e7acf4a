"""Route matching with Envoy's semantics, and the RE2 subset the sidecar runs on Python's re."""

from __future__ import annotations

import pytest

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
    global_replace,
)
from innermesh.proxy.plan import RequestHead, RouteMatch


def head(
    path: bytes = b"/",
    query: bytes = b"",
    method: bytes = b"GET",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    authority: bytes = b"svc.ns:8080",
) -> RequestHead:
    return RequestHead(method=method, path=path, query=query, authority=authority, headers=list(headers))


PATH_CASES: list[tuple[str, RouteMatch, RequestHead, bool]] = [
    ("exact hit", ExactPath(b"/foo"), head(b"/foo"), True),
    ("exact ignores query", ExactPath(b"/foo"), head(b"/foo", b"a=1"), True),
    ("exact is not prefix", ExactPath(b"/foo"), head(b"/foo/"), False),
    ("exact is case-sensitive", ExactPath(b"/foo"), head(b"/FOO"), False),
    ("exact case-insensitive", ExactPath(b"/foo", case_sensitive=False), head(b"/FoO"), True),
    ("prefix is a plain string prefix", PrefixPath(b"/foo"), head(b"/foobar"), True),
    ("prefix miss", PrefixPath(b"/foo"), head(b"/fo"), False),
    ("prefix case-insensitive", PrefixPath(b"/api", case_sensitive=False), head(b"/API/x"), True),
    ("separated prefix: equal", SeparatedPrefixPath(b"/foo"), head(b"/foo"), True),
    ("separated prefix: segment", SeparatedPrefixPath(b"/foo"), head(b"/foo/bar"), True),
    ("separated prefix: trailing slash", SeparatedPrefixPath(b"/foo"), head(b"/foo/"), True),
    ("separated prefix: not mid-segment", SeparatedPrefixPath(b"/foo"), head(b"/foobar"), False),
    ("separated prefix case-insensitive", SeparatedPrefixPath(b"/foo", False), head(b"/FOO/x"), True),
    ("regex is a full match", RegexPath(compile_re2(r"/v\d+")), head(b"/v12"), True),
    ("regex does not search", RegexPath(compile_re2(r"/v\d+")), head(b"/v12/x"), False),
    ("regex ignores the query", RegexPath(compile_re2(r"/v\d+")), head(b"/v1", b"x=1"), True),
    ("any path", AnyPath(), head(b"/whatever"), True),
    ("connect matches CONNECT", ConnectMatch(), head(b"", method=b"CONNECT"), True),
    ("connect ignores other methods", ConnectMatch(), head(b"/", method=b"GET"), False),
    ("prefix does not match CONNECT (no path)", PrefixPath(b"/"), head(b"", method=b"CONNECT"), False),
]


@pytest.mark.parametrize(
    ("name", "match", "request_head", "expected"), PATH_CASES, ids=[c[0] for c in PATH_CASES]
)
def test_path_matching(name: str, match: RouteMatch, request_head: RequestHead, expected: bool) -> None:
    """Each path specifier follows Envoy: no query, full-match regexes, slash-aware separated prefix."""
    assert match.matches(request_head) is expected


def exact(value: bytes, ignore_case: bool = False) -> StringMatch:
    return StringMatch("exact", value.lower() if ignore_case else value, ignore_case)


HEADER_CASES: list[tuple[str, HeaderMatch, RequestHead, bool]] = [
    ("exact hit", HeaderMatch(b"x-user", exact(b"bob")), head(headers=((b"x-user", b"bob"),)), True),
    ("exact miss", HeaderMatch(b"x-user", exact(b"bob")), head(headers=((b"x-user", b"alice"),)), False),
    ("missing header fails", HeaderMatch(b"x-user", exact(b"bob")), head(), False),
    ("missing header fails even inverted", HeaderMatch(b"x-user", exact(b"bob"), invert=True), head(), False),
    (
        "inverted mismatch holds",
        HeaderMatch(b"x-user", exact(b"bob"), invert=True),
        head(headers=((b"x-user", b"al"),)),
        True,
    ),
    (
        "repeats are joined by commas",
        HeaderMatch(b"x-v", exact(b"a,b")),
        head(headers=((b"x-v", b"a"), (b"x-v", b"b"))),
        True,
    ),
    (
        "ignore case",
        HeaderMatch(b"x-user", exact(b"BOB", ignore_case=True)),
        head(headers=((b"x-user", b"Bob"),)),
        True,
    ),
    ("prefix", HeaderMatch(b"x-v", StringMatch("prefix", b"ab")), head(headers=((b"x-v", b"abc"),)), True),
    ("suffix", HeaderMatch(b"x-v", StringMatch("suffix", b"bc")), head(headers=((b"x-v", b"abc"),)), True),
    ("contains", HeaderMatch(b"x-v", StringMatch("contains", b"b")), head(headers=((b"x-v", b"abc"),)), True),
    (
        "regex full match",
        HeaderMatch(b"x-v", StringMatch("regex", regex=compile_re2("a.c"))),
        head(headers=((b"x-v", b"abc"),)),
        True,
    ),
    (
        "regex does not search",
        HeaderMatch(b"x-v", StringMatch("regex", regex=compile_re2("b"))),
        head(headers=((b"x-v", b"abc"),)),
        False,
    ),
    ("present", HeaderMatch(b"x-v"), head(headers=((b"x-v", b""),)), True),
    ("present, missing", HeaderMatch(b"x-v"), head(), False),
    ("present false, missing", HeaderMatch(b"x-v", present=False), head(), True),
    ("present false, there", HeaderMatch(b"x-v", present=False), head(headers=((b"x-v", b"1"),)), False),
    ("inverted present, missing", HeaderMatch(b"x-v", invert=True), head(), True),
    ("missing as empty", HeaderMatch(b"x-v", exact(b""), missing_as_empty=True), head(), True),
    ("range in", HeaderMatch(b"x-n", IntRange(1, 11)), head(headers=((b"x-n", b"10"),)), True),
    ("range end is exclusive", HeaderMatch(b"x-n", IntRange(1, 11)), head(headers=((b"x-n", b"11"),)), False),
    ("range not a number", HeaderMatch(b"x-n", IntRange(1, 11)), head(headers=((b"x-n", b"x"),)), False),
    ("method via :method", HeaderMatch(b":method", exact(b"POST")), head(method=b"POST"), True),
    ("method mismatch", HeaderMatch(b":method", exact(b"POST")), head(method=b"GET"), False),
    ("authority via :authority", HeaderMatch(b":authority", exact(b"svc.ns:8080")), head(), True),
    (":path includes the query", HeaderMatch(b":path", exact(b"/a?b=1")), head(b"/a", b"b=1"), True),
]


@pytest.mark.parametrize(
    ("name", "match", "request_head", "expected"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES]
)
def test_header_matching(name: str, match: HeaderMatch, request_head: RequestHead, expected: bool) -> None:
    """Header conditions as Envoy's HeaderUtility::matchHeaders evaluates them."""
    assert match.holds(request_head) is expected


QUERY_CASES: list[tuple[str, QueryMatch, bytes, bool]] = [
    ("exact", QueryMatch(b"a", exact(b"1")), b"a=1&b=2", True),
    ("only the first value counts", QueryMatch(b"a", exact(b"2")), b"a=1&a=2", False),
    ("first value", QueryMatch(b"a", exact(b"1")), b"a=1&a=2", True),
    ("values are not percent-decoded", QueryMatch(b"a", exact(b"%20")), b"a=%20", True),
    ("decoded form does not match", QueryMatch(b"a", exact(b" ")), b"a=%20", False),
    ("a name without = has an empty value", QueryMatch(b"flag", exact(b"")), b"flag&x=1", True),
    ("present", QueryMatch(b"flag"), b"x=1&flag", True),
    ("present, absent", QueryMatch(b"flag"), b"x=1", False),
    ("present false, absent", QueryMatch(b"flag", present=False), b"x=1", True),
    ("names are case-sensitive", QueryMatch(b"A", exact(b"1")), b"a=1", False),
    ("regex on the value", QueryMatch(b"n", StringMatch("regex", regex=compile_re2(r"\d+"))), b"n=42", True),
    ("empty query", QueryMatch(b"a"), b"", False),
]


@pytest.mark.parametrize(("name", "match", "query", "expected"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_query_matching(name: str, match: QueryMatch, query: bytes, expected: bool) -> None:
    """Query parameters as Envoy parses them: raw values, first occurrence only."""
    assert match.holds(head(query=query)) is expected


def test_every_condition_must_hold() -> None:
    """A path match with conditions needs the path, every header and every query parameter."""
    m = PrefixPath(
        b"/api",
        when=Conditions(
            headers=(HeaderMatch(b":method", exact(b"GET")), HeaderMatch(b"x-env", exact(b"canary"))),
            query=(QueryMatch(b"debug"),),
        ),
    )
    good = head(b"/api/x", b"debug=1", headers=((b"x-env", b"canary"),))
    assert m.matches(good)
    assert not m.matches(head(b"/api/x", b"debug=1"))
    assert not m.matches(head(b"/api/x", headers=((b"x-env", b"canary"),)))
    assert not m.matches(head(b"/other", b"debug=1", headers=((b"x-env", b"canary"),)))


def test_grpc_condition_needs_grpc_content_type() -> None:
    """RouteMatch.grpc: only requests whose content-type is application/grpc, alone or followed by
    "+" (Envoy's test); gRPC-Web and lookalikes are not gRPC."""
    m = AnyPath(Conditions(grpc=True))
    for ct in (b"application/grpc", b"application/grpc+proto", b"application/grpc+json"):
        assert m.matches(head(headers=((b"content-type", ct),))), ct
    for ct in (
        b"application/json",
        b"application/grpc-web",
        b"application/grpc-web+proto",
        b"application/grpcx",
    ):
        assert not m.matches(head(headers=((b"content-type", ct),))), ct
    assert not m.matches(head())


# --- the RE2 subset -----------------------------------------------------------------------------------

ACCEPTED = [
    (r"/api/v\d+/users/[a-z0-9-]+", b"/api/v2/users/ab-1", True),
    (r"(?i)/Foo", b"/fOO", True),
    (r"a{2,3}", b"aaa", True),
    (r"a{2}", b"aaa", False),
    (r"(?P<svc>[a-z]+)\.(?:ns)", b"echo.ns", True),
    (r"a+?b", b"aab", True),
    (r"abc\z", b"abc", True),
    (r"[$]", b"$", True),
    # RE2's $ matches only at the very end; Python's would also match before a final newline.
    ("a$\n", b"a\n", False),
    (r"(?m)a$\n", b"a\n", True),
    (r"[]a]", b"]", True),
    (r"x{", b"x{", True),
]


@pytest.mark.parametrize(("pattern", "subject", "expected"), ACCEPTED)
def test_re2_patterns_that_run_the_same(pattern: str, subject: bytes, expected: bool) -> None:
    """Patterns inside the subset compile and full-match as RE2 would."""
    assert (compile_re2(pattern).fullmatch(subject) is not None) is expected


REFUSED = [
    (r"(a)\1", "backreference \\1 (RE2 has none)"),
    (r"(?P<x>a)(?P=x)", "named backreferences are not RE2 syntax"),
    (r"a(?=b)", "lookahead is not RE2 syntax"),
    (r"a(?!b)", "lookahead is not RE2 syntax"),
    (r"(?<=a)b", "lookbehind is not RE2 syntax"),
    (r"(?<!a)b", "lookbehind is not RE2 syntax"),
    (r"(?>ab)", "atomic groups are not RE2 syntax"),
    (r"a*+", "possessive quantifiers are not RE2 syntax"),
    (r"a{2}+", "possessive quantifiers are not RE2 syntax"),
    (r"(?(1)a|b)", "conditional groups are not RE2 syntax"),
    (r"(?#note)a", "comments are not RE2 syntax"),
    (r"(?x)a b", "unsupported group syntax (?x"),
    (r"(?U)a+", "the U (ungreedy) flag is not supported"),
    (r"a{,3}", "{,n} is a literal in RE2 but a repetition in Python"),
    (r"[[:alpha:]]+", "POSIX character classes ([[:alpha:]]) are not supported"),
    (r"a\Z", "\\Z is not RE2 syntax (use \\z)"),
    ("caf\u00e9", "non-ASCII patterns are not supported"),
    ("[a", "unterminated character class"),
    ("a\\", "trailing backslash"),
]


@pytest.mark.parametrize(("pattern", "message"), REFUSED)
def test_non_re2_patterns_are_refused(pattern: str, message: str) -> None:
    """Constructs RE2 lacks (or that Python reads differently) are refused, never run."""
    with pytest.raises(UnsupportedRegex) as e:
        compile_re2(pattern)
    assert str(e.value) == message


def test_patterns_python_cannot_compile_are_refused() -> None:
    """RE2-only syntax (Unicode classes, \\Q...\\E) fails as 'invalid regex' rather than misbehaving."""
    for pattern in (r"\pL+", r"\Q.\E", r"(a"):
        with pytest.raises(UnsupportedRegex, match=r"^invalid regex: "):
            compile_re2(pattern)


REPLACE_CASES = [
    # RE2's GlobalReplace does not replace an empty match right after a match (re.sub would: "XX").
    (".*", "X", b"/abc", b"X"),
    ("x*", "-", b"abc", b"-a-b-c-"),
    ("o", "0", b"/foo", b"/f00"),
    (r"^/foo(/.*)?$", r"/bar\1", b"/foo/x/y", b"/bar/x/y"),
    (r"^/foo(/.*)?$", r"/bar\1", b"/foo", b"/bar"),
    (r"^/(\w+)/(\w+)$", r"/\2/\1", b"/a/b", b"/b/a"),
    (r"a", r"\\", b"bab", b"b\\b"),
    (r"q", "z", b"abc", b"abc"),
]


@pytest.mark.parametrize(("pattern", "substitution", "subject", "expected"), REPLACE_CASES)
def test_regex_rewrite_is_re2_global_replace(
    pattern: str, substitution: str, subject: bytes, expected: bytes
) -> None:
    """Envoy's regex_rewrite: every match replaced, groups by \\N, RE2's rule for empty matches."""
    compiled = compile_re2(pattern)
    assert global_replace(compiled, compile_substitution(substitution, compiled.groups), subject) == expected


def test_bad_substitutions_are_refused() -> None:
    """A group the pattern lacks, or an escape RE2 does not know, is an error at build time."""
    with pytest.raises(UnsupportedRegex, match=r"uses group \\2 but the pattern has 1"):
        compile_substitution(r"\2", 1)
    with pytest.raises(UnsupportedRegex, match=r"invalid escape \\n"):
        compile_substitution(r"a\n", 0)
