"""``innermesh apply -f FILE|DIR|-``: create each document's object, or patch it to match the file.

Client-side apply, as ``kubectl apply`` does it (see ``threeway``): the applied configuration is kept in
the ``kubectl.kubernetes.io/last-applied-configuration`` annotation, and an existing object is changed by
a three-way patch, so the two tools can take turns on the same objects. One line per document on
stdout (``service/web created``, ``... configured``, ``... unchanged``). A document that fails (bad YAML,
no kind, unknown kind, refused by the server) is reported on stderr with its file and index and every
field the server named; it changes nothing, the other documents are still applied, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from innermesh.api import status as errors
from innermesh.api.registry import Kind, UnknownKind
from innermesh.api.scheme import REGISTRY
from innermesh.cli import common, documents, threeway
from innermesh.client.http import HttpClient

MAX_CONFLICT_RETRIES = 5


class DocumentError(Exception):
    """One document could not be applied; ``details`` are the lines after the document's name."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


@dataclass(frozen=True, slots=True)
class Options:
    namespace: str | None = None  # -n; documents' own metadata.namespace comes first
    dry_run: str = "none"  # none | server | client


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "apply",
        help="create or update objects from YAML or JSON manifests",
        description="Create each object in the manifests, or update it to match them (client-side apply, "
        "interoperable with kubectl apply).",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="a manifest file, a directory of *.yaml/*.yml/*.json files, or - for stdin (repeatable)",
    )
    p.add_argument("-R", "--recursive", action="store_true", help="also read subdirectories of DIR")
    p.add_argument(
        "-n", "--namespace", help="namespace for documents that do not name one (default: default)"
    )
    p.add_argument(
        "--dry-run",
        choices=("none", "server", "client"),
        default="none",
        help="server: have the server validate and admit without storing; client: only compute",
    )
    common.add_connection_flags(p, top_level=False)
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    try:
        sources = documents.collect_sources(args.filename, args.recursive)
    except documents.SourceError as e:
        raise common.CliError(f"error: {e}") from None
    options = Options(namespace=args.namespace, dry_run=args.dry_run)
    client = common.make_client(args)
    failed = False
    try:
        for doc in documents.read_documents(sources):
            if doc.error:
                common.err(f"error: {doc.source}: document {doc.index}: {doc.error}")
                failed = True
                continue
            for label, obj in document_objects(doc):
                try:
                    common.out(await apply_object(client, obj, options))
                except DocumentError as e:
                    for detail in e.details:
                        common.err(f"error: {doc.source}: {label}: {detail}")
                    failed = True
    finally:
        await client.close()
    return common.EXIT_FAILED if failed else common.EXIT_OK


def document_objects(doc: documents.Document) -> Iterator[tuple[str, Any]]:
    """The objects of a document with the label errors use: a ``kind: List`` yields its items."""
    obj = doc.obj
    if obj is None:
        return
    base = f"document {doc.index}"
    if isinstance(obj, dict) and str(obj.get("kind") or "").endswith("List") and "items" in obj:
        items = obj.get("items")
        if not isinstance(items, list):
            yield base, obj  # reported by apply_object as it stands
            return
        for n, item in enumerate(items, 1):
            yield f"{base}, item {n}{_what(item)}", item
        return
    yield base + _what(obj), obj


def _what(obj: Any) -> str:
    """`` (Service "web")`` when the document says that much."""
    if not isinstance(obj, dict):
        return ""
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    if isinstance(kind, str) and kind and isinstance(name, str) and name:
        return f' ({kind} "{name}")'
    if isinstance(kind, str) and kind:
        return f" ({kind})"
    return ""


def prepare(obj: Any, default_namespace: str | None) -> tuple[Kind, str | None, str, dict[str, Any]]:
    """Check a document and resolve its kind: (kind, namespace, name, configuration to apply)."""
    if not isinstance(obj, dict):
        raise DocumentError(["the document is not an object (a mapping of apiVersion, kind, metadata...)"])
    problems = []
    api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        problems.append("apiVersion not set")
    if not isinstance(kind_name, str) or not kind_name:
        problems.append("kind not set")
    if problems:
        raise DocumentError([", ".join(problems)])
    assert isinstance(api_version, str)
    assert isinstance(kind_name, str)
    try:
        kind = REGISTRY.by_gvk(api_version, kind_name)
    except UnknownKind:
        raise DocumentError([f'no matches for kind "{kind_name}" in version "{api_version}"']) from None
    config = copy.deepcopy(obj)
    meta = config.get("metadata")
    if meta is None:
        meta = config["metadata"] = {}
    if not isinstance(meta, dict):
        raise DocumentError(["metadata: must be an object"])
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        detail = "metadata.name is required"
        if meta.get("generateName"):
            detail += " (apply cannot use generateName: it needs one name to find the object again)"
        raise DocumentError([detail])
    namespace: str | None = None
    if kind.namespaced:
        ns = meta.get("namespace")
        if ns is not None and not isinstance(ns, str):
            raise DocumentError(["metadata.namespace: must be a string"])
        namespace = ns or default_namespace or common.DEFAULT_NAMESPACE
        meta["namespace"] = namespace
    else:
        # As the Kubernetes API server does, a namespace on a cluster-scoped object means nothing.
        meta.pop("namespace", None)
    return kind, namespace, name, config


async def apply_object(client: HttpClient, obj: Any, options: Options) -> str:
    """Create or patch one object; the line to print. Raises DocumentError."""
    kind, namespace, name, config = prepare(obj, options.namespace)
    modified = threeway.annotated(config)
    what = f"{common.qualified(kind)}/{name}"
    suffix = {"server": " (server dry run)", "client": " (dry run)"}.get(options.dry_run, "")
    server_dry_run = options.dry_run == "server"
    try:
        for _attempt in range(MAX_CONFLICT_RETRIES):
            try:
                current = await client.get(kind, namespace, name)
            except errors.ApiError as e:
                if e.code != 404 or common.is_unreachable(e):
                    raise
                if options.dry_run != "client":
                    try:
                        await client.create(kind, namespace, modified, dry_run=server_dry_run)
                    except errors.ApiError as e2:
                        if e2.code == 409 and e2.reason == "AlreadyExists":
                            continue  # created meanwhile: patch it instead
                        raise
                return f"{what} created{suffix}"
            original = threeway.last_applied(current)
            if original is None:
                common.err(
                    f"Warning: resource {kind.group_resource}/{name} is missing the "
                    f"{threeway.LAST_APPLIED} annotation which is required by apply. apply should only be "
                    "used on resources created declaratively by apply. The missing annotation will be "
                    "patched automatically."
                )
            try:
                patch_type, patch = threeway.three_way_patch(
                    original, modified, current, strategic=kind.strategic_merge, schema=kind.model
                )
            except threeway.PatchError as e:
                raise DocumentError([f"cannot compute the patch: {e}"]) from None
            if not patch:
                return f"{what} unchanged{suffix}"
            if options.dry_run == "client":
                return f"{what} configured{suffix}"
            try:
                result = await client.patch(kind, namespace, name, patch_type, patch, dry_run=server_dry_run)
            except errors.ApiError as e:
                if e.code == 409 and e.reason == "Conflict":
                    continue
                if e.code == 404 and not common.is_unreachable(e) and e.kind == kind.plural:
                    continue  # deleted meanwhile: create it
                raise
            # A non-empty patch can still change nothing: a list the server defaulted inside (a
            # Workload's ports[].protocol) differs from the file's, so a JSON merge patch resends it and
            # the server defaults it again. kubectl says "configured" then; the object says otherwise.
            changed = not same_object(result, current)
            return f"{what} {'configured' if changed else 'unchanged'}{suffix}"
        raise DocumentError(
            [f"gave up after {MAX_CONFLICT_RETRIES} conflicting concurrent changes; try again"]
        )
    except errors.ApiError as e:
        if common.is_unreachable(e):
            raise common.CliError(f"error: {e.message}") from None
        raise DocumentError(error_details(e)) from None


def same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for what every write moves (resourceVersion, generation, managedFields)."""

    def strip(obj: dict[str, Any]) -> dict[str, Any]:
        meta = {
            k: v
            for k, v in (obj.get("metadata") or {}).items()
            if k not in ("resourceVersion", "generation", "managedFields")
        }
        return {**obj, "metadata": meta}

    return threeway.same(strip(a), strip(b))


def error_details(e: errors.ApiError) -> list[str]:
    """Every field the server named (``spec.ports[0].port: Invalid value: ...``), or its message."""
    if e.code == 422 and e.causes:
        return [c for c in e.field_causes if c] or [e.message]
    return [e.message]
