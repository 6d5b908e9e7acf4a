"""Watch fan-out under load: etcd's watch transports, batching on a busy shared stream, and events
translated once for all watchers.

etcd sends a watcher that keeps up one response per revision. Over gRPC each response costs a read of
its own (two turns of the event loop), so a busy server fell behind its writers; over etcd's JSON
gateway one read takes every response that arrived. The gRPC transport stays as the fallback for an
etcd that does not serve the gateway, and is checked here against the contract's essentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from innermesh.api.selectors import parse_label_selector
from innermesh.apiserver.resources import predicate_for
from innermesh.store import etcd as etcd_module
from innermesh.store.backend import Backend, Compacted, EventType
from innermesh.store.etcd import EtcdBackend, _Stream
from innermesh.store.objects import ObjectEvent, ObjectStore
from support.etcd_server import EtcdServer

from .conftest import ETCD_PREFIX, StoreHarness
from .test_backend import Reader, summary

pytestmark = pytest.mark.timeout(60)


class _EtcdWithoutGateway(EtcdServer):
    def _command(self) -> list[str]:
        return [*super()._command(), "--enable-grpc-gateway=false"]


@pytest.fixture
def etcd_without_gateway(tmp_path: Path) -> Iterator[EtcdServer]:
    server = _EtcdWithoutGateway(tmp_path / "etcd-data")
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def _follow_the_contract(backend: EtcdBackend) -> None:
    """History then live changes, deletes with their previous value, progress, compaction."""
    start = await backend.revision()
    a = await backend.create("f/a", b"1")
    a2 = await backend.update("f/a", b"2", a.mod_revision)
    async with backend.watch("f/", start) as watch:
        reader = Reader(watch, start)
        assert summary(await reader.until(a2.mod_revision)) == [
            ("PUT", "f/a", b"1", a.mod_revision),
            ("PUT", "f/a", b"2", a2.mod_revision),
        ]
        _, deleted_at = await backend.delete("f/a", None)
        (deleted,) = await reader.until(deleted_at)
        assert deleted.type is EventType.DELETE and deleted.prev == a2
        elsewhere = await backend.create("other/x", b"1")
        assert await reader.until(elsewhere.mod_revision, within=5) == []  # progress only
    await backend.compact(deleted_at)
    with pytest.raises(Compacted):
        await anext(aiter(backend.watch("f/", start)))


@pytest.mark.etcd
@pytest.mark.parametrize("harness", ["etcd"], indirect=True)  # etcd's transports: no SQLite run
async def test_watches_over_grpc_follow_the_contract(harness: StoreHarness) -> None:
    assert harness.etcd is not None
    backend = await EtcdBackend.open([harness.etcd.endpoint], "/grpc-watch/", watch_transport="grpc")
    try:
        await _follow_the_contract(backend)
        assert not backend.watch_over_gateway
    finally:
        await backend.close()


@pytest.mark.etcd
async def test_an_etcd_without_the_gateway_is_watched_over_grpc(etcd_without_gateway: EtcdServer) -> None:
    backend = await EtcdBackend.open([etcd_without_gateway.endpoint], ETCD_PREFIX)
    try:
        assert backend.watch_over_gateway
        await _follow_the_contract(backend)
        assert not backend.watch_over_gateway  # found out once, then gRPC for good
    finally:
        await backend.close()


@pytest.mark.etcd
@pytest.mark.parametrize("harness", ["etcd"], indirect=True)  # etcd's transports: no SQLite run
async def test_one_gateway_read_takes_every_response_that_arrived(harness: StoreHarness) -> None:
    """200 writes while nobody reads: etcd sends 200 responses; over the gateway they come back in a
    few batches, over gRPC one per read."""
    assert harness.etcd is not None
    transports: tuple[tuple[Literal["gateway", "grpc"], int | None], ...] = (("gateway", 20), ("grpc", None))
    for transport, most_reads in transports:
        backend = await EtcdBackend.open([harness.etcd.endpoint], f"/{transport}/", watch_transport=transport)
        try:
            stream = _Stream(backend, "burst/", await backend.revision())
            await stream.open()
            try:
                for i in range(200):
                    await backend.create(f"burst/{i}", b"x" * 200)
                await asyncio.sleep(0.2)  # let the responses arrive
                reads = events = 0
                while events < 200:
                    item = await asyncio.wait_for(stream.next(), 10)
                    assert item is not None
                    reads += 1
                    events += len(item[0])
                assert events == 200
                if most_reads is not None:
                    assert reads <= most_reads, f"{reads} reads over the {transport}"
                else:
                    assert reads > 100, f"{reads} reads over gRPC: did etcd batch its responses?"
            finally:
                stream.cancel()
        finally:
            await backend.close()


@pytest.mark.etcd
@pytest.mark.parametrize("harness", ["etcd"], indirect=True)  # etcd's transports: no SQLite run
async def test_a_shared_stream_hands_out_at_once_when_quiet_and_in_batches_when_busy(
    harness: StoreHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change after a quiet spell reaches the watches at once; changes right after it wait for the
    window and arrive together. (A 1 s window here, so that the timing is unmistakable.)"""
    assert harness.etcd is not None
    monkeypatch.setattr(etcd_module, "_MAX_FANOUT_WINDOW", 1.0)
    backend = await EtcdBackend.open([harness.etcd.endpoint], "/fan/", fanout_pace=0.1)
    try:
        start = await backend.revision()
        readers = [Reader(backend.watch("k/", start), start) for _ in range(10)]  # window: 1 s
        try:
            first = await backend.create("k/first", b"1")
            t0 = time.monotonic()
            for reader in readers:
                assert summary(await reader.until(first.mod_revision, within=5))[0][1] == "k/first"
            assert time.monotonic() - t0 < 0.5, "a change on a quiet stream was held back"
            for i in range(3):
                await backend.create(f"k/{i}", b"1")
            for reader in readers:
                batch = await reader.next(within=5)
                while not batch.events:  # progress only (a notification): not the burst yet
                    batch = await reader.next(within=5)
                assert [e.kv.key for e in batch.events] == ["k/0", "k/1", "k/2"]  # one batch
            assert time.monotonic() - t0 > 0.5, "a busy stream handed out before its window"
        finally:
            for reader in readers:
                await reader.watch.close()
    finally:
        await backend.close()


def _svc(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels}, "spec": {}}


async def test_watchers_without_a_selector_share_each_translated_event(backend: Backend) -> None:
    """Every watcher without a selector gets the same event object for a change (translated and
    encoded once); a watcher with a selector still gets its own view (DELETED when a change takes the
    object out of its selector)."""
    store = ObjectStore(backend)
    prefix = "/registry/core/services/default/"
    start = await backend.revision()
    predicate = predicate_for(parse_label_selector("app=web"), None)
    streams = [store.watch(prefix, start) for _ in range(3)] + [store.watch(prefix, start, predicate)]

    async def changes(stream: Any) -> list[ObjectEvent]:
        seen: list[ObjectEvent] = []
        async for batch in stream:
            seen += [e for e in batch if e.type != "BOOKMARK"]
            if any(e.revision >= last for e in batch):
                return seen
        return seen

    created = await store.create(prefix + "a", _svc("a", app="web"))
    updated = await store.update(
        prefix + "a",
        {**_svc("a", app="db"), "metadata": {**created["metadata"], "labels": {"app": "db"}}},
        None,
    )
    last = int(updated["metadata"]["resourceVersion"])
    plain_a, plain_b, plain_c, selected = await asyncio.wait_for(
        asyncio.gather(*(changes(s) for s in streams)), 10
    )
    assert [e.type for e in plain_a] == ["ADDED", "MODIFIED"]
    for one, other in zip(plain_a, plain_b, strict=True):
        assert one is other
    for one, other in zip(plain_a, plain_c, strict=True):
        assert one is other
    assert [e.type for e in selected] == ["ADDED", "DELETED"]
    assert selected[1].object is not None and selected[1].object["metadata"]["labels"] == {"app": "web"}
    assert plain_a[0].watch_line() == b'{"type":"ADDED","object":' + plain_a[0].object_json() + b"}\n"
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
