"""FaultInjection, BackendTrafficPolicy and Workload egress through the real API: ``innermesh apply`` and
``get`` as users run them (subprocesses against an ``innermesh server`` subprocess), and route status
following FaultInjections through the route status controller fed by a real informer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from innermesh.api.attachment import CONTROLLER_NAME
from innermesh.api.scheme import REGISTRY
from innermesh.client.informer import Informer
from innermesh.client.local import LocalClient
from innermesh.controllers.routestatus import RouteStatusController
from innermesh.server import ControlPlane
from support.eventually import eventually, timed
from support.server_process import ServerProcess, innermesh_command, running_server

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: FaultInjection
metadata:
  name: flaky
  namespace: shop
spec:
  delay:
    fixedDelay: 2s
    percentage: 50
  abort:
    grpcStatus: 14
    percentage: 0.5
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: BackendTrafficPolicy
metadata:
  name: sticky
  namespace: shop
spec:
  targetRefs:
  - group: ""
    kind: Service
    name: echo
  loadBalancer:
    type: RingHash
    consistentHash:
      type: Cookie
      cookie: {name: session, ttl: 1h}
  connectionPool:
    maxConnections: 1024
    maxRequestsPerConnection: 100
    idleTimeout: 60s
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: Workload
metadata:
  name: vm-1
  namespace: shop
spec:
  addresses: [10.0.0.5]
  egress: ["billing/api", "monitoring/*"]
"""

BAD = """\
apiVersion: mesh.innermesh.io/v1alpha1
kind: FaultInjection
metadata:
  name: broken
  namespace: shop
spec:
  abort:
    httpStatus: 503
    grpcStatus: 14
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: BackendTrafficPolicy
metadata:
  name: wrong
  namespace: shop
spec:
  targetRefs:
  - {group: "", kind: Namespace, name: shop}
  loadBalancer: {type: Maglev}
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: Workload
metadata:
  name: vm-2
  namespace: shop
spec:
  addresses: [10.0.0.6]
  egress: ["billing"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("policies") / "data") as s:
        yield s


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INNERMESH_SERVER": server.url}
    return subprocess.run(
        [*innermesh_command(), *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def test_apply_get_and_reapply_the_new_kinds(server: ServerProcess, tmp_path: Path) -> None:
    """Valid manifests are created with their defaults, listed by short name with their columns, and
    unchanged when applied again; invalid ones are refused naming each field."""
    f = tmp_path / "policies.yaml"
    f.write_text(MANIFESTS)
    assert ok(cli(server, "apply", "-f", str(f))).splitlines() == [
        "namespace/shop created",
        "faultinjection.mesh.innermesh.io/flaky created",
        "backendtrafficpolicy.mesh.innermesh.io/sticky created",
        "workload.mesh.innermesh.io/vm-1 created",
    ]

    fault = json.loads(ok(cli(server, "get", "fault", "flaky", "-n", "shop", "-o", "json")))
    assert fault["spec"] == {
        "delay": {"fixedDelay": "2s", "percentage": 50},
        "abort": {"grpcStatus": 14, "percentage": 0.5},
    }
    policy = json.loads(ok(cli(server, "get", "btp", "sticky", "-n", "shop", "-o", "json")))
    assert policy["spec"]["loadBalancer"] == {
        "type": "RingHash",
        "consistentHash": {"type": "Cookie", "cookie": {"name": "session", "ttl": "1h", "path": "/"}},
        "zoneAware": True,
    }
    workload = json.loads(ok(cli(server, "get", "wl", "vm-1", "-n", "shop", "-o", "json")))
    assert workload["spec"]["egress"] == ["billing/api", "monitoring/*"]

    faults = ok(cli(server, "get", "fault", "-n", "shop")).splitlines()
    assert faults[0].split() == ["NAME", "DELAY", "ABORT", "AGE"]
    assert faults[1].split()[:6] == ["flaky", "2s", "(50%)", "gRPC", "14", "(0.5%)"]
    policies = ok(cli(server, "get", "backendtrafficpolicies", "-n", "shop")).splitlines()
    assert policies[0].split() == ["NAME", "TARGETS", "LOADBALANCER", "AGE"]
    assert policies[1].split()[:3] == ["sticky", "Service/echo", "RingHash"]

    assert ok(cli(server, "apply", "-f", str(f))).splitlines() == [
        "namespace/shop unchanged",
        "faultinjection.mesh.innermesh.io/flaky unchanged",
        "backendtrafficpolicy.mesh.innermesh.io/sticky unchanged",
        "workload.mesh.innermesh.io/vm-1 unchanged",
    ]

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = cli(server, "apply", "-f", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        (
            f'error: {bad}: document 1 (FaultInjection "broken"): spec.abort.grpcStatus: Forbidden: '
            "may not be specified together with `httpStatus`"
        ),
        (
            f'error: {bad}: document 2 (BackendTrafficPolicy "wrong"): spec.targetRefs[0].kind: Unsupported '
            'value: "Namespace": supported values: "Service"'
        ),
        (
            f'error: {bad}: document 2 (BackendTrafficPolicy "wrong"): spec.loadBalancer.consistentHash: '
            "Required value: must be specified when `type` is 'RingHash' or 'Maglev'"
        ),
        (
            f'error: {bad}: document 3 (Workload "vm-2"): spec.egress[0]: Invalid value: "billing": '
            "must be `<namespace>/<service>`, `<namespace>/*` or `*/*`"
        ),
    ]


# ---------------------------------------------------------------------------------------------------
# Route status and FaultInjections

NS = "default"
SVC = REGISTRY.by_gvk("v1", "Service")
HTTPROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")
FAULT = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "FaultInjection")


@pytest.fixture
async def routestatus(start_control_plane: Any) -> AsyncIterator[tuple[LocalClient, RouteStatusController]]:
    """A server without its own controllers, and a RouteStatusController given a FaultInjection
    informer, with its informers and controller running until teardown."""
    plane: ControlPlane = await start_control_plane(controllers=False)
    assert plane.resources is not None
    client = LocalClient(plane.resources)

    def informer(api_version: str, kind: str) -> Informer[Any]:
        return Informer(client, REGISTRY.by_gvk(api_version, kind))

    gw = "gateway.networking.k8s.io/v1"
    http_routes, grpc_routes = informer(gw, "HTTPRoute"), informer(gw, "GRPCRoute")
    services, namespaces = informer("v1", "Service"), informer("v1", "Namespace")
    gateways, classes = informer(gw, "Gateway"), informer(gw, "GatewayClass")
    grants = informer(gw, "ReferenceGrant")
    faults = informer("mesh.innermesh.io/v1alpha1", "FaultInjection")
    controller = RouteStatusController(
        client,
        {"HTTPRoute": HTTPROUTE, "GRPCRoute": REGISTRY.by_gvk(gw, "GRPCRoute")},
        REGISTRY.by_gvk(gw, "GatewayClass"),
        {"HTTPRoute": http_routes, "GRPCRoute": grpc_routes},
        services,
        gateways,
        classes,
        grants,
        namespaces,
        fault_injections=faults,
    )
    every = [http_routes, grpc_routes, services, gateways, classes, grants, namespaces, faults]
    tasks = [asyncio.create_task(i.run(), name=f"informer-{i.kind.plural}") for i in every]
    try:
        await asyncio.wait_for(asyncio.gather(*(i.wait_synced() for i in every)), 10)
        tasks.append(asyncio.create_task(controller.controller.run(), name="controller-routestatus"))
        yield client, controller
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_route_status_follows_its_fault_injection_within_a_second(
    routestatus: tuple[LocalClient, RouteStatusController],
) -> None:
    """A route naming a FaultInjection is BackendNotFound until it exists, resolved once it does, and
    BackendNotFound again when it is deleted, each within a second."""
    client, _ = routestatus
    await client.create(
        SVC, NS, {"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}}
    )
    ext = {"group": "mesh.innermesh.io", "kind": "FaultInjection", "name": "flaky"}
    route = {
        "metadata": {"name": "r"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [
                {
                    "filters": [{"type": "ExtensionRef", "extensionRef": ext}],
                    "backendRefs": [{"name": "web", "port": 80}],
                }
            ],
        },
    }
    await client.create(HTTPROUTE, NS, route)

    async def resolved_refs() -> tuple[str, str]:
        obj = await client.get(HTTPROUTE, NS, "r")
        for entry in (obj.get("status") or {}).get("parents") or []:
            if entry["controllerName"] == CONTROLLER_NAME:
                cond = next(c for c in entry["conditions"] if c["type"] == "ResolvedRefs")
                return cond["status"], cond["reason"]
        return ("", "")

    async def is_(want: tuple[str, str]) -> bool:
        return await resolved_refs() == want

    missing = ("False", "BackendNotFound")
    await eventually(lambda: is_(missing), 3.0)
    fault = {"metadata": {"name": "flaky"}, "spec": {"abort": {"httpStatus": 503}}}
    await client.create(FAULT, NS, fault)
    created = await timed(lambda: is_(("True", "ResolvedRefs")), 3.0)
    await client.delete(FAULT, NS, "flaky")
    deleted = await timed(lambda: is_(missing), 3.0)
    print(f"\nFaultInjection created -> resolved {created * 1000:.1f} ms, deleted -> {deleted * 1000:.1f} ms")
    assert created < 1.0
    assert deleted < 1.0
