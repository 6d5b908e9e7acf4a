"""Tables printed as kubectl prints them: uppercase headers, columns padded to the widest cell plus 3
(at least 6), the last column unpadded, widths remembered across watch rows, and the extra columns of
-A, -o wide and --show-labels."""

from __future__ import annotations

from typing import Any

from innermesh.cli.tables import AlignedWriter, TableOptions, cell_text, format_labels, table_lines

COLUMNS: list[dict[str, Any]] = [
    {"name": "Name", "type": "string", "format": "name", "priority": 0},
    {"name": "Type", "type": "string", "format": "", "priority": 0},
    {"name": "Cluster-IP", "type": "string", "format": "", "priority": 0},
    {"name": "Selector", "type": "string", "format": "", "priority": 1},
    {"name": "Age", "type": "string", "format": "", "priority": 0},
]


def row(name: str, ip: str, ns: str = "demo", labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"cells": [name, "ClusterIP", ip, "app=web", "5m"], "object": {"metadata": meta}}


TABLE = {
    "kind": "Table",
    "columnDefinitions": COLUMNS,
    "rows": [row("web", "10.96.0.10"), row("api", "10.96.0.200")],
}


def test_columns_align_like_kubectl() -> None:
    """Width = longest cell + 3; priority-1 columns hidden; last column not padded."""
    assert table_lines(TABLE, TableOptions()) == [
        "NAME   TYPE        CLUSTER-IP    AGE",
        "web    ClusterIP   10.96.0.10    5m",
        "api    ClusterIP   10.96.0.200   5m",
    ]


def test_minimum_width_is_six() -> None:
    """Short columns still take 6 characters, as kubectl's tabwriter minwidth."""
    assert AlignedWriter().format([["A", "B"], ["x", "y"]]) == ["A     B", "x     y"]


def test_wide_shows_priority_one_columns() -> None:
    """-o wide adds SELECTOR."""
    lines = table_lines(TABLE, TableOptions(wide=True))
    assert lines[0] == "NAME   TYPE        CLUSTER-IP    SELECTOR   AGE"
    assert lines[1] == "web    ClusterIP   10.96.0.10    app=web    5m"


def test_all_namespaces_puts_namespace_first_and_labels_last() -> None:
    """-A adds NAMESPACE in front; --show-labels adds LABELS at the end, <none> when there are none."""
    table = {
        "columnDefinitions": COLUMNS,
        "rows": [
            row("web", "10.96.0.10", "demo", {"b": "2", "a": "1"}),
            row("kubernetes", "10.96.0.1", "default"),
        ],
    }
    assert table_lines(table, TableOptions(namespace_column=True, show_labels=True)) == [
        "NAMESPACE   NAME         TYPE        CLUSTER-IP   AGE   LABELS",
        "demo        web          ClusterIP   10.96.0.10   5m    a=1,b=2",
        "default     kubernetes   ClusterIP   10.96.0.1    5m    <none>",
    ]


def test_several_kinds_prefix_names() -> None:
    """With several kinds the NAME column says which kind (service/web)."""
    assert table_lines(TABLE, TableOptions(name_prefix="service/"))[1].startswith("service/web   ")


def test_widths_are_remembered_across_watch_rows() -> None:
    """A later, narrower row keeps the header's columns; a wider one widens the column from then on."""
    writer = AlignedWriter()
    assert writer.format([["NAME", "READY"], ["a-long-name", "True"]]) == [
        "NAME          READY",
        "a-long-name   True",
    ]
    assert writer.format([["b", "False"]]) == ["b             False"]
    assert writer.format([["an-even-longer-name", "True"]]) == ["an-even-longer-name   True"]


def test_empty_table_prints_nothing() -> None:
    """No rows, no header (the caller says "No resources found")."""
    assert table_lines({"columnDefinitions": COLUMNS, "rows": []}, TableOptions()) == []


def test_cells_print_as_go_values() -> None:
    """None is <none>, booleans are lower case, whole floats are integers."""
    assert [cell_text(v) for v in (None, True, 3.0, 2.5, "x", 7)] == ["<none>", "true", "3", "2.5", "x", "7"]
    assert format_labels(None) == "<none>"
    assert format_labels({"z": "1", "a": "2"}) == "a=2,z=1"
