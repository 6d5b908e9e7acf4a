"""A data plane's NACK, shown on the route it was about.

When a proxy rejects a RouteConfiguration, the routes it rejected get the condition
``innermesh.io/DataPlaneAccepted=False`` (reason ``Rejected``, the message naming the proxy and its
reason) in each ``status.parents[]`` entry our controller owns. Once every proxy that rejected a route
has acknowledged a newer configuration (or gone away), the condition turns ``True`` (reason
``Accepted``). The route status controller keeps this condition as it is (see ``api/attachment.py``).

Which routes: the sidecar's reasons name the failing element by path (``virtual_hosts[2].routes[0]``);
the route it names is looked up in the configuration regenerated for that proxy, and the route's
Envoy name says which HTTPRoute or GRPCRoute rule it came from (``HTTPRoute/<ns>/<name>/<rule>/<match>``).
A reason without a path blames every route of the rejected RouteConfigurations.

NACKs are handled at most once per ``per_node_interval`` per node id: a node's first NACK is shown at
once, and what it NACKs within the window after that is coalesced (the latest wins) and shown when the
window has passed. A data plane that NACKs in a loop, or a client forging NACKs with fresh messages,
then costs one regeneration and at most one status write per route every few seconds, not one per
NACK.

Each replica reports what its own streams saw; with several replicas a route's condition reflects
the last replica to write it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from innermesh.api import status as errors
from innermesh.api.attachment import CONTROLLER_NAME, DATA_PLANE_ACCEPTED
from innermesh.api.meta import Condition, ConditionStatus, now_rfc3339, set_condition
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.xds.server import ConnectionStatus
from innermesh.xds.types import LISTENER, ROUTE, ConfigSource, ProxyInfo

log = logging.getLogger(__name__)

RouteKey = tuple[str, str, str]  # (kind, namespace, name)

_PATH = re.compile(r"virtual_hosts\[(\d+)\]\.routes\[(\d+)\]")
_ROUTE_NAME = re.compile(r"^(HTTPRoute|GRPCRoute)/([^/]+)/([^/]+)/\d+/\d+$")


def route_of(envoy_route_name: str) -> RouteKey | None:
    m = _ROUTE_NAME.match(envoy_route_name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def rejected_routes(route_configs: Mapping[str, Any], names: Iterable[str], message: str) -> set[RouteKey]:
    """The Gateway API routes a NACK of RouteConfigurations ``names`` was about (pure)."""
    configs = [route_configs[n] for n in names if n in route_configs]
    m = _PATH.search(message)
    if m is not None:
        vh, r = int(m.group(1)), int(m.group(2))
        for config in configs:
            if vh < len(config.virtual_hosts) and r < len(config.virtual_hosts[vh].routes):
                key = route_of(config.virtual_hosts[vh].routes[r].name)
                return {key} if key else set()
    keys = {route_of(r.name) for c in configs for vh in c.virtual_hosts for r in vh.routes}
    return {k for k in keys if k is not None}


@dataclass
class _Flag:
    rejected_by: dict[str, str] = field(default_factory=dict)  # node id -> its reason


@dataclass(frozen=True, slots=True)
class _Nack:
    proxy: ProxyInfo
    type_url: str
    names: tuple[str, ...]
    message: str


class NackStatus:
    """Feeds ``XdsServer(on_nack=...)`` and clears what it flagged once the proxies moved on.

    ``interval`` paces ``run`` (clearing, and the NACKs held back by the rate limit); ``clock`` is a
    monotonic clock in seconds, for the rate limit.
    """

    def __init__(
        self,
        client: Client,
        source: ConfigSource,
        route_kinds: Mapping[str, Kind],
        connections: Callable[[], list[ConnectionStatus]],
        *,
        interval: float = 1.0,
        per_node_interval: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.source = source
        self.route_kinds = route_kinds
        self.connections = connections
        self.interval = interval
        self.per_node_interval = per_node_interval
        self.clock = clock
        self._flags: dict[RouteKey, _Flag] = {}
        self._handled_at: dict[str, float] = {}  # node id -> when its last NACK was handled
        self._held_back: dict[str, _Nack] = {}  # node id -> its latest NACK within the window

    async def on_nack(self, proxy: ProxyInfo, type_url: str, names: Sequence[str], message: str) -> None:
        if type_url not in (ROUTE, LISTENER):
            return  # clusters and endpoints are not any one route's doing
        nack = _Nack(proxy, type_url, tuple(names), message)
        handled_at = self._handled_at.get(proxy.node_id)
        if handled_at is not None and self.clock() - handled_at < self.per_node_interval:
            self._held_back[proxy.node_id] = nack
            return
        await self._handle(nack)

    async def _handle(self, nack: _Nack) -> None:
        proxy = nack.proxy
        self._handled_at[proxy.node_id] = self.clock()
        listener_names = None if proxy.kind == "sidecar" else frozenset(nack.names)
        route_configs = self.source.generate(proxy, listener_names).get(ROUTE, {})
        for key in sorted(rejected_routes(route_configs, nack.names, nack.message)):
            flag = self._flags.setdefault(key, _Flag())
            flag.rejected_by[proxy.node_id] = nack.message
            await self._write(key, "False", "Rejected", f"{proxy.node_id} rejected it: {nack.message}")

    async def _handle_held_back(self) -> None:
        """Handle the NACKs whose node's window has passed; forget windows that are over."""
        now = self.clock()
        over = {n for n, at in self._handled_at.items() if now - at >= self.per_node_interval}
        for node_id in over:
            del self._handled_at[node_id]
            nack = self._held_back.pop(node_id, None)
            if nack is not None:
                await self._handle(nack)

    async def run(self) -> None:
        """Every ``interval``: show the NACKs the rate limit held back, and clear routes whose
        rejecting proxies have all moved on. A failure is logged and tried again at the next turn."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._handle_held_back()
                await self._clear()
            except Exception:
                log.exception("xds: updating the data-plane status of routes failed")

    async def _clear(self) -> None:
        if not self._flags:
            return
        moved_on = self._moved_on()
        for key, flag in list(self._flags.items()):
            for node_id in [n for n in flag.rejected_by if n in moved_on]:
                del flag.rejected_by[node_id]
            if not flag.rejected_by:
                del self._flags[key]
                await self._write(
                    key,
                    "True",
                    "Accepted",
                    "the data planes that rejected it accept the current configuration",
                )

    def _moved_on(self) -> set[str]:
        """Node ids whose every stream has its last route and listener configuration acknowledged, and
        every flagged node id with no stream at all."""
        pending: set[str] = set()
        for c in self.connections():
            for type_url in (ROUTE, LISTENER):
                t = c.types.get(type_url)
                if t is not None and t.sent_version != t.acked_version:
                    pending.add(c.node_id)
        flagged = {n for f in self._flags.values() for n in f.rejected_by}
        return flagged - pending

    async def _write(self, key: RouteKey, status: ConditionStatus, reason: str, message: str) -> None:
        kind_name, namespace, name = key
        kind = self.route_kinds.get(kind_name)
        if kind is None:
            return
        for _ in range(3):  # optimistic concurrency: re-read on conflict
            try:
                obj = await self.client.get(kind, namespace, name)
            except errors.ApiError as e:
                if e.code == 404:
                    return
                raise
            if not _set_condition(obj, status, reason, message[:1024]):
                return
            try:
                await self.client.update(kind, namespace, name, obj, subresource="status")
                return
            except errors.ApiError as e:
                if e.code != 409:
                    log.warning("cannot write data-plane status of %s %s/%s: %s", *key, e.message)
                    return


def _set_condition(obj: dict[str, Any], status: ConditionStatus, reason: str, message: str) -> bool:
    """Set the condition in every parent entry of ours; False when nothing changed."""
    changed = False
    generation = obj.get("metadata", {}).get("generation")
    for parent in (obj.get("status") or {}).get("parents") or []:
        if parent.get("controllerName") != CONTROLLER_NAME:
            continue
        conditions = [Condition.model_validate(c) for c in parent.get("conditions") or []]
        new = Condition(
            type=DATA_PLANE_ACCEPTED,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
            last_transition_time=now_rfc3339(),
        )
        old = next((c for c in conditions if c.type == DATA_PLANE_ACCEPTED), None)
        if old is not None and (old.status, old.reason, old.message) == (status, reason, message):
            continue
        parent["conditions"] = [c.to_dict() for c in set_condition(conditions, new)]
        changed = True
    return changed
