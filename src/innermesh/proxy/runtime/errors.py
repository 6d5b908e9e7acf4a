"""The proxy's own answers: one table from a failure to its HTTP status, reason and gRPC status.

Every response the proxy makes itself (rather than forwarding an upstream's) carries
``x-innermesh-reason: <reason>`` and a one-line text body, so that a client's log says what went
wrong and where. Outcomes are values (``Answer``); the protocol layer renders them (HTTP/1.1 here; the
HTTP/2 layer will render the same values, using ``grpc_status`` for gRPC requests).
"""

from __future__ import annotations

from dataclasses import dataclass

from innermesh.proxy.plan import REASON_HEADER, Headers


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: bytes  # the x-innermesh-reason value
    text: bytes  # the body's one line

    def with_status(self, status: int) -> Answer:
        return Answer(status, self.reason, self.text)


NO_ROUTE = Answer(404, b"no_route", b"no route matches this request")
NO_HEALTHY_UPSTREAM = Answer(503, b"no_healthy_upstream", b"no healthy endpoint in the cluster")
UPSTREAM_CONNECT_FAILURE = Answer(503, b"upstream_connect_failure", b"could not connect to an upstream")
UPSTREAM_OVERFLOW = Answer(503, b"upstream_overflow", b"the cluster's connection pool limits are reached")
UPSTREAM_RESET = Answer(502, b"upstream_reset", b"the upstream closed the connection before responding")
UPSTREAM_PROTOCOL_ERROR = Answer(502, b"upstream_protocol_error", b"the upstream sent malformed HTTP")
UPSTREAM_TIMEOUT = Answer(504, b"upstream_timeout", b"the upstream did not respond in time")
# The status comes from the plan (Forward.missing_cluster_status; Fault.abort_http_status).
CLUSTER_NOT_FOUND = Answer(500, b"cluster_not_found", b"the route's backend is not configured")
FAULT_ABORT = Answer(503, b"fault_abort", b"fault injected")
BAD_REQUEST = Answer(400, b"bad_request", b"malformed HTTP request")
HEADERS_TOO_LARGE = Answer(431, b"headers_too_large", b"request head too large")
CONNECT_NOT_ALLOWED = Answer(405, b"connect_not_allowed", b"CONNECT is only served by tunnel routes")


def grpc_status(http_status: int) -> int:
    """The gRPC status a gRPC client is given for an HTTP status (gRPC's own mapping, as Envoy's)."""
    if http_status == 400:
        return 13  # INTERNAL
    if http_status == 401:
        return 16  # UNAUTHENTICATED
    if http_status == 403:
        return 7  # PERMISSION_DENIED
    if http_status == 404:
        return 12  # UNIMPLEMENTED
    if http_status in (429, 502, 503, 504):
        return 14  # UNAVAILABLE
    return 2  # UNKNOWN


def answer_headers(answer: Answer) -> Headers:
    """The headers of ``answer`` (framing aside): content type and the reason."""
    return [(b"content-type", b"text/plain"), (REASON_HEADER, answer.reason)]


def answer_body(answer: Answer) -> bytes:
    return answer.text + b"\n"
