"""The sidecar's xDS client: one ADS stream to the control plane, kept open forever.

The client subscribes to every Listener and Cluster (wildcard), then to the RouteConfigurations its
listeners name (HCM ``rds.route_config_name``) and the ClusterLoadAssignments its EDS clusters name
(``eds_cluster_config.service_name``, or the cluster's name). It holds what it received, by type and
name, and hands the whole set to ``apply`` when the set is consistent: every referenced route and
endpoint assignment has arrived or is known not to exist (delta ``removed_resources``, or no answer
within ``consistency_timeout``, the client side of xDS's "does not exist" timer). Waiting avoids
compiling a plan with a cluster but no endpoints, which would answer 503 for the moment in between.

``apply`` accepts the update or raises ``ConfigRejected``; the responses the update was made of are
then ACKed or NACKed (with the message). After a NACK the client keeps what it received (that is what
the server believes it holds, and later deltas build on it) but the caller keeps running the last set
it accepted, which ``state.applied`` also holds for /config_dump.

Delta (incremental) ADS is the default; state of the world is an option. The stream reconnects after
any failure with jittered exponential backoff, and re-subscribes (delta: declaring the versions it
holds, so that an unchanged configuration is not sent again).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import DecodeError

from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Message, Resources

log = logging.getLogger(__name__)

Variant = Literal["delta", "sotw"]
Apply = Callable[[Resources], Awaitable[None] | None]
Node = Any  # envoy.config.core.v3.Node

WILDCARD = "*"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

_MESSAGE_TYPES: dict[str, Callable[[], Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
}
_WILDCARD_TYPES = (CLUSTER, LISTENER)  # subscribed to as a whole
_ROOT_ORDER = (CLUSTER, LISTENER, ENDPOINT, ROUTE)  # the order of the first requests, as Envoy does

_INVALID_ARGUMENT = 3  # google.rpc.Code, in a NACK's error_detail
_MAX_MESSAGE = 64 * 1024 * 1024  # a large mesh's configuration still fits; a runaway one does not
_QUEUED_RESPONSES = 8
# Keepalive finds a control plane whose host vanished within about 40 s. The stream is quiet between
# pushes, so pings without data must not be capped (gRPC's default stops after two). The server
# accepts a ping every 10 s.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


class ConfigRejected(Exception):
    """Raised by ``apply`` to refuse an update; ``message`` goes to the server in the NACK."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class NackInfo:
    type_url: str
    version: str  # the version refused
    message: str
    at: float  # wall-clock seconds


@dataclass
class XdsClientState:
    """What the client knows about its connection and configuration (one owner: the client)."""

    server: str
    variant: Variant
    connected: bool = False
    connects: int = 0  # streams that reached the server
    acked_versions: dict[str, str] = field(default_factory=dict)  # type URL -> version
    last_nack: NackInfo | None = None
    applied: Resources = field(default_factory=dict)  # the last set ``apply`` accepted
    applied_versions: dict[str, dict[str, str]] = field(default_factory=dict)  # type -> name -> version
    applied_at: float | None = None
    updates_applied: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for /config_dump (the resources themselves are left to the caller)."""
        nack = self.last_nack
        return {
            "server": self.server,
            "variant": self.variant,
            "connected": self.connected,
            "connects": self.connects,
            "acked_versions": dict(self.acked_versions),
            "last_nack": None
            if nack is None
            else {"type_url": nack.type_url, "version": nack.version, "message": nack.message, "at": nack.at},
            "applied_versions": {t: dict(v) for t, v in self.applied_versions.items()},
            "applied_at": self.applied_at,
            "updates_applied": self.updates_applied,
        }


# --- references between resources (pure) ------------------------------------------------------------


def route_names(listener: Message) -> set[str]:
    """The RouteConfiguration names a Listener's HTTP connection managers fetch over RDS."""
    configs = []
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        configs.extend(f.typed_config for f in chain.filters if f.HasField("typed_config"))
    names = set()
    for config in configs:
        if config.type_url != HCM_TYPE:
            continue
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        hcm.ParseFromString(config.value)
        if hcm.HasField("rds"):
            names.add(hcm.rds.route_config_name)
    return names


def endpoint_names(cluster: Message) -> set[str]:
    """The ClusterLoadAssignment name an EDS cluster fetches (none for other discovery types)."""
    if cluster.WhichOneof("cluster_discovery_type") != "type" or cluster.type != cluster_pb2.Cluster.EDS:
        return set()
    return {cluster.eds_cluster_config.service_name or cluster.name}


def _version_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Held:
    """A received resource, its version, and the names it makes the client fetch (computed once)."""

    message: Message
    version: str
    references: frozenset[str] = frozenset()


def held_resource(type_url: str, packed: Any, version: str = "", name_hint: str = "") -> Held:
    """Decode one resource of a ``type_url`` response (ConfigRejected if it is not one)."""
    if packed.type_url != type_url:
        raise ConfigRejected(f"resource {name_hint!r}: type {packed.type_url!r} in a {type_url} response")
    message = _MESSAGE_TYPES[type_url]()
    try:
        message.ParseFromString(packed.value)
        if type_url == LISTENER:
            references = route_names(message)
        elif type_url == CLUSTER:
            references = endpoint_names(message)
        else:
            references = set()
    except DecodeError as e:
        raise ConfigRejected(f"resource {name_hint!r}: cannot decode {type_url}: {e}") from e
    return Held(message, version or _version_of(packed.value), frozenset(references))


class ResourceCache:
    """What the client received, and what it should subscribe to because of it. No I/O."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, Held]] = {t: {} for t in _MESSAGE_TYPES}
        self.absent: dict[str, set[str]] = {t: set() for t in _MESSAGE_TYPES}
        self.answered: set[str] = set()  # types with at least one response

    def wanted(self) -> dict[str, frozenset[str]]:
        """Names to subscribe to, by type (``*`` for the wildcard types)."""
        return {
            CLUSTER: frozenset({WILDCARD}),
            LISTENER: frozenset({WILDCARD}),
            ENDPOINT: frozenset().union(*(h.references for h in self.held[CLUSTER].values())),
            ROUTE: frozenset().union(*(h.references for h in self.held[LISTENER].values())),
        }

    def forget(self, type_url: str, keep: Iterable[str]) -> None:
        """Drop what is no longer subscribed to (the server will not send updates for it)."""
        keep = set(keep)
        if WILDCARD in keep:
            return  # the server decides what a wildcard covers, and says what it removes
        self.held[type_url] = {n: h for n, h in self.held[type_url].items() if n in keep}
        self.absent[type_url] &= keep

    def replace(self, type_url: str, resources: dict[str, Held]) -> None:
        self.held[type_url] = resources
        self.answered.add(type_url)

    def update(self, type_url: str, resources: dict[str, Held], removed: Iterable[str]) -> None:
        held, absent = self.held[type_url], self.absent[type_url]
        for name in removed:
            held.pop(name, None)
            if type_url not in _WILDCARD_TYPES:  # only names we asked for can be awaited
                absent.add(name)
        for name, resource in resources.items():
            held[name] = resource
            absent.discard(name)
        self.answered.add(type_url)

    def missing(self) -> dict[str, set[str]]:
        """Referenced names neither received nor known not to exist."""
        wanted = self.wanted()
        return {
            t: {n for n in wanted[t] if n not in self.held[t] and n not in self.absent[t]}
            for t in (ROUTE, ENDPOINT)
        }

    def consistent(self) -> bool:
        return all(t in self.answered for t in _WILDCARD_TYPES) and not any(self.missing().values())

    def give_up_waiting(self) -> None:
        """The "does not exist" timer ran out: what is still missing counts as not existing."""
        for type_url, names in self.missing().items():
            self.absent[type_url] |= names

    def versions(self) -> dict[str, dict[str, str]]:
        return {t: {n: h.version for n, h in held.items()} for t, held in self.held.items() if held}

    def resources(self) -> Resources:
        return {t: {n: h.message for n, h in held.items()} for t, held in self.held.items() if held}


# --- the wire: one stream of either variant ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pending:
    """A response waiting for its ACK or NACK until the update it belongs to is applied or refused."""

    type_url: str
    nonce: str
    version: str


class _Link(abc.ABC):
    """One ADS stream: builds the requests of its variant and reads its responses into the cache."""

    def __init__(self, call: Any, node: Node, state: XdsClientState) -> None:
        self.call = call
        self._node: Node | None = node
        self._state = state
        self.subscribed: dict[str, frozenset[str]] = {}

    def _take_node(self) -> Node | None:
        """The Node goes on the first request of a stream only."""
        node, self._node = self._node, None
        return node

    async def subscribe(self, cache: ResourceCache) -> None:
        """Bring the stream's subscriptions in line with what the cache references."""
        wanted = cache.wanted()
        for type_url in _ROOT_ORDER:
            names = wanted[type_url]
            before = self.subscribed.get(type_url)
            if names == (before if before is not None else frozenset()):
                continue
            cache.forget(type_url, names)
            self.subscribed[type_url] = names
            await self.call.write(self._subscription(type_url, before, names, cache))

    @abc.abstractmethod
    def _subscription(
        self, type_url: str, before: frozenset[str] | None, names: frozenset[str], cache: ResourceCache
    ) -> Any: ...

    @abc.abstractmethod
    def receive(self, response: Any, cache: ResourceCache) -> _Pending:
        """Take a response into the cache; ConfigRejected (cache untouched) if it is malformed."""

    @abc.abstractmethod
    def pending_of(self, response: Any) -> _Pending: ...

    @abc.abstractmethod
    async def answer(self, pending: _Pending, error: str | None) -> None:
        """ACK (error None) or NACK one response."""


def _decoded(type_url: str, items: Iterable[tuple[str | None, Any, str]]) -> dict[str, Held]:
    """Decode (name or None, Any, version or "") triples; None names come from the message."""
    if type_url not in _MESSAGE_TYPES:
        raise ConfigRejected(f"type_url: {type_url!r} was not subscribed to")
    out: dict[str, Held] = {}
    for i, (given, packed, version) in enumerate(items):
        held = held_resource(type_url, packed, version, given or f"#{i}")
        name = given or (held.message.cluster_name if type_url == ENDPOINT else held.message.name)
        if name in out:
            raise ConfigRejected(f"resources: {name!r} twice in one response")
        out[name] = held
    return out


class _DeltaLink(_Link):
    def _subscription(
        self, type_url: str, before: frozenset[str] | None, names: frozenset[str], cache: ResourceCache
    ) -> Any:
        old = before or frozenset()
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=sorted(names - old),
            resource_names_unsubscribe=sorted(old - names),
        )
        if before is None:
            # A new stream: say what we hold, so that the server sends only what changed.
            for name, held in cache.held[type_url].items():
                request.initial_resource_versions[name] = held.version
        node = self._take_node()
        if node is not None:
            request.node.CopyFrom(node)
        return request

    def pending_of(self, response: Any) -> _Pending:
        return _Pending(response.type_url, response.nonce, response.system_version_info)

    def receive(self, response: Any, cache: ResourceCache) -> _Pending:
        resources = _decoded(response.type_url, ((r.name, r.resource, r.version) for r in response.resources))
        cache.update(response.type_url, resources, response.removed_resources)
        return self.pending_of(response)

    async def answer(self, pending: _Pending, error: str | None) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=pending.type_url, response_nonce=pending.nonce)
        if error is not None:
            _set_error(request, error)
        await self.call.write(request)


class _SotwLink(_Link):
    def __init__(self, call: Any, node: Node, state: XdsClientState) -> None:
        super().__init__(call, node, state)
        self._nonces: dict[str, str] = {}  # type URL -> the last nonce received on this stream

    def _request(self, type_url: str, version: str, nonce: str) -> Any:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            resource_names=sorted(self.subscribed.get(type_url, ())),
        )
        node = self._take_node()
        if node is not None:
            request.node.CopyFrom(node)
        return request

    def _subscription(
        self, type_url: str, before: frozenset[str] | None, names: frozenset[str], cache: ResourceCache
    ) -> Any:
        # version_info says what we run, so that the server does not take this request for an ACK
        # of a response we have not applied yet.
        version = self._state.acked_versions.get(type_url, "")
        return self._request(type_url, version, self._nonces.get(type_url, ""))

    def pending_of(self, response: Any) -> _Pending:
        return _Pending(response.type_url, response.nonce, response.version_info)

    def receive(self, response: Any, cache: ResourceCache) -> _Pending:
        type_url = response.type_url
        self._nonces[type_url] = response.nonce
        resources = _decoded(type_url, ((None, r, "") for r in response.resources))
        if type_url in _WILDCARD_TYPES:
            cache.replace(type_url, resources)  # the whole set: what is not here was removed
        else:
            wanted = self.subscribed.get(type_url, frozenset())
            cache.update(type_url, {n: r for n, r in resources.items() if n in wanted}, ())
        return self.pending_of(response)

    async def answer(self, pending: _Pending, error: str | None) -> None:
        if pending.nonce != self._nonces.get(pending.type_url):
            return  # a newer response of this type came; the server only listens to its nonce
        if error is None:
            request = self._request(pending.type_url, pending.version, pending.nonce)
        else:
            version = self._state.acked_versions.get(pending.type_url, "")
            request = self._request(pending.type_url, version, pending.nonce)
            _set_error(request, error)
        await self.call.write(request)


# --- the client -------------------------------------------------------------------------------------


class _Ended(Exception):
    """The server closed the stream."""


def backoff_delay(attempt: int, rng: random.Random, start: float = 0.1, cap: float = 5.0) -> float:
    """Exponential from ``start`` to ``cap``, jittered over the upper half so that proxies restarted
    together do not reconnect together, and no retry comes sooner than half the nominal delay."""
    nominal = min(cap, start * 2.0**attempt)
    return nominal / 2 + rng.random() * nominal / 2


class XdsClient:
    """``await run()`` (or ``start()`` ... ``stop()``) keeps one ADS stream to ``server`` (host:port)."""

    def __init__(
        self,
        server: str,
        node: Node,
        apply: Apply,
        *,
        delta: bool = True,
        consistency_timeout: float = 1.0,
        backoff_start: float = 0.1,
        backoff_cap: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if not node.id:
            raise ValueError("node.id: required")
        self._server = server
        self._node = node
        self._apply = apply
        self._variant: Variant = "delta" if delta else "sotw"
        self._consistency_timeout = consistency_timeout
        self._backoff = (backoff_start, backoff_cap)
        self._rng = rng or random.Random()
        self._cache = ResourceCache()
        self._pending: list[_Pending] = []
        self._deadline: float | None = None
        self._refused: tuple[dict[str, dict[str, str]], str] | None = None  # versions, message
        self._task: asyncio.Task[None] | None = None
        self.state = XdsClientState(server=server, variant=self._variant)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"xds-client {self._server}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state.connected = False

    async def run(self) -> None:
        """Connect, and reconnect after every failure, until cancelled (``start``/``stop`` wrap this
        in a task for callers that do not own one)."""
        attempt = 0
        while True:
            connects = self.state.connects
            try:
                await self._session()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, _Ended) as e:
                log.info("xds: stream to %s ended: %s", self._server, _describe(e))
            except Exception:
                # A bug here must not leave the proxy without a control plane for good.
                log.exception("xds: stream to %s failed", self._server)
            finally:
                self.state.connected = False
                self._pending.clear()  # their nonces meant something only on that stream
                self._deadline = None
            attempt = 0 if self.state.connects > connects else attempt + 1
            start, cap = self._backoff
            await asyncio.sleep(backoff_delay(attempt, self._rng, start, cap))

    async def _session(self) -> NoReturn:
        """One stream, until it fails (an exception says how)."""
        async with grpc.aio.insecure_channel(self._server, options=_CHANNEL_OPTIONS) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            link: _Link
            if self._variant == "delta":
                link = _DeltaLink(stub.DeltaAggregatedResources(), self._node, self.state)
            else:
                link = _SotwLink(stub.StreamAggregatedResources(), self._node, self.state)
            call = link.call
            responses: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUED_RESPONSES)
            reader = asyncio.create_task(self._pump(call, responses), name=f"xds-client-read {self._server}")
            try:
                await link.subscribe(self._cache)
                # Our server sends the headers as the stream starts; another may wait for its first
                # response. A stream that failed to start is done by then.
                await call.initial_metadata()
                if call.done():
                    raise _Ended(_describe_call(await call.code(), await call.details()))
                self.state.connected = True
                self.state.connects += 1
                log.info("xds: connected to %s (%s)", self._server, self._variant)
                while True:
                    response = await self._next(responses)
                    if response is not None:
                        await self._received(link, response)
                    else:
                        self._cache.give_up_waiting()
                    await link.subscribe(self._cache)
                    await self._settle(link)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                call.cancel()

    @staticmethod
    async def _pump(call: Any, responses: asyncio.Queue[Any]) -> None:
        """Move responses (then how the stream ended) into the queue; its bound is backpressure."""
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    await responses.put(_Ended("the server closed the stream"))
                    return
                await responses.put(response)
        except grpc.aio.AioRpcError as e:
            await responses.put(e)

    async def _next(self, responses: asyncio.Queue[Any]) -> Any:
        """The next response, or None when the consistency deadline passes first."""
        timeout = None
        if self._deadline is not None:
            timeout = max(0.0, self._deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(timeout):
                item = await responses.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def _received(self, link: _Link, response: Any) -> None:
        try:
            pending = link.receive(response, self._cache)
        except ConfigRejected as e:
            # Malformed: refuse this response alone, without touching what we hold.
            await self._answer(link, [link.pending_of(response)], e.message)
            return
        self._pending.append(pending)

    async def _settle(self, link: _Link) -> None:
        """Apply what we hold once it is consistent (or the wait is over), then ACK or NACK.

        Also runs with nothing to answer: after a reconnect, a set received on the previous stream but
        not applied yet (it was waiting for consistency) is applied without waiting for news.
        """
        versions = self._cache.versions()
        if self.state.applied_at is not None and versions == self.state.applied_versions:
            self._deadline = None
            await self._answer(link, self._take_pending(), None)  # nothing new to run
            return
        if self._refused is not None and versions == self._refused[0]:
            self._deadline = None
            await self._answer(link, self._take_pending(), self._refused[1])  # the same set again
            return
        loop = asyncio.get_running_loop()
        if not self._cache.consistent() and (self._deadline is None or loop.time() < self._deadline):
            if self._deadline is None:
                self._deadline = loop.time() + self._consistency_timeout
            return
        self._deadline = None
        pending = self._take_pending()
        resources = self._cache.resources()
        try:
            result = self._apply(resources)
            if inspect.isawaitable(result):
                await result
        except ConfigRejected as e:
            self._refused = (versions, e.message)
            await self._answer(link, pending, e.message)
            return
        except Exception as e:
            log.exception("xds: applying configuration failed")
            message = f"internal error applying configuration: {e!r}"
            self._refused = (versions, message)
            await self._answer(link, pending, message)
            return
        self._refused = None
        self.state.applied = resources
        self.state.applied_versions = versions
        self.state.applied_at = time.time()
        self.state.updates_applied += 1
        await self._answer(link, pending, None)

    def _take_pending(self) -> list[_Pending]:
        pending, self._pending = self._pending, []
        return pending

    async def _answer(self, link: _Link, pending: list[_Pending], error: str | None) -> None:
        for p in pending:
            await link.answer(p, error)
            if error is None:
                self.state.acked_versions[p.type_url] = p.version
            else:
                self.state.last_nack = NackInfo(p.type_url, p.version, error, time.time())
        if error is not None:
            log.warning(
                "xds: rejected %s from %s: %s",
                ", ".join(sorted({p.type_url.rsplit(".", 1)[-1] for p in pending})),
                self._server,
                error,
            )


def _set_error(request: Any, message: str) -> None:
    request.error_detail.code = _INVALID_ARGUMENT
    request.error_detail.message = message


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return _describe_call(e.code(), e.details())
    return str(e)


def _describe_call(code: grpc.StatusCode, details: str | None) -> str:
    return f"{code.name}: {details}" if details else code.name
