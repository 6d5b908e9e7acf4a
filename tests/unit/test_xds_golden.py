"""Golden files for the translator: manifests in, Envoy resources out, compared exactly.

Each directory under ``xds_golden/`` is a case: ``input.yaml`` holds the manifests a user would apply
(parsed by the API's own models, so defaults apply as in the server), ``proxy.yaml`` describes who
asks, and ``output.yaml`` is what the translator must produce for it (``MessageToJson`` with proto field
names, keys sorted). ``UPDATE_GOLDEN=1`` rewrites the outputs; read every changed one before accepting it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from innermesh.api.model import parse
from innermesh.api.scheme import REGISTRY
from innermesh.xds.state import MeshState
from innermesh.xds.translate import translate
from innermesh.xds.types import ProxyInfo, Resources

GOLDEN = Path(__file__).parent / "xds_golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").exists())


def mesh_state(manifests: str) -> MeshState:
    """A MeshState from YAML manifests, each parsed and defaulted by its kind's model."""
    objects = []
    for doc in yaml.safe_load_all(manifests):
        if doc:
            objects.append(parse(REGISTRY.by_gvk(doc["apiVersion"], doc["kind"]).model, doc))
    return MeshState.from_objects(objects)


def proxy_from(description: dict[str, Any]) -> tuple[ProxyInfo, frozenset[str] | None]:
    outbound = description.get("outbound")
    names = description.get("listenerNames")
    proxy = ProxyInfo(
        node_id=description.get("nodeId", "test"),
        kind=description["kind"],
        namespace=description["namespace"],
        workload=description.get("workload"),
        outbound=(outbound.rpartition(":")[0], int(outbound.rpartition(":")[2])) if outbound else None,
        app_ports={int(k): int(v) for k, v in (description.get("appPorts") or {}).items()},
        zone=description.get("zone"),
    )
    return proxy, frozenset(names) if names is not None else None


def as_dicts(resources: Resources) -> dict[str, dict[str, Any]]:
    """Resources as plain data: short type name -> resource name -> the message as JSON."""
    return {
        type_url.rsplit(".", 1)[-1]: {
            name: json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))
            for name, msg in sorted(by_name.items())
        }
        for type_url, by_name in sorted(resources.items())
    }


def render(resources: Resources) -> str:
    return yaml.safe_dump(as_dicts(resources), sort_keys=True, width=120)


def translate_case(case: str) -> Resources:
    state = mesh_state((GOLDEN / case / "input.yaml").read_text())
    proxy, names = proxy_from(yaml.safe_load((GOLDEN / case / "proxy.yaml").read_text()))
    return translate(state, proxy, names)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    """The translator's output for the case is exactly the recorded one."""
    actual = render(translate_case(case))
    expected = GOLDEN / case / "output.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(actual)
    assert actual == expected.read_text()


@pytest.mark.parametrize("case", CASES)
def test_resources_round_trip(case: str) -> None:
    """Every emitted resource survives the protobuf JSON round trip: field names, types and enums are
    the real Envoy v3 ones, and each resource is named as its map key says."""
    for by_name in translate_case(case).values():
        for name, msg in by_name.items():
            parsed = json_format.ParseDict(json_format.MessageToDict(msg), type(msg)())
            assert parsed == msg
            own_name = msg.cluster_name if msg.DESCRIPTOR.name == "ClusterLoadAssignment" else msg.name
            assert own_name == name
