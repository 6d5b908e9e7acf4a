"""``innermesh get KIND[,KIND...] [NAME...]``: tables from the server, or objects as YAML, JSON or names.

Tables are the server's (meta.k8s.io/v1 Table, see ``apiserver.tables``), printed as kubectl prints them
(``cli.tables``). ``-w`` prints the list, then one row per change as it happens: it watches from the
list's resourceVersion and, when the server ends the watch, watches again from the last resourceVersion
it saw (after a compaction, 410 Expired, it lists again). Ctrl-C ends it with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any

from innermesh.api import status as errors
from innermesh.api.registry import Kind, UnknownKind
from innermesh.api.scheme import REGISTRY
from innermesh.cli import common
from innermesh.cli.tables import AlignedWriter, TableOptions, header, row_cells, table_lines
from innermesh.cli.watch import watch_events
from innermesh.client.http import HttpClient, resource_path

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
OUTPUTS = ("yaml", "json", "wide", "name")
# The kinds ``get all`` shows: the mesh's everyday objects.
ALL_KINDS = ("services", "workloads")
# Re-watch backoff after the connection breaks (the server restarting), and how long to keep trying.
REWATCH_DELAY = 0.5
REWATCH_GIVE_UP = 30.0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "get",
        help="list objects, or show some by name",
        description="Show objects as a table (the server's columns), or as YAML, JSON or names.",
    )
    p.add_argument("resources", nargs="+", metavar="KIND[,KIND...] [NAME...] | KIND/NAME...")
    p.add_argument("-n", "--namespace", help="the namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="objects in every namespace")
    p.add_argument("-l", "--selector", default="", help="label selector (app=web,tier!=db,...)")
    p.add_argument("--field-selector", default="", help="field selector (metadata.name=web)")
    p.add_argument("-o", "--output", choices=OUTPUTS, help="yaml, json, wide (more columns) or name")
    p.add_argument("-w", "--watch", action="store_true", help="after the list, print changes as they happen")
    p.add_argument("--output-watch-events", action="store_true", help="with -w: an EVENT column first")
    p.add_argument("--show-labels", action="store_true", help="a LABELS column last")
    # For tests: ask the server to end each watch after this many seconds (then get watches again).
    p.add_argument("--watch-timeout", type=int, default=None, help=argparse.SUPPRESS)
    common.add_connection_flags(p, top_level=False)
    p.set_defaults(run=run)


@dataclass(frozen=True, slots=True)
class Request:
    """What to get: (kind, names) pairs in the order asked, and whether ``all`` or several kinds were
    asked (then names print as ``kind/name``)."""

    targets: list[tuple[Kind, list[str]]]
    several: bool


def parse_resources(words: list[str]) -> Request:
    """kubectl's forms: ``KIND[,KIND...] [NAME...]`` or ``KIND/NAME...``."""
    if any("/" in w for w in words):
        if not all("/" in w for w in words):
            raise common.UsageError(
                "error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form"
            )
        by_kind: dict[Kind, list[str]] = {}
        for w in words:
            kind_name, _, name = w.partition("/")
            if not name:
                raise common.UsageError(
                    f"error: arguments in resource/name form must have a single resource and name: {w!r}"
                )
            by_kind.setdefault(common.resolve_kind(kind_name), []).append(name)
        return Request(list(by_kind.items()), len(by_kind) > 1)
    kinds_word, names = words[0], words[1:]
    kinds: list[Kind] = []
    several = False
    for part in kinds_word.split(","):
        if not part:
            continue
        if part == "all":
            several = True
            for k in ALL_KINDS:
                try:
                    kinds.append(REGISTRY.resolve(k))
                except UnknownKind:
                    continue
        else:
            kinds.append(common.resolve_kind(part))
    if not kinds:
        raise common.UsageError("error: name a kind to get (e.g. services)")
    unique = list(dict.fromkeys(kinds))
    if names and len(unique) > 1:
        raise common.UsageError("error: names can only be given with one kind (or use KIND/NAME)")
    return Request([(k, list(names)) for k in unique], several or len(unique) > 1)


async def run(args: argparse.Namespace) -> int:
    if args.all_namespaces and args.namespace:
        raise common.UsageError("error: -n/--namespace and -A/--all-namespaces cannot be used together")
    request = parse_resources(args.resources)
    if args.watch and (len(request.targets) != 1 or len(request.targets[0][1]) > 1):
        raise common.UsageError("error: -w/--watch works on one kind, and at most one name")
    namespace = None if args.all_namespaces else common.namespace_arg(args)
    client = common.make_client(args)
    try:
        if args.watch:
            return await _watch(client, args, request.targets[0], namespace)
        if args.output in ("yaml", "json", "name"):
            return await _print_objects(client, args, request, namespace)
        return await _print_tables(client, args, request, namespace)
    except errors.ApiError as e:
        raise common.CliError(common.server_error(e)) from None
    finally:
        await client.close()


def _params(args: argparse.Namespace) -> dict[str, str]:
    params = {}
    if args.selector:
        params["labelSelector"] = args.selector
    if args.field_selector:
        params["fieldSelector"] = args.field_selector
    return params


def _table_options(args: argparse.Namespace, kind: Kind, several: bool) -> TableOptions:
    return TableOptions(
        wide=args.output == "wide",
        namespace_column=bool(args.all_namespaces and kind.namespaced),
        show_labels=args.show_labels,
        name_prefix=f"{common.qualified(kind)}/" if several else "",
    )


def _no_resources(namespace: str | None, kinds: list[Kind]) -> str:
    if namespace is None or not any(k.namespaced for k in kinds):
        return "No resources found"
    return f"No resources found in {namespace} namespace."


async def _table(
    client: HttpClient, args: argparse.Namespace, kind: Kind, names: list[str], namespace: str | None
) -> tuple[dict[str, Any], list[str]]:
    """One kind's Table (one request for a list, one per name), and the errors for missing names."""
    ns = common.scope(kind, namespace)
    if not names:
        table: dict[str, Any] = await client.request(
            "GET", resource_path(kind, ns), params=_params(args), headers={"Accept": TABLE_ACCEPT}
        )
        return table, []
    merged: dict[str, Any] = {"columnDefinitions": [], "rows": []}
    problems = []
    for name in names:
        try:
            one = await client.request("GET", resource_path(kind, ns, name), headers={"Accept": TABLE_ACCEPT})
        except errors.ApiError as e:
            if e.code == 404 and not common.is_unreachable(e):
                problems.append(common.server_error(e))
                continue
            raise
        merged["columnDefinitions"] = one.get("columnDefinitions") or merged["columnDefinitions"]
        merged["rows"] += one.get("rows") or []
    return merged, problems


async def _print_tables(
    client: HttpClient, args: argparse.Namespace, request: Request, namespace: str | None
) -> int:
    printed = 0
    problems: list[str] = []
    for kind, names in request.targets:
        table, missing = await _table(client, args, kind, names, namespace)
        problems += missing
        lines = table_lines(table, _table_options(args, kind, request.several))
        if not lines:
            continue
        if printed:
            common.out()
        for line in lines:
            common.out(line)
        printed += 1
    for p in problems:
        common.err(p)
    if not printed and not problems:
        common.err(_no_resources(namespace, [k for k, _ in request.targets]))
    return common.EXIT_FAILED if problems else common.EXIT_OK


def _with_type(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": kind.api_version, "kind": kind.kind, **obj}


async def _objects(
    client: HttpClient, args: argparse.Namespace, kind: Kind, names: list[str], namespace: str | None
) -> tuple[list[dict[str, Any]], list[str]]:
    ns = common.scope(kind, namespace)
    if not names:
        items, _rv = await client.list(kind, ns, args.selector, args.field_selector)
        return [_with_type(kind, o) for o in items], []
    found, problems = [], []
    for name in names:
        try:
            found.append(_with_type(kind, await client.get(kind, ns, name)))
        except errors.ApiError as e:
            if e.code == 404 and not common.is_unreachable(e):
                problems.append(common.server_error(e))
                continue
            raise
    return found, problems


def print_object_or_list(objs: list[dict[str, Any]], single: bool, output: str) -> None:
    """One object as itself, or several as a List, as kubectl prints -o yaml/json."""
    doc: Any = (
        objs[0]
        if single and len(objs) == 1
        else {
            "apiVersion": "v1",
            "items": objs,
            "kind": "List",
            "metadata": {"resourceVersion": ""},
        }
    )
    common.out((common.to_yaml(doc) if output == "yaml" else common.to_json(doc)).rstrip("\n"))


def object_name(kind: Kind, obj: dict[str, Any]) -> str:
    return f"{common.qualified(kind)}/{(obj.get('metadata') or {}).get('name', '')}"


async def _print_objects(
    client: HttpClient, args: argparse.Namespace, request: Request, namespace: str | None
) -> int:
    everything: list[tuple[Kind, dict[str, Any]]] = []
    problems: list[str] = []
    for kind, names in request.targets:
        objs, missing = await _objects(client, args, kind, names, namespace)
        problems += missing
        everything += [(kind, o) for o in objs]
    if args.output == "name":
        for kind, obj in everything:
            common.out(object_name(kind, obj))
    elif everything or not problems:
        asked_one = len(request.targets) == 1 and len(request.targets[0][1]) == 1
        if everything or not asked_one:
            print_object_or_list([o for _, o in everything], asked_one, args.output)
    for p in problems:
        common.err(p)
    if not everything and not problems and args.output == "name":
        common.err(_no_resources(namespace, [k for k, _ in request.targets]))
    return common.EXIT_FAILED if problems else common.EXIT_OK


# ---------------------------------------------------------------------------------------------------
# Watch


@dataclass
class _WatchPrinter:
    """Prints the rows (or objects) of a watch as they come, under one header."""

    args: argparse.Namespace
    kind: Kind
    writer: AlignedWriter
    columns: list[dict[str, Any]]
    header_printed: bool = False

    @property
    def table_mode(self) -> bool:
        return self.args.output not in ("yaml", "json", "name")

    def rows(self, table: dict[str, Any], event_type: str) -> None:
        if table.get("columnDefinitions"):
            self.columns = list(table["columnDefinitions"])
        rows = table.get("rows") or []
        if not rows:
            return
        options = _table_options(self.args, self.kind, several=False)
        events = self.args.output_watch_events
        lines: list[list[str]] = []
        if not self.header_printed:
            head = header(self.columns, options)
            lines.append(["EVENT", *head] if events else head)
            self.header_printed = True
        for row in rows:
            cells = row_cells(self.columns, row, options)
            lines.append([event_type, *cells] if events else cells)
        for line in self.writer.format(lines):
            common.out(line)

    def obj(self, obj: dict[str, Any], event_type: str) -> None:
        obj = _with_type(self.kind, obj)
        if self.args.output == "name":
            common.out(object_name(self.kind, obj))
        elif self.args.output == "yaml":
            common.out("---\n" + common.to_yaml(obj).rstrip("\n"))
        else:
            common.out(common.to_json(obj))


def _rv_of(obj: dict[str, Any] | None) -> str | None:
    rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else None


async def _list_for_watch(
    client: HttpClient,
    args: argparse.Namespace,
    kind: Kind,
    ns: str | None,
    params: dict[str, str],
    printer: _WatchPrinter,
) -> str:
    """List and print; the list's resourceVersion."""
    if printer.table_mode:
        table: dict[str, Any] = await client.request(
            "GET", resource_path(kind, ns), params=params, headers={"Accept": TABLE_ACCEPT}
        )
        if table.get("rows"):
            printer.rows(table, "ADDED")
        return _rv_of(table) or "0"
    listing: dict[str, Any] = await client.request("GET", resource_path(kind, ns), params=params)
    for obj in listing.get("items") or []:
        printer.obj(obj, "ADDED")
    return _rv_of(listing) or "0"


async def _watch(
    client: HttpClient, args: argparse.Namespace, target: tuple[Kind, list[str]], namespace: str | None
) -> int:
    kind, names = target
    ns = common.scope(kind, namespace)
    params = _params(args)
    if names:
        selector = f"metadata.name={names[0]}"
        params["fieldSelector"] = (
            f"{params['fieldSelector']},{selector}" if "fieldSelector" in params else selector
        )
    printer = _WatchPrinter(args, kind, AlignedWriter(), [])
    rv = await _list_for_watch(client, args, kind, ns, params, printer)
    if not printer.header_printed and printer.table_mode and not names:
        common.err(_no_resources(namespace, [kind]))
    accept = TABLE_ACCEPT if printer.table_mode else "application/json"
    token = common.token(args)
    broken_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        watch_params = {**params, "watch": "true", "allowWatchBookmarks": "true", "resourceVersion": rv}
        if args.watch_timeout:
            watch_params["timeoutSeconds"] = str(args.watch_timeout)
        started = loop.time()
        try:
            async for event in watch_events(
                client.server, token, resource_path(kind, ns), watch_params, accept
            ):
                broken_since = None
                etype, obj = event.get("type", ""), event.get("object") or {}
                if etype == "BOOKMARK":
                    rv = _rv_of(obj) or rv
                    continue
                if printer.table_mode:
                    rows = obj.get("rows") or []
                    rv = _rv_of(rows[0].get("object") if rows else None) or rv
                    printer.rows(obj, etype)
                else:
                    rv = _rv_of(obj) or rv
                    printer.obj(obj, etype)
            if loop.time() - started < REWATCH_DELAY:
                # The server ended the watch at once: do not spin on it.
                await asyncio.sleep(REWATCH_DELAY)
        except errors.ApiError as e:
            if e.code == 410:
                # History compacted past our resourceVersion: list again (rows print again) and go on.
                rv = await _list_for_watch(client, args, kind, ns, params, printer)
                continue
            if not common.is_unreachable(e):
                raise
            now = loop.time()
            broken_since = broken_since or now
            if now - broken_since > REWATCH_GIVE_UP:
                raise
            await asyncio.sleep(REWATCH_DELAY)
