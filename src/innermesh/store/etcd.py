"""``EtcdBackend``: the distributed backend, over an etcd v3 cluster (tested against etcd 3.4).

Every key lives under a configurable prefix (``/innermesh/`` by default; a missing trailing "/" is
added), so one etcd cluster can hold several meshes or other data. The mapping from the contract
(``backend.py``) to etcd:

- revision: etcd's own cluster revision, returned by every response header. Two consequences the
  contract's wording does not cover: a new etcd cluster starts at revision **1**, not 0, and the
  revision is shared with every other writer of the cluster (other prefixes), so from one prefix's point
  of view it increases by *at least* one per write.
- ``create``: a transaction ``create_revision(key) == 0 -> put``. ``update``/``delete``:
  ``create_revision(key) > 0 [and mod_revision(key) == expected] -> put/delete (prev_kv)``, else a range
  read of the key tells ``NotFound`` from ``Conflict``. A write returns once etcd committed it, which
  means fsynced to its WAL on a quorum of members. At most ``max_inflight`` requests are in flight
  (10,000 concurrent writes would otherwise make etcd answer "too many requests", which is retried).
- ``list``: a linearizable range read, in pages of ``list_page`` keys pinned to the first page's
  revision (so a large list is one consistent snapshot and no gRPC message gets too large).
- ``watch``: an etcd watch with ``start_revision = after + 1``, ``prev_kv``, ``progress_notify`` and
  ``fragment`` (large batches arrive in pieces and are reassembled). A batch's progress is the revision
  of its last event (etcd's header revision on a catch-up response can be ahead of the events in it, so
  it is not used then); an event-less response (a progress notification) reports its header revision.
  etcd sends progress notifications for quiet watches only every
  ``--experimental-watch-progress-notify-interval`` (default 10 minutes!): run etcd with e.g.
  ``--experimental-watch-progress-notify-interval=1s`` (the test server does) so bookmarks flow.
  (Explicit progress requests are not used: etcd 3.4.23 can answer them ahead of pending events.)

Watch streams are read over etcd's JSON gateway (``POST /v3/watch``, which etcd serves on its client
port unless run with ``--enable-grpc-gateway=false``), not over gRPC. etcd sends a watcher that keeps up
one response per revision, and grpcio's asyncio client hands over each response through a read of its
own: a round trip through gRPC's completion-queue thread and two turns of the event loop (measured).
With the loop busy serving API writes, a stream then read ~250 responses a second on a 2-core machine,
fewer than the writes, and its watchers fell seconds behind with the backlog in gRPC's buffers (a
thread reading gRPC's blocking API is worse still: each response needs the GIL twice). The gateway's
responses arrive on a socket the loop reads itself, and one read takes every response that arrived
meanwhile (``_Stream.next`` returns them as one batch). Where etcd does not serve the gateway (a 404),
the backend falls back to gRPC for good; ``watch_transport="grpc"`` asks for gRPC from the start. The
gateway connection has TCP keepalive (about 25 s to notice a vanished host; the gRPC channel pings).

Watch streams are shared. The local watches of one prefix share one etcd stream (``_SharedStream``):
one task reads it, keeps a ring of the last ``ring_size`` events, and fans each batch out to the
watches' bounded queues; a watch whose queue passes ``watch_queue_limit`` is ended with
``WatchOverflow`` (as with SQLite), so a slow consumer never holds up the others. A watch whose start is
older than the ring opens its own stream, with flow control as its back-pressure (a slow consumer makes
etcd buffer or re-sync that watcher; it never blocks writers). The first watch of a prefix starts its
shared stream; the last one to close ends it. (100 watchers following 10,000 writes: one stream
instead of 100, ~5x faster here, the client's CPU being the bottleneck.) Every batch handed out costs
each watch a wake-up and, behind an HTTP watch, a write: so a shared stream hands out what it read at
once when it has been quiet for its window, and otherwise gathers it until the window has passed since
the last hand-out. The window is ``fanout_pace`` per local watch (20 ms for 100 watches, at most 50 ms):
a change on a quiet stream goes out without delay, a busy stream's watches wake a bounded number of
times a second whatever the write rate.

Compaction. etcd keeps the revision it was compacted at, *except* delete tombstones at exactly that
revision (verified against 3.4.23: compact at 4 where 4 is a delete, a watch from 4 silently misses the
delete). So ``compact(C)`` asks etcd to compact at ``C - 1``: every event from ``C`` on stays whole, and
``compacted_revision()`` is etcd's compact revision + 1. etcd does not report its compact revision
directly; we remember the one we set and, since a range read at revision ``r`` fails exactly when
``r`` is below it, confirm it with one such read (and find it by bisection if another client compacted
further). A watch checks its start the same way before opening, because etcd itself accepts a watch
starting *at* its compact revision. The residual gap: a watcher already lagging exactly at the
compaction point when another replica compacts may miss a delete at that one revision; compact
revisions well behind the watchers (as Kubernetes does, minutes old) and this cannot happen.

Failures: gRPC UNAVAILABLE / DEADLINE_EXCEEDED and friends become ``Unavailable`` naming the
endpoints; for writes the message says the write may or may not have been applied. The channel
reconnects by itself (backoff capped at 2 s). Several endpoints: all IPv4 literals are balanced by gRPC
(``ipv4:`` target, pick-first with failover); otherwise only the first endpoint is used. A gateway
watch tries the endpoints in turn, from the last one that answered; a broken watch stream (either way)
ends its watches with ``Unavailable``, and their clients watch again.

Not done through aetcd's high-level ``Client.watch``: it drops response headers and event-less
responses (so no progress) and reports compaction only through a side channel. We use aetcd's generated
stubs and messages (``aetcd.rpc``) directly, for every other call and for gRPC watches.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import ipaddress
import json
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aetcd import rpc

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

__all__ = ["DEFAULT_PREFIX", "EtcdBackend"]

DEFAULT_PREFIX = "/innermesh/"

_MiB = 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * _MiB),
    ("grpc.max_send_message_length", 16 * _MiB),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # etcd's server refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)

_TOO_MANY_REQUESTS = "etcdserver: too many requests"
_MAX_WATCH_BATCH = 1024
# The longest a busy shared stream gathers events before handing them to its watches (fanout_pace).
_MAX_FANOUT_WINDOW = 0.05
# The JSON gateway's answers when etcd does not serve it (--enable-grpc-gateway=false).
_NO_GATEWAY = (404, 405, 501)
# One gateway response line at most (gRPC's limit here is 64 MiB; JSON and base64 make it larger).
_MAX_GATEWAY_LINE = 128 * _MiB
# gRPC status codes by number (the gateway reports them as numbers).
_CODE_NAMES = dict(
    enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
)

# Codes that mean "the server said no" rather than "we could not reach it".
_REJECTIONS = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED")


class _RevisionCompacted(StoreError):
    """A read at a revision etcd has compacted (internal)."""


class _FutureRevision(StoreError):
    """A read or compaction at a revision etcd has not reached (internal)."""


def _range_end(start: bytes) -> bytes:
    """etcd's range_end for every key starting with ``start`` (b"\\0": to the end of the keyspace)."""
    data = bytearray(start)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


def _parse_endpoint(endpoint: str) -> str:
    text = endpoint.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "http":
            raise ValueError(f"etcd endpoint {endpoint!r}: only http:// is supported (no TLS yet)")
        text = text.rstrip("/")
    if not text or ":" not in text:
        raise ValueError(f"etcd endpoint {endpoint!r}: expected host:port or http://host:port")
    return text


def _is_ipv4_endpoint(endpoint: str) -> bool:
    host = endpoint.rpartition(":")[0]
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _grpc_target(endpoints: Sequence[str]) -> str:
    if len(endpoints) > 1 and all(_is_ipv4_endpoint(e) for e in endpoints):
        return "ipv4:" + ",".join(endpoints)
    return endpoints[0]


def _guards(raw: bytes, expected: int | None) -> list[Any]:
    """The key exists [and is at the expected mod_revision]."""
    guards = [rpc.Compare(key=raw, target=rpc.Compare.CREATE, result=rpc.Compare.GREATER, create_revision=0)]
    if expected is not None:
        guards.append(
            rpc.Compare(key=raw, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=expected)
        )
    return guards


def _refusal(key: str, expected: int | None, response: Any) -> StoreError:
    kvs = response.responses[0].response_range.kvs if response.responses else []
    if not kvs:
        return NotFound(key)
    return Conflict(key, expected if expected is not None else 0, int(kvs[0].mod_revision))


class EtcdBackend:
    """The etcd backend; see the module docstring. Create with ``await EtcdBackend.open(endpoints)``."""

    def __init__(
        self,
        channel: Any,
        endpoints: tuple[str, ...],
        prefix: str,
        *,
        timeout: float,
        list_page: int,
        max_inflight: int,
        ring_size: int,
        watch_queue_limit: int,
        watch_transport: Literal["gateway", "grpc"],
        fanout_pace: float,
    ) -> None:
        self.endpoints = endpoints
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._channel = channel
        self._kv = rpc.KVStub(channel)
        self.watch_stub = rpc.WatchStub(channel)
        self._timeout = timeout
        self._list_page = list_page
        # Bounds the requests in flight: 10,000 concurrent writes would otherwise overrun etcd.
        self._inflight = asyncio.Semaphore(max_inflight)
        # etcd's compact revision as far as we know (a lower bound: it only grows).
        self._known_compact = 0
        self._watches: set[_EtcdWatch] = set()
        self._streams: dict[str, _SharedStream] = {}
        self._ended_streams: set[asyncio.Task[None]] = set()
        self.ring_size = ring_size
        self.watch_queue_limit = watch_queue_limit
        # Watch streams go over etcd's JSON gateway until etcd turns out not to serve it.
        self.watch_over_gateway = watch_transport == "gateway"
        self.fanout_pace = fanout_pace
        self._http: aiohttp.ClientSession | None = None
        self._good_endpoint = 0
        self._closed = False

    @classmethod
    async def open(
        cls,
        endpoints: Sequence[str] | str,
        prefix: str = DEFAULT_PREFIX,
        *,
        request_timeout: float = 10.0,
        list_page: int = 500,
        max_inflight: int = 256,
        ring_size: int = 10_000,
        watch_queue_limit: int = 10_000,
        watch_transport: Literal["gateway", "grpc"] = "gateway",
        fanout_pace: float = 0.0002,
    ) -> EtcdBackend:
        """Connect to etcd (``host:port`` or ``http://host:port``, one or several) and check that it
        answers; raises ``Unavailable`` naming the endpoints if it does not. Keys live under ``prefix``
        (a "/" is appended if it does not end with one). ``request_timeout``: seconds
        per request; ``list_page``: keys per page of a list; ``max_inflight``: requests in flight;
        ``ring_size``: recent events a shared watch stream keeps for watches that join it;
        ``watch_queue_limit``: events a watch on a shared stream may have pending before it is ended
        with ``WatchOverflow``; ``watch_transport``: how watch streams are read, ``"gateway"`` (etcd's
        JSON gateway, falling back to gRPC when etcd does not serve it) or ``"grpc"``; ``fanout_pace``:
        on a busy shared stream, seconds per local watch (at most 50 ms in all) to gather events
        before handing them out (0: every response at once)."""
        if watch_transport not in ("gateway", "grpc"):
            raise ValueError(f"watch_transport must be 'gateway' or 'grpc', not {watch_transport!r}")
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        parsed = tuple(_parse_endpoint(e) for e in endpoints)
        if not parsed:
            raise ValueError("no etcd endpoint given")
        if prefix and not prefix.endswith("/"):
            prefix += "/"  # else "/innermesh" would also hold every key of "/innermesh2/"
        channel = rpc.insecure_channel(_grpc_target(parsed), options=_CHANNEL_OPTIONS)
        backend = cls(
            channel,
            parsed,
            prefix,
            timeout=request_timeout,
            list_page=list_page,
            max_inflight=max_inflight,
            ring_size=ring_size,
            watch_queue_limit=watch_queue_limit,
            watch_transport=watch_transport,
            fanout_pace=fanout_pace,
        )
        try:
            await backend.revision()
        except BaseException:
            await backend.close()
            raise
        return backend

    # -- plumbing -----------------------------------------------------------------------------------------

    def check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"the etcd store at {', '.join(self.endpoints)} is closed")

    def translate(self, exc: Any, what: str, *, write: bool = False) -> StoreError:
        """A gRPC error from etcd as the contract's error."""
        code = exc.code()
        return self.translate_status(
            getattr(code, "name", str(code)), str(exc.details() or ""), what, write=write
        )

    def translate_status(self, name: str, details: str, what: str, *, write: bool = False) -> StoreError:
        """An error from etcd, by gRPC status code name and message, as the contract's error."""
        if name == "OUT_OF_RANGE" and "compacted" in details:
            return _RevisionCompacted(details)
        if name == "OUT_OF_RANGE" and "future revision" in details:
            return _FutureRevision(details)
        where = f"etcd at {', '.join(self.endpoints)}"
        if name in _REJECTIONS:
            return StoreError(f"{what}: {where} refused it ({name}: {details})")
        maybe = "; the write may or may not have been applied" if write else ""
        return Unavailable(f"{what} failed: {where} is unavailable ({name}: {details}){maybe}")

    async def _call(self, method: Any, request: Any, what: str, *, write: bool = False) -> Any:
        """One unary RPC, at most ``max_inflight`` at a time, retrying etcd's "too many requests"."""
        self.check_open()
        delay = 0.01
        async with self._inflight:
            while True:
                try:
                    return await method(request, timeout=self._timeout)
                except rpc.AioRpcError as exc:
                    # etcd refuses proposals while its apply loop lags >5000 entries behind its commit
                    # index; the request was not proposed, so trying again is safe.
                    if _TOO_MANY_REQUESTS in str(exc.details() or "") and delay < 2.0:
                        await asyncio.sleep(delay)
                        delay *= 2
                        continue
                    raise self.translate(exc, what, write=write) from exc

    def http_session(self) -> aiohttp.ClientSession:
        """The HTTP client of the watch streams read over etcd's JSON gateway (one connection each)."""
        self.check_open()
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                read_bufsize=4 * _MiB,
            )
        return self._http

    def endpoints_from_last_good(self) -> list[str]:
        """The endpoints in order, starting with the last one that answered."""
        first = self._good_endpoint
        return list(self.endpoints[first:] + self.endpoints[:first])

    def note_good_endpoint(self, endpoint: str) -> None:
        self._good_endpoint = self.endpoints.index(endpoint)

    def key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def user_key(self, raw: bytes) -> str:
        return bytes(raw)[len(self._prefix) :].decode()

    def key_value(self, kv: Any) -> KeyValue:
        return KeyValue(self.user_key(kv.key), bytes(kv.value), int(kv.create_revision), int(kv.mod_revision))

    def prefix_range(self, prefix: str) -> tuple[bytes, bytes]:
        start = self.key(prefix)
        end = _range_end(start)
        return (start or b"\0"), end

    async def range_ok(self, revision: int) -> bool:
        """Whether etcd can still read at ``revision`` (false: it is below etcd's compact revision)."""
        request = rpc.RangeRequest(key=self._prefix or b"\0", count_only=True, revision=revision)
        try:
            await self._call(self._kv.Range, request, "range read")
        except _RevisionCompacted:
            return False
        except _FutureRevision:
            return True
        return True

    async def compact_floor(self) -> int:
        """etcd's compact revision (0 or 1 if never compacted)."""
        low = max(self._known_compact, 1)
        if await self.range_ok(low):
            return self._known_compact  # it only grows, and reading at our lower bound still works
        high = await self.revision()  # reading at the current revision always works
        while high - low > 1:  # invariant: reading at low fails, at high works
            middle = (low + high) // 2
            if await self.range_ok(middle):
                high = middle
            else:
                low = middle
        self.learn_compact(high)
        return high

    def compact_floor_hint(self) -> int:
        """etcd's compact revision as far as this client knows, without asking."""
        return self._known_compact

    def learn_compact(self, etcd_revision: int) -> None:
        self._known_compact = max(self._known_compact, etcd_revision)

    # -- the Backend protocol -----------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        response = await self._call(self._kv.Range, rpc.RangeRequest(key=self.key(key)), "get")
        if not response.kvs:
            return None
        return self.key_value(response.kvs[0])

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        start, end = self.prefix_range(prefix)
        for _attempt in range(5):
            items: list[KeyValue] = []
            revision = 0
            key = start
            try:
                while True:
                    request = rpc.RangeRequest(
                        key=key, range_end=end, limit=self._list_page, revision=revision
                    )
                    response = await self._call(self._kv.Range, request, "list")
                    if revision == 0:
                        revision = int(response.header.revision)
                    items += [self.key_value(kv) for kv in response.kvs]
                    if not response.more or not response.kvs:
                        return items, revision
                    key = bytes(response.kvs[-1].key) + b"\0"
            except _RevisionCompacted:
                continue  # compacted while we paged: start over at a fresh revision
        raise Unavailable(f"list {prefix!r}: etcd kept compacting under a paged read; try again")

    async def create(self, key: str, value: bytes) -> KeyValue:
        raw = self.key(key)
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(key=raw, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)
            ],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value))],
        )
        response = await self._call(self._kv.Txn, request, f"create {key!r}", write=True)
        if not response.succeeded:
            raise KeyExists(key)
        revision = int(response.header.revision)
        return KeyValue(key, bytes(value), revision, revision)

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> KeyValue:
        raw = self.key(key)
        request = rpc.TxnRequest(
            compare=_guards(raw, expected_revision),
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value, prev_kv=True))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))],
        )
        response = await self._call(self._kv.Txn, request, f"update {key!r}", write=True)
        if not response.succeeded:
            raise _refusal(key, expected_revision, response)
        prev = response.responses[0].response_put.prev_kv
        return KeyValue(key, bytes(value), int(prev.create_revision), int(response.header.revision))

    async def delete(self, key: str, expected_revision: int | None) -> tuple[KeyValue, int]:
        raw = self.key(key)
        request = rpc.TxnRequest(
            compare=_guards(raw, expected_revision),
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=raw, prev_kv=True))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))],
        )
        response = await self._call(self._kv.Txn, request, f"delete {key!r}", write=True)
        if not response.succeeded:
            raise _refusal(key, expected_revision, response)
        prev = response.responses[0].response_delete_range.prev_kvs[0]
        return self.key_value(prev), int(response.header.revision)

    async def revision(self) -> int:
        """etcd's current revision (1 on a new cluster), from a linearizable read."""
        request = rpc.RangeRequest(key=self._prefix or b"\0", count_only=True)
        response = await self._call(self._kv.Range, request, "read the revision")
        return int(response.header.revision)

    async def compacted_revision(self) -> int:
        """History before this revision is gone: etcd's compact revision + 1 (see the module
        docstring); 1 when nothing was compacted."""
        return await self.compact_floor() + 1

    def watch(self, prefix: str, after_revision: int) -> _EtcdWatch:
        return _EtcdWatch(self, prefix, after_revision)

    async def compact(self, revision: int) -> None:
        if revision <= 1:
            return
        current = await self.revision()
        if revision > current:
            raise ValueError(f"cannot compact at {revision}: the current revision is {current}")
        target = revision - 1  # keep `revision` whole, tombstones included (module docstring)
        if target <= self._known_compact:
            return
        request = rpc.CompactionRequest(revision=target, physical=False)
        with contextlib.suppress(_RevisionCompacted):  # somebody compacted at or beyond it already
            await self._call(self._kv.Compact, request, f"compact at {revision}")
        self.learn_compact(target)

    def active_watches(self) -> int:
        """Watch streams this backend holds open (for tests and metrics)."""
        return len(self._watches)

    def register(self, watch: _EtcdWatch) -> None:
        self._watches.add(watch)

    def unregister(self, watch: _EtcdWatch) -> None:
        self._watches.discard(watch)

    def stream_for(self, prefix: str) -> _SharedStream | None:
        return self._streams.get(prefix)

    def new_stream(self, prefix: str, after: int) -> _SharedStream:
        stream = _SharedStream(self, prefix, after)
        self._streams[prefix] = stream
        return stream

    def drop_stream(self, stream: _SharedStream) -> None:
        if self._streams.get(stream.prefix) is stream:
            del self._streams[stream.prefix]
        if stream.task is not None:
            self._ended_streams.add(stream.task)
            stream.task.add_done_callback(self._ended_streams.discard)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            await watch.close()
        tasks = [s.task for s in self._streams.values() if s.task is not None] + list(self._ended_streams)
        for stream in list(self._streams.values()):
            stream.shutdown()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self._channel.close()

    async def __aenter__(self) -> EtcdBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(slots=True)
class _Response:
    """One etcd WatchResponse, whichever way it came."""

    revision: int  # the header's
    events: list[Event]
    created: bool = False
    fragment: bool = False
    canceled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0


class _Stream:
    """One etcd watch on a prefix after a revision: opens it, reads the responses, reassembles
    fragments, and turns them into events and progress, or the contract's errors. ``progress``: the
    stream is complete up to it.

    It reads over etcd's JSON gateway when etcd serves it, else over gRPC (see the module docstring).
    ``next`` returns every event that arrived since the previous call as one batch, so a consumer that
    was busy meanwhile takes the whole backlog at once rather than one response per loop turn."""

    def __init__(self, backend: EtcdBackend, prefix: str, after: int) -> None:
        self._backend = backend
        self.prefix = prefix
        self.progress = after
        self._transport: _GatewayTransport | _GrpcTransport | None = None
        self._responses: deque[_Response] = deque()
        self._fragments: list[Event] = []
        self._closing = False

    async def open(self) -> None:
        backend = self._backend
        start, end = backend.prefix_range(self.prefix)
        if backend.watch_over_gateway:
            gateway = _GatewayTransport(backend, self.prefix)
            self._transport = gateway
            if await gateway.open(start, end, self.progress + 1):
                return
            backend.watch_over_gateway = False  # this etcd does not serve it: gRPC from now on
        grpc_transport = _GrpcTransport(backend, self.prefix)
        self._transport = grpc_transport
        await grpc_transport.open(start, end, self.progress + 1)

    async def next(self) -> tuple[tuple[Event, ...], int] | None:
        """The events that arrived since the last call (possibly none: progress only) and the progress
        after them; None once ``cancel`` was called."""
        events: list[Event] = []
        before = self.progress
        while True:
            if not self._responses:
                if events or self.progress > before:
                    return tuple(events), self.progress
                if self._closing or self._transport is None:
                    return None
                responses = await self._transport.read()
                if responses is None:
                    return None
                self._responses += responses
                continue
            response = self._responses[0]
            if (response.compact_revision or response.canceled) and events:
                return tuple(events), self.progress  # deliver what came before; fail on the next call
            self._responses.popleft()
            if response.compact_revision:
                self._backend.learn_compact(response.compact_revision)
                self.cancel()
                raise Compacted(self.progress, response.compact_revision + 1)
            if response.canceled:
                self.cancel()
                reason = response.cancel_reason or "no reason given"
                raise Unavailable(f"etcd canceled the watch on {self.prefix!r}: {reason}")
            if response.created:
                continue
            if response.events or response.fragment:
                self._fragments += response.events
                if response.fragment:
                    continue
                complete, self._fragments = self._fragments, []
                if complete:
                    events += complete
                    self.progress = max(self.progress, complete[-1].kv.mod_revision)
                continue
            # A progress notification: everything up to the header's revision was sent.
            self.progress = max(self.progress, response.revision)

    def cancel(self) -> None:
        self._closing = True
        self._responses.clear()
        if self._transport is not None:
            self._transport.cancel()


class _GatewayTransport:
    """A watch over etcd's JSON gateway (``POST /v3/watch``, newline-delimited JSON responses), on the
    event loop's own socket: one read takes every response that arrived meanwhile."""

    def __init__(self, backend: EtcdBackend, prefix: str) -> None:
        self._backend = backend
        self._prefix = prefix
        self._response: aiohttp.ClientResponse | None = None
        self._where = ""
        self._tail: list[bytes] = []
        self._tail_size = 0
        self._closing = False

    async def open(self, start: bytes, end: bytes, start_revision: int) -> bool:
        """Open the watch; False if etcd does not serve the gateway."""
        backend = self._backend
        body = json.dumps(
            {
                "create_request": {
                    "key": base64.b64encode(start).decode(),
                    "range_end": base64.b64encode(end).decode(),
                    "start_revision": str(start_revision),
                    "progress_notify": True,
                    "prev_kv": True,
                    "fragment": True,
                }
            }
        ).encode()
        failures = []
        for endpoint in backend.endpoints_from_last_good():
            try:
                response = await backend.http_session().post(
                    f"http://{endpoint}/v3/watch",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            backend.note_good_endpoint(endpoint)
            self._where = endpoint
            if response.status in _NO_GATEWAY:
                response.close()
                return False
            if response.status != 200:
                text = await _error_text(response)
                response.close()
                raise backend.translate_status(_http_code(response.status, text), text, self._what())
            self._response = response
            _keep_alive(response)
            if self._closing:  # cancelled while it opened
                response.close()
            return True
        where = ", ".join(backend.endpoints)
        raise Unavailable(f"{self._what()} failed: etcd at {where} is unavailable ({'; '.join(failures)})")

    async def read(self) -> list[_Response] | None:
        assert self._response is not None
        content = self._response.content
        while True:
            try:
                data = await content.readany()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closing and task is not None and task.cancelling() == 0:
                    return None
                raise
            except (aiohttp.ClientError, OSError) as exc:
                if self._closing:
                    return None
                self.cancel()
                raise Unavailable(
                    f"{self._what()}: the stream from etcd at {self._where} broke ({exc})"
                ) from exc
            if not data:
                if self._closing:
                    return None
                self.cancel()
                raise Unavailable(f"etcd at {self._where} ended the watch stream on {self._prefix!r}")
            if b"\n" not in data:
                self._tail.append(data)
                self._tail_size += len(data)
                if self._tail_size > _MAX_GATEWAY_LINE:
                    self.cancel()
                    raise Unavailable(
                        f"{self._what()}: a response from etcd exceeds {_MAX_GATEWAY_LINE} bytes"
                    )
                continue
            if self._tail:
                data = b"".join(self._tail) + data
                self._tail, self._tail_size = [], 0
            lines = data.split(b"\n")
            rest = lines.pop()
            if rest:
                self._tail, self._tail_size = [rest], len(rest)
            return [self._parse(line) for line in lines if line.strip()]

    def _parse(self, line: bytes) -> _Response:
        try:
            message = json.loads(line)
            result = message.get("result")
            if result is not None:
                return _Response(
                    int(result.get("header", {}).get("revision", 0)),
                    [self._event(e) for e in result.get("events", ())],
                    created=bool(result.get("created")),
                    fragment=bool(result.get("fragment")),
                    canceled=bool(result.get("canceled")),
                    cancel_reason=str(result.get("cancel_reason", "")),
                    compact_revision=int(result.get("compact_revision", 0)),
                )
            # The gateway's error: {"error": {"grpc_code": N, "message": ...}} (or flat, as on open).
            error = message.get("error")
            if not isinstance(error, dict):
                error = message
            name = _CODE_NAMES.get(int(error.get("grpc_code", error.get("code", 2))), "UNKNOWN")
            details = str(error.get("message", ""))
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            self.cancel()
            raise Unavailable(
                f"{self._what()}: etcd at {self._where} sent a response not understood: {exc!r}"
            ) from exc
        self.cancel()
        raise self._backend.translate_status(name, details, self._what())

    def _event(self, raw: dict[str, Any]) -> Event:
        prev = self._kv(raw["prev_kv"]) if "prev_kv" in raw else None
        kv = raw["kv"]
        if raw.get("type") == "DELETE":
            deleted = KeyValue(self._key(kv["key"]), b"", 0, int(kv["mod_revision"]))
            return Event(EventType.DELETE, deleted, prev)
        return Event(EventType.PUT, self._kv(kv), prev)

    def _kv(self, raw: dict[str, Any]) -> KeyValue:
        return KeyValue(
            self._key(raw["key"]),
            base64.b64decode(raw.get("value", "")),
            int(raw.get("create_revision", 0)),
            int(raw.get("mod_revision", 0)),
        )

    def _key(self, encoded: str) -> str:
        return self._backend.user_key(base64.b64decode(encoded))

    def _what(self) -> str:
        return f"watch {self._prefix!r}"

    def cancel(self) -> None:
        self._closing = True
        if self._response is not None:
            self._response.close()


class _GrpcTransport:
    """A watch over gRPC, when etcd does not serve the JSON gateway. Each response takes one read (a
    round trip through gRPC's completion queue and the event loop), so a busy loop reads far fewer
    responses per second than over the gateway."""

    def __init__(self, backend: EtcdBackend, prefix: str) -> None:
        self._backend = backend
        self._prefix = prefix
        self._call: Any = None
        self._closing = False

    async def open(self, start: bytes, end: bytes, start_revision: int) -> None:
        backend = self._backend
        self._call = backend.watch_stub.Watch()
        create = rpc.WatchCreateRequest(
            key=start,
            range_end=end,
            start_revision=start_revision,
            progress_notify=True,
            prev_kv=True,
            fragment=True,
        )
        try:
            await self._call.write(rpc.WatchRequest(create_request=create))
        except rpc.AioRpcError as exc:
            self.cancel()
            raise backend.translate(exc, f"watch {self._prefix!r}") from exc

    async def read(self) -> list[_Response] | None:
        try:
            response = await self._call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closing and task is not None and task.cancelling() == 0:
                return None  # our own cancel() ended the call under this read
            raise
        except rpc.AioRpcError as exc:
            if self._closing:
                return None
            self.cancel()
            raise self._backend.translate(exc, f"watch {self._prefix!r}") from exc
        if not isinstance(response, rpc.WatchResponse):  # grpc.aio.EOF
            if self._closing:
                return None
            self.cancel()
            where = ", ".join(self._backend.endpoints)
            raise Unavailable(f"etcd at {where} ended the watch stream on {self._prefix!r}")
        return [
            _Response(
                int(response.header.revision),
                [self._event(e) for e in response.events],
                created=response.created,
                fragment=response.fragment,
                canceled=response.canceled,
                cancel_reason=response.cancel_reason,
                compact_revision=int(response.compact_revision),
            )
        ]

    def _event(self, raw: Any) -> Event:
        backend = self._backend
        prev = backend.key_value(raw.prev_kv) if raw.HasField("prev_kv") else None
        if raw.type == rpc.Event.DELETE:
            kv = KeyValue(backend.user_key(raw.kv.key), b"", 0, int(raw.kv.mod_revision))
            return Event(EventType.DELETE, kv, prev)
        return Event(EventType.PUT, backend.key_value(raw.kv), prev)

    def cancel(self) -> None:
        self._closing = True
        if self._call is not None:
            self._call.cancel()


async def _error_text(response: aiohttp.ClientResponse) -> str:
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError):
        return (await response.text())[:500]
    return ""


def _http_code(status: int, text: str) -> str:
    """The gRPC code name behind a gateway's error answer (its JSON body has the gRPC code)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        code = json.loads(text).get("code")
        if isinstance(code, int) and code in _CODE_NAMES:
            return _CODE_NAMES[code]
    return "UNAVAILABLE" if status >= 500 else "INVALID_ARGUMENT"


def _keep_alive(response: aiohttp.ClientResponse) -> None:
    """TCP keepalive on a watch connection, so that a vanished etcd host is noticed within seconds
    (the gRPC channel pings every 10 s for the same reason)."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class _SharedStream:
    """One etcd stream on a prefix, read by one task and fanned out to every local watch of that
    prefix that starts within its ring, so N watchers cost one stream and one decoding of each event.
    What it reads is handed out at once after a quiet window, else gathered until the window since the
    last hand-out has passed (``_window``; see the module docstring).

    Invariant: ``_ring`` holds every event under the prefix with revision in (``floor``, ``head``];
    events read but not handed out yet (``_held``) are above ``head``."""

    def __init__(self, backend: EtcdBackend, prefix: str, after: int) -> None:
        self._backend = backend
        self.prefix = prefix
        self.head = after
        self.floor = after
        self._ring: list[Event] = []
        self._ring_revisions: list[int] = []
        self._stream = _Stream(backend, prefix, after)
        self.watchers: set[_EtcdWatch] = set()
        self.ready = asyncio.Event()
        self.alive = False
        self.task: asyncio.Task[None] | None = None
        self._held: list[Event] = []  # read, to be published (see _run)
        self._held_progress = after
        self._flush_at: asyncio.TimerHandle | None = None
        self._last_publish = float("-inf")

    async def open(self) -> None:
        try:
            await self._stream.open()
        except BaseException:
            self._backend.drop_stream(self)
            raise
        finally:
            self.ready.set()
        self.alive = True
        self.task = asyncio.create_task(self._run(), name=f"etcd watch {self.prefix!r}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await self._stream.next()
                if item is None:
                    return
                events, progress = item
                self._held += events
                self._held_progress = progress
                if self._flush_at is not None:
                    continue  # a publish is due: these go with it
                wait = self._last_publish + self._window() - loop.time()
                if wait <= 0:
                    self._flush()  # quiet until now: at once
                else:
                    self._flush_at = loop.call_later(wait, self._flush)
        except StoreError as exc:
            self._end(exc)
        except Exception as exc:
            self._end(Unavailable(f"the etcd watch on {self.prefix!r} failed: {exc!r}"))
        finally:
            self._cancel_flush()

    def _window(self) -> float:
        """How long a busy stream gathers events: a publish costs every watch a wake-up and a write
        downstream, so the window grows with the watches (5,000 wake-ups a second at most by default),
        within ``_MAX_FANOUT_WINDOW``."""
        return min(_MAX_FANOUT_WINDOW, self._backend.fanout_pace * len(self.watchers))

    def _flush(self) -> None:
        self._cancel_flush()
        if not self.alive or (not self._held and self._held_progress <= self.head):
            return
        events, self._held = tuple(self._held), []
        self._last_publish = asyncio.get_running_loop().time()
        self._publish(events, self._held_progress)

    def _cancel_flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None

    def _publish(self, events: tuple[Event, ...], progress: int) -> None:
        self.head = max(self.head, progress)
        if events:
            self._ring += events
            self._ring_revisions += [e.kv.mod_revision for e in events]
            limit = self._backend.ring_size
            if len(self._ring) > 2 * limit:
                cut = len(self._ring) - limit
                self.floor = self._ring_revisions[cut - 1]
                del self._ring[:cut]
                del self._ring_revisions[:cut]
        for watch in list(self.watchers):
            watch.offer(events)

    def since(self, after: int) -> list[Event]:
        return self._ring[bisect.bisect_right(self._ring_revisions, after) :]

    def _end(self, error: StoreError) -> None:
        self.alive = False
        self._backend.drop_stream(self)
        for watch in list(self.watchers):
            if isinstance(error, Compacted):
                watch.fail(Compacted(watch.reported, error.compacted))
            else:
                watch.fail(Unavailable(str(error)))
        self.watchers.clear()

    def leave(self, watch: _EtcdWatch) -> None:
        self.watchers.discard(watch)
        if not self.watchers:  # nobody left: release the etcd watch
            self.shutdown()

    def shutdown(self) -> None:
        self.alive = False
        self._cancel_flush()
        self._backend.drop_stream(self)
        self._stream.cancel()


class _EtcdWatch:
    """One watch, opened on first iteration. It joins the prefix's shared stream when that one's ring
    still covers its start (or starts one), else reads its own etcd stream. ``reported``: the
    progress last reported (never goes back)."""

    def __init__(self, backend: EtcdBackend, prefix: str, after: int) -> None:
        self._backend = backend
        self.prefix = prefix
        self._after = after
        self.reported = after
        self._own: _Stream | None = None
        self._shared: _SharedStream | None = None
        self._cursor = after  # shared: every event <= cursor is delivered or pending
        self._pending: deque[Event] = deque()
        self._error: StoreError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._started = False
        self._done = False

    async def _start(self) -> None:
        backend = self._backend
        backend.check_open()
        after = self._after
        if after < backend.compact_floor_hint():
            raise Compacted(after, backend.compact_floor_hint() + 1)
        # etcd accepts a watch starting at its compact revision, where a delete may be missing: make
        # sure the revision before our start is still readable.
        if after >= 1 and not await backend.range_ok(after):
            raise Compacted(after, await backend.compact_floor() + 1)
        backend.register(self)
        while True:
            shared = backend.stream_for(self.prefix)
            if shared is None:
                shared = backend.new_stream(self.prefix, after)
                await shared.open()  # on failure it drops itself, and we fail
            elif not shared.ready.is_set():
                await shared.ready.wait()
                continue
            if self.closed():  # closed while we waited
                shared.leave(self)
                return
            if not shared.alive:
                continue  # it ended meanwhile (and dropped itself): look again
            if after < shared.floor:
                break  # the shared ring no longer covers our start: read our own stream
            self._shared = shared
            shared.watchers.add(self)
            self._pending += shared.since(after)
            self._cursor = max(after, shared.head)
            return
        self._own = _Stream(backend, self.prefix, after)
        await self._own.open()
        if self.closed():  # closed while the stream opened
            self._own.cancel()

    def closed(self) -> bool:
        return self._done

    # -- fed by the shared stream -----------------------------------------------------------------------

    def offer(self, events: tuple[Event, ...]) -> None:
        if events:
            if events[0].kv.mod_revision <= self._cursor:
                events = tuple(e for e in events if e.kv.mod_revision > self._cursor)
            if events:
                self._pending += events
                self._cursor = events[-1].kv.mod_revision
                limit = self._backend.watch_queue_limit
                if len(self._pending) > limit:
                    self.fail(WatchOverflow(self.prefix, self.reported, limit))
                    return
        self._wake()  # events, or progress to report

    def fail(self, error: StoreError) -> None:
        self._pending.clear()
        self._error = error
        self._finish()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- consumer side ----------------------------------------------------------------------------------

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        if not self._started:
            self._started = True
            try:
                await self._start()
            except BaseException:
                self._finish()
                raise
        while True:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._pending:
                return self._take()
            if self._done:
                raise StopAsyncIteration
            if self._own is not None:
                item = await self._own.next()
                if item is None:
                    raise StopAsyncIteration
                return self._report(*item)
            shared = self._shared
            assert shared is not None
            progress = max(self._cursor, shared.head)
            if progress > self.reported:
                return self._report((), progress)
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def _take(self) -> WatchBatch:
        pending = self._pending
        if len(pending) <= _MAX_WATCH_BATCH:
            events = tuple(pending)
            pending.clear()
        else:
            events = tuple(pending.popleft() for _ in range(_MAX_WATCH_BATCH))
        if self._pending or self._shared is None:
            return self._report(events, events[-1].kv.mod_revision)
        return self._report(events, max(self._cursor, self._shared.head))

    def _report(self, events: tuple[Event, ...], progress: int) -> WatchBatch:
        self.reported = max(self.reported, progress)
        return WatchBatch(events, self.reported)

    def _finish(self) -> None:
        self._done = True
        if self._own is not None:
            self._own.cancel()
        if self._shared is not None:
            self._shared.leave(self)
        self._backend.unregister(self)
        self._wake()

    async def close(self) -> None:
        if not self._done:
            self._pending.clear()
            self._finish()

    async def __aenter__(self) -> _EtcdWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
