"""API objects over a Backend: JSON encoding, resourceVersion, selector filtering, typed watch events.

The backend stores bytes; this layer stores objects. It owns three rules:

- **resourceVersion is the mod revision.** It is never stored inside the value; it is set on every
  object read, so it cannot disagree with the store.
- **Lists and watches filter by predicate** (label and field selectors, built by the API server), the
  way Kubernetes filters above etcd.
- **A watch reports what the watcher can see.** An object that starts matching the predicate arrives
  as ADDED, one that stops matching as DELETED (carrying its last matching state), as Kubernetes does.
"""

from __future__ import annotations

import builtins
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from innermesh.store.backend import Backend, Event, EventType, KeyValue

Object = dict[str, Any]
Predicate = Callable[[Object], bool]
WatchEventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


def encode(obj: Object) -> bytes:
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def decode(kv: KeyValue, revision: int | None = None) -> Object:
    obj: Object = json.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(
        revision if revision is not None else kv.mod_revision
    )
    return obj


class Shared:
    """One decoded object that every watcher receiving the same event shares, with its JSON encoding
    made at most once. With W watchers of a kind, each change is decoded and encoded once, not W
    times, as Kubernetes' watch cache serializes each event once. Shared objects are read-only."""

    __slots__ = ("_json", "_lines", "obj")

    def __init__(self, obj: Object) -> None:
        self.obj = obj
        self._json: bytes | None = None
        self._lines: dict[str, bytes] | None = None

    def json(self) -> bytes:
        if self._json is None:
            self._json = json.dumps(self.obj, separators=(",", ":"), ensure_ascii=False).encode()
        return self._json

    def watch_line(self, event_type: str) -> bytes:
        """``{"type":...,"object":...}`` and a newline, made once per event type."""
        if self._lines is None:
            self._lines = {}
        line = self._lines.get(event_type)
        if line is None:
            line = self._lines[event_type] = _watch_line(event_type, self.json())
        return line


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """A watch event: for BOOKMARK, ``object`` is None and ``revision`` is the progress. The object
    may be shared with other watchers: read it, never change it."""

    type: WatchEventType
    object: Object | None
    revision: int
    shared: Shared | None = None

    def object_json(self) -> bytes:
        """The object's JSON encoding (made once per event when it is shared)."""
        if self.shared is not None:
            return self.shared.json()
        return json.dumps(self.object, separators=(",", ":"), ensure_ascii=False).encode()

    def watch_line(self) -> bytes:
        """The event as one line of a JSON watch stream (made once per event when it is shared)."""
        if self.shared is not None:
            return self.shared.watch_line(self.type)
        return _watch_line(self.type, self.object_json())


def _watch_line(event_type: str, object_json: bytes) -> bytes:
    return b'{"type":"' + event_type.encode() + b'","object":' + object_json + b"}\n"


class _DecodeCache:
    """Decoded objects by (key, mod revision, shown revision), for the watchers of one process.
    Bounded: an event is decoded again only if watchers are more than ``size`` events apart.

    Also the translation of each backend event for watchers without a predicate, which is the same
    for all of them: both backends hand the same ``Event`` objects to every watch of a prefix, so the
    translation is kept by identity (the entry holds the event, so its id cannot be reused meanwhile)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int, int], Shared] = OrderedDict()
        self._events: dict[int, tuple[Event, ObjectEvent | None]] = {}

    def translated(self, ev: Event) -> ObjectEvent | None:
        """``_translate(ev, None, self)``, made once per event for all watchers."""
        hit = self._events.get(id(ev))
        if hit is not None and hit[0] is ev:
            return hit[1]
        out = _translate(ev, None, self)
        self._events[id(ev)] = (ev, out)
        if len(self._events) > self._size:
            del self._events[next(iter(self._events))]  # the oldest
        return out

    def get(self, kv: KeyValue, revision: int | None = None) -> Shared:
        shown = revision if revision is not None else kv.mod_revision
        k = (kv.key, kv.mod_revision, shown)
        hit = self._items.get(k)
        if hit is not None:
            return hit
        shared = Shared(decode(kv, shown))
        self._items[k] = shared
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return shared


class ObjectStore:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._decoded = _DecodeCache()

    async def get(self, key: str) -> Object | None:
        kv = await self.backend.get(key)
        return decode(kv) if kv else None

    async def list(
        self, prefix: str, predicate: Predicate | None = None
    ) -> tuple[builtins.list[Object], int]:
        kvs, rev = await self.backend.list(prefix)
        items = [decode(kv) for kv in kvs]
        if predicate is not None:
            items = [o for o in items if predicate(o)]
        return items, rev

    async def create(self, key: str, obj: Object) -> Object:
        kv = await self.backend.create(key, encode(obj))
        return _with_rv(obj, kv.mod_revision)

    async def update(self, key: str, obj: Object, expected_revision: int | None) -> Object:
        kv = await self.backend.update(key, encode(obj), expected_revision)
        return _with_rv(obj, kv.mod_revision)

    async def delete(self, key: str, expected_revision: int | None) -> tuple[Object, int]:
        """Delete; returns the object as it was (its last resourceVersion) and the delete's revision."""
        kv, rev = await self.backend.delete(key, expected_revision)
        return decode(kv), rev

    async def watch(
        self, prefix: str, after_revision: int, predicate: Predicate | None = None
    ) -> AsyncIterator[builtins.list[ObjectEvent]]:
        """Batches of events after ``after_revision``; a batch with only a BOOKMARK reports progress.
        Raises the backend's ``Compacted`` when that history is gone."""
        cache = self._decoded
        async with self.backend.watch(prefix, after_revision) as w:
            async for batch in w:
                if predicate is None:
                    translated = [cache.translated(ev) for ev in batch.events]
                else:
                    translated = [_translate(ev, predicate, cache) for ev in batch.events]
                out = [e for e in translated if e is not None]
                out.append(ObjectEvent("BOOKMARK", None, batch.progress))
                yield out


def _with_rv(obj: Object, rev: int) -> Object:
    meta = dict(obj.get("metadata") or {})
    meta["resourceVersion"] = str(rev)
    return {**obj, "metadata": meta}


def _translate(ev: Event, predicate: Predicate | None, cache: _DecodeCache) -> ObjectEvent | None:
    rev = ev.revision
    if ev.type is EventType.DELETE:
        if ev.prev is None:  # pragma: no cover - both backends report the deleted value
            return None
        # A deleted object is shown in its last state with the delete's revision, as Kubernetes does.
        old = cache.get(ev.prev, rev)
        if predicate is not None and not predicate(old.obj):
            return None
        return ObjectEvent("DELETED", old.obj, rev, old)
    new = cache.get(ev.kv)
    new_ok = predicate is None or predicate(new.obj)
    if ev.prev is None:
        return ObjectEvent("ADDED", new.obj, rev, new) if new_ok else None
    if predicate is None:
        return ObjectEvent("MODIFIED", new.obj, rev, new)
    old = cache.get(ev.prev, rev)
    old_ok = predicate(old.obj)
    if new_ok and old_ok:
        return ObjectEvent("MODIFIED", new.obj, rev, new)
    if new_ok:
        return ObjectEvent("ADDED", new.obj, rev, new)
    if old_ok:
        # It no longer matches: to this watcher it is gone, in its last matching state at this
        # revision (as Kubernetes' watch cache reports it).
        return ObjectEvent("DELETED", old.obj, rev, old)
    return None
