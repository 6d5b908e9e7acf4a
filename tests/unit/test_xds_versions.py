"""Content versions, the per-stream protocol machines (SotW and delta) and the debounce rule."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from innermesh.xds.debounce import Debouncer, fire_at
from innermesh.xds.streams import MAX_NAMES_PER_TYPE, Ack, DeltaStream, Nack, ProtocolError, SotwStream
from innermesh.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from innermesh.xds.versions import EncodedResources, encode, set_version


def cluster(name: str, **labels: str) -> Any:
    c = cluster_pb2.Cluster(name=name)
    for k, v in labels.items():
        c.metadata.filter_metadata["innermesh"].fields[k].string_value = v
    return c


def snapshot(type_url: str, *names: str) -> EncodedResources:
    return encode({type_url: {n: cluster(n) for n in names}})


def sent(responses: list[Any]) -> list[tuple[str, list[str]]]:
    out = []
    for r in responses:
        if isinstance(r, discovery_pb2.DeltaDiscoveryResponse):
            out.append((r.type_url, [x.name for x in r.resources]))
        else:
            decoded = []
            for x in r.resources:
                c = cluster_pb2.Cluster()
                c.ParseFromString(x.value)
                decoded.append(c.name)
            out.append((r.type_url, decoded))
    return out


# --- versions ----------------------------------------------------------------------------------------


def test_versions_do_not_depend_on_map_insertion_order() -> None:
    """Deterministic serialization: the same map built in another order has the same version."""
    one = encode({CLUSTER: {"c": cluster("c", a="1", b="2", z="3")}})
    other = encode({CLUSTER: {"c": cluster("c", z="3", b="2", a="1")}})
    assert one[CLUSTER]["c"].version == other[CLUSTER]["c"].version
    assert one[CLUSTER]["c"].version != encode({CLUSTER: {"c": cluster("c", a="2")}})[CLUSTER]["c"].version


def test_set_version_ignores_order_but_not_boundaries() -> None:
    """A set's version is order-free, and ("ab", "c") cannot collide with ("a", "bc")."""
    assert set_version({"a": "1", "b": "2"}) == set_version([("b", "2"), ("a", "1")])
    assert set_version({"ab": "c"}) != set_version({"a": "bc"})
    assert set_version({}) == set_version([])
    assert len(set_version({})) == 16


# --- state of the world ------------------------------------------------------------------------------


def sotw_request(type_url: str, names: list[str], nonce: str = "", **extra: Any) -> Any:
    return discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names, response_nonce=nonce, **extra
    )


def test_sotw_wildcard_follows_the_protocol_document_example() -> None:
    """Empty = '*' until a name is given; then the list is the subscription, and empty means nothing."""
    stream = SotwStream()
    snap = snapshot(LISTENER, "A", "B")
    stream.receive(sotw_request(LISTENER, []))
    [r] = stream.responses(snap)
    assert sent([r]) == [(LISTENER, ["A", "B"])]
    assert stream.listener_names() is None

    # A newly named resource is sent again even though the wildcard already brought it.
    stream.receive(sotw_request(LISTENER, ["*", "A"], r.nonce))
    [again] = stream.responses(snap)
    assert sent([again]) == [(LISTENER, ["A", "B"])] and again.version_info == r.version_info
    r = again
    stream.receive(sotw_request(LISTENER, ["A"], r.nonce))
    [r] = stream.responses(snap)
    assert sent([r]) == [(LISTENER, ["A"])]
    assert stream.listener_names() == frozenset({"A"})

    stream.receive(sotw_request(LISTENER, [], r.nonce))
    [r] = stream.responses(snap)
    assert sent([r]) == [(LISTENER, [])]
    assert stream.listener_names() == frozenset()


def test_sotw_subscription_change_is_answered_even_without_a_change() -> None:
    """Asking for a name that does not exist is answered, so the client can conclude it is absent."""
    stream = SotwStream()
    snap = snapshot(ROUTE, "r1")
    stream.receive(sotw_request(ROUTE, ["r1"]))
    [first] = stream.responses(snap)
    stream.receive(sotw_request(ROUTE, ["r1", "missing"], first.nonce, version_info=first.version_info))
    [second] = stream.responses(snap)
    assert sent([second]) == [(ROUTE, ["r1"])] and second.version_info == first.version_info
    assert second.nonce != first.nonce


def test_sotw_outcomes_and_push_order() -> None:
    """ACK records the client's version, NACK the version sent with the nonce; CDS goes before LDS."""
    stream = SotwStream()
    for t in (LISTENER, CLUSTER):
        stream.receive(sotw_request(t, []))
    snap = {**snapshot(LISTENER, "l"), **snapshot(CLUSTER, "c")}
    cds, lds = stream.responses(snap)
    assert (cds.type_url, lds.type_url) == (CLUSTER, LISTENER)
    ack = stream.receive(sotw_request(CLUSTER, [], cds.nonce, version_info=cds.version_info))
    assert ack.outcome == Ack(CLUSTER, cds.version_info)
    nack = stream.receive(
        sotw_request(LISTENER, [], lds.nonce, error_detail={"code": 3, "message": "bad listener"})
    )
    assert nack.outcome == Nack(LISTENER, lds.version_info, ("l",), "bad listener")
    assert stream.status()[CLUSTER].acked_version == cds.version_info
    assert stream.status()[LISTENER].acked_version == ""


def test_sotw_leftover_nonce_on_a_new_stream_is_not_stale() -> None:
    """A first request carrying a nonce from an earlier stream is served, not ignored forever."""
    stream = SotwStream()
    received = stream.receive(sotw_request(CLUSTER, [], "17"))
    assert not received.stale
    assert sent(stream.responses(snapshot(CLUSTER, "c"))) == [(CLUSTER, ["c"])]


# --- incremental -------------------------------------------------------------------------------------


def delta_request(type_url: str, sub: list[str] = [], unsub: list[str] = [], nonce: str = "") -> Any:  # noqa: B006 (never mutated)
    return discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=sub,
        resource_names_unsubscribe=unsub,
        response_nonce=nonce,
    )


def test_delta_unsubscribing_a_name_under_a_wildcard_is_answered() -> None:
    """With '*' and 'A' subscribed, unsubscribing A (or a name outside the wildcard) must be answered:
    the resource if the wildcard covers it, a removal if not."""
    stream = DeltaStream()
    snap = snapshot(CLUSTER, "A", "B")
    stream.receive(delta_request(CLUSTER))  # legacy wildcard
    stream.receive(delta_request(CLUSTER, ["A", "Z"]))
    [first] = stream.responses(snap)
    assert sent([first]) == [(CLUSTER, ["A", "B"])] and list(first.removed_resources) == ["Z"]

    stream.receive(delta_request(CLUSTER, unsub=["A", "Z"]))
    [answer] = stream.responses(snap)
    assert sent([answer]) == [(CLUSTER, ["A"])] and list(answer.removed_resources) == ["Z"]

    stream.receive(delta_request(CLUSTER, unsub=["*"]))
    assert stream.responses(snap) == []
    assert stream.status()[CLUSTER].subscription == ()


def test_delta_subscription_is_honoured_with_a_stale_nonce() -> None:
    """An unknown nonce pairs with nothing, but the subscription change in the request still counts."""
    stream = DeltaStream()
    stream.receive(delta_request(ENDPOINT, ["e1"]))
    [r] = stream.responses(snapshot(ENDPOINT, "e1", "e2"))
    received = stream.receive(delta_request(ENDPOINT, ["e2"], nonce="999"))
    assert received.stale and received.outcome is None
    assert sent(stream.responses(snapshot(ENDPOINT, "e1", "e2"))) == [(ENDPOINT, ["e2"])]
    assert stream.receive(delta_request(ENDPOINT, nonce=r.nonce)).outcome == Ack(
        ENDPOINT, r.system_version_info
    )


def test_delta_resubscribing_resends_what_the_client_holds() -> None:
    """A name subscribed again is sent again: the client may have dropped it."""
    stream = DeltaStream()
    snap = snapshot(ROUTE, "r")
    stream.receive(delta_request(ROUTE, ["r"]))
    assert sent(stream.responses(snap)) == [(ROUTE, ["r"])]
    assert stream.responses(snap) == []
    stream.receive(delta_request(ROUTE, ["r"]))
    assert sent(stream.responses(snap)) == [(ROUTE, ["r"])]


# --- debounce ----------------------------------------------------------------------------------------


def test_debounce_fires_after_quiet_but_never_later_than_the_cap() -> None:
    """Quiet 0.1 s after the last change, at most 0.5 s after the first."""
    assert fire_at(first=10.0, last=10.0, quiet=0.1, max_delay=0.5) == 10.1
    assert fire_at(first=10.0, last=10.3, quiet=0.1, max_delay=0.5) == 10.4
    assert fire_at(first=10.0, last=10.45, quiet=0.1, max_delay=0.5) == 10.5


def test_debouncer_refuses_delays_where_it_is_made() -> None:
    """A cap below the quiet period (or a negative one) fails at construction, naming both."""
    with pytest.raises(ValueError, match=r"quiet \(0.5\) <= max_delay \(0.1\)"):
        Debouncer(lambda: None, quiet=0.5, max_delay=0.1)
    with pytest.raises(ValueError, match="quiet"):
        Debouncer(lambda: None, quiet=-1, max_delay=0.1)


# --- what a stream may ask for ---------------------------------------------------------------------


def test_both_machines_refuse_types_they_do_not_serve_and_too_many_names() -> None:
    """Type URLs other than the five, and more than MAX_NAMES_PER_TYPE names, are protocol errors."""
    other = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
    too_many = [f"n{i}" for i in range(MAX_NAMES_PER_TYPE + 1)]
    with pytest.raises(ProtocolError, match=r"type_url: .*Runtime' is not served"):
        SotwStream().receive(sotw_request(other, []))
    with pytest.raises(ProtocolError, match=r"type_url: .*Runtime' is not served"):
        DeltaStream().receive(delta_request(other))
    with pytest.raises(ProtocolError, match=f"resource_names: {MAX_NAMES_PER_TYPE + 1} names"):
        SotwStream().receive(sotw_request(ENDPOINT, too_many))
    delta = DeltaStream()
    delta.receive(delta_request(ENDPOINT, too_many[:-1]))
    delta.receive(delta_request(ENDPOINT, too_many[:1]))  # already subscribed: still at the limit
    with pytest.raises(ProtocolError, match=f"at most {MAX_NAMES_PER_TYPE}"):
        delta.receive(delta_request(ENDPOINT, too_many[-1:]))
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET):
        SotwStream().receive(sotw_request(type_url, []))


def test_sotw_stale_request_changes_the_subscription_but_answers_nothing() -> None:
    """A stale nonce: no ACK or NACK, but the names it asks for are the subscription now."""
    stream = SotwStream()
    stream.receive(sotw_request(ENDPOINT, ["a"]))
    [first] = stream.responses(snapshot(ENDPOINT, "a", "b"))
    changed = encode({ENDPOINT: {"a": cluster("a", v="2"), "b": cluster("b")}})
    [second] = stream.responses(changed)
    assert second.nonce != first.nonce
    received = stream.receive(
        sotw_request(ENDPOINT, ["a", "b"], first.nonce, error_detail={"code": 3, "message": "old"})
    )
    assert received.stale and received.outcome is None
    assert stream.status()[ENDPOINT].subscription == ("a", "b")
    [third] = stream.responses(snapshot(ENDPOINT, "a", "b"))
    assert sent([third]) == [(ENDPOINT, ["a", "b"])]
