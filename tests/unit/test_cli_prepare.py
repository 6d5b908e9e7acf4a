"""How apply reads one document before talking to the server: its kind from apiVersion and kind, its
namespace (the document's, else -n, else "default"; none for cluster-scoped kinds), its name, and the
items of a List."""

from __future__ import annotations

import pytest

from innermesh.cli.apply import DocumentError, document_objects, prepare
from innermesh.cli.documents import Document


def svc(**meta: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": dict(meta), "spec": {"ports": [{"port": 80}]}}


def test_namespace_comes_from_the_document_then_the_flag_then_default() -> None:
    """metadata.namespace wins; -n fills in; "default" last; the config records it."""
    kind, ns, name, config = prepare(svc(name="web", namespace="a"), "b")
    assert (kind.kind, ns, name, config["metadata"]["namespace"]) == ("Service", "a", "web", "a")
    assert prepare(svc(name="web"), "b")[1] == "b"
    assert prepare(svc(name="web"), None)[1] == "default"


def test_cluster_scoped_kinds_have_no_namespace() -> None:
    """A namespace on a Namespace object is dropped, as the Kubernetes API server drops it."""
    _kind, ns, _name, config = prepare(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}}, "z"
    )
    assert ns is None
    assert "namespace" not in config["metadata"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "Service", "metadata": {"name": "a"}}, "apiVersion not set"),
        ({"metadata": {"name": "a"}}, "apiVersion not set, kind not set"),
        (
            {"apiVersion": "v2", "kind": "Service", "metadata": {"name": "a"}},
            'no matches for kind "Service" in version "v2"',
        ),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {}}, "metadata.name is required"),
        (
            {"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "a-"}},
            "apply cannot use generateName",
        ),
        (["not", "an", "object"], "the document is not an object"),
    ],
)
def test_documents_apply_cannot_use(doc: object, message: str) -> None:
    """Each problem is named before anything is sent."""
    with pytest.raises(DocumentError) as info:
        prepare(doc, None)
    assert message in info.value.details[0]


def test_a_list_document_yields_its_items() -> None:
    """kind: List (as get -o yaml prints several objects) is applied item by item."""
    doc = Document("f.yaml", 3, {"apiVersion": "v1", "kind": "List", "items": [svc(name="a"), svc(name="b")]})
    assert [label for label, _ in document_objects(doc)] == [
        'document 3, item 1 (Service "a")',
        'document 3, item 2 (Service "b")',
    ]
    single = Document("f.yaml", 1, svc(name="c"))
    assert [label for label, _ in document_objects(single)] == ['document 1 (Service "c")']
    assert list(document_objects(Document("f.yaml", 2, None))) == []
