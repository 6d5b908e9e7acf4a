"""The sidecar end to end: ``innermesh server``, ``innermesh proxy`` and echo backends as processes.

The client is curl (or raw sockets where curl would hide what matters); the backends say which
endpoint served each request and what it received. Configuration only ever reaches the proxy over xDS
from objects applied through the API.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from support.echo_backend import EchoBackend
from support.eventually import eventually
from support.proxy_process import ProxyProcess, running_proxy
from support.server_process import LOOPBACK, ServerProcess, free_port

NS = "default"
SERVICE = REGISTRY.by_gvk("v1", "Service")
WORKLOAD = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
HTTPROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")


async def run(cmd: list[str]) -> bytes:
    process = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert process.returncode == 0, f"{cmd[0]} exited with {process.returncode}"
    return out


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def endpoint(self) -> str:
        return str(self.json["endpoint"])


async def curl(proxy: ProxyProcess, host: str, path: str = "/", *args: str) -> Answer:
    """One request with curl through the sidecar's outbound listener, Host naming the service."""
    out = await run(
        [
            "curl",
            "-s",
            "-i",
            "--max-time",
            "10",
            "-H",
            f"Host: {host}",
            *args,
            f"http://{LOOPBACK}:{proxy.outbound}{path}",
        ]
    )
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


@pytest.fixture
def backends() -> Iterator[dict[str, EchoBackend]]:
    started: dict[str, EchoBackend] = {}
    try:
        for name in ("a", "b", "c", "canary"):
            started[name] = EchoBackend(name).start()
        yield started
    finally:
        for b in started.values():
            b.stop()


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def workload(name: str, port: int | None, labels: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"addresses": [LOOPBACK]}
    if port is not None:
        spec["ports"] = [{"name": "http", "port": port}]
    return {"metadata": {"name": name, "labels": labels}, "spec": spec}


async def mesh(api: HttpClient, backends: dict[str, EchoBackend]) -> None:
    """web (a, b, c), web-canary (canary), and the client's own Workload."""
    await api.create(SERVICE, NS, service("web", {"app": "web"}))
    await api.create(SERVICE, NS, service("web-canary", {"track": "canary"}))
    for name in ("a", "b", "c"):
        await api.create(WORKLOAD, NS, workload(name, backends[name].port, {"app": "web", "track": "stable"}))
    await api.create(
        WORKLOAD, NS, workload("canary", backends["canary"].port, {"track": "canary", "app": "canary"})
    )
    await api.create(WORKLOAD, NS, workload("client", None, {"app": "client"}))


@pytest.fixture
async def proxy(
    mesh_server: ServerProcess, api: HttpClient, backends: dict[str, EchoBackend], tmp_path: Path
) -> AsyncIterator[ProxyProcess]:
    await mesh(api, backends)
    with running_proxy(mesh_server.xds_port, f"{NS}/client", tmp_path / "proxy.log") as p:

        async def routed() -> bool:
            return (await curl(p, "web.default")).status == 200

        await eventually(routed, timeout=10)
        yield p


async def test_requests_are_balanced_over_every_endpoint(proxy: ProxyProcess) -> None:
    served = Counter([(await curl(proxy, "web.default", f"/r{i}")).endpoint for i in range(30)])
    assert served == {"a": 10, "b": 10, "c": 10}, "round robin over the three ready endpoints"
    # The other names of the Service reach it too, and so does an HTTP proxy-style request.
    for host in ("web.default.svc.cluster.local", "web.default.svc:80", "web"):
        assert (await curl(proxy, host)).endpoint in {"a", "b", "c"}
    out = await run(
        ["curl", "-s", "-x", f"http://{LOOPBACK}:{proxy.outbound}", "http://web.default/via-proxy"]
    )
    assert json.loads(out)["path"] == "/via-proxy"


async def test_a_route_reaches_the_sidecar_within_a_second(proxy: ProxyProcess, api: HttpClient) -> None:
    started = time.monotonic()
    await api.create(
        HTTPROUTE,
        NS,
        {
            "metadata": {"name": "web"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [
                    {
                        "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"set": [{"name": "x-route", "value": "canary"}]},
                            }
                        ],
                        "backendRefs": [{"name": "web-canary", "port": 80}],
                    },
                    {"backendRefs": [{"name": "web", "port": 80}]},
                ],
            },
        },
    )

    async def canary() -> Answer | None:
        a = await curl(proxy, "web.default", "/", "-H", "x-canary: yes")
        return a if a.status == 200 and a.endpoint == "canary" else None

    answer = await eventually(canary, timeout=5, interval=0.02)
    assert answer is not None
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the route took {elapsed:.2f}s to reach the sidecar"
    assert ["x-route", "canary"] in answer.json["headers"], "the rule's RequestHeaderModifier"
    assert (await curl(proxy, "web.default")).endpoint in {"a", "b", "c"}, (
        "requests without the header stay on web"
    )


async def test_an_endpoint_that_leaves_gets_no_more_requests(proxy: ProxyProcess, api: HttpClient) -> None:
    await api.delete(WORKLOAD, NS, "b")

    async def without_b() -> bool:
        served = {(await curl(proxy, "web.default")).endpoint for _ in range(6)}
        return served == {"a", "c"}

    await eventually(without_b, timeout=5)


async def test_answers_the_proxy_makes_itself_say_why(
    proxy: ProxyProcess, api: HttpClient, backends: dict[str, EchoBackend]
) -> None:
    nothing = await curl(proxy, "nothing.default")
    assert (nothing.status, nothing.headers["x-innermesh-reason"]) == (404, "no_route")

    await api.create(SERVICE, NS, service("empty", {"app": "none"}))

    async def empty() -> Answer | None:
        a = await curl(proxy, "empty.default")
        return a if a.status == 503 else None

    answer = await eventually(empty, timeout=5)
    assert answer is not None
    assert answer.headers["x-innermesh-reason"] == "no_healthy_upstream"

    # The canary's process dies but its Workload stays registered: connections are refused.
    backends["canary"].stop()
    refused = await curl(proxy, "web-canary.default")
    assert refused.status == 503
    assert refused.headers["x-innermesh-reason"] == "upstream_connect_failure"


async def test_admin_port_reports_readiness_stats_and_config(proxy: ProxyProcess) -> None:
    for _ in range(5):
        assert (await curl(proxy, "web.default")).status == 200
    assert proxy.admin_get("/ready") == (200, "LIVE\n")
    stats = proxy.stats()
    line = next(
        ln
        for ln in stats.splitlines()
        if ln.startswith(
            'innermesh_proxy_cluster_rq_2xx_total{cluster="outbound|80||web.default.svc.cluster.local"}'
        )
    )
    assert int(line.split()[-1]) >= 5
    dump = proxy.config_dump()
    assert dump["version"]
    assert dump["xds"]["connected"] is True
    assert "outbound" in dump["resources"]["Listener"]
    assert "outbound|80||web.default.svc.cluster.local" in dump["resources"]["Cluster"]


async def test_inbound_listener_forwards_to_the_local_app(
    mesh_server: ServerProcess,
    api: HttpClient,
    proxy: ProxyProcess,
    backends: dict[str, EchoBackend],
    tmp_path: Path,
) -> None:
    """A workload with its own sidecar: the Workload's port is the sidecar's inbound listener, which
    forwards to the app on another loopback port (``--app-port``)."""
    app = backends["canary"]
    inbound_port = free_port()
    await api.create(SERVICE, NS, service("shop", {"app": "shop"}))
    await api.create(WORKLOAD, NS, workload("shop-1", inbound_port, {"app": "shop"}))
    with running_proxy(
        mesh_server.xds_port, f"{NS}/shop-1", tmp_path / "shop-proxy.log", app_ports={inbound_port: app.port}
    ) as shop_sidecar:

        async def through_both() -> Answer | None:
            a = await curl(proxy, "shop.default", "/inbound")
            return a if a.status == 200 else None

        answer = await eventually(through_both, timeout=10)
        assert answer is not None
        assert answer.endpoint == "canary" and answer.json["path"] == "/inbound"
        assert shop_sidecar.ready()


def served_count(backends: dict[str, EchoBackend], names: tuple[str, ...] = ("a", "b", "c")) -> int:
    total = 0
    for name in names:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{backends[name].port}/_count", timeout=5) as r:
            total += int(json.loads(r.read())["count"])
    return total


async def test_a_restart_under_load_loses_no_accepted_request(
    mesh_server: ServerProcess, proxy: ProxyProcess, backends: dict[str, EchoBackend]
) -> None:
    """SIGTERM while requests are in flight: every request the proxy accepted is answered in full;
    what it did not accept is refused (or reset while waiting in the kernel's accept queue) before it
    reached any app, so a client may retry it. The backends' own counts prove the second half: they
    served exactly the requests the clients saw answered."""
    before = served_count(backends)
    results: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((LOOPBACK, proxy.outbound), timeout=5) as s:
                    s.sendall(b"GET /?delay=50 HTTP/1.1\r\nHost: web.default\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
            except (ConnectionRefusedError, ConnectionResetError) as e:
                results["refused" if isinstance(e, ConnectionRefusedError) else "reset"] += 1
                time.sleep(0.01)
                continue
            except OSError as e:
                results[f"error: {e!r}"] += 1
                continue
            head, _, body = data.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 200") and body.endswith(b"}"):
                results["ok"] += 1
            else:
                results[f"broken: {head[:40]!r}"] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        await asyncio.sleep(1.0)
        proxy.terminate()  # drains, then exits
        assert await asyncio.to_thread(proxy.wait, 15) == 0
        await asyncio.sleep(0.3)
        proxy.start()  # same ports: clients reconnect
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    problems = {k: v for k, v in results.items() if k not in ("ok", "refused", "reset")}
    assert not problems, f"requests lost or broken: {problems} (all: {dict(results)})"
    assert results["ok"] > 50 and results["refused"] > 0, dict(results)
    assert served_count(backends) - before == results["ok"], (
        "a request reached an app but its answer was lost"
    )


BTP = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "BackendTrafficPolicy")
FAULT = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "FaultInjection")


async def test_session_affinity_by_header_with_ring_hash(proxy: ProxyProcess, api: HttpClient) -> None:
    await api.create(
        BTP,
        NS,
        {
            "metadata": {"name": "web-affinity"},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                "loadBalancer": {
                    "type": "RingHash",
                    "consistentHash": {"type": "Header", "header": {"name": "x-user"}},
                },
            },
        },
    )

    async def sticky() -> dict[str, str]:
        chosen: dict[str, str] = {}
        for user in (f"user-{i}" for i in range(12)):
            served = {
                (await curl(proxy, "web.default", "/", "-H", f"x-user: {user}")).endpoint for _ in range(3)
            }
            assert len(served) == 1, f"{user} went to {served}"
            chosen[user] = served.pop()
        return chosen

    chosen = await eventually(sticky, timeout=5)
    assert len(set(chosen.values())) >= 2, f"12 users should not all hash to one endpoint: {chosen}"


async def test_zone_aware_preference_and_failover(
    mesh_server: ServerProcess, api: HttpClient, backends: dict[str, EchoBackend], tmp_path: Path
) -> None:
    """A client in zone z1 sends everything to the one endpoint in z1 while it is ready, and fails
    over to the other zone's endpoints when it is not."""
    await api.create(SERVICE, NS, service("zoned", {"app": "zoned"}))
    for name, zone in (("a", "z1"), ("b", "z2"), ("c", "z2")):
        w = workload(f"zoned-{name}", backends[name].port, {"app": "zoned"})
        w["spec"]["zone"] = zone
        await api.create(WORKLOAD, NS, w)
    client = workload("zclient", None, {"app": "zclient"})
    client["spec"]["zone"] = "z1"
    await api.create(WORKLOAD, NS, client)
    with running_proxy(mesh_server.xds_port, f"{NS}/zclient", tmp_path / "zproxy.log") as p:

        async def local_only() -> bool:
            return {(await curl(p, "zoned.default")).endpoint for _ in range(10)} == {"a"}

        await eventually(local_only, timeout=10)
        await api.delete(WORKLOAD, NS, "zoned-a")

        async def failed_over() -> bool:
            return {(await curl(p, "zoned.default")).endpoint for _ in range(10)} == {"b", "c"}

        await eventually(failed_over, timeout=5)


async def test_route_filters_through_the_whole_chain(proxy: ProxyProcess, api: HttpClient) -> None:
    """Objects applied through the API -> translator -> xDS -> the sidecar's answers: a redirect, a
    fault injected through an ExtensionRef to our FaultInjection kind, a rewrite, a timeout."""
    await api.create(
        FAULT,
        NS,
        {"metadata": {"name": "broken"}, "spec": {"abort": {"httpStatus": 418, "percentage": 100}}},
    )
    await api.create(
        HTTPROUTE,
        NS,
        {
            "metadata": {"name": "web-filters"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                        "filters": [
                            {
                                "type": "RequestRedirect",
                                "requestRedirect": {
                                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                                    "statusCode": 301,
                                },
                            }
                        ],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/fault"}}],
                        "filters": [
                            {
                                "type": "ExtensionRef",
                                "extensionRef": {
                                    "group": "mesh.innermesh.io",
                                    "kind": "FaultInjection",
                                    "name": "broken",
                                },
                            }
                        ],
                        "backendRefs": [{"name": "web", "port": 80}],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                        "filters": [
                            {
                                "type": "URLRewrite",
                                "urlRewrite": {
                                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}
                                },
                            }
                        ],
                        "backendRefs": [{"name": "web", "port": 80}],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                        "timeouts": {"request": "200ms"},
                        "backendRefs": [{"name": "web", "port": 80}],
                    },
                    {"backendRefs": [{"name": "web", "port": 80}]},
                ],
            },
        },
    )

    async def redirected() -> Answer | None:
        a = await curl(proxy, "web.default", "/old/page?x=1")
        return a if a.status == 301 else None

    answer = await eventually(redirected, timeout=5)
    assert answer is not None
    assert answer.headers["location"] == "http://web.default/new/page?x=1"

    fault = await curl(proxy, "web.default", "/fault")
    assert (fault.status, fault.headers["x-innermesh-reason"]) == (418, "fault_abort")

    rewritten = await curl(proxy, "web.default", "/api/items?q=2")
    assert rewritten.status == 200 and rewritten.json["path"] == "/v2/items"

    slow = await curl(proxy, "web.default", "/slow?delay=1000")
    assert (slow.status, slow.headers["x-innermesh-reason"]) == (504, "upstream_timeout")
