"""The ADS server over real gRPC on 127.0.0.1, driven by hand as Envoy and gRPC drive it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from innermesh.xds import metrics
from innermesh.xds.server import MAX_REQUEST_BYTES, XdsServer
from innermesh.xds.streams import MAX_NAMES_PER_TYPE
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, ProxyInfo, Resources
from innermesh.xds.versions import content_version, set_version
from support.eventually import eventually
from support.xds import (
    FakeSource,
    RawAds,
    eds_cluster,
    endpoints,
    mesh,
    names,
    node,
    proxy_info,
)

SIDECAR = "sidecar~default~w1"

Start = Callable[..., Awaitable[tuple[XdsServer, int]]]
Open = Callable[..., Awaitable[RawAds]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[XdsServer] = []

    async def run(source: FakeSource, **options: Any) -> tuple[XdsServer, int]:
        server = XdsServer(source, proxy_info, **options)
        port = await server.start("127.0.0.1", 0)
        servers.append(server)
        return server, port

    yield run
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def open_ads() -> AsyncIterator[Open]:
    streams: list[RawAds] = []

    async def make(port: int, variant: str = "sotw") -> RawAds:
        ads = RawAds(port, variant)
        streams.append(ads)
        return ads

    yield make
    for ads in streams:
        await ads.close()


async def envoy_sotw(ads: RawAds, node_id: str = SIDECAR) -> dict[str, Any]:
    """Subscribe as Envoy does (CDS *, EDS by name, LDS *, RDS by name), ACKing each response."""
    last: dict[str, Any] = {}
    first = True
    for type_url, wanted in ((CLUSTER, []), (ENDPOINT, ["c-a"]), (LISTENER, []), (ROUTE, ["r-a"])):
        extra = {"node": node(node_id)} if first else {}
        first = False
        await ads.send(type_url=type_url, resource_names=wanted, **extra)
        response = await ads.recv()
        assert response.type_url == type_url
        await ads.send(
            type_url=type_url,
            resource_names=wanted,
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
        last[type_url] = response
    return last


def version_of(message: Any) -> str:
    return content_version(message.SerializeToString(deterministic=True))


async def test_sotw_initial_config_versions_and_ack(start: Start, open_ads: Open) -> None:
    """Each type is answered once with a content-hash version; ACKs are recorded and answered by nothing."""
    server, port = await start(FakeSource(mesh({"a": [9001]})))
    ads = await open_ads(port)
    last = await envoy_sotw(ads)
    await ads.nothing()

    assert names(last[CLUSTER]) == ["c-a"]
    assert names(last[ENDPOINT]) == ["c-a"]
    assert names(last[LISTENER]) == ["l-a"]
    assert names(last[ROUTE]) == ["r-a"]
    assert last[CLUSTER].version_info == set_version({"c-a": version_of(eds_cluster("c-a"))})
    assert last[ENDPOINT].version_info == set_version({"c-a": version_of(endpoints("c-a", [9001]))})
    [conn] = server.connections()
    assert (conn.node_id, conn.kind, conn.variant) == (SIDECAR, "sidecar", "sotw")
    assert conn.types[CLUSTER].subscription == ("*",)
    assert conn.types[ENDPOINT].subscription == ("c-a",)
    for type_url, response in last.items():
        assert conn.types[type_url].acked_version == response.version_info
    assert server.stats.acks == {CLUSTER: 1, ENDPOINT: 1, LISTENER: 1, ROUTE: 1}


async def test_sotw_change_sends_only_changed_types_in_push_order(start: Start, open_ads: Open) -> None:
    """A changed endpoint sends EDS alone; a new service sends CDS before LDS; same content sends nothing."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await start(source)
    ads = await open_ads(port)
    before = await envoy_sotw(ads)

    source.set(mesh({"a": [9002]}))
    eds = await ads.recv()
    assert eds.type_url == ENDPOINT
    assert eds.version_info not in ("", before[ENDPOINT].version_info)
    await ads.send(
        type_url=ENDPOINT, resource_names=["c-a"], version_info=eds.version_info, response_nonce=eds.nonce
    )
    await ads.nothing()

    source.set(mesh({"a": [9002]}))  # a change notification without a change
    await ads.nothing()

    source.set(mesh({"a": [9002], "b": [9003]}))
    first, second = await ads.recv(), await ads.recv()
    assert (first.type_url, second.type_url) == (CLUSTER, LISTENER)
    assert names(first) == ["c-a", "c-b"]
    assert names(second) == ["l-a", "l-b"]
    assert server.stats.pushes == 3


async def test_sotw_nack_is_recorded_reported_once_and_not_resent(
    start: Start, open_ads: Open, caplog: pytest.LogCaptureFixture
) -> None:
    """A NACK is kept on the stream, counted, logged once, passed to on_nack; the same config is not resent."""
    rejections: list[tuple[ProxyInfo, str, Sequence[str], str]] = []

    def on_nack(proxy: ProxyInfo, type_url: str, resource_names: Sequence[str], message: str) -> None:
        rejections.append((proxy, type_url, resource_names, message))

    source = FakeSource(mesh({"a": [9001]}))
    server, port = await start(source, on_nack=on_nack)
    ads = await open_ads(port)
    before = await envoy_sotw(ads)
    source.set(mesh({"a": [9002]}))
    bad = await ads.recv()

    caplog.set_level(logging.WARNING, logger="innermesh.xds.server")
    for _ in range(2):  # a proxy may NACK the same response again; it is one rejection
        await ads.send(
            type_url=ENDPOINT,
            resource_names=["c-a"],
            version_info=before[ENDPOINT].version_info,
            response_nonce=bad.nonce,
            error_detail={"code": 3, "message": "endpoint 9002: port refused"},
        )
    await eventually(lambda: server.stats.nacks[ENDPOINT] == 2)

    [conn] = server.connections()
    assert conn.last_nack is not None
    assert (conn.last_nack.type_url, conn.last_nack.version) == (ENDPOINT, bad.version_info)
    assert conn.last_nack.message == "endpoint 9002: port refused"
    assert conn.last_nack.resource_names == ("c-a",)
    assert conn.types[ENDPOINT].acked_version == before[ENDPOINT].version_info
    assert [(p.node_id, t, tuple(n), m) for p, t, n, m in rejections] == [
        (SIDECAR, ENDPOINT, ("c-a",), "endpoint 9002: port refused")
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert SIDECAR in warnings[0].getMessage() and "port refused" in warnings[0].getMessage()

    source.changed()  # regenerates the same (rejected) configuration
    await ads.nothing()
    source.set(mesh({"a": [9003]}))
    fixed = await ads.recv()
    assert fixed.type_url == ENDPOINT and fixed.version_info != bad.version_info


async def test_sotw_stale_nonce_is_no_ack_but_its_subscription_counts(start: Start, open_ads: Open) -> None:
    """A request answering an older response neither ACKs nor NACKs anything, but it is the client's
    latest word on what it wants: its new names are served (xDS: new requests supersede older ones)."""
    source = FakeSource(mesh({"a": [9001], "b": [9002]}))
    server, port = await start(source)
    ads = await open_ads(port)
    await ads.send(node=node(SIDECAR), type_url=ENDPOINT, resource_names=["c-a"])
    old = await ads.recv()
    await ads.send(
        type_url=ENDPOINT, resource_names=["c-a"], version_info=old.version_info, response_nonce=old.nonce
    )
    source.set(mesh({"a": [9011], "b": [9002]}))
    new = await ads.recv()

    await ads.send(
        type_url=ENDPOINT,
        resource_names=["c-a", "c-b"],
        version_info=old.version_info,
        response_nonce=old.nonce,
        error_detail={"code": 3, "message": "stale"},
    )
    both = await ads.recv()
    assert names(both) == ["c-a", "c-b"]
    assert server.stats.stale_requests == 1
    [conn] = server.connections()
    assert conn.types[ENDPOINT].subscription == ("c-a", "c-b")
    assert conn.types[ENDPOINT].acked_version == old.version_info, "the stale request is no ACK"
    assert conn.last_nack is None and server.stats.nacks[ENDPOINT] == 0, "nor a NACK"

    await ads.send(
        type_url=ENDPOINT,
        resource_names=["c-a", "c-b"],
        version_info=new.version_info,
        response_nonce=new.nonce,
    )
    await ads.nothing()
    assert server.stats.stale_requests == 2


async def test_sotw_named_subscription_to_missing_listener(start: Start, open_ads: Open) -> None:
    """A proxyless client asking for a listener that does not exist gets a response without it, then the
    listener when it appears."""
    source = FakeSource(mesh({"a": [9001]}, proxyless=True))
    server, port = await start(source)
    ads = await open_ads(port)
    await ads.send(node=node("grpc-1"), type_url=LISTENER, resource_names=["nope:80"])
    empty = await ads.recv()
    assert (empty.type_url, names(empty), empty.version_info) == (LISTENER, [], set_version({}))
    assert server.connections()[0].kind == "proxyless"

    await ads.send(
        type_url=LISTENER,
        resource_names=["a:80", "nope:80"],
        version_info=empty.version_info,
        response_nonce=empty.nonce,
    )
    found = await ads.recv()
    assert names(found) == ["a:80"]
    await ads.send(
        type_url=LISTENER,
        resource_names=["a:80", "nope:80"],
        version_info=found.version_info,
        response_nonce=found.nonce,
    )
    await ads.nothing()

    source.set(mesh({"a": [9001], "nope": [9002]}, proxyless=True))
    both = await ads.recv()
    assert names(both) == ["a:80", "nope:80"]
    # The source was asked for the named listeners only.
    assert source.calls["grpc-1"] == 3


async def test_delta_subscriptions_versions_and_removals(start: Start, open_ads: Open) -> None:
    """Delta: legacy wildcard, named subscriptions, per-resource versions, removed_resources for what
    disappeared and for names that never existed; unsubscribing needs no answer."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await start(source)
    ads = await open_ads(port, "delta")

    await ads.send(node=node(SIDECAR), type_url=CLUSTER)  # no names: the legacy wildcard
    cds = await ads.recv()
    assert [(r.name, r.version) for r in cds.resources] == [("c-a", version_of(eds_cluster("c-a")))]
    assert list(cds.removed_resources) == []
    await ads.send(type_url=CLUSTER, response_nonce=cds.nonce)

    await ads.send(type_url=ENDPOINT, resource_names_subscribe=["c-a", "c-missing"])
    eds = await ads.recv()
    assert [(r.name, r.version) for r in eds.resources] == [("c-a", version_of(endpoints("c-a", [9001])))]
    assert list(eds.removed_resources) == ["c-missing"]
    await ads.send(type_url=ENDPOINT, response_nonce=eds.nonce)
    await ads.nothing()
    [conn] = server.connections()
    assert conn.variant == "delta"
    assert conn.types[ENDPOINT].acked_version == eds.system_version_info
    assert conn.types[ENDPOINT].subscription == ("c-a", "c-missing")

    source.set(mesh({"a": [9002]}))
    changed = await ads.recv()
    assert changed.type_url == ENDPOINT
    assert [(r.name, r.version) for r in changed.resources] == [("c-a", version_of(endpoints("c-a", [9002])))]
    await ads.send(type_url=ENDPOINT, response_nonce=changed.nonce)
    await ads.nothing()

    source.set(mesh({"b": [9003]}))
    cds2, eds2 = await ads.recv(), await ads.recv()
    assert (cds2.type_url, names(cds2), list(cds2.removed_resources)) == (CLUSTER, ["c-b"], ["c-a"])
    assert (eds2.type_url, names(eds2), list(eds2.removed_resources)) == (ENDPOINT, [], ["c-a"])

    await ads.send(type_url=ENDPOINT, resource_names_unsubscribe=["c-a"])
    await ads.nothing()
    assert server.connections()[0].types[ENDPOINT].subscription == ("c-missing",)

    await ads.send(type_url=ENDPOINT, resource_names_subscribe=["c-b"])
    eds3 = await ads.recv()
    assert names(eds3) == ["c-b"]


async def test_delta_reconnect_declares_versions(start: Start, open_ads: Open) -> None:
    """initial_resource_versions: what the client holds at the current version is not sent again."""
    source = FakeSource(mesh({"a": [9001], "b": [9002]}))
    _, port = await start(source)
    first = await open_ads(port, "delta")
    await first.send(node=node(SIDECAR), type_url=CLUSTER, resource_names_subscribe=["*"])
    cds = await first.recv()
    held = {r.name: r.version for r in cds.resources}
    await first.close()

    again = await open_ads(port, "delta")
    await again.send(
        node=node(SIDECAR),
        type_url=CLUSTER,
        resource_names_subscribe=["*"],
        initial_resource_versions={**held, "c-a": "outdated", "c-gone": "x"},
    )
    response = await again.recv()
    assert names(response) == ["c-a"]
    assert list(response.removed_resources) == ["c-gone"]
    await again.nothing()


async def test_delta_nack_is_not_resent(start: Start, open_ads: Open) -> None:
    """A NACKed delta is recorded with the rejected names; a push of the same content sends nothing."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await start(source)
    ads = await open_ads(port, "delta")
    await ads.send(node=node(SIDECAR), type_url=ENDPOINT, resource_names_subscribe=["c-a"])
    eds = await ads.recv()
    await ads.send(type_url=ENDPOINT, response_nonce=eds.nonce, error_detail={"code": 3, "message": "no"})
    await eventually(lambda: server.stats.nacks[ENDPOINT] == 1)
    nack = server.connections()[0].last_nack
    assert nack is not None and (nack.version, nack.resource_names) == (eds.system_version_info, ("c-a",))
    source.changed()
    await ads.nothing()


async def test_burst_of_changes_is_one_push(start: Start, open_ads: Open) -> None:
    """Fifty changes in a burst regenerate once and send one response, with the last state."""
    source = FakeSource(mesh({"a": [9000]}))
    server, port = await start(source)
    ads = await open_ads(port)
    await envoy_sotw(ads)
    calls = source.calls[SIDECAR]

    for i in range(1, 51):
        source.set(mesh({"a": [9000 + i]}))
        await asyncio.sleep(0.001)
    eds = await ads.recv()
    assert eds.version_info == set_version({"c-a": version_of(endpoints("c-a", [9050]))})
    await ads.nothing(0.7)
    assert server.stats.pushes == 1
    assert source.calls[SIDECAR] == calls + 1


async def test_change_reaches_a_client_within_a_second(start: Start, open_ads: Open) -> None:
    """After one change, the response arrives after the quiet period and well under a second."""
    source = FakeSource(mesh({"a": [9000]}))
    _, port = await start(source)
    ads = await open_ads(port)
    await envoy_sotw(ads)
    began = time.monotonic()
    source.set(mesh({"a": [9001]}))
    await ads.recv()
    assert 0.09 <= time.monotonic() - began < 1.0


async def test_changes_that_never_stop_are_pushed_by_the_cap(start: Start, open_ads: Open) -> None:
    """A change every 50 ms never leaves 100 ms of quiet; the 500 ms cap pushes anyway."""
    source = FakeSource(mesh({"a": [9000]}))
    _, port = await start(source)
    ads = await open_ads(port)
    await envoy_sotw(ads)

    async def flap() -> None:
        for i in range(1, 40):
            source.set(mesh({"a": [9000 + i]}))
            await asyncio.sleep(0.05)

    flapping = asyncio.create_task(flap())
    try:
        began = time.monotonic()
        await ads.recv()
        assert 0.45 <= time.monotonic() - began < 1.0
    finally:
        flapping.cancel()


async def test_fifty_streams_get_their_own_config_and_only_changed_ones_are_sent(
    start: Start, open_ads: Open
) -> None:
    """Each stream sees its own node's configuration; a change for one node reaches that stream only,
    and each stream is generated once per push."""
    source = FakeSource()
    for i in range(50):
        source.configs[f"sidecar~default~w{i}"] = mesh({f"s{i}": [9000 + i]})
    server, port = await start(source)
    streams = [await open_ads(port, "delta") for _ in range(50)]
    for i, ads in enumerate(streams):
        await ads.send(node=node(f"sidecar~default~w{i}"), type_url=CLUSTER, resource_names_subscribe=["*"])
    first = await asyncio.gather(*(ads.recv() for ads in streams))
    assert [names(r) for r in first] == [[f"c-s{i}"] for i in range(50)]

    source.set(mesh({"s7": [9999], "x": [1]}), node_id="sidecar~default~w7")
    changed = await streams[7].recv()
    assert names(changed) == ["c-x"]
    await asyncio.gather(*(ads.nothing() for i, ads in enumerate(streams) if i != 7))
    assert server.stats.pushes == 1
    assert set(source.calls.values()) == {2}


async def test_protocol_errors_end_the_stream(start: Start, open_ads: Open) -> None:
    """No node on the first request, or a node proxy_info refuses: INVALID_ARGUMENT naming the field."""
    _, port = await start(FakeSource(mesh({"a": [9001]})))
    for first, expected in (
        ({"type_url": CLUSTER}, "node.id: required"),
        ({"type_url": CLUSTER, "node": node("bad-1")}, "node: id: 'bad-1'"),
        ({"node": node(SIDECAR)}, "type_url: required"),
    ):
        ads = await open_ads(port)
        await ads.send(**first)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await ads.recv()
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in str(failure.value.details())


@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_type_urls_outside_the_five_end_the_stream(
    start: Start, open_ads: Open, variant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A type this server does not serve is a protocol error, not state kept per stream (and metric
    series) for whatever a client names."""
    server, port = await start(FakeSource(mesh({"a": [9001]})))
    ads = await open_ads(port, variant)
    await ads.send(node=node(SIDECAR), type_url=CLUSTER)
    await ads.recv()
    await ads.send(type_url="type.googleapis.com/x.Y")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.recv()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url: 'type.googleapis.com/x.Y' is not served" in str(failure.value.details())
    await eventually(lambda: server.connections() == [])
    assert set(server.stats.responses) == {CLUSTER}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_too_many_names_end_the_stream(start: Start, open_ads: Open, variant: str) -> None:
    """A stream may subscribe to at most MAX_NAMES_PER_TYPE names of one type."""
    _, port = await start(FakeSource(mesh({"a": [9001]})))
    ads = await open_ads(port, variant)
    many = [f"c-{i}" for i in range(MAX_NAMES_PER_TYPE + 1)]
    if variant == "sotw":
        await ads.send(node=node(SIDECAR), type_url=ENDPOINT, resource_names=many)
    else:
        await ads.send(node=node(SIDECAR), type_url=ENDPOINT, resource_names_subscribe=many[:-1])
        await ads.recv()
        await ads.send(type_url=ENDPOINT, resource_names_subscribe=many[-1:])
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.recv(wait=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_NAMES_PER_TYPE}" in str(failure.value.details())


async def test_an_oversized_request_is_refused(start: Start, open_ads: Open) -> None:
    """Requests are bounded in bytes too (MAX_REQUEST_BYTES), before anything parses them."""
    server, port = await start(FakeSource(mesh({"a": [9001]})))
    ads = await open_ads(port)
    await ads.send(node=node(SIDECAR), type_url=ENDPOINT, resource_names=["x" * MAX_REQUEST_BYTES])
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.recv()
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await eventually(lambda: server.connections() == [])


async def test_a_request_that_does_not_decode_ends_the_stream_and_is_forgotten(start: Start) -> None:
    """Malformed request bytes end that stream with INVALID_ARGUMENT; the stream leaves connections()
    and is not regenerated on later pushes."""
    source = FakeSource(mesh({"a": [9001]}))
    server, port = await start(source)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )()
        good = discovery_pb2.DiscoveryRequest(node=node(SIDECAR), type_url=CLUSTER)
        await call.write(good.SerializeToString())
        await call.read()
        await call.write(b"\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call.read()
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request: cannot decode" in str(failure.value.details())
    await eventually(lambda: server.stats.streams_closed == 1)
    assert server.connections() == []
    calls = source.calls[SIDECAR]
    source.changed()
    await asyncio.sleep(0.3)
    assert source.calls[SIDECAR] == calls


async def test_metric_labels_come_from_our_own_names(start: Start, open_ads: Open) -> None:
    """However a client names types, /metrics shows only the served types' names (escaped as the text
    format requires), so clients cannot add series or lines."""
    server, port = await start(FakeSource(mesh({"a": [9001]})))
    ads = await open_ads(port)
    await ads.send(node=node(SIDECAR), type_url=CLUSTER)
    cds = await ads.recv()
    await ads.send(type_url=CLUSTER, response_nonce=cds.nonce, version_info=cds.version_info)
    evil = 'type.googleapis.com/x.Z"} 1\ninnermesh_xds_connected_proxies{kind="sidecar'
    await ads.send(type_url=evil)
    with pytest.raises(grpc.aio.AioRpcError):
        await ads.recv()
    await eventually(lambda: server.connections() == [])
    server.stats.nacks[evil] += 1  # as if a stream had been allowed to count it

    text = metrics.render(server.stats, server.connections())
    lines = text.splitlines()
    assert 'innermesh_xds_acks_total{type="Cluster"} 1' in lines
    assert 'innermesh_xds_nacks_total{type="other"} 1' in lines
    assert 'innermesh_xds_connected_proxies{kind="sidecar"} 0' in lines
    assert "x.Z" not in text
    assert metrics.label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


class FailingSource(FakeSource):
    """Fails the first ``failures`` generations, as a translator bug would."""

    def __init__(self, default: Resources, failures: int) -> None:
        super().__init__(default)
        self.failures = failures

    def generate(self, proxy: ProxyInfo, listener_names: frozenset[str] | None) -> Resources:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("translator bug")
        return super().generate(proxy, listener_names)


async def test_a_failed_generation_is_retried_without_waiting_for_a_push(
    start: Start, open_ads: Open, caplog: pytest.LogCaptureFixture
) -> None:
    """Translation raising is logged, counted, and retried with backoff (requests meanwhile do not
    hurry it); the stream then gets its configuration although nothing changed."""
    source = FailingSource(mesh({"a": [9001]}), failures=3)
    server, port = await start(source)
    ads = await open_ads(port)
    began = time.monotonic()
    await ads.send(node=node(SIDECAR), type_url=CLUSTER)
    for i in range(5):
        await ads.send(type_url=LISTENER, resource_names=[f"l-{i}"])
    response = await ads.recv(wait=5)
    assert names(response) == ["c-a"]
    assert 0.1 + 0.2 + 0.4 <= time.monotonic() - began < 3
    assert server.stats.generate_errors == 3 and server.stats.pushes == 0
    assert [r.levelno for r in caplog.records if "generating configuration" in r.getMessage()] == [
        logging.ERROR
    ] * 3


async def test_streams_are_forgotten_and_stop_closes_them(start: Start, open_ads: Open) -> None:
    """A stream the client cancels disappears from connections(); stop() ends the others cleanly."""
    server, port = await start(FakeSource(mesh({"a": [9001]})))
    leaving, staying = await open_ads(port), await open_ads(port, "delta")
    await leaving.send(node=node("sidecar~default~w1"), type_url=CLUSTER)
    await staying.send(node=node("sidecar~default~w2"), type_url=CLUSTER)
    await leaving.recv()
    await staying.recv()
    assert [c.node_id for c in server.connections()] == ["sidecar~default~w1", "sidecar~default~w2"]

    await leaving.close()
    await eventually(lambda: [c.node_id for c in server.connections()] == ["sidecar~default~w2"])

    began = time.monotonic()
    await server.stop(5)
    assert await staying.next(2) is grpc.aio.EOF
    assert await staying.call.code() == grpc.StatusCode.OK
    assert time.monotonic() - began < 2
    assert server.connections() == []
