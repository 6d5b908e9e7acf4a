"""The store contract (``innermesh.store.backend``), one suite run against every backend.

Revisions are compared relative to the store's starting revision (0 for SQLite, 1 for a new etcd
cluster); each test has a store of its own, so nothing else writes meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from innermesh.store.backend import (
    Backend,
    Compacted,
    Conflict,
    Event,
    EventType,
    KeyExists,
    KeyValue,
    NotFound,
    Unavailable,
    Watch,
    WatchBatch,
    WatchOverflow,
)

from .conftest import StoreHarness

pytestmark = pytest.mark.timeout(60)


class Reader:
    """Reads a watch and checks the stream's invariants on every batch: events in strictly increasing
    revision order, each after the progress already reported; progress never goes back and covers the
    batch's events."""

    def __init__(self, watch: Watch, after: int = -1) -> None:
        self.watch = watch
        self.iterator: AsyncIterator[WatchBatch] = aiter(watch)
        self.progress = after  # a watch after R is complete up to R from the start
        self.batches = 0

    async def next(self, within: float = 10.0) -> WatchBatch:
        async with asyncio.timeout(within):
            batch = await anext(self.iterator)
        revisions = [e.revision for e in batch.events]
        assert revisions == sorted(set(revisions)), f"events out of order or repeated: {revisions}"
        if revisions:
            assert revisions[0] > self.progress, (revisions, self.progress)
            assert batch.progress >= revisions[-1], (revisions, batch.progress)
        assert batch.progress >= self.progress, (batch.progress, self.progress)
        self.progress = batch.progress
        self.batches += 1
        return batch

    async def until(self, revision: int, within: float = 10.0) -> list[Event]:
        """Events until the stream is complete up to ``revision``."""
        events: list[Event] = []
        deadline = time.monotonic() + within
        while self.progress < revision:
            batch = await self.next(max(0.01, deadline - time.monotonic()))
            events += batch.events
        return events


def summary(events: list[Event]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type.value, e.kv.key, e.kv.value, e.revision) for e in events]


async def test_new_store_starts_empty(backend: Backend) -> None:
    """A new store has no keys, nothing compacted, and a starting revision of 0 (etcd: 1)."""
    start = await backend.revision()
    assert start in (0, 1)
    assert await backend.list("") == ([], start)
    assert await backend.get("missing") is None
    assert await backend.compacted_revision() in (0, 1)


async def test_each_write_advances_the_revision_by_one(backend: Backend) -> None:
    """create, update and delete each take the next revision; failed writes take none."""
    start = await backend.revision()
    a = await backend.create("a", b"1")
    assert (a.create_revision, a.mod_revision) == (start + 1, start + 1)
    a2 = await backend.update("a", b"2", a.mod_revision)
    assert a2 == KeyValue("a", b"2", start + 1, start + 2)
    b = await backend.create("b", b"1")
    assert b.mod_revision == start + 3
    prev, deleted_at = await backend.delete("a", a2.mod_revision)
    assert prev == a2
    assert deleted_at == start + 4
    with pytest.raises(KeyExists):
        await backend.create("b", b"again")
    with pytest.raises(Conflict):
        await backend.update("b", b"x", b.mod_revision + 100)
    with pytest.raises(NotFound):
        await backend.delete("a", None)
    assert await backend.revision() == start + 4
    recreated = await backend.create("a", b"3")
    assert recreated == KeyValue("a", b"3", start + 5, start + 5)


async def test_create_of_an_existing_key_raises_key_exists(backend: Backend) -> None:
    """create never overwrites."""
    kv = await backend.create("svc/one", b"first")
    with pytest.raises(KeyExists) as info:
        await backend.create("svc/one", b"second")
    assert info.value.key == "svc/one"
    assert await backend.get("svc/one") == kv


async def test_update_and_delete_at_a_stale_revision_conflict(backend: Backend) -> None:
    """Optimistic concurrency: the expected mod_revision must be the current one."""
    kv = await backend.create("svc/one", b"v1")
    kv2 = await backend.update("svc/one", b"v2", kv.mod_revision)
    with pytest.raises(Conflict) as info:
        await backend.update("svc/one", b"v3", kv.mod_revision)
    assert (info.value.key, info.value.expected, info.value.actual) == (
        "svc/one",
        kv.mod_revision,
        kv2.mod_revision,
    )
    with pytest.raises(Conflict):
        await backend.delete("svc/one", kv.mod_revision)
    assert await backend.get("svc/one") == kv2


async def test_missing_keys_raise_not_found(backend: Backend) -> None:
    """update and delete of a key that is not there, with or without an expected revision."""
    for expected in (None, 1, 7):
        with pytest.raises(NotFound) as info:
            await backend.update("nope", b"x", expected)
        assert info.value.key == "nope"
        with pytest.raises(NotFound):
            await backend.delete("nope", expected)
    kv = await backend.create("gone", b"x")
    await backend.delete("gone", kv.mod_revision)
    with pytest.raises(NotFound):
        await backend.update("gone", b"y", kv.mod_revision)
    assert await backend.get("nope") is None


async def test_unconditional_update_overwrites_whatever_is_there(backend: Backend) -> None:
    """expected_revision=None writes over the current value and keeps create_revision."""
    kv = await backend.create("k", b"1")
    await backend.update("k", b"2", None)
    kv3 = await backend.update("k", b"3", None)
    assert kv3.value == b"3"
    assert kv3.create_revision == kv.create_revision
    assert kv3.mod_revision == kv.mod_revision + 2
    assert await backend.get("k") == kv3


async def test_list_by_prefix_is_sorted_with_the_read_revision(backend: Backend) -> None:
    """list returns the keys under the prefix in key order, and the revision the read saw."""
    for key in ["svc/b", "svc/a", "svc/c/x", "svc/aa", "svcx/1", "sv", "other/1"]:
        await backend.create(key, key.encode())
    items, revision = await backend.list("svc/")
    assert [kv.key for kv in items] == ["svc/a", "svc/aa", "svc/b", "svc/c/x"]
    assert all(kv.value == kv.key.encode() for kv in items)
    assert revision == await backend.revision()
    everything, _ = await backend.list("")
    assert [kv.key for kv in everything] == sorted(kv.key for kv in everything)
    assert len(everything) == 7


async def test_a_prefix_does_not_see_longer_siblings(backend: Backend) -> None:
    """Prefix "a/" sees neither "ab/..." nor "a" itself, in lists and in watches."""
    start = await backend.revision()
    watch = backend.watch("a/", start)
    for key in ["a/1", "ab/1", "a", "a/2", "ab", "b/1", "a/3"]:
        await backend.create(key, b"x")
    items, _ = await backend.list("a/")
    assert [kv.key for kv in items] == ["a/1", "a/2", "a/3"]
    async with watch:
        events = await Reader(watch).until(start + 7)
    assert [e.kv.key for e in events] == ["a/1", "a/2", "a/3"]


async def test_large_lists_come_back_whole(backend: Backend) -> None:
    """A list larger than any page size is complete, sorted and at one revision."""
    keys = [f"big/{i:05d}" for i in range(1200)]
    shuffled = random.Random(7).sample(keys, len(keys))
    await asyncio.gather(*(backend.create(key, b"v" * 64) for key in shuffled))
    items, revision = await backend.list("big/")
    assert [kv.key for kv in items] == keys
    assert revision == await backend.revision()


async def test_keys_and_values_are_kept_exactly(backend: Backend) -> None:
    """Unicode keys sort by code point and come back as written; values are arbitrary bytes."""
    value = bytes(range(256))
    for key in ["ns/\u00e9t\u00e9", "ns/\u2603", "ns/z", "ns/\U0001f600"]:
        await backend.create(key, value)
    items, _ = await backend.list("ns/")
    assert [kv.key for kv in items] == sorted(["ns/\u00e9t\u00e9", "ns/\u2603", "ns/z", "ns/\U0001f600"])
    assert all(kv.value == value for kv in items)
    assert [kv.key for kv in (await backend.list("ns/\u00e9"))[0]] == ["ns/\u00e9t\u00e9"]
    assert (await backend.get("ns/\u2603")) == items[2]


async def test_watch_from_zero_replays_history_then_live_changes(backend: Backend) -> None:
    """A watch from 0 streams every change under the prefix in order, then follows new ones."""
    start = await backend.revision()
    one = await backend.create("a/1", b"1")
    await backend.update("a/1", b"2", one.mod_revision)
    await backend.create("b/1", b"other prefix")
    await backend.create("a/2", b"1")
    _, deleted_at = await backend.delete("a/1", None)
    async with backend.watch("a/", 0) as watch:
        reader = Reader(watch)
        history = await reader.until(deleted_at)
        assert summary(history) == [
            ("PUT", "a/1", b"1", start + 1),
            ("PUT", "a/1", b"2", start + 2),
            ("PUT", "a/2", b"1", start + 4),
            ("DELETE", "a/1", b"", start + 5),
        ]
        live = await backend.create("a/3", b"live")
        await backend.create("b/2", b"other prefix")
        assert summary(await reader.until(live.mod_revision)) == [("PUT", "a/3", b"live", start + 6)]


async def test_watch_from_a_mid_revision_replays_exactly_the_rest(backend: Backend) -> None:
    """From revision R: every change after R (across replay pages and the in-memory ring), none
    before, nothing twice; then live changes."""
    start = await backend.revision()
    written = [await backend.create(f"k/{i:03d}", str(i).encode()) for i in range(300)]
    for after in (start + 150, start + 290, start + 300):
        head = await backend.revision()
        async with backend.watch("k/", after) as watch:
            reader = Reader(watch)
            events = await reader.until(head)
            assert [e.revision for e in events] == list(range(after + 1, head + 1))
            assert [e.kv for e in events if e.revision <= start + 300] == [
                kv for kv in written if kv.mod_revision > after
            ]
            live = await backend.update(f"k/{after % 300:03d}", b"again", None)
            assert [e.kv for e in await reader.until(live.mod_revision)] == [live]


async def test_watches_open_together_from_different_revisions_each_get_their_own_history(
    backend: Backend,
) -> None:
    """Watches on one prefix from recent and old revisions, open at once (served from memory, shared
    streams or history), each get exactly the changes after their start, then the same live ones."""
    start = await backend.revision()
    for i in range(200):
        await backend.create(f"m/{i:03d}", b"x")
    head = start + 200
    afters = [head - 5, start + 100, start, head - 50, head]
    readers = [Reader(backend.watch("m/", after), after) for after in afters]
    try:
        for reader, after in zip(readers, afters, strict=True):
            events = await reader.until(head)
            assert [e.revision for e in events] == list(range(after + 1, head + 1))
        live = await backend.create("m/live", b"x")
        for reader in readers:
            assert [e.kv for e in await reader.until(live.mod_revision)] == [live]
    finally:
        for reader in readers:
            await reader.watch.close()


async def test_watch_joins_live_writes_without_gap_or_repeat(backend: Backend) -> None:
    """A watch that starts from the past while writes keep coming sees every revision exactly once."""
    start = await backend.revision()
    half_done = asyncio.Event()

    async def write_all() -> int:
        last = 0
        for chunk in range(40):
            written = await asyncio.gather(
                *(backend.create(f"j/{chunk:02d}/{i:02d}", b"x") for i in range(10))
            )
            last = max(kv.mod_revision for kv in written)
            if chunk == 15:
                half_done.set()
        return last

    writer = asyncio.create_task(write_all())
    await half_done.wait()
    async with backend.watch("j/", start) as watch:
        reader = Reader(watch)
        events = list((await reader.next()).events)  # open while the writer is still going
        assert not writer.done()
        last = await writer
        events += await reader.until(last, within=20)
    assert [e.revision for e in events] == list(range(start + 1, start + 401))


async def test_delete_events_carry_the_deleted_value(backend: Backend) -> None:
    """DELETE: kv has the key, an empty value and the delete's revision; prev is what was deleted."""
    kv = await backend.create("d/1", b"one")
    kv2 = await backend.update("d/1", b"two", kv.mod_revision)
    prev, deleted_at = await backend.delete("d/1", kv2.mod_revision)
    assert prev == kv2
    async with backend.watch("d/", kv2.mod_revision) as watch:
        (event,) = await Reader(watch).until(deleted_at)
    assert event.type is EventType.DELETE
    assert (event.kv.key, event.kv.value, event.kv.mod_revision) == ("d/1", b"", deleted_at)
    assert event.revision == deleted_at
    assert event.prev == kv2


async def test_put_events_carry_the_previous_value_on_update(backend: Backend) -> None:
    """PUT on create has no prev; PUT on update has the value it replaced."""
    start = await backend.revision()
    kv = await backend.create("p/1", b"one")
    kv2 = await backend.update("p/1", b"two", kv.mod_revision)
    async with backend.watch("p/", start) as watch:
        created, updated = await Reader(watch).until(kv2.mod_revision)
    assert (created.type, created.kv, created.prev) == (EventType.PUT, kv, None)
    assert (updated.type, updated.kv, updated.prev) == (EventType.PUT, kv2, kv)


async def test_concurrent_conditional_increments_lose_no_update(backend: Backend) -> None:
    """200 concurrent read-modify-writes on one key: the counter equals the number that succeeded,
    each success took one revision, and with retries every increment lands."""
    initial = await backend.create("counter", b"0")

    async def increment_once() -> bool:
        current = await backend.get("counter")
        assert current is not None
        try:
            await backend.update("counter", str(int(current.value) + 1).encode(), current.mod_revision)
        except Conflict:
            return False
        return True

    outcomes = await asyncio.gather(*(increment_once() for _ in range(200)))
    succeeded = sum(outcomes)
    final = await backend.get("counter")
    assert final is not None
    assert succeeded >= 1
    assert int(final.value) == succeeded
    assert final.mod_revision == initial.mod_revision + succeeded
    assert await backend.revision() == final.mod_revision

    async def increment_until_done(times: int) -> int:
        conflicts = 0
        for _ in range(times):
            while True:
                current = await backend.get("counter")
                assert current is not None
                try:
                    await backend.update(
                        "counter", str(int(current.value) + 1).encode(), current.mod_revision
                    )
                    break
                except Conflict:
                    conflicts += 1
        return conflicts

    await asyncio.gather(*(increment_until_done(10) for _ in range(10)))
    final = await backend.get("counter")
    assert final is not None
    assert int(final.value) == succeeded + 100


async def test_watching_compacted_history_raises_compacted(harness: StoreHarness) -> None:
    """After compact(R): watches that need revisions before R fail with Compacted naming R, at once;
    history from R on (a delete at exactly R included) is whole, also after a restart."""
    backend = harness.backend
    start = await backend.revision()
    kv = await backend.create("c/0", b"x")
    for i in range(1, 5):
        await backend.create(f"c/{i}", b"x")
    _, deleted_at = await backend.delete("c/0", kv.mod_revision)  # start + 6
    for i in range(5, 9):
        await backend.create(f"c/{i}", b"x")
    head = await backend.revision()
    assert head == start + 10
    await backend.compact(deleted_at)
    assert await backend.compacted_revision() == deleted_at
    await backend.compact(deleted_at - 2)  # compacting again further back changes nothing
    assert await backend.compacted_revision() == deleted_at
    with pytest.raises(ValueError):
        await backend.compact(head + 5)

    for after in (0, start + 1, deleted_at - 2):
        with pytest.raises(Compacted) as info:
            await anext(aiter(backend.watch("c/", after)))
        assert (info.value.requested, info.value.compacted) == (after, deleted_at)

    async with backend.watch("c/", deleted_at - 1) as watch:
        events = await Reader(watch).until(head)
    assert [e.revision for e in events] == list(range(deleted_at, head + 1))
    assert events[0].type is EventType.DELETE
    assert events[0].prev == kv

    # Another client, or the same store reopened, knows the compaction too.
    other = await harness.second_client()
    if other is not None:
        try:
            assert await other.compacted_revision() == deleted_at
            with pytest.raises(Compacted) as info:
                await anext(aiter(other.watch("c/", deleted_at - 2)))
            assert info.value.compacted == deleted_at
        finally:
            await other.close()
    reopened = await harness.reopen()
    assert await reopened.compacted_revision() == deleted_at
    with pytest.raises(Compacted):
        await anext(aiter(reopened.watch("c/", start)))
    items, _ = await reopened.list("c/")
    assert len(items) == 8


async def test_a_quiet_watch_still_reports_progress(backend: Backend) -> None:
    """Writes elsewhere move a watch's progress forward although no event matches it (bookmarks)."""
    start = await backend.revision()
    async with backend.watch("quiet/", start) as watch:
        reader = Reader(watch)
        last = 0
        for i in range(3):
            last = (await backend.create(f"noisy/{i}", b"x")).mod_revision
        events = await reader.until(last, within=8)
    assert events == []
    assert reader.progress >= last


async def test_a_slow_watcher_does_not_hold_up_writers(backend: Backend) -> None:
    """Writers go at full speed while a watcher does not read; the watcher then gets every change,
    or is ended with WatchOverflow and resumes from the revision it names, missing nothing."""
    start = await backend.revision()
    first = await backend.create("slow/first", b"x")
    watch = backend.watch("slow/", start)
    reader = Reader(watch)
    seen = [e.revision for e in (await reader.until(first.mod_revision))]

    began = time.monotonic()
    written = await asyncio.gather(*(backend.create(f"slow/{i:05d}", b"y" * 32) for i in range(3000)))
    elapsed = time.monotonic() - began
    assert elapsed < 30, f"3000 writes took {elapsed:.1f}s with a stalled watcher"
    last = max(kv.mod_revision for kv in written)

    resumed = 0
    deadline = time.monotonic() + 30
    while reader.progress < last and time.monotonic() < deadline:
        try:
            batch = await reader.next()
        except WatchOverflow as overflow:
            assert overflow.prefix == "slow/"
            assert overflow.revision >= first.mod_revision
            assert overflow.revision == reader.progress
            await watch.close()
            resumed += 1
            watch = backend.watch("slow/", overflow.revision)
            reader = Reader(watch, overflow.revision)
            continue
        seen += [e.revision for e in batch.events]
    await watch.close()
    assert seen == list(range(start + 1, last + 1))
    assert resumed <= 3


async def test_closed_watches_release_everything(harness: StoreHarness) -> None:
    """Watches closed mid-stream (close(), async with, or under a blocked reader) leave nothing behind
    in the backend (nor in etcd), and the store keeps working."""
    backend = harness.backend
    baseline = harness.etcd.metric("etcd_debugging_mvcc_watcher_total") if harness.etcd else 0.0
    start = await backend.revision()
    await backend.create("w/1", b"x")

    watches = [backend.watch("w/", start) for _ in range(40)]
    readers = [Reader(w) for w in watches]
    await asyncio.gather(*(r.next() for r in readers))
    assert backend.active_watches() == 40
    if harness.etcd is not None:  # the 40 local watches share one etcd watch
        assert harness.etcd.metric("etcd_debugging_mvcc_watcher_total") == baseline + 1
    for watch in watches[:20]:
        await watch.close()
    for watch in watches[20:]:
        async with watch:
            pass
    for reader in readers[:3]:
        with pytest.raises(StopAsyncIteration):
            await reader.next()

    # A reader blocked in the iterator when another task closes the watch ends cleanly.
    blocked_watch = backend.watch("w/", await backend.revision())
    blocked = Reader(blocked_watch)
    pending = asyncio.create_task(blocked.next())
    await asyncio.sleep(0.2)
    await blocked_watch.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)

    assert harness.backend.active_watches() == 0
    await backend.create("w/2", b"still working")
    if harness.etcd is not None:
        deadline = time.monotonic() + 5
        while harness.etcd.metric("etcd_debugging_mvcc_watcher_total") > baseline:
            assert time.monotonic() < deadline, "etcd still holds the closed watchers"
            await asyncio.sleep(0.05)


async def test_a_closed_backend_refuses_work(harness: StoreHarness) -> None:
    """After close(), operations fail with Unavailable, and open watches end."""
    backend = harness.backend
    start = await backend.revision()
    await backend.create("x", b"1")
    watch = backend.watch("", start)
    reader = Reader(watch)
    await reader.next()
    await backend.close()
    with pytest.raises(StopAsyncIteration):
        await reader.next()
    with pytest.raises(Unavailable):
        await backend.get("x")
    with pytest.raises(Unavailable):
        await backend.create("y", b"1")
