"""``innermesh server``: the control plane process, wired together.

Start-up order: open the store (SQLite in the data directory, or etcd) -> the object layer and
admission -> bootstrap objects (the ``default`` namespace) -> controllers (in process, over a
``LocalClient``) -> the xDS server (ADS over gRPC, fed by its own informers) -> the HTTP API.
``/readyz`` answers 200 once all of that is up. A compactor trims
the store's history every ``compact_interval`` seconds to the revision seen one interval earlier, as
Kubernetes does, so a watch may resume from anything newer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web

from innermesh.api import status as errors
from innermesh.api.scheme import REGISTRY
from innermesh.apiserver.admission import Chain, NamespaceLifecycle, ServiceIPs, parse_service_cidrs
from innermesh.apiserver.http import ApiServer
from innermesh.apiserver.resources import Resources
from innermesh.client.local import LocalClient
from innermesh.controllers.manager import ControllerManager
from innermesh.store import open_backend
from innermesh.store.backend import Backend
from innermesh.store.objects import ObjectStore
from innermesh.xds import metrics as xds_metrics
from innermesh.xds.nackstatus import NackStatus
from innermesh.xds.proxyinfo import proxy_info
from innermesh.xds.server import XdsServer
from innermesh.xds.source import MeshSource

log = logging.getLogger(__name__)

# "innermesh-system" holds the control plane's own objects (the controllers' leader Lease).
BOOTSTRAP_NAMESPACES = ("default", "innermesh-system")


@dataclass
class ServerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 7443
    data_dir: Path = Path(".innermesh")
    store: Literal["sqlite", "etcd"] = "sqlite"
    etcd_endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    etcd_prefix: str = "/innermesh"
    service_cidr: str = "10.96.0.0/16,fd00:10:96::/112"
    token_file: Path | None = None
    # The ADS (xDS) server for sidecars and proxyless gRPC clients; port 0 picks a free one.
    xds_host: str = "127.0.0.1"
    xds_port: int = 15010
    compact_interval: float = 300.0
    bookmark_interval: float = 10.0
    controllers: bool = True
    # Who holds the controllers' leader Lease. Stable across restarts of the same server (host and data
    # directory), so a server that crashed takes its Lease back at once instead of waiting it out.
    identity: str = ""

    def __post_init__(self) -> None:
        if not self.identity:
            digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:8]
            self.identity = f"{os.uname().nodename}-{digest}"

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.listen_host)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_or_create_token(config: ServerConfig) -> str | None:
    """The bearer token, required when listening beyond loopback. Read from --token-file, or made once
    and kept in the data directory (owner-only), and never logged."""
    if config.token_file is not None:
        token = config.token_file.read_text().strip()
        if not token:
            raise ValueError(f"--token-file {config.token_file} is empty")
        return token
    if config.loopback:
        return None
    path = config.data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class ControlPlane:
    """The running server; ``start`` and ``stop`` for tests that run it in process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.backend: Backend | None = None
        self.resources: Resources | None = None
        self.service_ips: ServiceIPs | None = None
        self.controllers: ControllerManager | None = None
        self.mesh: MeshSource | None = None
        self.xds: XdsServer | None = None
        self.xds_port = config.xds_port
        self._runner: web.AppRunner | None = None
        self._api: ApiServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False
        self.port = config.listen_port

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.data_dir, 0o700)
        token = load_or_create_token(cfg)
        cidrs = parse_service_cidrs(cfg.service_cidr)
        self.backend = await open_backend(cfg.store, cfg.data_dir, cfg.etcd_endpoints, cfg.etcd_prefix)
        self.resources = Resources(ObjectStore(self.backend), REGISTRY)
        self.service_ips = ServiceIPs(self.resources, cidrs)
        self.resources.admission = Chain(
            [NamespaceLifecycle(self.resources, protected=BOOTSTRAP_NAMESPACES), self.service_ips]
        )
        await self._bootstrap()
        if cfg.controllers:
            self.controllers = ControllerManager(
                LocalClient(self.resources), identity=cfg.identity, service_ips=self.service_ips
            )
            await self.controllers.start()
        self.mesh = MeshSource(LocalClient(self.resources))
        await self.mesh.start()
        nacks = NackStatus(
            LocalClient(self.resources),
            self.mesh,
            {k: REGISTRY.by_gvk("gateway.networking.k8s.io/v1", k) for k in ("HTTPRoute", "GRPCRoute")},
            lambda: self.xds.connections() if self.xds else [],
        )
        self.xds = XdsServer(self.mesh, proxy_info=proxy_info, on_nack=nacks.on_nack)
        self.xds_port = await self.xds.start(cfg.xds_host, cfg.xds_port)
        if not _is_loopback(cfg.xds_host):
            # Node attestation (join tokens) and mTLS for xDS come with the mesh's identity.
            log.warning(
                "xDS on %s is not authenticated yet: any client that reaches it gets configuration",
                cfg.xds_host,
            )
        self._tasks.append(asyncio.create_task(nacks.run(), name="xds-nack-status"))
        self._api = api = ApiServer(
            self.resources,
            token=token,
            bookmark_interval=cfg.bookmark_interval,
            ready=lambda: self._ready,
            metrics=self._metrics,
        )
        self._runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.listen_host, cfg.listen_port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._compactor(), name="compactor"))
        self._ready = True
        log.info(
            "innermesh server listening on %s:%d, xDS on %s:%d (store: %s, data: %s)",
            cfg.listen_host,
            self.port,
            cfg.xds_host,
            self.xds_port,
            cfg.store,
            cfg.data_dir,
        )

    def _metrics(self) -> str:
        if self.xds is None:
            return ""
        return xds_metrics.render(self.xds.stats, self.xds.connections())

    async def _bootstrap(self) -> None:
        assert self.resources is not None
        ns_kind = REGISTRY.by_gvk("v1", "Namespace")
        for name in BOOTSTRAP_NAMESPACES:
            try:
                await self.resources.create(ns_kind, None, {"metadata": {"name": name}})
            except errors.ApiError as e:
                if e.code != 409:
                    raise

    async def _compactor(self) -> None:
        assert self.backend is not None
        previous = await self.backend.revision()
        while True:
            await asyncio.sleep(self.config.compact_interval)
            try:
                current = await self.backend.revision()
                if previous > 0:
                    await self.backend.compact(previous)
                previous = current
            except Exception:
                log.exception("compaction failed; will retry")

    async def stop(self) -> None:
        """Stop serving, end open watches, stop the controllers, close the store. Safe to call twice."""
        self._ready = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._api is not None:
            self._api.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        xds, self.xds = self.xds, None
        if xds is not None:
            await xds.stop(grace=1.0)
        mesh, self.mesh = self.mesh, None
        if mesh is not None:
            await mesh.stop()
        controllers, self.controllers = self.controllers, None
        if controllers is not None:
            await controllers.stop()
        backend, self.backend = self.backend, None
        if backend is not None:
            await backend.close()


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    plane = ControlPlane(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
        await stop.wait()
    finally:
        await plane.stop()
