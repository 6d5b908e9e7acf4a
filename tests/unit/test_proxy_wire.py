"""HTTP/1.1 head bytes: the scans that decide which heads take the simple path, the head edits that
apply header mutations to bytes, and the parsing they fall back on.

The simple path trusts two things checked here: a scan accepts only heads it reads the way llhttp
and the general path read them (a property over generated heads), and a ``HeadEdit`` changes a head
exactly as ``HeaderMutation.apply`` changes its header list (a property over generated mutations).
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innermesh.proxy.plan import HeaderMutation, Headers
from innermesh.proxy.runtime import wire

MAX_FIELDS = 100


def request(*lines: str, line: str = "GET /p?q=1 HTTP/1.1") -> bytes:
    return "\r\n".join((line, *lines, "", "")).encode()


def response(*lines: str, status: str = "HTTP/1.1 200 OK") -> bytes:
    return request(*lines, line=status)


# --- simple_request ------------------------------------------------------------------------------------


def test_simple_request_reads_the_line_the_host_and_the_length() -> None:
    """Method, path and query from the request line; the Host lower-cased and trimmed; the head kept."""
    head = request("Host:  Echo.Default:8080 \t", "Content-Length: 12", "Accept: */*")
    r = wire.simple_request(head, "10.0.0.1", MAX_FIELDS)
    assert r is not None
    assert (r.head.method, r.head.path, r.head.query) == (b"GET", b"/p", b"q=1")
    assert (r.head.authority, r.head.source_ip, r.head.scheme) == (b"echo.default:8080", "10.0.0.1", b"http")
    assert (r.length, r.chunked, r.raw) == (12, False, head)
    assert r.head.headers == [], "the header list is parsed only when something reads it"
    assert (r.forwarded_for, r.has_proto, r.has_request_id, r.upgrade, r.expect_continue) == (
        None,
        False,
        False,
        None,
        False,
    )


def test_simple_request_notes_the_forwarding_headers_it_keeps() -> None:
    """X-Forwarded-Proto and X-Request-Id stay in the head; the request says it carried them."""
    r = wire.simple_request(
        request("host: a", "X-Request-Id: abc", "x-forwarded-proto: https"), "", MAX_FIELDS
    )
    assert r is not None
    assert (r.has_proto, r.has_request_id, r.length) == (True, True, None)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", b"/", b""),
        ("/a/b?x=1&y", b"/a/b", b"x=1&y"),
        ("/a#frag", b"/a", b""),
        ("/a?x#frag", b"/a", b"x#frag"),
        ("/a#frag?x", b"/a", b"x"),
    ],
)
def test_simple_request_splits_the_target_as_the_general_path_does(
    target: str, path: bytes, query: bytes
) -> None:
    """The path ends at ``?`` (or ``#``); the query is what follows ``?``."""
    r = wire.simple_request(request("Host: a", line=f"GET {target} HTTP/1.1"), "", MAX_FIELDS)
    assert r is not None
    assert (r.head.path, r.head.query) == (path, query)


def test_simple_request_allows_connection_keep_alive() -> None:
    """``Connection: keep-alive`` is true of the upstream hop too: the head stays simple."""
    assert wire.simple_request(request("Host: a", "Connection:  Keep-Alive "), "", MAX_FIELDS) is not None


@pytest.mark.parametrize(
    "head",
    [
        request("Host: a", line="GET / HTTP/1.0"),
        request("Host: a", line="GET http://a/ HTTP/1.1"),
        request("Host: a:1", line="CONNECT a:1 HTTP/1.1"),
        request("Host: a", line="OPTIONS * HTTP/1.1"),
        request("Host: a", line="GET  / HTTP/1.1"),
        request(),
        request("Host: a", "Host: b"),
        request("Host: a", "Transfer-Encoding: chunked"),
        request("Host: a", "Connection: close"),
        request("Host: a", "Connection: keep-alive, x-secret"),
        request("Host: a", "Connection: upgrade", "Upgrade: websocket"),
        request("Host: a", "Keep-Alive: timeout=5"),
        request("Host: a", "Proxy-Connection: keep-alive"),
        request("Host: a", "TE: trailers"),
        request("Host: a", "Trailer: x"),
        request("Host: a", "Expect: 100-continue"),
        request("Host: a", "X-Forwarded-For: 10.0.0.1"),
        request("Host: a", "Content-Length: 1x"),
        request("Host: a", *(f"x-{i}: {i}" for i in range(MAX_FIELDS))),
    ],
    ids=[
        "http10",
        "absolute-form",
        "connect",
        "asterisk",
        "double-space",
        "no-host",
        "two-hosts",
        "transfer-encoding",
        "connection-close",
        "connection-names-a-field",
        "upgrade",
        "keep-alive-field",
        "proxy-connection",
        "te",
        "trailer",
        "expect",
        "x-forwarded-for",
        "bad-content-length",
        "too-many-fields",
    ],
)
def test_simple_request_declines_what_needs_the_general_path(head: bytes) -> None:
    """Anything but a plain HTTP/1.1 origin-form head with nothing hop-by-hop goes the general way."""
    assert wire.simple_request(head, "", MAX_FIELDS) is None


# Generated request heads: a request line and fields drawn from names the scans care about (in any
# case, with any spacing) and others, with values that are valid field values.
_NAMES = st.sampled_from(
    [
        "Host",
        "host",
        "HOST",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Upgrade",
        "Expect",
        "TE",
        "Trailer",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Request-Id",
        "Accept",
        "X-Host",
        "Hostx",
        "Content-Type",
        "Te-Other",
    ]
)
_VALUES = st.sampled_from(
    ["a", "B.example:80", "keep-alive", "close", "chunked", "0", "12", " 7 ", "x, y", ""]
)
_LINES = st.sampled_from(
    [
        "GET / HTTP/1.1",
        "POST /a?b=c HTTP/1.1",
        "GET /a#f HTTP/1.1",
        "GET / HTTP/1.0",
        "GET http://h/x HTTP/1.1",
    ]
)


class _Fields:
    """The general path's reading of a head, by llhttp's callbacks."""

    def __init__(self) -> None:
        self.url = b""
        self.fields: Headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value.rstrip(b" \t")))  # as the general path keeps them


@settings(max_examples=400, deadline=None)
@given(line=_LINES, fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_simple_request_agrees_with_llhttp_on_every_head_it_accepts(
    line: str, fields: list[tuple[str, str]]
) -> None:
    """Whatever llhttp accepts and the scan accepts, both read the same method, target, Host and
    Content-Length; and the scan never accepts a head that carries a field it must act on."""
    head = request(*(f"{n}:{v}" for n, v in fields), line=line)
    fields_seen = _Fields()
    parser = httptools.HttpRequestParser(fields_seen)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        return  # refused by llhttp: the simple path answers it 400 like the general one
    r = wire.simple_request(head, "", MAX_FIELDS)
    if r is None:
        return
    names = [n for n, _ in fields_seen.fields]
    assert parser.get_method() == r.head.method
    assert fields_seen.url.partition(b"?")[0].partition(b"#")[0] == r.head.path
    assert names.count(b"host") == 1
    assert dict(fields_seen.fields)[b"host"].lower() == r.head.authority
    length = dict(fields_seen.fields).get(b"content-length")
    assert (int(length) if length is not None else None) == (r.length or (0 if length is not None else None))
    assert not {b"transfer-encoding", b"upgrade", b"expect", b"te", b"trailer", b"keep-alive"} & set(names)
    assert b"x-forwarded-for" not in names
    assert all(v.lower() == b"keep-alive" for n, v in fields_seen.fields if n == b"connection")


# --- responses -------------------------------------------------------------------------------------------


def test_simple_response_length_reads_content_length() -> None:
    head = response("Server: x", "Content-Length:  1024 ", "Connection: keep-alive")
    assert wire.simple_response_length(head) == 1024
    assert wire.simple_response_length(response("Content-Length: 0")) == 0


@pytest.mark.parametrize(
    "head",
    [
        response("Content-Length: 1", status="HTTP/1.0 200 OK"),
        response("Content-Length: 0", status="HTTP/1.1 204 No Content"),
        response("Content-Length: 5", status="HTTP/1.1 304 Not Modified"),
        response("Content-Length: 0", status="HTTP/1.1 100 Continue"),
        response("Connection: upgrade", "Upgrade: websocket", status="HTTP/1.1 101 Switching Protocols"),
        response("Transfer-Encoding: chunked"),
        response("Content-Length: 5", "Connection: close"),
        response("Content-Length: 5", "Keep-Alive: timeout=5"),
        response("Content-Length: 5", "Trailer: x"),
        response("Server: x"),
    ],
    ids=[
        "http10",
        "204",
        "304",
        "interim",
        "101",
        "chunked",
        "close",
        "keep-alive-field",
        "trailer",
        "no-length",
    ],
)
def test_simple_response_length_declines_other_heads(head: bytes) -> None:
    """Anything but an HTTP/1.1 final response framed by Content-Length with nothing hop-by-hop."""
    assert wire.simple_response_length(head) == -1


@pytest.mark.parametrize(
    ("head", "scan"),
    [
        (response("Content-Length: 3"), (200, 3, False, True, True)),
        (response("transfer-encoding: Chunked"), (200, None, True, True, True)),
        (response("Connection: close"), (200, None, False, False, False)),
        (response("Content-Length: 3", status="HTTP/1.0 200 OK"), (200, 3, False, False, False)),
        (
            response("Content-Length: 3", "Connection: keep-alive", status="HTTP/1.0 404 Not Found"),
            (404, 3, False, True, False),
        ),
        (response("Content-Length: 3", "Keep-Alive: timeout=5"), (200, 3, False, True, False)),
        (
            response("Connection: Upgrade", "Upgrade: x", status="HTTP/1.1 101 Switching"),
            (101, None, False, True, False),
        ),
    ],
)
def test_scan_response_reads_framing_and_connection(head: bytes, scan: tuple[object, ...]) -> None:
    assert tuple(wire.scan_response(head) or ()) == scan


def test_scan_response_refuses_codings_other_than_chunked() -> None:
    assert wire.scan_response(response("Transfer-Encoding: gzip, chunked")) is None


def test_header_fields_lower_cases_names_and_trims_values() -> None:
    head = response("Server:  nginx \t", "X-Empty:", "Set-Cookie: a=b; Path=/")
    assert wire.header_fields(head) == [
        (b"server", b"nginx"),
        (b"x-empty", b""),
        (b"set-cookie", b"a=b; Path=/"),
    ]
    assert wire.request_fields(request("Host: a", "Accept: */*")) == [(b"accept", b"*/*")]
    assert wire.header_fields(b"HTTP/1.1 200 OK\r\n\r\n") == []


# --- head edits -------------------------------------------------------------------------------------------


def test_an_edit_that_only_appends_leaves_the_head_as_it_was() -> None:
    """A mutation whose names the head lacks appends its lines; field names keep their case."""
    head = request("Host: a", "X-Keep: 1")
    edit = wire.HeadEdit(
        HeaderMutation(set=((b"x-set", b"1"),), add=((b"x-add", b"2"),), remove=frozenset({b"x-no"}))
    )
    assert wire.edit_head(head, (edit,), b"x-extra: 3\r\n") == request(
        "Host: a", "X-Keep: 1", "x-set: 1", "x-add: 2", "x-extra: 3"
    )


def test_an_edit_with_nothing_to_do_returns_the_same_bytes() -> None:
    head = response("Content-Length: 0")
    edit = wire.HeadEdit(HeaderMutation(remove=frozenset({b"x-powered-by"})))
    assert wire.edit_head(head, (edit,)) is head


def test_an_edit_cuts_every_line_of_the_names_it_replaces_or_removes() -> None:
    head = request("Host: a", "X-Set: old", "x-drop: 1", "Accept: */*", "X-DROP: 2")
    edit = wire.HeadEdit(HeaderMutation(set=((b"x-set", b"new"),), remove=frozenset({b"x-drop"})))
    assert wire.edit_head(head, (edit,)) == request("Host: a", "Accept: */*", "x-set: new")


_FIELD_NAMES = st.sampled_from([b"x-a", b"x-b", b"x-c", b"accept"])
_FIELD_VALUES = st.sampled_from([b"1", b"two", b""])
_PAIRS = st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), max_size=3)
_MUTATIONS = st.builds(
    HeaderMutation,
    set=_PAIRS.map(lambda pairs: tuple(dict(pairs).items())),  # at most one set entry per name
    add=_PAIRS.map(tuple),
    remove=st.frozensets(_FIELD_NAMES, max_size=2),
    add_if_absent=_PAIRS.map(tuple),
    set_if_exists=_PAIRS.map(lambda pairs: tuple(dict(pairs).items())),
)


@settings(max_examples=300, deadline=None)
@given(fields=_PAIRS, mutations=st.lists(_MUTATIONS, min_size=1, max_size=2), upper=st.booleans())
def test_head_edits_change_a_head_as_the_mutations_change_its_fields(
    fields: list[tuple[bytes, bytes]], mutations: list[HeaderMutation], upper: bool
) -> None:
    """Edits in turn on the bytes give the fields the mutations in turn give the header list (names
    compared lower-cased: the bytes keep the case they arrived in)."""
    head = (
        b"GET / HTTP/1.1\r\nhost: h\r\n"
        + b"".join((k.upper() if upper else k) + b": " + v + b"\r\n" for k, v in fields)
        + b"\r\n"
    )
    expected: Headers = [(b"host", b"h"), *fields]
    for m in mutations:
        expected = m.apply(expected)
    edited = wire.edit_head(head, tuple(wire.HeadEdit(m) for m in mutations))
    assert wire.header_fields(edited) == expected
