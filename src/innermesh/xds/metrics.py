"""The xDS server's counters in Prometheus text, served on the API's ``/metrics``.

A first set (issue 6 adds the rest of the control plane's metrics): connected data planes by kind,
pushes, and responses, ACKs and NACKs by resource type.

Label values come from our own constants, never from what a client sent: the type label is the short
name of one of the types the server serves (anything else would be "other", though the server ends a
stream that names another type), the kind label one of the two proxy kinds. That bounds the number of
series whatever clients do; values are escaped all the same, as the text format requires.
"""

from __future__ import annotations

from collections import Counter

from innermesh.xds.server import ConnectionStatus, ServerStats
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ProxyKind

_TYPE_LABELS = {
    LISTENER: "Listener",
    ROUTE: "RouteConfiguration",
    CLUSTER: "Cluster",
    ENDPOINT: "ClusterLoadAssignment",
    SECRET: "Secret",
}
_OTHER = "other"
_KINDS: tuple[ProxyKind, ...] = ("sidecar", "proxyless")


def label_value(value: str) -> str:
    """A label value escaped for the text exposition format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _by_type(counter: Counter[str]) -> list[tuple[str, int]]:
    totals: Counter[str] = Counter()
    for type_url, n in counter.items():
        totals[_TYPE_LABELS.get(type_url, _OTHER)] += n
    return [(f'{{type="{label_value(t)}"}}', n) for t, n in sorted(totals.items())]


def render(stats: ServerStats, connections: list[ConnectionStatus]) -> str:
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    by_kind = Counter(c.kind for c in connections)
    family(
        "innermesh_xds_connected_proxies",
        "gauge",
        "Data planes with an open ADS stream, by kind.",
        [(f'{{kind="{label_value(k)}"}}', by_kind.get(k, 0)) for k in _KINDS],
    )
    family("innermesh_xds_pushes_total", "counter", "Debounced configuration pushes.", [("", stats.pushes)])
    family(
        "innermesh_xds_generate_errors_total",
        "counter",
        "Configurations the translator failed to generate.",
        [("", stats.generate_errors)],
    )
    for name, counter, help_text in (
        ("innermesh_xds_responses_total", stats.responses, "Discovery responses sent, by resource type."),
        ("innermesh_xds_acks_total", stats.acks, "Responses data planes acknowledged, by resource type."),
        ("innermesh_xds_nacks_total", stats.nacks, "Responses data planes rejected, by resource type."),
    ):
        family(name, "counter", help_text, _by_type(counter))
    return "\n".join(out) + "\n"
