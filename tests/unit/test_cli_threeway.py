"""Client-side apply's patch computation: the last-applied annotation, and three-way JSON merge and
strategic merge patches that remove what the file dropped and keep what the server or controllers set.

The expected strategic patches are the ones kubectl sends for the same three objects (its
``$setElementOrder`` and ``$patch: delete`` directives included); each case also applies the patch with
the server's own patch functions and checks the object that results."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from innermesh.api import patch as server_patch
from innermesh.api.core import Namespace, Service
from innermesh.api.gateway import HTTPRoute
from innermesh.cli import threeway
from innermesh.cli.threeway import LAST_APPLIED, PatchError

SERVICE_CONFIG: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web", "tier": "front"}},
    "spec": {
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "https", "port": 443, "targetPort": 8443},
        ],
    },
}


def live(config: dict[str, Any]) -> dict[str, Any]:
    """What the server holds after creating ``config`` with apply: server fields and defaults added."""
    obj = threeway.annotated(config)
    obj["metadata"].update({"uid": "u-1", "resourceVersion": "7", "generation": 1})
    spec = obj["spec"]
    spec.update({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]})
    for port in spec["ports"]:
        port.setdefault("protocol", "TCP")
    obj["status"] = {"loadBalancer": {}}
    return obj


def strategic(config: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    return threeway.three_way_strategic_patch(
        threeway.last_applied(current), threeway.annotated(config), current, Service
    )


def without_annotation(patch: dict[str, Any]) -> dict[str, Any]:
    """The patch minus the new last-applied annotation (which every changing patch carries)."""
    out = copy.deepcopy(patch)
    annotations = out.get("metadata", {}).get("annotations", {})
    annotations.pop(LAST_APPLIED, None)
    if "annotations" in out.get("metadata", {}) and not annotations:
        del out["metadata"]["annotations"]
    if "metadata" in out and not out["metadata"]:
        del out["metadata"]
    return out


# ---------------------------------------------------------------------------------------------------
# The annotation


def test_annotation_holds_the_config_as_kubectl_writes_it() -> None:
    """Go's encoding: sorted keys, compact, empty annotations map, trailing newline."""
    modified = threeway.annotated({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web"}})
    assert modified["metadata"]["annotations"][LAST_APPLIED] == (
        '{"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"web"}}\n'
    )


def test_annotation_keeps_the_files_annotations_but_not_itself() -> None:
    """An old last-applied value in the file is not nested into the new one."""
    config = {"metadata": {"name": "a", "annotations": {"note": "<b>&", LAST_APPLIED: "old"}}}
    value = threeway.annotated(config)["metadata"]["annotations"][LAST_APPLIED]
    assert value == '{"metadata":{"annotations":{"note":"\\u003cb\\u003e\\u0026"},"name":"a"}}\n'
    assert json.loads(value)["metadata"]["annotations"] == {"note": "<b>&"}


def test_last_applied_reads_back_the_annotation() -> None:
    """The original configuration comes back from the live object; none when absent or garbage."""
    current = live(SERVICE_CONFIG)
    original = threeway.last_applied(current)
    assert original is not None
    assert original["spec"] == SERVICE_CONFIG["spec"]
    assert threeway.last_applied({"metadata": {}}) is None
    assert threeway.last_applied({"metadata": {"annotations": {LAST_APPLIED: "{nope"}}}) is None


# ---------------------------------------------------------------------------------------------------
# Strategic merge


def test_same_file_gives_an_empty_patch() -> None:
    """Nothing changed in the file: "unchanged", whatever the server added."""
    assert strategic(SERVICE_CONFIG, live(SERVICE_CONFIG)) == {}


def test_removed_port_is_deleted_by_merge_key() -> None:
    """A port dropped from the file: $patch delete by port, and the file's order."""
    config = copy.deepcopy(SERVICE_CONFIG)
    config["spec"]["ports"] = config["spec"]["ports"][:1]
    current = live(SERVICE_CONFIG)
    patch = strategic(config, current)
    assert without_annotation(patch) == {
        "spec": {
            "$setElementOrder/ports": [{"port": 80}],
            "ports": [{"$patch": "delete", "port": 443}],
        }
    }
    result = server_patch.strategic_merge_patch(current, patch, Service)
    assert result["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert result["spec"]["clusterIP"] == "10.96.0.10"


def test_changed_port_field_patches_one_element() -> None:
    """A changed targetPort: only that element, named by its merge key."""
    config = copy.deepcopy(SERVICE_CONFIG)
    config["spec"]["ports"][0]["targetPort"] = "http"
    current = live(SERVICE_CONFIG)
    patch = strategic(config, current)
    assert without_annotation(patch) == {
        "spec": {
            "$setElementOrder/ports": [{"port": 80}, {"port": 443}],
            "ports": [{"port": 80, "targetPort": "http"}],
        }
    }
    result = server_patch.strategic_merge_patch(current, patch, Service)
    assert [p["targetPort"] for p in result["spec"]["ports"]] == ["http", 8443]
    assert all(p["protocol"] == "TCP" for p in result["spec"]["ports"])


def test_one_port_changed_and_another_removed() -> None:
    """Changes and deletions of one list combine into one list: the change, then the delete directive."""
    config = copy.deepcopy(SERVICE_CONFIG)
    config["spec"]["ports"] = [
        {"name": "http", "port": 80, "targetPort": 9090},
        {"name": "grpc", "port": 50051},
    ]
    current = live(SERVICE_CONFIG)
    patch = strategic(config, current)
    assert without_annotation(patch) == {
        "spec": {
            "$setElementOrder/ports": [{"port": 80}, {"port": 50051}],
            "ports": [
                {"port": 80, "targetPort": 9090},
                {"name": "grpc", "port": 50051},
                {"$patch": "delete", "port": 443},
            ],
        }
    }
    result = server_patch.strategic_merge_patch(current, patch, Service)
    assert [(p["port"], p.get("targetPort")) for p in result["spec"]["ports"]] == [(80, 9090), (50051, None)]


def test_removed_field_inside_an_element_is_nulled() -> None:
    """A port's name removed from the file: null in that element."""
    config = copy.deepcopy(SERVICE_CONFIG)
    config["spec"]["ports"] = [{"port": 80, "targetPort": 8080}]
    current = live(
        copy.deepcopy(SERVICE_CONFIG)
        | {"spec": {**SERVICE_CONFIG["spec"], "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    )
    patch = strategic(config, current)
    assert without_annotation(patch) == {
        "spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"name": None, "port": 80}]}
    }
    result = server_patch.strategic_merge_patch(current, patch, Service)
    assert result["spec"]["ports"] == [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]


def test_removed_label_is_deleted_and_server_fields_stay() -> None:
    """A label dropped from the file is removed; clusterIP, type and status are the server's and stay."""
    config = copy.deepcopy(SERVICE_CONFIG)
    del config["metadata"]["labels"]["tier"]
    current = live(SERVICE_CONFIG)
    current["metadata"]["labels"]["added-by-controller"] = "yes"
    patch = strategic(config, current)
    assert without_annotation(patch) == {"metadata": {"labels": {"tier": None}}}
    result = server_patch.strategic_merge_patch(current, patch, Service)
    assert result["metadata"]["labels"] == {"app": "web", "added-by-controller": "yes"}
    assert result["spec"]["clusterIPs"] == ["10.96.0.10"]
    assert result["status"] == {"loadBalancer": {}}


def test_value_changed_on_the_server_is_set_back() -> None:
    """Someone edited a field the file sets: apply sets it back (the file wins)."""
    current = live(SERVICE_CONFIG)
    current["spec"]["selector"] = {"app": "other"}
    patch = strategic(SERVICE_CONFIG, current)
    assert patch == {"spec": {"selector": {"app": "web"}}}


def test_added_list_on_an_object_that_had_none() -> None:
    """A list the live object lacks is sent whole, without an order directive."""
    config = copy.deepcopy(SERVICE_CONFIG)
    current = live(SERVICE_CONFIG)
    del current["spec"]["ports"]
    patch = strategic(config, current)
    assert patch == {"spec": {"ports": config["spec"]["ports"]}}


def test_primitive_set_deletion_uses_delete_from_primitive_list() -> None:
    """A MergeSet list (Namespace spec.finalizers) deletes values with $deleteFromPrimitiveList."""
    original = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "n"},
        "spec": {"finalizers": ["a", "b"]},
    }
    modified_config = {**original, "spec": {"finalizers": ["a"]}}
    current = threeway.annotated(original)
    current["spec"]["finalizers"] = ["a", "b", "server"]
    patch = threeway.three_way_strategic_patch(
        threeway.last_applied(current), threeway.annotated(modified_config), current, Namespace
    )
    assert without_annotation(patch) == {
        "spec": {"$deleteFromPrimitiveList/finalizers": ["b"], "$setElementOrder/finalizers": ["a"]}
    }
    result = server_patch.strategic_merge_patch(current, patch, Namespace)
    assert sorted(result["spec"]["finalizers"]) == ["a", "server"]


def test_missing_annotation_patches_only_additions() -> None:
    """An object made without apply: nothing can be known to be removed, so nothing is."""
    current = live(SERVICE_CONFIG)
    del current["metadata"]["annotations"][LAST_APPLIED]
    current["metadata"]["labels"]["extra"] = "x"
    patch = strategic(SERVICE_CONFIG, current)
    assert set(patch) == {"metadata"}
    assert set(patch["metadata"]["annotations"]) == {LAST_APPLIED}


def test_element_without_merge_key_is_an_error() -> None:
    """A port without "port" cannot be merged."""
    config = copy.deepcopy(SERVICE_CONFIG)
    config["spec"]["ports"] = [{"name": "http", "targetPort": 8080}]
    with pytest.raises(PatchError, match="merge key"):
        strategic(config, live(SERVICE_CONFIG))


def test_renaming_is_refused() -> None:
    """kubectl's precondition: a patch may not change apiVersion, kind or metadata.name."""
    current = live(SERVICE_CONFIG)
    config = copy.deepcopy(SERVICE_CONFIG)
    config["metadata"]["name"] = "other"
    with pytest.raises(PatchError, match="name was changed"):
        strategic(config, current)


# ---------------------------------------------------------------------------------------------------
# JSON merge (the kinds without strategic merge: our group, the Gateway API)

ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "web", "namespace": "demo", "labels": {"a": "1"}},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
        "hostnames": ["web.example"],
        "rules": [
            {
                "backendRefs": [
                    {"name": "web", "port": 80, "weight": 90},
                    {"name": "canary", "port": 80, "weight": 10},
                ]
            }
        ],
    },
}


def route_live(config: dict[str, Any]) -> dict[str, Any]:
    obj = threeway.annotated(config)
    obj["metadata"]["resourceVersion"] = "3"
    obj["status"] = {"parents": [{"controllerName": "innermesh.io/gateway-controller"}]}
    return obj


def merge(config: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    return threeway.three_way_merge_patch(threeway.last_applied(current), threeway.annotated(config), current)


def test_merge_same_file_is_empty() -> None:
    """Status and server fields are not undone."""
    assert merge(ROUTE, route_live(ROUTE)) == {}


def test_merge_resends_lists_the_server_defaulted() -> None:
    """A default inside a list (HTTPRoute rules[].matches) makes the list differ from the file, so the
    file's list is sent, as kubectl sends it; the server defaults it again (apply then reports
    "unchanged" because the object did not change)."""
    current = route_live(ROUTE)
    current["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert merge(ROUTE, current) == {"spec": {"rules": ROUTE["spec"]["rules"]}}


def test_merge_removed_field_is_null() -> None:
    """hostnames dropped from the file: deleted; the server's status stays."""
    config = copy.deepcopy(ROUTE)
    del config["spec"]["hostnames"]
    current = route_live(ROUTE)
    patch = merge(config, current)
    assert without_annotation(patch) == {"spec": {"hostnames": None}}
    result = server_patch.json_merge_patch(current, patch)
    assert "hostnames" not in result["spec"]
    assert result["status"] == current["status"]


def test_merge_changed_list_is_replaced_whole() -> None:
    """A weight changed: the rules list is sent whole (merge patch has no list merging), and the
    server's defaults inside it are lost from the patch, as with kubectl."""
    config = copy.deepcopy(ROUTE)
    config["spec"]["rules"][0]["backendRefs"][0]["weight"] = 80
    patch = merge(config, route_live(ROUTE))
    assert without_annotation(patch) == {"spec": {"rules": config["spec"]["rules"]}}


def test_merge_keeps_controller_labels() -> None:
    """A label added by someone else survives; one removed from the file goes."""
    config = copy.deepcopy(ROUTE)
    config["metadata"]["labels"] = {"b": "2"}
    current = route_live(ROUTE)
    current["metadata"]["labels"]["owner"] = "controller"
    patch = merge(config, current)
    assert without_annotation(patch) == {"metadata": {"labels": {"a": None, "b": "2"}}}
    result = server_patch.json_merge_patch(current, patch)
    assert result["metadata"]["labels"] == {"b": "2", "owner": "controller"}


def test_kind_chooses_the_patch_type() -> None:
    """Strategic for kinds kubectl compiles in, merge for the others."""
    kind, _ = threeway.three_way_patch(None, ROUTE, ROUTE, strategic=False, schema=HTTPRoute)
    assert kind == "merge"
    kind, _ = threeway.three_way_patch(None, SERVICE_CONFIG, SERVICE_CONFIG, strategic=True, schema=Service)
    assert kind == "strategic"


def test_numbers_compare_as_json_does() -> None:
    """1 and 1.0 are the same JSON number; true is not 1."""
    assert threeway.same({"a": 1}, {"a": 1.0})
    assert not threeway.same({"a": True}, {"a": 1})
    assert merge({**ROUTE, "x": True}, threeway.annotated({**ROUTE, "x": 1})) != {}
