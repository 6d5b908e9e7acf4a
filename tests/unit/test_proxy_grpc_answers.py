"""gRPC specifics of the proxy (runtime/grpc.py): deadlines read from grpc-timeout, the status a
proxy answer maps to (Envoy's mapping, timeouts as DEADLINE_EXCEEDED), grpc-message encoding, and
trailers-only answers."""

from __future__ import annotations

import pytest

from innermesh.proxy.plan import REASON_HEADER
from innermesh.proxy.runtime import errors, grpc


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"200m", 0.2),
        (b"1500u", 0.0015),
        (b"99999999n", 0.099999999),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    """Every unit of gRPC's grpc-timeout is read to seconds."""
    assert grpc.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"100", b"1x", b"123456789S", b"-1S", b"1.5S"])
def test_malformed_grpc_timeouts_are_ignored(value: bytes) -> None:
    """A value gRPC's grammar does not allow (more than 8 digits, no unit, a sign) gives no deadline."""
    assert grpc.parse_timeout(value) is None


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (errors.NO_ROUTE, 12),  # UNIMPLEMENTED
        (errors.NO_HEALTHY_UPSTREAM, 14),  # UNAVAILABLE
        (errors.UPSTREAM_CONNECT_FAILURE, 14),
        (errors.UPSTREAM_RESET, 14),
        (errors.UPSTREAM_TIMEOUT, 4),  # DEADLINE_EXCEEDED, not 504's UNAVAILABLE
        (errors.CLUSTER_NOT_FOUND, 2),  # 500: UNKNOWN, as in gRPC's table
        (errors.BAD_REQUEST, 13),  # INTERNAL
        (errors.FAULT_ABORT.with_status(429), 14),
        (errors.FAULT_ABORT.with_status(403), 7),
        (errors.FAULT_ABORT.with_status(401), 16),
    ],
)
def test_proxy_answers_map_to_grpc_statuses(answer: errors.Answer, status: int) -> None:
    """The proxy's answers map as Envoy maps its local replies."""
    assert grpc.status_for(answer.status, answer.reason) == status


def test_grpc_message_is_percent_encoded() -> None:
    """Printable ASCII stays; "%" and every other byte become %XX (gRPC's PROTOCOL-HTTP2.md)."""
    assert grpc.encode_message(b"no route matches") == b"no route matches"
    assert grpc.encode_message("50% d\u00e9j\u00e0\n".encode()) == b"50%25 d%C3%A9j%C3%A0%0A"


def test_a_local_answer_becomes_trailers_only() -> None:
    """An HTTP-shaped proxy answer becomes grpc-status and grpc-message, keeping its other headers."""
    answer = errors.NO_HEALTHY_UPSTREAM
    headers = grpc.local_answer(
        answer.status, [*errors.answer_headers(answer), (b"x-extra", b"1")], b"none\n"
    )
    assert headers == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"none"),
        (REASON_HEADER, b"no_healthy_upstream"),
        (b"x-extra", b"1"),
    ]


def test_an_answer_with_a_grpc_status_is_kept() -> None:
    """A fault that aborts with a gRPC status is already a gRPC answer."""
    headers = grpc.trailers_only(8, b"fault injected", [(REASON_HEADER, b"fault_abort")])
    assert grpc.local_answer(200, headers, b"") is headers


def test_is_grpc() -> None:
    assert grpc.is_grpc(b"application/grpc")
    assert grpc.is_grpc(b"application/grpc+proto")
    assert grpc.is_grpc(b"Application/GRPC")
    assert not grpc.is_grpc(b"application/json")
    assert not grpc.is_grpc(None)
