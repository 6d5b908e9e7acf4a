"""describe's views, from objects to lines: a Service with its endpoints and the routes that attach to
it or send to it (a parentRef or backendRef names a Service by kind Service, group "" or core, and a
namespace that defaults to the route's), a Workload with the Services selecting it, any other kind."""

from __future__ import annotations

from typing import Any

from innermesh.cli.describe import (
    ServiceView,
    backend_ref_names_service,
    generic_lines,
    outline,
    parent_ref_names_service,
    service_lines,
    workload_lines,
)
from innermesh.cli.threeway import LAST_APPLIED

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "web",
        "namespace": "demo",
        "labels": {"app": "web"},
        "annotations": {LAST_APPLIED: "{}\n", "note": "hi"},
    },
    "spec": {
        "type": "ClusterIP",
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ipFamilies": ["IPv4"],
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    },
}

SLICE: dict[str, Any] = {
    "metadata": {"name": "web-abcde", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    "endpoints": [
        {
            "addresses": ["127.0.10.1"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "zone": "zone-a",
            "targetRef": {"kind": "Workload", "name": "web-1"},
        },
        {
            "addresses": ["127.0.10.2"],
            "conditions": {"ready": False, "serving": False},
            "nodeName": "n1",
            "targetRef": {"kind": "Workload", "name": "web-2"},
        },
    ],
}


def route(
    name: str,
    ns: str,
    parents: list[dict[str, Any]],
    backends: list[dict[str, Any]],
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status = {
        "parents": [{"parentRef": p, "controllerName": "x", "conditions": conditions or []} for p in parents]
    }
    return {
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": parents, "rules": [{"backendRefs": backends}]},
        "status": status,
    }


def test_parent_refs_name_a_service_by_kind_group_and_namespace() -> None:
    """group "" (the core group's name; "core" is not), kind Service; the namespace defaults to the
    route's."""
    assert parent_ref_names_service({"group": "", "kind": "Service", "name": "web"}, "demo", "demo", "web")
    assert parent_ref_names_service(
        {"group": "", "kind": "Service", "name": "web", "namespace": "demo"}, "other", "demo", "web"
    )
    assert not parent_ref_names_service(
        {"group": "core", "kind": "Service", "name": "web", "namespace": "demo"}, "other", "demo", "web"
    )
    assert not parent_ref_names_service(
        {"kind": "Service", "name": "web"}, "demo", "demo", "web"
    )  # group defaults to gateway's
    assert not parent_ref_names_service(
        {"group": "", "kind": "Service", "name": "web"}, "other", "demo", "web"
    )
    assert not parent_ref_names_service(
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}, "demo", "demo", "web"
    )
    assert backend_ref_names_service({"name": "web", "port": 80}, "demo", "demo", "web")
    assert not backend_ref_names_service({"name": "web", "namespace": "x"}, "demo", "demo", "web")


def test_service_view_has_ips_ports_endpoints_and_routes() -> None:
    """Everything describe promises for a Service, without the last-applied annotation."""
    attached = route(
        "split",
        "demo",
        [{"group": "", "kind": "Service", "name": "web", "port": 80}],
        [{"name": "web", "port": 80, "weight": 90}, {"name": "canary", "port": 80, "weight": 10}],
        [
            {"type": "Accepted", "status": "True", "reason": "Accepted"},
            {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"},
        ],
    )
    elsewhere = route(
        "from-api",
        "other",
        [{"group": "", "kind": "Service", "name": "api"}],
        [{"name": "web", "namespace": "demo", "port": 80}],
    )
    lines = service_lines(ServiceView(SERVICE, [SLICE], [attached, elsewhere]))
    text = "\n".join(lines)
    assert LAST_APPLIED not in text
    assert "Annotations:       note=hi" in lines
    assert "IP:                10.96.0.10" in lines
    assert "Port:              http  80/TCP" in lines
    assert "TargetPort:        http/TCP" in lines
    rows = [line.split() for line in lines if line.startswith("  127.")]
    assert rows == [
        ["127.0.10.1:8080", "true", "true", "false", "<none>", "zone-a", "Workload/web-1"],
        ["127.0.10.2:8080", "false", "false", "false", "n1", "<none>", "Workload/web-2"],
    ]
    attached_row = lines[lines.index("Attached Routes (parentRefs):") + 2].split()
    assert attached_row[:6] == ["HTTPRoute", "split", "*", "True", "False", "(BackendNotFound)"]
    assert "web:80 90%, canary:80 10%" in lines[lines.index("Attached Routes (parentRefs):") + 2]
    sending = lines[lines.index("Routes Sending Traffic Here (backendRefs):") + 1 :]
    assert [r.split()[:3] for r in sending[1:]] == [
        ["HTTPRoute", "split", "1"],
        ["HTTPRoute", "other/from-api", "1"],
    ]


def test_service_without_endpoints_or_routes() -> None:
    """No slices yet, no routes: said plainly."""
    lines = service_lines(ServiceView(SERVICE))
    assert lines[lines.index("Endpoints:") + 1] == "  <none> (no EndpointSlices yet)"
    assert lines[lines.index("Attached Routes (parentRefs):") + 1] == "  <none>"


def test_workload_view_lists_selecting_services() -> None:
    """Readiness (no condition counts as ready) and the Services whose selector matches its labels."""
    wl = {
        "kind": "Workload",
        "metadata": {"name": "web-1", "namespace": "demo", "labels": {"app": "web", "version": "v1"}},
        "spec": {
            "addresses": ["127.0.10.1"],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "zone": "zone-a",
            "serviceAccount": "web",
        },
    }
    other = {"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}}}
    no_selector = {"metadata": {"name": "manual"}, "spec": {}}
    lines = workload_lines(wl, [SERVICE, other, no_selector])
    assert "Ready:            True (no Ready condition: counts as ready)" in lines
    assert "Ports:            http  8080/TCP" in lines
    assert lines[lines.index("Selected By Services:") + 1 :][:2] == ["  web", "Conditions:"]


def test_generic_view_outlines_spec_and_conditions() -> None:
    """Other kinds: spec as an outline, status conditions as a table."""
    obj = {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "demo"},
        "spec": {"action": "ALLOW", "targetRefs": [{"kind": "Service", "group": "", "name": "web"}]},
        "status": {
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "t"}
            ]
        },
    }
    lines = generic_lines(obj)
    assert lines[lines.index("Spec:") + 1 :][:4] == [
        "  action: ALLOW",
        "  targetRefs:",
        "    - kind: Service",
        '      group: ""',
    ]
    assert lines[-1].split() == ["Accepted", "True", "Accepted", "-", "t"]
    assert outline([]) == ["  []"]
