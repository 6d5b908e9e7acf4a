"""The sidecar's inbound side: one listener and one cluster per Workload port.

The protocol of a Workload port is what the Service ports that target it say (a number equal to the
port, or a name equal to the port's name, on a Service of the Workload's namespace whose selector
matches the Workload's labels); when they disagree it is unknown (detected); when none says anything,
the Workload port's own ``appProtocol`` or name decides.
"""

from __future__ import annotations

from innermesh.api.mesh import Workload, WorkloadPort
from innermesh.xds.state import MeshState
from innermesh.xds.translate.clusters import inbound_cluster
from innermesh.xds.translate.listeners import inbound_listener
from innermesh.xds.translate.protocol import PortProtocol, port_protocol
from innermesh.xds.types import CLUSTER, LISTENER, ProxyInfo, Resources, inbound_name


def workload_port_protocol(state: MeshState, workload: Workload, port: WorkloadPort) -> PortProtocol:
    labels = workload.metadata.labels or {}
    said: set[PortProtocol] = set()
    for svc in state.services_by_namespace.get(workload.namespace, ()):
        selector = svc.spec.selector
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for sp in svc.spec.ports or []:
            target = sp.target_port
            if sp.protocol == "TCP" and (
                target == port.port if isinstance(target, int) else target == port.name
            ):
                said.add(port_protocol(sp.app_protocol, sp.name))
    known = said - {"unknown"}
    if len(known) == 1:
        return known.pop()
    if known:
        return "unknown"
    return port_protocol(port.app_protocol, port.name)


def add_inbound(out: Resources, state: MeshState, workload: Workload, proxy: ProxyInfo) -> None:
    # A Workload placed on a node has no address until its agent gives it one: nothing to bind yet.
    if not workload.spec.addresses:
        return
    address = workload.spec.addresses[0]
    for port in workload.spec.ports or []:
        if port.protocol != "TCP":
            continue
        name = inbound_name(port.port)
        protocol = workload_port_protocol(state, workload, port)
        out[LISTENER][name] = inbound_listener(name, address, port.port, protocol)
        out[CLUSTER][name] = inbound_cluster(name, proxy.app_ports.get(port.port, port.port), protocol)
