"""The proxy's admin port: /ready, /stats (Prometheus text), /config_dump.

Off the request path: a small aiohttp application on its own port (loopback by default), reading
what the sidecar exposes through ``AdminView``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web


class AdminView(Protocol):
    def ready(self) -> tuple[bool, str]:
        """Whether the proxy serves traffic on its configuration, and why not if it doesn't."""
        ...

    def stats_text(self) -> str: ...

    def config_dump(self) -> dict[str, Any]: ...


PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def admin_app(view: AdminView) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        ok, why = view.ready()
        return web.Response(status=200 if ok else 503, text=("LIVE" if ok else why) + "\n")

    async def stats(_: web.Request) -> web.Response:
        return web.Response(body=view.stats_text().encode(), headers={"Content-Type": PROMETHEUS_TEXT})

    async def config_dump(_: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(view.config_dump(), indent=2, sort_keys=True) + "\n",
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/stats", stats)
    app.router.add_get("/config_dump", config_dump)
    return app


class AdminServer:
    def __init__(self, view: AdminView) -> None:
        self._runner = web.AppRunner(admin_app(view), access_log=None, handle_signals=False)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
