"""The storage contract: a revisioned key-value store with etcd's semantics.

Both backends (``sqlite.SQLiteBackend``, the embedded default, and ``etcd.EtcdBackend``) implement
``Backend`` and pass the same conformance suite (tests/conformance). The contract:

- One global **revision**, a positive integer that increases by exactly one with every successful
  write (create, update or delete) and never goes back, also across restarts.
- Every stored value carries ``create_revision`` and ``mod_revision`` (the revision of its last write).
  The API's ``resourceVersion`` is ``mod_revision``.
- Writes are conditional: ``create`` fails with ``KeyExists`` if the key is there; ``update`` and
  ``delete`` take an expected ``mod_revision`` and fail with ``Conflict`` if the key moved on (optimistic
  concurrency), or ``NotFound``.
- A write returns only once it is durable: after a crash (kill -9 of the process), every write whose call
  returned is there.
- ``list(prefix)`` returns the keys under a prefix, sorted, with the revision the read saw.
- ``watch(prefix, after)`` streams every change under the prefix with revision > ``after``, in revision
  order, with nothing missed or repeated, first the history then live changes. Each batch also says up
  to which revision the stream is complete, so a quiet watch can still report progress (bookmarks).
- ``compact(rev)`` discards history before ``rev``. A watch that needs revisions before the compacted
  one fails at once with ``Compacted`` (the API answers 410 Gone, "too old resource version").
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. For PUT, ``kv`` is the new value and ``prev`` the old one (None on create). For
    DELETE, ``kv`` holds the key, an empty value, ``create_revision`` 0 (as etcd) and the delete's
    revision as ``mod_revision``; ``prev`` is the value that was deleted."""

    type: EventType
    kv: KeyValue
    prev: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events in revision order (possibly none), and the revision up to which the stream is complete:
    every change under the prefix with revision <= ``progress`` has been delivered."""

    events: tuple[Event, ...]
    progress: int


class StoreError(Exception):
    """Base of the errors a backend raises."""


class KeyExists(StoreError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"key {key!r} already exists")


class NotFound(StoreError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"key {key!r} not found")


class Conflict(StoreError):
    """The key's mod_revision is not the expected one: somebody else wrote it first."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(f"key {key!r} is at revision {actual}, not {expected}")


class Compacted(StoreError):
    """The history asked for was discarded by compaction. ``requested``: the revision the watch was
    to continue after (its ``after_revision``, or the progress it had reached); ``compacted``: the
    oldest revision still kept (the one given to ``compact``)."""

    def __init__(self, requested: int, compacted: int) -> None:
        self.requested = requested
        self.compacted = compacted
        super().__init__(f"revision {requested} is compacted (history starts at {compacted})")


class WatchOverflow(StoreError):
    """The watcher fell too far behind the writers (its bounded queue overflowed) and was ended, so that
    it never holds up writes or grows without bound. Every change up to ``revision`` was delivered:
    watch again from there (the API closes the watch; the client re-watches from its last revision)."""

    def __init__(self, prefix: str, revision: int, limit: int) -> None:
        self.prefix = prefix
        self.revision = revision
        self.limit = limit
        super().__init__(
            f"watch on prefix {prefix!r} fell more than {limit} events behind and was ended; "
            f"watch again from revision {revision}"
        )


class Unavailable(StoreError):
    """The backend cannot be reached or failed; the operation may or may not have happened only if
    the message says so."""


class Watch(Protocol):
    """An open watch: iterate batches; ``close`` ends it (also on ``async with`` exit)."""

    def __aiter__(self) -> AsyncIterator[WatchBatch]: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Watch: ...

    async def __aexit__(self, *exc: object) -> None: ...


class Backend(Protocol):
    """A revisioned key-value store; see the module docstring for the contract."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Keys under ``prefix`` in key order, and the revision this read saw."""
        ...

    async def create(self, key: str, value: bytes) -> KeyValue: ...

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> KeyValue:
        """Replace the value; ``expected_revision=None`` writes whatever the current revision is."""
        ...

    async def delete(self, key: str, expected_revision: int | None) -> tuple[KeyValue, int]:
        """Delete the key; returns the value that was deleted and the revision of the delete."""
        ...

    async def revision(self) -> int:
        """The current revision (0 for an empty new store; on etcd, the cluster's revision: 1 for a new
        cluster, and advanced by writes under other prefixes too)."""
        ...

    async def compacted_revision(self) -> int:
        """History before this revision is gone (0 or 1 when nothing was compacted)."""
        ...

    def watch(self, prefix: str, after_revision: int) -> Watch:
        """Changes under ``prefix`` with revision > ``after_revision``. Raises ``Compacted`` (when the
        watch is first iterated) if that history is gone."""
        ...

    async def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (which must be <= the current revision, else
        ``ValueError``); compacting at or before an earlier compaction changes nothing."""
        ...

    async def close(self) -> None: ...
