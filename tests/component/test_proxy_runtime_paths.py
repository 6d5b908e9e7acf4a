"""The two ways through the HTTP/1.1 runtime give the same results.

The simple path takes a request head that arrives whole in one read and a response framed by
Content-Length that arrives whole in one read, and forwards their bytes with lines cut and added; the
general path parses field by field and rebuilds heads. Each test here sends the same exchange both
ways (a head in one write, then split over writes; a response in one write, then split, chunked, or
with hop-by-hop fields) and checks what the upstream and the client see. A canned upstream records
the exact bytes it receives, so that a test can tell a head forwarded as received from a rebuilt one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from innermesh.proxy.plan import EndpointState, HeaderMutation, Plan
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.proxy_runtime import (
    LOOPBACK,
    RawClient,
    cluster,
    endpoint_of,
    forward,
    get,
    http_plan,
    mutation,
    route,
    serve,
)

# The fixtures (backends, runtime) come from the shared support module.

REQUEST_MUTATION = mutation(set=[(b"x-set", b"route")], add=[(b"x-add", b"1")], remove=[b"x-drop"])
RESPONSE_MUTATION = mutation(set=[(b"x-resp", b"route")], remove=[b"x-secret"])


class CannedUpstream:
    """An upstream that records each request head it reads and answers it with the next canned
    response, written in the pieces given (a pause between pieces makes them separate reads)."""

    def __init__(self, responses: Sequence[Sequence[bytes]]) -> None:
        self.responses = list(responses)
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while self.responses:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                for i, piece in enumerate(self.responses.pop(0)):
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def endpoint(self) -> EndpointState:
        assert self.server is not None
        return EndpointState(LOOPBACK, self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CannedUpstream:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def plan_for(
    endpoint: EndpointState, request: HeaderMutation | None = None, response: HeaderMutation | None = None
) -> Plan:
    return http_plan(
        [route(forward("c"), request_headers=request, response_headers=response)], [cluster("c", [endpoint])]
    )


async def send_in_pieces(client: RawClient, data: bytes, cuts: Sequence[int]) -> None:
    """Write ``data`` cut at ``cuts``, pausing between pieces so that each is a read of its own."""
    start = 0
    for cut in (*cuts, len(data)):
        await client.send(data[start:cut])
        start = cut
        await asyncio.sleep(0.03)


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """A head's fields, names lower-cased, without the per-request id."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            if name.lower() != b"x-request-id":
                out.append((name.lower(), value.strip()))
    return out


@pytest.fixture
async def echo_plan_port(runtime: ProxyRuntime, backends: list[EchoBackend]) -> int:
    """The runtime serving the first echo backend with the route's request and response mutations."""
    return await serve(runtime, plan_for(endpoint_of(backends[0]), REQUEST_MUTATION, RESPONSE_MUTATION))


# --- requests -----------------------------------------------------------------------------------------------


REQUEST = (
    b"GET /p?q=1 HTTP/1.1\r\nHost: echo.default\r\nUser-Agent: t\r\nX-Drop: 1\r\nX-Set: client\r\n"
    b"Accept: */*\r\n\r\n"
)


async def test_a_head_in_one_read_goes_upstream_as_received_with_lines_added(runtime: ProxyRuntime) -> None:
    """The simple path keeps the client's bytes (field names in their case, in their order), cuts the
    fields the route replaces or removes, and adds the route's and the forwarding lines."""
    async with CannedUpstream([[b"HTTP/1.1 204 No Content\r\n\r\n"]]) as upstream:
        port = await serve(runtime, plan_for(upstream.endpoint, REQUEST_MUTATION))
        async with await RawClient.connect(port) as c:
            await c.send(REQUEST)
            assert (await c.response()).status == 204
    head = upstream.heads[0]
    assert head.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: echo.default\r\nUser-Agent: t\r\nAccept: */*\r\n")
    assert fields(head)[3:] == [
        (b"x-set", b"route"),
        (b"x-add", b"1"),
        (b"x-forwarded-for", LOOPBACK.encode()),
        (b"x-forwarded-proto", b"http"),
    ]


async def test_a_head_split_over_reads_reaches_the_upstream_with_the_same_fields(
    runtime: ProxyRuntime,
) -> None:
    """The general path rebuilds the head (names lower-cased) with the same fields, in the same order."""
    async with CannedUpstream([[b"HTTP/1.1 204 No Content\r\n\r\n"]] * 2) as upstream:
        port = await serve(runtime, plan_for(upstream.endpoint, REQUEST_MUTATION))
        async with await RawClient.connect(port) as c:
            await c.send(REQUEST)
            assert (await c.response()).status == 204
            await send_in_pieces(c, REQUEST, [10, 40])
            assert (await c.response()).status == 204
    whole, split = upstream.heads
    assert split.startswith(b"GET /p?q=1 HTTP/1.1\r\nhost: echo.default\r\nuser-agent: t\r\n"), "rebuilt"
    assert fields(split) == fields(whole)


@pytest.mark.parametrize(
    "extra",
    [
        "Connection: keep-alive\r\n",
        "X-Forwarded-For: 10.0.0.9\r\n",
        "X-Request-Id: mine\r\nX-Forwarded-Proto: https\r\n",
        "Expect: 100-continue\r\nContent-Length: 0\r\n",
        "Keep-Alive: timeout=5\r\nConnection: keep-alive, keep-alive\r\n",
    ],
    ids=["keep-alive", "x-forwarded-for", "request-id", "expect", "hop-by-hop"],
)
async def test_forwarding_fields_come_out_the_same_either_way(echo_plan_port: int, extra: str) -> None:
    """Whichever path reads the head, the backend sees the same fields: the client's own forwarding
    fields kept or merged, hop-by-hop ones dropped, the route's mutation applied. (The one
    difference: ``Connection: keep-alive`` alone stays in a head forwarded as received, as it is true
    of the upstream hop too; a rebuilt head drops it with the other hop-by-hop fields.)"""
    seen = []
    async with await RawClient.connect(echo_plan_port) as c:
        request = get("/f", extra="X-Drop: 1\r\n" + extra)
        await c.send(request)
        seen.append((await c.response()).json()["headers"])
        await send_in_pieces(c, request, [7, 30])
        seen.append((await c.response()).json()["headers"])
    whole, split = (
        [(k, v) for k, v in h if k != "x-request-id" and (k, v) != ("connection", "keep-alive")] for h in seen
    )
    assert whole == split
    names = [k for k, _ in whole]
    assert "x-drop" not in names and "keep-alive" not in names and "connection" not in names
    assert ("x-set", "route") in whole
    assert [v for k, v in seen[0] if k == "x-request-id"] != [
        v for k, v in seen[1] if k == "x-request-id"
    ] or ("X-Request-Id" in extra)


async def test_a_body_across_reads_then_the_next_request_in_the_same_read(
    echo_plan_port: int,
) -> None:
    """A request whose body (by Content-Length) continues in the next read, which also holds the next
    request: the body arrives whole, and the next request is served after it."""
    body = b"b" * 3000
    first = b"POST /upload HTTP/1.1\r\nHost: echo.default\r\nContent-Length: 3000\r\n\r\n" + body
    second = get("/after")
    async with await RawClient.connect(echo_plan_port) as c:
        await send_in_pieces(c, first + second, [len(first) - 1000])
        r1, r2 = await c.response(), await c.response()
    assert (r1.json()["path"], r1.json()["body_length"]) == ("/upload", 3000)
    assert r2.json()["path"] == "/after"


async def test_a_request_sent_while_one_is_in_flight_waits_its_turn(echo_plan_port: int) -> None:
    """A simple request in flight, then another in a read of its own: answered in order."""
    async with await RawClient.connect(echo_plan_port) as c:
        await c.send(get("/slow?delay=100"))
        await asyncio.sleep(0.02)
        await c.send(get("/fast"))
        paths = [(await c.response()).json()["path"] for _ in range(2)]
    assert paths == ["/slow", "/fast"]


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: echo.default\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: echo.default\r\nX: a\r\n folded\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: echo.default\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: echo.default\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    ],
    ids=["control-character", "obs-fold", "lower-case-method", "two-lengths"],
)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
async def test_malformed_heads_are_refused_either_way(
    runtime: ProxyRuntime, backends: list[EchoBackend], head: bytes, split: bool
) -> None:
    """llhttp validates the simple path's bytes as it does the general path's: 400, never forwarded."""
    port = await serve(runtime, plan_for(endpoint_of(backends[1])))
    before = await asyncio.to_thread(backends[1].count)
    async with await RawClient.connect(port) as c:
        if split:
            await send_in_pieces(c, head, [12])
        else:
            await c.send(head)
        assert (await c.response()).status == 400
        assert await c.closed()
    assert await asyncio.to_thread(backends[1].count) == before


# --- responses ----------------------------------------------------------------------------------------------

BODY = b'{"ok": true}'
HEAD = b"HTTP/1.1 200 OK\r\nServer: canned\r\nX-Secret: s\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("pieces", "raw"),
    [
        ([HEAD + b"Content-Length: 12\r\n\r\n" + BODY], True),
        ([HEAD + b"Content-Length: 12\r\n\r\n", BODY], True),
        ([HEAD + b"Content-Length: 12\r\nConnection: keep-alive\r\n\r\n" + BODY[:5], BODY[5:]], True),
        (
            [
                HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n" + BODY[:5] + b"\r\n",
                b"7\r\n" + BODY[5:] + b"\r\n0\r\n\r\n",
            ],
            True,
        ),
        ([HEAD + b"Content-Length: 12\r\nKeep-Alive: timeout=5\r\n\r\n" + BODY], False),
        (
            [
                HEAD.replace(b"1.1", b"1.0", 1)
                + b"Content-Length: 12\r\nConnection: keep-alive\r\n\r\n"
                + BODY
            ],
            False,
        ),
    ],
    ids=["whole", "head-then-body", "split-body", "chunked", "keep-alive-field", "http10"],
)
async def test_responses_reach_the_client_the_same_way_whatever_their_reads(
    runtime: ProxyRuntime, pieces: list[bytes], raw: bool
) -> None:
    """Whole, split, chunked or with hop-by-hop fields: the client gets the body, the route's
    response mutation, no hop-by-hop field, and the connection stays open; a head without hop-by-hop
    fields keeps its bytes (field names in their case), any other is rebuilt (lower-cased)."""
    async with CannedUpstream([pieces, pieces]) as upstream:
        port = await serve(runtime, plan_for(upstream.endpoint, response=RESPONSE_MUTATION))
        async with await RawClient.connect(port) as c:
            for _ in range(2):
                await c.send(get())
                line = await c.read_line()
                head = [line]
                while line != b"\r\n":
                    line = await c.read_line()
                    head.append(line)
                names = [h.partition(b":")[0] for h in head[1:-1]]
                assert (b"Server" in names) == raw, head
                lowered = [n.lower() for n in names]
                assert b"x-secret" not in lowered and b"keep-alive" not in lowered
                assert b"x-resp" in lowered
                if b"transfer-encoding" in lowered:
                    body = b""
                    while True:
                        size = int(await c.read_line(), 16)
                        chunk = await c.read_exactly(size + 2)
                        if not size:
                            break
                        body += chunk[:-2]
                else:
                    body = await c.read_exactly(12)
                assert body == BODY
    assert len(upstream.heads) == 2, "one upstream connection carried both (keep-alive)"


async def test_an_upstream_closing_after_a_whole_response_is_not_reused(runtime: ProxyRuntime) -> None:
    """A whole response that says Connection: close takes the general path: the client gets it and
    keeps its connection; the next request goes over a new upstream connection."""
    close = [HEAD + b"Content-Length: 12\r\nConnection: close\r\n\r\n" + BODY]
    async with CannedUpstream([close]) as first, CannedUpstream([close]) as second:
        plan = http_plan([route(forward("c"))], [cluster("c", [first.endpoint, second.endpoint])])
        port = await serve(runtime, plan)
        async with await RawClient.connect(port) as c:
            for _ in range(2):
                await c.send(get())
                r = await c.response()
                assert (r.status, r.body, r.header(b"connection")) == (200, BODY, None)
    assert (len(first.heads), len(second.heads)) == (1, 1)
