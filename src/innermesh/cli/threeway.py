"""Client-side apply's patch: kubectl's last-applied annotation and three-way patches (pure).

``innermesh apply`` does what ``kubectl apply`` (client-side) does, so both can manage the same object:

- **original** is the configuration applied last time, kept in the object's
  ``kubectl.kubernetes.io/last-applied-configuration`` annotation;
- **modified** is the configuration being applied now, with that annotation set to itself;
- **current** is the live object, with what the server and controllers added (defaults, the
  ClusterIP, status).

The patch sets what ``modified`` changes or adds relative to ``current``, and deletes what ``original``
had and ``modified`` no longer has, so a field removed from the file is removed from the object while
fields nobody ever applied (set by the server or a controller) stay. Two formats, as kubectl chooses:

- **strategic merge patch** for the kinds kubectl compiles in (``Kind.strategic_merge``): lists marked
  ``MergeKey`` in the schema merge element by element (``$patch: delete`` removes one element,
  ``$setElementOrder/<list>`` keeps the file's order), lists marked ``MergeSet`` merge as sets
  (``$deleteFromPrimitiveList/<list>``), other lists are replaced whole. This mirrors
  ``k8s.io/apimachinery/pkg/util/strategicpatch.CreateThreeWayMergePatch``.
- **JSON merge patch** (RFC 7386) for the others (Kubernetes' CRDs, here our group and the Gateway API):
  every list is replaced whole. This mirrors ``jsonmergepatch.CreateThreeWayJSONMergePatch``.

An empty patch (``{}``) means the object is ``unchanged``.

The annotation holds the applied object serialized as Go's ``encoding/json`` does (keys sorted, no
spaces, ``<``, ``>`` and ``&`` escaped, a trailing newline), so the annotation kubectl writes and the one
innermesh writes for the same file are the same string and neither tool sees a change made by the other.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

from innermesh.api.model import MergeKey, MergeSet

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Json = Any


@dataclass(frozen=True, slots=True)
class MapOf:
    """The schema of a map whose values follow ``value`` (``dict[str, Model]``); None for free-form
    maps such as labels."""

    value: type[BaseModel] | None


Schema = type[BaseModel] | MapOf | None

_SET_ORDER = "$setElementOrder/"
_DELETE_FROM_PRIMITIVE = "$deleteFromPrimitiveList/"
_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"


class PatchError(ValueError):
    """The configurations cannot be diffed (a list element without its merge key, a changed name...)."""


# ---------------------------------------------------------------------------------------------------
# The annotation


def go_json(value: Json) -> str:
    """JSON as Go's ``encoding/json`` writes a map: sorted keys, compact, HTML-safe escapes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def annotated(config: dict[str, Any]) -> dict[str, Any]:
    """``modified``: the configuration with the last-applied annotation set to the configuration itself
    (kubectl's ``GetModifiedConfiguration``). The annotation's own value is the configuration without the
    annotation, with ``metadata.annotations`` present (``{}`` when the file has none), as kubectl writes."""
    obj = copy.deepcopy(config)
    meta = obj.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(LAST_APPLIED, None)
    meta["annotations"] = annotations
    applied = go_json(obj) + "\n"
    meta["annotations"] = {**annotations, LAST_APPLIED: applied}
    return obj


def last_applied(current: dict[str, Any]) -> dict[str, Any] | None:
    """``original``: the configuration recorded on the live object, or None if it has none."""
    raw = ((current.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------------
# Values as Go's decoder sees them: every number is a float64, and bool is not a number.


def _type(v: Json) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, list):
        return "list"
    raise PatchError(f"not a JSON value: {v!r}")


def same(a: Json, b: Json) -> bool:
    """reflect.DeepEqual on decoded JSON (1 == 1.0, but true != 1)."""
    ta = _type(a)
    if ta != _type(b):
        return False
    if ta == "map":
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if ta == "list":
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _go_str(v: Json) -> str:
    """fmt.Sprintf("%v") of a decoded scalar: how strategicpatch sorts and compares merge keys."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    return str(v)


# ---------------------------------------------------------------------------------------------------
# JSON merge patch (RFC 7386), as github.com/evanphx/json-patch computes and merges them


def create_merge_patch(original: dict[str, Any], modified: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns ``original`` into ``modified`` (deleted keys are null)."""
    patch: dict[str, Any] = {}
    for key, mv in modified.items():
        if key not in original:
            patch[key] = copy.deepcopy(mv)
            continue
        ov = original[key]
        if _type(ov) != _type(mv):
            patch[key] = copy.deepcopy(mv)
        elif isinstance(ov, dict):
            sub = create_merge_patch(ov, mv)
            if sub:
                patch[key] = sub
        elif not same(ov, mv):
            patch[key] = copy.deepcopy(mv)
    for key in original:
        if key not in modified:
            patch[key] = None
    return patch


def _keep_or_delete_null(patch: dict[str, Any], keep_null: bool) -> dict[str, Any]:
    """Only the deletions of a merge patch (``keep_null``), or only its additions and changes."""
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if value is None:
            if keep_null:
                out[key] = None
        elif isinstance(value, dict):
            if not value:
                # An explicitly empty map is a value, not an empty patch.
                if not keep_null:
                    out[key] = value
                continue
            sub = _keep_or_delete_null(value, keep_null)
            if sub:
                out[key] = sub
        elif not keep_null:
            out[key] = value
    return out


def _prune_nulls(value: Json) -> Json:
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    return value


def merge_patch_into(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply a merge patch to a document (RFC 7386); ``doc`` is changed and returned."""
    for key, value in patch.items():
        if value is None:
            doc.pop(key, None)
        elif isinstance(value, dict) and isinstance(doc.get(key), dict):
            merge_patch_into(doc[key], value)
        else:
            doc[key] = _prune_nulls(copy.deepcopy(value))
    return doc


def _has_conflicts(left: Json, right: Json) -> bool:
    if isinstance(left, dict):
        if not isinstance(right, dict):
            return True
        return any(_has_conflicts(v, right[k]) for k, v in left.items() if k in right)
    if isinstance(left, list):
        if not isinstance(right, list) or len(left) != len(right):
            return True
        return any(_has_conflicts(a, b) for a, b in zip(left, right, strict=True))
    return not same(left, right)


def three_way_merge_patch(
    original: dict[str, Any] | None, modified: dict[str, Any], current: dict[str, Any]
) -> dict[str, Any]:
    """kubectl's three-way JSON merge patch: changes from current to modified, and deletions from
    original to modified."""
    add_and_change = _keep_or_delete_null(create_merge_patch(current, modified), keep_null=False)
    deletions = _keep_or_delete_null(create_merge_patch(original or {}, modified), keep_null=True)
    if _has_conflicts(add_and_change, deletions):
        raise PatchError("the changes and the deletions of the patch conflict")
    patch = merge_patch_into(deletions, add_and_change)
    _check_preconditions(patch)
    return patch


def _check_preconditions(patch: dict[str, Any]) -> None:
    """kubectl refuses a patch that would change apiVersion, kind or metadata.name."""
    meta = patch.get("metadata")
    if "apiVersion" in patch or "kind" in patch or (isinstance(meta, dict) and "name" in meta):
        raise PatchError("at least one of apiVersion, kind and name was changed")


# ---------------------------------------------------------------------------------------------------
# Strategic merge patch metadata, from the kinds' pydantic models


@dataclass(frozen=True, slots=True)
class PatchMeta:
    """How a field merges: ``merge`` lists by ``merge_key`` (or as a set of scalars when the key is
    empty); everything else is replaced. ``schema`` is the model of a map's or list element's fields."""

    strategy: Literal["merge", "replace"]
    merge_key: str
    schema: Schema


_REPLACE = PatchMeta("replace", "", None)


def _unwrap(tp: Any, markers: list[object]) -> Any:
    """Strip Annotated (collecting its markers) and Optional from an annotation."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            args = typing.get_args(tp)
            markers.extend(args[1:])
            tp = args[0]
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _model_of(tp: Any) -> type[BaseModel] | None:
    tp = _unwrap(tp, [])
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _meta_of(annotation: Any, markers: list[object]) -> PatchMeta:
    tp = _unwrap(annotation, markers)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list and args:
        sub = _model_of(args[0])
        for m in markers:
            if isinstance(m, MergeKey):
                return PatchMeta("merge", m.key, sub)
            if isinstance(m, MergeSet):
                return PatchMeta("merge", "", None)
        return PatchMeta("replace", "", sub)
    if origin is dict and len(args) == 2:
        return PatchMeta("replace", "", MapOf(_model_of(args[1])))
    return PatchMeta("replace", "", _model_of(tp))


def lookup(schema: Schema, key: str) -> PatchMeta:
    """The patch metadata of field ``key`` (its wire name, or a map's key) in ``schema``."""
    if schema is None:
        return _REPLACE
    if isinstance(schema, MapOf):
        return PatchMeta("replace", "", schema.value)
    for name, info in schema.model_fields.items():
        if key in (info.alias, name):
            return _meta_of(info.annotation, list(info.metadata))
    return _REPLACE


# ---------------------------------------------------------------------------------------------------
# Strategic merge: the diff (strategicpatch.diffMaps and friends)


@dataclass(frozen=True, slots=True)
class _DiffOptions:
    ignore_deletions: bool = False
    ignore_changes_and_additions: bool = False
    set_element_order: bool = True


def diff_maps(
    original: dict[str, Any], modified: dict[str, Any], schema: Schema, opts: _DiffOptions
) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, mv in modified.items():
        if key not in original:
            if not opts.ignore_changes_and_additions:
                patch[key] = copy.deepcopy(mv)
            continue
        ov = original[key]
        if _type(ov) != _type(mv):
            if not opts.ignore_changes_and_additions:
                patch[key] = copy.deepcopy(mv)
            continue
        if isinstance(ov, dict):
            meta = lookup(schema, key)
            # A map field of a model recurses into that model; a free-form map (labels) has no schema.
            sub = diff_maps(ov, mv, meta.schema, opts)
            if sub:
                patch[key] = sub
        elif isinstance(ov, list):
            _diff_slice(key, ov, mv, patch, schema, opts)
        elif not opts.ignore_changes_and_additions and not same(ov, mv):
            patch[key] = mv
    if not opts.ignore_deletions:
        for key in original:
            if key not in modified:
                patch[key] = None
    return patch


def _diff_slice(
    key: str,
    original: list[Any],
    modified: list[Any],
    patch: dict[str, Any],
    schema: Schema,
    opts: _DiffOptions,
) -> None:
    meta = lookup(schema, key)
    if meta.strategy != "merge":
        if not opts.ignore_changes_and_additions and not same(original, modified):
            patch[key] = copy.deepcopy(modified)
        return
    add, delete, order = _diff_lists(original, modified, meta, opts)
    if add:
        patch[key] = add
    if delete:
        patch[_DELETE_FROM_PRIMITIVE + key] = delete
    if order:
        patch[_SET_ORDER + key] = order


def _element_kind(*lists: list[Any]) -> str:
    kinds = {_type(v) for lst in lists for v in lst}
    if len(kinds) > 1:
        raise PatchError("the elements of a list must all be of one type")
    if kinds == {"list"}:
        raise PatchError("lists of lists are not supported")
    return kinds.pop() if kinds else "null"


def _diff_lists(
    original: list[Any], modified: list[Any], meta: PatchMeta, opts: _DiffOptions
) -> tuple[list[Any], list[Any], list[Any]]:
    """(additions and changes, deletions from a primitive list, $setElementOrder list)."""
    if not original:
        if not modified or opts.ignore_changes_and_additions:
            return [], [], []
        return copy.deepcopy(modified), [], []
    kind = _element_kind(original, modified)
    if kind == "map":
        if not meta.merge_key:
            raise PatchError("a list of objects merged by key needs a merge key")
        key = meta.merge_key
        patch_list, delete_list = _diff_lists_of_maps(original, modified, meta, opts)
        patch_list = _order_like(patch_list, modified, key)
        order_same = len(original) == len(modified) and all(
            same(_merge_value(o, key), _merge_value(m, key)) for o, m in zip(original, modified, strict=True)
        )
        patch_list += delete_list
        order: list[Any] = []
        if opts.set_element_order and (
            (not opts.ignore_changes_and_additions and (patch_list or not order_same))
            or (not opts.ignore_deletions and patch_list)
        ):
            order = [{key: _merge_value(m, key)} for m in modified]
        return patch_list, [], order
    add, delete = _diff_lists_of_scalars(original, modified, opts)
    add = _order_like(add, modified, "")
    order = []
    if opts.set_element_order and (
        (not opts.ignore_deletions and delete)
        or (not opts.ignore_changes_and_additions and not same(original, modified))
    ):
        order = copy.deepcopy(modified)
    return add, delete, order


def _merge_value(element: Any, key: str) -> Any:
    if not isinstance(element, dict) or key not in element:
        raise PatchError(f"a list element does not contain its merge key {key!r}: {go_json(element)}")
    return element[key]


def _diff_lists_of_maps(
    original: list[Any], modified: list[Any], meta: PatchMeta, opts: _DiffOptions
) -> tuple[list[Any], list[Any]]:
    key = meta.merge_key
    # Both sides sorted by the merge key's string form, then walked together, as strategicpatch does.
    orig = sorted(original, key=lambda e: _go_str(_merge_value(e, key)))
    mod = sorted(modified, key=lambda e: _go_str(_merge_value(e, key)))
    patch: list[Any] = []
    deletions: list[Any] = []
    i = j = 0
    while i < len(orig) or j < len(mod):
        o_key = _go_str(_merge_value(orig[i], key)) if i < len(orig) else None
        m_key = _go_str(_merge_value(mod[j], key)) if j < len(mod) else None
        if o_key is not None and m_key is not None and o_key == m_key:
            sub = diff_maps(orig[i], mod[j], meta.schema, opts)
            if sub:
                sub[key] = mod[j][key]
                patch.append(sub)
            i += 1
            j += 1
        elif o_key is None or (m_key is not None and o_key > m_key):
            if not opts.ignore_changes_and_additions:
                patch.append(copy.deepcopy(mod[j]))
            j += 1
        else:
            if not opts.ignore_deletions:
                deletions.append({_DIRECTIVE: "delete", key: orig[i][key]})
            i += 1
    return patch, deletions


def _diff_lists_of_scalars(
    original: list[Any], modified: list[Any], opts: _DiffOptions
) -> tuple[list[Any], list[Any]]:
    orig = _dedupe_sorted(original)
    mod = _dedupe_sorted(modified)
    add: list[Any] = []
    delete: list[Any] = []
    i = j = 0
    while i < len(orig) or j < len(mod):
        o = _go_str(orig[i]) if i < len(orig) else None
        m = _go_str(mod[j]) if j < len(mod) else None
        if o is not None and m is not None and o == m:
            i += 1
            j += 1
        elif m is None or (o is not None and o < m):
            if not opts.ignore_deletions:
                delete.append(orig[i])
            i += 1
        else:
            if not opts.ignore_changes_and_additions:
                add.append(mod[j])
            j += 1
    return add, delete


def _dedupe_sorted(values: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(_go_str(v), v)
    return [seen[k] for k in sorted(seen)]


def _order_like(items: list[Any], order: list[Any], key: str) -> list[Any]:
    """Sort patch elements by their position in ``order`` (the file's list); delete directives last."""

    def position(item: Any) -> int:
        for n, candidate in enumerate(order):
            if key:
                if isinstance(candidate, dict) and same(candidate.get(key), item.get(key)):
                    return n
            elif same(candidate, item):
                return n
        return len(order)

    directives = [i for i in items if isinstance(i, dict) and _DIRECTIVE in i]
    rest = [i for i in items if not (isinstance(i, dict) and _DIRECTIVE in i)]
    return sorted(rest, key=position) + directives


# ---------------------------------------------------------------------------------------------------
# Strategic merge: combining the deletions and the changes into one patch (strategicpatch.mergeMap with
# two patches: they touch disjoint fields, except for maps both recurse into and for the element order)


def _merge_patches(first: dict[str, Any], second: dict[str, Any], schema: Schema) -> dict[str, Any]:
    out = copy.deepcopy(first)
    for key, value in second.items():
        if key.startswith(_SET_ORDER):
            if key in out and not same(out[key], value):
                raise PatchError(f"the two patches disagree on {key}")
            out[key] = copy.deepcopy(value)
            continue
        if key not in out or out[key] is None or value is None or _type(out[key]) != _type(value):
            out[key] = copy.deepcopy(value)
            continue
        if isinstance(value, dict):
            out[key] = _merge_patches(out[key], value, lookup(schema, key).schema)
        elif isinstance(value, list):
            meta = lookup(schema, key)
            if meta.strategy == "merge" and meta.merge_key:
                out[key] = _merge_element_lists(out[key], value, meta)
            elif meta.strategy == "merge":
                out[key] = out[key] + [v for v in value if not any(same(v, w) for w in out[key])]
            else:
                out[key] = copy.deepcopy(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_element_lists(first: list[Any], second: list[Any], meta: PatchMeta) -> list[Any]:
    key = meta.merge_key
    merged: list[Any] = []
    rest = list(first)
    for element in second:
        match = next(
            (e for e in rest if _DIRECTIVE not in e and same(e.get(key), element.get(key))),
            None,
        )
        if match is not None:
            rest.remove(match)
            merged.append(_merge_patches(match, element, meta.schema))
        else:
            merged.append(copy.deepcopy(element))
    # What only the first patch has (deletions, element-level deletions) goes after the changes.
    return merged + rest


def three_way_strategic_patch(
    original: dict[str, Any] | None, modified: dict[str, Any], current: dict[str, Any], schema: Schema
) -> dict[str, Any]:
    """kubectl's three-way strategic merge patch (``CreateThreeWayMergePatch`` with overwrite)."""
    delta = diff_maps(current, modified, schema, _DiffOptions(ignore_deletions=True))
    deletions = diff_maps(original or {}, modified, schema, _DiffOptions(ignore_changes_and_additions=True))
    patch = _merge_patches(deletions, delta, schema)
    _check_preconditions(patch)
    return patch


def three_way_patch(
    original: dict[str, Any] | None,
    modified: dict[str, Any],
    current: dict[str, Any],
    *,
    strategic: bool,
    schema: Schema,
) -> tuple[Literal["strategic", "merge"], dict[str, Any]]:
    """The patch apply sends, and its type; ``{}`` when nothing changes."""
    if strategic:
        return "strategic", three_way_strategic_patch(original, modified, current, schema)
    return "merge", three_way_merge_patch(original, modified, current)
