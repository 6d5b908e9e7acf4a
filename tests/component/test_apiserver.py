"""The API server over real HTTP: Kubernetes' paths, verbs, errors, patches, watches, selectors.

Every test runs a real ``ControlPlane`` (SQLite store in a tmp dir, port 0) and talks to it with an
HTTP client, as kubectl or an agent would.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.api.status import ApiError
from innermesh.apiserver.discovery import _openapi_document_class
from innermesh.client.http import HttpClient
from innermesh.server import ControlPlane
from support.eventually import eventually

SVC = REGISTRY.by_gvk("v1", "Service")
ROUTE = REGISTRY.by_gvk("gateway.networking.k8s.io/v1", "HTTPRoute")
WORKLOAD = REGISTRY.by_gvk("mesh.innermesh.io/v1alpha1", "Workload")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def service(name: str, port: int = 80, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"ports": [{"name": "http", "port": port}], "selector": {"app": name}, **spec},
    }


@pytest.fixture
async def http(control_plane: ControlPlane) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{control_plane.port}"


async def call(
    http: tuple[aiohttp.ClientSession, str],
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    raw: bytes | None = None,
    accept: str = "application/json",
) -> tuple[int, Any]:
    session, base = http
    data: Any = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None and len(data) > 1024 * 1024:
        data = io.BytesIO(data)  # aiohttp warns about big bytes bodies blocking the loop
    async with session.request(
        method, base + path, data=data, headers={"Content-Type": content_type, "Accept": accept}
    ) as resp:
        text = await resp.read()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text


# ---------------------------------------------------------------------------------------------------
# Discovery


async def test_discovery_documents_list_every_kind(http: tuple[aiohttp.ClientSession, str]) -> None:
    """/api, /apis and the group-version documents name each kind with its verbs and short names."""
    code, api = await call(http, "GET", "/api")
    assert code == 200 and api["versions"] == ["v1"]
    code, core = await call(http, "GET", "/api/v1")
    svc = next(r for r in core["resources"] if r["name"] == "services")
    assert svc["kind"] == "Service" and svc["namespaced"] and "svc" in svc["shortNames"]
    assert "watch" in svc["verbs"] and any(r["name"] == "services/status" for r in core["resources"])
    code, groups = await call(http, "GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {
        "gateway.networking.k8s.io",
        "discovery.k8s.io",
        "networking.k8s.io",
        "mesh.innermesh.io",
    } <= names
    code, gw = await call(http, "GET", "/apis/gateway.networking.k8s.io/v1")
    assert {"httproutes", "grpcroutes", "gateways", "gatewayclasses"} <= {r["name"] for r in gw["resources"]}
    code, version = await call(http, "GET", "/version")
    assert code == 200 and version["major"] == "1"


async def test_openapi_v2_is_a_protobuf_document(http: tuple[aiohttp.ClientSession, str]) -> None:
    """kubectl downloads /openapi/v2 as protobuf before create/apply; it must decode as gnostic's Document."""
    session, base = http
    async with session.get(
        base + "/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}
    ) as resp:
        assert resp.status == 200
        doc = _openapi_document_class()()
        doc.ParseFromString(await resp.read())
    assert doc.swagger == "2.0"


async def test_unknown_paths_and_kinds_are_404_status(http: tuple[aiohttp.ClientSession, str]) -> None:
    """Unknown groups, versions and resources answer a 404 Status, not an HTML page."""
    for path in (
        "/apis/nope.example.com/v1/things",
        "/api/v2/services",
        "/api/v1/namespaces/default/widgets",
    ):
        code, body = await call(http, "GET", path)
        assert code == 404, path
        assert body["kind"] == "Status" and body["reason"] == "NotFound"


# ---------------------------------------------------------------------------------------------------
# Create, read, update, delete


async def test_create_sets_server_fields_and_allocates_cluster_ip(
    http: tuple[aiohttp.ClientSession, str],
) -> None:
    """A created Service comes back with uid, resourceVersion, generation, timestamp, defaults and an IP."""
    body = service("web")
    body["metadata"].update({"uid": "forged", "resourceVersion": "999", "generation": 7})
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    code, svc = await call(http, "POST", "/api/v1/namespaces/default/services", body)
    assert code == 201, svc
    meta = svc["metadata"]
    assert meta["uid"] != "forged" and meta["generation"] == 1 and meta["resourceVersion"] != "999"
    assert meta["creationTimestamp"].endswith("Z")
    assert svc["spec"]["ports"][0] == {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}
    assert svc["spec"]["clusterIP"].startswith("10.96.") and svc["spec"]["clusterIPs"] == [
        svc["spec"]["clusterIP"]
    ]
    assert svc["status"] == {"loadBalancer": {}}, "status is the server's, not the client's"
    code, got = await call(http, "GET", "/api/v1/namespaces/default/services/web")
    assert code == 200 and got == svc


async def test_invalid_object_names_every_bad_field_and_stores_nothing(
    http: tuple[aiohttp.ClientSession, str],
) -> None:
    """A 422 Invalid Status lists each bad field by path with the rule it breaks; nothing is stored."""
    body = service("web")
    body["spec"]["ports"] = [
        {"name": "a", "port": 80},
        {"name": "b", "port": 70000, "protocol": "TCPX", "bogus": True},
        {"name": "c", "port": "81"},
    ]
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", body)
    assert code == 422 and status["reason"] == "Invalid"
    causes = {c["field"]: c["message"] for c in status["details"]["causes"]}
    assert causes["spec.ports[1].port"] == "Invalid value: 70000: must be between 1 and 65535, inclusive"
    assert causes["spec.ports[1].protocol"].startswith(
        'Unsupported value: "TCPX": supported values: "TCP", "UDP", "SCTP"'
    )
    assert causes["spec.ports[1].bogus"] == "Unknown field"
    assert causes["spec.ports[2].port"] == 'Invalid value: "81": must be an integer'
    assert "spec.ports[1].port: Invalid value: 70000" in status["message"]
    code, listing = await call(http, "GET", "/api/v1/namespaces/default/services")
    assert listing["items"] == []


async def test_cross_field_rules_are_reported_with_paths(http: tuple[aiohttp.ClientSession, str]) -> None:
    """Rules across fields (names required with several ports, duplicates) name the exact field."""
    body = service("web")
    body["spec"]["ports"] = [{"port": 80}, {"port": 81}, {"name": "x", "port": 80}]
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", body)
    assert code == 422
    fields = {c["field"] for c in status["details"]["causes"]}
    assert {"spec.ports[0].name", "spec.ports[1].name", "spec.ports[2]"} <= fields


async def test_bad_names_bodies_and_kinds_are_refused(http: tuple[aiohttp.ClientSession, str]) -> None:
    """DNS-1035 Service names, malformed JSON and YAML, and a body of the wrong kind are refused."""
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", service("Web_1"))
    assert code == 422 and status["details"]["causes"][0]["field"] == "metadata.name"
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", raw=b'{"kind": ')
    assert code == 400 and "not valid JSON" in status["message"]
    code, status = await call(
        http,
        "POST",
        "/api/v1/namespaces/default/services",
        raw=b"kind: [unclosed",
        content_type="application/yaml",
    )
    assert code == 400 and "not valid YAML" in status["message"]
    wrong = service("web")
    wrong["kind"] = "Namespace"
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", wrong)
    assert code == 400 and "do not match" in status["message"]
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", [1, 2])
    assert code == 400
    code, status = await call(http, "POST", "/api/v1/namespaces/nowhere/services", service("web"))
    assert code == 404 and status["message"] == 'namespaces "nowhere" not found'


async def test_oversized_objects_and_bodies_are_413(http: tuple[aiohttp.ClientSession, str]) -> None:
    """An object over 1.5 MiB, or a body over 3 MiB, is refused with 413 and nothing is stored."""
    big = service("big")
    big["metadata"]["annotations"] = {f"k{i}": "x" * 200_000 for i in range(9)}
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", big)
    # Annotations over 256 KiB in all break a field rule, which is checked before the size limit.
    assert code == 422, status
    assert [c["field"] for c in status["details"]["causes"]] == ["metadata.annotations"]
    huge = service("huge")
    huge["metadata"]["annotations"] = {"k": "x" * (4 * 1024 * 1024)}
    code, status = await call(http, "POST", "/api/v1/namespaces/default/services", huge)
    assert code == 413 and status["reason"] == "RequestEntityTooLarge"
    # Just over the stored-object limit, within the body limit, and valid field by field:
    wl: dict[str, Any] = {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "w", "labels": {}},
        "spec": {"addresses": ["127.0.10.1"]},
    }
    wl["metadata"]["labels"] = {f"k{i:06d}": "v" * 63 for i in range(22_000)}  # ~1.67 MB stored
    code, status = await call(
        http, "POST", "/apis/mesh.innermesh.io/v1alpha1/namespaces/default/workloads", wl
    )
    assert code == 413 and "limit is" in status["message"]
    code, listing = await call(http, "GET", "/apis/mesh.innermesh.io/v1alpha1/workloads")
    assert listing["items"] == []


async def test_update_with_stale_resource_version_is_409(api: HttpClient) -> None:
    """Optimistic concurrency: a PUT carrying an old resourceVersion is refused with Conflict."""
    created = await api.create(SVC, "default", service("web"))
    first = json.loads(json.dumps(created))
    first["metadata"]["labels"] = {"v": "1"}
    updated = await api.update(SVC, "default", "web", first)
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale = json.loads(json.dumps(created))
    stale["metadata"]["labels"] = {"v": "2"}
    with pytest.raises(ApiError) as e:
        await api.update(SVC, "default", "web", stale)
    assert e.value.code == 409 and e.value.reason == "Conflict"
    assert "the object has been modified" in e.value.message


async def test_concurrent_read_modify_write_loses_no_update(api: HttpClient) -> None:
    """Twenty writers incrementing one counter with resourceVersion preconditions: no lost update."""
    await api.create(SVC, "default", service("counter", labels={"n": "0"}))
    successes = 0
    conflicts = 0

    async def writer() -> None:
        nonlocal successes, conflicts
        for _ in range(5):
            while True:
                obj = await api.get(SVC, "default", "counter")
                obj["metadata"]["labels"]["n"] = str(int(obj["metadata"]["labels"]["n"]) + 1)
                try:
                    await api.update(SVC, "default", "counter", obj)
                except ApiError as e:
                    assert e.code == 409
                    conflicts += 1
                    continue
                successes += 1
                break

    await asyncio.gather(*(writer() for _ in range(20)))
    final = await api.get(SVC, "default", "counter")
    assert successes == 100 and final["metadata"]["labels"]["n"] == "100"
    assert conflicts > 0, "twenty concurrent writers should have collided at least once"


async def test_no_op_update_keeps_resource_version_and_generation_tracks_spec(api: HttpClient) -> None:
    """An update that changes nothing is not written; generation moves with spec, not metadata."""
    created = await api.create(SVC, "default", service("web"))
    same = await api.update(SVC, "default", "web", created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    labelled = await api.patch(SVC, "default", "web", "merge", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    respec = await api.patch(SVC, "default", "web", "merge", {"spec": {"sessionAffinity": "ClientIP"}})
    assert respec["metadata"]["generation"] == 2


async def test_status_subresource_separates_spec_and_status(start_control_plane: Any, connect: Any) -> None:
    """A status write changes only status; a main write changes everything but status."""
    # No controllers: the route status controller would otherwise write this route's status too.
    api: HttpClient = connect(await start_control_plane(controllers=False))
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]},
    }
    created = await api.create(ROUTE, "default", route)
    with_status = json.loads(json.dumps(created))
    with_status["status"] = {"parents": []}
    with_status["spec"]["hostnames"] = ["ignored.example.com"]
    after = await api.update(ROUTE, "default", "r", with_status, subresource="status")
    assert after["status"] == {"parents": []} and "hostnames" not in after["spec"]
    main = json.loads(json.dumps(after))
    main["status"] = {"parents": [{"parentRef": {"name": "x"}, "controllerName": "a.b/c", "conditions": []}]}
    main["spec"]["hostnames"] = ["web.example.com"]
    after2 = await api.update(ROUTE, "default", "r", main)
    assert after2["spec"]["hostnames"] == ["web.example.com"] and after2["status"] == {"parents": []}


async def test_patch_types(api: HttpClient) -> None:
    """JSON merge, JSON and strategic merge patches apply; strategic merge on a CRD-like kind is 415."""
    await api.create(SVC, "default", service("web"))
    merged = await api.patch(SVC, "default", "web", "merge", {"metadata": {"labels": {"tier": "front"}}})
    assert merged["metadata"]["labels"] == {"tier": "front"}
    jp = await api.patch(
        SVC, "default", "web", "json", [{"op": "replace", "path": "/spec/ports/0/port", "value": 8080}]
    )
    assert jp["spec"]["ports"][0]["port"] == 8080
    smp = await api.patch(
        SVC, "default", "web", "strategic", {"spec": {"ports": [{"name": "admin", "port": 9090}]}}
    )
    assert sorted(p["port"] for p in smp["spec"]["ports"]) == [8080, 9090], "ports merge by port"
    with pytest.raises(ApiError) as e:
        await api.patch(
            SVC, "default", "web", "json", [{"op": "test", "path": "/spec/type", "value": "Nope"}]
        )
    assert e.value.code == 422
    await api.create(ROUTE, "default", {"metadata": {"name": "r"}, "spec": {}})
    with pytest.raises(ApiError) as e:
        await api.patch(ROUTE, "default", "r", "strategic", {"spec": {"hostnames": ["a.example.com"]}})
    assert e.value.code == 415


async def test_patch_that_breaks_a_rule_is_422_and_changes_nothing(api: HttpClient) -> None:
    """A patch producing an invalid object is refused by the same validation as a create."""
    created = await api.create(SVC, "default", service("web"))
    with pytest.raises(ApiError) as e:
        await api.patch(SVC, "default", "web", "merge", {"spec": {"clusterIP": "10.96.0.99"}})
    assert e.value.code == 422 and any("clusterIPs" in c for c in e.value.field_causes)
    after = await api.get(SVC, "default", "web")
    assert after == created


async def test_delete_with_preconditions_and_finalizers(api: HttpClient) -> None:
    """Delete honours uid preconditions; finalizers hold an object (deletionTimestamp) until removed."""
    created = await api.create(SVC, "default", service("web"))
    with pytest.raises(ApiError) as e:
        await api.delete(SVC, "default", "web", uid="not-the-uid")
    assert e.value.code == 409
    await api.delete(SVC, "default", "web", uid=created["metadata"]["uid"])
    with pytest.raises(ApiError) as e:
        await api.get(SVC, "default", "web")
    assert e.value.code == 404

    held = service("held")
    held["metadata"]["finalizers"] = ["example.com/cleanup"]
    await api.create(SVC, "default", held)
    marked = await api.delete(SVC, "default", "held")
    assert marked["metadata"]["deletionTimestamp"]
    still = await api.get(SVC, "default", "held")
    assert still["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiError) as e:
        await api.patch(
            SVC, "default", "held", "merge", {"metadata": {"finalizers": ["example.com/cleanup", "more"]}}
        )
    assert e.value.code == 422
    await api.patch(SVC, "default", "held", "merge", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiError) as e:
        await api.get(SVC, "default", "held")
    assert e.value.code == 404


async def test_label_and_field_selectors(api: HttpClient) -> None:
    """labelSelector (set and equality forms) and fieldSelector on metadata.name/namespace filter lists."""
    await api.create(SVC, "default", service("a", labels={"tier": "front", "env": "prod"}))
    await api.create(SVC, "default", service("b", labels={"tier": "back", "env": "prod"}))
    await api.create(SVC, "default", service("c", labels={"tier": "front"}))

    async def names(label: str = "", field: str = "", ns: str | None = "default") -> list[str]:
        items, _ = await api.list(SVC, ns, label, field)
        return sorted(o["metadata"]["name"] for o in items)

    assert await names("tier=front") == ["a", "c"]
    assert await names("tier in (front,back),env") == ["a", "b"]
    assert await names("!env") == ["c"]
    assert await names("tier!=front") == ["b"]
    assert await names(field="metadata.name=b") == ["b"]
    assert await names(field="metadata.namespace=default", ns=None) == ["a", "b", "c"]
    assert await names(field="metadata.name!=b", label="tier=front") == ["a", "c"]
    with pytest.raises(ApiError) as e:
        await names("tier in (front")
    assert e.value.code == 400
    with pytest.raises(ApiError) as e:
        await names(field="spec.type=ClusterIP")
    assert e.value.code == 400


async def test_table_output_for_kubectl(http: tuple[aiohttp.ClientSession, str], api: HttpClient) -> None:
    """Asked for a Table, the server returns kubectl's columns and one row per object."""
    await api.create(SVC, "default", service("web"))
    code, table = await call(http, "GET", "/api/v1/namespaces/default/services", accept=TABLE)
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Type", "Cluster-IP"]
    assert table["rows"][0]["cells"][0] == "web" and table["rows"][0]["object"]["metadata"]["name"] == "web"


# ---------------------------------------------------------------------------------------------------
# Watch


async def collect(api: HttpClient, n: int, **kw: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    async for batch in api.watch(SVC, "default", **kw):
        for ev in batch:
            if ev.type != "BOOKMARK":
                assert ev.object is not None
                out.append((ev.type, ev.object["metadata"]["name"]))
        if len(out) >= n:
            break
    return out


async def test_watch_from_a_revision_replays_in_order(api: HttpClient) -> None:
    """A watch from a resourceVersion gets every later change, in order, exactly once."""
    first = await api.create(SVC, "default", service("a"))
    rv = first["metadata"]["resourceVersion"]
    await api.create(SVC, "default", service("b"))
    await api.patch(SVC, "default", "a", "merge", {"metadata": {"labels": {"x": "y"}}})
    await api.delete(SVC, "default", "b")
    events = await asyncio.wait_for(collect(api, 3, resource_version=rv), 5)
    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


async def test_watch_without_revision_starts_with_current_objects(api: HttpClient) -> None:
    """A watch with no resourceVersion first sends every existing object as ADDED, then changes."""
    await api.create(SVC, "default", service("a"))
    watcher = asyncio.create_task(collect(api, 2))
    await asyncio.sleep(0.2)
    await api.create(SVC, "default", service("b"))
    assert await asyncio.wait_for(watcher, 5) == [("ADDED", "a"), ("ADDED", "b")]


async def test_watch_with_label_selector_sees_objects_enter_and_leave(api: HttpClient) -> None:
    """An object relabelled out of a watch's selector arrives as DELETED, and back in as ADDED."""
    created = await api.create(SVC, "default", service("a", labels={"tier": "front"}))
    rv = created["metadata"]["resourceVersion"]
    await api.patch(SVC, "default", "a", "merge", {"metadata": {"labels": {"tier": "back"}}})
    await api.patch(SVC, "default", "a", "merge", {"metadata": {"labels": {"tier": "front"}}})
    await api.patch(SVC, "default", "a", "merge", {"metadata": {"labels": {"tier": "front", "v": "2"}}})
    events = await asyncio.wait_for(collect(api, 3, resource_version=rv, label_selector="tier=front"), 5)
    assert events == [("DELETED", "a"), ("ADDED", "a"), ("MODIFIED", "a")]


async def test_watch_from_a_compacted_revision_is_410_expired(
    api: HttpClient, control_plane: ControlPlane
) -> None:
    """After compaction, a watch from an older revision gets an ERROR event with 410 Expired."""
    first = await api.create(SVC, "default", service("a"))
    for i in range(3):
        await api.patch(SVC, "default", "a", "merge", {"metadata": {"labels": {"i": str(i)}}})
    assert control_plane.backend is not None
    await control_plane.backend.compact(await control_plane.backend.revision())
    with pytest.raises(ApiError) as e:
        await asyncio.wait_for(collect(api, 1, resource_version=first["metadata"]["resourceVersion"]), 5)
    assert e.value.code == 410 and e.value.reason == "Expired"
    assert "too old resource version" in e.value.message


async def test_bookmarks_report_progress(start_control_plane: Any, connect: Any) -> None:
    """With allowWatchBookmarks, a quiet watch gets BOOKMARK events carrying the store's progress."""
    plane = await start_control_plane(bookmark_interval=0.2, controllers=False)
    api: HttpClient = connect(plane)
    created = await api.create(SVC, "default", service("a"))
    rv = int(created["metadata"]["resourceVersion"])
    # Writes elsewhere advance the store's revision without events for this watch.
    await api.create(WORKLOAD, "default", {"metadata": {"name": "w"}, "spec": {"addresses": ["127.0.10.1"]}})

    async def first_bookmark() -> int:
        async for batch in api.watch(SVC, "default", resource_version=str(rv)):
            for ev in batch:
                if ev.type == "BOOKMARK" and ev.revision > rv:
                    return ev.revision
        return 0

    assert await asyncio.wait_for(first_bookmark(), 10) > rv


async def test_watchers_that_disconnect_mid_stream_do_not_hurt_the_server(
    control_plane: ControlPlane, api: HttpClient
) -> None:
    """Fifty watchers dropped mid-stream: the server keeps serving and later watchers still work."""
    base = f"http://127.0.0.1:{control_plane.port}/api/v1/namespaces/default/services?watch=true"
    for i in range(5):
        await api.create(SVC, "default", service(f"s{i}"))
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", control_plane.port)
        writer.write(f"GET {base.split(str(control_plane.port), 1)[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await reader.read(200)  # mid-stream: headers and part of the first event
        writer.transport.abort()
    await api.create(SVC, "default", service("after"))
    events = await asyncio.wait_for(collect(api, 6), 5)
    assert ("ADDED", "after") in events

    async def pump_count() -> bool:
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("watch-pump")]
        return len(tasks) <= 1

    await eventually(pump_count, timeout=5, what="the dropped watches' pumps to end")


# ---------------------------------------------------------------------------------------------------
# Authentication


async def test_token_is_required_when_configured(start_control_plane: Any, tmp_path: Any) -> None:
    """With a token, requests without it (or with a wrong one) are 401; with it they work; health is open."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    plane = await start_control_plane(token_file=token_file, controllers=False)
    base = f"http://127.0.0.1:{plane.port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/api/v1/services") as r:
            assert r.status == 401 and (await r.json())["reason"] == "Unauthorized"
        async with s.get(base + "/api/v1/services", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.get(base + "/readyz") as r:
            assert r.status == 200
    authed = HttpClient(base, token="s3cret-token")
    try:
        items, _ = await authed.list(SVC, "default")
        assert items == []
    finally:
        await authed.close()
