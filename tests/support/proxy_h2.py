"""Shared pieces of the HTTP/2 and gRPC proxy tests (no tests here): clusters that speak HTTP/2,
h2load runs, and grpcio channels to the proxy.

Address plan: as ``support.proxy_runtime`` (everything on 127.0.0.1, the proxy's listener on port 0);
the gRPC tests' virtual host is ``echo.default:50051``, the authority a grpcio channel to the
Service would send.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from innermesh.proxy.balance import BalancedCluster, LbSettings, build_cluster
from innermesh.proxy.plan import ConnectionLimits, EndpointState, LbPolicy, UpstreamProtocol

LOOPBACK = "127.0.0.1"
GRPC_AUTHORITY = "echo.default:50051"


def endpoint(port: int) -> EndpointState:
    return EndpointState(LOOPBACK, port)


def proto_cluster(
    name: str,
    endpoints: Sequence[EndpointState],
    protocol: UpstreamProtocol = "http2",
    *,
    policy: LbPolicy = "round_robin",
    limits: ConnectionLimits | None = None,
) -> BalancedCluster:
    return build_cluster(
        name, protocol, LbSettings(policy), limits or ConnectionLimits(), tuple(endpoints), random.Random(1)
    )


def identity(b: bytes) -> bytes:
    return b


def channel(port: int, authority: str = GRPC_AUTHORITY) -> grpc.Channel:
    """An unmodified grpcio channel to the proxy's listener, calling ``authority``."""
    return grpc.insecure_channel(f"{LOOPBACK}:{port}", options=[("grpc.default_authority", authority)])


@dataclass
class H2loadResult:
    succeeded: int
    failed: int
    status_2xx: int
    output: str


async def h2load(
    port: int, authority: str, path: str = "/", *, requests: int, clients: int = 1, streams: int = 10
) -> H2loadResult:
    """Run h2load (h2c with prior knowledge) against the proxy: ``clients`` connections, each with
    up to ``streams`` requests in flight."""
    proc = await asyncio.create_subprocess_exec(
        "h2load",
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-H",
        f":authority: {authority}",
        f"http://{LOOPBACK}:{port}{path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    text = out.decode()
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
    codes = re.search(r"status codes: (\d+) 2xx", text)
    assert done is not None and codes is not None, text
    return H2loadResult(int(done[1]), int(done[2]), int(codes[1]), text)
