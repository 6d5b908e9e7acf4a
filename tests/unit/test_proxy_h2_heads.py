"""HTTP/2 heads (runtime/h2.py and h2upstream.py): an h2 request into the forwarder's Request, the
forwarder's HTTP/1.1 head into an h2 header list, responses both ways."""

from __future__ import annotations

from innermesh.proxy.runtime.h2 import request_from_h2, response_fields
from innermesh.proxy.runtime.h2upstream import request_headers, response_head


def test_an_h2_request_becomes_the_forwarders_request() -> None:
    """Pseudo-headers become method, path, query, authority and scheme; cookie crumbs are joined;
    framing and forwarding facts are read; grpc-timeout becomes a deadline."""
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"Echo.Default:50051"),
        (b":path", b"/svc/Method?x=1"),
        (b"content-type", b"application/grpc"),
        (b"cookie", b"a=1"),
        (b"grpc-timeout", b"250m"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"cookie", b"b=2"),
    ]
    request, grpc_call = request_from_h2(headers, ended=False, source_ip="127.0.0.1", now=100.0)
    head = request.head
    assert (head.method, head.path, head.query, head.authority) == (
        b"POST",
        b"/svc/Method",
        b"x=1",
        b"echo.default:50051",
    )
    assert grpc_call
    assert head.header(b"cookie") == b"a=1; b=2"
    assert (request.raw, request.length, request.chunked, request.http2) == (None, None, True, True)
    assert request.forwarded_for == b"10.0.0.1"
    assert request.deadline == 100.25


def test_an_h2_request_without_body_or_with_a_length() -> None:
    """END_STREAM on the headers: no body; content-length: that length; Host stands in for a
    missing :authority."""
    get = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"web:80")]
    request, grpc_call = request_from_h2(get, ended=True, source_ip="", now=0.0)
    assert (request.length, request.chunked, request.head.authority) == (None, False, b"web:80")
    assert not grpc_call
    put = [(b":method", b"PUT"), (b":authority", b"web"), (b":path", b"/"), (b"content-length", b"12")]
    request, _ = request_from_h2(put, ended=False, source_ip="", now=0.0)
    assert (request.length, request.chunked) == (12, False)


def test_an_http1_head_becomes_an_h2_header_list() -> None:
    """The request line and Host become pseudo-headers, names are lower-cased, connection-specific
    headers and those Connection names are dropped; a gRPC call gets te: trailers."""
    head = (
        b"POST /svc/M?q HTTP/1.1\r\nHost: echo:50051\r\nContent-Type: application/grpc\r\n"
        b"Connection: keep-alive, x-hop\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nX-Keep: yes\r\n\r\n"
    )
    assert request_headers(head) == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"echo:50051"),
        (b":path", b"/svc/M?q"),
        (b"content-type", b"application/grpc"),
        (b"x-keep", b"yes"),
        (b"te", b"trailers"),
    ]


def test_responses_both_ways() -> None:
    """An h2 response head keeps its headers and length; an HTTP/1.1 one loses its hop-by-hop
    headers on its way to an h2 client."""
    head = response_head([(b":status", b"204"), (b"content-length", b"0"), (b"x-a", b"1")])
    assert (head.status, head.length, head.headers, head.raw) == (
        204,
        0,
        [(b"content-length", b"0"), (b"x-a", b"1")],
        None,
    )
    fields = response_fields(
        200, [(b"connection", b"close, x-b"), (b"x-b", b"2"), (b"keep-alive", b"5"), (b"x-c", b"3")]
    )
    assert fields == [(b":status", b"200"), (b"x-c", b"3")]
