"""The sidecar's xDS client against the real ADS server over 127.0.0.1, in both protocol variants."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from innermesh.proxy.xdsclient import ConfigRejected, XdsClient
from innermesh.xds.server import XdsServer
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from support.eventually import eventually
from support.xds import FakeSource, mesh, node, proxy_info, route_config, sidecar_listener

SIDECAR = "sidecar~default~w1"


class Recorder:
    """An ``apply`` that keeps what it accepted, with when. It refuses, as the sidecar would, a config
    with an endpoint on port 6666, a listener on port 6666 ("cannot bind") or a route to ``bad``."""

    def __init__(self) -> None:
        self.applied: list[Resources] = []
        self.times: list[float] = []

    async def __call__(self, resources: Resources) -> None:
        for cla in resources.get(ENDPOINT, {}).values():
            for locality in cla.endpoints:
                for lb in locality.lb_endpoints:
                    if lb.endpoint.address.socket_address.port_value == 6666:
                        raise ConfigRejected(f"{cla.cluster_name}: port 6666 is reserved")
        for listener in resources.get(LISTENER, {}).values():
            if listener.address.socket_address.port_value == 6666:
                raise ConfigRejected(f"{listener.name}: cannot bind a listener: address in use")
        for config in resources.get(ROUTE, {}).values():
            if "bad" in (d for vh in config.virtual_hosts for d in vh.domains):
                raise ConfigRejected(f"{config.name}: virtual_hosts[0].domains: 'bad' is refused")
        self.applied.append(resources)
        self.times.append(time.monotonic())

    @property
    def last(self) -> Resources:
        return self.applied[-1]


def ports(resources: Resources, cluster: str) -> list[int]:
    cla = resources[ENDPOINT][cluster]
    return [lb.endpoint.address.socket_address.port_value for loc in cla.endpoints for lb in loc.lb_endpoints]


def shape(resources: Resources) -> dict[str, list[str]]:
    return {t: sorted(resources.get(t, {})) for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT)}


Serve = Callable[..., Awaitable[tuple[XdsServer, int]]]
Connect = Callable[..., Awaitable[XdsClient]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[XdsServer] = []

    async def run(source: FakeSource, port: int = 0) -> tuple[XdsServer, int]:
        server = XdsServer(source, proxy_info)
        bound = await server.start("127.0.0.1", port)
        servers.append(server)
        return server, bound

    yield run
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    clients: list[XdsClient] = []

    async def make(port: int, apply: Any, node_id: str = SIDECAR, **options: Any) -> XdsClient:
        client = XdsClient(f"127.0.0.1:{port}", node(node_id, NAMESPACE="default"), apply, **options)
        assert client.state.variant == ("delta" if options.get("delta", True) else "sotw")
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop()


VARIANTS = pytest.mark.parametrize("variant", ["delta", "sotw"])


@VARIANTS
async def test_initial_config_is_applied_once_and_whole(serve: Serve, connect: Connect, variant: str) -> None:
    """The first apply has every listener, route, cluster and endpoint set; every type is ACKed with
    the versions the server sent."""
    server, port = await serve(FakeSource(mesh({"a": [9001], "b": [9002]})))
    recorder = Recorder()
    client = await connect(port, recorder, delta=variant == "delta")
    await eventually(lambda: recorder.applied)
    assert shape(recorder.applied[0]) == {
        LISTENER: ["l-a", "l-b"],
        ROUTE: ["r-a", "r-b"],
        CLUSTER: ["c-a", "c-b"],
        ENDPOINT: ["c-a", "c-b"],
    }

    def acked_everywhere() -> bool:
        [conn] = server.connections()
        server_acked = {t: s.acked_version for t, s in conn.types.items()}
        return len(server_acked) == 4 and server_acked == client.state.acked_versions

    await eventually(acked_everywhere)
    assert len(recorder.applied) == 1
    assert client.state.connected and client.state.connects == 1
    assert client.state.applied is recorder.last
    assert client.state.last_nack is None
    assert server.connections()[0].variant == variant


@VARIANTS
async def test_update_reaches_apply_within_a_second(serve: Serve, connect: Connect, variant: str) -> None:
    """A change on the server is applied by the client after the debounce, well under a second."""
    source = FakeSource(mesh({"a": [9001]}))
    _, port = await serve(source)
    recorder = Recorder()
    await connect(port, recorder, delta=variant == "delta")
    await eventually(lambda: recorder.applied)

    began = time.monotonic()
    source.set(mesh({"a": [9011, 9012]}))
    await eventually(lambda: len(recorder.applied) == 2)
    assert recorder.times[1] - began < 1.0
    assert ports(recorder.last, "c-a") == [9011, 9012]


@VARIANTS
async def test_rejected_update_keeps_last_good_then_a_fix_is_acked(
    serve: Serve, connect: Connect, variant: str
) -> None:
    """apply raising ConfigRejected NACKs with its message; the last good set stays; a fix is ACKed."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await serve(source)
    recorder = Recorder()
    client = await connect(port, recorder, delta=variant == "delta")
    await eventually(lambda: recorder.applied)
    good = client.state.applied

    source.set(mesh({"a": [6666]}))
    await eventually(lambda: server.stats.nacks[ENDPOINT] == 1)
    nack = client.state.last_nack
    assert nack is not None and nack.message == "c-a: port 6666 is reserved"
    assert nack.type_url == ENDPOINT
    server_nack = server.connections()[0].last_nack
    assert server_nack is not None and server_nack.message == nack.message
    assert client.state.applied is good and len(recorder.applied) == 1
    dump = json.loads(json.dumps(client.state.as_dict()))  # what /config_dump shows
    assert dump["last_nack"]["message"] == nack.message
    assert dump["applied_versions"] == client.state.applied_versions

    source.set(mesh({"a": [9002]}))
    await eventually(lambda: len(recorder.applied) == 2)
    assert ports(recorder.last, "c-a") == [9002]
    await eventually(
        lambda: server.connections()[0].types[ENDPOINT].acked_version == client.state.acked_versions[ENDPOINT]
    )
    assert server.stats.nacks[ENDPOINT] == 1


@VARIANTS
async def test_reconnects_after_server_restart(serve: Serve, connect: Connect, variant: str) -> None:
    """The server goes away and comes back on the same port with other config: the client reconnects,
    re-subscribes and applies it."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await serve(source)
    recorder = Recorder()
    client = await connect(port, recorder, delta=variant == "delta")
    await eventually(lambda: recorder.applied)

    await server.stop(0)
    await eventually(lambda: not client.state.connected)
    await serve(FakeSource(mesh({"b": [9002]})), port)
    await eventually(lambda: shape(recorder.last)[CLUSTER] == ["c-b"], timeout=10)
    assert shape(recorder.last) == {LISTENER: ["l-b"], ROUTE: ["r-b"], CLUSTER: ["c-b"], ENDPOINT: ["c-b"]}
    assert client.state.connects == 2


async def test_delta_reconnect_to_unchanged_config_sends_and_applies_nothing(
    serve: Serve, connect: Connect
) -> None:
    """Reconnecting, the client declares the versions it holds; the same config costs no response."""
    source = FakeSource(mesh({"a": [9001], "b": [9002]}))
    server, port = await serve(source)
    recorder = Recorder()
    client = await connect(port, recorder)
    await eventually(lambda: recorder.applied)
    await eventually(lambda: len(client.state.acked_versions) == 4)

    await server.stop(0)
    await eventually(lambda: not client.state.connected)
    again, _ = await serve(source, port)
    await eventually(lambda: client.state.connects == 2, timeout=10)
    await eventually(lambda: len(again.connections()[0].types) == 4)
    assert again.connections()[0].types[ENDPOINT].subscription == ("c-a", "c-b")
    assert sum(again.stats.responses.values()) == 0
    assert len(recorder.applied) == 1


async def test_sotw_waits_for_missing_endpoints_then_applies(serve: Serve, connect: Connect) -> None:
    """SotW cannot say "does not exist": the first apply waits for the timeout, then goes ahead."""
    config = mesh({"a": [9001]})
    del config[ENDPOINT]
    _, port = await serve(FakeSource(config))
    recorder = Recorder()
    began = time.monotonic()
    await connect(port, recorder, delta=False, consistency_timeout=0.3)
    await eventually(lambda: recorder.applied)
    assert recorder.times[0] - began >= 0.3
    assert shape(recorder.last)[CLUSTER] == ["c-a"] and shape(recorder.last)[ENDPOINT] == []


async def test_delta_removed_resources_end_the_wait(serve: Serve, connect: Connect) -> None:
    """Delta says "does not exist" (removed_resources), so the client does not wait for the timeout."""
    config = mesh({"a": [9001]})
    del config[ENDPOINT]
    _, port = await serve(FakeSource(config))
    recorder = Recorder()
    began = time.monotonic()
    await connect(port, recorder, consistency_timeout=5)
    await eventually(lambda: recorder.applied)
    assert recorder.times[0] - began < 2


async def test_fifty_clients_each_get_their_own_config(serve: Serve, connect: Connect) -> None:
    """Fifty sidecars on one server, each applying only its own node's configuration."""
    source = FakeSource()
    for i in range(50):
        source.configs[f"sidecar~default~w{i}"] = mesh({f"s{i}": [9000 + i]})
    server, port = await serve(source)
    applied: dict[int, list[Resources]] = {i: [] for i in range(50)}

    def recorder(i: int) -> Callable[[Resources], None]:
        return applied[i].append  # a plain (not async) apply

    for i in range(50):
        await connect(port, recorder(i), node_id=f"sidecar~default~w{i}")
    await eventually(lambda: all(applied.values()), timeout=10)
    for i, configs in applied.items():
        assert shape(configs[-1])[CLUSTER] == [f"c-s{i}"]
    assert len(server.connections()) == 50


@VARIANTS
async def test_a_rejected_route_does_not_hold_back_endpoint_updates(
    serve: Serve, connect: Connect, variant: str
) -> None:
    """Each response is accepted or rejected on its own: while a RouteConfiguration stays rejected, a
    later change of endpoints is applied (over the routes last accepted)."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await serve(source)
    recorder = Recorder()
    client = await connect(port, recorder, delta=variant == "delta")
    await eventually(lambda: recorder.applied)

    bad = mesh({"a": [9001]})
    bad[ROUTE]["r-a"] = route_config("r-a", "c-a", domains=["bad"])
    source.set(bad)
    await eventually(lambda: server.stats.nacks[ROUTE] == 1)
    nack = client.state.last_nack
    assert nack is not None and nack.type_url == ROUTE and "'bad' is refused" in nack.message

    moved = mesh({"a": [9011, 9012]})
    moved[ROUTE]["r-a"] = bad[ROUTE]["r-a"]
    source.set(moved)
    await eventually(lambda: len(recorder.applied) == 2)
    assert ports(recorder.last, "c-a") == [9011, 9012]
    assert list(recorder.last[ROUTE]["r-a"].virtual_hosts[0].domains) == ["*"], "the accepted route stays"
    await eventually(
        lambda: server.connections()[0].types[ENDPOINT].acked_version == client.state.acked_versions[ENDPOINT]
    )
    assert server.stats.nacks[ROUTE] == 1 and server.stats.nacks[ENDPOINT] == 0


@VARIANTS
async def test_a_listener_that_cannot_bind_does_not_hold_back_the_rest(
    serve: Serve, connect: Connect, variant: str
) -> None:
    """A new service whose listener cannot bind: its listener is NACKed, its cluster and endpoints are
    applied; then an endpoint change of another cluster is applied too."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await serve(source)
    recorder = Recorder()
    client = await connect(port, recorder, delta=variant == "delta")
    await eventually(lambda: recorder.applied)

    unbindable = mesh({"a": [9001], "b": [9002]})
    unbindable[LISTENER]["l-b"] = sidecar_listener("l-b", "r-b", 6666)
    source.set(unbindable)
    await eventually(lambda: server.stats.nacks[LISTENER] == 1)
    nack = client.state.last_nack
    assert nack is not None and nack.type_url == LISTENER and "cannot bind" in nack.message
    await eventually(lambda: shape(client.state.applied)[CLUSTER] == ["c-a", "c-b"])
    assert shape(client.state.applied)[LISTENER] == ["l-a"]

    moved = mesh({"a": [9011], "b": [9002]})
    moved[LISTENER]["l-b"] = unbindable[LISTENER]["l-b"]
    source.set(moved)
    await eventually(lambda: ports(client.state.applied, "c-a") == [9011])
    assert shape(client.state.applied) == {
        LISTENER: ["l-a"],
        ROUTE: ["r-a"],
        CLUSTER: ["c-a", "c-b"],
        ENDPOINT: ["c-a", "c-b"],
    }
    assert server.stats.nacks[LISTENER] == 1 and server.stats.nacks[ENDPOINT] == 0


@VARIANTS
async def test_a_new_cluster_and_changed_endpoints_arrive_together_quickly(
    serve: Serve, connect: Connect, variant: str
) -> None:
    """One push adds a cluster and changes another's endpoints: the client's new EDS subscription
    crosses the server's EDS response, and still the whole change is applied at once, well under the
    1 s "does not exist" wait."""
    source = FakeSource(mesh({"a": [9001]}))
    _, port = await serve(source)
    recorder = Recorder()
    await connect(port, recorder, delta=variant == "delta", consistency_timeout=1.0)
    await eventually(lambda: recorder.applied)

    began = time.monotonic()
    source.set(mesh({"a": [9011], "b": [9002]}))
    await eventually(lambda: shape(recorder.last)[ENDPOINT] == ["c-a", "c-b"], timeout=3)
    assert recorder.times[-1] - began < 0.6
    assert ports(recorder.last, "c-a") == [9011] and ports(recorder.last, "c-b") == [9002]
    assert all(shape(r)[CLUSTER] == shape(r)[ENDPOINT] for r in recorder.applied), (
        "a cluster without endpoints"
    )


async def test_a_malformed_response_makes_the_client_reconnect() -> None:
    """A response that does not decode ends the stream like any failure: the client reconnects rather
    than waiting forever on a dead reader."""
    streams = 0

    async def garbage(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        nonlocal streams
        streams += 1
        yield b"\xff\xff\xff\xff"
        async for _ in requests:
            pass

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {"DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(garbage)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = XdsClient(f"127.0.0.1:{port}", node(SIDECAR), Recorder(), backoff_start=0.01, backoff_cap=0.05)
    await client.start()
    try:
        await eventually(lambda: streams >= 3, timeout=5)
    finally:
        await client.stop()
        await server.stop(0)
