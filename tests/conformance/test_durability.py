"""Acknowledged writes survive kill -9, and revisions never go back after a restart.

A child process (``tests/support/durability_writer.py``) writes with 8 concurrent tasks and prints
every acknowledged key and revision; the test kills it with SIGKILL mid-stream (and, for etcd, kills the
etcd server too and restarts it on the same data directory), opens the store again and checks that
every acknowledged write is there with its revision, that the history has it, and that the next write
gets a revision above all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import support
from innermesh.store.backend import Backend, Unavailable
from innermesh.store.etcd import EtcdBackend
from innermesh.store.sqlite import DataDirectoryLocked, SQLiteBackend
from support.durability_writer import ETCD_KEY_PREFIX, PREFIX
from support.etcd_server import running_etcd

pytestmark = pytest.mark.timeout(90)

WRITER = Path(support.__file__).parent / "durability_writer.py"


class WriterChild:
    """The writer process and the acknowledged writes it reported."""

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.acks: dict[str, int] = {}
        self.errors = 0

    def _take(self, line: bytes) -> None:
        fields = line.decode().split()
        if fields and fields[0] == "ACK":
            self.acks[fields[1]] = int(fields[2])
        elif fields and fields[0] == "ERR":
            self.errors += 1

    async def wait_for(self, *, acks: int = 0, errors: int = 0, within: float = 20.0) -> None:
        """Read the child's output until it reported that many acknowledgements and errors."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + within
        while len(self.acks) < acks or self.errors < errors:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"writer reported {len(self.acks)} acks, {self.errors} errors in {within}s; "
                    f"stderr:\n{self.stderr_path.read_text(errors='replace')[-3000:]}"
                )
            line = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            if not line:
                raise AssertionError(
                    f"writer exited ({await self.process.wait()}); "
                    f"stderr:\n{self.stderr_path.read_text(errors='replace')[-3000:]}"
                )
            self._take(line)

    async def kill9(self) -> None:
        """SIGKILL, then collect what it printed before dying (those writes were acknowledged too)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        stdout, _ = await self.process.communicate()
        for line in stdout.splitlines():
            self._take(line)
        assert self.process.returncode == -signal.SIGKILL


@contextlib.asynccontextmanager
async def writer_child(kind: str, location: str, tag: str, tmp_path: Path) -> AsyncIterator[WriterChild]:
    """Start the writer and wait until its store is open; it is killed on exit, whatever happens."""
    stderr_path = tmp_path / f"writer-{tag}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WRITER),
            kind,
            location,
            tag,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    child = WriterChild(process, stderr_path)
    try:
        assert process.stdout is not None
        ready = await asyncio.wait_for(process.stdout.readline(), 20)
        assert ready == b"READY\n", (ready, stderr_path.read_text(errors="replace"))
        yield child
    finally:
        await child.kill9()


async def check_survivors(backend: Backend, acks: dict[str, int], probe: str) -> int:
    """Every acknowledged write is there at its revision and in the history, and a new write (to
    ``probe``) takes the next revision, which is returned."""
    items, revision = await backend.list(PREFIX)
    stored = {kv.key: kv for kv in items}
    missing = sorted(key for key in acks if key not in stored)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    for key, acked_revision in acks.items():
        assert (stored[key].create_revision, stored[key].mod_revision) == (acked_revision, acked_revision)
    assert revision >= max(acks.values())

    history: dict[int, str] = {}
    async with backend.watch(PREFIX, 0) as watch:
        async for batch in watch:
            history.update((e.revision, e.kv.key) for e in batch.events)
            if batch.progress >= max(acks.values()):
                break
    assert all(history.get(rev) == key for key, rev in acks.items())

    after = await backend.create(probe, b"x")
    assert after.mod_revision == revision + 1
    return after.mod_revision


async def test_sqlite_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """kill -9 of the owning process loses no acknowledged write and no revision; meanwhile the data
    directory is locked against a second owner with a message naming the holder."""
    data_dir = tmp_path / "store"
    acks: dict[str, int] = {}
    highest = 0
    for round_ in ("first", "second"):
        async with writer_child("sqlite", str(data_dir), round_, tmp_path) as child:
            await child.wait_for(acks=300)
            with pytest.raises(DataDirectoryLocked) as info:
                await SQLiteBackend.open(data_dir)
            assert f"pid {child.process.pid}" in str(info.value)
            assert str(data_dir) in str(info.value)
        assert child.errors == 0
        acks.update(child.acks)
        backend = await SQLiteBackend.open(data_dir)
        try:
            assert await backend.revision() > highest
            highest = await check_survivors(backend, acks, f"after-restart/{round_}")
        finally:
            await backend.close()


@pytest.mark.etcd
async def test_etcd_acknowledged_writes_survive_kill_9_of_client_and_server(tmp_path: Path) -> None:
    """kill -9 of a writing client, then of the etcd server under it: after a restart on the same data
    directory every acknowledged write is there and the revision has not gone back. While etcd is down,
    calls fail with Unavailable naming the endpoint, and a client reconnects once it is back."""
    with running_etcd(tmp_path) as server:
        acks: dict[str, int] = {}
        async with writer_child("etcd", server.endpoint, "client-killed", tmp_path) as child:
            await child.wait_for(acks=200)
        acks.update(child.acks)
        backend = await EtcdBackend.open([server.endpoint], ETCD_KEY_PREFIX)
        try:
            highest = await check_survivors(backend, acks, "after-restart/client-killed")
        finally:
            await backend.close()

        survivor = await EtcdBackend.open([server.endpoint], ETCD_KEY_PREFIX, request_timeout=2.0)
        try:
            async with writer_child("etcd", server.endpoint, "server-killed", tmp_path) as child:
                await child.wait_for(acks=200)
                server.kill()
                await child.wait_for(errors=1)
            acks.update(child.acks)

            with pytest.raises(Unavailable) as info:
                await survivor.get("anything")
            assert server.endpoint in str(info.value)
            with pytest.raises(Unavailable) as info:
                await survivor.create("anything", b"x")
            assert "may or may not have been applied" in str(info.value)
            with pytest.raises(Unavailable) as info:
                await EtcdBackend.open([server.endpoint], ETCD_KEY_PREFIX, request_timeout=2.0)
            assert server.endpoint in str(info.value)

            server.start()
            backend = await EtcdBackend.open([server.endpoint], ETCD_KEY_PREFIX)
            try:
                assert await backend.revision() >= highest
                await check_survivors(backend, acks, "after-restart/server-killed")
            finally:
                await backend.close()

            deadline = time.monotonic() + 10
            while True:  # the old client reconnects by itself
                try:
                    assert await survivor.get("after-restart/server-killed") is not None
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "the client did not reconnect to etcd"
                    await asyncio.sleep(0.1)
        finally:
            await survivor.close()
