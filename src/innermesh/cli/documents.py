"""Manifests: files, directories and stdin split into documents, each parsed on its own.

A stream is cut into documents at YAML's document markers (a line starting with ``---``, or ending a
document with ``...``) before any parsing, so a malformed document is reported with its own index and its
line and column in the file, and the documents around it are still read. Documents are numbered from 1 as
YAML numbers them (``yaml.safe_load_all`` would give the same order): text before the first ``---``
counts only if it holds more than comments.

Values are read as kubectl reads them (YAML 1.1 through JSON): timestamps stay strings, map keys become
strings, and a key given twice is an error rather than silently the last one.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXTENSIONS = (".yaml", ".yml", ".json")
STDIN = "-"
STDIN_NAME = "<stdin>"

_DOC_START = re.compile(r"^---(?=\s|$)")
_DOC_END = re.compile(r"^\.\.\.(?=\s|$)")


class SourceError(Exception):
    """A -f argument that cannot be read (missing file, unreadable directory, URL)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One document's text, the index YAML gives it (from 1), and the file line it starts on (from 0)."""

    index: int
    text: str
    first_line: int


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed document: ``obj`` (None when empty) or ``error`` (with line and column)."""

    source: str
    index: int
    obj: Any = None
    error: str = ""


def _has_content(lines: list[str]) -> bool:
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "%")):
            return True
    return False


def split_documents(text: str) -> list[Chunk]:
    """Cut a YAML stream into documents at ``---`` and ``...`` lines, keeping line numbers."""
    chunks: list[Chunk] = []
    lines = text.splitlines(keepends=True)
    current: list[str] = []
    start = 0
    explicit = False  # did this document begin with '---' (then it counts even when empty)?

    def close() -> None:
        if explicit or _has_content(current):
            chunks.append(Chunk(len(chunks) + 1, "".join(current), start))

    for n, line in enumerate(lines):
        if _DOC_START.match(line):
            close()
            # What follows '---' on its line belongs to the new document; blank out the marker so
            # columns stay right.
            current, start, explicit = ["   " + line[3:]], n, True
        elif _DOC_END.match(line):
            close()
            current, start, explicit = [], n + 1, False
        else:
            current.append(line)
    close()
    return chunks


# ---------------------------------------------------------------------------------------------------
# Parsing one document


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """SafeLoader without timestamps, refusing duplicate keys."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        key = _json_key(key)
        if key in out:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f'found duplicate key "{key}"',
                key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


def _jsonable(value: Any, path: str = "") -> Any:
    """Check that a parsed value is JSON (what the API takes); raise ValueError naming where not."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{path or 'the document'}: {value} is not a JSON number")
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{path or 'the document'}: a {type(value).__name__} value is not JSON")


def _yaml_error(e: yaml.YAMLError, first_line: int) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    what = f"{context}: {problem}" if context and problem else problem
    if mark is None:
        return f"invalid YAML: {what}"
    return f"invalid YAML at line {first_line + mark.line + 1}, column {mark.column + 1}: {what}"


def parse_yaml(source: str, text: str) -> list[Document]:
    """The documents of a YAML (or JSON) stream, each parsed separately."""
    docs: list[Document] = []
    for chunk in split_documents(text):
        try:
            obj = yaml.load(chunk.text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
            obj = _jsonable(obj)
        except yaml.YAMLError as e:
            docs.append(Document(source, chunk.index, error=_yaml_error(e, chunk.first_line)))
            continue
        except ValueError as e:
            docs.append(Document(source, chunk.index, error=f"invalid value: {e}"))
            continue
        docs.append(Document(source, chunk.index, obj))
    return docs


def parse_json(source: str, text: str) -> list[Document]:
    """The objects of a JSON file (one, or several one after another)."""
    decoder = json.JSONDecoder()
    docs: list[Document] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            docs.append(
                Document(
                    source, len(docs) + 1, error=f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
                )
            )
            return docs
        docs.append(Document(source, len(docs) + 1, obj))


def parse_text(source: str, text: str) -> list[Document]:
    """JSON when the file says so (by its name, or by starting with '{'), YAML otherwise."""
    if source.endswith(".json") or text.lstrip().startswith("{"):
        return parse_json(source, text)
    return parse_yaml(source, text)


# ---------------------------------------------------------------------------------------------------
# Sources


def manifest_files(path: Path, recursive: bool) -> list[Path]:
    """A directory's manifests in name order, walking into subdirectories (in the same order, as
    kubectl's walk does) only when ``recursive``."""
    out: list[Path] = []
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror or e}") from None
    for entry in entries:
        if entry.is_dir():
            if recursive:
                out += manifest_files(Path(entry.path), recursive)
        elif entry.name.endswith(EXTENSIONS):
            out.append(Path(entry.path))
    return out


def collect_sources(args: list[str], recursive: bool = False) -> list[str]:
    """The files that -f arguments name ("-" for stdin), checked before anything is read, so that a
    typo in the last argument does not leave the first ones half applied."""
    out: list[str] = []
    for arg in args:
        if arg == STDIN:
            out.append(STDIN)
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*://", arg):
            raise SourceError(f"{arg}: reading manifests from URLs is not supported; download the file first")
        path = Path(arg)
        if path.is_dir():
            files = manifest_files(path, recursive)
            if not files:
                raise SourceError(f"{arg}: no .yaml, .yml or .json files in this directory")
            out += [str(f) for f in files]
        elif path.exists():
            out.append(arg)
        else:
            raise SourceError(f'the path "{arg}" does not exist')
    return out


def read_documents(sources: list[str]) -> Iterator[Document]:
    """Every document of every source, in order. A file that cannot be read is one error document."""
    for source in sources:
        if source == STDIN:
            yield from parse_text(STDIN_NAME, sys.stdin.read())
            continue
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            yield Document(source, 0, error=f"cannot read the file: {getattr(e, 'strerror', None) or e}")
            continue
        yield from parse_text(source, text)
