"""Server-side tables (meta.k8s.io/v1 Table): the columns ``kubectl get`` and ``innermesh get`` print.

The server renders rows from each kind's ``Column`` list, so every client prints the same columns and
only the server needs to know the kinds. Columns: NAME, the kind's own, AGE; priority 1 columns are the
``-o wide`` extras (clients hide them otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from innermesh.api.registry import Column, Kind, age

Object = dict[str, Any]

_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "the object's name",
    "priority": 0,
}
_AGE = {"name": "Age", "type": "string", "format": "", "description": "time since creation", "priority": 0}


def column_definitions(kind: Kind) -> list[dict[str, Any]]:
    cols = [_NAME]
    cols += [
        {"name": c.name, "type": c.type, "format": "", "description": c.description, "priority": c.priority}
        for c in kind.columns
    ]
    cols.append(_AGE)
    return cols


def _cell(col: Column, model: Any) -> object:
    try:
        value = col.value(model)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        # A column must never fail a listing: an object a column cannot read shows as unknown.
        return "<unknown>"
    return "<none>" if value is None or value == "" else value


def row(kind: Kind, obj: Object, include_object: str = "Metadata") -> dict[str, Any]:
    model = kind.model.model_validate(obj)
    cells: list[object] = [model.metadata.name or ""]
    cells += [_cell(c, model) for c in kind.columns]
    cells.append(age(model))
    out: dict[str, Any] = {"cells": cells}
    if include_object == "Object":
        out["object"] = obj
    elif include_object == "Metadata":
        out["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {},
        }
    return out


def table(
    kind: Kind,
    objs: Iterable[Object],
    resource_version: str = "",
    include_object: str = "Metadata",
    with_columns: bool = True,
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version} if resource_version else {},
        "rows": [row(kind, o, include_object) for o in objs],
    }
    # Watch events after the first leave the columns out, as Kubernetes does; clients reuse the last.
    t["columnDefinitions"] = column_definitions(kind) if with_columns else []
    return t


def wants_table(accept: str) -> bool:
    """Does an Accept header ask for a Table (``application/json;as=Table;v=v1;g=meta.k8s.io``)?"""
    for part in accept.split(","):
        params = {p.strip().split("=", 1)[0]: p.strip().split("=", 1)[-1] for p in part.split(";")[1:]}
        if params.get("as") == "Table" and params.get("g", "meta.k8s.io") == "meta.k8s.io":
            return params.get("v", "v1") in ("v1", "v1beta1")
    return False
