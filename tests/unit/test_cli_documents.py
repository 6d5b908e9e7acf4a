"""Manifests split into documents before parsing, so each document is numbered as YAML numbers it and
a malformed one is reported with its line and column in the file while the others are still read."""

from __future__ import annotations

from pathlib import Path

import pytest

from innermesh.cli.documents import (
    SourceError,
    collect_sources,
    parse_text,
    parse_yaml,
    read_documents,
    split_documents,
)

STREAM = """\
# comments before the first marker are not a document
---
apiVersion: v1
kind: Service
metadata: {name: a}
---
---
apiVersion: v1
kind: Service
  bad: [
--- # a comment after the marker
a: 1
a: 2
---
when: 2024-01-01
80: x
...
"""


def test_split_counts_documents_as_yaml_does() -> None:
    """Leading comments are no document; an empty document between two markers is one."""
    chunks = split_documents(STREAM)
    assert [c.index for c in chunks] == [1, 2, 3, 4, 5]
    assert [c.first_line for c in chunks] == [1, 5, 6, 10, 13]
    assert "kind: Service" in chunks[0].text


def test_no_markers_is_one_document() -> None:
    """A file without '---' is one document; an empty file is none."""
    assert [c.index for c in split_documents("a: 1\nb: 2\n")] == [1]
    assert split_documents("") == []
    assert split_documents("# just a comment\n\n") == []


def test_marker_needs_a_line_of_its_own() -> None:
    """'---x' and an indented '---' are content, not markers."""
    assert len(split_documents("a: |\n  ---\n  text\n---x: 1\n")) == 1


def test_each_document_parses_on_its_own() -> None:
    """Bad YAML names the file line and column; a duplicate key is an error; later documents still
    parse; timestamps stay strings and keys become strings, as kubectl reads them."""
    docs = parse_yaml("web.yaml", STREAM)
    assert docs[0].obj == {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}
    assert docs[1].obj is None
    assert (
        docs[2].error == "invalid YAML at line 10, column 6: mapping values are not allowed in this context"
    )
    assert docs[3].error.startswith("invalid YAML at line 13, column 1:")
    assert 'duplicate key "a"' in docs[3].error
    assert docs[4].obj == {"when": "2024-01-01", "80": "x"}
    assert [d.index for d in docs] == [1, 2, 3, 4, 5]


def test_json_files() -> None:
    """A JSON file may hold one object or several in a row; errors give line and column."""
    docs = parse_text("a.json", '{"a": 1}\n{"b": 2}\n')
    assert [d.obj for d in docs] == [{"a": 1}, {"b": 2}]
    bad = parse_text("b.json", '{"a": 1,\n  "b": }')
    assert bad[0].error == "invalid JSON at line 2, column 8: Expecting value"


def test_non_json_values_are_refused() -> None:
    """YAML values JSON cannot hold (.inf, binary) are an error for that document."""
    docs = parse_yaml("x.yaml", "a: .inf\n---\nb: 1\n")
    assert docs[0].error.startswith("invalid value: a:")
    assert docs[1].obj == {"b": 1}


def test_directories_are_read_in_name_order(tmp_path: Path) -> None:
    """*.yaml, *.yml and *.json in name order; subdirectories only with -R."""
    for name in ("b.yaml", "a.yml", "c.json", "notes.txt", "sub/d.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x: 1\n" if not name.endswith(".json") else '{"x": 1}')
    names = [Path(p).name for p in collect_sources([str(tmp_path)])]
    assert names == ["a.yml", "b.yaml", "c.json"]
    names = [Path(p).name for p in collect_sources([str(tmp_path)], recursive=True)]
    assert names == ["a.yml", "b.yaml", "c.json", "d.yaml"]
    assert [d.obj for d in read_documents(collect_sources([str(tmp_path)]))] == [{"x": 1}] * 3


def test_missing_sources_fail_before_anything_is_read(tmp_path: Path) -> None:
    """A path that does not exist, a URL, or a directory without manifests is an error up front."""
    with pytest.raises(SourceError, match="does not exist"):
        collect_sources([str(tmp_path / "nope.yaml")])
    with pytest.raises(SourceError, match="URLs"):
        collect_sources(["https://example.com/x.yaml"])
    with pytest.raises(SourceError, match=r"no \.yaml"):
        collect_sources([str(tmp_path)])
