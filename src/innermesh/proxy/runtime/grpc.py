"""gRPC over the proxy: recognising a call, reading its deadline, and rendering the proxy's own
answers the way a gRPC client can read them.

Pure functions. A gRPC call is an HTTP/2 request whose content-type is ``application/grpc`` (or
``application/grpc+<codec>``); the proxy forwards it like any request, and only its own answers
differ: a gRPC client reads the outcome from ``grpc-status``, not from the HTTP status, so an answer
the proxy makes (no route, no endpoint, a timeout, a fault) goes out as a *trailers-only* response:
HTTP 200 with ``grpc-status``, ``grpc-message`` and ``x-innermesh-reason`` in one HEADERS frame that
ends the stream (gRPC's PROTOCOL-HTTP2.md).

The status follows Envoy: its local replies map the HTTP status with gRPC's own
http-grpc-status-mapping table (``errors.grpc_status``: 400 INTERNAL, 401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, anything else UNKNOWN), except
that a timeout the proxy enforces is DEADLINE_EXCEEDED (envoyproxy/envoy#10184, fixed by #44479):
UNAVAILABLE would tell the client to retry a call whose time is already up.
"""

from __future__ import annotations

from collections.abc import Sequence

from innermesh.proxy.plan import REASON_HEADER, Headers
from innermesh.proxy.runtime import errors

CONTENT_TYPE = b"application/grpc"
DEADLINE_EXCEEDED = 4

# grpc-timeout units (gRPC's PROTOCOL-HTTP2.md: at most 8 digits, then one unit letter).
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

# Bytes that stay as they are in grpc-message: printable ASCII but "%" (percent-encoding).
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}


def is_grpc(content_type: bytes | None) -> bool:
    """Whether a request with this content-type is a gRPC call (``application/grpc``,
    ``application/grpc+proto``, ``application/grpc-web``...)."""
    return content_type is not None and content_type[:16].lower() == CONTENT_TYPE


def parse_timeout(value: bytes) -> float | None:
    """The seconds a ``grpc-timeout`` value allows, or None when it is malformed (then the call has
    no deadline the proxy can honour, as gRPC servers treat it)."""
    digits, unit = value[:-1], value[-1:]
    scale = _UNITS.get(unit)
    if scale is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * scale


def status_for(http_status: int, reason: bytes) -> int:
    """The grpc-status of a proxy answer with this HTTP status and ``x-innermesh-reason``."""
    if reason == errors.UPSTREAM_TIMEOUT.reason:
        return DEADLINE_EXCEEDED
    return errors.grpc_status(http_status)


def encode_message(text: bytes) -> bytes:
    """``grpc-message`` is percent-encoded UTF-8: bytes outside printable ASCII, and "%", as %XX."""
    if all(b in _PLAIN for b in text):
        return text
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in text)


def trailers_only(grpc_status: int, message: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> Headers:
    """The headers (``:status`` aside) of a trailers-only answer: the whole response of a call that
    ends without a message; ``extra`` (the reason, for one) follow the gRPC ones."""
    return [
        (b"content-type", CONTENT_TYPE),
        (b"grpc-status", b"%d" % grpc_status),
        (b"grpc-message", encode_message(message)),
        *extra,
    ]


def local_answer(status: int, headers: Headers, body: bytes) -> Headers:
    """A proxy answer (``Downstream.send_local``'s arguments) as a gRPC client must get it.

    An answer that already carries ``grpc-status`` (a fault that aborts with a gRPC status) is one
    already; any other becomes trailers-only, its status mapped (``status_for``), its one-line
    text as the message, and its other headers (the reason, a redirect's location, response header
    mutations) kept.
    """
    reason = b""
    extra: Headers = []
    for name, value in headers:
        if name == b"grpc-status":
            return headers
        if name == REASON_HEADER:
            reason = value
        if name != b"content-type":
            extra.append((name, value))
    message = body.strip() or b"HTTP status %d" % status
    return trailers_only(status_for(status, reason), message, extra)
