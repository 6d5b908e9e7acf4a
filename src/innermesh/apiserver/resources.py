"""The one door for reading and changing API objects: validate, default, admit, store.

Both the REST handlers and the in-process client (which controllers inside ``innermesh server`` use)
call ``Resources``, so an object written by a controller passes the same rules as one written by
``kubectl``. Objects go in and come out in their wire form (dicts); the typed models are used inside to
validate and default.

Write path, as Kubernetes' generic registry::

    body -> check apiVersion/kind/name/namespace against the URL -> server fields (uid, timestamps,
    generation; status kept on spec writes, spec kept on status writes) -> parse (schema + rules)
    -> admission (namespace lifecycle, ClusterIP allocation...) -> size limit -> store, conditionally
    on the revision read (optimistic concurrency; unconditional writes retry on a race)

An update that changes nothing is not written: the resourceVersion stays, and no watch event is sent.
"""

from __future__ import annotations

import builtins
import copy
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from innermesh.api import patch as patches
from innermesh.api import status as errors
from innermesh.api.fielderrors import ErrorList, FieldError, FieldPath, invalid, required
from innermesh.api.meta import Resource, now_rfc3339
from innermesh.api.model import ParseFailed, parse
from innermesh.api.registry import Kind, Registry
from innermesh.api.selectors import EVERYTHING, FieldSelector, Selector
from innermesh.apiserver.admission import Chain, Plugin
from innermesh.store.backend import (
    Compacted,
    Conflict,
    KeyExists,
    NotFound,
    StoreError,
    Unavailable,
    WatchOverflow,
)
from innermesh.store.objects import Object, ObjectEvent, ObjectStore, Predicate

# Kubernetes' limits: etcd refuses values over 1.5 MiB; the API server refuses bodies over 3 MiB.
MAX_OBJECT_BYTES = 1536 * 1024
MAX_BODY_BYTES = 3 * 1024 * 1024
# How often an unconditional write (or a patch) re-reads and retries after losing a race.
MAX_RETRIES = 16

T = TypeVar("T")
PatchType = Literal["json", "merge", "strategic"]
Subresource = Literal["", "status", "finalize"]

_NAME_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet: no vowels


@dataclass(frozen=True, slots=True)
class Preconditions:
    """DeleteOptions.preconditions: the delete happens only if these still hold."""

    uid: str | None = None
    resource_version: str | None = None


def _meta(obj: Object) -> dict[str, Any]:
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata: must be an object")
    return meta


def _rv(obj: Object) -> int:
    return int(_meta(obj).get("resourceVersion") or 0)


def _spec_part(obj: Object) -> Object:
    """What counts for metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _same(a: Object, b: Object) -> bool:
    strip = ("resourceVersion", "managedFields")

    def clean(o: Object) -> Object:
        return {**o, "metadata": {k: v for k, v in (o.get("metadata") or {}).items() if k not in strip}}

    return clean(a) == clean(b)


def _finalizers(obj: Object) -> list[str]:
    """Finalizers that hold a deleted object: metadata.finalizers, and a Namespace's spec.finalizers."""
    fins = list(_meta(obj).get("finalizers") or [])
    if obj.get("kind") == "Namespace":
        fins += (obj.get("spec") or {}).get("finalizers") or []
    return fins


def parse_resource_version(value: str | None) -> int | None:
    """A watch's starting revision: None for "now, with the current objects first" ("" or "0")."""
    if value in (None, "", "0"):
        return None
    assert value is not None
    if not value.isdigit():
        raise errors.bad_request(f'invalid resourceVersion "{value}": must be a non-negative integer')
    return int(value)


def _surely_not_written(exc: BaseException) -> bool:
    """Did the store refuse the write (so it did not happen), rather than fail with an unknown outcome?"""
    if isinstance(exc, KeyExists | Conflict | NotFound):
        return True
    return isinstance(exc, errors.ApiError) and exc.code not in (500, 503)


def _as_version(kind: Kind, obj: Object) -> Object:
    """The object as the requested version of its kind. The served versions of a kind share one schema
    (Gateway API's ReferenceGrant is v1 and v1beta1), so only apiVersion differs."""
    if obj.get("apiVersion") == kind.api_version:
        return obj
    return {**obj, "apiVersion": kind.api_version}


def _event_as_version(kind: Kind, ev: ObjectEvent) -> ObjectEvent:
    if ev.object is None or ev.object.get("apiVersion") == kind.api_version:
        return ev
    return ObjectEvent(ev.type, _as_version(kind, ev.object), ev.revision)


def predicate_for(label_selector: Selector, field_selector: FieldSelector | None) -> Predicate | None:
    if not label_selector and not (field_selector and field_selector.requirements):
        return None

    def pred(obj: Object) -> bool:
        meta = obj.get("metadata") or {}
        if not label_selector.matches(meta.get("labels")):
            return False
        return field_selector is None or field_selector.matches(obj)

    return pred


class Resources:
    def __init__(
        self,
        store: ObjectStore,
        registry: Registry,
        admission: Plugin | None = None,
        *,
        clock: Callable[[], str] = now_rfc3339,
        new_uid: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.store = store
        self.registry = registry
        self.admission: Plugin = admission or Chain([])
        self._clock = clock
        self._new_uid = new_uid

    # -----------------------------------------------------------------------------------------------
    # Reads

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Object:
        obj = await self._store_call(self.store.get(kind.key(namespace, name)))
        if obj is None:
            raise errors.not_found(kind.plural, name, kind.group)
        return _as_version(kind, obj)

    async def list(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: Selector = EVERYTHING,
        field_selector: FieldSelector | None = None,
    ) -> tuple[builtins.list[Object], int]:
        ns = namespace if kind.namespaced else None
        if field_selector is not None and kind.namespaced and not ns:
            ns = field_selector.exact("metadata.namespace")
        name = field_selector.exact("metadata.name") if field_selector else None
        pred = predicate_for(label_selector, field_selector)
        prefix = kind.key_prefix(ns)
        if name is not None and (ns or not kind.namespaced):
            # ``kubectl get svc web -w`` lists with fieldSelector=metadata.name: read the keys that
            # start with that name (one snapshot, so the revision fits the answer), not the namespace.
            prefix = kind.key(ns, name)
        items, rev = await self._store_call(self.store.list(prefix, pred))
        if name is not None:
            items = [o for o in items if (o.get("metadata") or {}).get("name") == name]
        return [_as_version(kind, o) for o in items], rev

    async def watch(
        self,
        kind: Kind,
        namespace: str | None,
        resource_version: str | None,
        label_selector: Selector = EVERYTHING,
        field_selector: FieldSelector | None = None,
    ) -> AsyncIterator[builtins.list[ObjectEvent]]:
        """Watch events. Without a resourceVersion (or "0"), first every current object as ADDED, as
        Kubernetes does; with one, the changes after it, or 410 Expired if that is compacted."""
        ns = namespace if kind.namespaced else None
        pred = predicate_for(label_selector, field_selector)
        start = parse_resource_version(resource_version)
        if start is None:
            items, rev = await self.list(kind, namespace, label_selector, field_selector)
            if items:
                yield [ObjectEvent("ADDED", o, _rv(o)) for o in items]
            start = rev
        try:
            async for batch in self.store.watch(kind.key_prefix(ns), start, pred):
                if any(
                    ev.object is not None and ev.object.get("apiVersion") != kind.api_version for ev in batch
                ):
                    batch = [_event_as_version(kind, ev) for ev in batch]
                yield batch
        except Compacted as e:
            raise errors.expired(e.requested, e.compacted) from None
        except WatchOverflow:
            # Too slow a reader: end the stream; the client watches again from its last revision.
            return
        except Unavailable as e:
            raise errors.unavailable(str(e)) from None
        except StoreError as e:
            raise errors.internal(f"the watch failed: {e}") from None

    # -----------------------------------------------------------------------------------------------
    # Writes

    async def create(
        self, kind: Kind, namespace: str | None, body: Object, *, dry_run: bool = False
    ) -> Object:
        obj = self._check_body(kind, namespace, body)
        meta = _meta(obj)
        for server_field in (
            "uid",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(server_field, None)
        if not meta.get("name"):
            gen = meta.get("generateName")
            if not gen:
                raise errors.invalid(
                    kind.kind,
                    "",
                    [required(FieldPath.root("metadata", "name"), "name or generateName is required")],
                )
            meta["name"] = gen + "".join(secrets.choice(_NAME_SUFFIX_CHARS) for _ in range(5))
        meta["uid"] = self._new_uid()
        meta["creationTimestamp"] = self._clock()
        meta["generation"] = 1
        if kind.has_status:
            # Status is the controllers' to write, through the status subresource.
            obj.pop("status", None)
        model = self._parse(kind, obj)
        key = kind.key(namespace, model.name)
        if dry_run and await self._store_call(self.store.get(key)) is not None:
            raise errors.already_exists(kind.plural, model.name, kind.group)
        model = await self.admission.on_create(kind, model, dry_run)
        sent = False
        try:
            obj = self._wire(model)
            self._check_size(kind, obj)
            if dry_run:
                return obj
            sent = True
            return await self._store_call(self.store.create(key, obj))
        except KeyExists:
            await self.admission.undo_create(kind, model)
            raise errors.already_exists(kind.plural, model.name, kind.group) from None
        except BaseException as e:
            # What admission claimed for the object (a ClusterIP) goes back only if the object surely
            # was not stored: after a write with an unknown outcome (the store became unavailable, the
            # request was cancelled) the claim stays, and the repair controller frees it if orphaned.
            if not dry_run and (not sent or _surely_not_written(e)):
                await self.admission.undo_create(kind, model)
            raise

    async def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Object,
        *,
        subresource: Subresource = "",
        dry_run: bool = False,
    ) -> Object:
        body = self._check_body(kind, namespace, body, name=name)
        want_rv = _meta(body).get("resourceVersion")
        for _ in range(MAX_RETRIES):
            current = await self.get(kind, namespace, name)
            if want_rv and str(want_rv) != _meta(current)["resourceVersion"]:
                raise errors.conflict(kind.group_resource, name, kind.group)
            try:
                return await self._write_update(
                    kind, namespace, name, copy.deepcopy(body), current, subresource, dry_run
                )
            except Conflict:
                if want_rv:
                    raise errors.conflict(kind.group_resource, name, kind.group) from None
        raise errors.conflict(kind.group_resource, name, kind.group, "too many concurrent writers; try again")

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch_type: PatchType,
        patch: Any,
        *,
        subresource: Subresource = "",
        dry_run: bool = False,
    ) -> Object:
        for _ in range(MAX_RETRIES):
            current = await self.get(kind, namespace, name)
            patched = self._apply_patch(kind, current, patch_type, patch)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch does not produce an object")
            patched_rv = (
                (patched.get("metadata") or {}).get("resourceVersion")
                if isinstance(patched.get("metadata"), dict)
                else None
            )
            if patched_rv is not None and str(patched_rv) != _meta(current)["resourceVersion"]:
                # The patch named a resourceVersion: that is a precondition, as in Kubernetes.
                raise errors.conflict(kind.group_resource, name, kind.group)
            body = self._check_body(kind, namespace, patched, name=name)
            try:
                return await self._write_update(kind, namespace, name, body, current, subresource, dry_run)
            except Conflict:
                continue
        raise errors.conflict(kind.group_resource, name, kind.group, "too many concurrent writers; try again")

    async def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        preconditions: Preconditions | None = None,
        *,
        dry_run: bool = False,
    ) -> Object:
        for _ in range(MAX_RETRIES):
            current = await self.get(kind, namespace, name)
            meta = _meta(current)
            self.admission.before_delete(kind, self._model(kind, current))
            if preconditions is not None:
                if preconditions.uid and preconditions.uid != meta.get("uid"):
                    raise errors.conflict(
                        kind.group_resource,
                        name,
                        kind.group,
                        f"Precondition failed: UID in precondition: {preconditions.uid}, UID in object meta: {meta.get('uid')}",
                    )
                if preconditions.resource_version and preconditions.resource_version != meta.get(
                    "resourceVersion"
                ):
                    raise errors.conflict(
                        kind.group_resource,
                        name,
                        kind.group,
                        f"Precondition failed: ResourceVersion in precondition: {preconditions.resource_version}, "
                        f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
                    )
            if _finalizers(current):
                # Finalizers hold the object: mark it deleted and let their owners finish and remove them.
                if meta.get("deletionTimestamp"):
                    return current
                marked = copy.deepcopy(current)
                _meta(marked)["deletionTimestamp"] = self._clock()
                _meta(marked)["deletionGracePeriodSeconds"] = 0
                if kind.kind == "Namespace":
                    marked.setdefault("status", {})["phase"] = "Terminating"
                if dry_run:
                    return marked
                try:
                    return await self._store_call(
                        self.store.update(kind.key(namespace, name), marked, _rv(current))
                    )
                except Conflict:
                    continue
            if dry_run:
                return current
            try:
                old, _rev = await self._store_call(self.store.delete(kind.key(namespace, name), _rv(current)))
            except Conflict:
                if preconditions is not None and preconditions.resource_version:
                    raise errors.conflict(kind.group_resource, name, kind.group) from None
                continue
            except NotFound:
                raise errors.not_found(kind.plural, name, kind.group) from None
            await self.admission.after_delete(kind, self._model(kind, old))
            return _as_version(kind, old)
        raise errors.conflict(kind.group_resource, name, kind.group, "too many concurrent writers; try again")

    # -----------------------------------------------------------------------------------------------
    # Internals

    async def _write_update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Object,
        current: Object,
        subresource: Subresource,
        dry_run: bool,
    ) -> Object:
        new = self._merge_server_fields(kind, body, current, subresource)
        if subresource == "":
            self.admission.prepare_update(kind, new, current)
        model = self._parse(kind, new)
        old_model = self._model(kind, current)
        errs = ErrorList()
        model.check_update(old_model, errs)
        if errs:
            raise errors.invalid(kind.kind, name, errs, kind.group)
        model = await self.admission.on_update(kind, model, old_model, dry_run)
        sent = False
        try:
            new = self._wire(model)
            old_gen = int(_meta(current).get("generation") or 1)
            _meta(new)["generation"] = old_gen + 1 if _spec_part(new) != _spec_part(current) else old_gen
            if _same(new, current):
                return current
            self._check_size(kind, new)
            key = kind.key(namespace, name)
            if dry_run:
                return new
            if _meta(new).get("deletionTimestamp") and not _finalizers(new):
                # The last finalizer is gone: the object's deletion completes now.
                sent = True
                old, _rev = await self._store_call(self.store.delete(key, _rv(current)))
                await self.admission.after_delete(kind, self._model(kind, old))
                return new
            sent = True
            stored = await self._store_call(self.store.update(key, new, _rv(current)))
        except BaseException as e:
            # The write did not happen (a lost race, a limit): give back what admission claimed for
            # it; after an unknown outcome the claim stays (see create).
            if not dry_run and (not sent or _surely_not_written(e)):
                await self.admission.undo_update(kind, model, old_model)
            raise
        await self.admission.after_update(kind, model, old_model)
        return stored

    def _merge_server_fields(
        self, kind: Kind, body: Object, current: Object, subresource: Subresource
    ) -> Object:
        cur_meta = _meta(current)
        body_uid = _meta(body).get("uid")
        if body_uid and body_uid != cur_meta.get("uid"):
            # The object was deleted and created again since the client read it.
            raise errors.invalid(
                kind.kind,
                str(cur_meta.get("name")),
                [invalid(FieldPath.root("metadata", "uid"), body_uid, "field is immutable")],
            )
        if subresource == "finalize":
            # Only a Namespace's spec.finalizers changes through /finalize.
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["finalizers"] = (body.get("spec") or {}).get("finalizers") or []
            return new
        if subresource == "status":
            # A status write changes status and nothing else.
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = body["status"]
            else:
                new.pop("status", None)
            return new
        new = body
        meta = _meta(new)
        for server_field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if server_field in cur_meta:
                meta[server_field] = cur_meta[server_field]
            else:
                meta.pop(server_field, None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        meta["resourceVersion"] = cur_meta.get("resourceVersion")
        if cur_meta.get("deletionTimestamp"):
            # A deleted object may lose finalizers but gain none (Kubernetes' rule).
            added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    kind.kind,
                    str(cur_meta.get("name")),
                    [
                        invalid(
                            FieldPath.root("metadata", "finalizers"),
                            sorted(added),
                            "no new finalizers can be added if the object is being deleted",
                        )
                    ],
                )
        if kind.has_status:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        if kind.kind == "Namespace" and kind.group == "":
            # A Namespace's finalizers change only through /finalize (its cleanup's), as in Kubernetes:
            # a plain update dropping them would orphan the namespace's contents.
            spec = new.setdefault("spec", {})
            if isinstance(spec, dict):
                spec["finalizers"] = copy.deepcopy((current.get("spec") or {}).get("finalizers"))
                if spec["finalizers"] is None:
                    del spec["finalizers"]
        return new

    def _check_body(self, kind: Kind, namespace: str | None, body: Any, name: str | None = None) -> Object:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of a {kind.kind} must be a JSON object")
        obj: Object = copy.deepcopy(body)
        api_version = obj.setdefault("apiVersion", kind.api_version)
        obj_kind = obj.setdefault("kind", kind.kind)
        if api_version != kind.api_version or obj_kind != kind.kind:
            raise errors.bad_request(
                f"the object's apiVersion and kind ({api_version}, {obj_kind}) do not match the URL's "
                f"({kind.api_version}, {kind.kind})"
            )
        meta = _meta(obj)
        if kind.namespaced:
            ns = meta.get("namespace")
            if ns and ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            if meta.get("namespace"):
                raise errors.bad_request(f"{kind.kind} is not namespaced: metadata.namespace must be empty")
            meta.pop("namespace", None)
        if name is not None:
            if meta.get("name") and meta["name"] != name:
                raise errors.bad_request(
                    f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
                )
            meta["name"] = name
        return obj

    def _parse(self, kind: Kind, obj: Object) -> Resource:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        try:
            model = parse(kind.model, obj)
        except ParseFailed as e:
            errs = list(e.errors)
            errs += self._name_errors(kind, meta)
            raise errors.invalid(kind.kind, name, errs, kind.group) from None
        name_errs = self._name_errors(kind, meta)
        if name_errs:
            raise errors.invalid(kind.kind, name, name_errs, kind.group)
        return model

    @staticmethod
    def _name_errors(kind: Kind, meta: dict[str, Any]) -> builtins.list[FieldError]:
        out: builtins.list[FieldError] = []
        name = meta.get("name")
        if isinstance(name, str):
            for msg in kind.name_rule(name):
                out.append(invalid(FieldPath.root("metadata", "name"), name, msg))
        gen = meta.get("generateName")
        if isinstance(gen, str) and gen:
            # A prefix may end in '-' (the suffix follows it); Kubernetes masks that dash before checking.
            for msg in kind.name_rule(gen[:-1] + "a" if gen.endswith("-") else gen):
                out.append(invalid(FieldPath.root("metadata", "generateName"), gen, msg))
        ns = meta.get("namespace")
        if kind.namespaced and not ns:
            out.append(required(FieldPath.root("metadata", "namespace")))
        return out

    @staticmethod
    def _model(kind: Kind, obj: Object) -> Resource:
        # Stored objects were valid when written; parse without the rules (phase 1 only) for speed.
        return kind.model.model_validate(obj)

    @staticmethod
    def _wire(model: Resource) -> Object:
        obj = model.to_dict()
        obj.setdefault("metadata", {})
        return obj

    @staticmethod
    def _check_size(kind: Kind, obj: Object) -> None:
        size = len(json.dumps(obj, separators=(",", ":")).encode())
        if size > MAX_OBJECT_BYTES:
            raise errors.too_large(
                f"{kind.kind} is {size} bytes when stored; the limit is {MAX_OBJECT_BYTES} bytes"
            )

    @staticmethod
    def _apply_patch(kind: Kind, current: Object, patch_type: PatchType, patch: Any) -> Any:
        try:
            if patch_type == "merge":
                return patches.json_merge_patch(current, patch)
            if patch_type == "json":
                return patches.json_patch(current, patch)
            if not kind.strategic_merge:
                raise errors.unsupported_media_type(
                    f"strategic merge patch is not supported for {kind.group_resource}; "
                    "use a JSON merge patch (application/merge-patch+json) or a JSON patch"
                )
            return patches.strategic_merge_patch(current, patch, kind.model)
        except patches.PatchError as e:
            raise errors.ApiError(422, "Invalid", f"the patch could not be applied: {e}") from None

    async def _store_call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except Unavailable as e:
            raise errors.unavailable(f"the store is unavailable: {e}") from None
        except (Conflict, NotFound, KeyExists):
            raise
        except StoreError as e:
            raise errors.internal(str(e)) from None
