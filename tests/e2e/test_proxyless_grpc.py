"""Proxyless gRPC: an unmodified grpcio client with an ``xds:///`` target, fed by innermesh.

Everything is real: an ``innermesh server`` process, grpcio echo servers as processes registered as
Workloads, and a grpcio client process whose only link to the mesh is a bootstrap file naming the
server's xDS port. The client keeps one channel for the whole test, so it must follow the changes:
endpoints removed and added, then a GRPCRoute weighted split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.client.http import HttpClient
from support.eventually import eventually
from support.grpc_echo import GrpcEcho
from support.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
SERVICE = REGISTRY.by_gvk("v1", "Service")
WORKLOAD = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
GRPCROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "GRPCRoute")


class Client:
    """The grpcio xds client process (tests/support/grpc_xds_client.py), one channel for its life."""

    def __init__(self, bootstrap: Path, target: str) -> None:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "support.grpc_xds_client", "--target", target, "--timeout", "5"],
            cwd=ROOT / "tests",
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the grpc client exited with {self.process.poll()}"
        return line

    def call(self, n: int) -> tuple[Counter[str], Counter[str]]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"call {n}\n")
        self.process.stdin.flush()
        answer = json.loads(self._line())
        return Counter(answer["servers"]), Counter(answer["errors"])

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def backends() -> Iterator[dict[str, GrpcEcho]]:
    started: dict[str, GrpcEcho] = {}
    try:
        for name in ("e1", "e2", "e3", "e4"):
            started[name] = GrpcEcho(name).start()
        yield started
    finally:
        for b in started.values():
            b.stop()


def workload(name: str, port: int, version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "echo", "version": version}},
        "spec": {"addresses": ["127.0.0.1"], "ports": [{"name": "grpc", "port": port}]},
    }


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": selector,
            "ports": [{"name": "grpc", "port": 50051, "targetPort": "grpc", "appProtocol": "grpc"}],
        },
    }


async def test_grpcio_follows_endpoints_and_a_weighted_split(
    mesh_server: ServerProcess, api: HttpClient, backends: dict[str, GrpcEcho], tmp_path: Path
) -> None:
    await api.create(SERVICE, NS, service("echo", {"app": "echo"}))
    await api.create(SERVICE, NS, service("echo-v1", {"app": "echo", "version": "v1"}))
    await api.create(SERVICE, NS, service("echo-v2", {"app": "echo", "version": "v2"}))
    for name, version in (("e1", "v1"), ("e2", "v1"), ("e3", "v2")):
        await api.create(WORKLOAD, NS, workload(name, backends[name].port, version))

    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": f"127.0.0.1:{mesh_server.xds_port}",
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "grpc-client-1", "metadata": {"NAMESPACE": NS}, "locality": {"zone": "z1"}},
            }
        )
    )
    client = Client(bootstrap, "xds:///echo.default:50051")
    try:
        # Round robin over the three endpoints the Service selects.
        servers, errors = client.call(60)
        assert not errors
        # Round robin: every endpoint serves; exact thirds once every subchannel is up.
        assert set(servers) == {"e1", "e2", "e3"} and min(servers.values()) >= 15, servers

        # An endpoint leaves and another joins: the same channel follows.
        await api.delete(WORKLOAD, NS, "e2")
        await api.create(WORKLOAD, NS, workload("e4", backends["e4"].port, "v2"))

        def follows_endpoints() -> bool:
            servers, errors = client.call(30)
            assert not errors
            assert set(servers) == {"e1", "e3", "e4"}, servers
            return True

        await eventually(follows_endpoints, timeout=10)

        # A GRPCRoute splits the Service's traffic 80/20 between its v1 and v2 subsets.
        await api.create(
            GRPCROUTE,
            NS,
            {
                "metadata": {"name": "echo-split"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 50051}],
                    "rules": [
                        {
                            "backendRefs": [
                                {"name": "echo-v1", "port": 50051, "weight": 80},
                                {"name": "echo-v2", "port": 50051, "weight": 20},
                            ]
                        }
                    ],
                },
            },
        )

        def splits() -> bool:
            servers, errors = client.call(400)
            assert not errors
            v1 = servers["e1"]
            v2 = servers["e3"] + servers["e4"]
            assert v1 + v2 == 400
            # 80% +- 7% of 400 (about 4 standard deviations of a fair coin with p=0.8)
            assert 292 <= v1 <= 348, servers
            return True

        await eventually(splits, timeout=10)
    finally:
        client.stop()
