"""One client interface for the API, two ways to reach it.

``LocalClient`` calls the server's ``Resources`` directly (controllers inside ``innermesh server``);
``HttpClient`` speaks the REST API (the CLI, agents, tests). Both take and return objects in wire form
(dicts), raise ``api.status.ApiError`` for every failure, and stream watches as batches of
``ObjectEvent`` (BOOKMARK events carry progress). Code written against ``Client`` runs unchanged in
either place.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, TypeVar

from innermesh.api.meta import Resource
from innermesh.api.registry import Kind
from innermesh.store.objects import Object, ObjectEvent

PatchType = Literal["json", "merge", "strategic"]
R = TypeVar("R", bound=Resource)


class Client(Protocol):
    async def get(self, kind: Kind, namespace: str | None, name: str) -> Object: ...

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> tuple[builtins.list[Object], int]:
        """Objects (all namespaces when ``namespace`` is None) and the list's resourceVersion."""
        ...

    async def create(
        self, kind: Kind, namespace: str | None, body: Object, *, dry_run: bool = False
    ) -> Object: ...

    async def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Object,
        *,
        subresource: Literal["", "status", "finalize"] = "",
        dry_run: bool = False,
    ) -> Object: ...

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch_type: PatchType,
        patch: Any,
        *,
        subresource: Literal["", "status", "finalize"] = "",
        dry_run: bool = False,
    ) -> Object: ...

    async def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        resource_version: str | None = None,
        uid: str | None = None,
        dry_run: bool = False,
    ) -> Object: ...

    def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> AsyncIterator[builtins.list[ObjectEvent]]:
        """Batches of events after ``resource_version`` (all current objects as ADDED first when it is
        None). Ends with ApiError 410 (Expired) when that history is compacted."""
        ...

    async def close(self) -> None: ...
