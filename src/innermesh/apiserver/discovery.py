"""Discovery documents, /version and /openapi/v2: what kubectl reads before it does anything.

kubectl finds kinds through the legacy discovery documents (``/api``, ``/apis``, ``/api/v1``,
``/apis/<group>/<version>``); newer kubectls ask for aggregated discovery first and fall back to these
when the answer is plain JSON, which it is here.

Before ``create`` and ``apply`` kubectl downloads the OpenAPI v2 document as protobuf (gnostic's
``openapi.v2.Document``) to validate objects client-side, and refuses to go on if it cannot. innermesh
validates every object itself (strictly: unknown fields are refused), so the document it serves declares
no definitions: kubectl then skips its own validation and, for ``apply``, uses strategic merge patch for
the kinds it compiles in (Service, NetworkPolicy...) and JSON merge patch for the others, as it does
against Kubernetes for CRDs.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from innermesh import __version__
from innermesh.api.registry import Kind, Registry

# The version reported to clients: the Kubernetes API level innermesh follows, and our own version.
KUBE_MAJOR, KUBE_MINOR = "1", "31"

VERBS_COLLECTION = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
VERBS_SUBRESOURCE = ["get", "patch", "update"]


def version_info() -> dict[str, str]:
    return {
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": f"v{KUBE_MAJOR}.{KUBE_MINOR}.0+innermesh-{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "python",
        "platform": "linux/amd64",
    }


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    }


def _group_doc(registry: Registry, group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(registry, g, vs) for g, vs in registry.groups().items() if g],
    }


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = registry.groups().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(registry, group, versions)}


def _resource_doc(k: Kind) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": k.plural,
        "singularName": k.singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": VERBS_COLLECTION,
    }
    if k.short_names:
        main["shortNames"] = list(k.short_names)
    if k.categories:
        main["categories"] = list(k.categories)
    docs = [main]
    for sub in k.subresources:
        docs.append(
            {
                "name": f"{k.plural}/{sub}",
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": VERBS_SUBRESOURCE,
            }
        )
    return docs


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    kinds = registry.in_group_version(group, version)
    if not kinds:
        return None
    resources = [doc for k in kinds for doc in _resource_doc(k)]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# ---------------------------------------------------------------------------------------------------
# OpenAPI v2, protobuf


def _openapi_document_class() -> Any:
    """The three messages of gnostic's OpenAPIv2.proto that a definition-free document needs, with
    upstream's field numbers (Document.swagger=1, info=2, paths=8; Info.title=1, version=2)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="innermesh/openapiv2_min.proto", package="openapi.v2", syntax="proto3"
    )
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    info = f.message_type.add(name="Info")
    info.field.add(name="title", number=1, type=string, label=optional)
    info.field.add(name="version", number=2, type=string, label=optional)
    f.message_type.add(name="Paths")
    doc = f.message_type.add(name="Document")
    doc.field.add(name="swagger", number=1, type=string, label=optional)
    doc.field.add(name="info", number=2, type=message, type_name=".openapi.v2.Info", label=optional)
    doc.field.add(name="paths", number=8, type=message, type_name=".openapi.v2.Paths", label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("openapi.v2.Document"))


def openapi_v2_protobuf() -> bytes:
    document = _openapi_document_class()()
    document.swagger = "2.0"
    document.info.title = "innermesh"
    document.info.version = f"v{KUBE_MAJOR}.{KUBE_MINOR}.0+innermesh-{__version__}"
    document.paths.SetInParent()
    data: bytes = document.SerializeToString()
    return data


# Clients ask for "application/com.github.proto-openapi.spec.v2@v1.0+protobuf", but '@' is not legal in
# a Content-Type and Go's mime parser rejects it; Kubernetes answers with octet-stream, and so do we.
OPENAPI_V2_CONTENT_TYPE = "application/octet-stream"
