"""API objects over each backend: resourceVersion, label-selector lists and watches.

The same bodies run on SQLite and etcd (the ``backend`` fixture), through ``ObjectStore`` and the
selector predicates the API server builds from ``?labelSelector=``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from innermesh.api.selectors import parse_label_selector
from innermesh.apiserver.resources import predicate_for
from innermesh.store.backend import Backend
from innermesh.store.objects import ObjectEvent, ObjectStore

PREFIX = "/registry/core/services/default/"


def obj(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels}, "spec": {}}


async def test_resource_version_is_the_mod_revision(backend: Backend) -> None:
    """resourceVersion is set from the store on every read and is never stored inside the value."""
    store = ObjectStore(backend)
    created = await store.create(PREFIX + "a", obj("a"))
    rv = int(created["metadata"]["resourceVersion"])
    assert rv == await backend.revision()
    got = await store.get(PREFIX + "a")
    assert got is not None and got["metadata"]["resourceVersion"] == str(rv)
    raw = await backend.get(PREFIX + "a")
    assert raw is not None and b"resourceVersion" not in raw.value
    updated = await store.update(PREFIX + "a", {**obj("a", x="y"), "metadata": {**got["metadata"]}}, rv)
    assert (
        int(updated["metadata"]["resourceVersion"]) == rv + 1
        or int(updated["metadata"]["resourceVersion"]) > rv
    )


async def test_list_with_label_selectors(backend: Backend) -> None:
    """Set-based and equality selectors filter a list; the list carries the read revision."""
    store = ObjectStore(backend)
    await store.create(PREFIX + "a", obj("a", tier="front", env="prod"))
    await store.create(PREFIX + "b", obj("b", tier="back", env="prod"))
    await store.create(PREFIX + "c", obj("c", tier="front"))

    async def names(selector: str) -> list[str]:
        items, rev = await store.list(PREFIX, predicate_for(parse_label_selector(selector), None))
        assert all(int(i["metadata"]["resourceVersion"]) <= rev for i in items)
        return [i["metadata"]["name"] for i in items]

    assert await names("tier=front") == ["a", "c"]
    assert await names("env in (prod),tier notin (back)") == ["a"]
    assert await names("!env") == ["c"]
    assert await names("") == ["a", "b", "c"]


async def test_watch_reports_objects_entering_and_leaving_a_selector(backend: Backend) -> None:
    """Relabelled out of the selector: DELETED (last matching state); back in: ADDED; deletes carry
    the delete's revision."""
    store = ObjectStore(backend)
    created = await store.create(PREFIX + "a", obj("a", tier="front"))
    start = int(created["metadata"]["resourceVersion"])
    a1 = await store.update(PREFIX + "a", obj("a", tier="back"), start)
    a2 = await store.update(PREFIX + "a", obj("a", tier="front"), int(a1["metadata"]["resourceVersion"]))
    a3 = await store.update(
        PREFIX + "a", obj("a", tier="front", v="2"), int(a2["metadata"]["resourceVersion"])
    )
    await store.create(PREFIX + "b", obj("b", tier="back"))
    _, delete_rev = await store.delete(PREFIX + "a", int(a3["metadata"]["resourceVersion"]))

    pred = predicate_for(parse_label_selector("tier=front"), None)
    seen: list[ObjectEvent] = []

    async def follow() -> None:
        async for batch in store.watch(PREFIX, start, pred):
            seen.extend(e for e in batch if e.type != "BOOKMARK")
            if len(seen) >= 4:
                return

    await asyncio.wait_for(follow(), 10)
    assert [(e.type, e.object["metadata"]["labels"]) for e in seen if e.object] == [
        ("DELETED", {"tier": "front"}),
        ("ADDED", {"tier": "front"}),
        ("MODIFIED", {"tier": "front", "v": "2"}),
        ("DELETED", {"tier": "front", "v": "2"}),
    ]
    assert seen[-1].revision == delete_rev
    assert seen[-1].object is not None and seen[-1].object["metadata"]["resourceVersion"] == str(delete_rev)
