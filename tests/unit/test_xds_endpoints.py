"""Endpoints as the data planes see them: every endpoint of an EndpointSlice with its health, so that a
sidecar's zone-aware failover spills over as Envoy's would, while proxyless gRPC gets only the ready ones."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from envoy.config.core.v3 import health_check_pb2
from test_xds_golden import mesh_state
from test_xds_proxyless import grpc_problems

from innermesh.proxy.compile import compile_plan
from innermesh.proxy.plan import PickContext
from innermesh.xds.translate import translate
from innermesh.xds.types import ENDPOINT, ProxyInfo

CLUSTER = "outbound|80||web.shop.svc.cluster.local"
SIDECAR = ProxyInfo(
    node_id="sidecar~shop~client", kind="sidecar", namespace="shop", workload="client", zone="a"
)
PROXYLESS = ProxyInfo(node_id="grpc", kind="proxyless", namespace="shop", zone="a")
HEALTHY = health_check_pb2.UNKNOWN  # the control plane does no health checking: Kubernetes readiness is it


def mesh(endpoints: list[dict[str, Any]]) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: {endpoints}
---
apiVersion: mesh.innermesh.io/v1alpha1
kind: Workload
metadata: {{name: client, namespace: shop}}
spec: {{addresses: [127.0.0.2]}}
"""


def one_ready_of_ten_locally() -> str:
    local = [
        {"addresses": [f"10.1.0.{i}"], "zone": "a", "conditions": {"ready": i == 1}} for i in range(1, 11)
    ]
    remote = [{"addresses": [f"10.2.0.{i}"], "zone": "b"} for i in range(1, 11)]
    return mesh(local + remote)


def health_by_address(cla: Any) -> dict[str, tuple[int, int]]:
    """address -> (priority, health_status)."""
    return {
        e.endpoint.address.socket_address.address: (loc.priority, e.health_status)
        for loc in cla.endpoints
        for e in loc.lb_endpoints
    }


def test_a_sidecar_is_told_about_endpoints_that_are_not_ready() -> None:
    """Not-ready endpoints go out as UNHEALTHY, serving-but-terminating ones as DRAINING, so that the
    proxy knows how much of its zone is down."""
    endpoints: list[dict[str, Any]] = [
        {"addresses": ["10.1.0.1"], "zone": "a"},
        {"addresses": ["10.1.0.2"], "zone": "a", "conditions": {"ready": False}},
        {
            "addresses": ["10.1.0.3"],
            "zone": "a",
            "conditions": {"ready": False, "serving": True, "terminating": True},
        },
        {
            "addresses": ["10.1.0.4"],
            "zone": "a",
            "conditions": {"ready": False, "serving": False, "terminating": True},
        },
        {"addresses": ["10.2.0.1"], "zone": "b", "conditions": {"ready": True}},
    ]
    cla = translate(mesh_state(mesh(endpoints)), SIDECAR, None)[ENDPOINT][CLUSTER]
    assert health_by_address(cla) == {
        "10.1.0.1": (0, HEALTHY),
        "10.1.0.2": (0, health_check_pb2.UNHEALTHY),
        "10.1.0.3": (0, health_check_pb2.DRAINING),
        "10.1.0.4": (0, health_check_pb2.UNHEALTHY),
        "10.2.0.1": (1, HEALTHY),
    }


def test_a_local_zone_at_one_of_ten_keeps_fourteen_percent() -> None:
    """1 of 10 local endpoints ready: 10% healthy x 1.4 overprovisioning = 14% stays in the zone, the
    rest spills to the other zone (the reviewer's reproduction kept 100% on the one survivor)."""
    plan = compile_plan(
        translate(mesh_state(one_ready_of_ten_locally()), SIDECAR, None),
        None,
        version="1",
        rng=random.Random(7),
    )
    cluster = plan.clusters[CLUSTER]
    picks = Counter(e.host if e else None for e in (cluster.pick(PickContext()) for _ in range(20000)))
    local = picks["10.1.0.1"] / 20000
    assert 0.12 < local < 0.16
    assert None not in picks
    assert not any(h.startswith("10.1.0.") and h != "10.1.0.1" for h in picks if h)


def test_draining_endpoints_get_no_new_requests() -> None:
    """A serving-but-terminating endpoint is never picked, though it counts towards its zone's size."""
    endpoints: list[dict[str, Any]] = [
        {"addresses": ["10.1.0.1"], "zone": "a"},
        {
            "addresses": ["10.1.0.2"],
            "zone": "a",
            "conditions": {"ready": False, "serving": True, "terminating": True},
        },
    ]
    plan = compile_plan(translate(mesh_state(mesh(endpoints)), SIDECAR, None), None, version="1")
    picks = {e.host if e else None for e in (plan.clusters[CLUSTER].pick(PickContext()) for _ in range(500))}
    assert picks == {"10.1.0.1"}


def test_proxyless_grpc_gets_only_ready_endpoints() -> None:
    """gRPC skips UNHEALTHY and DRAINING endpoints and weighs localities by their weight, so it is told
    only the ready endpoints (as before), and its rules still hold."""
    resources = translate(mesh_state(one_ready_of_ten_locally()), PROXYLESS, frozenset({"web.shop"}))
    cla = resources[ENDPOINT][CLUSTER]
    assert health_by_address(cla) == {
        "10.1.0.1": (0, HEALTHY),
        **{f"10.2.0.{i}": (1, HEALTHY) for i in range(1, 11)},
    }
    assert [loc.load_balancing_weight.value for loc in cla.endpoints] == [1, 10]
    assert grpc_problems(resources) == []


def test_a_zone_with_nothing_ready_is_still_the_sidecar_s_first_priority() -> None:
    """Every local endpoint down: they still make priority 0 (at 0% health), so all traffic fails
    over to the other zone, and back as soon as one is ready."""
    endpoints = [{"addresses": [f"10.1.0.{i}"], "zone": "a", "conditions": {"ready": False}} for i in (1, 2)]
    endpoints.append({"addresses": ["10.2.0.1"], "zone": "b"})
    resources = translate(mesh_state(mesh(endpoints)), SIDECAR, None)
    assert {p for p, _ in health_by_address(resources[ENDPOINT][CLUSTER]).values()} == {0, 1}
    plan = compile_plan(resources, None, version="1")
    assert {
        e.host if e else None for e in (plan.clusters[CLUSTER].pick(PickContext()) for _ in range(200))
    } == {"10.2.0.1"}
