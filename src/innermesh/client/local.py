"""The in-process client: ``Client`` over the server's own ``Resources``."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import Any, Literal

from innermesh.api import status as errors
from innermesh.api.registry import Kind
from innermesh.api.selectors import EVERYTHING, SelectorError, parse_field_selector, parse_label_selector
from innermesh.apiserver.resources import Preconditions, Resources
from innermesh.client.base import PatchType
from innermesh.store.objects import Object, ObjectEvent


class LocalClient:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    @staticmethod
    def _selectors(label_selector: str, field_selector: str) -> tuple[Any, Any]:
        try:
            labels = parse_label_selector(label_selector) if label_selector else EVERYTHING
            fields = parse_field_selector(field_selector) if field_selector else None
        except SelectorError as e:
            raise errors.bad_request(f"unable to parse requirement: {e}") from None
        return labels, fields

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Object:
        return await self.resources.get(kind, namespace, name)

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> tuple[builtins.list[Object], int]:
        labels, fields = self._selectors(label_selector, field_selector)
        return await self.resources.list(kind, namespace, labels, fields)

    async def create(
        self, kind: Kind, namespace: str | None, body: Object, *, dry_run: bool = False
    ) -> Object:
        return await self.resources.create(kind, namespace, body, dry_run=dry_run)

    async def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Object,
        *,
        subresource: Literal["", "status", "finalize"] = "",
        dry_run: bool = False,
    ) -> Object:
        return await self.resources.update(
            kind, namespace, name, body, subresource=subresource, dry_run=dry_run
        )

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
    ) -> Object:
        return await self.resources.patch(
            kind, namespace, name, patch_type, patch, subresource=subresource, dry_run=dry_run
        )

    async def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        resource_version: str | None = None,
        uid: str | None = None,
        dry_run: bool = False,
    ) -> Object:
        pre = Preconditions(uid=uid, resource_version=resource_version) if (uid or resource_version) else None
        return await self.resources.delete(kind, namespace, name, pre, dry_run=dry_run)

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> AsyncIterator[builtins.list[ObjectEvent]]:
        labels, fields = self._selectors(label_selector, field_selector)
        async for batch in self.resources.watch(kind, namespace, resource_version, labels, fields):
            yield batch

    async def close(self) -> None:
        return None
