"""Malformed HTTP never reaches the app: each request here is written by hand on a raw socket, gets
the proxy's own 400 or 431 (with its reason, ``connection: close``, and the connection closed), and
the backend's request count does not move."""

from __future__ import annotations

import pytest

from innermesh.proxy.runtime.limits import MAX_HEAD_BYTES, MAX_HEADERS
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.proxy_runtime import (
    RawClient,
    cluster,
    counts,
    endpoint_of,
    forward,
    get,
    http_plan,
    route,
    serve,
)

# The fixtures (backends, runtime) come from the shared support module.

H = "Host: echo.default\r\n"

MALFORMED = {
    "content-length and transfer-encoding": f"POST / HTTP/1.1\r\n{H}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two different content-lengths": f"POST / HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "non-numeric content-length": f"POST / HTTP/1.1\r\n{H}Content-Length: 3x\r\n\r\nabc",
    "unsupported transfer coding": f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "space in a header name": f"GET / HTTP/1.1\r\n{H}Bad Name: v\r\n\r\n",
    "space before the colon": f"GET / HTTP/1.1\r\n{H}X-A : v\r\n\r\n",
    "control character in a value": f"GET / HTTP/1.1\r\n{H}X-A: a\x01b\r\n\r\n",
    "obsolete line folding": f"GET / HTTP/1.1\r\n{H}X-A: a\r\n folded\r\n\r\n",
    "bare LF line ends": "GET / HTTP/1.1\nHost: echo.default\n\n",
    "no Host on HTTP/1.1": "GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two Host headers": f"GET / HTTP/1.1\r\n{H}{H}\r\n",
    "unknown HTTP version": f"GET / HTTP/2.0\r\n{H}\r\n",
    "space in the target": f"GET /a b HTTP/1.1\r\n{H}\r\n",
    "not HTTP at all": "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("request_text", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_request_is_400_and_never_forwarded(
    runtime: ProxyRuntime, backends: list[EchoBackend], request_text: str
) -> None:
    """The proxy answers 400 bad_request itself, closes, and the backend sees nothing."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    before = await counts(backends[:1])
    async with await RawClient.connect(port) as c:
        await c.send(request_text.encode("latin-1"))
        r = await c.response()
        assert (r.status, r.header(b"x-innermesh-reason")) == (400, b"bad_request")
        assert r.header(b"connection") == b"close"
        assert await c.closed()
    assert await counts(backends[:1]) == before
    assert runtime.stats.listeners["outbound"].bad_request == 1


@pytest.mark.parametrize(
    "request_text",
    [
        f"GET / HTTP/1.1\r\n{H}X-Big: {'v' * MAX_HEAD_BYTES}\r\n\r\n",
        f"GET /{'p' * MAX_HEAD_BYTES} HTTP/1.1\r\n{H}\r\n",
        f"GET / HTTP/1.1\r\n{H}" + "".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS)) + "\r\n",
    ],
    ids=["header value too large", "target too long", "too many headers"],
)
async def test_oversized_head_is_431(
    runtime: ProxyRuntime, backends: list[EchoBackend], request_text: str
) -> None:
    """A head over 60 KiB or with more than 100 fields gets 431 and never reaches the app."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    before = await counts(backends[:1])
    async with await RawClient.connect(port) as c:
        await c.send(request_text.encode())
        r = await c.response()
        assert (r.status, r.header(b"x-innermesh-reason")) == (431, b"headers_too_large")
        assert await c.closed()
    assert await counts(backends[:1]) == before


async def test_a_head_that_never_ends_is_cut_at_the_limit(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A client streaming one endless header value is answered 431 once the limit is passed, without
    the proxy waiting for (or buffering) the rest."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    async with await RawClient.connect(port) as c:
        await c.send(f"GET / HTTP/1.1\r\n{H}X-Endless: ".encode())
        for _ in range(8):
            await c.send(b"v" * 16384)
        r = await c.response()
        assert r.status == 431


async def test_requests_before_a_malformed_one_are_answered(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Pipelined: a good request followed by a malformed one gets its answer, then the 400."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    async with await RawClient.connect(port) as c:
        await c.send(get("/good") + b"GET /bad HTTP/1.1\r\nHost: echo.default\r\nBad Name: x\r\n\r\n")
        first = await c.response()
        assert (first.status, first.json()["path"]) == (200, "/good")
        second = await c.response()
        assert second.status == 400
        assert await c.closed()


async def test_valid_edge_cases_are_accepted(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """What the rules allow goes through: obs-text in a value, an empty value, chunk extensions."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    async with await RawClient.connect(port) as c:
        await c.send(b"GET / HTTP/1.1\r\nHost: echo.default\r\nX-Latin: caf\xe9\r\nX-Empty:\r\n\r\n")
        headers = (await c.response()).json()["headers"]
        assert ["x-latin", "caf\xe9"] in headers
        assert ["x-empty", ""] in headers
        await c.send(
            b"POST / HTTP/1.1\r\nHost: echo.default\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;name=value\r\nabc\r\n0\r\n\r\n"
        )
        assert (await c.response()).json()["body"] == "abc"
