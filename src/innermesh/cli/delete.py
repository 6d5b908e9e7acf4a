"""``innermesh delete``: objects by name, by the manifests that describe them, or by label / all.

Prints ``service "web" deleted`` per object, as kubectl does. An object that is not there is an error
naming it (exit 1), unless ``--ignore-not-found``; the other objects are still deleted.
"""

from __future__ import annotations

import argparse
from typing import Any

from innermesh.api import status as errors
from innermesh.api.registry import Kind
from innermesh.cli import apply, common, documents
from innermesh.cli.get import parse_resources
from innermesh.client.http import HttpClient


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "delete",
        help="delete objects by name, by manifest, by label or all of a kind",
        description="Delete objects: KIND NAME..., KIND/NAME..., -f FILE, or KIND with -l SELECTOR or --all.",
    )
    p.add_argument("resources", nargs="*", metavar="KIND[,KIND...] [NAME...] | KIND/NAME...")
    p.add_argument(
        "-f", "--filename", action="append", metavar="FILE|DIR|-", help="delete what these manifests describe"
    )
    p.add_argument("-R", "--recursive", action="store_true", help="with -f DIR: also read subdirectories")
    p.add_argument("-n", "--namespace", help="the namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="with -l or --all: in every namespace")
    p.add_argument("-l", "--selector", default="", help="delete the objects of KIND with these labels")
    p.add_argument("--all", action="store_true", help="delete every object of KIND in the namespace")
    p.add_argument(
        "--ignore-not-found", action="store_true", help="an object that is not there is not an error"
    )
    p.add_argument(
        "--dry-run", choices=("none", "server"), default="none", help="server: check, delete nothing"
    )
    common.add_connection_flags(p, top_level=False)
    p.set_defaults(run=run)


def _deleted(kind: Kind, name: str, dry_run: bool) -> str:
    return f'{common.qualified(kind)} "{name}" deleted' + (" (server dry run)" if dry_run else "")


async def _delete_one(
    client: HttpClient, kind: Kind, namespace: str | None, name: str, args: argparse.Namespace
) -> str | None:
    """Delete one object; None when done, or the error line."""
    dry_run = args.dry_run == "server"
    try:
        await client.delete(kind, common.scope(kind, namespace), name, dry_run=dry_run)
    except errors.ApiError as e:
        if common.is_unreachable(e):
            raise common.CliError(f"error: {e.message}") from None
        if e.code == 404 and args.ignore_not_found:
            return None
        return common.server_error(e)
    common.out(_deleted(kind, name, dry_run))
    return None


async def run(args: argparse.Namespace) -> int:
    by_files = bool(args.filename)
    bulk = bool(args.selector) or args.all
    if by_files and (args.resources or bulk):
        raise common.UsageError("error: -f cannot be combined with KIND, NAME, -l or --all")
    if not by_files and not args.resources:
        raise common.UsageError(
            "error: say what to delete: KIND NAME..., KIND/NAME..., -f FILE, or KIND with -l/--all"
        )
    if args.all_namespaces and args.namespace:
        raise common.UsageError("error: -n/--namespace and -A/--all-namespaces cannot be used together")
    if args.all_namespaces and not bulk:
        raise common.UsageError("error: -A/--all-namespaces needs -l or --all")
    client = common.make_client(args)
    try:
        if by_files:
            return await _delete_files(client, args)
        request = parse_resources(args.resources)
        namespace = None if args.all_namespaces else common.namespace_arg(args)
        if bulk:
            if any(names for _, names in request.targets):
                raise common.UsageError("error: names cannot be combined with -l or --all")
            return await _delete_bulk(client, args, [k for k, _ in request.targets], namespace)
        problems = []
        for kind, names in request.targets:
            if not names:
                raise common.UsageError(
                    f"error: name the {kind.plural} to delete, or use -l SELECTOR or --all"
                )
            for name in names:
                problem = await _delete_one(client, kind, namespace, name, args)
                if problem:
                    problems.append(problem)
        for p in problems:
            common.err(p)
        return common.EXIT_FAILED if problems else common.EXIT_OK
    finally:
        await client.close()


async def _delete_bulk(
    client: HttpClient, args: argparse.Namespace, kinds: list[Kind], namespace: str | None
) -> int:
    found = 0
    problems = []
    for kind in kinds:
        try:
            items, _rv = await client.list(kind, common.scope(kind, namespace), args.selector)
        except errors.ApiError as e:
            raise common.CliError(common.server_error(e)) from None
        for obj in items:
            meta = obj.get("metadata") or {}
            found += 1
            problem = await _delete_one(client, kind, meta.get("namespace"), meta.get("name", ""), args)
            # Gone meanwhile is what was asked for.
            if problem and "(NotFound)" not in problem:
                problems.append(problem)
    if not found:
        common.err(
            "No resources found" if namespace is None else f"No resources found in {namespace} namespace."
        )
    for p in problems:
        common.err(p)
    return common.EXIT_FAILED if problems else common.EXIT_OK


async def _delete_files(client: HttpClient, args: argparse.Namespace) -> int:
    try:
        sources = documents.collect_sources(args.filename, args.recursive)
    except documents.SourceError as e:
        raise common.CliError(f"error: {e}") from None
    failed = False
    for doc in documents.read_documents(sources):
        if doc.error:
            common.err(f"error: {doc.source}: document {doc.index}: {doc.error}")
            failed = True
            continue
        for label, obj in apply.document_objects(doc):
            try:
                kind, namespace, name, _config = apply.prepare(obj, args.namespace)
            except apply.DocumentError as e:
                for detail in e.details:
                    common.err(f"error: {doc.source}: {label}: {detail}")
                failed = True
                continue
            problem = await _delete_one(client, kind, namespace, name, args)
            if problem:
                common.err(problem)
                failed = True
    return common.EXIT_FAILED if failed else common.EXIT_OK
