"""gRPC through the sidecar runtime: an unmodified grpcio client channel on the proxy's listener,
grpcio echo servers as the endpoints of an HTTP/2 cluster. Each call is balanced on its own; statuses,
messages and trailers arrive as the server sent them; streams of many messages flow both ways;
deadlines propagate and expire; the proxy's own answers are gRPC statuses with the reason."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from innermesh.proxy.matching import ExactPath, PrefixPath
from innermesh.proxy.plan import EndpointState, Fault, Forward, ListenerPlan, Plan, RetryPolicy
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.eventually import eventually
from support.grpc_echo import (
    BIDI,
    CLIENT_STREAM,
    ECHO,
    FAIL,
    SERVER_STREAM,
    SLEEP,
    TRAILERS,
    GrpcEcho,
    grpc_echoes,
)
from support.h2_client import H2TestClient
from support.proxy_h2 import GRPC_AUTHORITY, channel, endpoint, identity, proto_cluster
from support.proxy_runtime import forward, http_plan, in_flight, route, serve
from support.server_process import free_port

# The runtime fixture comes from conftest.py.


@pytest.fixture(scope="module")
def servers() -> Iterator[list[GrpcEcho]]:
    """Three grpc echo servers (g1, g2, g3), shared by the module's tests."""
    with grpc_echoes("g1", "g2", "g3") as started:
        yield started


def grpc_plan(
    servers: list[GrpcEcho] | list[EndpointState], *, routes: list[Any] | None = None, **forward_kw: Any
) -> Plan:
    endpoints = [s if isinstance(s, EndpointState) else endpoint(s.port) for s in servers]
    return http_plan(
        routes or [route(forward("g", **forward_kw))],
        [proto_cluster("g", endpoints)],
        domains=(GRPC_AUTHORITY,),
    )


def unary(ch: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    return ch.unary_unary(method, request_serializer=identity, response_deserializer=identity)


def reason(error: grpc.RpcError) -> str | None:
    """The proxy's ``x-innermesh-reason``, which a trailers-only answer carries as trailing metadata."""
    metadata = error.trailing_metadata() or ()
    return next((str(m.value) for m in metadata if m.key == "x-innermesh-reason"), None)


def call_error(fn: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kw)
    return caught.value


async def test_calls_on_one_channel_are_balanced_each_on_its_own(
    runtime: ProxyRuntime, servers: list[GrpcEcho]
) -> None:
    """90 calls on one channel (one HTTP/2 connection to the proxy), one after another and 30 at a
    time: round robin gives each server a third of them."""
    port = await serve(runtime, grpc_plan(servers))

    def run() -> tuple[Counter[str], Counter[str]]:
        with channel(port) as ch:
            echo = unary(ch, ECHO)
            serial = Counter(json.loads(echo(b"ping", timeout=5))["server"] for _ in range(90))
            futures = [echo.future(b"ping", timeout=10) for _ in range(90)]
            together = Counter(json.loads(f.result())["server"] for f in futures)
            return serial, together

    serial, together = await asyncio.to_thread(run)
    assert serial == {"g1": 30, "g2": 30, "g3": 30}
    assert together == {"g1": 30, "g2": 30, "g3": 30}
    assert runtime.stats.listeners["outbound"].cx_total == 1


async def test_statuses_messages_and_trailers_pass_through(
    runtime: ProxyRuntime, servers: list[GrpcEcho]
) -> None:
    """Every status a server fails with reaches the client with its message; trailing metadata
    (text and binary) arrives after a successful call; the request's metadata reaches the server."""
    port = await serve(runtime, grpc_plan(servers[:1]))

    def run() -> None:
        with channel(port) as ch:
            for code in grpc.StatusCode:
                if code is grpc.StatusCode.OK:
                    continue
                error = call_error(unary(ch, FAIL), str(code.value[0]).encode(), timeout=5)
                assert error.code() is code
                assert error.details() == "g1 failed as asked"
            reply, call = unary(ch, TRAILERS).with_call(b"x", timeout=5, metadata=(("x-asked", "yes"),))
            assert call.code() is grpc.StatusCode.OK
            assert json.loads(reply)["metadata"]["x-asked"] == "yes"
            trailing = dict(call.trailing_metadata())
            assert trailing["x-trailer"] == "from-g1"
            assert trailing["x-count-bin"] == b"\x00\x01\x02"

    await asyncio.to_thread(run)


async def test_streams_of_many_messages_flow_both_ways(
    runtime: ProxyRuntime, servers: list[GrpcEcho]
) -> None:
    """Server streaming (20,000 messages), client streaming (20,000 messages, 2 MB) and a
    bidirectional stream whose replies arrive while the client still sends."""
    port = await serve(runtime, grpc_plan(servers))

    def run() -> None:
        with channel(port) as ch:
            down = ch.unary_stream(SERVER_STREAM, request_serializer=identity, response_deserializer=identity)
            messages = list(down(b"20000:100", timeout=60))
            assert len(messages) == 20_000
            assert messages[12345] == b"12345".ljust(100, b"x")
            up = ch.stream_unary(CLIENT_STREAM, request_serializer=identity, response_deserializer=identity)
            answer = json.loads(up(iter([b"y" * 100] * 20_000), timeout=60))
            assert (answer["count"], answer["bytes"]) == (20_000, 2_000_000)
            both = ch.stream_stream(BIDI, request_serializer=identity, response_deserializer=identity)
            sent: list[bytes] = []

            def requests() -> Iterator[bytes]:
                for i in range(500):
                    sent.append(b"%d" % i)
                    yield sent[-1]

            replies = []
            for reply in both(requests(), timeout=60):
                replies.append(reply)
                assert len(sent) >= len(replies)
            assert replies == [b"%d" % i for i in range(500)]

    await asyncio.to_thread(run)


async def test_deadlines_propagate_and_expire(runtime: ProxyRuntime, servers: list[GrpcEcho]) -> None:
    """The client's deadline reaches the server (grpc-timeout); a call that outlives it ends with
    DEADLINE_EXCEEDED and its upstream stream is dropped, not left running."""
    port = await serve(runtime, grpc_plan(servers[:1]))

    def run() -> None:
        with channel(port) as ch:
            seen = json.loads(unary(ch, SLEEP)(b"0", timeout=3))
            assert 2 < seen["time_remaining"] <= 3
            error = call_error(unary(ch, SLEEP), b"3000", timeout=0.3)
            assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    await asyncio.to_thread(run)
    await eventually(lambda: in_flight(runtime, "g") == 0, 2.0)


async def test_the_proxy_enforces_grpc_timeout(runtime: ProxyRuntime, servers: list[GrpcEcho]) -> None:
    """A client that sends grpc-timeout but does not enforce it (a bare HTTP/2 client here) still gets
    its answer at the deadline: trailers-only DEADLINE_EXCEEDED from the proxy, with the reason."""
    port = await serve(runtime, grpc_plan(servers[:1]))
    message = b"3000"
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "200m")]
    async with await H2TestClient.connect(port) as client:
        start = time.monotonic()
        sid = client.request(GRPC_AUTHORITY, SLEEP, method="POST", headers=headers, body=frame)
        r = await client.response(sid, timeout=5)
        elapsed = time.monotonic() - start
    assert r.status == 200
    assert r.header(b"grpc-status") == b"4"
    assert r.header(b"x-innermesh-reason") == b"upstream_timeout"
    assert (r.body, r.trailers) == (b"", []), "a trailers-only response: one HEADERS frame"
    assert 0.15 < elapsed < 1.5


async def test_proxy_answers_are_grpc_statuses(runtime: ProxyRuntime, servers: list[GrpcEcho]) -> None:
    """What the proxy answers itself, a gRPC client reads as a status: no route UNIMPLEMENTED, a
    route timeout DEADLINE_EXCEEDED, a fault's gRPC status as it is, a fault's HTTP 503 UNAVAILABLE,
    a missing cluster (HTTP 500) UNKNOWN; each with the message and the reason."""
    routes = [
        route(forward("g", timeout=0.2), ExactPath(SLEEP.encode())),
        route(
            forward("g"), ExactPath(FAIL.encode()), fault=Fault(abort_grpc_status=8, abort_per_million=10**6)
        ),
        route(
            forward("g"),
            ExactPath(ECHO.encode()),
            fault=Fault(abort_http_status=503, abort_per_million=10**6),
        ),
        route(
            Forward((forward("none").backends[0],), missing_cluster_status=500), ExactPath(TRAILERS.encode())
        ),
    ]
    port = await serve(runtime, grpc_plan(servers[:1], routes=routes))

    def run() -> None:
        with channel(port) as ch:
            cases = [
                (unary(ch, "/no.such.Service/Method"), grpc.StatusCode.UNIMPLEMENTED, "no_route"),
                (unary(ch, SLEEP), grpc.StatusCode.DEADLINE_EXCEEDED, "upstream_timeout"),
                (unary(ch, FAIL), grpc.StatusCode.RESOURCE_EXHAUSTED, "fault_abort"),
                (unary(ch, ECHO), grpc.StatusCode.UNAVAILABLE, "fault_abort"),
                (unary(ch, TRAILERS), grpc.StatusCode.UNKNOWN, "cluster_not_found"),
            ]
            for method, code, why in cases:
                error = call_error(method, b"2000", timeout=5)
                assert (error.code(), reason(error)) == (code, why)
                assert error.details()

    await asyncio.to_thread(run)


async def test_methods_route_to_their_own_clusters(runtime: ProxyRuntime, servers: list[GrpcEcho]) -> None:
    """Routing reads each call's path: GRPCRoute method matches send Echo to one cluster and the
    rest of the service to another, on one channel."""
    plan = http_plan(
        [
            route(forward("one"), ExactPath(ECHO.encode())),
            route(forward("rest"), PrefixPath(b"/innermesh.test.Echo/")),
        ],
        [
            proto_cluster("one", [endpoint(servers[0].port)]),
            proto_cluster("rest", [endpoint(servers[1].port)]),
        ],
        domains=(GRPC_AUTHORITY,),
    )
    port = await serve(runtime, plan)

    def run() -> tuple[str, str]:
        with channel(port) as ch:
            echoed = json.loads(unary(ch, ECHO)(b"", timeout=5))["server"]
            trailed = json.loads(unary(ch, TRAILERS)(b"", timeout=5))["server"]
            return echoed, trailed

    assert await asyncio.to_thread(run) == ("g1", "g2")


async def test_a_cluster_that_answers_in_the_downstream_protocol(
    runtime: ProxyRuntime, servers: list[GrpcEcho]
) -> None:
    """An inbound listener of unknown protocol whose cluster answers in the downstream's protocol
    (a gRPC app on a port without appProtocol): the h2c connection is detected and its calls go to
    the app over HTTP/2."""
    listener = ListenerPlan(
        "in", "127.0.0.1", 0, "inbound", "detect", route_table="outbound", tcp_cluster="g"
    )
    app = proto_cluster("g", [endpoint(servers[2].port)], "downstream")
    port = await serve(runtime, http_plan([route(forward("g"))], [app], listener=listener), "in")

    def run() -> str:
        with channel(port, "anything:8080") as ch:
            return str(json.loads(unary(ch, ECHO)(b"", timeout=5))["server"])

    assert await asyncio.to_thread(run) == "g3"


async def test_a_killed_backend_is_unavailable_with_the_reason(runtime: ProxyRuntime) -> None:
    """A server killed mid-call: that call fails UNAVAILABLE (upstream_reset); later calls, which
    cannot connect, fail UNAVAILABLE (upstream_connect_failure) with the message saying so."""
    with GrpcEcho("doomed") as doomed:
        port = await serve(runtime, grpc_plan([doomed]))
        with channel(port) as ch:
            pending = unary(ch, SLEEP).future(b"5000", timeout=10)
            await eventually(lambda: in_flight(runtime, "g") == 1, 3.0)
            doomed.kill()
            error = await asyncio.to_thread(call_error, pending.result)
            assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "upstream_reset")
            error = await asyncio.to_thread(call_error, unary(ch, ECHO), b"", timeout=5)
            assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "upstream_connect_failure")
            assert error.details() == "could not connect to an upstream"


async def test_connect_failures_are_retried_on_another_server(
    runtime: ProxyRuntime, servers: list[GrpcEcho]
) -> None:
    """With a dead endpoint in the cluster, the retry policy sends its calls to live ones."""
    dead = EndpointState("127.0.0.1", free_port())
    port = await serve(runtime, grpc_plan([dead, endpoint(servers[0].port)], retry=RetryPolicy(2)))

    def run() -> Counter[str]:
        with channel(port) as ch:
            return Counter(json.loads(unary(ch, ECHO)(b"", timeout=5))["server"] for _ in range(10))

    assert await asyncio.to_thread(run) == {"g1": 10}


async def test_a_cancelled_call_resets_only_its_upstream_stream(
    runtime: ProxyRuntime, servers: list[GrpcEcho]
) -> None:
    """A client cancelling a call resets its stream upstream; the upstream connection stays and
    serves the next call."""
    port = await serve(runtime, grpc_plan(servers[:1]))
    with channel(port) as ch:
        pending = unary(ch, SLEEP).future(b"5000", timeout=10)
        await eventually(lambda: in_flight(runtime, "g") == 1, 3.0)
        pending.cancel()
        await eventually(lambda: in_flight(runtime, "g") == 0, 2.0)
        reply = await asyncio.to_thread(unary(ch, ECHO), b"", timeout=5)
    assert json.loads(reply)["server"] == "g1"
    assert runtime.stats.clusters["g"].cx_total == 1
