"""The three patch formats: RFC 7386's and RFC 6902's appendix examples, Kubernetes' strategic merge
(kubectl-apply-shaped patches included), hostile input (always a PatchError, never another exception),
and merge-patch round trips."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innermesh.api.core import Service, ServiceAccount
from innermesh.api.networking import NetworkPolicy
from innermesh.api.patch import (
    MAX_JSON_PATCH_OPERATIONS,
    PatchError,
    create_merge_patch,
    json_equal,
    json_merge_patch,
    json_patch,
    strategic_merge_patch,
)


def same(a: Any, b: Any) -> bool:
    """Equal as JSON documents, with types compared strictly (true is not 1)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ---------------------------------------------------------------------------------------------------
# RFC 7386


RFC7386_APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_APPENDIX_A)
def test_json_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    """Every example of RFC 7386's Appendix A."""
    assert same(json_merge_patch(target, patch), result)


def test_json_merge_patch_changes_neither_argument() -> None:
    """The target and the patch are left as they were; the result shares nothing with the patch."""
    target: dict[str, Any] = {"a": {"b": [1]}, "c": 1}
    patch: dict[str, Any] = {"a": {"b": [2], "d": {"e": 1}}, "c": None}
    before = copy.deepcopy((target, patch))
    out = json_merge_patch(target, patch)
    assert (target, patch) == before
    out["a"]["d"]["e"] = 2
    assert patch["a"]["d"]["e"] == 1


def test_create_merge_patch_is_minimal() -> None:
    """Only the changed members are sent; removed members are nulled; lists are sent whole."""
    original = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2], "x": True}}
    modified = {"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"ports": [1, 2, 3], "x": True}}
    assert create_merge_patch(original, modified) == {
        "metadata": {"labels": {"b": None, "c": "3"}},
        "spec": {"ports": [1, 2, 3]},
    }


def test_create_merge_patch_tells_true_from_one() -> None:
    """1 -> true is a change, as JSON sees it."""
    assert create_merge_patch({"a": 1}, {"a": True}) == {"a": True}
    assert create_merge_patch({"a": 1}, {"a": 1.0}) == {}


def test_create_merge_patch_refuses_null_members() -> None:
    """A merge patch can not set a member to null: no patch exists, and that is said."""
    with pytest.raises(PatchError, match=r"can not set spec\.x to null"):
        create_merge_patch({"spec": {}}, {"spec": {"x": None}})
    with pytest.raises(PatchError, match=r"can not set spec\.x\.y to null"):
        create_merge_patch({"spec": 1}, {"spec": {"x": {"y": None}}})
    assert create_merge_patch({}, {"a": [None, {"b": None}]}) == {"a": [None, {"b": None}]}


scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=2)
keys = st.sampled_from(["a", "b", "c", "spec", "$x"])
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)
# The documents a merge patch can produce: no null member outside a list (inside one, anything goes).
mergeable = st.recursive(
    scalars.filter(lambda v: v is not None),
    lambda children: st.lists(json_values, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)


@given(a=json_values, b=mergeable | st.none())
def test_merge_patch_of_a_diff_gives_the_target(a: Any, b: Any) -> None:
    """json_merge_patch(a, create_merge_patch(a, b)) == b whenever the diff exists."""
    diff = create_merge_patch(a, b)
    assert same(json_merge_patch(a, diff), b)


@given(a=json_values, b=json_values)
def test_merge_diff_exists_or_says_why(a: Any, b: Any) -> None:
    """For any pair, the diff either round-trips or is refused with a PatchError about a null."""
    refused = ""
    try:
        diff = create_merge_patch(a, b)
    except PatchError as e:
        refused = str(e)
    if refused:
        assert "to null" in refused
    else:
        assert same(json_merge_patch(a, diff), b)


# ---------------------------------------------------------------------------------------------------
# RFC 6902


RFC6902_APPENDIX_A = [
    ("A.1", {"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    (
        "A.2",
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    ("A.3", {"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ("A.4", {"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    (
        "A.5",
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7",
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (
        "A.10",
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    ("A.14", {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    (
        "A.16",
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
]


@pytest.mark.parametrize(("example", "target", "ops", "result"), RFC6902_APPENDIX_A)
def test_json_patch_rfc6902_examples(example: str, target: Any, ops: Any, result: Any) -> None:
    """The successful examples of RFC 6902's Appendix A."""
    assert same(json_patch(target, ops), result), example


@pytest.mark.parametrize(
    ("example", "target", "ops", "message"),
    [
        (
            "A.9",
            {"baz": "qux"},
            [{"op": "test", "path": "/baz", "value": "bar"}],
            "operation 0 (test /baz): qux (<class 'str'>) is not equal to tested value bar (<class 'str'>)",
        ),
        (
            "A.12",
            {"foo": "bar"},
            [{"op": "add", "path": "/baz/bat", "value": "qux"}],
            "operation 0 (add /baz/bat): ",
        ),
        (
            "A.15",
            {"/": 9, "~1": 10},
            [{"op": "test", "path": "/~01", "value": "10"}],
            "operation 0 (test /~01): 10 (<class 'int'>) is not equal to tested value 10 (<class 'str'>)",
        ),
    ],
)
def test_json_patch_rfc6902_error_examples(example: str, target: Any, ops: Any, message: str) -> None:
    """The failing examples of RFC 6902's Appendix A fail, naming the operation."""
    with pytest.raises(PatchError) as exc:
        json_patch(target, ops)
    assert str(exc.value).startswith(message), example


def test_json_patch_names_the_failing_operation_and_changes_nothing() -> None:
    """The error names the failing operation's index, op and path; the target is left as it was."""
    target = {"spec": {"ports": [{"port": 80}]}}
    ops = [
        {"op": "replace", "path": "/spec/ports/0/port", "value": 81},
        {"op": "remove", "path": "/spec/ports/5"},
    ]
    with pytest.raises(PatchError) as exc:
        json_patch(target, ops)
    assert str(exc.value).startswith("operation 1 (remove /spec/ports/5): ")
    assert target == {"spec": {"ports": [{"port": 80}]}}


def test_json_patch_test_tells_true_from_one() -> None:
    """test compares as JSON does: 1 is not true."""
    with pytest.raises(PatchError, match=r"^operation 0 \(test /a\)"):
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": True}])


def test_json_patch_result_shares_nothing_with_the_patch() -> None:
    """A value added by the patch is a copy: later changes to the result do not reach the patch."""
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": "/a", "value": {"b": 1}},
        {"op": "add", "path": "/a/c", "value": 2},
    ]
    out = json_patch({}, ops)
    assert out == {"a": {"b": 1, "c": 2}}
    assert ops[0]["value"] == {"b": 1}


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ({"op": "add"}, "a JSON patch must be a list of operations"),
        ("[]", "a JSON patch must be a list of operations"),
        ([1], "operation 0: must be an object"),
        (
            [{"path": "/a"}],
            "operation 0: must have an 'op' member, one of add, remove, replace, move, copy, test",
        ),
        (
            [{"op": 1, "path": "/a"}],
            "operation 0: must have an 'op' member, one of add, remove, replace, move, copy, test",
        ),
        (
            [{"op": "append", "path": "/a"}],
            "operation 0: unknown op 'append' (expected one of add, remove, replace, move, copy, test)",
        ),
        ([{"op": "remove"}], "operation 0 (remove): must have a 'path' member holding a JSON pointer"),
        (
            [{"op": "remove", "path": ["a"]}],
            "operation 0 (remove): must have a 'path' member holding a JSON pointer",
        ),
        ([{"op": "add", "path": "/b"}], "operation 0 (add /b): must have a 'value' member"),
        (
            [{"op": "move", "path": "/b"}],
            "operation 0 (move /b): must have a 'from' member holding a JSON pointer",
        ),
        ([{"op": "add", "path": "b", "value": 1}], "operation 0 (add b): Location must start with /"),
        ([{"op": "remove", "path": ""}], "operation 0 (remove ): can't remove the whole document"),
        ([{"op": "add", "path": "/a/x", "value": 1}], "operation 0 (add /a/x): "),
        (
            [{"op": "move", "from": "/a", "path": "/a/b"}],
            "operation 0 (move /a/b): Cannot move values into their own children",
        ),
    ],
)
def test_json_patch_refuses_hostile_operations(ops: Any, message: str) -> None:
    """Malformed patches raise a PatchError saying what is wrong with which operation."""
    with pytest.raises(PatchError) as exc:
        json_patch({"a": 1}, ops)
    assert str(exc.value).startswith(message)


def test_json_patch_is_bounded() -> None:
    """More operations than Kubernetes allows are refused before any is applied."""
    ops = [{"op": "test", "path": "", "value": {}}] * (MAX_JSON_PATCH_OPERATIONS + 1)
    with pytest.raises(
        PatchError, match="the allowed maximum operations in a JSON patch is 10000, got 10001"
    ):
        json_patch({}, ops)


# ---------------------------------------------------------------------------------------------------
# Strategic merge patch


def service(ports: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", **meta},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": "web"},
            "ports": ports,
            "clusterIPs": ["10.96.0.7"],
        },
    }


def ports_of(obj: dict[str, Any]) -> list[Any]:
    return [p["port"] for p in obj["spec"]["ports"]]


HTTP = {"name": "http", "port": 80, "targetPort": 8080}
METRICS = {"name": "metrics", "port": 9090}
ADMIN = {"name": "admin", "port": 7000}


def test_kubectl_apply_patch_adds_changes_deletes_and_orders_ports() -> None:
    """kubectl apply's patch gives the file's port order and keeps a port only the server has."""
    live = service([HTTP, ADMIN, METRICS])
    patch = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {
            "$setElementOrder/ports": [{"port": 443}, {"port": 80}],
            "ports": [
                {"name": "https", "port": 443, "targetPort": 8443},
                {"port": 80, "targetPort": 8081},
                {"$patch": "delete", "port": 9090},
            ],
        },
    }
    out = strategic_merge_patch(live, patch, Service)
    assert out["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": 8443},
        {"name": "http", "port": 80, "targetPort": 8081},
        ADMIN,
    ]
    assert out["metadata"]["annotations"] == {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert out["spec"]["selector"] == {"app": "web"}


def test_set_element_order_alone_reorders() -> None:
    """A patch that only reorders sends just $setElementOrder."""
    out = strategic_merge_patch(
        service([HTTP, METRICS]),
        {"spec": {"$setElementOrder/ports": [{"port": 9090}, {"port": 80}]}},
        Service,
    )
    assert ports_of(out) == [9090, 80]


def test_set_element_order_keeps_server_only_items_in_place() -> None:
    """An unlisted item goes before the first listed item that followed it on the server."""
    live = service([HTTP, ADMIN, METRICS])
    out = strategic_merge_patch(
        live, {"spec": {"$setElementOrder/ports": [{"port": 9090}, {"port": 80}]}}, Service
    )
    assert ports_of(out) == [7000, 9090, 80]


def test_set_element_order_on_a_new_list() -> None:
    """Ordering a list the object did not have yet takes the patch's items in that order."""
    live = service([])
    del live["spec"]["ports"]
    patch = {"spec": {"$setElementOrder/ports": [{"port": 9090}, {"port": 80}], "ports": [METRICS, HTTP]}}
    assert ports_of(strategic_merge_patch(live, patch, Service)) == [9090, 80]


def test_new_item_without_order_goes_first() -> None:
    """Without $setElementOrder a new item lands before the server's items, as Kubernetes does."""
    out = strategic_merge_patch(service([HTTP, METRICS]), {"spec": {"ports": [ADMIN]}}, Service)
    assert ports_of(out) == [7000, 80, 9090]


def test_changed_item_keeps_its_place_and_merges() -> None:
    """Changing one field of one port keeps the other fields and the other ports."""
    out = strategic_merge_patch(
        service([HTTP, METRICS]), {"spec": {"ports": [{"port": 9090, "protocol": "TCP"}]}}, Service
    )
    assert out["spec"]["ports"] == [HTTP, {"name": "metrics", "port": 9090, "protocol": "TCP"}]


def test_null_member_deletes_inside_a_merged_item() -> None:
    """null removes a field of an item found by its merge key."""
    out = strategic_merge_patch(
        service([HTTP]), {"spec": {"ports": [{"port": 80, "targetPort": None}]}}, Service
    )
    assert out["spec"]["ports"] == [{"name": "http", "port": 80}]


def test_delete_directive_removes_the_item_with_that_key() -> None:
    """{$patch: delete, port: 80} removes port 80."""
    out = strategic_merge_patch(
        service([HTTP, METRICS]), {"spec": {"ports": [{"$patch": "delete", "port": 80}]}}, Service
    )
    assert ports_of(out) == [9090]


def test_replace_directive_in_a_list_replaces_it() -> None:
    """{$patch: replace} makes the list exactly the patch's other items."""
    patch = {"spec": {"ports": [{"port": 443, "name": "https"}, {"$patch": "replace"}]}}
    assert strategic_merge_patch(service([HTTP, METRICS]), patch, Service)["spec"]["ports"] == [
        {"port": 443, "name": "https"}
    ]


def test_merge_directive_is_the_default_stated() -> None:
    """$patch: merge on a map, or as a list item, changes nothing about the merge."""
    patch = {"spec": {"$patch": "merge", "selector": {"tier": "1"}, "ports": [{"$patch": "merge"}, ADMIN]}}
    out = strategic_merge_patch(service([HTTP]), patch, Service)
    assert out["spec"]["selector"] == {"app": "web", "tier": "1"}
    assert ports_of(out) == [7000, 80]


def test_replace_directive_on_a_map_replaces_it() -> None:
    """$patch: replace in a map replaces the whole map."""
    out = strategic_merge_patch(
        service([HTTP]), {"spec": {"selector": {"$patch": "replace", "tier": "1"}}}, Service
    )
    assert out["spec"]["selector"] == {"tier": "1"}


def test_delete_directive_on_a_map_removes_it() -> None:
    """$patch: delete on a map removes the member (not an empty map, which would select everything)."""
    out = strategic_merge_patch(service([HTTP]), {"spec": {"selector": {"$patch": "delete"}}}, Service)
    assert "selector" not in out["spec"]
    assert strategic_merge_patch({"a": 1}, {"$patch": "delete"}, Service) == {}


def test_maps_merge_and_null_deletes() -> None:
    """Labels merge key by key; null deletes."""
    live = service([HTTP], labels={"a": "1", "b": "2"})
    out = strategic_merge_patch(live, {"metadata": {"labels": {"b": None, "c": "3"}}}, Service)
    assert out["metadata"]["labels"] == {"a": "1", "c": "3"}


def test_unmarked_lists_are_replaced() -> None:
    """clusterIPs has no merge strategy: the patch's list replaces it."""
    out = strategic_merge_patch(service([HTTP]), {"spec": {"clusterIPs": ["10.96.0.8"]}}, Service)
    assert out["spec"]["clusterIPs"] == ["10.96.0.8"]


def test_atomic_lists_of_objects_are_replaced_with_nulls_dropped() -> None:
    """NetworkPolicy's rule lists are atomic: replaced, their items taken from the patch."""
    live: dict[str, Any] = {"spec": {"ingress": [{"from": [{"podSelector": {}}]}, {}]}}
    patch = {"spec": {"ingress": [{"ports": [{"port": 80, "endPort": None}]}]}}
    assert strategic_merge_patch(live, patch, NetworkPolicy)["spec"]["ingress"] == [{"ports": [{"port": 80}]}]


def test_finalizers_merge_as_a_set() -> None:
    """metadata.finalizers merges as a set: new values are added, existing ones not repeated."""
    live = service([HTTP], finalizers=["a", "b"])
    out = strategic_merge_patch(live, {"metadata": {"finalizers": ["b", "c"]}}, Service)
    assert out["metadata"]["finalizers"] == ["a", "b", "c"]


def test_delete_from_primitive_list() -> None:
    """$deleteFromPrimitiveList/finalizers removes values, after any additions."""
    live = service([HTTP], finalizers=["a", "b", "c"])
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "x"], "finalizers": ["d"]}}
    assert strategic_merge_patch(live, patch, Service)["metadata"]["finalizers"] == ["d", "a", "c"]
    bare = service([HTTP])
    assert (
        "finalizers"
        not in strategic_merge_patch(
            bare, patch | {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, Service
        )["metadata"]
    )


def test_set_element_order_on_a_primitive_list() -> None:
    """kubectl apply's order for finalizers is honored, with server-only values kept."""
    live = service([HTTP], finalizers=["a", "b", "z"])
    patch = {"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]}}
    assert strategic_merge_patch(live, patch, Service)["metadata"]["finalizers"] == ["c", "b", "a", "z"]


def test_owner_references_merge_by_uid() -> None:
    """ownerReferences merge on uid; a delete directive removes one owner."""
    owner = {"apiVersion": "v1", "kind": "Namespace", "name": "a", "uid": "u1"}
    other = {"apiVersion": "v1", "kind": "Namespace", "name": "b", "uid": "u2"}
    live = service([HTTP], ownerReferences=[owner, other])
    patch = {
        "metadata": {
            "ownerReferences": [{"uid": "u1", "controller": True}, {"$patch": "delete", "uid": "u2"}]
        }
    }
    assert strategic_merge_patch(live, patch, Service)["metadata"]["ownerReferences"] == [
        owner | {"controller": True}
    ]


def test_service_account_secrets_merge_by_name() -> None:
    """Another kind's marker: ServiceAccount secrets merge by name."""
    live = {"secrets": [{"name": "a"}]}
    assert strategic_merge_patch(live, {"secrets": [{"name": "b"}]}, ServiceAccount)["secrets"] == [
        {"name": "b"},
        {"name": "a"},
    ]


def test_retain_keys_clears_unlisted_fields() -> None:
    """$retainKeys clears the map's fields it does not list."""
    patch = {"spec": {"$retainKeys": ["type", "ports"], "type": "ClusterIP"}}
    out = strategic_merge_patch(service([HTTP]), patch, Service)
    assert out["spec"] == {"type": "ClusterIP", "ports": [HTTP]}


def test_unknown_fields_merge_like_a_merge_patch() -> None:
    """Fields the schema does not know merge as JSON merge patch would (validation judges them later)."""
    live = {"extra": {"a": [1], "b": {"c": 1}}}
    patch = {"extra": {"a": [2], "b": {"d": 2}}}
    assert strategic_merge_patch(live, patch, Service) == json_merge_patch(live, patch)


def test_new_members_have_their_directives_applied() -> None:
    """A member the object did not have is the patch applied to nothing: nulls and directives go."""
    live = service([HTTP])
    del live["spec"]["selector"]
    patch = {"spec": {"selector": {"app": "x", "gone": None, "$patch": "merge"}}}
    assert strategic_merge_patch(live, patch, Service)["spec"]["selector"] == {"app": "x"}


def test_strategic_merge_patch_changes_neither_argument() -> None:
    """The target and the patch are left as they were."""
    live = service([HTTP, METRICS], finalizers=["a"])
    patch = {"spec": {"ports": [{"port": 80, "name": "web"}, {"$patch": "delete", "port": 9090}]}}
    before = copy.deepcopy((live, patch))
    strategic_merge_patch(live, patch, Service)
    assert (live, patch) == before


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"spec": {"$bogus": 1}}, "spec: unknown directive '$bogus'"),
        ({"$foo": 1}, "the object: unknown directive '$foo'"),
        (
            {"spec": {"$patch": "frob"}},
            "spec: unknown $patch directive 'frob' (expected replace, delete or merge)",
        ),
        (
            {"spec": {"ports": [{"$patch": "frob", "port": 80}]}},
            "spec.ports[0]: unknown $patch directive 'frob' (expected replace, delete or merge)",
        ),
        ({"spec": {"ports": [80]}}, "spec.ports[0]: must be an object, as spec.ports merges by 'port'"),
        (
            {"spec": {"ports": [{"name": "x"}]}},
            'spec.ports: an item has no merge key \'port\': {"name": "x"}',
        ),
        (
            {"spec": {"ports": [{"$patch": "delete"}]}},
            "spec.ports[0]: a $patch: delete item must give its 'port'",
        ),
        ({"spec": {"$setElementOrder/ports": {"port": 80}}}, "spec: $setElementOrder/ports must be a list"),
        (
            {"spec": {"$setElementOrder/ports": [80]}},
            "spec: $setElementOrder/ports[0] must be an object giving 'port'",
        ),
        (
            {"spec": {"$setElementOrder/selector": []}},
            "spec: $setElementOrder/selector: spec.selector is not a list that merges",
        ),
        (
            {
                "spec": {
                    "$setElementOrder/ports": [{"port": 80}, {"port": 443}],
                    "ports": [{"port": 443}, {"port": 80}],
                }
            },
            "spec.ports: the order of the patch's items does not match $setElementOrder/ports",
        ),
        (
            {"spec": {"$setElementOrder/ports": [{"port": 80}], "ports": {"port": 80}}},
            "spec.ports: must be a list, as $setElementOrder/ports orders it",
        ),
        (
            {"metadata": {"$setElementOrder/finalizers": [["a"]]}},
            "metadata: $setElementOrder/finalizers[0] must be a scalar",
        ),
        (
            {"spec": {"$setElementOrder/": []}},
            "spec: directive '$setElementOrder/' must name a field after the '/'",
        ),
        (
            {"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}},
            "metadata: $deleteFromPrimitiveList/finalizers must be a list",
        ),
        (
            {"metadata": {"$deleteFromPrimitiveList/labels": ["a"]}},
            "metadata: $deleteFromPrimitiveList/labels: metadata.labels is not a list that merges as a set",
        ),
        ({"spec": {"$retainKeys": "type"}}, "spec: $retainKeys must be a list of field names"),
        (
            {"spec": {"$retainKeys": ["type"], "selector": {"a": "b"}}},
            "spec: 'selector' is in the patch but not in $retainKeys",
        ),
        (
            {"spec": {"clusterIPs": [{"$patch": "delete"}]}},
            (
                "spec.clusterIPs[0]: $patch in a list item applies only to lists that merge by key; "
                "spec.clusterIPs is replaced as a whole"
            ),
        ),
        (
            {"metadata": {"finalizers": [{"a": 1}]}},
            "metadata.finalizers: must be a list of scalars, as it merges as a set (item 1)",
        ),
        ({"spec": {1: "x"}}, "spec: member names must be strings, not 1"),
    ],
)
def test_strategic_merge_patch_refuses_malformed_patches(patch: dict[Any, Any], message: str) -> None:
    """Each malformed patch raises a PatchError saying where and why."""
    with pytest.raises(PatchError) as exc:
        strategic_merge_patch(service([HTTP], finalizers=["f"]), patch, Service)
    assert str(exc.value) == message


def test_strategic_merge_patch_refuses_non_objects() -> None:
    """Both the object and the patch must be JSON objects."""
    with pytest.raises(PatchError, match="a strategic merge patch must be a JSON object"):
        strategic_merge_patch({}, [], Service)
    with pytest.raises(PatchError, match="the object to patch must be a JSON object"):
        strategic_merge_patch([], {}, Service)


def test_stored_list_of_the_wrong_shape_is_reported() -> None:
    """A stored list that can not merge by its key is an error, not a crash."""
    with pytest.raises(PatchError, match=r"spec\.ports\[0\]: the stored list holds a non-object"):
        strategic_merge_patch({"spec": {"ports": [80]}}, {"spec": {"ports": [{"port": 80}]}}, Service)


def test_deeply_nested_patches_are_refused() -> None:
    """A patch nested deeper than Python's stack is a PatchError, not a RecursionError."""
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    appliers: list[Callable[[], object]] = [
        lambda: strategic_merge_patch({}, deep, Service),
        lambda: json_merge_patch({}, deep),
        lambda: json_patch({}, [{"op": "add", "path": "/x", "value": deep}]),
    ]
    for apply in appliers:
        with pytest.raises(PatchError, match="nested too deeply"):
            apply()


# ---------------------------------------------------------------------------------------------------
# Hostile input, generated: every patch is applied or refused with a PatchError, nothing else.

smp_keys = st.sampled_from(
    [
        "spec",
        "metadata",
        "ports",
        "port",
        "name",
        "selector",
        "finalizers",
        "ownerReferences",
        "uid",
        "clusterIPs",
        "$patch",
        "$retainKeys",
        "$setElementOrder/ports",
        "$setElementOrder/finalizers",
        "$deleteFromPrimitiveList/finalizers",
        "$deleteFromPrimitiveList/ports",
        "$bogus",
    ]
)
smp_scalars = (
    st.none() | st.booleans() | st.integers(0, 3) | st.sampled_from(["replace", "delete", "merge", "x"])
)
smp_values = st.recursive(
    smp_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(smp_keys, children, max_size=4),
    max_leaves=20,
)
smp_docs = st.dictionaries(smp_keys, smp_values, max_size=4)


@settings(max_examples=300)
@given(target=smp_docs, patch=smp_docs)
def test_strategic_merge_patch_applies_or_raises_patch_error(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    """Any JSON object patch on any JSON object: a new object, or a PatchError; inputs untouched."""
    before = copy.deepcopy((target, patch))
    try:
        out = strategic_merge_patch(target, patch, Service)
    except PatchError:
        pass
    else:
        assert isinstance(out, dict)
    assert (target, patch) == before


json_ops = st.lists(
    st.dictionaries(
        st.sampled_from(["op", "path", "from", "value"]),
        st.sampled_from(
            ["add", "remove", "replace", "move", "copy", "test", "/a", "/a/0", "/a/-", "/b/c", "", "/", 1]
        )
        | json_values,
        max_size=4,
    )
    | json_values,
    max_size=4,
)


@settings(max_examples=300)
@given(target=json_values, ops=json_ops | json_values)
def test_json_patch_applies_or_raises_patch_error(target: Any, ops: Any) -> None:
    """Any operations on any document: a result, or a PatchError; inputs untouched."""
    before = copy.deepcopy((target, ops))
    with contextlib.suppress(PatchError):
        json_patch(target, ops)
    assert same((target, ops), before)


@given(target=json_values, patch=json_values)
def test_json_merge_patch_always_applies(target: Any, patch: Any) -> None:
    """A merge patch always applies to any document."""
    json_merge_patch(target, patch)


maps_only = st.recursive(
    st.booleans() | st.integers(-3, 3) | st.text(max_size=2) | st.lists(st.integers(), max_size=2),
    lambda children: st.dictionaries(st.sampled_from(["a", "b", "c"]), children | st.none(), max_size=3),
    max_leaves=12,
)


@given(
    target=st.dictionaries(st.sampled_from(["a", "b"]), maps_only),
    patch=st.dictionaries(st.sampled_from(["a", "b"]), maps_only | st.none()),
)
def test_strategic_merge_equals_merge_patch_without_lists_or_directives(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    """Where the schema says nothing and the patch has no directive, strategic merge is a merge patch."""
    assert same(strategic_merge_patch(target, patch, Service), json_merge_patch(target, patch))


def test_json_equal_is_json_equality() -> None:
    """true != 1, 1 == 1.0, and containers compare member by member."""
    assert not json_equal(True, 1)
    assert json_equal(1, 1.0)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert not json_equal("1", 1)
