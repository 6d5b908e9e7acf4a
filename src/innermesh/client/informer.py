"""Informers: a local, typed cache of one kind, kept current by list-then-watch.

An informer lists the kind, then watches from the list's resourceVersion, applying each event to its
cache and calling its handlers. When the watch ends it resumes from the last revision it saw; when the
server says that revision is too old (410), it lists again and reports the differences as events, so
handlers never miss a change, though they may see a state more than once. Handlers are plain functions
(typically "enqueue this key"): reconcilers read the cache, not the events (level-based).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Callable
from typing import Generic, TypeVar

from innermesh.api import status as errors
from innermesh.api.meta import Resource
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.store.objects import Object

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource)
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
Handler = Callable[[R | None, R | None], None]  # (old, new): add is (None, new), delete is (old, None)


def key_of(obj: Resource) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name or "")


class Informer(Generic[R]):
    def __init__(
        self,
        client: Client,
        kind: Kind,
        namespace: str | None = None,
        label_selector: str = "",
        *,
        backoff_max: float = 5.0,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self._cache: dict[Key, R] = {}
        self._handlers: list[Handler[R]] = []
        self._synced = asyncio.Event()
        self._backoff_max = backoff_max
        self.resource_version = 0

    # -- reading the cache ----------------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> R | None:
        return self._cache.get((namespace or "", name))

    def list(self, namespace: str | None = None) -> builtins.list[R]:
        if namespace is None:
            return list(self._cache.values())
        return [o for k, o in self._cache.items() if k[0] == namespace]

    def keys(self) -> builtins.list[Key]:
        return list(self._cache)

    def snapshot(self) -> dict[Key, R]:
        """A copy of the whole cache, for readers that want one consistent view."""
        return dict(self._cache)

    def add_handler(self, handler: Handler[R]) -> None:
        self._handlers.append(handler)

    async def wait_synced(self) -> None:
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # -- the loop --------------------------------------------------------------------------------------

    def _parse(self, obj: Object) -> R:
        model: R = self.kind.model.model_validate(obj)  # type: ignore[assignment]
        return model

    def _emit(self, old: R | None, new: R | None) -> None:
        for h in self._handlers:
            try:
                h(old, new)
            except Exception:  # a handler's bug must not stop the informer
                log.exception("informer handler for %s failed", self.kind.plural)

    async def _relist(self) -> None:
        items, rev = await self.client.list(self.kind, self.namespace, self.label_selector)
        fresh = {key_of(m): m for m in (self._parse(o) for o in items)}
        old = self._cache
        self._cache = fresh
        self.resource_version = rev
        for k, m in fresh.items():
            prev = old.get(k)
            if prev is None or prev.metadata.resource_version != m.metadata.resource_version:
                self._emit(prev, m)
        for k, m in old.items():
            if k not in fresh:
                self._emit(m, None)
        self._synced.set()

    async def run(self) -> None:
        """List, then watch forever; cancel the task to stop."""
        delay = 0.1
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                async for batch in self.client.watch(
                    self.kind, self.namespace, str(self.resource_version), self.label_selector
                ):
                    delay = 0.1
                    for ev in batch:
                        self.resource_version = max(self.resource_version, ev.revision)
                        if ev.object is None:
                            continue
                        m = self._parse(ev.object)
                        k = key_of(m)
                        prev = self._cache.get(k)
                        if ev.type == "DELETED":
                            self._cache.pop(k, None)
                            self._emit(prev or m, None)
                        else:
                            self._cache[k] = m
                            self._emit(prev, m)
            except asyncio.CancelledError:
                raise
            except errors.ApiError as e:
                if e.code == 410:
                    need_list = True  # our revision was compacted away: start again from a list
                    continue
                log.warning("informer for %s: %s; retrying in %.1fs", self.kind.plural, e.message, delay)
            except Exception:
                log.exception("informer for %s failed; retrying in %.1fs", self.kind.plural, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff_max)
