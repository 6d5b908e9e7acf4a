"""The xDS server's counters in Prometheus text, served on the API's ``/metrics``.

A first set (issue 6 adds the rest of the control plane's metrics): connected data planes by kind,
pushes, and responses, ACKs and NACKs by resource type (the type's short name, a bounded label).
"""

from __future__ import annotations

from collections import Counter

from innermesh.xds.server import ConnectionStatus, ServerStats


def _type_label(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def render(stats: ServerStats, connections: list[ConnectionStatus]) -> str:
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    by_kind = Counter(c.kind or "unknown" for c in connections)
    family(
        "innermesh_xds_connected_proxies",
        "gauge",
        "Data planes with an open ADS stream, by kind.",
        [(f'{{kind="{k}"}}', by_kind.get(k, 0)) for k in ("sidecar", "proxyless")],
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
        family(
            name,
            "counter",
            help_text,
            [(f'{{type="{_type_label(t)}"}}', n) for t, n in sorted(counter.items())],
        )
    return "\n".join(out) + "\n"
