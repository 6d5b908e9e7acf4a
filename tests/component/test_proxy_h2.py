"""HTTP/2 through the sidecar runtime: h2c clients (curl, h2load, a bare h2 client) on HTTP and detect
listeners, HTTP/1.1 and HTTP/2 upstreams (aiohttp and h2 echo backends) in every combination, each
stream routed and balanced on its own, trailers, resets both ways, flow control, GOAWAY."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from innermesh.proxy.matching import ConnectMatch, PrefixPath
from innermesh.proxy.plan import ConnectionLimits, HashPolicy, ListenerPlan, Mirror, Plan, RetryPolicy
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.eventually import eventually
from support.h2_client import H2TestClient
from support.h2_echo import H2Echo, h2_echoes
from support.proxy_h2 import endpoint, h2load, proto_cluster
from support.proxy_runtime import (
    AUTHORITY,
    LOOPBACK,
    RssWatch,
    cluster,
    counts,
    curl,
    endpoint_of,
    forward,
    host,
    http_plan,
    in_flight,
    mutation,
    route,
    serve,
    url,
)

# The fixtures backends (HTTP/1.1 echo backends a, b, c) and runtime come from conftest.py.

MB = 1 << 20
H2 = "--http2-prior-knowledge"


@pytest.fixture(scope="module")
def h2_backends() -> Iterator[list[H2Echo]]:
    """Two HTTP/2 echo backends (x, y), shared by the module's tests."""
    with h2_echoes("x", "y") as started:
        yield started


def h2_plan(backends: list[H2Echo], **forward_kw: Any) -> Plan:
    return http_plan(
        [route(forward("h2", **forward_kw))], [proto_cluster("h2", [endpoint(b.port) for b in backends])]
    )


async def test_h2c_and_http1_share_an_http_listener(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """An HTTP listener serves HTTP/2 with prior knowledge and HTTP/1.1 alike; an h2 request reaches
    an HTTP/1.1 upstream with its body, its length and the proxy's forwarding headers."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    r = await curl(H2, url(port, "/x?y=1"), *host(), "-d", "hello")
    assert r.status == 200, r.stderr
    seen = r.json()
    assert (seen["method"], seen["path"], seen["query"], seen["version"]) == ("POST", "/x", "y=1", "1.1")
    headers = dict(seen["headers"])
    assert headers["host"] == AUTHORITY
    assert headers["content-length"] == "5"
    assert headers["x-forwarded-for"] == LOOPBACK
    assert headers["x-forwarded-proto"] == "http"
    assert "x-request-id" in headers
    assert "transfer-encoding" not in headers
    assert seen["body"] == "hello"
    plain = await curl(url(port), *host())
    assert plain.status == 200
    assert plain.json()["version"] == "1.1"


async def test_h2c_on_a_detect_listener(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A listener of unknown protocol hands a connection that starts with the HTTP/2 preface to the
    HTTP/2 server, not to TCP."""
    listener = ListenerPlan("in", LOOPBACK, 0, "inbound", "detect", route_table="outbound", tcp_cluster="c")
    plan = http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[1])])], listener=listener)
    port = await serve(runtime, plan, "in")
    r = await curl(H2, url(port, "/"), *host())
    assert r.status == 200, r.stderr
    assert r.json()["endpoint"] == "b"
    assert runtime.stats.listeners["in"].rq_2xx == 1


async def test_streams_of_one_connection_spread_over_endpoints(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """300 requests on one h2 connection, 10 at a time: each is balanced on its own (round robin:
    100 per endpoint)."""
    port = await serve(
        runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(b) for b in backends])])
    )
    before = await counts(backends)
    result = await h2load(port, AUTHORITY, requests=300, clients=1, streams=10)
    assert (result.succeeded, result.status_2xx) == (300, 300), result.output
    after = await counts(backends)
    assert [a - b for a, b in zip(after, before, strict=True)] == [100, 100, 100]
    assert runtime.stats.listeners["outbound"].cx_total == 1


async def test_an_h2_upstream_gets_the_streams_of_many_clients_on_few_connections(
    runtime: ProxyRuntime,
) -> None:
    """h2 to an h2 cluster: requests from 4 client connections share the upstream's connection,
    never more streams at once than the upstream's SETTINGS_MAX_CONCURRENT_STREAMS; when that is
    the bottleneck, another connection is opened."""
    with H2Echo("m", max_streams=5) as backend:
        port = await serve(runtime, h2_plan([backend]))
        result = await h2load(port, AUTHORITY, requests=400, clients=4, streams=10)
        assert result.succeeded == 400, result.output
        stats = await asyncio.to_thread(backend.stats)
    assert stats["count"] == 400
    assert stats["max_open"] <= 5, "the upstream's stream limit was exceeded"
    proxy_connections = stats["connections"] - 1  # the stats request came on one more
    assert 1 < proxy_connections <= 8  # 40 requests in flight at most, 5 per connection


async def test_http1_client_to_an_h2_upstream(runtime: ProxyRuntime, h2_backends: list[H2Echo]) -> None:
    """HTTP/1.1 in, HTTP/2 out: the request line and Host become pseudo-headers, a chunked upload
    becomes DATA frames; the upstream's trailers are not HTTP/1.1's to carry and are dropped."""
    port = await serve(runtime, h2_plan(h2_backends[:1]))
    r = await curl(url(port, "/up?trailer=x-t:1"), *host(), "-H", "Transfer-Encoding: chunked", "-d", "abc")
    assert r.status == 200, r.stderr
    seen = r.json()
    fields = [tuple(h) for h in seen["headers"]]
    assert fields[:4] == [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", AUTHORITY),
        (":path", "/up?trailer=x-t:1"),
    ]
    names = {k for k, _ in fields}
    assert not names & {"host", "transfer-encoding", "connection"}
    assert seen["body_length"] == 3
    assert r.header("x-t") is None


async def test_trailers_pass_from_an_h2_upstream_to_an_h2_client(
    runtime: ProxyRuntime, h2_backends: list[H2Echo]
) -> None:
    """Trailers an HTTP/2 upstream sends reach an HTTP/2 client, after the whole body."""
    port = await serve(runtime, h2_plan(h2_backends))
    async with await H2TestClient.connect(port) as client:
        sid = client.request(AUTHORITY, "/t?trailer=x-check:abc&trailer=x-more:1&size=100000")
        r = await client.response(sid)
    assert r.reset is None
    assert r.status == 200
    assert r.body == b"x" * 100_000
    assert r.trailers == [(b"x-check", b"abc"), (b"x-more", b"1")]


async def test_large_bodies_stream_through_with_flat_memory(
    runtime: ProxyRuntime, backends: list[EchoBackend], h2_backends: list[H2Echo]
) -> None:
    """40 MB up (h2 client to an HTTP/1.1 upstream, no length: chunked upstream) and 40 MB down
    (from an h2 upstream): every byte arrives and the proxy never holds a body."""
    size = 40 * MB
    plan = http_plan(
        [route(forward("h2"), match=PrefixPath(b"/down")), route(forward("c"))],
        [cluster("c", [endpoint_of(backends[0])]), proto_cluster("h2", [endpoint(h2_backends[0].port)])],
    )
    port = await serve(runtime, plan)
    read_fd, write_fd = os.pipe()
    source = await asyncio.create_subprocess_exec("head", "-c", str(size), "/dev/zero", stdout=write_fd)
    os.close(write_fd)
    try:
        async with RssWatch() as rss:
            up = await asyncio.create_subprocess_exec(
                "curl", "-s", "-S", H2, "-T", "-", *host(), url(port, "/up"),
                stdin=read_fd, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            os.close(read_fd)
            out, _ = await up.communicate()
            down = await curl(H2, url(port, f"/down?size={size}"), *host(), "-o", "/dev/null")
    finally:
        await source.wait()
    seen = json.loads(out)
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(bytes(size)).hexdigest()
    assert down.exit_code == 0, down.stderr
    assert rss.growth < 8 * MB, f"RSS grew by {rss.growth / MB:.1f} MB"


async def test_a_client_that_reads_nothing_stops_the_upstream(
    runtime: ProxyRuntime, h2_backends: list[H2Echo]
) -> None:
    """An h2 client whose windows stay closed: the proxy holds at most a window and its high mark,
    not the body; once it reads, the rest arrives."""
    size = 10 * MB
    port = await serve(runtime, h2_plan(h2_backends[:1]))
    async with RssWatch() as rss, await H2TestClient.connect(port) as client:
        client.h2.update_settings({4: 0})  # SETTINGS_INITIAL_WINDOW_SIZE 0: nothing may be sent
        sid = client.request(AUTHORITY, f"/?size={size}")
        await asyncio.sleep(1.0)
        stalled = rss.growth
        assert client.responses[sid].body == b""
        client.h2.increment_flow_control_window(size, stream_id=sid)
        client.h2.increment_flow_control_window(size)
        client._flush()
        r = await client.response(sid, timeout=30)
    assert stalled < 4 * MB, f"RSS grew by {stalled / MB:.1f} MB while the client read nothing"
    assert len(r.body) == size


async def test_client_reset_resets_the_upstream_stream(
    runtime: ProxyRuntime, h2_backends: list[H2Echo]
) -> None:
    """A client's RST_STREAM reaches the upstream as a reset of its stream, and the upstream
    connection stays for other streams."""
    backend = h2_backends[1]
    port = await serve(runtime, h2_plan([backend]))
    before = (await asyncio.to_thread(backend.stats))["resets"]
    async with await H2TestClient.connect(port) as client:
        sid = client.request(AUTHORITY, "/?delay=3000")
        await eventually(lambda: in_flight(runtime, "h2") == 1, 2.0)
        client.reset(sid)
        await eventually(lambda: in_flight(runtime, "h2") == 0, 2.0)
        again = client.request(AUTHORITY, "/")
        assert (await client.response(again)).status == 200
    assert (await asyncio.to_thread(backend.stats))["resets"] == before + 1
    assert runtime.stats.clusters["h2"].cx_total == 1


async def test_upstream_resets_become_502_or_a_reset(
    runtime: ProxyRuntime, backends: list[EchoBackend], h2_backends: list[H2Echo]
) -> None:
    """An upstream that resets before its response head: 502 upstream_reset; after it: the client's
    stream is reset. Both for HTTP/2 and HTTP/1.1 upstreams."""
    plan = http_plan(
        [route(forward("h2"), match=PrefixPath(b"/h2")), route(forward("c"))],
        [cluster("c", [endpoint_of(backends[0])]), proto_cluster("h2", [endpoint(h2_backends[0].port)])],
    )
    port = await serve(runtime, plan)
    async with await H2TestClient.connect(port) as client:
        for prefix in ("/h2", "/h1"):
            before = client.request(AUTHORITY, f"{prefix}?reset=before_headers")
            mid = client.request(AUTHORITY, f"{prefix}?size=1000000&reset=mid_body")
            r = await client.response(before)
            assert (r.status, r.header(b"x-innermesh-reason")) == (502, b"upstream_reset"), prefix
            r = await client.response(mid)
            assert r.status == 200
            assert r.reset == 2, f"{prefix}: the stream ends with RST_STREAM(INTERNAL_ERROR)"
            assert len(r.body) < 1_000_000


async def test_refused_streams_are_retried(runtime: ProxyRuntime, h2_backends: list[H2Echo]) -> None:
    """REFUSED_STREAM means unprocessed: retried as the policy's ``on_refused_stream`` allows, then
    502; the upstream never counted it."""
    backend = h2_backends[0]
    port = await serve(runtime, h2_plan([backend], retry=RetryPolicy(2, on_refused_stream=True)))
    before = (await asyncio.to_thread(backend.stats))["count"]
    r = await curl(H2, url(port, "/?refuse=1"), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (502, "upstream_reset")
    assert runtime.stats.clusters["h2"].rq_retry == 2
    assert (await asyncio.to_thread(backend.stats))["count"] == before


async def test_an_upstream_goaway_lets_its_streams_finish_and_the_rest_go_elsewhere(
    runtime: ProxyRuntime,
) -> None:
    """An upstream that sends a graceful GOAWAY after every 5th request: the streams it covers are
    answered on that connection, later ones (refused by the GOAWAY) are sent on a new one; no
    request fails."""
    with H2Echo("g", goaway_after=5) as backend:
        port = await serve(runtime, h2_plan([backend], retry=RetryPolicy(5, on_refused_stream=True)))
        result = await h2load(port, AUTHORITY, requests=60, clients=1, streams=10)
        stats = await asyncio.to_thread(backend.stats)
    assert result.succeeded == 60, result.output
    assert stats["count"] == 60
    assert stats["connections"] >= 12 - 1  # every connection carried at most 5 (the stats call is one)


async def test_route_policy_applies_to_h2_requests(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Header mutations, retries on a status and the route timeout work for h2 requests as for
    HTTP/1.1 ones."""
    plan = http_plan(
        [
            route(
                forward("c", retry=RetryPolicy(1, on_status=frozenset({503}), backoff_base=0.001)),
                match=PrefixPath(b"/retry"),
            ),
            route(forward("c", timeout=0.2), match=PrefixPath(b"/slow")),
            route(
                forward("c"),
                request_headers=mutation(set=[(b"x-route", b"set")], remove=[b"x-drop"]),
                response_headers=mutation(set=[(b"x-resp", b"yes")]),
            ),
        ],
        [cluster("c", [endpoint_of(backends[0]), endpoint_of(backends[1])])],
    )
    port = await serve(runtime, plan)
    r = await curl(H2, url(port, "/m"), *host(), "-H", "x-drop: 1")
    headers = dict(r.json()["headers"])
    assert headers["x-route"] == "set"
    assert "x-drop" not in headers
    assert r.header("x-resp") == "yes"
    r = await curl(H2, url(port, "/retry?status=503"), *host())
    assert r.status == 503
    assert runtime.stats.clusters["c"].rq_retry == 1
    r = await curl(H2, url(port, "/slow?delay=2000"), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (504, "upstream_timeout")
    assert r.elapsed < 1.5


async def test_mirrors_and_hash_policies_apply_to_h2_requests(
    runtime: ProxyRuntime, backends: list[EchoBackend], h2_backends: list[H2Echo]
) -> None:
    """An h2 request's mirror goes to an HTTP/2 mirror cluster with the shadow authority; a header
    hash policy keeps one key on one endpoint."""
    mirror_backend = h2_backends[1]
    plan = http_plan(
        [
            route(forward("c", mirrors=(Mirror("shadow"),)), match=PrefixPath(b"/mirrored")),
            route(forward("ring", hash_policies=(HashPolicy("header", b"x-user"),))),
        ],
        [
            cluster("c", [endpoint_of(backends[0])]),
            cluster("ring", [endpoint_of(b) for b in backends], policy="ring_hash"),
            proto_cluster("shadow", [endpoint(mirror_backend.port)]),
        ],
    )
    port = await serve(runtime, plan)
    before = (await asyncio.to_thread(mirror_backend.stats))["count"]
    assert (await curl(H2, url(port, "/mirrored"), *host(), "-d", "copy me")).status == 200

    async def mirrored() -> dict[str, Any] | None:
        stats = await asyncio.to_thread(mirror_backend.stats)
        return stats if stats["count"] == before + 1 else None

    stats = await eventually(mirrored, 5.0)
    assert stats["last_authority"] == f"{AUTHORITY}-shadow"
    for user in ("ann", "bob", "cyd"):
        served = {
            (await curl(H2, url(port, "/"), *host(), "-H", f"x-user: {user}")).json()["endpoint"]
            for _ in range(4)
        }
        assert len(served) == 1, f"{user} was served by {served}"


async def test_max_requests_per_connection_on_an_h2_upstream(runtime: ProxyRuntime) -> None:
    """An HTTP/2 connection carries at most ``max_requests_per_connection`` streams, then closes
    once they are done; the next requests get a new one."""
    with H2Echo("p") as backend:
        c = proto_cluster(
            "h2", [endpoint(backend.port)], limits=ConnectionLimits(max_requests_per_connection=10)
        )
        port = await serve(runtime, http_plan([route(forward("h2"))], [c]))
        result = await h2load(port, AUTHORITY, requests=50, clients=1, streams=4)
        stats = await asyncio.to_thread(backend.stats)
    assert result.succeeded == 50, result.output
    assert stats["connections"] - 1 == 5  # the stats request came on one more
    await eventually(lambda: runtime.stats.clusters["h2"].cx_active == 0, 2.0)


async def test_stop_sends_goaway_and_lets_streams_finish(backends: list[EchoBackend]) -> None:
    """Draining an h2 connection: GOAWAY names the last stream taken, that stream's response still
    arrives, a stream opened after the GOAWAY is refused, then the connection closes."""
    rt = ProxyRuntime(drain_timeout=5.0)
    try:
        port = await serve(rt, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
        async with await H2TestClient.connect(port) as client:
            slow = client.request(AUTHORITY, "/?delay=700")
            await eventually(lambda: in_flight(rt, "c") == 1, 2.0)
            stopping = asyncio.create_task(rt.stop(5.0))
            async with asyncio.timeout(2):
                await client.goaway_seen.wait()
            assert client.goaway is not None
            assert (client.goaway.error_code, client.goaway.last_stream_id) == (0, slow)
            late = client.request(AUTHORITY, "/")
            assert (await client.response(late)).reset == 7, "REFUSED_STREAM"
            r = await client.response(slow)
            assert r.status == 200
            assert r.json()["endpoint"] == "a"
            async with asyncio.timeout(2):
                await client.closed.wait()
            await stopping
    finally:
        await rt.stop(1.0)


async def test_connect_over_h2_is_a_tunnel(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """CONNECT on a tunnel route (RFC 9113 section 8.5): a 200, then DATA frames both ways; the
    client's END_STREAM half-closes the upstream, whose answer and close end the stream."""
    plan = http_plan(
        [route(forward("tcp", tunnel=True), ConnectMatch())],
        [cluster("tcp", [endpoint_of(backends[2], tcp=True)])],
    )
    port = await serve(runtime, plan)
    async with await H2TestClient.connect(port) as client:
        sid = client.tunnel(f"{AUTHORITY}:9000")
        response = client.responses[sid]
        async with asyncio.timeout(5):
            await response.head.wait()
        assert response.status == 200
        client.send(sid, b"through the tunnel")
        await eventually(lambda: response.body == b"through the tunnel", 2.0)
        client.send(sid, b"", end=True)
        r = await client.response(sid)
    assert r.reset is None
    assert r.body == b"through the tunnel" + b"bye from c\n"
