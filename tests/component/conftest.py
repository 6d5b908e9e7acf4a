"""Component fixtures: the real ``ControlPlane`` in process, on SQLite in a tmp dir, on port 0.

- ``control_plane``: one running server with its controllers (default settings).
- ``api``: an ``HttpClient`` to it.
- ``start_control_plane(...)``: more servers, or one with another ``--service-cidr``, data dir, or
  controller timings (``manager_config``: the server is then started without its own controllers and
  given a ``ControllerManager`` built with that config over its ``LocalClient``, which is what
  ``server.py`` does with the defaults). Every server started is stopped at teardown.
- ``connect(plane)``: an ``HttpClient`` to a server, closed at teardown.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from innermesh.client.http import HttpClient
from innermesh.client.local import LocalClient
from innermesh.controllers.manager import ControllerManager, ManagerConfig
from innermesh.proxy.runtime.listeners import ProxyRuntime
from innermesh.server import ControlPlane, ServerConfig
from support.echo_backend import EchoBackend, echo_backends

DEFAULT_CIDR = "10.96.0.0/16,fd00:10:96::/112"

StartControlPlane = Callable[..., Awaitable[ControlPlane]]


def url(plane: ControlPlane) -> str:
    return f"http://127.0.0.1:{plane.port}"


async def _start(
    data_dir: Path,
    *,
    service_cidr: str = DEFAULT_CIDR,
    manager_config: ManagerConfig | None = None,
    controllers: bool = True,
    identity: str = "test-server",
    **config: Any,
) -> ControlPlane:
    cfg = ServerConfig(
        listen_host="127.0.0.1",
        listen_port=0,
        xds_port=0,
        data_dir=data_dir,
        service_cidr=service_cidr,
        controllers=controllers and manager_config is None,
        identity=identity,
        **config,
    )
    plane = ControlPlane(cfg)
    await plane.start()
    if controllers and manager_config is not None:
        assert plane.resources is not None
        manager = ControllerManager(
            LocalClient(plane.resources),
            identity=identity,
            service_ips=plane.service_ips,
            config=manager_config,
        )
        await manager.start()
        plane.controllers = manager  # stopped by plane.stop()
    return plane


@pytest.fixture
async def start_control_plane(tmp_path: Path) -> AsyncIterator[StartControlPlane]:
    started: list[ControlPlane] = []
    counter = 0

    async def start(data_dir: Path | None = None, **kw: Any) -> ControlPlane:
        nonlocal counter
        counter += 1
        plane = await _start(data_dir or tmp_path / f"data-{counter}", **kw)
        started.append(plane)
        return plane

    yield start
    for plane in reversed(started):
        await plane.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[ControlPlane], HttpClient]]:
    clients: list[HttpClient] = []

    def make(plane: ControlPlane) -> HttpClient:
        client = HttpClient(url(plane))
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def control_plane(start_control_plane: StartControlPlane) -> ControlPlane:
    return await start_control_plane()


@pytest.fixture
def api(control_plane: ControlPlane, connect: Callable[[ControlPlane], HttpClient]) -> HttpClient:
    return connect(control_plane)


# --- proxy runtime fixtures (tests/component/test_proxy_runtime*.py) ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backends() -> Iterator[list[EchoBackend]]:
    """Three echo backends (a, b, c) with TCP echo ports, shared by a module's tests."""
    with echo_backends("a", "b", "c", tcp=True) as started:
        yield started


@pytest.fixture
async def runtime() -> AsyncIterator[ProxyRuntime]:
    """A proxy runtime with a fixed random seed, stopped at teardown."""
    rt = ProxyRuntime(rng=random.Random(7), drain_timeout=1.0)
    yield rt
    await rt.stop(1.0)
