"""The ADS server: Envoy's AggregatedDiscoveryService over grpc.aio, both variants.

One ``XdsServer`` serves every data plane that speaks xDS (our sidecar, proxyless gRPC, Envoy) from
one ``ConfigSource``. Per stream:

- one task, the RPC handler, owns the stream's state and is the only writer; a small reader task
  only queues requests and wakes it. The handler drains the queue through the protocol machine
  (``streams.py``: ACK, NACK, stale nonces, subscriptions), regenerates if a push or a new set of
  listener names asks for it, and writes whatever responses are due, in ``PUSH_ORDER``.
- a push (a debounced burst of ``ConfigSource`` changes) only flags every stream and wakes it; each
  stream then generates once and sends only the types whose content changed, so a stream whose
  configuration did not change costs one generation and sends nothing.

A NACK is recorded on its stream (``connections()``), logged once at WARNING with the node id,
counted (``stats.nacks`` by type URL) and passed to ``on_nack``; the rejected configuration is not
sent again until the configuration changes.

A stream ends, and is forgotten, however its reader stops: the client went away, or sent bytes that
do not decode (INVALID_ARGUMENT), or broke the protocol (``ProtocolError``: INVALID_ARGUMENT naming
the field). Requests are bounded in size (``MAX_REQUEST_BYTES``) and, by ``streams.py``, in the types
and names they may subscribe to. A generation that raises is logged, counted and retried with backoff,
so a translator bug costs the proxy its updates only as long as it lasts.

Identical proxies share work: a source may return the same ``Resources`` object for each of them
(``MeshSource`` does), and the server then serializes it once, not once per stream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.message import DecodeError

from innermesh.xds.debounce import Debouncer
from innermesh.xds.streams import Ack, DeltaStream, Nack, ProtocolError, SotwStream, TypeStatus
from innermesh.xds.types import ConfigSource, ProxyInfo, ProxyKind, Resources
from innermesh.xds.versions import EncodedResources, encode

log = logging.getLogger(__name__)

Node = Any  # envoy.config.core.v3.Node (xds-protos ships no type information)
Variant = Literal["sotw", "delta"]

# on_nack(proxy, type_url, resource_names, message); may be a coroutine function.
OnNack = Callable[[ProxyInfo, str, Sequence[str], str], Awaitable[None] | None]

# The largest request a client may send. The biggest legitimate one is a delta reconnect declaring
# MAX_NAMES_PER_TYPE (10,000) names with their versions: about 200 bytes each with a long cluster name,
# 2 MB; anything beyond twice that is not a data plane's request. gRPC refuses it before it is parsed.
MAX_REQUEST_BYTES = 4 * 1024 * 1024

# Keepalive: a proxy whose host vanished without closing its connection is found within about
# 80 s and its stream forgotten; clients may ping every 10 s without being told "too many pings".
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


_INBOX_LIMIT = 64  # requests read ahead of the stream's handler

# Serializations kept between pushes (one per distinct Resources generated); streams that change their
# listener names between pushes could otherwise grow the map until the next push.
_ENCODINGS_KEPT = 4096

# A failed generation is retried after 0.1 s, doubling up to 10 s: soon enough for a transient
# failure, rare enough that a lasting bug logs a traceback per stream every 10 s, not continuously.
_RETRY_START = 0.1
_RETRY_CAP = 10.0


@dataclass(frozen=True, slots=True)
class NackRecord:
    type_url: str
    version: str  # the version the proxy rejected (it runs its previous one)
    message: str
    resource_names: tuple[str, ...]
    at: float  # wall-clock seconds


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """One connected stream, for the admin/status view."""

    node_id: str  # "" until the first request arrived
    kind: ProxyKind | None
    variant: Variant
    peer: str
    connected_at: float  # wall-clock seconds
    types: Mapping[str, TypeStatus]  # type URL -> subscription, last sent and last ACKed versions
    last_nack: NackRecord | None


@dataclass
class ServerStats:
    """Counters since start (metrics export reads these later)."""

    pushes: int = 0  # debounced bursts of changes pushed to every stream
    generations: int = 0
    generate_errors: int = 0
    streams_opened: int = 0
    streams_closed: int = 0
    stale_requests: int = 0
    responses: Counter[str] = field(default_factory=Counter)  # by type URL
    acks: Counter[str] = field(default_factory=Counter)
    nacks: Counter[str] = field(default_factory=Counter)


@dataclass(eq=False)
class _Connection:
    variant: Variant
    machine: SotwStream | DeltaStream
    peer: str
    connected_at: float = field(default_factory=time.time)
    # Bounded: a client that floods requests is slowed by gRPC flow control, not buffered without end.
    inbox: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(_INBOX_LIMIT))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    # Why the reader stopped, when it was not the client's leaving: the status that ends the RPC.
    failure: tuple[grpc.StatusCode, str] | None = None
    aborting: bool = False  # the handler is ending the RPC (the reader's failure then is expected)
    regenerate: bool = True
    failed_generations: int = 0  # in a row, for the retry's backoff
    retry: asyncio.TimerHandle | None = None
    node: Node | None = None
    proxy: ProxyInfo | None = None
    snapshot: EncodedResources | None = None
    generated_for: frozenset[str] | None = None
    last_nack: NackRecord | None = None
    reported_nacks: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (version, msg)

    @property
    def node_id(self) -> str:
        return str(self.node.id) if self.node is not None else ""


class XdsServer:
    """ADS over gRPC. ``proxy_info`` turns a stream's Node into the ProxyInfo generation takes; it
    raises ValueError for a Node it cannot accept (the stream then ends with INVALID_ARGUMENT)."""

    def __init__(
        self,
        source: ConfigSource,
        proxy_info: Callable[[Node], ProxyInfo],
        *,
        on_nack: OnNack | None = None,
        debounce_quiet: float = 0.1,
        debounce_max: float = 0.5,
    ) -> None:
        self._source = source
        self._proxy_info = proxy_info
        self._on_nack = on_nack
        self._debouncer = Debouncer(self._push, quiet=debounce_quiet, max_delay=debounce_max)
        self._connections: set[_Connection] = set()
        self._callbacks: set[asyncio.Future[None]] = set()
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # Serializations of the Resources generated since the last push, by object identity; each
        # entry holds its Resources, so an id cannot be reused by another object while it is here.
        self._encoded: dict[int, tuple[Resources, EncodedResources]] = {}
        self.stats = ServerStats()
        source.on_change(self._changed)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port) and return the bound port."""
        self._loop = asyncio.get_running_loop()
        self._server = grpc.aio.server(options=_SERVER_OPTIONS)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"xds: cannot listen on {address}: {e}") from e
        await self._server.start()
        log.info("xds: serving ADS on %s", f"{host}:{bound}")
        return bound

    async def stop(self, grace: float | None = 1.0) -> None:
        """End every stream (clients see the stream close and reconnect elsewhere), then stop."""
        self._stopping = True
        self._debouncer.cancel()
        for conn in self._connections:
            conn.wake.set()
        if self._server is not None:
            await self._server.stop(grace)
        for task in list(self._callbacks):
            task.cancel()
        if self._callbacks:
            await asyncio.gather(*self._callbacks, return_exceptions=True)

    def connections(self) -> list[ConnectionStatus]:
        return [
            ConnectionStatus(
                node_id=c.node_id,
                kind=c.proxy.kind if c.proxy is not None else None,
                variant=c.variant,
                peer=c.peer,
                connected_at=c.connected_at,
                types=c.machine.status(),
                last_nack=c.last_nack,
            )
            for c in sorted(self._connections, key=lambda c: (c.node_id, c.connected_at))
        ]

    # --- pushes --------------------------------------------------------------------------------------

    def _changed(self) -> None:
        loop = self._loop
        if loop is None or self._stopping:
            return  # nobody is connected before start or after stop
        # The source may call from any thread; the debouncer lives on the server's loop.
        loop.call_soon_threadsafe(self._debouncer.poke)

    def _push(self) -> None:
        self.stats.pushes += 1
        self._encoded.clear()  # the source has new state: what it returned before is not asked again
        for conn in self._connections:
            conn.regenerate = True
            conn.wake.set()

    # --- streams -------------------------------------------------------------------------------------

    async def serve(self, variant: Variant, requests: AsyncIterator[Any], context: Any) -> None:
        """The body of both RPCs: runs until the client goes away, breaks the protocol, or the server
        stops. However it ends, the stream is forgotten (``finally``)."""
        machine: SotwStream | DeltaStream = SotwStream() if variant == "sotw" else DeltaStream()
        conn = _Connection(variant, machine, peer=str(context.peer()))
        self._connections.add(conn)
        self.stats.streams_opened += 1
        reader = asyncio.create_task(self._read(conn, requests), name=f"xds-read {conn.peer}")
        try:
            # Headers now, not with the first response: a client learns at once that it is connected.
            await context.send_initial_metadata(())
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                if self._stopping:
                    return
                if conn.ended:
                    if conn.failure is not None:
                        await self._abort(conn, context, *conn.failure)
                    return
                try:
                    responses = self._step(conn)
                except ProtocolError as e:
                    log.warning("xds: ending stream from %s (%s): %s", conn.peer, conn.node_id, e)
                    await self._abort(conn, context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
                for response in responses:
                    await context.write(response)
                    self.stats.responses[response.type_url] += 1
        finally:
            self._connections.discard(conn)
            self.stats.streams_closed += 1
            if conn.retry is not None:
                conn.retry.cancel()
            reader.cancel()
            # The reader catches what it can meet; whatever else it raised is not this stream's end.
            await asyncio.gather(reader, return_exceptions=True)

    @staticmethod
    async def _abort(conn: _Connection, context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
        conn.aborting = True
        await context.abort(code, details)
        raise AssertionError("grpc's abort returned")  # it raises, always

    @staticmethod
    async def _read(conn: _Connection, requests: AsyncIterator[Any]) -> None:
        """Queue the stream's requests for its handler; note why reading stopped, if not the client's
        leaving, so that the handler ends the RPC with that status."""
        try:
            async for request in requests:
                await conn.inbox.put(request)
                conn.wake.set()
        except grpc.aio.AioRpcError as e:  # the client went away mid-read
            log.debug("xds: stream from %s ended: %s", conn.peer, e.code())
        except DecodeError as e:  # grpc parses each request as it is read
            log.warning("xds: ending stream from %s (%s): a request does not decode", conn.peer, conn.node_id)
            conn.failure = (grpc.StatusCode.INVALID_ARGUMENT, f"request: cannot decode: {e}")
        except Exception as e:
            if not conn.aborting:
                log.exception("xds: reading the stream from %s (%s) failed", conn.peer, conn.node_id)
                conn.failure = (grpc.StatusCode.INTERNAL, f"reading the request stream failed: {e!r}")
        finally:
            conn.ended = True
            conn.wake.set()

    def _step(self, conn: _Connection) -> list[Any]:
        """Take the queued requests, regenerate if due, and return the responses now due."""
        while not conn.inbox.empty():
            request = conn.inbox.get_nowait()
            if conn.node is None:
                self._identify(conn, request)
            received = conn.machine.receive(request)
            if received.stale:
                self.stats.stale_requests += 1
            if isinstance(received.outcome, Ack):
                self.stats.acks[received.outcome.type_url] += 1
            elif isinstance(received.outcome, Nack):
                self._nacked(conn, received.outcome)
        if conn.node is None:
            return []  # the reader woke us to say the stream ended before any request
        names = conn.machine.listener_names()
        # After a failure, new names wait for the retry (a client must not make the server fail, and
        # log, at the pace of its requests); a push, new state that may not fail, is tried at once.
        settled = conn.retry is None and conn.snapshot is not None and names == conn.generated_for
        if conn.regenerate or (conn.retry is None and not settled):
            conn.regenerate = False
            self._generate(conn, conn.node, names)
        if conn.snapshot is None:
            return []
        return conn.machine.responses(conn.snapshot)

    def _generate(self, conn: _Connection, node: Node, names: frozenset[str] | None) -> None:
        """Regenerate the stream's snapshot. A failure (a bug in translation) must not end the proxy's
        stream: it keeps what it has, and the generation is retried after a backoff."""
        if conn.retry is not None:
            conn.retry.cancel()
            conn.retry = None
        try:
            proxy = self._proxy_info(node)
            conn.snapshot = self._encode(self._source.generate(proxy, names))
        except Exception:
            self.stats.generate_errors += 1
            delay = min(_RETRY_CAP, _RETRY_START * 2**conn.failed_generations)
            conn.failed_generations += 1
            log.exception(
                "xds: generating configuration for %s failed (%d in a row); retrying in %.1fs",
                conn.node_id,
                conn.failed_generations,
                delay,
            )
            conn.retry = asyncio.get_running_loop().call_later(delay, self._retry, conn)
            return
        conn.proxy = proxy
        conn.generated_for = names
        conn.failed_generations = 0
        self.stats.generations += 1

    @staticmethod
    def _retry(conn: _Connection) -> None:
        conn.retry = None
        conn.regenerate = True
        conn.wake.set()

    def _encode(self, resources: Resources) -> EncodedResources:
        cached = self._encoded.get(id(resources))
        if cached is not None and cached[0] is resources:
            return cached[1]
        encoded = encode(resources)
        if len(self._encoded) >= _ENCODINGS_KEPT:
            del self._encoded[next(iter(self._encoded))]
        self._encoded[id(resources)] = (resources, encoded)
        return encoded

    def _identify(self, conn: _Connection, request: Any) -> None:
        if not request.HasField("node") or not request.node.id:
            raise ProtocolError("node.id: required on the first request of a stream")
        try:
            conn.proxy = self._proxy_info(request.node)
        except ValueError as e:
            raise ProtocolError(f"node: {e}") from e
        conn.node = request.node
        log.info("xds: %s connected from %s (%s)", conn.node_id, conn.peer, conn.variant)

    def _nacked(self, conn: _Connection, nack: Nack) -> None:
        self.stats.nacks[nack.type_url] += 1
        conn.last_nack = NackRecord(
            nack.type_url, nack.version, nack.message, nack.resource_names, time.time()
        )
        # A proxy NACKs the same version again when it re-subscribes; that is one rejection, not two.
        if conn.reported_nacks.get(nack.type_url) == (nack.version, nack.message):
            return
        conn.reported_nacks[nack.type_url] = (nack.version, nack.message)
        log.warning(
            "xds: %s rejected %s version %s (%s): %s",
            conn.node_id,
            nack.type_url.rsplit(".", 1)[-1],
            nack.version,
            ", ".join(nack.resource_names) or "no resources",
            nack.message,
        )
        if self._on_nack is None or conn.proxy is None:
            return
        try:
            result = self._on_nack(conn.proxy, nack.type_url, nack.resource_names, nack.message)
        except Exception:
            log.exception("xds: on_nack for %s failed", conn.node_id)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callbacks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Future[None]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("xds: on_nack failed", exc_info=task.exception())


class _Servicer:
    """The two ADS methods, as grpc's generated registration helper expects them."""

    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        await self._server.serve("sotw", request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        await self._server.serve("delta", request_iterator, context)
