"""An xDS Node -> ProxyInfo, per the table in docs/design/0005-xds-and-proxy.md."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from innermesh.xds.proxyinfo import proxy_info
from innermesh.xds.types import ProxyInfo


def node(node_id: str, metadata: dict[str, Any] | None = None, zone: str = "") -> Any:
    out = base_pb2.Node(id=node_id)
    if metadata is not None:
        meta = struct_pb2.Struct()
        meta.update(metadata)
        out.metadata.CopyFrom(meta)
    if zone:
        out.locality.zone = zone
    return out


def test_sidecar_node_with_every_field() -> None:
    """A sidecar's id names its namespace and Workload; metadata gives the outbound address and the
    app ports (a Struct, whose numbers arrive as floats); the locality gives the zone."""
    info = proxy_info(
        node(
            "sidecar~shop~web-1",
            {
                "NAMESPACE": "shop",
                "WORKLOAD": "web-1",
                "OUTBOUND": "127.0.0.1:15001",
                "APP_PORTS": {"8080": 18080, "9090": 19090},
            },
            zone="z1",
        )
    )
    assert info == ProxyInfo(
        node_id="sidecar~shop~web-1",
        kind="sidecar",
        namespace="shop",
        workload="web-1",
        outbound=("127.0.0.1", 15001),
        app_ports={8080: 18080, 9090: 19090},
        zone="z1",
    )


def test_sidecar_node_with_the_id_alone() -> None:
    """Metadata is optional for a sidecar: the id says who it is."""
    info = proxy_info(node("sidecar~shop~web-1"))
    assert (info.kind, info.namespace, info.workload, info.outbound, dict(info.app_ports), info.zone) == (
        "sidecar",
        "shop",
        "web-1",
        None,
        {},
        None,
    )


def test_app_ports_as_a_json_string_and_ipv6_outbound() -> None:
    """APP_PORTS may also be JSON text (what a bootstrap written by hand tends to carry)."""
    info = proxy_info(node("sidecar~shop~web-1", {"APP_PORTS": '{"8080": 18080}', "OUTBOUND": "[::1]:15001"}))
    assert dict(info.app_ports) == {8080: 18080}
    assert info.outbound == ("::1", 15001)


def test_proxyless_node() -> None:
    """Any other id is a proxyless gRPC client, in metadata NAMESPACE or "default"."""
    assert proxy_info(node("grpc-client-7", {"NAMESPACE": "shop"}, zone="z2")) == ProxyInfo(
        node_id="grpc-client-7", kind="proxyless", namespace="shop", zone="z2"
    )
    assert proxy_info(node("grpc-client-7")).namespace == "default"


@pytest.mark.parametrize(
    ("node_id", "metadata", "names"),
    [
        ("", None, "id: required"),
        ("sidecar~shop", None, "id: "),
        ("sidecar~shop~", None, "id: "),
        ("sidecar~Shop~web", None, "id: namespace"),
        ("sidecar~shop~web", {"NAMESPACE": "other"}, "metadata NAMESPACE"),
        ("sidecar~shop~web", {"WORKLOAD": "other"}, "metadata WORKLOAD"),
        ("sidecar~shop~web", {"NAMESPACE": 7}, "metadata NAMESPACE"),
        ("grpc-client", {"NAMESPACE": "Not_A_Namespace"}, "metadata NAMESPACE"),
        ("sidecar~shop~web", {"OUTBOUND": "localhost:15001"}, "metadata OUTBOUND"),
        ("sidecar~shop~web", {"OUTBOUND": "127.0.0.1:0"}, "metadata OUTBOUND"),
        ("sidecar~shop~web", {"OUTBOUND": "127.0.0.1"}, "metadata OUTBOUND"),
        ("sidecar~shop~web", {"APP_PORTS": "{not json"}, "metadata APP_PORTS"),
        ("sidecar~shop~web", {"APP_PORTS": [8080]}, "metadata APP_PORTS"),
        ("sidecar~shop~web", {"APP_PORTS": {"http": 8080}}, "metadata APP_PORTS"),
        ("sidecar~shop~web", {"APP_PORTS": {"8080": 70000}}, "metadata APP_PORTS[8080]"),
        ("sidecar~shop~web", {"APP_PORTS": {"8080": 1.5}}, "metadata APP_PORTS[8080]"),
    ],
)
def test_bad_nodes_are_refused_naming_the_field(
    node_id: str, metadata: dict[str, Any] | None, names: str
) -> None:
    """Bad input raises ValueError whose message starts with the field or metadata key at fault."""
    with pytest.raises(ValueError, match="^" + names.replace("[", r"\[").replace("]", r"\]")):
        proxy_info(node(node_id, metadata))
