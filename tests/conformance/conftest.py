"""Fixtures for the store conformance suite: every test body runs against each backend.

``harness`` yields a ``StoreHarness``: a fresh store (SQLite in the test's tmp dir; etcd from a fresh
server that the fixture starts on free loopback ports and stops afterwards, even on failure) and a way
to reopen it. ``backend`` is its current backend.

The SQLite backend runs with small limits here (ring, replay page, watch queue, progress interval) so
that the tests reach the history replay, ring and overflow paths with few writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from innermesh.store.backend import Backend
from innermesh.store.etcd import EtcdBackend
from innermesh.store.sqlite import SQLiteBackend
from support.etcd_server import EtcdServer, running_etcd

ETCD_PREFIX = "/conformance/"


async def open_sqlite(data_dir: Path) -> SQLiteBackend:
    return await SQLiteBackend.open(
        data_dir,
        ring_size=64,
        replay_page=50,
        watch_queue_limit=2000,
        progress_interval=0.2,
    )


@dataclass
class StoreHarness:
    kind: str
    backend: SQLiteBackend | EtcdBackend
    data_dir: Path
    etcd: EtcdServer | None = None

    async def reopen(self) -> SQLiteBackend | EtcdBackend:
        """Close the backend and open a new one on the same store (a restart)."""
        await self.backend.close()
        if self.etcd is None:
            self.backend = await open_sqlite(self.data_dir)
        else:
            self.backend = await EtcdBackend.open([self.etcd.endpoint], ETCD_PREFIX)
        return self.backend

    async def second_client(self) -> EtcdBackend | None:
        """Another client of the same store, where the backend allows one (etcd), else None."""
        if self.etcd is None:
            return None
        return await EtcdBackend.open([self.etcd.endpoint], ETCD_PREFIX)


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreHarness]:
    if request.param == "sqlite":
        data_dir = tmp_path / "store"
        state = StoreHarness("sqlite", await open_sqlite(data_dir), data_dir)
        try:
            yield state
        finally:
            await state.backend.close()
        return
    with running_etcd(tmp_path) as server:
        state = StoreHarness(
            "etcd", await EtcdBackend.open([server.endpoint], ETCD_PREFIX), server.data_dir, server
        )
        try:
            yield state
        finally:
            await state.backend.close()


@pytest.fixture
def backend(harness: StoreHarness) -> Backend:
    return harness.backend
