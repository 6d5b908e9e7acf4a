"""The proxy's counters, and their Prometheus text form for the admin port's /stats.

Counters are plain integer attributes on slotted objects, found once per request (per cluster and
per response-code class) and incremented in place: no label formatting, locks or allocation on the
request path. Label sets are bounded by configuration (listeners, clusters), never by request data.
Rendering happens only when /stats is scraped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class ListenerStats:
    cx_total: int = 0
    cx_active: int = 0
    rq_total: int = 0
    rq_1xx: int = 0
    rq_2xx: int = 0
    rq_3xx: int = 0
    rq_4xx: int = 0
    rq_5xx: int = 0
    bad_request: int = 0  # malformed HTTP answered 400/431 by the proxy
    no_route: int = 0

    def count_status(self, status: int) -> None:
        """One request answered with ``status`` (0: none could be sent)."""
        self.rq_total += 1
        c = status // 100
        if c == 2:
            self.rq_2xx += 1
        elif c == 5:
            self.rq_5xx += 1
        elif c == 4:
            self.rq_4xx += 1
        elif c == 3:
            self.rq_3xx += 1
        else:
            self.rq_1xx += 1


@dataclass(slots=True)
class ClusterStats:
    rq_total: int = 0
    rq_active: int = 0
    rq_1xx: int = 0
    rq_2xx: int = 0
    rq_3xx: int = 0
    rq_4xx: int = 0
    rq_5xx: int = 0
    rq_retry: int = 0
    rq_timeout: int = 0
    cx_total: int = 0
    cx_active: int = 0
    cx_connect_fail: int = 0
    cx_overflow: int = 0  # a connection-pool limit refused a request
    no_healthy_upstream: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def count_status(self, status: int) -> None:
        c = status // 100
        if c == 2:
            self.rq_2xx += 1
        elif c == 5:
            self.rq_5xx += 1
        elif c == 4:
            self.rq_4xx += 1
        elif c == 3:
            self.rq_3xx += 1
        else:
            self.rq_1xx += 1


# Counters that go up and down are gauges; everything else is a counter.
_GAUGES = frozenset({"cx_active", "rq_active"})


@dataclass
class ProxyStats:
    listeners: dict[str, ListenerStats] = field(default_factory=dict)
    clusters: dict[str, ClusterStats] = field(default_factory=dict)
    config_applied: int = 0
    config_rejected: int = 0

    def listener(self, name: str) -> ListenerStats:
        s = self.listeners.get(name)
        if s is None:
            s = self.listeners[name] = ListenerStats()
        return s

    def cluster(self, name: str) -> ClusterStats:
        s = self.clusters.get(name)
        if s is None:
            s = self.clusters[name] = ClusterStats()
        return s

    def forget(self, listeners: set[str], clusters: set[str]) -> None:
        """Drop the series of listeners and clusters no longer configured (bounded label sets)."""
        for name in [n for n in self.listeners if n not in listeners]:
            if self.listeners[name].cx_active == 0:
                del self.listeners[name]
        for name in [n for n in self.clusters if n not in clusters]:
            if self.clusters[name].rq_active == 0 and self.clusters[name].cx_active == 0:
                del self.clusters[name]

    def render(self) -> str:
        out: list[str] = []
        self._render_family(out, "innermesh_proxy_listener", "listener", self.listeners, ListenerStats)
        self._render_family(out, "innermesh_proxy_cluster", "cluster", self.clusters, ClusterStats)
        out.append("# TYPE innermesh_proxy_config_applied_total counter")
        out.append(f"innermesh_proxy_config_applied_total {self.config_applied}")
        out.append("# TYPE innermesh_proxy_config_rejected_total counter")
        out.append(f"innermesh_proxy_config_rejected_total {self.config_rejected}")
        return "\n".join(out) + "\n"

    @staticmethod
    def _render_family(
        out: list[str], prefix: str, label: str, series: Mapping[str, object], cls: type
    ) -> None:
        for f in fields(cls):
            gauge = f.name in _GAUGES
            metric = f"{prefix}_{f.name}" if gauge else f"{prefix}_{f.name}_total"
            out.append(f"# TYPE {metric} {'gauge' if gauge else 'counter'}")
            for name in sorted(series):
                value = getattr(series[name], f.name)
                out.append(f'{metric}{{{label}="{_escape(name)}"}} {value}')
