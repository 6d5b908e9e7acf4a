"""The REST edge: Kubernetes' URL layout, verbs, content types and watch streams over ``Resources``.

URLs, as Kubernetes lays them out::

    /api/v1/<plural>                                  cluster-scoped kinds; all namespaces for the rest
    /api/v1/namespaces/<ns>/<plural>[/<name>[/status]]
    /apis/<group>/<version>/...                       the same below a named group

Verbs: GET (get, list, or watch with ``?watch=true``), POST (create), PUT (update), PATCH (JSON merge,
JSON patch, strategic merge), DELETE (one, or a collection). Errors are Status objects (see
``api.status``). Bodies may be JSON or YAML; answers are JSON, or Tables when the Accept header asks
for ``as=Table`` (kubectl's ``get``).

Authentication: none on loopback; with a token configured (required by ``innermesh server`` when it
listens on any other address), every request but the health checks needs ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from innermesh.api import status as errors
from innermesh.api.registry import Kind, Registry, UnknownKind
from innermesh.api.selectors import (
    EVERYTHING,
    FieldSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from innermesh.apiserver import discovery, tables
from innermesh.apiserver.resources import (
    MAX_BODY_BYTES,
    PatchType,
    Preconditions,
    Resources,
    Subresource,
    parse_resource_version,
)
from innermesh.store.objects import ObjectEvent

log = logging.getLogger(__name__)

_PATCH_TYPES: dict[str, PatchType] = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}
_HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})


@dataclass(frozen=True, slots=True)
class Target:
    """What a resource URL names."""

    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str


def parse_resource_path(registry: Registry, path: str) -> Target:
    """Resolve a resource URL; raise a 404 ApiError when it names nothing."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise errors.path_not_found()
    if not rest:
        raise errors.path_not_found()
    namespace: str | None = None
    # /namespaces/<ns>/<plural>... is a namespaced collection unless <plural> is a subresource of the
    # Namespace itself (/namespaces/<name>/status).
    if rest[0] == "namespaces" and len(rest) >= 3:
        is_namespace_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
        if not is_namespace_subresource:
            namespace, rest = rest[1], rest[2:]
    try:
        kind = registry.by_resource(group, version, rest[0])
    except UnknownKind as e:
        raise errors.path_not_found(str(e)) from None
    if namespace is not None and not kind.namespaced:
        raise errors.path_not_found(f"{kind.kind} is not namespaced")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else ""
    if len(rest) > 3 or (sub and sub not in kind.subresources):
        raise errors.path_not_found(f'the server could not find the requested resource "{path}"')
    return Target(kind, namespace, name, sub)


class ApiServer:
    def __init__(
        self,
        resources: Resources,
        *,
        token: str | None = None,
        bookmark_interval: float = 10.0,
        ready: Callable[[], bool] = lambda: True,
        metrics: Callable[[], str] = lambda: "",
    ) -> None:
        self.resources = resources
        self._metrics = metrics
        self.registry = resources.registry
        self._token = token
        self._bookmark_interval = bookmark_interval
        self._ready = ready
        self._openapi = discovery.openapi_v2_protobuf()
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End every open watch (each notices within a second) so that the server can stop: aiohttp
        would otherwise wait for streams that never end."""
        self._closing.set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._auth])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # -----------------------------------------------------------------------------------------------
    # Middleware

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except errors.ApiError as e:
            return _status_response(e)
        except web.HTTPRequestEntityTooLarge:
            return _status_response(errors.too_large(f"the body is larger than {MAX_BODY_BYTES} bytes"))
        except web.HTTPException:
            raise
        except Exception as e:  # the edge: a bug must still answer as a Status, and be logged
            log.exception("internal error serving %s %s", request.method, request.path)
            return _status_response(errors.internal(f"{type(e).__name__}: {e}"))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self._token is not None and request.path not in _HEALTH_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), self._token.encode()
            ):
                raise errors.unauthorized()
        response: web.StreamResponse = await handler(request)
        return response

    # -----------------------------------------------------------------------------------------------
    # Dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if request.method == "GET":
            fixed = self._fixed_document(path)
            if fixed is not None:
                return fixed
        if not path.startswith(("/api/", "/apis/")):
            raise errors.path_not_found()
        target = parse_resource_path(self.registry, path)
        q = request.query
        method = request.method
        if target.name is None:
            if method == "GET":
                if q.get("watch") in ("true", "1"):
                    return await self._watch(request, target)
                return await self._list(request, target)
            if method == "POST":
                body = await _read_body(request)
                obj = await self.resources.create(target.kind, target.namespace, body, dry_run=_dry_run(q))
                return _json(obj, 201)
            if method == "DELETE":
                return await self._delete_collection(request, target)
            raise errors.method_not_allowed(f"{method} is not supported on a collection")
        sub: Subresource = (
            target.subresource if target.subresource in ("status", "finalize") else ""  # type: ignore[assignment]
        )
        if method == "GET":
            obj = await self.resources.get(target.kind, target.namespace, target.name)
            if q.get("watch") in ("true", "1"):
                raise errors.bad_request("watch a single object with a fieldSelector on metadata.name")
            if tables.wants_table(request.headers.get("Accept", "")):
                return _json(
                    tables.table(target.kind, [obj], include_object=q.get("includeObject", "Metadata"))
                )
            return _json(obj)
        if method == "PUT":
            body = await _read_body(request)
            obj = await self.resources.update(
                target.kind,
                target.namespace,
                target.name,
                body,
                subresource=sub,
                dry_run=_dry_run(q),
            )
            return _json(obj)
        if method == "PATCH":
            ctype = request.content_type
            if ctype == "application/apply-patch+yaml":
                raise errors.unsupported_media_type(
                    "server-side apply is not supported by innermesh; use client-side apply "
                    "(kubectl apply without --server-side, or innermesh apply)"
                )
            patch_type = _PATCH_TYPES.get(ctype)
            if patch_type is None:
                raise errors.unsupported_media_type(
                    f"the body of the request was in an unknown format - accepted media types include: {', '.join(_PATCH_TYPES)}"
                )
            patch = _decode(await _read_raw(request), "application/json")
            obj = await self.resources.patch(
                target.kind,
                target.namespace,
                target.name,
                patch_type,
                patch,
                subresource=sub,
                dry_run=_dry_run(q),
            )
            return _json(obj)
        if method == "DELETE":
            if sub:
                raise errors.method_not_allowed("DELETE is not supported on a subresource")
            options = await _read_body(request, allow_empty=True)
            obj = await self.resources.delete(
                target.kind,
                target.namespace,
                target.name,
                _preconditions(options),
                dry_run=_dry_run(q, options),
            )
            return _json(obj)
        raise errors.method_not_allowed(f"{method} is not supported")

    def _fixed_document(self, path: str) -> web.StreamResponse | None:
        if path in ("/healthz", "/livez"):
            return web.Response(text="ok")
        if path == "/readyz":
            return web.Response(text="ok") if self._ready() else web.Response(status=503, text="not ready")
        if path == "/version":
            return _json(discovery.version_info())
        if path == "/metrics":
            return web.Response(
                text=self._metrics(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
            )
        if path == "/api":
            return _json(discovery.api_versions())
        if path == "/apis":
            return _json(discovery.api_group_list(self.registry))
        if path == "/openapi/v2":
            return web.Response(body=self._openapi, content_type=discovery.OPENAPI_V2_CONTENT_TYPE)
        parts = [p for p in path.split("/") if p]
        doc: dict[str, Any] | None = None
        if parts == ["api", "v1"]:
            doc = discovery.api_resource_list(self.registry, "", "v1")
        elif len(parts) == 2 and parts[0] == "apis":
            doc = discovery.api_group(self.registry, parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = discovery.api_resource_list(self.registry, parts[1], parts[2])
        else:
            return None
        if doc is None:
            raise errors.path_not_found()
        return _json(doc)

    # -----------------------------------------------------------------------------------------------
    # Collections

    async def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        labels, fields = _selectors(request.query)
        items, rev = await self.resources.list(target.kind, target.namespace, labels, fields)
        if tables.wants_table(request.headers.get("Accept", "")):
            return _json(
                tables.table(target.kind, items, str(rev), request.query.get("includeObject", "Metadata"))
            )
        return _json(_list_body(target.kind, items, rev))

    async def _delete_collection(self, request: web.Request, target: Target) -> web.StreamResponse:
        labels, fields = _selectors(request.query)
        options = await _read_body(request, allow_empty=True)
        items, rev = await self.resources.list(target.kind, target.namespace, labels, fields)
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(
                    await self.resources.delete(
                        target.kind,
                        meta.get("namespace"),
                        meta["name"],
                        dry_run=_dry_run(request.query, options),
                    )
                )
            except errors.ApiError as e:
                if e.code != 404:  # gone meanwhile: that is what was asked
                    raise
        return _json(_list_body(target.kind, deleted, rev))

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        q = request.query
        labels, fields = _selectors(q)
        want_table = tables.wants_table(request.headers.get("Accept", ""))
        include = q.get("includeObject", "Metadata")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = _float_param(q, "timeoutSeconds")
        rv = None if q.get("sendInitialEvents") == "true" else q.get("resourceVersion")
        # Refuse a bad resourceVersion now, with a 400, before the stream's 200 goes out.
        parse_resource_version(rv)
        events = self.resources.watch(target.kind, target.namespace, rv, labels, fields)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        stream = _WatchStream(response, target.kind, want_table, include)
        due = self._bookmark_interval if bookmarks else None
        pump = asyncio.create_task(stream.pump(events, due, request.path), name=f"watch-pump {request.path}")
        # The pump writes the events as they come; this task only ends the watch (timeoutSeconds, the
        # client gone) and sends bookmarks while it is quiet, so a batch costs one task step and one write.
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while not pump.done():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if request.transport is None or request.transport.is_closing() or self._closing.is_set():
                    break
                if due is not None:
                    await stream.bookmark_if_due(due)
                wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - now))
                await asyncio.wait((pump,), timeout=wait)
        except ConnectionResetError:
            pass  # the client went away; nothing to tell it
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        return response


class _WatchStream:
    """The writing side of one HTTP watch: each batch of events from the store goes out as one chunk."""

    def __init__(self, response: web.StreamResponse, kind: Kind, want_table: bool, include: str) -> None:
        self._response = response
        self._kind = kind
        self._want_table = want_table
        self._include = include
        self._columns_sent = False
        self.progress = 0  # every event up to it was written (or filtered out)
        self._sent_progress = 0  # the progress the client knows (from an event or a bookmark)
        self._last_sent = time.monotonic()

    async def pump(
        self, events: AsyncIterator[list[ObjectEvent]], bookmark_due: float | None, path: str
    ) -> None:
        """Write the watch's batches until it ends; then an ERROR event if it failed."""
        try:
            async for batch in events:
                await self._write(batch)
                if bookmark_due is not None:
                    await self.bookmark_if_due(bookmark_due)
        except ConnectionResetError:
            pass  # the client went away; the handler sees the pump end
        except errors.ApiError as e:
            with contextlib.suppress(ConnectionResetError):
                await _send(self._response, {"type": "ERROR", "object": e.to_status()})
        except Exception as e:
            log.error("watch of %s ended by %r", path, e)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _write(self, batch: list[ObjectEvent]) -> None:
        lines: list[bytes] = []
        progress = self.progress
        for ev in batch:
            if ev.revision > progress:
                progress = ev.revision
            if ev.type == "BOOKMARK" or ev.object is None:  # progress only
                continue
            if self._want_table:
                obj = tables.table(
                    self._kind, [ev.object], with_columns=not self._columns_sent, include_object=self._include
                )
                self._columns_sent = True
                lines.append(_event_line(ev.type, _encode(obj)))
            else:
                # The line is made once per event, whatever the number of watchers.
                lines.append(ev.watch_line())
        self.progress = progress
        if lines:
            self._sent_progress, self._last_sent = progress, time.monotonic()
            await self._response.write(b"".join(lines))

    async def bookmark_if_due(self, interval: float) -> None:
        """A BOOKMARK with the progress, if it moved past what the client knows and nothing was sent for
        ``interval`` seconds."""
        now = time.monotonic()
        if self.progress > self._sent_progress and now - self._last_sent >= interval:
            self._sent_progress, self._last_sent = self.progress, now
            await _send(self._response, _bookmark(self._kind, self.progress))


def _bookmark(kind: Kind, revision: int) -> dict[str, Any]:
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": kind.kind,
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(revision)},
        },
    }


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _event_line(event_type: str, object_json: bytes) -> bytes:
    return b'{"type":"' + event_type.encode() + b'","object":' + object_json + b"}\n"


# ---------------------------------------------------------------------------------------------------
# Request and response helpers


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def _status_response(e: errors.ApiError) -> web.Response:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
    return web.Response(
        body=json.dumps(e.to_status()).encode(),
        status=e.code,
        content_type="application/json",
        headers=headers,
    )


def _list_body(kind: Kind, items: list[dict[str, Any]], rev: int) -> dict[str, Any]:
    return {
        "kind": f"{kind.kind}List",
        "apiVersion": kind.api_version,
        "metadata": {"resourceVersion": str(rev)},
        "items": items,
    }


async def _read_raw(request: web.Request) -> bytes:
    return await request.read()


async def _read_body(request: web.Request, allow_empty: bool = False) -> Any:
    raw = await _read_raw(request)
    if not raw.strip():
        if allow_empty:
            return {}
        raise errors.bad_request("the request body is empty")
    return _decode(raw, request.content_type)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases. An alias is a reference, so a few hundred bytes of anchors can expand
    into gigabytes once anything walks the value (Kubernetes' CVE-2019-11253); request bodies are
    refused when they use them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in request bodies", event.start_mark
            )
        return super().compose_node(parent, index)


def _decode(raw: bytes, content_type: str) -> Any:
    try:
        if content_type in ("application/yaml", "application/x-yaml", "text/yaml"):
            try:
                return yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
            except yaml.YAMLError as e:
                raise errors.bad_request(f"the request body is not valid YAML: {e}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise errors.bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        # Nesting deeper than any object needs (thousands of levels) is refused, not a crash.
        raise errors.bad_request("the request body is nested too deeply") from None


def _dry_run(q: Any, options: Any = None) -> bool:
    values = list(q.getall("dryRun", []))
    if isinstance(options, dict) and isinstance(options.get("dryRun"), list):
        values += options["dryRun"]
    for v in values:
        if v != "All":
            raise errors.bad_request(f'invalid dryRun value "{v}": the only supported value is "All"')
    return bool(values)


def _preconditions(options: Any) -> Preconditions | None:
    if not isinstance(options, dict):
        raise errors.bad_request("DeleteOptions must be a JSON object")
    pre = options.get("preconditions")
    if not pre:
        return None
    if not isinstance(pre, dict):
        raise errors.bad_request("preconditions must be an object")
    return Preconditions(uid=pre.get("uid"), resource_version=pre.get("resourceVersion"))


def _selectors(q: Any) -> tuple[Any, FieldSelector | None]:
    try:
        labels = parse_label_selector(q["labelSelector"]) if q.get("labelSelector") else EVERYTHING
        fields = parse_field_selector(q["fieldSelector"]) if q.get("fieldSelector") else None
    except SelectorError as e:
        raise errors.bad_request(f"unable to parse requirement: {e}") from None
    return labels, fields


def _float_param(q: Any, name: str) -> float | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.bad_request(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise errors.bad_request(f"{name} must not be negative")
    return value
