"""A sidecar's scope: what it is told does not grow with the mesh, and whatever it is told holds
together (every cluster a route names exists, every EDS cluster has endpoints, domains are unique)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innermesh.api.model import parse
from innermesh.api.scheme import REGISTRY
from innermesh.xds.state import MeshState
from innermesh.xds.translate import translate
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, ProxyInfo, Resources

CLIENT_NS = "team-a"
PROXY = ProxyInfo(
    node_id=f"sidecar~{CLIENT_NS}~client", kind="sidecar", namespace=CLIENT_NS, workload="client"
)


def obj(doc: dict[str, Any]) -> Any:
    return parse(REGISTRY.by_gvk(doc["apiVersion"], doc["kind"]).model, doc)


def service(namespace: str, name: str, index: int, ports: tuple[int, ...] = (80,)) -> Any:
    return obj(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "clusterIP": f"10.96.{index // 250}.{index % 250 + 1}",
                "ports": [{"name": f"http-{p}", "port": p} for p in ports],
            },
        }
    )


def endpoints(namespace: str, name: str, index: int) -> Any:
    return obj(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-a",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http-80", "port": 8080}],
            "endpoints": [{"addresses": [f"10.1.{index // 250}.{index % 250 + 1}"]}],
        }
    )


def workload(egress: list[str] | None = None) -> Any:
    spec: dict[str, Any] = {"addresses": ["127.0.0.2"]}
    if egress is not None:
        spec["egress"] = egress
    return obj(
        {
            "apiVersion": "mesh.innermesh.io/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": "client", "namespace": CLIENT_NS},
            "spec": spec,
        }
    )


def mesh(total: int, egress: list[str] | None = None) -> MeshState:
    """``total`` Services: 3 in the client's namespace, the rest spread over 10 namespaces per 100."""
    objects = [workload(egress)]
    for i in range(total):
        ns = CLIENT_NS if i < 3 else f"ns-{i % max(1, total // 10)}"
        objects += [service(ns, f"svc-{i}", i), endpoints(ns, f"svc-{i}", i)]
    return MeshState.from_objects(objects)


def push_size(resources: Resources) -> int:
    return sum(len(m.SerializeToString()) for by_name in resources.values() for m in by_name.values())


def hosts(resources: Resources) -> list[str]:
    return sorted(vh.name for vh in resources[ROUTE]["outbound"].virtual_hosts)


def test_a_namespace_of_three_in_a_mesh_of_500_gets_three() -> None:
    """Only the three Services of the proxy's namespace, and the push is the same size in a mesh of
    50 as in one of 500."""
    small, large = mesh(50), mesh(500)
    in_large = translate(large, PROXY, None)
    assert hosts(in_large) == [f"svc-{i}.{CLIENT_NS}.svc.cluster.local:80" for i in range(3)]
    assert (
        sorted(in_large[CLUSTER])
        == sorted(in_large[ENDPOINT])
        == [f"outbound|80||svc-{i}.{CLIENT_NS}.svc.cluster.local" for i in range(3)]
    )
    assert push_size(translate(small, PROXY, None)) == push_size(in_large)


def test_egress_adds_exactly_what_it_names() -> None:
    """``<ns>/<svc>`` adds one Service, ``<ns>/*`` a namespace, ``*/*`` the whole mesh."""
    state = mesh(500, egress=["ns-7/svc-57", "ns-9/*"])
    got = hosts(translate(state, PROXY, None))
    ns9 = sorted(f"{s.name}.ns-9.svc.cluster.local:80" for s in state.services_by_namespace["ns-9"])
    assert len(ns9) == 10
    assert got == sorted(
        [
            *(f"svc-{i}.{CLIENT_NS}.svc.cluster.local:80" for i in range(3)),
            "svc-57.ns-7.svc.cluster.local:80",
            *ns9,
        ]
    )
    everything = translate(mesh(60, egress=["*/*"]), PROXY, None)
    assert len(everything[ROUTE]["outbound"].virtual_hosts) == 60


def test_a_sidecar_without_its_workload_gets_nothing() -> None:
    """Until its Workload exists, a sidecar's configuration is empty (its stream stays open)."""
    state = MeshState.from_objects([service(CLIENT_NS, "web", 1)])
    assert translate(state, PROXY, None) == {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}}


# -- consistency over random meshes ---------------------------------------------------------------------

NAMESPACES = ("team-a", "team-b", "team-c")
NAMES = ("web", "api", "db", "cache")


@st.composite
def random_mesh(draw: st.DrawFn) -> MeshState:
    objects: list[Any] = [workload(draw(st.sampled_from([None, ["team-b/*"], ["team-c/api"]])))]
    services = draw(
        st.lists(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(NAMES)), unique=True, max_size=8)
    )
    for i, (ns, name) in enumerate(services):
        objects += [service(ns, name, i, ports=(80, 8080)), endpoints(ns, name, i)]
    for i in range(draw(st.integers(0, 5))):
        ns = draw(st.sampled_from(NAMESPACES))
        parent_ns, parent = draw(st.sampled_from(services)) if services else ("team-a", "web")
        refs = [
            {
                "name": n,
                "namespace": b_ns,
                "port": draw(st.sampled_from([80, 8080, 81])),
                "weight": draw(st.integers(0, 3)),
            }
            for b_ns, n in draw(
                st.lists(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(NAMES)), max_size=3)
            )
        ]
        mirror = draw(st.sampled_from(NAMES))
        objects.append(
            obj(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "HTTPRoute",
                    "metadata": {"name": f"r{i}", "namespace": ns},
                    "spec": {
                        "parentRefs": [
                            {"group": "", "kind": "Service", "name": parent, "namespace": parent_ns}
                        ],
                        "rules": [
                            {"backendRefs": refs},
                            {
                                "matches": [{"path": {"type": "PathPrefix", "value": f"/m{i}"}}],
                                "filters": [
                                    {
                                        "type": "RequestMirror",
                                        "requestMirror": {"backendRef": {"name": mirror, "port": 80}},
                                    }
                                ],
                                "backendRefs": refs[:1],
                            },
                        ],
                    },
                }
            )
        )
    if draw(st.booleans()):
        objects.append(
            obj(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1beta1",
                    "kind": "ReferenceGrant",
                    "metadata": {"name": "all", "namespace": draw(st.sampled_from(NAMESPACES))},
                    "spec": {
                        "from": [
                            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": ns}
                            for ns in NAMESPACES
                        ],
                        "to": [{"group": "", "kind": "Service"}],
                    },
                }
            )
        )
    return MeshState.from_objects(objects)


def referenced_clusters(resources: Resources) -> set[str]:
    out: set[str] = set()
    for table in resources[ROUTE].values():
        for vh in table.virtual_hosts:
            for r in vh.routes:
                action = r.route
                if action.cluster:
                    out.add(action.cluster)
                out |= {c.name for c in action.weighted_clusters.clusters}
                out |= {m.cluster for m in action.request_mirror_policies}
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_mesh())
def test_what_a_sidecar_is_told_holds_together(state: MeshState) -> None:
    """Every cluster a route names exists (or is a deliberate ``invalid|`` one); every EDS cluster has
    a ClusterLoadAssignment and nothing else does; no domain is claimed by two virtual hosts."""
    resources = translate(state, PROXY, None)
    referenced = referenced_clusters(resources)
    outbound = {name for name in resources[CLUSTER] if name.startswith("outbound|")}
    assert {c for c in referenced if not c.startswith("invalid|")} == outbound
    eds = {name for name, c in resources[CLUSTER].items() if c.HasField("eds_cluster_config")}
    assert set(resources[ENDPOINT]) == eds
    domains = [d for vh in resources[ROUTE]["outbound"].virtual_hosts for d in vh.domains]
    assert len(domains) == len(set(domains))
