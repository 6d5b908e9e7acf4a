"""The sidecar process: xDS client -> plan compiler -> runtime, plus the admin port.

Configuration flows one way: the xDS client receives a consistent set of resources and hands it to
``_apply``, which compiles a plan and gives it to the runtime. A set that does not compile, or whose
listeners cannot be bound, is refused (the client NACKs it with the reason) and the proxy keeps
serving its last good plan. The data plane never imports the control plane: only xDS crosses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2

# Typed configs the plan accepts inside Any fields: imported so that /config_dump can print them.
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from google.protobuf import json_format, struct_pb2

from innermesh.proxy.admin import AdminServer
from innermesh.proxy.compile import PlanError, compile_plan
from innermesh.proxy.plan import Plan
from innermesh.proxy.runtime.listeners import ProxyRuntime
from innermesh.proxy.stats import ProxyStats
from innermesh.proxy.xdsclient import ConfigRejected, XdsClient
from innermesh.xds.types import Resources
from innermesh.xds.versions import encode, set_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarConfig:
    namespace: str
    workload: str
    xds: tuple[str, int]
    outbound: tuple[str, int] = ("127.0.0.1", 15001)
    admin: tuple[str, int] = ("127.0.0.1", 15000)
    app_ports: dict[int, int] = field(default_factory=dict)
    zone: str | None = None
    delta: bool = True

    def node(self) -> Any:
        """The xDS Node naming this sidecar (docs/design/0005-xds-and-proxy.md)."""
        metadata = struct_pb2.Struct()
        metadata.update(
            {
                "NAMESPACE": self.namespace,
                "WORKLOAD": self.workload,
                "OUTBOUND": f"{self.outbound[0]}:{self.outbound[1]}",
                "APP_PORTS": {str(k): v for k, v in self.app_ports.items()},
            }
        )
        node = base_pb2.Node(
            id=f"sidecar~{self.namespace}~{self.workload}",
            cluster=f"{self.workload}.{self.namespace}",
            metadata=metadata,
            user_agent_name="innermesh-proxy",
        )
        if self.zone:
            node.locality.zone = self.zone
        return node


def _version(resources: Resources) -> str:
    """The plan's version, shown in /config_dump and logs: the content versions the xDS server uses,
    over every resource of every type."""
    return set_version(
        (f"{type_url}\0{name}", r.version)
        for type_url, by_name in encode(resources).items()
        for name, r in by_name.items()
    )


def _as_dict(message: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except (KeyError, TypeError) as e:  # an Any of a type this proxy does not know
        return {"unprintable": str(e)}
    return result


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.stats = ProxyStats()
        self.runtime = ProxyRuntime(stats=self.stats)
        self.plan: Plan | None = None
        self.resources: Resources = {}
        self.applied_at: float | None = None
        self.xds = XdsClient(
            f"{config.xds[0]}:{config.xds[1]}", config.node(), self._apply, delta=config.delta
        )
        self.admin = AdminServer(self)
        self._task: asyncio.Task[None] | None = None

    async def _apply(self, resources: Resources) -> None:
        version = _version(resources)
        try:
            # Off the event loop: building a Maglev table or a large ring takes tens of milliseconds,
            # which requests in flight should not wait for (the GIL is shared in 5 ms slices, not held).
            plan = await asyncio.to_thread(compile_plan, resources, self.plan, version=version)
        except PlanError as e:
            self.stats.config_rejected += 1
            log.warning("configuration %s rejected: %s", version, e)
            raise ConfigRejected(str(e)) from None
        try:
            await self.runtime.apply(plan)
        except OSError as e:
            self.stats.config_rejected += 1
            log.warning("configuration %s rejected: cannot bind a listener: %s", version, e)
            raise ConfigRejected(f"cannot bind a listener: {e}") from None
        self.plan, self.resources, self.applied_at = plan, resources, time.time()
        self.stats.config_applied += 1
        self.stats.forget(set(plan.listeners), set(plan.clusters))
        log.info(
            "configuration %s applied: %d listeners, %d route tables, %d clusters",
            version,
            len(plan.listeners),
            len(plan.route_tables),
            len(plan.clusters),
        )

    # -- AdminView -------------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.plan is None:
            return False, "no configuration received from the control plane yet"
        return True, ""

    def stats_text(self) -> str:
        return self.stats.render()

    def config_dump(self) -> dict[str, Any]:
        return {
            "version": self.plan.version if self.plan else None,
            "applied_at": self.applied_at,
            "xds": self.xds.state.as_dict(),
            "resources": {
                type_url.rsplit(".", 1)[-1]: {name: _as_dict(msg) for name, msg in sorted(by_name.items())}
                for type_url, by_name in sorted(self.resources.items())
            },
        }

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.admin.start(*self.config.admin)
        self._task = asyncio.create_task(self.xds.run(), name="xds-client")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.runtime.stop(drain_timeout)
        await self.admin.stop()
