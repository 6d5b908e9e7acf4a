"""The proxy runtime over HTTP/1.1 with everyday clients: curl through a listener to echo backends
(real processes), keep-alive and pooling, bodies, 100-continue, HEAD, pipelining, plan swaps,
draining. Routing policy (retries, timeouts, faults, mirrors, rewrites) is in
test_proxy_runtime_policy.py; malformed HTTP in test_proxy_runtime_malformed.py; large and slow
bodies in test_proxy_runtime_streams.py; TCP, CONNECT and WebSocket in test_proxy_runtime_tcp.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from innermesh.proxy.matching import ExactPath, PrefixPath
from innermesh.proxy.plan import REASON_HEADER, ConnectionLimits, EndpointState, ListenerPlan, Plan
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.eventually import eventually
from support.proxy_runtime import (
    AUTHORITY,
    LOOPBACK,
    RawClient,
    cluster,
    counts,
    curl,
    endpoint_of,
    forward,
    get,
    host,
    http_plan,
    in_flight,
    route,
    serve,
    url,
)

# The fixtures (backends, runtime) come from the shared support module.

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


def one_backend_plan(backend: EchoBackend) -> Plan:
    return http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backend)])])


async def test_forwards_a_request_and_adds_forwarding_headers(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A GET reaches the backend with the client's headers plus X-Forwarded-For/-Proto and a request id."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    r = await curl(url(port, "/some/path?x=1&y=2"), *host(), "-H", "X-Custom: v")
    assert r.status == 200, r
    seen = r.json()
    assert seen["endpoint"] == "a"
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/some/path", "x=1&y=2")
    headers = dict(seen["headers"])
    assert headers["host"] == AUTHORITY
    assert headers["x-custom"] == "v"
    assert headers["x-forwarded-for"] == LOOPBACK
    assert headers["x-forwarded-proto"] == "http"
    assert UUID.match(headers["x-request-id"])


async def test_keeps_the_request_id_and_appends_to_x_forwarded_for(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A request id the client set is kept; an X-Forwarded-For it set gets the client's address appended."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    r = await curl(url(port), *host(), "-H", "X-Request-Id: abc", "-H", "X-Forwarded-For: 10.0.0.1")
    headers = r.json()["headers"]
    assert [v for k, v in headers if k == "x-request-id"] == ["abc"]
    assert [v for k, v in headers if k == "x-forwarded-for"] == [f"10.0.0.1, {LOOPBACK}"]


async def test_keep_alive_reuses_client_and_upstream_connections(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Three requests on one client connection go over one pooled upstream connection."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    outputs = [arg for path in ("/1", "/2", "/3") for arg in ("-o", "/dev/null", url(port, path))]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", *host(), "-w", "%{num_connects}:%{http_code} ", *outputs, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.decode().split() == ["1:200", "0:200", "0:200"], "curl should have reused its connection"
    stats = runtime.stats.clusters["c"]
    assert (stats.cx_total, stats.rq_total) == (1, 3), (
        "every request should reuse the first upstream connection"
    )


async def test_upstream_connection_is_reused_across_client_connections(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Separate client connections, one after another, share one idle upstream connection."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    ports = set()
    for _ in range(4):
        r = await curl(url(port), *host())
        ports.add(r.json()["client_port"])
    assert len(ports) == 1
    assert runtime.stats.listeners["outbound"].cx_total == 4


async def test_no_route_is_404_with_a_reason(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """An authority that matches no virtual host, or a path no route takes, gets 404 no_route."""
    plan = http_plan(
        [route(forward("c"), ExactPath(b"/only"))],
        [cluster("c", [endpoint_of(backends[0])])],
        domains=(AUTHORITY,),
    )
    port = await serve(runtime, plan)
    r = await curl(url(port, "/only"), *host("other.default"))
    assert (r.status, r.header(REASON_HEADER.decode())) == (404, "no_route")
    assert r.body == b"no route matches this request\n"
    r = await curl(url(port, "/elsewhere"), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (404, "no_route")
    assert runtime.stats.listeners["outbound"].no_route == 2


async def test_chunked_upload_is_forwarded_whole(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A chunked request body arrives at the backend complete (re-chunked by the proxy)."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    body = bytes(range(256)) * 1000
    r = await curl(
        url(port, "/upload"), *host(), "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", stdin=body
    )
    seen = r.json()
    assert seen["body_length"] == len(body)
    assert ["transfer-encoding", "chunked"] in seen["headers"]
    import hashlib

    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_expect_100_continue_is_answered_by_the_proxy(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """curl waiting for 100 Continue gets it from the proxy at once; the backend never sees Expect."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    body = b"z" * 5000
    r = await curl(
        url(port, "/up"),
        *host(),
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        "@-",
        stdin=body,
    )
    assert r.status == 200
    assert r.interim == [100]
    assert r.elapsed < 3, "curl waited for a 100 Continue that never came"
    seen = r.json()
    assert seen["body_length"] == len(body)
    assert "expect" not in dict(seen["headers"])


async def test_curl_large_upload_gets_its_100_continue_at_once(
    runtime: ProxyRuntime, backends: list[EchoBackend], tmp_path: Path
) -> None:
    """curl asks for 100-continue by itself for bodies over 1 MB; it gets it without waiting its
    one-second expect timeout, and the whole body arrives."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    body = tmp_path / "upload.bin"
    body.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    r = await curl(url(port, "/big"), *host(), "--data-binary", f"@{body}")
    assert (r.status, r.interim) == (200, [100])
    assert r.elapsed < 0.9, "curl waited out its expect timeout"
    assert r.json()["body_length"] == 2 * 1024 * 1024


async def test_expect_100_continue_refused_before_the_body(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A request the proxy answers itself gets no 100 Continue; its connection is closed after the answer."""
    port = await serve(
        runtime,
        http_plan([route(forward("c"), ExactPath(b"/x"))], [cluster("c", [endpoint_of(backends[0])])]),
    )
    async with await RawClient.connect(port) as c:
        await c.send(
            b"POST /nothing HTTP/1.1\r\nHost: echo.default\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
        )
        r = await c.response()
        assert r.status == 404
        assert r.header(b"connection") == b"close"
        assert await c.closed()


async def test_head_request_keeps_content_length_and_the_connection(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """HEAD gets the upstream's head without a body, and the next request on the connection works."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    async with await RawClient.connect(port) as c:
        await c.send(b"HEAD /?size=12345 HTTP/1.1\r\nHost: echo.default\r\n\r\n")
        r = await c.response(head_request=True)
        assert (r.status, r.header(b"content-length")) == (200, b"12345")
        await c.send(get("/after-head"))
        r = await c.response()
        assert r.json()["path"] == "/after-head"


async def test_a_body_sent_after_a_head_response_cannot_answer_the_next_request(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """An upstream that sends a body after its HEAD response (it should not) does not get that
    connection reused: the next request is not answered with those stray bytes."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    async with await RawClient.connect(port) as c:
        for i in range(3):
            await c.send(b"HEAD /?size=200&head_body_delay=50 HTTP/1.1\r\nHost: echo.default\r\n\r\n")
            assert (await c.response(head_request=True)).status == 200
            await c.send(get(f"/next-{i}"))
            r = await c.response()
            assert (r.status, r.json()["path"]) == (200, f"/next-{i}")


async def test_an_upstream_answering_twice_is_not_reused(runtime: ProxyRuntime) -> None:
    """An upstream that sends a second, unrequested response is out of step: its connection is
    closed, so no later request (perhaps another client's) is answered with the stray bytes."""
    connections = 0

    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer_twice, LOOPBACK, 0)
    try:
        upstream = EndpointState(LOOPBACK, server.sockets[0].getsockname()[1])
        port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [upstream])]))
        bodies = [(await curl(url(port), *host())).body for _ in range(3)]
        assert bodies == [b"first"] * 3
        assert connections == 3
    finally:
        server.close()


async def test_pipelined_requests_are_answered_in_order(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Three requests sent at once get three responses, in order, on the same connection."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    async with await RawClient.connect(port) as c:
        await c.send(get("/1?delay=50") + get("/2") + get("/3"))
        paths = [(await c.response()).json()["path"] for _ in range(3)]
        assert paths == ["/1", "/2", "/3"]


async def test_http10_client_gets_its_answer_and_a_close(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """An HTTP/1.0 request is forwarded as HTTP/1.1 upstream; the client connection closes after the answer."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    async with await RawClient.connect(port) as c:
        await c.send(b"GET /old HTTP/1.0\r\nHost: echo.default\r\n\r\n")
        r = await c.response()
        assert r.status == 200
        assert r.json()["version"] == "1.1"
        assert r.header(b"connection") == b"close"
        assert await c.closed()


async def test_client_asking_to_close_gets_connection_close(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Connection: close from the client is honoured and said in the response, and not forwarded."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    async with await RawClient.connect(port) as c:
        await c.send(get("/", extra="Connection: close\r\n"))
        r = await c.response()
        assert r.header(b"connection") == b"close"
        assert "connection" not in dict(r.json()["headers"])
        assert await c.closed()
    assert runtime.stats.clusters["c"].cx_active == 1, "the upstream connection stays pooled"


async def test_upstream_hop_by_hop_headers_stay_on_their_hop(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """An upstream's Connection: close and Keep-Alive are not forwarded: the client connection
    stays open while the upstream one is replaced."""
    port = await serve(runtime, one_backend_plan(backends[0]))
    async with await RawClient.connect(port) as c:
        for _ in range(2):
            await c.send(get("/?header=connection:close&header=keep-alive:timeout=5"))
            r = await c.response()
            assert r.status == 200
            assert (r.header(b"connection"), r.header(b"keep-alive")) == (None, None)
    assert runtime.stats.clusters["c"].cx_total == 2


async def test_a_client_that_leaves_cancels_its_upstream_request(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """When the client disconnects mid-request the upstream connection is dropped and the counts
    return to zero."""
    ep = endpoint_of(backends[0])
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [ep])]))
    c = await RawClient.connect(port)
    await c.send(get("/?delay=2000"))
    await eventually(lambda: ep.active == 1, 2.0)
    await c.close()
    stats = runtime.stats.clusters["c"]
    await eventually(lambda: (ep.active, stats.rq_active, stats.cx_active) == (0, 0, 0), 1.0)


async def test_a_cluster_removed_mid_request_does_not_keep_its_connection(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A request in flight on a cluster the new plan drops completes; its connection then closes."""
    a, b = backends[0], backends[1]
    port = await serve(runtime, http_plan([route(forward("a"))], [cluster("a", [endpoint_of(a)])]))
    slow = asyncio.create_task(curl(url(port, "/?delay=300"), *host()))
    await eventually(lambda: in_flight(runtime, "a") == 1)
    await runtime.apply(http_plan([route(forward("b"))], [cluster("b", [endpoint_of(b)])], version="2"))
    assert (await slow).status == 200
    await eventually(lambda: runtime.stats.clusters["a"].cx_active == 0, 1.0)


async def test_explicit_proxy_absolute_form(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """curl using the listener as its HTTP proxy (absolute-form targets) is routed by the target's authority."""
    plan = http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[1])])], domains=(AUTHORITY,))
    port = await serve(runtime, plan)
    r = await curl("-x", url(port), f"http://{AUTHORITY}/via-proxy?q=1")
    assert r.status == 200, r
    seen = r.json()
    assert (seen["endpoint"], seen["path"], seen["query"]) == ("b", "/via-proxy", "q=1")
    assert dict(seen["headers"])["host"] == AUTHORITY


async def test_plan_swap_applies_to_new_requests_while_in_flight_ones_finish(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A new plan routes the next requests; a request in flight completes on the plan it started with."""
    a, b = backends[0], backends[1]
    port = await serve(
        runtime, http_plan([route(forward("a"))], [cluster("a", [endpoint_of(a)])], version="1")
    )
    slow = asyncio.create_task(curl(url(port, "/?delay=300"), *host()))
    await eventually(lambda: in_flight(runtime, "a") == 1)
    await runtime.apply(http_plan([route(forward("b"))], [cluster("b", [endpoint_of(b)])], version="2"))
    assert runtime.port("outbound") == port, "an unchanged listener is not rebound"
    fast = await curl(url(port), *host())
    assert fast.json()["endpoint"] == "b"
    assert (await slow).json()["endpoint"] == "a"


async def test_listeners_follow_the_plan(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A listener added by a plan is bound, one removed is closed (its connections drained)."""
    c = cluster("c", [endpoint_of(backends[0])])
    second = ListenerPlan("second", LOOPBACK, 0, "outbound", "http", route_table="outbound")
    await runtime.apply(http_plan([route(forward("c"))], [c], extra_listeners=[second]))
    port2 = runtime.port("second")
    assert (await curl(url(port2), *host())).status == 200
    async with await RawClient.connect(port2) as idle:
        await runtime.apply(http_plan([route(forward("c"))], [c]))
        assert await idle.closed(), "an idle connection of a removed listener is closed"
    r = await curl(url(port2), *host())
    assert r.exit_code == 7, "nothing listens on a removed listener's port"
    with pytest.raises(KeyError):
        runtime.port("second")


async def test_a_plan_whose_listener_cannot_bind_is_refused_whole(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Binding a port in use fails with the listener's name; the previous plan keeps serving."""
    c = cluster("c", [endpoint_of(backends[0])])
    port = await serve(runtime, http_plan([route(forward("c"))], [c], version="1"))
    taken = ListenerPlan("taken", LOOPBACK, backends[0].port, "outbound", "http", route_table="outbound")
    with pytest.raises(OSError, match=f'listener "taken": cannot bind 127.0.0.1:{backends[0].port}'):
        await runtime.apply(http_plan([route(forward("c"))], [c], version="2", extra_listeners=[taken]))
    assert runtime.plan is not None
    assert runtime.plan.version == "1"
    assert (await curl(url(port), *host())).status == 200


async def test_stop_lets_the_request_in_flight_finish(backends: list[EchoBackend]) -> None:
    """stop() stops accepting, waits for the request in flight, then closes."""
    rt = ProxyRuntime()
    port = await serve(rt, one_backend_plan(backends[0]))
    slow = asyncio.create_task(curl(url(port, "/?delay=300"), *host()))
    await eventually(lambda: in_flight(rt, "c") == 1)
    await rt.stop(5.0)
    r = await slow
    assert r.status == 200
    assert r.header("connection") == "close"
    assert (await curl(url(port), *host())).exit_code == 7


async def test_endpoint_active_counts_requests_in_flight(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """endpoint.active rises while requests are in flight and returns to zero."""
    ep = endpoint_of(backends[0])
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [ep])]))
    calls = [asyncio.create_task(curl(url(port, "/?delay=500"), *host())) for _ in range(3)]
    await eventually(lambda: ep.active == 3, 2.0)
    await asyncio.gather(*calls)
    assert ep.active == 0


async def test_connection_limits_queue_then_overflow(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """max_connections=1 and max_pending_requests=1: one request runs, one waits, the third gets 503."""
    limits = ConnectionLimits(max_connections=1, max_pending_requests=1)
    port = await serve(
        runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])], limits=limits)])
    )
    before = await counts(backends[:1])
    first = asyncio.create_task(curl(url(port, "/?delay=500"), *host()))

    async def first_arrived() -> bool:
        return await counts(backends[:1]) == [before[0] + 1]

    await eventually(first_arrived)  # it holds the only connection
    second = asyncio.create_task(curl(url(port, "/second"), *host()))
    await eventually(lambda: in_flight(runtime, "c") == 2)  # it waits for that connection
    third = await curl(url(port, "/third"), *host())
    assert (third.status, third.header("x-innermesh-reason")) == (503, "upstream_overflow")
    r1, r2 = await first, await second
    assert (r1.status, r2.status) == (200, 200)
    assert r1.json()["client_port"] == r2.json()["client_port"], "the waiter got the freed connection"
    assert runtime.stats.clusters["c"].cx_total == 1


async def test_max_requests_per_connection_and_idle_timeout(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A connection is retired after max_requests_per_connection requests, and when idle too long."""
    limits = ConnectionLimits(max_requests_per_connection=2, idle_timeout=0.3)
    port = await serve(
        runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])], limits=limits)])
    )
    ports = [(await curl(url(port), *host())).json()["client_port"] for _ in range(3)]
    assert ports[0] == ports[1] != ports[2]
    await asyncio.sleep(0.5)
    assert (await curl(url(port), *host())).json()["client_port"] != ports[2]
    assert runtime.stats.clusters["c"].cx_total == 3


async def test_prefix_routes_pick_their_clusters(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """Routes are taken in order: /b goes to cluster b, everything else to a."""
    plan = http_plan(
        [route(forward("b"), PrefixPath(b"/b")), route(forward("a"))],
        [cluster("a", [endpoint_of(backends[0])]), cluster("b", [endpoint_of(backends[1])])],
    )
    port = await serve(runtime, plan)
    assert (await curl(url(port, "/b/x"), *host())).json()["endpoint"] == "b"
    assert (await curl(url(port, "/x"), *host())).json()["endpoint"] == "a"
