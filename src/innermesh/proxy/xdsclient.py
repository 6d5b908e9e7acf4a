"""The sidecar's xDS client: one ADS stream to the control plane, kept open forever.

The client subscribes to every Listener and Cluster (wildcard), then to the RouteConfigurations its
listeners name (HCM ``rds.route_config_name``) and the ClusterLoadAssignments its EDS clusters name
(``eds_cluster_config.service_name``, or the cluster's name).

What it runs is the *applied* set: the last set of resources ``apply`` accepted. Each response is a
change to that set (SotW LDS and CDS: the type's whole set; otherwise resources added or replaced,
and, in delta, names removed), and each response is accepted or rejected on its own, as Envoy does:

- Responses are taken in until the applied set with every change received so far is consistent:
  every referenced route and endpoint assignment has arrived or is known not to exist (delta
  ``removed_resources``, or no answer within ``consistency_timeout``, the client side of xDS's "does
  not exist" timer). Waiting avoids compiling a plan with a cluster but no endpoints, which would
  answer 503 for the moment in between.
- That candidate goes to ``apply``, which accepts it or raises ``ConfigRejected``. Accepted: every
  response it was made of is ACKed and it becomes the applied set. Refused, with responses of one
  type: those are NACKed with the message. Refused, with several types: each type is tried on its own
  over the applied set, in make-before-break order (clusters, endpoints, listeners, routes), with
  what it needs to be consistent (the endpoints of the clusters it adds, the routes of the listeners
  it adds), and ACKed or NACKed by its own outcome.

So a rejected resource holds back nothing but itself: a RouteConfiguration the proxy refuses, or a
listener it cannot bind, stays out while later endpoint updates apply. The rejected resource is not
retried until the server sends it again changed (delta) or sends its type again (SotW: a response is
the unit of ACK and NACK, so one that still carries the refused resource is refused whole).
Routes and endpoint assignments nothing references any more are dropped (SotW has no other way of
saying they are gone). ``state.applied`` holds the applied set for /config_dump.

Delta (incremental) ADS is the default; state of the world is an option. The stream reconnects after
any failure with jittered exponential backoff, and re-subscribes (delta: declaring the versions it
runs, so that an unchanged configuration is not sent again). Responses not yet answered when a stream
ends are dropped: their nonces meant something only on that stream, and the server sends again what
the client does not run.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
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
from innermesh.xds.versions import content_version

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
_REFERENCED_BY = {ENDPOINT: CLUSTER, ROUTE: LISTENER}  # a type fetched by name -> the type naming it
_NEEDS = {CLUSTER: ENDPOINT, LISTENER: ROUTE}
_ROOT_ORDER = (CLUSTER, LISTENER, ENDPOINT, ROUTE)  # the order of the first requests, as Envoy does
_BLAME_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)  # make before break: what is named, then the namer

_INVALID_ARGUMENT = 3  # google.rpc.Code, in a NACK's error_detail
_MAX_MESSAGE = 64 * 1024 * 1024  # a large mesh's configuration still fits; a runaway one does not
_QUEUED_RESPONSES = 8
_REFUSALS_REMEMBERED = 4  # refused sets NACKed again without another apply, within one stream
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


@dataclass(frozen=True, slots=True)
class Held:
    """A received resource, its version, and the names it makes the client fetch (computed once)."""

    message: Message
    version: str
    references: frozenset[str] = frozenset()


def held_resource(type_url: str, packed: Any, version: str = "", name_hint: str = "") -> Held:
    """Decode one resource of a ``type_url`` response (ConfigRejected if it is not one). Without a
    version from the server (SotW), the version is the server's own: the hash of the resource's bytes."""
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
    return Held(message, version or content_version(packed.value), frozenset(references))


# --- sets of resources and the changes responses make to them (pure) ---------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """What one response does to one type: add or replace ``resources``, drop the ``removed`` names;
    ``whole``: the response is the type's entire set (SotW LDS and CDS), so what it lacks goes."""

    type_url: str
    resources: Mapping[str, Held]
    removed: frozenset[str] = frozenset()
    whole: bool = False

    def only(self, names: Collection[str]) -> Change:
        """The part of this change about ``names`` (never ``whole``: the rest of the type stays)."""
        kept = {n: h for n, h in self.resources.items() if n in names}
        return Change(self.type_url, kept, frozenset(n for n in self.removed if n in names))


class ResourceSet:
    """Resources by type and name, as one proxy holds them. Immutable: ``updated`` makes a new set.

    Routes and endpoint assignments that no listener or cluster of the set names are not kept.
    """

    __slots__ = ("_held",)

    def __init__(self, held: Mapping[str, Mapping[str, Held]] | None = None) -> None:
        given = held or {}
        self._held: dict[str, Mapping[str, Held]] = {t: dict(given.get(t, {})) for t in _MESSAGE_TYPES}

    def held(self, type_url: str) -> Mapping[str, Held]:
        return self._held[type_url]

    def referenced(self, type_url: str) -> frozenset[str]:
        """The names of ``type_url`` (routes or endpoint assignments) that the set's listeners or
        clusters fetch."""
        return frozenset().union(*(h.references for h in self._held[_REFERENCED_BY[type_url]].values()))

    def updated(self, changes: Iterable[Change]) -> ResourceSet:
        """This set with ``changes`` applied in order, without what nothing references any more."""
        held = dict(self._held)
        for change in changes:
            by_name = {} if change.whole else dict(held[change.type_url])
            for name in change.removed:
                by_name.pop(name, None)
            by_name.update(change.resources)
            held[change.type_url] = by_name
        out = ResourceSet()
        out._held = held
        for type_url in _REFERENCED_BY:
            wanted = out.referenced(type_url)
            if any(n not in wanted for n in held[type_url]):
                held[type_url] = {n: h for n, h in held[type_url].items() if n in wanted}
        return out

    def missing(self, absent: Mapping[str, Collection[str]]) -> dict[str, set[str]]:
        """Referenced names neither held nor known not to exist."""
        return {
            t: {n for n in self.referenced(t) if n not in self._held[t] and n not in absent.get(t, ())}
            for t in _REFERENCED_BY
        }

    def versions(self) -> dict[str, dict[str, str]]:
        return {t: {n: h.version for n, h in held.items()} for t, held in self._held.items() if held}

    def resources(self) -> Resources:
        return {t: {n: h.message for n, h in held.items()} for t, held in self._held.items() if held}


# --- the wire: one stream of either variant ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pending:
    """A response waiting for its ACK or NACK."""

    type_url: str
    nonce: str
    version: str


@dataclass(frozen=True, slots=True)
class _Received:
    pending: _Pending
    change: Change


class Link(abc.ABC):
    """One ADS stream: builds the requests of its variant and decodes its responses into changes."""

    def __init__(self, call: Any, node: Node, state: XdsClientState) -> None:
        self.call = call
        self._node: Node | None = node
        self._state = state
        self.subscribed: dict[str, frozenset[str]] = {}

    def _take_node(self) -> Node | None:
        """The Node goes on the first request of a stream only."""
        node, self._node = self._node, None
        return node

    async def subscribe(self, wanted: Mapping[str, frozenset[str]], running: ResourceSet) -> None:
        """Bring the stream's subscriptions in line with ``wanted``."""
        for type_url in _ROOT_ORDER:
            names = wanted[type_url]
            before = self.subscribed.get(type_url)
            if names == (before if before is not None else frozenset()):
                continue
            self.subscribed[type_url] = names
            await self.call.write(self._subscription(type_url, before, names, running))

    @abc.abstractmethod
    def _subscription(
        self, type_url: str, before: frozenset[str] | None, names: frozenset[str], running: ResourceSet
    ) -> Any: ...

    @abc.abstractmethod
    def receive(self, response: Any) -> _Received:
        """Decode a response into the change it makes; ConfigRejected if it is malformed."""

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


class DeltaLink(Link):
    def _subscription(
        self, type_url: str, before: frozenset[str] | None, names: frozenset[str], running: ResourceSet
    ) -> Any:
        old = before or frozenset()
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=sorted(names - old),
            resource_names_unsubscribe=sorted(old - names),
        )
        if before is None:
            # A new stream: say what we run, so that the server sends only what differs (a resource
            # refused on the previous stream is sent again, and refused again, as it should be).
            for name, held in running.held(type_url).items():
                request.initial_resource_versions[name] = held.version
        node = self._take_node()
        if node is not None:
            request.node.CopyFrom(node)
        return request

    def pending_of(self, response: Any) -> _Pending:
        return _Pending(response.type_url, response.nonce, response.system_version_info)

    def receive(self, response: Any) -> _Received:
        type_url = response.type_url
        resources = _decoded(type_url, ((r.name, r.resource, r.version) for r in response.resources))
        change = Change(type_url, resources, frozenset(response.removed_resources))
        return _Received(self.pending_of(response), change)

    async def answer(self, pending: _Pending, error: str | None) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=pending.type_url, response_nonce=pending.nonce)
        if error is not None:
            _set_error(request, error)
        await self.call.write(request)


class SotwLink(Link):
    """State of the world. Every request carries the type's newest nonce, and the server pairs a
    request with the response of that nonce. A subscription change sent just before a response of
    its type arrived carries an older nonce; a server that ignores stale requests (the protocol
    document allows it) would never see the change, so it is sent again with the newer nonce."""

    def __init__(self, call: Any, node: Node, state: XdsClientState) -> None:
        super().__init__(call, node, state)
        self._nonces: dict[str, str] = {}  # type URL -> the last nonce received on this stream
        # type URL -> the nonce of the last subscription change, until a request with a newer one
        self._unconfirmed: dict[str, str] = {}

    def _request(self, type_url: str, version: str, nonce: str) -> Any:
        if self._unconfirmed.get(type_url) != nonce:
            self._unconfirmed.pop(type_url, None)  # this request carries the names with a newer nonce
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

    async def subscribe(self, wanted: Mapping[str, frozenset[str]], running: ResourceSet) -> None:
        await super().subscribe(wanted, running)
        for type_url, nonce in list(self._unconfirmed.items()):
            if self._nonces.get(type_url, "") != nonce:
                await self.call.write(self._current(type_url))

    def _current(self, type_url: str) -> Any:
        # version_info says what we run, so that the server does not take this request for an ACK
        # of a response we have not applied yet.
        return self._request(
            type_url, self._state.acked_versions.get(type_url, ""), self._nonces.get(type_url, "")
        )

    def _subscription(
        self, type_url: str, before: frozenset[str] | None, names: frozenset[str], running: ResourceSet
    ) -> Any:
        request = self._current(type_url)
        if request.response_nonce:  # without a nonce, a request is never stale
            self._unconfirmed[type_url] = request.response_nonce
        return request

    def pending_of(self, response: Any) -> _Pending:
        return _Pending(response.type_url, response.nonce, response.version_info)

    def receive(self, response: Any) -> _Received:
        type_url = response.type_url
        self._nonces[type_url] = response.nonce
        resources = _decoded(type_url, ((None, r, "") for r in response.resources))
        if type_url in _WILDCARD_TYPES:
            change = Change(type_url, resources, whole=True)  # what is not here was removed
        else:
            # Only what we asked for; a name left out says nothing about its existence.
            wanted = self.subscribed.get(type_url, frozenset())
            change = Change(type_url, {n: r for n, r in resources.items() if n in wanted})
        return _Received(self.pending_of(response), change)

    async def answer(self, pending: _Pending, error: str | None) -> None:
        if pending.nonce != self._nonces.get(pending.type_url):
            return  # a newer response of this type came; the server only listens to its nonce
        if error is None:
            request = self._request(pending.type_url, pending.version, pending.nonce)
        else:
            request = self._current(pending.type_url)
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
        self._applied = ResourceSet()
        self._received: list[_Received] = []  # responses taken in, not answered yet
        self._answered: set[str] = set()  # wildcard types with at least one response
        self._absent: dict[str, set[str]] = {t: set() for t in _REFERENCED_BY}  # known not to exist
        self._deadline: float | None = None
        # Sets ``apply`` refused on this stream, with its message: the same set again is refused
        # without compiling it again. Forgotten on reconnect, where a listener may bind after all.
        self._refused: deque[tuple[dict[str, dict[str, str]], str]] = deque(maxlen=_REFUSALS_REMEMBERED)
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
                self._received.clear()  # their nonces meant something only on that stream
                self._deadline = None
                self._refused.clear()
            attempt = 0 if self.state.connects > connects else attempt + 1
            start, cap = self._backoff
            await asyncio.sleep(backoff_delay(attempt, self._rng, start, cap))

    async def _session(self) -> NoReturn:
        """One stream, until it fails (an exception says how)."""
        async with grpc.aio.insecure_channel(self._server, options=_CHANNEL_OPTIONS) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            link: Link
            if self._variant == "delta":
                link = DeltaLink(stub.DeltaAggregatedResources(), self._node, self.state)
            else:
                link = SotwLink(stub.StreamAggregatedResources(), self._node, self.state)
            call = link.call
            responses: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUED_RESPONSES)
            reader = asyncio.create_task(self._pump(call, responses), name=f"xds-client-read {self._server}")
            try:
                await link.subscribe(self._wanted(), self._applied)
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
                        await self._take(link, response)
                    else:
                        self._give_up_waiting()
                    await link.subscribe(self._wanted(), self._applied)
                    await self._settle(link)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                call.cancel()

    @staticmethod
    async def _pump(call: Any, responses: asyncio.Queue[Any]) -> None:
        """Move responses (then how the stream ended) into the queue; its bound is backpressure.
        Whatever ends the reading ends the stream, and the client reconnects."""
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    await responses.put(_Ended("the server closed the stream"))
                    return
                if response is None:
                    # grpc's answer to bytes that do not decode (it logs the DecodeError). Without its
                    # type and nonce the response cannot be NACKed; a new stream starts clean.
                    await responses.put(_Ended("a response from the server does not decode"))
                    return
                await responses.put(response)
        except Exception as e:
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

    # --- what is received, what is wanted --------------------------------------------------------------

    async def _take(self, link: Link, response: Any) -> None:
        try:
            received = link.receive(response)
        except ConfigRejected as e:
            # Malformed: refuse this response alone, without touching anything else.
            await self._answer(link, [link.pending_of(response)], e.message)
            return
        change = received.change
        if change.type_url in _WILDCARD_TYPES:
            self._answered.add(change.type_url)
        else:
            absent = self._absent[change.type_url]
            absent.difference_update(change.resources)
            absent.update(change.removed)  # delta: only names we asked for are removed
        self._received.append(received)

    def _candidate(self) -> ResourceSet:
        """What we would run with every change received so far."""
        return self._applied.updated(r.change for r in self._received)

    def _wanted(self) -> dict[str, frozenset[str]]:
        """Names to subscribe to, by type: what the candidate's listeners and clusters name. What is
        no longer wanted is no longer known to be absent either (it may exist when asked for again)."""
        candidate = self._candidate()
        wanted = {CLUSTER: frozenset({WILDCARD}), LISTENER: frozenset({WILDCARD})}
        for type_url in _REFERENCED_BY:
            wanted[type_url] = candidate.referenced(type_url)
            self._absent[type_url] &= wanted[type_url]
        return wanted

    def _give_up_waiting(self) -> None:
        """The "does not exist" timer ran out: what is still missing counts as not existing."""
        for type_url, names in self._candidate().missing(self._absent).items():
            self._absent[type_url] |= names

    # --- applying ------------------------------------------------------------------------------------

    async def _settle(self, link: Link) -> None:
        """Apply what was received once it is consistent (or the wait is over), then ACK or NACK."""
        if not self._received:
            return
        candidate = self._candidate()
        loop = asyncio.get_running_loop()
        consistent = all(t in self._answered for t in _WILDCARD_TYPES) and not any(
            candidate.missing(self._absent).values()
        )
        if not consistent and (self._deadline is None or loop.time() < self._deadline):
            if self._deadline is None:
                self._deadline = loop.time() + self._consistency_timeout
            return
        self._deadline = None
        received, self._received = self._received, []
        error = await self._try(candidate)
        if error is None or len({r.pending.type_url for r in received}) == 1:
            await self._answer(link, [r.pending for r in received], error)
            return
        await self._blame(link, received)

    async def _blame(self, link: Link, received: list[_Received]) -> None:
        """An update made of several types was refused: accept or refuse each type on its own, over
        what runs now, with what it needs to be consistent (the endpoints of the clusters it adds, the
        routes of the listeners it adds; refusing those refuses it)."""
        for type_url in _BLAME_ORDER:
            own = [r for r in received if r.pending.type_url == type_url]
            if not own:
                continue
            trial = self._applied.updated(r.change for r in own)
            needs = _NEEDS.get(type_url)
            if needs is not None:
                needed = trial.referenced(needs) - set(trial.held(needs))
                trial = trial.updated(r.change.only(needed) for r in received if r.pending.type_url == needs)
            await self._answer(link, [r.pending for r in own], await self._try(trial))

    async def _try(self, candidate: ResourceSet) -> str | None:
        """Have ``apply`` run ``candidate``: None once it runs it, else why it refused."""
        versions = candidate.versions()
        if self.state.applied_at is not None and versions == self.state.applied_versions:
            return None  # nothing new to run
        for refused, message in self._refused:
            if refused == versions:
                return message
        resources = candidate.resources()
        try:
            result = self._apply(resources)
            if inspect.isawaitable(result):
                await result
        except ConfigRejected as e:
            message = e.message
        except Exception as e:
            log.exception("xds: applying configuration failed")
            message = f"internal error applying configuration: {e!r}"
        else:
            self._applied = candidate
            self.state.applied = resources
            self.state.applied_versions = versions
            self.state.applied_at = time.time()
            self.state.updates_applied += 1
            return None
        self._refused.append((versions, message))
        return message

    async def _answer(self, link: Link, pending: list[_Pending], error: str | None) -> None:
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
