"""A real proxyless grpcio client (``xds:///`` target) configured by our ADS server.

grpcio reads its xDS bootstrap when it starts, so the client runs in a subprocess with
``GRPC_XDS_BOOTSTRAP_CONFIG`` set; the echo backends and the ADS server run in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import grpc
import pytest

from innermesh.xds.server import XdsServer
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from support.xds import FakeSource, mesh, proxy_info

CLIENT = """
import collections, json, sys
import grpc
channel = grpc.insecure_channel("xds:///echo:80")
say = channel.unary_unary("/echo.Echo/Say")
served_by = collections.Counter(say(b"hi", timeout=15).decode() for _ in range(20))
print(json.dumps(served_by))
"""


async def echo_server(tag: str) -> tuple[grpc.aio.Server, int]:
    async def say(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return tag.encode()

    server = grpc.aio.server()
    # No serializers: bytes in, bytes out, so no .proto is needed.
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def backends() -> AsyncIterator[list[int]]:
    servers = [await echo_server(tag) for tag in ("one", "two")]
    yield [port for _, port in servers]
    for server, _ in servers:
        await server.stop(0)


async def test_grpcio_xds_client_resolves_and_balances(backends: list[int]) -> None:
    """grpcio fetches LDS, RDS, CDS and EDS by name from us, ACKs each, and spreads calls over both
    endpoints (round robin)."""
    source = FakeSource(mesh({"echo": backends}, proxyless=True))
    server = XdsServer(source, proxy_info)
    port = await server.start("127.0.0.1", 0)
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "grpc-echo-client", "metadata": {"NAMESPACE": "default"}, "locality": {"zone": "z1"}},
    }
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-3000:]
        served_by = json.loads(out)
        # Round robin over READY subchannels: both serve, not necessarily 10 each (one may be ready first).
        assert set(served_by) == {"one", "two"} and sum(served_by.values()) == 20
        assert all(server.stats.acks[t] >= 1 for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT)), server.stats.acks
        assert sum(server.stats.nacks.values()) == 0
        assert source.calls["grpc-echo-client"] >= 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop(0)
