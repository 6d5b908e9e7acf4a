"""``innermesh describe KIND [NAME...]``: one object in sections a person reads, as kubectl describe.

Every object: Name, Namespace, Labels, Annotations (without the bulky last-applied configuration).
Then per kind:

- **Service**: type, ClusterIP(s), ports with their target ports, selector; its **endpoints** (from the
  EndpointSlices labelled ``kubernetes.io/service-name=<service>``: address:port, ready / serving /
  terminating, node, zone, the Workload behind it); the HTTPRoutes and GRPCRoutes **attached** to it
  (a parentRef naming the Service) with their Accepted and ResolvedRefs conditions; and the routes that
  **send traffic** to it (a backendRef naming it), with their weights.
- **Workload**: addresses, ports, node, zone, readiness, service account, and the Services that select it.
- anything else: its spec and status as an indented outline, then its conditions.

The rendering functions are pure (objects in, lines out); ``run`` fetches what they need.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from innermesh.api import status as errors
from innermesh.api.registry import Kind, UnknownKind
from innermesh.api.scheme import REGISTRY
from innermesh.cli import common, threeway
from innermesh.cli.tables import AlignedWriter
from innermesh.client.http import HttpClient

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
GATEWAY_GROUP = "gateway.networking.k8s.io"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "describe",
        help="show objects in detail, with related objects",
        description="Show objects in detail: a Service with its endpoints and routes, a Workload with the "
        "Services that select it, any other kind's spec, status and conditions.",
    )
    p.add_argument("kind", metavar="KIND")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every object of KIND in the namespace")
    p.add_argument("-n", "--namespace", help="the namespace (default: default)")
    p.add_argument("-l", "--selector", default="", help="without NAME: only objects with these labels")
    common.add_connection_flags(p, top_level=False)
    p.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------------
# Building blocks


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _aligned(pairs: Iterable[tuple[str, str]], indent: str = "") -> list[str]:
    """``Key:  value`` lines with the values in one column (kubectl's describe tabwriter: padding 2).
    A multi-line value continues under its first line."""
    pairs = list(pairs)
    width = max((len(k) + 1 for k, _ in pairs), default=0) + 2
    lines = []
    for key, value in pairs:
        first, *rest = (value or "").split("\n") or [""]
        lines.append(f"{indent}{(key + ':').ljust(width)}{first}".rstrip())
        lines += [f"{indent}{' ' * width}{line}".rstrip() for line in rest]
    return lines


def _map_lines(values: dict[str, str] | None) -> str:
    """kubectl's label / annotation block: one ``k=v`` per line, sorted, or <none>."""
    if not values:
        return "<none>"
    return "\n".join(f"{k}={v}" for k, v in sorted(values.items()))


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    return [indent + line.rstrip() for line in AlignedWriter().format(rows)]


def header_lines(obj: Obj, more: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Name, Namespace, Labels, Annotations (not the last-applied configuration), then ``more``, all
    aligned together."""
    meta = _meta(obj)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != threeway.LAST_APPLIED}
    pairs = [("Name", str(meta.get("name") or ""))]
    if meta.get("namespace"):
        pairs.append(("Namespace", str(meta["namespace"])))
    pairs += [("Labels", _map_lines(meta.get("labels"))), ("Annotations", _map_lines(annotations))]
    if meta.get("creationTimestamp"):
        pairs.append(("Created", str(meta["creationTimestamp"])))
    if meta.get("deletionTimestamp"):
        pairs.append(("Deleting since", str(meta["deletionTimestamp"])))
    return _aligned([*pairs, *more])


def condition_lines(conditions: list[Obj] | None, indent: str = "  ") -> list[str]:
    if not conditions:
        return [f"{indent}<none>"]
    rows = [["TYPE", "STATUS", "REASON", "MESSAGE", "LAST TRANSITION"]]
    for c in conditions:
        rows.append(
            [
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason", "")),
                str(c.get("message", "")) or "-",
                str(c.get("lastTransitionTime", "")),
            ]
        )
    return _table(rows, indent)


def outline(value: Any, indent: str = "  ") -> list[str]:
    """A value as an indented outline (YAML-ish): ``key: scalar``, nested maps and lists below."""
    lines: list[str] = []
    if isinstance(value, dict):
        if not value:
            return [f"{indent}{{}}"]
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{indent}{k}:")
                lines += outline(v, indent + "  ")
            else:
                lines.append(f"{indent}{k}: {_scalar(v)}")
    elif isinstance(value, list):
        if not value:
            return [f"{indent}[]"]
        for item in value:
            sub = outline(item, indent + "  ")
            if isinstance(item, dict | list) and item:
                lines.append(f"{indent}- {sub[0].strip()}")
                lines += sub[1:]
            else:
                lines.append(f"{indent}- {_scalar(item)}")
    else:
        lines.append(f"{indent}{_scalar(value)}")
    return lines


def _scalar(v: Any) -> str:
    if v is None:
        return "<none>"
    if v == "":
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return str(v)


# ---------------------------------------------------------------------------------------------------
# Routes and their references


def _route_namespace(route: Obj) -> str:
    return str(_meta(route).get("namespace") or "")


def parent_ref_names_service(ref: Obj, route_namespace: str, svc_namespace: str, svc_name: str) -> bool:
    """A parentRef naming a Service: kind Service of the core group (""), namespace defaulting to the
    route's (the same rule as ``ParentReference.is_service``)."""
    return (
        ref.get("kind") == "Service"
        and ref.get("group", GATEWAY_GROUP) == ""
        and (ref.get("namespace") or route_namespace) == svc_namespace
        and ref.get("name") == svc_name
    )


def backend_ref_names_service(ref: Obj, route_namespace: str, svc_namespace: str, svc_name: str) -> bool:
    return (
        ref.get("kind", "Service") == "Service"
        and ref.get("group", "") == ""
        and (ref.get("namespace") or route_namespace) == svc_namespace
        and ref.get("name") == svc_name
    )


def _parent_conditions(route: Obj, svc_namespace: str, svc_name: str) -> list[Obj]:
    ns = _route_namespace(route)
    out: list[Obj] = []
    for parent in (route.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef") or {}
        if parent_ref_names_service(ref, ns, svc_namespace, svc_name):
            out += parent.get("conditions") or []
    return out


def _condition_summary(conditions: list[Obj], ctype: str) -> str:
    for c in conditions:
        if c.get("type") == ctype:
            status = str(c.get("status", ""))
            reason = str(c.get("reason", ""))
            return f"{status} ({reason})" if reason and reason != ctype else status
    return "<unknown>"


def _backend_text(ref: Obj, route_namespace: str) -> str:
    kind = ref.get("kind", "Service")
    ns = ref.get("namespace") or route_namespace
    name = f"{ns}/{ref.get('name', '')}" if ns != route_namespace else str(ref.get("name", ""))
    text = name if kind == "Service" else f"{kind}/{name}"
    if ref.get("port") is not None:
        text += f":{ref['port']}"
    return text


def route_backends(route: Obj) -> list[tuple[int, Obj]]:
    """(rule number from 1, backendRef) for every backendRef of a route."""
    out = []
    for n, rule in enumerate((route.get("spec") or {}).get("rules") or [], 1):
        for ref in rule.get("backendRefs") or []:
            out.append((n, ref))
    return out


def _weights(route: Obj, rule: int) -> int:
    rules = (route.get("spec") or {}).get("rules") or []
    refs = rules[rule - 1].get("backendRefs") or [] if rule - 1 < len(rules) else []
    return sum(int(r.get("weight", 1)) for r in refs)


# ---------------------------------------------------------------------------------------------------
# Service


@dataclass
class ServiceView:
    """A Service and what relates to it."""

    service: Obj
    slices: list[Obj] = field(default_factory=list)
    routes: list[Obj] = field(default_factory=list)  # HTTPRoutes and GRPCRoutes (kind set) of any namespace


def _port_text(p: Obj) -> str:
    return f"{p.get('port')}/{p.get('protocol', 'TCP')}"


def service_lines(view: ServiceView) -> list[str]:
    svc = view.service
    spec = svc.get("spec") or {}
    meta = _meta(svc)
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    pairs = [
        (
            "Selector",
            ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>",
        ),
        ("Type", str(spec.get("type", "ClusterIP"))),
    ]
    if spec.get("type") == "ExternalName":
        pairs.append(("External Name", str(spec.get("externalName", ""))))
    else:
        pairs += [
            ("IP Family Policy", str(spec.get("ipFamilyPolicy") or "SingleStack")),
            ("IP Families", ",".join(spec.get("ipFamilies") or []) or "<none>"),
            ("IP", str(ips[0]) if ips else "<pending>"),
            ("IPs", ",".join(ips) or "<pending>"),
        ]
    for p in spec.get("ports") or []:
        pairs.append(("Port", f"{p.get('name') or '<unset>'}  {_port_text(p)}"))
        target = p.get("targetPort", p.get("port"))
        pairs.append(("TargetPort", f"{target}/{p.get('protocol', 'TCP')}"))
    pairs.append(("Session Affinity", str(spec.get("sessionAffinity", "None"))))
    if spec.get("trafficDistribution"):
        pairs.append(("Traffic Distribution", str(spec["trafficDistribution"])))
    lines = header_lines(svc, pairs)

    lines.append("Endpoints:")
    lines += endpoint_lines(view.slices)

    attached = [r for r in view.routes if _attached(r, ns, name)]
    lines.append("Attached Routes (parentRefs):")
    if attached:
        rows = [["KIND", "NAME", "HOSTNAMES", "ACCEPTED", "RESOLVED REFS", "BACKENDS"]]
        for r in attached:
            conds = _parent_conditions(r, ns, name)
            rows.append(
                [
                    str(r.get("kind", "")),
                    _route_name(r, ns),
                    ",".join((r.get("spec") or {}).get("hostnames") or []) or "*",
                    _condition_summary(conds, "Accepted"),
                    _condition_summary(conds, "ResolvedRefs"),
                    _backends_summary(r),
                ]
            )
        lines += _table(rows)
    else:
        lines.append("  <none>")

    lines.append("Routes Sending Traffic Here (backendRefs):")
    rows = [["KIND", "NAME", "RULE", "WEIGHT", "PORT"]]
    for r in view.routes:
        rns = _route_namespace(r)
        for rule, ref in route_backends(r):
            if backend_ref_names_service(ref, rns, ns, name):
                weight = int(ref.get("weight", 1))
                total = _weights(r, rule)
                share = f"{weight} ({weight * 100 // total}%)" if total else str(weight)
                rows.append(
                    [str(r.get("kind", "")), _route_name(r, ns), str(rule), share, str(ref.get("port", "-"))]
                )
    lines += _table(rows) if len(rows) > 1 else ["  <none>"]
    return lines


def _attached(route: Obj, svc_namespace: str, svc_name: str) -> bool:
    ns = _route_namespace(route)
    return any(
        parent_ref_names_service(ref, ns, svc_namespace, svc_name)
        for ref in (route.get("spec") or {}).get("parentRefs") or []
    )


def _route_name(route: Obj, namespace: str) -> str:
    rns, name = _route_namespace(route), str(_meta(route).get("name", ""))
    return name if rns == namespace else f"{rns}/{name}"


def _backends_summary(route: Obj) -> str:
    rns = _route_namespace(route)
    parts = []
    for rule, ref in route_backends(route):
        total = _weights(route, rule)
        weight = int(ref.get("weight", 1))
        pct = f"{weight * 100 // total}%" if total else "0%"
        parts.append(f"{_backend_text(ref, rns)} {pct}")
    return ", ".join(parts) or "<none>"


def endpoint_lines(slices: list[Obj]) -> list[str]:
    rows = [["ENDPOINT", "READY", "SERVING", "TERMINATING", "NODE", "ZONE", "WORKLOAD"]]
    for sl in sorted(slices, key=lambda s: str(_meta(s).get("name", ""))):
        ports = [p for p in sl.get("ports") or [] if p.get("port") is not None]
        for ep in sl.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            address = addresses[0]
            host = f"[{address}]" if ":" in address else address
            targets = ",".join(f"{host}:{p['port']}" for p in ports) or address
            cond = ep.get("conditions") or {}
            ref = ep.get("targetRef") or {}
            workload = f"{ref.get('kind', '')}/{ref.get('name', '')}" if ref.get("name") else "<none>"
            rows.append(
                [
                    targets,
                    _bool(cond.get("ready"), default=True),
                    _bool(cond.get("serving"), default=True),
                    _bool(cond.get("terminating"), default=False),
                    str(ep.get("nodeName") or "<none>"),
                    str(ep.get("zone") or "<none>"),
                    workload,
                ]
            )
    if len(rows) == 1:
        return ["  <none>" if slices else "  <none> (no EndpointSlices yet)"]
    return _table(rows)


def _bool(value: Any, default: bool) -> str:
    v = default if value is None else bool(value)
    return "true" if v else "false"


# ---------------------------------------------------------------------------------------------------
# Workload


def _selects(service: Obj, labels: dict[str, str]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def workload_lines(workload: Obj, services: list[Obj]) -> list[str]:
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    labels = _meta(workload).get("labels") or {}
    conditions = status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        readiness = "True (no Ready condition: counts as ready)"
    else:
        reason = f" ({ready.get('reason')})" if ready.get("reason") else ""
        readiness = f"{ready.get('status')}{reason}"
    ports = [
        f"{p.get('name') or '<unset>'}  {p.get('port')}/{p.get('protocol', 'TCP')}"
        + (f"  ({p['appProtocol']})" if p.get("appProtocol") else "")
        for p in spec.get("ports") or []
    ]
    lines = header_lines(
        workload,
        [
            ("Addresses", ",".join(spec.get("addresses") or []) or "<none>"),
            ("Ports", "\n".join(ports) or "<none>"),
            ("Node", str(spec.get("node") or "<none>")),
            ("Zone", str(spec.get("zone") or "<none>")),
            ("Ready", readiness),
            ("Service Account", str(spec.get("serviceAccount") or "default")),
        ],
    )
    lines.append("Selected By Services:")
    selecting = sorted(str(_meta(s).get("name", "")) for s in services if _selects(s, labels))
    lines += [f"  {n}" for n in selecting] or ["  <none>"]
    lines.append("Conditions:")
    lines += condition_lines(conditions)
    return lines


# ---------------------------------------------------------------------------------------------------
# Any other kind


def generic_lines(obj: Obj) -> list[str]:
    lines = header_lines(
        obj, [("API Version", str(obj.get("apiVersion", ""))), ("Kind", str(obj.get("kind", "")))]
    )
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    for key, value in body.items():
        lines.append(f"{key[:1].upper()}{key[1:]}:")
        lines += outline(value)
    status = obj.get("status")
    if isinstance(status, dict) and status:
        rest = {k: v for k, v in status.items() if k not in ("conditions", "parents")}
        if rest:
            lines.append("Status:")
            lines += outline(rest)
        for parent in status.get("parents") or []:
            ref = parent.get("parentRef") or {}
            where = f"{ref.get('kind', 'Gateway')} {ref.get('namespace') or _meta(obj).get('namespace', '')}/{ref.get('name', '')}"
            lines.append(f"Conditions for parent {where} ({parent.get('controllerName', '')}):")
            lines += condition_lines(parent.get("conditions"))
        if "conditions" in status:
            lines.append("Conditions:")
            lines += condition_lines(status.get("conditions"))
    return lines


# ---------------------------------------------------------------------------------------------------
# Fetching


def _kind_or_none(name: str) -> Kind | None:
    try:
        return REGISTRY.resolve(name)
    except UnknownKind:
        return None


async def _list(client: HttpClient, kind_name: str, namespace: str | None, selector: str = "") -> list[Obj]:
    kind = _kind_or_none(kind_name)
    if kind is None:
        return []
    items, _rv = await client.list(kind, namespace if kind.namespaced else None, selector)
    return [{"apiVersion": kind.api_version, "kind": kind.kind, **o} for o in items]


async def describe(client: HttpClient, kind: Kind, obj: Obj) -> list[str]:
    ns = str(_meta(obj).get("namespace") or "")
    name = str(_meta(obj).get("name") or "")
    if kind.group == "" and kind.kind == "Service":
        slices = await _list(client, "endpointslices.discovery.k8s.io", ns, f"{SERVICE_NAME_LABEL}={name}")
        # Routes anywhere may attach to or point at this Service (cross-namespace references).
        routes = [*await _list(client, "httproutes.gateway.networking.k8s.io", None)]
        routes += await _list(client, "grpcroutes.gateway.networking.k8s.io", None)
        return service_lines(ServiceView(obj, slices, routes))
    if kind.kind == "Workload":
        return workload_lines(obj, await _list(client, "services", ns))
    return generic_lines(obj)


async def run(args: argparse.Namespace) -> int:
    kind = common.resolve_kind(args.kind)
    namespace = common.scope(kind, common.namespace_arg(args))
    client = common.make_client(args)
    problems = []
    try:
        if args.names:
            objs = []
            for name in args.names:
                try:
                    objs.append(await client.get(kind, namespace, name))
                except errors.ApiError as e:
                    if e.code != 404 or common.is_unreachable(e):
                        raise
                    problems.append(common.server_error(e))
        else:
            objs, _rv = await client.list(kind, namespace, args.selector)
            if not objs:
                common.err(
                    f"No resources found in {namespace} namespace." if namespace else "No resources found"
                )
        for n, obj in enumerate(objs):
            if n:
                common.out()
                common.out()
            for line in await describe(
                client, kind, {"apiVersion": kind.api_version, "kind": kind.kind, **obj}
            ):
                common.out(line)
    except errors.ApiError as e:
        raise common.CliError(common.server_error(e)) from None
    finally:
        await client.close()
    for p in problems:
        common.err(p)
    return common.EXIT_FAILED if problems else common.EXIT_OK
