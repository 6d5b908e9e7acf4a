"""The store: a revisioned key-value store with etcd's semantics, over two backends.

- ``backend``: the contract (``Backend``, ``Watch``, ``KeyValue``, ``Event``, ``WatchBatch``) and the
  errors. Read its docstring first: one global revision, conditional writes (``KeyExists``,
  ``Conflict``, ``NotFound``), ``list`` with the read revision, ``watch`` from a revision in batches with
  a progress revision (bookmarks), ``compact`` and ``Compacted`` (410 Gone in the API), ``Unavailable``,
  and ``WatchOverflow`` for a watcher that fell too far behind (the client watches again from the
  revision it names).
- ``sqlite``: ``SQLiteBackend``, the embedded default. One process owns a data directory (lock file);
  WAL with synchronous=FULL, one writer thread with group commit, reader threads, an in-process watch
  hub with a ring of recent events and replay from an event-log table.
- ``etcd``: ``EtcdBackend``, for several control-plane replicas on an etcd v3 cluster (over aetcd's
  gRPC stubs): transactions for conditional writes, one watch stream per watch, progress
  notifications (start etcd with ``--experimental-watch-progress-notify-interval``), compaction mapped
  so that ``Compacted`` is exact.

Both pass one conformance suite (``tests/conformance``). Where they differ, within the contract: a new
SQLite store starts at revision 0 and an etcd cluster at 1, and etcd's revision is shared with anything
else written to that cluster; a slow SQLite watcher ends with ``WatchOverflow`` while etcd applies
back-pressure per watch stream; SQLite reports progress on a quiet watch every ``progress_interval``,
etcd at its notify interval.

``open_backend`` picks and opens one::

    store = await open_backend("sqlite", data_dir="/var/lib/innermesh")
    store = await open_backend("etcd", etcd_endpoints=["10.0.0.1:2379"], prefix="/innermesh/")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from innermesh.store.backend import (
    Backend,
    Compacted,
    Conflict,
    Event,
    EventType,
    KeyExists,
    KeyValue,
    NotFound,
    StoreError,
    Unavailable,
    Watch,
    WatchBatch,
    WatchOverflow,
)

__all__ = [
    "Backend",
    "Compacted",
    "Conflict",
    "Event",
    "EventType",
    "KeyExists",
    "KeyValue",
    "NotFound",
    "StoreError",
    "Unavailable",
    "Watch",
    "WatchBatch",
    "WatchOverflow",
    "open_backend",
]


async def open_backend(
    kind: Literal["sqlite", "etcd"],
    data_dir: str | os.PathLike[str] | None = None,
    etcd_endpoints: Sequence[str] = (),
    prefix: str | None = None,
) -> Backend:
    """Open the store: ``sqlite`` in ``data_dir`` (created if needed; fails with
    ``sqlite.DataDirectoryLocked`` if another process owns it), or ``etcd`` at ``etcd_endpoints``
    (``host:port`` or ``http://host:port``) with every key under ``prefix`` (default
    ``etcd.DEFAULT_PREFIX``, "/innermesh/"); fails with ``Unavailable`` naming the endpoints if etcd
    does not answer."""
    if kind == "sqlite":
        if data_dir is None:
            raise ValueError("the sqlite store needs a data directory")
        from innermesh.store.sqlite import SQLiteBackend

        return await SQLiteBackend.open(data_dir)
    if kind == "etcd":
        if not etcd_endpoints:
            raise ValueError("the etcd store needs at least one endpoint")
        # Imported here so that the embedded default never loads grpc.
        from innermesh.store.etcd import DEFAULT_PREFIX, EtcdBackend

        return await EtcdBackend.open(etcd_endpoints, DEFAULT_PREFIX if prefix is None else prefix)
    raise ValueError(f"unknown store kind {kind!r} (expected 'sqlite' or 'etcd')")
