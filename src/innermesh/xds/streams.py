"""The xDS protocol state of one ADS stream, without I/O: requests in, responses out.

Two machines, one per variant of the protocol (Envoy's "xDS REST and gRPC protocol" document):

- ``SotwStream`` (StreamAggregatedResources, state of the world). Per type URL: the subscription
  (named resources, ``*``, or the legacy wildcard of a first LDS/CDS request without names), the
  version and nonce of the last response, and the version the client last ACKed. A request carrying
  a nonce other than the last one sent for its type is stale: it ACKs or NACKs nothing (the client
  has not seen the newest response yet and will answer that one), but its subscription counts, as it
  does in delta. A request supersedes every earlier one of its type, so its names are the client's
  latest wish; ignoring them could leave the client waiting for names the server never heard of
  (envoyproxy/envoy#10363). A response is due when the selected resources hash to another version
  than the one last sent, or when the client changed its subscription (it must then be answered even
  if nothing changed, so that a client asking for a name that does not exist sees a response without
  it and can conclude so).
- ``DeltaStream`` (DeltaAggregatedResources, incremental). Per type URL: the subscription and what
  the server believes the client holds (name -> version: what was sent, or what the client declared
  in ``initial_resource_versions`` on reconnect). A response carries the resources whose version
  differs from what the client holds and, in ``removed_resources``, the names the client holds that
  no longer exist and the names it subscribed to that do not exist. Subscription changes are honoured
  whatever their nonce; the nonce only pairs an ACK or NACK with its response.

What was sent counts as held whether the client ACKs or NACKs it: a rejected configuration is not
sent again until the configuration changes (the client keeps its last good one meanwhile).

Both machines refuse what would let one client grow the server's state without bound: a type URL
other than the five the server serves, and more than ``MAX_NAMES_PER_TYPE`` names of one type.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET
from innermesh.xds.versions import EncodedResource, EncodedResources, set_version

WILDCARD = "*"

# What a stream may ask for. Any other type is refused rather than answered with an empty response:
# each type costs state on the stream, and a client that names types at will would grow it at will.
SERVED_TYPES = frozenset({LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET})

# Names one stream may subscribe to per type. A sidecar names the routes and endpoint sets of its
# scope, a proxyless client the services it calls: thousands in a large mesh, not tens of thousands.
MAX_NAMES_PER_TYPE = 10_000

# Only these types have the legacy wildcard (a first request that names nothing means "*").
LEGACY_WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

# Delta responses not yet ACKed or NACKed that a stream remembers; a client that never answers
# cannot make the server hold more than this many per stream.
MAX_PENDING_DELTA_RESPONSES = 64


class ProtocolError(ValueError):
    """A request that breaks the protocol (the server ends the stream with INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class Ack:
    type_url: str
    version: str


@dataclass(frozen=True, slots=True)
class Nack:
    type_url: str
    version: str  # the version the client rejected
    resource_names: tuple[str, ...]  # what the rejected response carried (delta: also removals)
    message: str


@dataclass(frozen=True, slots=True)
class Received:
    """What one request meant: an ACK or NACK (or neither), and whether it was ignored as stale."""

    outcome: Ack | Nack | None = None
    stale: bool = False


@dataclass(slots=True)
class Subscription:
    """The resources of one type a stream asked for: ``*`` (everything the server has for this proxy)
    and/or named resources."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)

    def select(self, available: Mapping[str, EncodedResource]) -> dict[str, EncodedResource]:
        if self.wildcard:
            return dict(available)
        return {n: available[n] for n in self.names if n in available}

    def describe(self) -> tuple[str, ...]:
        return ((WILDCARD,) if self.wildcard else ()) + tuple(sorted(self.names))


def push_order(type_urls: Collection[str]) -> list[str]:
    """The types in the order a change is sent: PUSH_ORDER first, then any others by name."""
    known = [t for t in PUSH_ORDER if t in type_urls]
    return known + sorted(t for t in type_urls if t not in PUSH_ORDER)


def _packed(type_url: str, resource: EncodedResource) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=resource.body)


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """One type on one stream, for the admin view."""

    subscription: tuple[str, ...]
    sent_version: str
    acked_version: str


def checked_type(type_url: str) -> str:
    """``type_url`` if this server serves it; ProtocolError otherwise."""
    if not type_url:
        raise ProtocolError("type_url: required on an aggregated stream")
    if type_url not in SERVED_TYPES:
        shown = type_url if len(type_url) <= 200 else type_url[:200] + "..."
        raise ProtocolError(
            f"type_url: {shown!r} is not served (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment and Secret are)"
        )
    return type_url


def check_name_count(count: int) -> None:
    if count > MAX_NAMES_PER_TYPE:
        raise ProtocolError(
            f"resource_names: {count} names, at most {MAX_NAMES_PER_TYPE} may be subscribed per type"
        )


@dataclass(slots=True)
class _TypeState:
    """What both variants keep per type URL."""

    subscription: Subscription = field(default_factory=Subscription)
    sent_version: str = ""
    acked_version: str = ""


class _Stream:
    """What both machines share: their types, and what the server and the admin view read of them."""

    _types: Mapping[str, _TypeState]

    def listener_names(self) -> frozenset[str] | None:
        """The LDS names to generate for: None for a wildcard (or not yet asked) subscription."""
        lds = self._types.get(LISTENER)
        if lds is None or lds.subscription.wildcard:
            return None
        return frozenset(lds.subscription.names)

    def status(self) -> dict[str, TypeStatus]:
        return {
            t: TypeStatus(s.subscription.describe(), s.sent_version, s.acked_version)
            for t, s in self._types.items()
        }


# --- state of the world -----------------------------------------------------------------------------


@dataclass(slots=True)
class _SotwType(_TypeState):
    named_ever: bool = False  # once a request named something, an empty list means "nothing"
    must_respond: bool = True
    nonce: str = ""
    sent_names: tuple[str, ...] = ()


class SotwStream(_Stream):
    def __init__(self) -> None:
        self._types: dict[str, _SotwType] = {}
        self._nonces = 0

    def receive(self, request: discovery_pb2.DiscoveryRequest) -> Received:
        type_url = checked_type(request.type_url)
        check_name_count(len(request.resource_names))
        state = self._types.get(type_url)
        if state is None:
            state = self._types[type_url] = _SotwType()
        outcome: Ack | Nack | None = None
        # A nonce for a type this stream has not answered yet cannot be stale: it is a leftover of an
        # earlier stream, and ignoring it would leave the client waiting forever.
        if request.response_nonce and state.nonce:
            if request.response_nonce != state.nonce:
                # A newer response is on its way to the client, which will ACK or NACK that one.
                self._subscribe(type_url, state, list(request.resource_names))
                return Received(stale=True)
            if request.HasField("error_detail"):
                outcome = Nack(type_url, state.sent_version, state.sent_names, request.error_detail.message)
            else:
                # version_info is what the client now runs, which is the response's version unless the
                # client sent this to change its subscription before it could apply that response.
                state.acked_version = request.version_info
                outcome = Ack(type_url, request.version_info)
        self._subscribe(type_url, state, list(request.resource_names))
        return Received(outcome)

    def _subscribe(self, type_url: str, state: _SotwType, names: list[str]) -> None:
        sub = state.subscription
        before = (sub.wildcard, frozenset(sub.names))
        if names:
            state.named_ever = True
        if not state.named_ever and type_url in LEGACY_WILDCARD_TYPES:
            sub.wildcard = True
        else:
            sub.wildcard = WILDCARD in names
        sub.names = {n for n in names if n != WILDCARD}
        if (sub.wildcard, frozenset(sub.names)) != before:
            state.must_respond = True

    def responses(self, snapshot: EncodedResources) -> list[discovery_pb2.DiscoveryResponse]:
        out = []
        for type_url in push_order(self._types):
            state = self._types[type_url]
            selected = state.subscription.select(snapshot.get(type_url, {}))
            version = set_version({n: r.version for n, r in selected.items()})
            if not state.must_respond and version == state.sent_version:
                continue
            self._nonces += 1
            state.nonce = str(self._nonces)
            state.sent_version = version
            state.sent_names = tuple(sorted(selected))
            state.must_respond = False
            out.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=version,
                    type_url=type_url,
                    nonce=state.nonce,
                    resources=[_packed(type_url, selected[n]) for n in state.sent_names],
                )
            )
        return out


# --- incremental -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _DeltaType(_TypeState):
    held: dict[str, str] = field(default_factory=dict)  # what the client holds: name -> version
    must_answer: set[str] = field(default_factory=set)  # names the next response must mention


@dataclass(frozen=True, slots=True)
class _SentDelta:
    type_url: str
    version: str
    names: tuple[str, ...]


class DeltaStream(_Stream):
    def __init__(self) -> None:
        self._types: dict[str, _DeltaType] = {}
        self._pending: OrderedDict[str, _SentDelta] = OrderedDict()
        self._nonces = 0

    def receive(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Received:
        type_url = checked_type(request.type_url)
        subscribe = list(request.resource_names_subscribe)
        unsubscribe = list(request.resource_names_unsubscribe)
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = _DeltaType()
        check_name_count(len(state.subscription.names | set(subscribe)))
        check_name_count(len(request.initial_resource_versions))
        outcome: Ack | Nack | None = None
        stale = False
        if request.response_nonce:
            sent = self._pending.pop(request.response_nonce, None)
            if sent is None or sent.type_url != type_url:
                stale = True
            elif request.HasField("error_detail"):
                outcome = Nack(type_url, sent.version, sent.names, request.error_detail.message)
            else:
                state.acked_version = sent.version
                outcome = Ack(type_url, sent.version)
        if first:
            initial = dict(request.initial_resource_versions)
            state.held.update(initial)
            if not subscribe and not unsubscribe and type_url in LEGACY_WILDCARD_TYPES:
                state.subscription.wildcard = True
        else:
            initial = {}
        self._subscribe(state, subscribe, initial)
        self._unsubscribe(state, unsubscribe)
        return Received(outcome, stale)

    @staticmethod
    def _subscribe(state: _DeltaType, names: list[str], initial: Mapping[str, str]) -> None:
        for name in names:
            if name == WILDCARD:
                state.subscription.wildcard = True
                continue
            state.subscription.names.add(name)
            # A name the client re-subscribes to must be sent again even if the server thinks the
            # client holds it (the client may have dropped it), except what it just declared holding.
            if name not in initial:
                state.must_answer.add(name)

    @staticmethod
    def _unsubscribe(state: _DeltaType, names: list[str]) -> None:
        sub = state.subscription
        for name in names:
            if name == WILDCARD:
                sub.wildcard = False
                # The client drops what it held only through the wildcard; nothing needs saying.
                state.held = {n: v for n, v in state.held.items() if n in sub.names}
                continue
            sub.names.discard(name)
            if sub.wildcard:
                # The client cannot tell whether the wildcard still covers this name: say it, as a
                # resource (covered) or a removal (not covered).
                state.must_answer.add(name)
            else:
                state.held.pop(name, None)
                state.must_answer.discard(name)

    def responses(self, snapshot: EncodedResources) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        out = []
        for type_url in push_order(self._types):
            state = self._types[type_url]
            wanted = state.subscription.select(snapshot.get(type_url, {}))
            updated = sorted(
                n for n, r in wanted.items() if state.held.get(n) != r.version or n in state.must_answer
            )
            removed = sorted(
                {n for n in state.held if n not in wanted} | {n for n in state.must_answer if n not in wanted}
            )
            state.must_answer.clear()
            if not updated and not removed:
                continue
            for n in updated:
                state.held[n] = wanted[n].version
            for n in removed:
                state.held.pop(n, None)
            version = set_version(state.held)
            state.sent_version = version
            self._nonces += 1
            nonce = str(self._nonces)
            self._pending[nonce] = _SentDelta(type_url, version, tuple(updated) + tuple(removed))
            while len(self._pending) > MAX_PENDING_DELTA_RESPONSES:
                self._pending.popitem(last=False)
            out.append(
                discovery_pb2.DeltaDiscoveryResponse(
                    system_version_info=version,
                    type_url=type_url,
                    nonce=nonce,
                    resources=[
                        discovery_pb2.Resource(
                            name=n, version=wanted[n].version, resource=_packed(type_url, wanted[n])
                        )
                        for n in updated
                    ],
                    removed_resources=removed,
                )
            )
        return out
