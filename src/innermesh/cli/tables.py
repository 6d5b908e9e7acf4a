"""Printing the server's meta.k8s.io/v1 Tables the way kubectl prints them (pure).

kubectl writes tables through a tabwriter with a minimum cell width of 6, a padding of 3 spaces and
remembered widths: a column is as wide as its widest cell so far plus 3 (at least 6), never narrower
than it was for earlier rows, so the rows of ``get -w`` stay under the header they were printed with.
The last column is not padded. Headers are the column names in upper case.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_WIDTH = 6
PADDING = 3


@dataclass
class AlignedWriter:
    """Formats rows into aligned lines, remembering column widths across calls."""

    widths: list[int] = field(default_factory=list)

    def format(self, rows: Sequence[Sequence[str]]) -> list[str]:
        for row in rows:
            for i, cell in enumerate(row[:-1]):
                width = max(MIN_WIDTH, len(cell) + PADDING)
                if i < len(self.widths):
                    self.widths[i] = max(self.widths[i], width)
                else:
                    self.widths.append(width)
        lines = []
        for row in rows:
            parts = [cell.ljust(self.widths[i]) for i, cell in enumerate(row[:-1])]
            if row:
                parts.append(row[-1])
            lines.append("".join(parts))
        return lines


def cell_text(value: Any) -> str:
    """A table cell as kubectl prints it (Go's %v of the decoded JSON value)."""
    if value is None:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_labels(labels: dict[str, str] | None) -> str:
    """``a=1,b=2`` sorted by key, or ``<none>`` (kubectl's labels.FormatLabels)."""
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class TableOptions:
    wide: bool = False  # priority-1 columns too (-o wide)
    namespace_column: bool = False  # NAMESPACE first (-A)
    show_labels: bool = False  # LABELS last (--show-labels)
    name_prefix: str = ""  # "service/" when several kinds are printed together


def _visible(columns: list[dict[str, Any]], wide: bool) -> list[int]:
    return [i for i, c in enumerate(columns) if wide or int(c.get("priority") or 0) == 0]


def header(columns: list[dict[str, Any]], options: TableOptions) -> list[str]:
    names = [str(columns[i].get("name", "")).upper() for i in _visible(columns, options.wide)]
    if options.namespace_column:
        names.insert(0, "NAMESPACE")
    if options.show_labels:
        names.append("LABELS")
    return names


def row_cells(columns: list[dict[str, Any]], row: dict[str, Any], options: TableOptions) -> list[str]:
    """One table row as strings, with the extra columns the options ask for."""
    cells = list(row.get("cells") or [])
    meta = (row.get("object") or {}).get("metadata") or {}
    out = []
    for i in _visible(columns, options.wide):
        value = cells[i] if i < len(cells) else None
        text = cell_text(value)
        if options.name_prefix and columns[i].get("format") == "name":
            text = options.name_prefix + text
        out.append(text)
    if options.namespace_column:
        out.insert(0, str(meta.get("namespace") or ""))
    if options.show_labels:
        out.append(format_labels(meta.get("labels")))
    return out


def table_lines(
    table: dict[str, Any],
    options: TableOptions,
    writer: AlignedWriter | None = None,
    with_header: bool = True,
) -> list[str]:
    """A whole Table as aligned lines (header first), or no lines when it has no rows."""
    columns = list(table.get("columnDefinitions") or [])
    rows = list(table.get("rows") or [])
    if not rows:
        return []
    body = [row_cells(columns, r, options) for r in rows]
    if with_header:
        body.insert(0, header(columns, options))
    return (writer or AlignedWriter()).format(body)
