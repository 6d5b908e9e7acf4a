"""Acknowledged writes survive kill -9 of ``innermesh server``, on SQLite and on etcd.

Writers create, update and delete objects as fast as they can through the REST API and note every
write the server acknowledged. The server is killed with SIGKILL in the middle of that, then started
again on the same data (the same SQLite directory, or the same etcd). Every acknowledged write must be
there, exactly as acknowledged, and the revision must not have gone back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.api.status import ApiError
from innermesh.client.http import HttpClient
from support.etcd_server import EtcdServer, running_etcd
from support.server_process import ServerProcess

WORKLOAD = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
SVC = REGISTRY.by_gvk("v1", "Service")


@pytest.fixture(params=["sqlite", "etcd"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    with contextlib.ExitStack() as stack:
        endpoints: list[str] = []
        if request.param == "etcd":
            (tmp_path / "etcd").mkdir()
            etcd: EtcdServer = stack.enter_context(running_etcd(tmp_path / "etcd"))
            endpoints = [etcd.url]
        proc = ServerProcess(tmp_path / "data", store=request.param, etcd_endpoints=endpoints)
        stack.callback(proc.stop)
        proc.start()
        yield proc


async def test_acknowledged_writes_survive_kill_9(server: ServerProcess) -> None:
    """Creates, updates and deletes acknowledged before a SIGKILL are all there after the restart."""
    client = HttpClient(server.url, timeout=5)
    acked: dict[str, dict[str, str] | None] = {}  # name -> {uid, resourceVersion, zone}, None if deleted
    services: dict[str, str] = {}  # name -> clusterIP
    in_flight: set[str] = set()  # names whose last write was cut off: either outcome is allowed
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"w{n}-{i}"
            i += 1
            try:
                obj = await client.create(
                    WORKLOAD,
                    "default",
                    {"metadata": {"name": name}, "spec": {"addresses": [f"127.0.{n}.{i % 250 + 1}"]}},
                )
                acked[name] = {
                    "uid": obj["metadata"]["uid"],
                    "rv": obj["metadata"]["resourceVersion"],
                    "zone": "",
                }
                if i % 3 == 0:
                    obj = await client.patch(WORKLOAD, "default", name, "merge", {"spec": {"zone": f"z{i}"}})
                    acked[name] = {
                        "uid": obj["metadata"]["uid"],
                        "rv": obj["metadata"]["resourceVersion"],
                        "zone": f"z{i}",
                    }
                if i % 5 == 0:
                    await client.delete(WORKLOAD, "default", name)
                    acked[name] = None
                if i % 7 == 0:
                    svc = await client.create(
                        SVC, "default", {"metadata": {"name": f"s{n}-{i}"}, "spec": {"ports": [{"port": 80}]}}
                    )
                    services[svc["metadata"]["name"]] = svc["spec"]["clusterIP"]
            except ApiError:
                # The server died under this request: it was not acknowledged, so it may or may not
                # have happened.
                in_flight.add(name)
                return

    tasks = [asyncio.create_task(writer(n)) for n in range(8)]
    await asyncio.sleep(2.0)
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(acked) > 50, f"only {len(acked)} writes were made before the kill: the test proves little"
    last_rv = max(int(v["rv"]) for v in acked.values() if v)

    server.start()
    items, list_rv = await client.list(WORKLOAD, "default")
    stored = {o["metadata"]["name"]: o for o in items}
    for name, want in acked.items():
        if name in in_flight:
            if name in stored and want is not None:
                assert stored[name]["metadata"]["uid"] == want["uid"]
            continue
        if want is None:
            assert name not in stored, f"{name} was deleted (acknowledged) but is back"
            continue
        assert name in stored, f"{name} was acknowledged but is lost"
        got = stored[name]
        assert got["metadata"]["uid"] == want["uid"]
        # The last acknowledged write is there; a later unacknowledged one may be too.
        assert int(got["metadata"]["resourceVersion"]) >= int(want["rv"])
        if int(got["metadata"]["resourceVersion"]) == int(want["rv"]):
            assert got["spec"].get("zone", "") == want["zone"]
    assert list_rv >= last_rv, "the store's revision went backwards across the crash"
    svcs, _ = await client.list(SVC, "default")
    ips = {o["metadata"]["name"]: o["spec"]["clusterIP"] for o in svcs}
    for name, ip in services.items():
        assert ips.get(name) == ip, f"Service {name} lost or changed its acknowledged ClusterIP"
    # Writing goes on after the restart, at higher revisions, and allocations stay unique.
    after = await client.create(
        WORKLOAD, "default", {"metadata": {"name": "after"}, "spec": {"addresses": ["127.9.9.9"]}}
    )
    assert int(after["metadata"]["resourceVersion"]) > last_rv
    fresh = await client.create(
        SVC, "default", {"metadata": {"name": "fresh"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert fresh["spec"]["clusterIP"] not in set(ips.values())
    await client.close()
