"""Route policy in the runtime, end to end through curl and echo backends: header mutations,
rewrites, redirects, direct responses, missing clusters, faults, timeouts, retries, mirrors, hash
policies, and the proxy's answers when upstreams fail (connect refused, reset before or during the
response)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from innermesh.proxy.matching import PrefixPath
from innermesh.proxy.plan import (
    Backend,
    DirectResponse,
    EndpointState,
    Fault,
    Forward,
    HashPolicy,
    Mirror,
    PathRewrite,
    Redirect,
    RetryPolicy,
)
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.eventually import eventually
from support.proxy_runtime import (
    AUTHORITY,
    LOOPBACK,
    cluster,
    counts,
    curl,
    endpoint_of,
    forward,
    host,
    http_plan,
    mutation,
    route,
    serve,
    url,
)
from support.server_process import free_port

# The fixtures (backends, runtime) come from the shared support module.


def dead_endpoint() -> EndpointState:
    """An address nothing listens on (connections are refused)."""
    return EndpointState(LOOPBACK, free_port())


async def test_header_mutations_at_route_and_backend_level(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Route then backend request mutations reach the upstream; response mutations reach the client."""
    action = Forward(
        (
            Backend(
                "c",
                1,
                request_headers=mutation(set=[(b"x-level", b"backend")], add=[(b"x-backend", b"1")]),
                response_headers=mutation(set=[(b"x-resp", b"backend")]),
            ),
        )
    )
    plan = http_plan(
        [
            route(
                action,
                request_headers=mutation(
                    set=[(b"x-level", b"route")], add=[(b"x-multi", b"2")], remove=[b"x-drop"]
                ),
                response_headers=mutation(
                    set=[(b"x-resp", b"route"), (b"x-route", b"yes")], remove=[b"x-endpoint"]
                ),
            )
        ],
        [cluster("c", [endpoint_of(backends[0])])],
    )
    port = await serve(runtime, plan)
    r = await curl(url(port, "/?header=x-endpoint:a"), *host(), "-H", "X-Multi: 1", "-H", "X-Drop: gone")
    seen = r.json()["headers"]
    assert [v for k, v in seen if k == "x-level"] == ["backend"]
    assert [v for k, v in seen if k == "x-multi"] == ["1", "2"]
    assert [v for k, v in seen if k == "x-backend"] == ["1"]
    assert "x-drop" not in dict(seen)
    assert r.all("x-resp") == ["backend"]
    assert r.header("x-route") == "yes"
    assert r.header("x-endpoint") is None


async def test_host_and_path_rewrites(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """URLRewrite: the upstream sees the new host and the prefix replaced (the query kept)."""
    action = forward(
        "c",
        host_rewrite=b"rewritten.example",
        path_rewrite=PathRewrite("prefix", b"/v2", matched_prefix=b"/v1"),
    )
    plan = http_plan([route(action, PrefixPath(b"/v1"))], [cluster("c", [endpoint_of(backends[0])])])
    port = await serve(runtime, plan)
    seen = (await curl(url(port, "/v1/items?id=3"), *host())).json()
    assert (seen["path"], seen["query"]) == ("/v2/items", "id=3")
    assert dict(seen["headers"])["host"] == "rewritten.example"


async def test_redirect_and_direct_response(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A redirect answers with Location; a direct response with its body; neither reaches a backend."""
    plan = http_plan(
        [
            route(Redirect(301, scheme=b"https", path=PathRewrite("full", b"/new")), PrefixPath(b"/old")),
            route(
                DirectResponse(418, b"teapot\n"),
                PrefixPath(b"/tea"),
                response_headers=mutation(set=[(b"x-t", b"1")]),
            ),
        ],
        [],
    )
    port = await serve(runtime, plan)
    r = await curl(url(port, "/old/page?q=1"), *host())
    assert (r.status, r.header("location")) == (301, f"https://{AUTHORITY}/new?q=1")
    r = await curl(url(port, "/tea"), *host())
    assert (r.status, r.body, r.header("x-t")) == (418, b"teapot\n", "1")


async def test_missing_cluster_gets_the_routes_status(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A backend whose cluster is not in the plan answers missing_cluster_status (500 for Gateway API)."""
    action = Forward((Backend("c", 1), Backend("invalid|ns/route/0/1", 1)), missing_cluster_status=500)
    port = await serve(runtime, http_plan([route(action)], [cluster("c", [endpoint_of(backends[0])])]))
    statuses = [
        (r.status, r.header("x-innermesh-reason"))
        for r in [await curl(url(port), *host()) for _ in range(20)]
    ]
    assert set(statuses) == {(200, None), (500, "cluster_not_found")}


async def test_no_healthy_endpoint_is_503(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A cluster with no healthy endpoint answers 503 no_healthy_upstream."""
    port = await serve(
        runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0], healthy=False)])])
    )
    r = await curl(url(port), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (503, "no_healthy_upstream")


async def test_connect_refused_is_503_after_retries(runtime: ProxyRuntime) -> None:
    """Every try refused: 503 upstream_connect_failure, after the policy's retries, with backoff."""
    retry = RetryPolicy(attempts=2, on_connect_failure=True, backoff_base=0.01)
    plan = http_plan([route(forward("c", retry=retry))], [cluster("c", [dead_endpoint(), dead_endpoint()])])
    port = await serve(runtime, plan)
    r = await curl(url(port), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (503, "upstream_connect_failure")
    stats = runtime.stats.clusters["c"]
    assert (stats.cx_connect_fail, stats.rq_retry) == (3, 2)


async def test_retry_on_connect_failure_reaches_a_live_endpoint(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """With one endpoint refusing connections, retries land every request on the live one."""
    retry = RetryPolicy(attempts=2, on_connect_failure=True, backoff_base=0.001)
    eps = [dead_endpoint(), endpoint_of(backends[0])]
    port = await serve(runtime, http_plan([route(forward("c", retry=retry))], [cluster("c", eps)]))
    results = [await curl(url(port), *host()) for _ in range(6)]
    assert [r.status for r in results] == [200] * 6
    assert runtime.stats.clusters["c"].cx_connect_fail >= 1


async def test_retry_on_status_then_the_last_answer_is_forwarded(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A retriable status is retried (on other endpoints first); when tries run out the upstream's
    own last answer goes to the client."""
    retry = RetryPolicy(attempts=2, on_status=frozenset({503}), backoff_base=0.001)
    eps = [endpoint_of(b) for b in backends]
    port = await serve(runtime, http_plan([route(forward("c", retry=retry))], [cluster("c", eps)]))
    before = await counts(backends)
    r = await curl(url(port, "/?status=503"), *host())
    after = await counts(backends)
    assert r.status == 503
    assert r.header("x-innermesh-reason") is None, "the upstream's answer, not the proxy's"
    assert [x - y for x, y in zip(after, before, strict=True)] == [1, 1, 1], (
        "each try on a different endpoint"
    )
    assert runtime.stats.clusters["c"].rq_retry == 2


async def test_route_timeout_is_504(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A response slower than the route timeout: 504 upstream_timeout at the timeout."""
    port = await serve(
        runtime, http_plan([route(forward("c", timeout=0.2))], [cluster("c", [endpoint_of(backends[0])])])
    )
    r = await curl(url(port, "/?delay=2000"), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (504, "upstream_timeout")
    assert 0.2 <= r.elapsed < 1.8, "cut at the timeout, not after the backend's 2 s"
    assert (await curl(url(port, "/?delay=10"), *host())).status == 200


async def test_per_try_timeout_retries_then_504(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """Each try is cut at the per-try timeout and retried; when the last one times out too: 504."""
    retry = RetryPolicy(attempts=1, on_reset=True, per_try_timeout=0.15, backoff_base=0.001)
    eps = [endpoint_of(backends[0]), endpoint_of(backends[1])]
    port = await serve(runtime, http_plan([route(forward("c", retry=retry))], [cluster("c", eps)]))
    before = await counts(backends[:2])
    r = await curl(url(port, "/?delay=1000"), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (504, "upstream_timeout")
    assert 0.3 <= r.elapsed < 2.0, "two tries of 0.15 s, not the backend's 1 s"
    after = await counts(backends[:2])
    assert sum(after) - sum(before) == 2
    assert runtime.stats.clusters["c"].rq_timeout == 2


async def test_fault_abort_and_delay(backends: list[EchoBackend]) -> None:
    """Fault abort answers the configured status for its share of requests; delay holds them first."""
    import random

    rt = ProxyRuntime(rng=random.Random(3))
    try:
        c = cluster("c", [endpoint_of(backends[0])])
        plan = http_plan(
            [
                route(
                    forward("c"),
                    PrefixPath(b"/half"),
                    fault=Fault(abort_http_status=418, abort_per_million=500_000),
                ),
                route(
                    forward("c"), PrefixPath(b"/slow"), fault=Fault(delay=0.3, delay_per_million=1_000_000)
                ),
                route(
                    forward("c"),
                    PrefixPath(b"/grpc"),
                    fault=Fault(abort_grpc_status=14, abort_per_million=1_000_000),
                ),
            ],
            [c],
        )
        port = await serve(rt, plan)
        results = [await curl(url(port, "/half"), *host()) for _ in range(40)]
        aborted = [r for r in results if r.status == 418]
        assert 8 <= len(aborted) <= 32
        assert all(r.header("x-innermesh-reason") == "fault_abort" for r in aborted)
        assert all(r.status == 200 for r in results if r not in aborted)
        start = time.monotonic()
        assert (await curl(url(port, "/slow"), *host())).status == 200
        assert time.monotonic() - start >= 0.3
        r = await curl(url(port, "/grpc"), *host())
        assert (r.status, r.header("grpc-status"), r.header("x-innermesh-reason")) == (
            200,
            "14",
            "fault_abort",
        )
    finally:
        await rt.stop(1.0)


async def test_mirror_gets_a_copy_with_the_shadow_host(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A mirrored request reaches the mirror cluster with the path, the body and "-shadow" after
    the host (before the port); the client's answer comes from the main cluster."""
    a, b = backends[0], backends[1]
    action = forward("main", mirrors=(Mirror("shadow"),))
    plan = http_plan(
        [route(action)], [cluster("main", [endpoint_of(a)]), cluster("shadow", [endpoint_of(b)])]
    )
    port = await serve(runtime, plan)
    r = await curl(url(port, "/m?k=v"), "-H", "Host: echo.default:8080", "--data-binary", "payload")
    assert r.json()["endpoint"] == "a"
    assert dict(r.json()["headers"])["host"] == "echo.default:8080"

    async def mirrored() -> dict[str, Any] | None:
        last = await asyncio.to_thread(b.last)
        return last if last.get("path") == "/m" else None

    last = await eventually(mirrored, 5.0)
    assert (last["query"], last["body"], last["method"]) == ("k=v", "payload", "POST")
    headers = dict(last["headers"])
    assert headers["host"] == "echo.default-shadow:8080"
    assert headers["x-request-id"] == dict(r.json()["headers"])["x-request-id"]


async def test_mirror_percentage_zero_sends_nothing(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A mirror whose share is 0 is never sent."""
    a, b = backends[0], backends[2]
    action = forward("main", mirrors=(Mirror("shadow", per_million=0),))
    plan = http_plan(
        [route(action)], [cluster("main", [endpoint_of(a)]), cluster("shadow", [endpoint_of(b)])]
    )
    port = await serve(runtime, plan)
    before = await counts([b])
    for _ in range(5):
        assert (await curl(url(port), *host())).status == 200
    await asyncio.sleep(0.2)
    assert await counts([b]) == before


async def test_a_failing_mirror_never_delays_or_fails_the_request(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Mirroring to a cluster that refuses connections changes nothing for the client."""
    action = forward("main", mirrors=(Mirror("shadow"),))
    plan = http_plan(
        [route(action)], [cluster("main", [endpoint_of(backends[0])]), cluster("shadow", [dead_endpoint()])]
    )
    port = await serve(runtime, plan)
    results = [await curl(url(port), *host()) for _ in range(5)]
    assert [r.status for r in results] == [200] * 5


async def test_upstream_closing_before_the_head_is_502(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """The upstream closes without answering: 502 upstream_reset."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    r = await curl(url(port, "/?reset=before_headers"), *host())
    assert (r.status, r.header("x-innermesh-reason")) == (502, "upstream_reset")
    assert (await curl(url(port), *host())).status == 200


async def test_upstream_dying_mid_body_resets_the_client(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """After the head went out, an upstream that dies leaves the client a truncated response (curl
    reports it), never a complete-looking one."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    r = await curl(url(port, "/?size=2000000&reset=mid_body"), *host())
    assert r.status == 200
    assert r.exit_code in (18, 56), r.stderr  # partial file / failure receiving data
    assert len(r.body) < 2_000_000


async def test_hash_on_header_keeps_a_key_on_one_endpoint(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """Ring hash on a header: every request with the same key lands on the same endpoint."""
    eps = [endpoint_of(b) for b in backends]
    action = forward("c", hash_policies=(HashPolicy("header", b"x-user"),))
    port = await serve(runtime, http_plan([route(action)], [cluster("c", eps, policy="ring_hash")]))
    by_user = {}
    for user in ("ann", "bob", "cy", "dee", "eve", "fay"):
        seen = {
            (await curl(url(port), *host(), "-H", f"x-user: {user}")).json()["endpoint"] for _ in range(4)
        }
        assert len(seen) == 1, f"{user} was spread over {seen}"
        by_user[user] = seen.pop()
    assert len(set(by_user.values())) > 1, "six keys all on one endpoint"


async def test_cookie_policy_sets_a_cookie_that_pins_the_session(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """A cookie policy with a TTL sets the cookie on the first answer; requests carrying it stay put."""
    eps = [endpoint_of(b) for b in backends]
    action = forward("c", hash_policies=(HashPolicy("cookie", b"session", cookie_ttl=3600.0),))
    port = await serve(runtime, http_plan([route(action)], [cluster("c", eps, policy="maglev")]))
    first = await curl(url(port), *host())
    cookie = first.header("set-cookie")
    assert cookie is not None
    assert re.match(r"^session=[0-9a-f]{16}; Path=/; Max-Age=3600; HttpOnly$", cookie), cookie
    value = cookie.split(";")[0]
    later = [await curl(url(port), *host(), "-H", f"Cookie: {value}") for _ in range(5)]
    assert {r.json()["endpoint"] for r in later} == {first.json()["endpoint"]}
    assert all(r.header("set-cookie") is None for r in later)
