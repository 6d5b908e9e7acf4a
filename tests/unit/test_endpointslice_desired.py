"""EndpointSlice desired state and the diff that reaches it (pure: no server, no I/O)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from innermesh.api.core import Service
from innermesh.api.discovery import MANAGED_BY_LABEL, SERVICE_NAME_LABEL, EndpointSlice
from innermesh.api.mesh import Workload
from innermesh.controllers.endpointslice import (
    CONTROLLER_NAME,
    HEADLESS_LABEL,
    SlicePlan,
    address_types,
    desired_groups,
    plan_slices,
    resolve_ports,
)

NS = "shop"
SVC_UID = "uid-svc-1"

_names = itertools.count()


def service(
    name: str = "web",
    *,
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    families: list[str] | None = None,
    uid: str = SVC_UID,
    **spec: Any,
) -> Service:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": NS, "uid": uid, "labels": {"team": "a"}},
        "spec": {
            "selector": {"app": "web"} if selector is None else selector,
            "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}],
            "ipFamilies": families or ["IPv4"],
            "clusterIP": "10.96.0.10",
            **spec,
        },
    }
    return Service.model_validate(body)


def workload(
    name: str,
    *addresses: str,
    labels: dict[str, str] | None = None,
    ready: str | None = None,
    ports: list[dict[str, Any]] | None = None,
    namespace: str = NS,
    node: str | None = None,
    zone: str | None = None,
    terminating: bool = False,
) -> Workload:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": {"app": "web"} if labels is None else labels,
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-02T15:04:05Z"
    body: dict[str, Any] = {"metadata": meta, "spec": {"addresses": list(addresses)}}
    if ports is not None:
        body["spec"]["ports"] = ports
    if node is not None:
        body["spec"]["node"] = node
    if zone is not None:
        body["spec"]["zone"] = zone
    if ready is not None:
        body["status"] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": "Probe",
                    "lastTransitionTime": "2026-01-02T15:04:05Z",
                }
            ]
        }
    return Workload.model_validate(body)


def apply(plan: SlicePlan, existing: list[EndpointSlice]) -> list[EndpointSlice]:
    """What the server holds after the plan is written (names and resourceVersions made up)."""
    by_name = {s.name: s for s in existing}
    for s in plan.delete:
        del by_name[s.name]
    for s in plan.update:
        assert s.name in by_name, "updates name existing slices"
        by_name[s.name] = s
    for s in plan.create:
        made = s.model_copy(deep=True)
        made.metadata.name = f"{s.metadata.generate_name}{next(_names)}"
        by_name[made.name] = made
    return list(by_name.values())


def converge(
    svc: Service | None, wls: list[Workload], existing: list[EndpointSlice], **kw: Any
) -> list[EndpointSlice]:
    """Apply the plan and check that planning again asks for nothing."""
    after = apply(plan_slices(svc, wls, existing, **kw), existing)
    again = plan_slices(svc, wls, after, **kw)
    assert not again, f"not converged: {again}"
    return after


def addresses(slices: list[EndpointSlice]) -> list[str]:
    return sorted(a for s in slices for ep in s.endpoints for a in ep.addresses)


def endpoint(slices: list[EndpointSlice], address: str) -> dict[str, Any]:
    for s in slices:
        for ep in s.endpoints:
            if ep.addresses[0] == address:
                return ep.to_dict()
    raise AssertionError(f"no endpoint {address}")


# ---------------------------------------------------------------------------------------------------
# Selection, conditions, families, ports


def test_only_matching_workloads_of_the_service_namespace_become_endpoints() -> None:
    """Selector labels must all match, in the Service's namespace."""
    wls = [
        workload("a", "10.0.0.1"),
        workload("b", "10.0.0.2", labels={"app": "other"}),
        workload("c", "10.0.0.3", namespace="elsewhere"),
        workload("d", "10.0.0.4", labels={"app": "web", "extra": "x"}),
    ]
    slices = converge(service(), wls, [])
    assert addresses(slices) == ["10.0.0.1", "10.0.0.4"]


@pytest.mark.parametrize(
    ("ready", "terminating", "want"),
    [
        (None, False, {"ready": True, "serving": True, "terminating": False}),
        ("True", False, {"ready": True, "serving": True, "terminating": False}),
        ("False", False, {"ready": False, "serving": False, "terminating": False}),
        ("Unknown", False, {"ready": False, "serving": False, "terminating": False}),
        ("True", True, {"ready": False, "serving": True, "terminating": True}),
        ("False", True, {"ready": False, "serving": False, "terminating": True}),
    ],
)
def test_endpoint_conditions_follow_readiness_and_termination(
    ready: str | None, terminating: bool, want: dict[str, bool]
) -> None:
    """ready = Ready and not terminating; serving = Ready; terminating = deletionTimestamp set."""
    slices = converge(service(), [workload("a", "10.0.0.1", ready=ready, terminating=terminating)], [])
    assert endpoint(slices, "10.0.0.1")["conditions"] == want


def test_publish_not_ready_addresses_makes_every_endpoint_ready() -> None:
    """publishNotReadyAddresses: ready is true whatever the Workload says."""
    svc = service(publishNotReadyAddresses=True)
    wls = [workload("a", "10.0.0.1", ready="False"), workload("b", "10.0.0.2", terminating=True)]
    slices = converge(svc, wls, [])
    assert endpoint(slices, "10.0.0.1")["conditions"]["ready"] is True
    assert endpoint(slices, "10.0.0.2")["conditions"]["ready"] is True
    assert endpoint(slices, "10.0.0.1")["conditions"]["serving"] is False


def test_endpoint_carries_node_zone_and_a_workload_target_ref() -> None:
    """nodeName and zone come from the Workload; targetRef names it."""
    slices = converge(service(), [workload("a", "10.0.0.1", node="node-1", zone="z1")], [])
    ep = endpoint(slices, "10.0.0.1")
    assert ep["nodeName"] == "node-1"
    assert ep["zone"] == "z1"
    assert ep["targetRef"] == {
        "kind": "Workload",
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "namespace": NS,
        "name": "a",
        "uid": "uid-a",
    }


def test_traffic_distribution_adds_zone_and_node_hints() -> None:
    """PreferClose hints the endpoint's zone; PreferSameNode its node and zone."""
    wl = workload("a", "10.0.0.1", node="node-1", zone="z1")
    close = converge(service(trafficDistribution="PreferClose"), [wl], [])
    assert endpoint(close, "10.0.0.1")["hints"] == {"forZones": [{"name": "z1"}]}
    same_node = converge(service(trafficDistribution="PreferSameNode"), [wl], [])
    assert endpoint(same_node, "10.0.0.1")["hints"] == {
        "forZones": [{"name": "z1"}],
        "forNodes": [{"name": "node-1"}],
    }
    plain = converge(service(), [wl], [])
    assert "hints" not in endpoint(plain, "10.0.0.1")


def test_dual_stack_service_gets_one_slice_per_family() -> None:
    """IPv4 and IPv6 addresses go to slices of their own addressType."""
    svc = service(families=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack")
    wls = [workload("a", "10.0.0.1", "fd00::1"), workload("b", "fd00::2")]
    slices = converge(svc, wls, [])
    by_type = {s.address_type: addresses([s]) for s in slices}
    assert by_type == {"IPv4": ["10.0.0.1"], "IPv6": ["fd00::1", "fd00::2"]}


def test_single_stack_service_ignores_other_family_addresses() -> None:
    """An IPv4 Service publishes only IPv4 addresses; a Workload without one is left out."""
    slices = converge(service(), [workload("a", "10.0.0.1", "fd00::1"), workload("b", "fd00::2")], [])
    assert [s.address_type for s in slices] == ["IPv4"]
    assert addresses(slices) == ["10.0.0.1"]


def test_address_types_fall_back_to_cluster_ips_then_both() -> None:
    """Without ipFamilies: the families of the cluster IPs, else both."""
    svc = service()
    svc.spec.ip_families = None
    svc.spec.cluster_ips = ["fd00:10:96::5"]
    assert address_types(svc) == ["IPv6"]
    svc.spec.cluster_ips = ["None"]
    assert address_types(svc) == ["IPv4", "IPv6"]


def test_named_target_port_is_resolved_per_workload_by_name_and_protocol() -> None:
    """A named targetPort is looked up in each Workload's ports (name and protocol must match)."""
    svc = service(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ]
    )
    a = workload("a", "10.0.0.1", ports=[{"name": "web", "port": 8080}])
    b = workload("b", "10.0.0.2", ports=[{"name": "web", "port": 9090}])
    c = workload("c", "10.0.0.3", ports=[{"name": "web", "port": 7070, "protocol": "UDP"}])
    assert [(p.name, p.port, p.protocol) for p in resolve_ports(svc, a)] == [
        ("http", 8080, "TCP"),
        ("dns", 5353, "UDP"),
    ]
    assert [(p.name, p.port) for p in resolve_ports(svc, c)] == [("dns", 5353)]
    slices = converge(svc, [a, b, c], [])
    groups = sorted((sorted((p.name, p.port) for p in s.ports or []), addresses([s])) for s in slices)
    assert groups == [
        ([("dns", 5353)], ["10.0.0.3"]),
        ([("dns", 5353), ("http", 8080)], ["10.0.0.1"]),
        ([("dns", 5353), ("http", 9090)], ["10.0.0.2"]),
    ]


def test_slice_ports_keep_the_service_port_details() -> None:
    """Slice ports carry the Service port's name, protocol and appProtocol, with the resolved number."""
    svc = service(
        ports=[{"name": "grpc", "port": 50051, "targetPort": 9000, "appProtocol": "kubernetes.io/h2c"}]
    )
    slices = converge(svc, [workload("a", "10.0.0.1")], [])
    assert [p.to_dict() for p in slices[0].ports or []] == [
        {"name": "grpc", "protocol": "TCP", "port": 9000, "appProtocol": "kubernetes.io/h2c"}
    ]


def test_desired_groups_are_in_a_stable_order() -> None:
    """Endpoints are ordered by Workload name whatever order the Workloads come in."""
    wls = [workload(n, f"10.0.0.{i}") for i, n in enumerate(["c", "a", "b"], 1)]
    (group,) = desired_groups(service(), wls).values()
    assert [ep.target_ref.name for ep in group.endpoints if ep.target_ref] == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------------
# Slices: metadata, sizes, placeholders


def test_new_slices_are_labelled_owned_and_generate_named() -> None:
    """Labels (service-name, managed-by, the Service's own), a controller ownerReference, generateName."""
    plan = plan_slices(service(), [workload("a", "10.0.0.1")], [])
    (made,) = plan.create
    meta = made.metadata
    assert meta.generate_name == "web-"
    assert meta.namespace == NS
    assert meta.labels == {"team": "a", SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: CONTROLLER_NAME}
    assert [r.to_dict() for r in meta.owner_references or []] == [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": "web",
            "uid": SVC_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_headless_service_slices_carry_the_headless_label() -> None:
    """clusterIP None adds service.kubernetes.io/headless."""
    svc = service(clusterIP="None")
    (made,) = plan_slices(svc, [workload("a", "10.0.0.1")], []).create
    assert (made.metadata.labels or {})[HEADLESS_LABEL] == ""


def test_at_most_max_endpoints_per_slice() -> None:
    """250 endpoints with a limit of 100 make three slices of 100, 100 and 50."""
    wls = [workload(f"w{i:03d}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = converge(service(), wls, [], max_endpoints=100)
    assert sorted(len(s.endpoints) for s in slices) == [50, 100, 100]
    assert len(addresses(slices)) == 250


def test_service_without_endpoints_has_one_placeholder_slice_per_family() -> None:
    """No matching Workload: one empty slice per family, and nothing more to do next time."""
    svc = service(families=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack")
    slices = converge(svc, [], [])
    assert sorted((s.address_type, len(s.endpoints), s.ports) for s in slices) == [
        ("IPv4", 0, []),
        ("IPv6", 0, []),
    ]


def test_nothing_is_written_when_nothing_changed() -> None:
    """Planning again over the slices just written gives an empty plan."""
    wls = [workload("a", "10.0.0.1"), workload("b", "10.0.0.2")]
    slices = converge(service(), wls, [])
    assert plan_slices(service(), wls, slices) == SlicePlan()


# ---------------------------------------------------------------------------------------------------
# Minimal churn


def test_readiness_flip_updates_the_slice_in_place() -> None:
    """A Workload turning not-ready changes its endpoint in the same slice: one update, nothing else."""
    slices = converge(service(), [workload("a", "10.0.0.1"), workload("b", "10.0.0.2")], [])
    plan = plan_slices(
        service(), [workload("a", "10.0.0.1", ready="False"), workload("b", "10.0.0.2")], slices
    )
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (0, 1, 0)
    assert plan.update[0].name == slices[0].name
    assert endpoint(plan.update, "10.0.0.1")["conditions"]["ready"] is False


def test_new_endpoint_fills_an_existing_slice_rather_than_making_one() -> None:
    """An added Workload goes into the existing slice that has room."""
    wls = [workload(f"w{i}", f"10.0.0.{i + 1}") for i in range(10)]
    slices = converge(service(), wls, [])
    plan = plan_slices(service(), [*wls, workload("new", "10.0.1.1")], slices)
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (0, 1, 0)
    assert len(plan.update[0].endpoints) == 11


def test_endpoints_stay_in_their_slices_when_others_leave() -> None:
    """Removing endpoints rewrites only the slice they were in; the others are untouched."""
    wls = [workload(f"w{i:02d}", f"10.0.0.{i + 1}") for i in range(6)]
    slices = converge(service(), wls, [], max_endpoints=3)
    first = next(s for s in slices if s.endpoints[0].addresses[0] == "10.0.0.1")
    plan = plan_slices(service(), wls[1:], slices, max_endpoints=3)
    assert [s.name for s in plan.update] == [first.name]
    assert not plan.create
    assert not plan.delete


def test_losing_every_endpoint_turns_the_slice_into_the_placeholder() -> None:
    """The last endpoints leaving updates the slice to an empty one (no delete + create)."""
    slices = converge(service(), [workload("a", "10.0.0.1")], [])
    plan = plan_slices(service(), [], slices)
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (0, 1, 0)
    assert plan.update[0].name == slices[0].name
    assert plan.update[0].endpoints == []
    assert plan.update[0].ports == []


def test_changed_target_port_reuses_the_slice() -> None:
    """A new port set means a new slice group, but the old slice is updated into it, not replaced."""
    wls = [workload("a", "10.0.0.1")]
    slices = converge(service(), wls, [])
    svc = service(ports=[{"name": "http", "port": 80, "targetPort": 9999}])
    plan = plan_slices(svc, wls, slices)
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (0, 1, 0)
    assert [p.port for p in plan.update[0].ports or []] == [9999]
    converge(svc, wls, slices)


def test_service_label_change_updates_only_labels() -> None:
    """New Service labels are copied onto its slices with an update."""
    wls = [workload("a", "10.0.0.1")]
    slices = converge(service(), wls, [])
    svc = service()
    svc.metadata.labels = {"team": "b"}
    plan = plan_slices(svc, wls, slices)
    assert len(plan.update) == 1
    assert (plan.update[0].metadata.labels or {})["team"] == "b"
    assert plan.update[0].endpoints == slices[0].endpoints


# ---------------------------------------------------------------------------------------------------
# Deletion


def test_slices_of_a_deleted_service_are_deleted() -> None:
    """No Service: every slice labelled with its name goes."""
    slices = converge(service(), [workload("a", "10.0.0.1")], [])
    plan = plan_slices(None, [workload("a", "10.0.0.1")], slices)
    assert [s.name for s in plan.delete] == [s.name for s in slices]
    assert not plan.create
    assert not plan.update


@pytest.mark.parametrize("change", ["no selector", "empty selector", "ExternalName"])
def test_slices_of_a_service_that_stops_selecting_are_deleted(change: str) -> None:
    """A Service that loses its selector (or becomes ExternalName) has no slices."""
    slices = converge(service(), [workload("a", "10.0.0.1")], [])
    svc = service()
    if change == "no selector":
        svc.spec.selector = None
    elif change == "empty selector":
        svc.spec.selector = {}
    else:
        svc.spec.type = "ExternalName"
    assert plan_slices(svc, [workload("a", "10.0.0.1")], slices) == SlicePlan(delete=slices)
    assert desired_groups(svc, [workload("a", "10.0.0.1")]) == {}


def test_slices_owned_by_an_earlier_service_of_the_same_name_are_replaced() -> None:
    """Slices whose owner uid is another Service's are deleted (never updated) and new ones made."""
    old = converge(service(uid="uid-old"), [workload("a", "10.0.0.1")], [])
    plan = plan_slices(service(uid="uid-new"), [workload("a", "10.0.0.1")], old)
    assert [s.name for s in plan.delete] == [old[0].name]
    assert len(plan.create) == 1
    assert not plan.update


def test_slices_of_a_dropped_family_are_deleted() -> None:
    """Going from dual-stack to IPv4 only deletes the IPv6 slice."""
    svc = service(families=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack")
    wls = [workload("a", "10.0.0.1", "fd00::1")]
    slices = converge(svc, wls, [])
    plan = plan_slices(service(), wls, slices)
    assert [s.address_type for s in plan.delete] == ["IPv6"]
    assert not plan.create
    assert not plan.update


def test_no_new_slices_for_a_service_being_deleted() -> None:
    """A Service with a deletionTimestamp gets updates and deletes, never creates."""
    svc = service()
    svc.metadata.deletion_timestamp = "2026-01-02T15:04:05Z"
    assert plan_slices(svc, [workload("a", "10.0.0.1")], []).create == []


def test_max_endpoints_must_be_positive() -> None:
    """A zero slice size is refused."""
    with pytest.raises(ValueError):
        plan_slices(service(), [], [], max_endpoints=0)
