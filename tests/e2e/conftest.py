"""E2E fixtures: ``mesh_server``, a real ``innermesh server`` process on SQLite in a tmp dir, and
``api``, an HttpClient to it (tests that need other settings start their own, as test_crash does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from innermesh.client.http import HttpClient
from support.server_process import ServerProcess, running_server


@pytest.fixture
def mesh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "data") as s:
        yield s


@pytest.fixture
async def api(mesh_server: ServerProcess) -> AsyncIterator[HttpClient]:
    client = HttpClient(mesh_server.url)
    yield client
    await client.close()
