"""The REST client: ``Client`` over HTTP (aiohttp), for the CLI, agents and tests."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from innermesh.api import status as errors
from innermesh.api.registry import Kind
from innermesh.client.base import PatchType
from innermesh.store.objects import Object, ObjectEvent

_PATCH_CONTENT_TYPES: dict[str, str] = {
    "json": "application/json-patch+json",
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
# Watch lines hold whole objects, up to the server's 1.5 MiB limit; aiohttp's line reader needs room.
_READ_BUFSIZE = 4 * 1024 * 1024


def resource_path(kind: Kind, namespace: str | None, name: str | None = None, subresource: str = "") -> str:
    base = f"/apis/{kind.group}/{kind.version}" if kind.group else "/api/v1"
    parts = [base]
    if kind.namespaced and namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(kind.plural)
    if name is not None:
        parts.append(quote(name, safe=":"))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


class HttpClient:
    def __init__(self, server: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, read_bufsize=_READ_BUFSIZE)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or ApiError from the Status the server sent."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": content_type, "Accept": "application/json", **(headers or {})}
        try:
            async with self._http().request(
                method, self.server + path, params=params, data=data, headers=hdrs, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                return _decode_answer(resp.status, raw)
        except aiohttp.ClientConnectionError as e:
            raise errors.unavailable(f"cannot reach the innermesh server at {self.server}: {e}") from None
        except TimeoutError:
            raise errors.unavailable(
                f"the innermesh server at {self.server} did not answer in time"
            ) from None

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Object:
        result: Object = await self.request("GET", resource_path(kind, namespace, name))
        return result

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> tuple[builtins.list[Object], int]:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        result = await self.request("GET", resource_path(kind, namespace), params=params)
        return list(result.get("items") or []), int(
            (result.get("metadata") or {}).get("resourceVersion") or 0
        )

    async def create(
        self, kind: Kind, namespace: str | None, body: Object, *, dry_run: bool = False
    ) -> Object:
        params = {"dryRun": "All"} if dry_run else None
        result: Object = await self.request("POST", resource_path(kind, namespace), params=params, body=body)
        return result

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
        params = {"dryRun": "All"} if dry_run else None
        result: Object = await self.request(
            "PUT", resource_path(kind, namespace, name, subresource), params=params, body=body
        )
        return result

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
        params = {"dryRun": "All"} if dry_run else None
        result: Object = await self.request(
            "PATCH",
            resource_path(kind, namespace, name, subresource),
            params=params,
            body=patch,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
        )
        return result

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
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        pre = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if pre:
            options["preconditions"] = pre
        if dry_run:
            options["dryRun"] = ["All"]
        result: Object = await self.request("DELETE", resource_path(kind, namespace, name), body=options)
        return result

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int | None = None,
    ) -> AsyncIterator[builtins.list[ObjectEvent]]:
        params = {"watch": "true", "allowWatchBookmarks": "true"}
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(timeout_seconds)
        try:
            async with self._http().get(
                self.server + resource_path(kind, namespace),
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total),
            ) as resp:
                if resp.status != 200:
                    _decode_answer(resp.status, await resp.read())
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    etype = event.get("type")
                    obj = event.get("object") or {}
                    if etype == "ERROR":
                        raise errors.ApiError.from_status(obj, int(obj.get("code") or 500))
                    rv = int((obj.get("metadata") or {}).get("resourceVersion") or 0)
                    yield [ObjectEvent(etype, None if etype == "BOOKMARK" else obj, rv)]
        except aiohttp.ClientConnectionError as e:
            raise errors.unavailable(f"watch connection to {self.server} lost: {e}") from None
        except aiohttp.ClientPayloadError as e:
            raise errors.unavailable(f"watch stream from {self.server} broke: {e}") from None


def _decode_answer(status: int, raw: bytes) -> Any:
    try:
        body = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        body = None
    if 200 <= status < 300:
        if body is None:
            raise errors.internal(f"the server answered {status} with a body that is not JSON")
        return body
    if isinstance(body, dict) and body.get("kind") == "Status":
        raise errors.ApiError.from_status(body, status)
    text = raw.decode(errors="replace")[:200]
    raise errors.ApiError(status, "Unknown", f"the server answered {status}: {text}")
