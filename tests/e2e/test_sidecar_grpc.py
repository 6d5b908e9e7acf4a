"""gRPC through the sidecar, end to end: ``innermesh server``, ``innermesh proxy`` and grpcio echo
servers as processes; an unmodified grpcio client channel on the sidecar's outbound listener with the
Service's authority. The Service's port says ``appProtocol: grpc``, so the sidecar speaks HTTP/2 to
the endpoints; every call is balanced on its own, and a GRPCRoute header match sends the calls that
carry ``x-canary: yes`` to another Service.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from support.eventually import eventually
from support.grpc_echo import ECHO, GrpcEcho
from support.proxy_h2 import channel, identity
from support.proxy_process import running_proxy
from support.server_process import LOOPBACK, ServerProcess

NS = "default"
SERVICE = REGISTRY.by_gvk("v1", "Service")
WORKLOAD = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
GRPCROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "GRPCRoute")
AUTHORITY = "echo.default:50051"


@pytest.fixture
def servers() -> Iterator[dict[str, GrpcEcho]]:
    started: dict[str, GrpcEcho] = {}
    try:
        for name in ("g1", "g2", "g3", "canary"):
            started[name] = GrpcEcho(name).start()
        yield started
    finally:
        for s in started.values():
            s.stop()


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": selector,
            "ports": [{"name": "grpc", "port": 50051, "targetPort": "grpc", "appProtocol": "grpc"}],
        },
    }


def workload(name: str, port: int | None, labels: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"addresses": [LOOPBACK]}
    if port is not None:
        spec["ports"] = [{"name": "grpc", "port": port}]
    return {"metadata": {"name": name, "labels": labels}, "spec": spec}


def servers_of(outbound: int, calls: int, metadata: tuple[tuple[str, str], ...] = ()) -> Counter[str]:
    """Which servers answered ``calls`` Echo calls made on one channel."""
    with channel(outbound, AUTHORITY) as ch:
        echo = ch.unary_unary(ECHO, request_serializer=identity, response_deserializer=identity)
        return Counter(
            json.loads(echo(b"ping", timeout=5, metadata=metadata))["server"] for _ in range(calls)
        )


def counter(stats: str, metric: str, cluster: str) -> int:
    """One cluster's value of ``metric`` in the admin port's Prometheus text."""
    prefix = f'{metric}{{cluster="{cluster}"}} '
    return int(next(ln for ln in stats.splitlines() if ln.startswith(prefix)).split()[-1])


async def test_grpc_calls_through_the_sidecar_are_balanced_and_routed(
    mesh_server: ServerProcess, api: HttpClient, servers: dict[str, GrpcEcho], tmp_path: Path
) -> None:
    await api.create(SERVICE, NS, service("echo", {"app": "echo"}))
    await api.create(SERVICE, NS, service("echo-canary", {"track": "canary"}))
    for name in ("g1", "g2", "g3"):
        await api.create(WORKLOAD, NS, workload(name, servers[name].port, {"app": "echo", "track": "stable"}))
    await api.create(WORKLOAD, NS, workload("canary", servers["canary"].port, {"track": "canary"}))
    await api.create(WORKLOAD, NS, workload("client", None, {"app": "client"}))

    with running_proxy(mesh_server.xds_port, f"{NS}/client", tmp_path / "proxy.log") as proxy:
        # Calls fail (an RpcError, which eventually() retries) until the sidecar has its routes.
        await eventually(lambda: servers_of(proxy.outbound, 3), timeout=10, what="a call through the sidecar")

        # One channel, one HTTP/2 connection to the sidecar: each call goes to the next endpoint.
        assert servers_of(proxy.outbound, 60) == {"g1": 20, "g2": 20, "g3": 20}
        cluster = "outbound|50051||echo.default.svc.cluster.local"
        connections = counter(proxy.stats(), "innermesh_proxy_cluster_cx_total_total", cluster)
        assert connections == 3, "one HTTP/2 connection per endpoint carries all its calls"

        await api.create(
            GRPCROUTE,
            NS,
            {
                "metadata": {"name": "echo"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 50051}],
                    "rules": [
                        {
                            "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                            "backendRefs": [{"name": "echo-canary", "port": 50051}],
                        },
                        {"backendRefs": [{"name": "echo", "port": 50051}]},
                    ],
                },
            },
        )

        def routed() -> bool:
            return servers_of(proxy.outbound, 5, (("x-canary", "yes"),)) == {"canary": 5}

        await eventually(routed, timeout=10, what="the GRPCRoute's header match")
        plain = servers_of(proxy.outbound, 30)
        assert plain == {"g1": 10, "g2": 10, "g3": 10}, "calls without the header stay on echo"
