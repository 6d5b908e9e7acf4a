"""``open_backend`` opens either kind of store, and says clearly what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from innermesh.store import Unavailable, open_backend
from innermesh.store.etcd import EtcdBackend
from innermesh.store.sqlite import SQLiteBackend
from support import etcd_server
from support.etcd_server import free_port, running_etcd


async def test_open_backend_opens_sqlite_in_a_data_directory(tmp_path: Path) -> None:
    """kind="sqlite" creates the data directory and opens the embedded store there."""
    store = await open_backend("sqlite", tmp_path / "new" / "dir")
    try:
        assert isinstance(store, SQLiteBackend)
        assert (await store.create("k", b"v")).mod_revision == 1
    finally:
        await store.close()
    with pytest.raises(ValueError, match="data directory"):
        await open_backend("sqlite")


@pytest.mark.etcd
async def test_open_backend_opens_etcd_under_a_prefix(tmp_path: Path) -> None:
    """kind="etcd" connects to the endpoints and keeps every key under the prefix."""
    with running_etcd(tmp_path) as server:
        store = await open_backend("etcd", etcd_endpoints=[server.url], prefix="/mesh-a/")
        other = await open_backend("etcd", etcd_endpoints=[server.endpoint], prefix="/mesh-b/")
        try:
            assert isinstance(store, EtcdBackend)
            await store.create("k", b"a")
            await other.create("k", b"b")
            assert [kv.value for kv in (await store.list(""))[0]] == [b"a"]
            assert [kv.value for kv in (await other.list(""))[0]] == [b"b"]
        finally:
            await store.close()
            await other.close()


async def test_open_backend_names_an_unreachable_etcd() -> None:
    """Nothing listening: Unavailable, naming the endpoint."""
    endpoint = f"127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable, match=endpoint):
        await open_backend("etcd", etcd_endpoints=[endpoint])
    with pytest.raises(ValueError, match="endpoint"):
        await open_backend("etcd")


def test_a_missing_etcd_binary_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """The etcd runner fails with the package to install when there is no etcd."""
    monkeypatch.setattr(etcd_server, "ETCD_BINARY", "/nonexistent/etcd")
    monkeypatch.delenv("INNERMESH_ETCD", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(etcd_server.EtcdNotInstalled, match="apt-get install etcd-server"):
        etcd_server.find_etcd()
