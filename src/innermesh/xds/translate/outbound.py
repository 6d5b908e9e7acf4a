"""Clusters and endpoints for whatever the routes built for one proxy send to.

A backendRef that cannot be resolved is a weighted cluster named ``invalid|...``. For Envoy and our
sidecar it stays undefined, so its share of requests gets the route's ``cluster_not_found_response_code``
(500 for HTTPRoute). Proxyless gRPC, though, holds the whole route table back until every cluster it
names has arrived or its does-not-exist timer (15 s) has fired, so a channel would wait 15 s for its
first call; for it the name is defined as a cluster with no endpoints, whose share of calls fails at
once with UNAVAILABLE (what GRPCRoute requires for an invalid backend).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from innermesh.xds.state import MeshState
from innermesh.xds.translate.actions import Clusters
from innermesh.xds.translate.clusters import outbound_cluster, uses_eds
from innermesh.xds.translate.endpoints import load_assignment
from innermesh.xds.translate.protos import ads
from innermesh.xds.types import CLUSTER, ENDPOINT, Resources


def _empty_cluster(name: str) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    out.eds_cluster_config.eds_config.CopyFrom(ads())
    out.eds_cluster_config.service_name = name
    return out


def add_outbound_clusters(
    out: Resources, state: MeshState, clusters: Clusters, zone: str | None, *, proxyless: bool
) -> None:
    for name, target in sorted(clusters.targets.items()):
        cluster = outbound_cluster(state, target, proxyless=proxyless)
        out[CLUSTER][name] = cluster
        if uses_eds(cluster):
            out[ENDPOINT][name] = load_assignment(state, target, zone, proxyless=proxyless)
    if proxyless:
        for name in sorted(clusters.invalid):
            out[CLUSTER][name] = _empty_cluster(name)
            out[ENDPOINT][name] = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
