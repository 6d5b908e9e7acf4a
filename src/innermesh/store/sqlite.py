"""``SQLiteBackend``: the embedded store, one SQLite database in a data directory owned by one process.

Layout of ``<data_dir>``: ``store.db`` (with ``-wal`` and ``-shm`` beside it) and ``LOCK`` (an exclusive
``flock`` held for the life of the backend, with the owner's pid inside, so that a second process fails
at once with a clear message instead of corrupting the revision sequence).

Tables::

    meta (name, value)   'revision': the last revision written; 'compacted': history before it is gone
    kv   (key, value, create_revision, mod_revision)          the current state, one row per live key
    log  (revision, key, type, value, create_revision, prev_value, prev_mod_revision)
                         one row per revision (the MVCC-like event log), for watches from the past

Threads and their roles (the asyncio loop never blocks on SQLite):

- **one writer thread** owns the only write connection. Writes from the loop are queued (a
  ``queue.SimpleQueue``); the writer takes everything queued (up to ``max_batch``) and applies it in ONE
  transaction with ONE fsync (group commit), each operation still checked against its own precondition
  in queue order and getting its own revision and result. The journal is WAL with ``synchronous=FULL``:
  ``COMMIT`` returns after the WAL is fsynced, and only then are the callers' futures resolved, so an
  acknowledged write survives kill -9 and power loss. Under load the batch grows by itself (everything
  that queued up during the previous fsync), so throughput scales with concurrency while a lone write
  still costs one fsync.
- **a few reader threads** (``read_threads``), each with its own read-only connection: WAL lets them
  read committed snapshots while the writer writes.
- **the watch hub** lives on the loop. After each commit the writer hands the committed events to the
  loop with one ``call_soon_threadsafe``; there the backend publishes them to the hub *before* resolving
  the writers' futures, so once ``create`` returned revision R every watch has been offered R.

The hub keeps a bounded ring of recent events (``ring_size``) and the watchers grouped by prefix (the
events of a batch are filtered once per distinct prefix). A new watcher whose start is still in the ring
is served from memory; an older one replays the ``log`` table in pages, having registered for live
events *first*: live events that arrive during the replay are buffered and, once the replay reached the
database snapshot it read, the buffer's events at or below that snapshot are dropped as duplicates and
the rest follow, so the join has no gap and no repeat. (If that buffer overflows during a long replay,
the watcher simply replays another round from where it got to.) A live watcher whose queue exceeds
``watch_queue_limit`` events is ended with ``WatchOverflow`` (never blocking the writer), naming the
revision to watch again from. Progress: every commit moves the hub's head; a watcher reports it with its
next event batch, or in an event-less batch once per ``progress_interval`` when its prefix is quiet.

Recovery: the revision is read back from ``meta`` (written in the same transaction as the changes), so a
revision is never reused; SQLite's WAL recovery makes opening after kill -9 safe.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from innermesh.store.backend import (
    Compacted,
    Conflict,
    Event,
    EventType,
    KeyExists,
    KeyValue,
    NotFound,
    StoreError,
    Unavailable,
    WatchBatch,
    WatchOverflow,
)

__all__ = ["DB_FILE", "LOCK_FILE", "DataDirectoryLocked", "SQLiteBackend"]

DB_FILE = "store.db"
LOCK_FILE = "LOCK"

_T = TypeVar("_T")

# Log row types.
_PUT = 0
_DELETE = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', 1), ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    type INTEGER NOT NULL,
    value BLOB,
    create_revision INTEGER NOT NULL,
    prev_value BLOB,
    prev_mod_revision INTEGER
);
"""
# log.value is NULL for DELETE; log.create_revision is that of the object written or deleted (so the
# previous value's create_revision too); prev_* are NULL when the key did not exist before.

_LOG_COLUMNS = "revision, key, type, value, create_revision, prev_value, prev_mod_revision"


class DataDirectoryLocked(Unavailable):
    """Another process (or another backend in this one) owns the data directory."""


def _prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with ``prefix`` (None: no upper bound), as etcd's
    range_end: increment the last byte that is not 0xff."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


def _key_range(prefix: str) -> tuple[str, tuple[bytes, ...]]:
    """A SQL condition on ``key`` selecting the prefix, and its parameters."""
    start = prefix.encode()
    end = _prefix_end(start)
    if not start:
        return "1", ()
    if end is None:
        return "key >= ?", (start,)
    return "key >= ? AND key < ?", (start, end)


def _event_from_row(row: tuple[int, bytes, int, bytes | None, int, bytes | None, int | None]) -> Event:
    revision, raw_key, kind, value, create_revision, prev_value, prev_mod = row
    key = raw_key.decode()
    prev = None
    if prev_mod is not None:
        prev = KeyValue(key, prev_value if prev_value is not None else b"", create_revision, prev_mod)
    if kind == _PUT:
        kv = KeyValue(key, value if value is not None else b"", create_revision, revision)
        return Event(EventType.PUT, kv, prev)
    return Event(EventType.DELETE, KeyValue(key, b"", 0, revision), prev)


# --------------------------------------------------------------------------------------------------
# The writer thread


class _OpKind(enum.Enum):
    CREATE = 1
    UPDATE = 2
    DELETE = 3
    COMPACT = 4


_Result = KeyValue | tuple[KeyValue, int] | None


@dataclass(slots=True)
class _Op:
    kind: _OpKind
    key: str
    value: bytes
    expected: int | None  # expected mod_revision; for COMPACT, the revision to compact at
    future: asyncio.Future[_Result]


@dataclass(slots=True)
class _Commit:
    """What one transaction did, handed from the writer to the loop."""

    ops: list[_Op]
    results: list[_Result | BaseException]
    events: list[Event]
    revision: int
    compacted: int


class _Writer(threading.Thread):
    """Owns the write connection; applies queued operations in group-committed transactions."""

    def __init__(
        self,
        db_path: Path,
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[_Commit], None],
        max_batch: int,
    ) -> None:
        super().__init__(name=f"innermesh-sqlite-writer:{db_path}", daemon=True)
        self._db_path = db_path
        self._loop = loop
        self._on_commit = on_commit
        self._max_batch = max_batch
        self.queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        # Set once, from the thread, when the database is open (or failed to open).
        self.ready: asyncio.Future[tuple[int, int]] = loop.create_future()
        self._conn: sqlite3.Connection | None = None
        self._revision = 0
        self._compacted = 0
        # After a failed COMMIT the database state is uncertain: refuse everything until reopened.
        self._broken: str | None = None

    # -- thread side ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            try:
                self._open()
            except BaseException as exc:
                error = Unavailable(f"cannot open the store {self._db_path}: {exc}")
                self._post(_set_exception_safely, self.ready, error)
                return
            self._post(_set_result_safely, self.ready, (self._revision, self._compacted))
            self._serve()
        finally:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()

    def _open(self) -> None:
        conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        self._conn = conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"SQLite refused WAL mode (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(_SCHEMA)
        rows = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        last_logged = conn.execute("SELECT max(revision) FROM log").fetchone()[0] or 0
        # meta.revision is written in the same transaction as the log rows; the max() is belt and
        # braces, so that a revision is never handed out twice.
        self._revision = max(int(rows["revision"]), int(last_logged))
        self._compacted = int(rows["compacted"])
        # Make the database and WAL files' directory entries durable before acknowledging any write.
        dir_fd = os.open(self._db_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    op = self.queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stopping = True
                    break
                batch.append(op)
            try:
                commit = self._apply(batch)
            except BaseException as exc:
                self._broken = f"store writer failed: {exc!r}"
                commit = _Commit(
                    batch, [Unavailable(self._broken) for _ in batch], [], self._revision, self._compacted
                )
            self._post(self._on_commit, commit)

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _apply(self, batch: list[_Op]) -> _Commit:
        if self._broken is not None:
            return _Commit(
                batch, [Unavailable(self._broken) for _ in batch], [], self._revision, self._compacted
            )
        conn = self._conn
        assert conn is not None
        revision = self._revision
        compacted = self._compacted
        results: list[_Result | BaseException] = []
        events: list[Event] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                if op.kind is _OpKind.COMPACT:
                    target = op.expected or 0
                    if target > revision:
                        results.append(
                            ValueError(f"cannot compact at {target}: the current revision is {revision}")
                        )
                    else:
                        if target > compacted:
                            conn.execute("DELETE FROM log WHERE revision < ?", (target,))
                            conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (target,))
                            compacted = target
                        results.append(None)
                    continue
                result, event = self._apply_one(conn, op, revision + 1)
                results.append(result)
                if event is not None:
                    revision += 1
                    events.append(event)
            if revision != self._revision:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                # Isolate the operation that failed: apply them one by one (rare, slow path).
                merged = _Commit([], [], [], self._revision, self._compacted)
                for op in batch:
                    one = self._apply([op])
                    merged.ops += one.ops
                    merged.results += one.results
                    merged.events += one.events
                    merged.revision, merged.compacted = one.revision, one.compacted
                return merged
            return _Commit(
                batch,
                [Unavailable(f"SQLite write failed, not applied: {exc}")],
                [],
                self._revision,
                self._compacted,
            )
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # We cannot know whether the fsync reached the disk: stop writing until reopened.
            self._broken = f"SQLite COMMIT failed ({exc}); reopen the store"
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            message = f"SQLite COMMIT failed, the write may or may not have been applied: {exc}"
            return _Commit(batch, [Unavailable(message) for _ in batch], [], self._revision, self._compacted)
        self._revision = revision
        self._compacted = compacted
        return _Commit(batch, results, events, revision, compacted)

    @staticmethod
    def _apply_one(
        conn: sqlite3.Connection, op: _Op, revision: int
    ) -> tuple[_Result | BaseException, Event | None]:
        """One write inside the open transaction, at ``revision`` if it succeeds."""
        key = op.key.encode()
        row = conn.execute(
            "SELECT value, create_revision, mod_revision FROM kv WHERE key = ?", (key,)
        ).fetchone()
        if op.kind is _OpKind.CREATE:
            if row is not None:
                return KeyExists(op.key), None
            conn.execute("INSERT INTO kv VALUES (?, ?, ?, ?)", (key, op.value, revision, revision))
            conn.execute(
                "INSERT INTO log (revision, key, type, value, create_revision) VALUES (?, ?, ?, ?, ?)",
                (revision, key, _PUT, op.value, revision),
            )
            kv = KeyValue(op.key, op.value, revision, revision)
            return kv, Event(EventType.PUT, kv, None)
        if row is None:
            return NotFound(op.key), None
        old_value, create_revision, mod_revision = row
        if op.expected is not None and op.expected != mod_revision:
            return Conflict(op.key, op.expected, mod_revision), None
        prev = KeyValue(op.key, old_value, create_revision, mod_revision)
        if op.kind is _OpKind.UPDATE:
            conn.execute("UPDATE kv SET value = ?, mod_revision = ? WHERE key = ?", (op.value, revision, key))
            conn.execute(
                f"INSERT INTO log ({_LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constants
                (revision, key, _PUT, op.value, create_revision, old_value, mod_revision),
            )
            kv = KeyValue(op.key, op.value, create_revision, revision)
            return kv, Event(EventType.PUT, kv, prev)
        conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        conn.execute(
            f"INSERT INTO log ({_LOG_COLUMNS}) VALUES (?, ?, ?, NULL, ?, ?, ?)",  # noqa: S608 - constants
            (revision, key, _DELETE, create_revision, old_value, mod_revision),
        )
        return (prev, revision), Event(EventType.DELETE, KeyValue(op.key, b"", 0, revision), prev)


def _set_result_safely(future: asyncio.Future[_T], value: _T) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception_safely(future: asyncio.Future[_T], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# --------------------------------------------------------------------------------------------------
# The watch hub and watches (loop side)


class _WatchHub:
    """Fans committed events out to watchers by prefix; keeps a bounded ring of recent events.

    Invariant: ``_ring`` holds every event with revision in (``ring_floor``, ``head``], in order (every
    revision is exactly one event)."""

    def __init__(self, head: int, ring_size: int) -> None:
        self.head = head
        self.ring_floor = head
        self._ring_size = ring_size
        self._ring: list[Event] = []
        self._ring_revisions: list[int] = []
        self._groups: dict[str, set[_SQLiteWatch]] = {}

    def add(self, watcher: _SQLiteWatch) -> None:
        self._groups.setdefault(watcher.prefix, set()).add(watcher)

    def remove(self, watcher: _SQLiteWatch) -> None:
        group = self._groups.get(watcher.prefix)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._groups[watcher.prefix]

    def watchers(self) -> list[_SQLiteWatch]:
        return [w for group in self._groups.values() for w in group]

    def publish(self, events: list[Event], head: int) -> None:
        self.head = max(self.head, head)
        if not events:
            return
        self._ring += events
        self._ring_revisions += [e.kv.mod_revision for e in events]
        if len(self._ring) > 2 * self._ring_size:
            cut = len(self._ring) - self._ring_size
            self.ring_floor = self._ring_revisions[cut - 1]
            del self._ring[:cut]
            del self._ring_revisions[:cut]
        for prefix, group in list(self._groups.items()):
            matched = events if not prefix else [e for e in events if e.kv.key.startswith(prefix)]
            if matched:
                for watcher in list(group):
                    watcher.offer(matched)

    def since(self, after: int, prefix: str) -> list[Event] | None:
        """The matching events after ``after`` if the ring still has them all, else None."""
        if after < self.ring_floor:
            return None
        start = bisect.bisect_right(self._ring_revisions, after)
        return [e for e in self._ring[start:] if e.kv.key.startswith(prefix)]


class _State(enum.Enum):
    NEW = "new"  # not iterated yet
    REPLAY = "replay"  # reading history from the log table, buffering live events
    LIVE = "live"  # fed by the hub
    DONE = "done"  # closed, failed or the backend closed


@dataclass(eq=False)
class _SQLiteWatch:
    """One watch. ``cursor``: every matching event with revision <= cursor is delivered or pending.
    ``reported``: the progress last reported to the consumer (never goes back)."""

    backend: SQLiteBackend
    prefix: str
    after: int
    state: _State = _State.NEW
    cursor: int = 0
    reported: int = 0
    pending: deque[Event] = field(default_factory=deque)
    live: list[Event] | None = None
    error: StoreError | None = None
    waiter: asyncio.Future[None] | None = None
    last_report: float = 0.0
    progress_due: bool = False

    def __post_init__(self) -> None:
        self.cursor = self.after
        self.reported = self.after
        self.last_report = time.monotonic()

    # -- hub side -------------------------------------------------------------------------------------

    def offer(self, events: list[Event]) -> None:
        """Matching events just committed (called by the hub, on the loop)."""
        if self.state is _State.REPLAY:
            if self.live is not None:
                self.live += events
                if len(self.live) > self.backend.watch_queue_limit:
                    self.live = None  # lost: the replay will go another round
            return
        if self.state is not _State.LIVE:
            return
        if events[0].kv.mod_revision <= self.cursor:
            events = [e for e in events if e.kv.mod_revision > self.cursor]
            if not events:
                return
        self.pending += events
        self.cursor = events[-1].kv.mod_revision
        if len(self.pending) > self.backend.watch_queue_limit:
            self._fail(WatchOverflow(self.prefix, self.reported, self.backend.watch_queue_limit))
        else:
            self._wake()

    def end(self) -> None:
        self.state = _State.DONE
        self.pending.clear()
        self.live = None
        self.backend.hub.remove(self)
        self._wake()

    def _fail(self, error: StoreError) -> None:
        self.end()
        self.error = error

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- consumer side --------------------------------------------------------------------------------

    def __aiter__(self) -> _SQLiteWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if self.pending:
                return self._take()
            if self.state is _State.DONE:
                raise StopAsyncIteration
            if self.state is _State.NEW:
                await self._start()
            elif self.state is _State.REPLAY:
                await self._replay_page()
            else:
                batch = await self._wait_live()
                if batch is not None:
                    return batch

    def _take(self) -> WatchBatch:
        count = min(len(self.pending), self.backend.max_watch_batch)
        events = tuple(self.pending.popleft() for _ in range(count))
        if self.pending:
            progress = events[-1].kv.mod_revision
        elif self.state is _State.LIVE:
            progress = max(self.cursor, self.backend.hub.head)
        else:
            progress = self.cursor
        return self._report(events, progress)

    def _report(self, events: tuple[Event, ...], progress: int) -> WatchBatch:
        self.reported = max(self.reported, progress)
        self.last_report = time.monotonic()
        return WatchBatch(events, self.reported)

    async def _start(self) -> None:
        backend = self.backend
        backend.check_open()
        compacted = backend.compacted
        if self.after + 1 < compacted:
            self.state = _State.DONE
            raise Compacted(self.after, compacted)
        hub = backend.hub
        hub.add(self)  # first register for live events, then look at the history
        recent = hub.since(self.after, self.prefix)
        if recent is None:
            self.live = []
            self.state = _State.REPLAY
            return
        self.pending += recent
        self.cursor = max(self.after, hub.head)
        self.state = _State.LIVE

    async def _replay_page(self) -> None:
        backend = self.backend
        page_size = backend.replay_page
        rows, snapshot, compacted = await backend.read(_read_log_page, self.prefix, self.cursor, page_size)
        if self.state is not _State.REPLAY:
            return  # closed meanwhile
        if self.cursor + 1 < compacted:
            self._fail(Compacted(self.cursor, compacted))
            return
        self.pending += map(_event_from_row, rows)
        if len(rows) == page_size:
            self.cursor = rows[-1][0]
            return
        # Caught up with the snapshot: every matching event <= snapshot is pending or delivered.
        self.cursor = max(self.cursor, snapshot)
        if self.live is None:
            self.live = []  # the live buffer overflowed during this round: replay another round
            return
        fresh = [e for e in self.live if e.kv.mod_revision > self.cursor]
        self.live = None
        self.pending += fresh
        # Everything published so far (<= head) was in the snapshot or in the live buffer.
        self.cursor = max(self.cursor, backend.hub.head, fresh[-1].kv.mod_revision if fresh else 0)
        self.state = _State.LIVE
        # Report where the replay got to even if nothing matched.
        self.progress_due = self.cursor > self.reported

    async def _wait_live(self) -> WatchBatch | None:
        """Nothing pending on a live watch: wait for events, or report progress once per interval."""
        backend = self.backend
        interval = backend.progress_interval
        progress = max(self.cursor, backend.hub.head)
        if self.progress_due or (
            progress > self.reported and time.monotonic() - self.last_report >= interval
        ):
            self.progress_due = False
            return self._report((), progress)
        # Woken by matching events; else look again when progress may be due (commits elsewhere move
        # the hub's head without waking anybody). Nothing due now: wait a whole interval, no spinning.
        remaining = self.last_report + interval - time.monotonic()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiter = waiter
        timer = loop.call_later(remaining if remaining > 0 else interval, _set_result_safely, waiter, None)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return None

    async def close(self) -> None:
        if self.state is not _State.DONE:
            self.end()

    async def __aenter__(self) -> _SQLiteWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _read_log_page(
    conn: sqlite3.Connection, prefix: str, after: int, limit: int
) -> tuple[list[tuple[int, bytes, int, bytes | None, int, bytes | None, int | None]], int, int]:
    """Up to ``limit`` log rows under ``prefix`` after ``after``, the snapshot's revision and its
    compacted revision, all from one read transaction."""
    condition, params = _key_range(prefix)
    conn.execute("BEGIN")
    try:
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        # The condition comes from _key_range (constant text); every value is bound.
        query = f"SELECT {_LOG_COLUMNS} FROM log WHERE revision > ? AND {condition} ORDER BY revision LIMIT ?"  # noqa: S608
        rows = conn.execute(query, (after, *params, limit)).fetchall()
    finally:
        conn.execute("COMMIT")
    return rows, int(meta["revision"]), int(meta["compacted"])


def _read_get(conn: sqlite3.Connection, key: str) -> KeyValue | None:
    row = conn.execute(
        "SELECT value, create_revision, mod_revision FROM kv WHERE key = ?", (key.encode(),)
    ).fetchone()
    if row is None:
        return None
    return KeyValue(key, row[0], row[1], row[2])


def _read_list(conn: sqlite3.Connection, prefix: str) -> tuple[list[KeyValue], int]:
    condition, params = _key_range(prefix)
    conn.execute("BEGIN")
    try:
        revision = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        query = f"SELECT key, value, create_revision, mod_revision FROM kv WHERE {condition} ORDER BY key"  # noqa: S608
        rows = conn.execute(query, params).fetchall()
    finally:
        conn.execute("COMMIT")
    return [KeyValue(k.decode(), v, c, m) for k, v, c, m in rows], int(revision)


# --------------------------------------------------------------------------------------------------
# The backend


def _acquire_lock(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirectoryLocked(
            f"data directory {data_dir} is in use by another owner (pid {holder} holds the lock "
            f"{lock_path}); one process owns a data directory: stop it, or use another --data-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SQLiteBackend:
    """The embedded backend; see the module docstring. Create with ``await SQLiteBackend.open(dir)``.

    All methods are called from the one asyncio loop that opened it."""

    def __init__(
        self,
        data_dir: Path,
        lock_fd: int,
        *,
        watch_queue_limit: int,
        ring_size: int,
        read_threads: int,
        progress_interval: float,
        max_batch: int,
        replay_page: int,
        max_pending_writes: int,
    ) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / DB_FILE
        self.watch_queue_limit = watch_queue_limit
        self.progress_interval = progress_interval
        self.replay_page = replay_page
        self.max_watch_batch = 1024
        self._lock_fd: int | None = lock_fd
        self._loop = asyncio.get_running_loop()
        self._writer = _Writer(self.db_path, self._loop, self._on_commit, max_batch)
        self._write_slots = asyncio.Semaphore(max_pending_writes)
        self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="innermesh-sqlite-read")
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        self._closed = False
        self.current_revision = 0
        self.compacted = 0
        self.hub = _WatchHub(0, ring_size)

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        watch_queue_limit: int = 10_000,
        ring_size: int = 10_000,
        read_threads: int = 4,
        progress_interval: float = 1.0,
        max_batch: int = 1000,
        replay_page: int = 1000,
        max_pending_writes: int = 20_000,
    ) -> SQLiteBackend:
        """Open (creating if needed) the store in ``data_dir``; raises ``DataDirectoryLocked`` if another
        process owns it.

        ``watch_queue_limit``: events a live watcher may have pending before it is ended with
        ``WatchOverflow``. ``ring_size``: recent events kept in memory for new watchers.
        ``progress_interval``: seconds between event-less progress batches on a quiet watch.
        ``max_batch``: writes per transaction. ``max_pending_writes``: writes queued before callers wait.
        """
        path = Path(data_dir)
        lock_fd = await asyncio.to_thread(_acquire_lock, path)
        backend = cls(
            path,
            lock_fd,
            watch_queue_limit=watch_queue_limit,
            ring_size=ring_size,
            read_threads=read_threads,
            progress_interval=progress_interval,
            max_batch=max_batch,
            replay_page=replay_page,
            max_pending_writes=max_pending_writes,
        )
        backend._writer.start()
        try:
            revision, compacted = await backend._writer.ready
        except BaseException:
            await backend.close()
            raise
        backend.current_revision = revision
        backend.compacted = compacted
        backend.hub = _WatchHub(revision, ring_size)
        return backend

    # -- plumbing ---------------------------------------------------------------------------------------

    def check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"the store in {self.data_dir} is closed")

    def _reader_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=10000")
            self._reader_local.conn = conn
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return conn

    def _run_read(self, fn: Callable[..., _T], args: tuple[object, ...]) -> _T:
        return fn(self._reader_connection(), *args)

    async def read(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(connection, *args)`` on a reader thread."""
        self.check_open()
        try:
            return await self._loop.run_in_executor(self._readers, self._run_read, fn, args)
        except sqlite3.Error as exc:
            raise Unavailable(f"SQLite read failed in {self.db_path}: {exc}") from exc
        except RuntimeError as exc:  # the reader pool shut down under us
            self.check_open()
            raise Unavailable(f"SQLite read failed in {self.db_path}: {exc}") from exc

    async def _write(self, kind: _OpKind, key: str, value: bytes, expected: int | None) -> _Result:
        self.check_open()
        async with self._write_slots:
            self.check_open()
            future: asyncio.Future[_Result] = self._loop.create_future()
            self._writer.queue.put(_Op(kind, key, bytes(value), expected, future))
            return await future

    def _on_commit(self, commit: _Commit) -> None:
        """On the loop: publish what a transaction committed, then resolve its writers' futures."""
        self.current_revision = max(self.current_revision, commit.revision)
        self.compacted = max(self.compacted, commit.compacted)
        self.hub.publish(commit.events, commit.revision)
        for op, result in zip(commit.ops, commit.results, strict=True):
            if isinstance(result, BaseException):
                _set_exception_safely(op.future, result)
            else:
                _set_result_safely(op.future, result)

    # -- the Backend protocol -------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        return await self.read(_read_get, key)

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.read(_read_list, prefix)

    async def create(self, key: str, value: bytes) -> KeyValue:
        result = await self._write(_OpKind.CREATE, key, value, None)
        assert isinstance(result, KeyValue)
        return result

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> KeyValue:
        result = await self._write(_OpKind.UPDATE, key, value, expected_revision)
        assert isinstance(result, KeyValue)
        return result

    async def delete(self, key: str, expected_revision: int | None) -> tuple[KeyValue, int]:
        result = await self._write(_OpKind.DELETE, key, b"", expected_revision)
        assert isinstance(result, tuple)
        return result

    async def revision(self) -> int:
        self.check_open()
        return self.current_revision

    async def compacted_revision(self) -> int:
        self.check_open()
        return self.compacted

    def watch(self, prefix: str, after_revision: int) -> _SQLiteWatch:
        return _SQLiteWatch(self, prefix, after_revision)

    async def compact(self, revision: int) -> None:
        await self._write(_OpKind.COMPACT, "", b"", revision)

    def active_watches(self) -> int:
        """Watches registered with the hub (for tests and metrics)."""
        return len(self.hub.watchers())

    async def close(self) -> None:
        """End every watch, finish the queued writes, close the database and release the directory."""
        if self._closed:
            return
        self._closed = True
        for watcher in self.hub.watchers():
            watcher.end()
        if self._writer.is_alive():
            self._writer.queue.put(None)
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._readers.shutdown, True)
        with self._reader_conns_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> SQLiteBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
