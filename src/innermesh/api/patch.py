"""The three patch formats Kubernetes accepts, as pure functions over JSON values (dicts, lists,
scalars). None of them changes its arguments; each returns a new value or raises ``PatchError``.

- ``json_merge_patch`` (``application/merge-patch+json``, RFC 7386): objects merge recursively, a
  null member deletes, anything else (lists included) replaces. ``create_merge_patch`` is its inverse.
- ``json_patch`` (``application/json-patch+json``, RFC 6902): a list of operations, applied in order
  by the ``jsonpatch`` package; a failure names the operation (its index, op and path).
- ``strategic_merge_patch`` (``application/strategic-merge-patch+json``): Kubernetes' merge for its
  built-in kinds. Like a merge patch, except that lists marked ``MergeKey`` in the kind's pydantic
  model merge item by item on that key, and lists marked ``MergeSet`` merge as sets of scalars;
  unmarked lists are replaced. Directives:

  - ``$patch: replace`` in a map replaces the map; ``$patch: delete`` removes it (Kubernetes leaves
    an empty map, which for selectors means "everything": removing is what the directive says);
    ``$patch: merge`` is the default, stated.
  - in a list merged by key: an item ``{$patch: delete, <key>: v}`` removes the items with that key;
    an item ``{$patch: replace}`` makes the list be exactly the patch's other items.
  - ``$deleteFromPrimitiveList/<field>: [values]`` removes values from a set-merged list.
  - ``$setElementOrder/<field>: [...]`` (sent by ``kubectl apply``) gives the order of the merged
    list: the listed items in that order, the items only the server has kept where they were.
  - ``$retainKeys: [fields]``: fields of the map not listed are cleared.

  Without ``$setElementOrder`` the order is Kubernetes': the patch's items in patch order, interleaved
  with the server's other items in server order, a new item going before the server items that follow
  it (so a new item lands at the front, as ``kubectl patch`` users know). Any other ``$`` key is an
  error.
"""

from __future__ import annotations

import copy
import functools
import json
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import jsonpatch
import jsonpointer
from pydantic import BaseModel

from innermesh.api.model import MergeKey, MergeSet, unwrap_annotation

JSON = Any
"""A JSON value as Python holds it: dict, list, str, int, float, bool or None."""

# Kubernetes refuses longer JSON patches (k8s.io/apiserver's maxJSONPatchOperations).
MAX_JSON_PATCH_OPERATIONS = 10000

# A failing operation is quoted in errors; keep a hostile one from filling the message.
_MESSAGE_MAX = 300


class PatchError(ValueError):
    """A patch that can not be applied: malformed, or inconsistent with its target."""


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _deepcopy(value: JSON) -> JSON:
    try:
        return copy.deepcopy(value)
    except RecursionError:
        raise PatchError("the document is nested too deeply") from None


def json_equal(a: JSON, b: JSON) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, while ``1`` and ``1.0`` are the same number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


# ---------------------------------------------------------------------------------------------------
# RFC 7386


def json_merge_patch(target: JSON, patch: JSON) -> JSON:
    """RFC 7386's MergePatch(target, patch)."""
    try:
        return _merge_patch(_deepcopy(target), patch)
    except RecursionError:
        raise PatchError("the patch is nested too deeply") from None


def _merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def create_merge_patch(original: JSON, modified: JSON) -> JSON:
    """The smallest merge patch that turns ``original`` into ``modified``.

    A merge patch can not set an object member to null (null means "delete"), so a ``modified`` with a
    null member outside any list has no merge patch: that raises PatchError. Lists are always sent
    whole, since a merge patch can not change part of one."""
    try:
        return _create_merge_patch(original, modified, "")
    except RecursionError:
        raise PatchError("the document is nested too deeply") from None


def _create_merge_patch(original: JSON, modified: JSON, where: str) -> JSON:
    if not (isinstance(original, dict) and isinstance(modified, dict)):
        _refuse_null_members(modified, where)
        return copy.deepcopy(modified)
    out: dict[str, JSON] = {key: None for key in original if key not in modified}
    for key, value in modified.items():
        if key in original and json_equal(original[key], value):
            continue
        here = _join(where, key)
        if value is None:
            raise PatchError(f"a JSON merge patch can not set {here} to null")
        if isinstance(original.get(key), dict) and isinstance(value, dict):
            out[key] = _create_merge_patch(original[key], value, here)
        else:
            _refuse_null_members(value, here)
            out[key] = copy.deepcopy(value)
    return out


def _refuse_null_members(value: JSON, where: str) -> None:
    if isinstance(value, dict):
        for key, member in value.items():
            if member is None:
                raise PatchError(f"a JSON merge patch can not set {_join(where, key)} to null")
            _refuse_null_members(member, _join(where, key))


# ---------------------------------------------------------------------------------------------------
# RFC 6902


_OPS = ("add", "remove", "replace", "move", "copy", "test")


def json_patch(target: JSON, ops: JSON) -> JSON:
    """RFC 6902: apply ``ops`` in order to a copy of ``target``. A failing operation is named in the
    PatchError, and nothing is applied."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError(
            f"the allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}"
        )
    doc = _deepcopy(target)
    # Values in the operations end up inside the document; copy them so that the result shares
    # nothing with the caller's patch and later operations can not change it.
    ops = _deepcopy(ops)
    for i, op in enumerate(ops):
        name = _describe_op(i, op)
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise PatchError(_clip(f"{name}: {e}")) from None
        except (TypeError, KeyError, IndexError, ValueError, AttributeError, RecursionError) as e:
            # jsonpatch assumes JSON-shaped input; anything else surfaces as a Python error.
            raise PatchError(_clip(f"{name}: invalid operation ({type(e).__name__}: {e})")) from None
    return doc


def _describe_op(i: int, op: JSON) -> str:
    """``operation 2 (remove /spec/ports/5)``, checking the shape jsonpatch expects."""
    if not isinstance(op, dict):
        raise PatchError(f"operation {i}: must be an object")
    kind, path = op.get("op"), op.get("path")
    if not isinstance(kind, str):
        raise PatchError(f"operation {i}: must have an 'op' member, one of {', '.join(_OPS)}")
    if kind not in _OPS:
        raise PatchError(_clip(f"operation {i}: unknown op {kind!r} (expected one of {', '.join(_OPS)})"))
    if not isinstance(path, str):
        raise PatchError(f"operation {i} ({kind}): must have a 'path' member holding a JSON pointer")
    if kind in ("move", "copy") and not isinstance(op.get("from"), str):
        raise PatchError(
            _clip(f"operation {i} ({kind} {path}): must have a 'from' member holding a JSON pointer")
        )
    if kind in ("add", "replace", "test") and "value" not in op:
        raise PatchError(_clip(f"operation {i} ({kind} {path}): must have a 'value' member"))
    return _clip(f"operation {i} ({kind} {path})")


# ---------------------------------------------------------------------------------------------------
# Strategic merge patch: the schema, read from the kind's pydantic model


@dataclass(frozen=True, slots=True)
class _Field:
    """What the schema says about one value: its structural type and list strategy."""

    tp: Any = None  # a model class, dict[...], list[...], a scalar type, or None when unknown
    merge_key: str | None = None
    merge_set: bool = False

    @property
    def merges(self) -> bool:
        return self.merge_key is not None or self.merge_set


_UNKNOWN = _Field()


def _describe(tp: Any, metadata: tuple[Any, ...] = ()) -> _Field:
    """Strip Annotated and Optional from an annotation, collecting the merge markers on the way."""
    tp, found = unwrap_annotation(tp)
    markers = [*metadata, *found]
    merge_key = next((m.key for m in markers if isinstance(m, MergeKey)), None)
    merge_set = any(isinstance(m, MergeSet) for m in markers)
    return _Field(tp, merge_key, merge_set)


@functools.lru_cache(maxsize=4096)
def _child(parent: _Field, key: str) -> _Field:
    tp = parent.tp
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if key in (info.alias, name):
                return _describe(info.annotation, tuple(info.metadata))
        return _UNKNOWN
    if typing.get_origin(tp) is dict:
        args = typing.get_args(tp)
        return _describe(args[1]) if len(args) == 2 else _UNKNOWN
    return _UNKNOWN


@functools.lru_cache(maxsize=4096)
def _element(field: _Field) -> _Field:
    if typing.get_origin(field.tp) is list:
        args = typing.get_args(field.tp)
        return _describe(args[0]) if args else _UNKNOWN
    return _UNKNOWN


# ---------------------------------------------------------------------------------------------------
# Strategic merge patch: the merge

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder/"
_DELETE_FROM = "$deleteFromPrimitiveList/"


class _Delete:
    """The value of a map that ``$patch: delete`` removes."""


_DELETED = _Delete()


def strategic_merge_patch(target: JSON, patch: JSON, model: type[BaseModel]) -> JSON:
    """Kubernetes' strategic merge patch of ``target`` (an object of the kind ``model`` describes)."""
    if not isinstance(target, dict):
        raise PatchError("the object to patch must be a JSON object")
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    try:
        merged = _merge_map(_deepcopy(target), patch, _Field(model), "")
    except RecursionError:
        raise PatchError("the patch is nested too deeply") from None
    return {} if isinstance(merged, _Delete) else merged


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _at(where: str) -> str:
    return where or "the object"


def _merge_map(original: dict[str, JSON], patch: dict[str, JSON], field: _Field, where: str) -> JSON:
    """Merge ``patch`` into ``original`` (which we own and change) and return it, or _DELETED."""
    if _DIRECTIVE in patch:
        directive = patch[_DIRECTIVE]
        rest = {k: v for k, v in patch.items() if k != _DIRECTIVE}
        if directive == "replace":
            return _merge_map({}, rest, field, where)
        if directive == "delete":
            return _DELETED
        if directive != "merge":
            raise PatchError(
                _clip(
                    f"{_at(where)}: unknown $patch directive {directive!r} (expected replace, delete or merge)"
                )
            )
        patch = rest
    _check_keys(patch, where)
    if _RETAIN_KEYS in patch:
        _retain_keys(original, patch, where)
    ordered: set[str] = set()
    for key in patch:
        if key.startswith(_SET_ORDER):
            name = key[len(_SET_ORDER) :]
            if _set_element_order(original, patch, name, field, where):
                ordered.add(name)
    for key, value in patch.items():
        if key.startswith("$") or key in ordered:
            continue
        if value is None:
            original.pop(key, None)
            continue
        child, here = _child(field, key), _join(where, key)
        if original.get(key) is None:
            new = _materialize(value, child, here)
        else:
            new = _merge_value(original[key], value, child, here)
        if isinstance(new, _Delete):
            original.pop(key, None)
        else:
            original[key] = new
    # Deletions from set-merged lists come after the additions to them, so the result does not
    # depend on the order of the patch's keys.
    for key, value in patch.items():
        if key.startswith(_DELETE_FROM):
            _delete_from_primitive_list(original, key[len(_DELETE_FROM) :], value, field, where)
    return original


def _check_keys(patch: dict[Any, JSON], where: str) -> None:
    for key in patch:
        if not isinstance(key, str):
            raise PatchError(_clip(f"{_at(where)}: member names must be strings, not {key!r}"))
        if not key.startswith("$") or key == _RETAIN_KEYS:
            continue
        for prefix in (_SET_ORDER, _DELETE_FROM):
            if key.startswith(prefix):
                if not key[len(prefix) :]:
                    raise PatchError(f"{_at(where)}: directive {key!r} must name a field after the '/'")
                break
        else:
            raise PatchError(_clip(f"{_at(where)}: unknown directive {key!r}"))


def _merge_value(current: JSON, value: JSON, field: _Field, where: str) -> JSON:
    if isinstance(current, dict) and isinstance(value, dict):
        return _merge_map(current, value, field, where)
    if isinstance(current, list) and isinstance(value, list):
        return _merge_list(current, value, field, where)
    return _materialize(value, field, where)


def _materialize(value: JSON, field: _Field, where: str) -> JSON:
    """A patch value applied to nothing: directives interpreted, null members dropped."""
    if isinstance(value, dict):
        return _merge_map({}, value, field, where)
    if isinstance(value, list):
        return _merge_list([], value, field, where)
    return value


def _merge_list(current: list[JSON], patch: list[JSON], field: _Field, where: str) -> list[JSON]:
    if field.merge_key is not None:
        return _merge_keyed_list(current, patch, field.merge_key, _element(field), where)
    if field.merge_set:
        return _merge_set(current, patch, where)
    # Replaced as a whole; its items are taken from the patch.
    elem = _element(field)
    out = []
    for i, item in enumerate(patch):
        if isinstance(item, dict) and _DIRECTIVE in item:
            raise PatchError(
                f"{where}[{i}]: $patch in a list item applies only to lists that merge by key; "
                f"{where} is replaced as a whole"
            )
        new = _materialize(item, elem, f"{where}[{i}]")
        out.append(new)
    return out


def _ident(value: JSON) -> Hashable:
    """A hashable identity with JSON's equality: ``1 == 1.0``, ``true != 1``."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("num", value)
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null",)
    try:
        return ("json", json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        return ("repr", repr(value))


def _merge_keyed_list(
    current: list[JSON], patch: list[JSON], key: str, elem: _Field, where: str
) -> list[JSON]:
    for i, item in enumerate(patch):
        if not isinstance(item, dict):
            raise PatchError(_clip(f"{where}[{i}]: must be an object, as {where} merges by {key!r}"))
    for i, item in enumerate(current):
        if not isinstance(item, dict):
            raise PatchError(
                _clip(f"{where}[{i}]: the stored list holds a non-object, can not merge by {key!r}")
            )

    def key_of(item: dict[str, JSON]) -> Hashable:
        return _ident(item.get(key))

    server = list(current)
    plain: list[dict[str, JSON]] = []
    replace = False
    for i, item in enumerate(patch):
        if _DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            if key not in item:
                raise PatchError(f"{where}[{i}]: a $patch: delete item must give its {key!r}")
            gone = key_of(item)
            server = [s for s in server if not (key in s and key_of(s) == gone)]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            rest = {k: v for k, v in item.items() if k != _DIRECTIVE}
            if rest:
                plain.append(rest)
        else:
            raise PatchError(
                _clip(
                    f"{where}[{i}]: unknown $patch directive {directive!r} (expected replace, delete or merge)"
                )
            )
    if replace:
        out = []
        for i, item in enumerate(plain):
            new = _materialize(item, elem, f"{where}[{i}]")
            if not isinstance(new, _Delete):
                out.append(new)
        return out

    merged = list(server)
    for item in plain:
        if key not in item:
            raise PatchError(
                _clip(f"{where}: an item has no merge key {key!r}: {json.dumps(item, default=str)}")
            )
        here = f"{where}[{key}={json.dumps(item[key], default=str)}]"
        wanted = key_of(item)
        found = next((n for n, m in enumerate(merged) if key in m and key_of(m) == wanted), None)
        if found is None:
            merged.append(_materialize(item, elem, here))
        else:
            merged[found] = _merge_map(merged[found], item, elem, here)
    in_patch = {key_of(p) for p in plain}
    patch_items = [m for m in merged if key_of(m) in in_patch]
    server_only = [m for m in merged if key_of(m) not in in_patch]
    return _normalize_order(patch_items, server_only, plain, server, key_of)


def _merge_set(current: list[JSON], patch: list[JSON], where: str) -> list[JSON]:
    for i, item in enumerate([*current, *patch]):
        if isinstance(item, dict | list):
            raise PatchError(f"{where}: must be a list of scalars, as it merges as a set (item {i})")
    merged: list[JSON] = []
    seen: set[Hashable] = set()
    for item in [*current, *patch]:
        ident = _ident(item)
        if ident not in seen:
            seen.add(ident)
            merged.append(item)
    in_patch = {_ident(p) for p in patch}
    patch_items = [m for m in merged if _ident(m) in in_patch]
    server_only = [m for m in merged if _ident(m) not in in_patch]
    return _normalize_order(patch_items, server_only, patch, current, _ident)


def _normalize_order(
    patch_items: list[JSON],
    server_only: list[JSON],
    patch_order: list[JSON],
    server_order: list[JSON],
    ident: Callable[[Any], Hashable],
) -> list[JSON]:
    """Kubernetes' normalizeElementOrder: the patch items in patch order, the server-only items in
    server order, then the two interleaved by their positions on the server; an item the server never
    had is placed before the server items still to come."""

    def positions(order: list[JSON]) -> dict[Hashable, int]:
        out: dict[Hashable, int] = {}
        for n, item in enumerate(order):
            out.setdefault(ident(item), n)
        return out

    in_patch, on_server = positions(patch_order), positions(server_order)
    left = sorted(server_only, key=lambda m: on_server.get(ident(m), len(on_server)))
    right = sorted(patch_items, key=lambda m: in_patch.get(ident(m), len(in_patch)))
    out: list[JSON] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j >= len(right):
            out.append(left[i])
            i += 1
        elif i >= len(left):
            out.append(right[j])
            j += 1
        else:
            li, ri = on_server.get(ident(left[i])), on_server.get(ident(right[j]))
            if li is not None and ri is not None and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _set_element_order(
    original: dict[str, JSON], patch: dict[str, JSON], name: str, field: _Field, where: str
) -> bool:
    """Apply ``$setElementOrder/<name>``: merge the list (if the patch changes it) and order it.
    Returns whether the list is done (so the main loop leaves it alone)."""
    here = _join(where, name)
    order = patch[_SET_ORDER + name]
    if not isinstance(order, list):
        raise PatchError(f"{_at(where)}: {_SET_ORDER}{name} must be a list")
    child = _child(field, name)
    if not child.merges:
        raise PatchError(f"{_at(where)}: {_SET_ORDER}{name}: {here} is not a list that merges")
    key = child.merge_key

    def ident(item: JSON) -> Hashable:
        return _ident(item.get(key)) if key is not None and isinstance(item, dict) else _ident(item)

    for i, item in enumerate(order):
        if key is not None and not (isinstance(item, dict) and key in item):
            raise PatchError(_clip(f"{_at(where)}: {_SET_ORDER}{name}[{i}] must be an object giving {key!r}"))
        if key is None and isinstance(item, dict | list):
            raise PatchError(f"{_at(where)}: {_SET_ORDER}{name}[{i}] must be a scalar")
    if name in patch and patch[name] is None:
        return False  # the list is being deleted; its order does not matter
    current = original.get(name)
    if current is not None and not isinstance(current, list):
        raise PatchError(f"{here}: the stored value is not a list, can not order it")
    changes = patch.get(name)
    if changes is not None and not isinstance(changes, list):
        raise PatchError(f"{here}: must be a list, as {_SET_ORDER}{name} orders it")
    if changes is not None:
        _check_order(
            changes,
            order,
            key,
            ident,
            f"{here}: the order of the patch's items does not match {_SET_ORDER}{name}",
        )
        merged = _merge_list(current or [], changes, child, here)
    elif current is not None:
        merged = current
    else:
        return True
    listed = {ident(o) for o in order}
    patch_items = [m for m in merged if ident(m) in listed]
    server_only = [m for m in merged if ident(m) not in listed]
    original[name] = _normalize_order(patch_items, server_only, order, current or [], ident)
    return True


def _check_order(
    changes: list[JSON], order: list[JSON], key: str | None, ident: Callable[[Any], Hashable], mismatch: str
) -> None:
    """The patch's items (deletions aside) must appear in ``order``, in the same relative order."""
    j = 0
    for item in changes:
        if isinstance(item, dict) and _DIRECTIVE in item:
            continue
        if key is not None and not (isinstance(item, dict) and key in item):
            continue  # reported by the merge, with a better message
        wanted = ident(item)
        while j < len(order) and ident(order[j]) != wanted:
            j += 1
        if j == len(order):
            raise PatchError(_clip(mismatch))
        j += 1


def _delete_from_primitive_list(
    original: dict[str, JSON], name: str, values: JSON, field: _Field, where: str
) -> None:
    here = _join(where, name)
    if not isinstance(values, list):
        raise PatchError(f"{_at(where)}: {_DELETE_FROM}{name} must be a list")
    if not _child(field, name).merge_set:
        raise PatchError(f"{_at(where)}: {_DELETE_FROM}{name}: {here} is not a list that merges as a set")
    current = original.get(name)
    if current is None:
        return
    if not isinstance(current, list):
        raise PatchError(f"{here}: the stored value is not a list")
    gone = {_ident(v) for v in values}
    original[name] = [item for item in current if _ident(item) not in gone]


def _retain_keys(original: dict[str, JSON], patch: dict[str, JSON], where: str) -> None:
    keep = patch[_RETAIN_KEYS]
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise PatchError(f"{_at(where)}: $retainKeys must be a list of field names")
    kept = set(keep)
    for key, value in patch.items():
        if value is not None and not key.startswith("$") and key not in kept:
            raise PatchError(_clip(f"{_at(where)}: {key!r} is in the patch but not in $retainKeys"))
    for key in list(original):
        if key not in kept:
            del original[key]
