"""One request's trip through the proxy: route, policy, tries, response (``Exchange``), and the
fire-and-forget copies of it sent to mirror clusters (``Shadow``).

An exchange is driven by callbacks, not a coroutine: the downstream protocol feeds it the request
body, the upstream connection feeds it the response, and timers (fault delay, retry backoff,
timeouts) are loop handles. The common request (a route, an idle pooled connection, no timeout)
costs no task and no timer.

The life of an exchange::

    start ─ route ─┬─ no route / redirect / direct response / fault abort ─> local answer
                   └─ forward ─ (fault delay) ─ pick backend, cluster, endpoint ─ connection
                        ─ request sent ─ response head ─ body ─ end
                           │  └─ retriable status, reset, connect failure, per-try timeout:
                           │     back off, pick again (avoiding endpoints tried), resend
                           └─ 101 / CONNECT: the two connections become a byte tunnel

Retries replay the request body, so a request is retried only while its whole body is still held:
bodies up to ``REPLAY_LIMIT`` are kept as they stream; a larger body is dropped as it is sent and the
request is not retried (nor mirrored). Once the response head has gone to the client nothing can be
retried; a failure after that resets the client connection.

The common request costs few calls: its head stays the bytes the client sent (``Request.raw``), the
route's header mutations are applied to those bytes as precompiled ``wire.HeadEdit`` operations (and
to the response head's bytes likewise), the header list is parsed only when something reads it (a
route matching on headers, a hash policy, a rewrite), and the response head is handed on as bytes to
an HTTP/1.1 client (``whole``) or as a header list to any other.

Timeouts follow Envoy: the route timeout (``Forward.timeout``) runs from the end of the request to the
end of the response, across retries; the per-try timeout from each try's start to the end of its
response. Either firing before the response head went out answers 504 upstream_timeout (or retries,
for a per-try timeout that the policy retries on ``reset`` or 504); after it, the client connection
is reset.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from innermesh.proxy.balance import generated_cookie, hash_for
from innermesh.proxy.matching import (
    AnyPath,
    ConnectMatch,
    ExactPath,
    PrefixPath,
    RegexPath,
    SeparatedPrefixPath,
)
from innermesh.proxy.plan import (
    REASON_HEADER,
    Backend,
    Cluster,
    DirectResponse,
    EndpointState,
    Forward,
    HeaderMutation,
    Headers,
    PickContext,
    Plan,
    RequestHead,
    RetryPolicy,
    Route,
    VirtualHost,
)
from innermesh.proxy.runtime import errors, grpc, wire
from innermesh.proxy.runtime.errors import Answer
from innermesh.proxy.runtime.h2upstream import H2ClusterPool, H2Stream, H2Waiter
from innermesh.proxy.runtime.limits import REPLAY_LIMIT, SHADOW_TIMEOUT
from innermesh.proxy.runtime.messages import Downstream, Request, ResponseHead
from innermesh.proxy.runtime.tcp import TunnelEnd, connect_endpoint
from innermesh.proxy.runtime.upstream import ClusterPool, UpstreamConnection, Waiter

if TYPE_CHECKING:
    from innermesh.proxy.runtime.context import Context, ListenerHandle
    from innermesh.proxy.stats import ClusterStats

log = logging.getLogger(__name__)

# Exchange states.
_NEW = 0  # created; body may be arriving; not routed yet
_WAITING = 1  # fault delay, connection wait or retry backoff: no request on a connection
_SENT = 2  # the request is on a connection; no response head yet
_STREAMING = 3  # the response head went to the client: no retry from here
_DONE = 4
_TUNNEL = 5

_MILLION = 1_000_000


class WholeResponses(Protocol):
    """An HTTP/1.1 downstream's shortcut: a whole response (a head forwardable as received, framed by
    Content-Length, and its body) in one call, as ``send_response_head``, ``send_response_body``
    and ``end_response`` would send it."""

    def send_whole_response(self, status: int, head: bytes, body: bytes) -> None: ...


_FIRST_TRY = PickContext()  # no hash, nothing to avoid: shared rather than built per request


class Exchange:
    """One request, from its head to the end of its response.

    ``whole``: the downstream again, when it is an HTTP/1.1 one (``http1.Http1Server``): it writes
    response heads from ``ResponseHead.raw``, reads their header list only when it must rebuild one,
    and takes a whole response in one call. For any other downstream the exchange fills
    ``ResponseHead.headers``, which an HTTP/1.1 upstream leaves empty when it passes a head on as
    ``raw``.
    """

    __slots__ = (
        "_answer_on_fail",
        "_attempt_endpoint",
        "_backend",
        "_body",
        "_body_done",
        "_body_size",
        "_cluster",
        "_conn",
        "_cpool",
        "_cstats",
        "_down_paused",
        "_dropped",
        "_hash",
        "_hot",
        "_mirrored",
        "_plan",
        "_request_id",
        "_retries",
        "_retry",
        "_reused",
        "_route",
        "_set_cookie",
        "_stale_retried",
        "_state",
        "_timeout",
        "_timer",
        "_tried",
        "_try_timer",
        "_up_head",
        "_up_paused",
        "_waiter",
        "_whole",
        "ctx",
        "down",
        "holding",
        "listener",
        "request",
        "status",
        "trailers",
    )

    def __init__(
        self,
        ctx: Context,
        down: Downstream,
        listener: ListenerHandle,
        request: Request,
        *,
        whole: WholeResponses | None = None,
    ) -> None:
        self.ctx = ctx
        self.down = down
        self.listener = listener
        self.request = request
        self._whole = whole
        self._body: list[bytes] = []  # chunks held: all of them while replayable, else the unsent ones
        self._body_done = not request.chunked and not request.length
        self.status = 0  # the status sent to the client (0: none yet)
        self.trailers: Headers | None = None  # an HTTP/2 upstream's, read by an HTTP/2 downstream
        self.holding = False  # the request body is not read (backpressure), see _sync_hold
        self._state = _NEW
        self._body_size = 0
        self._dropped = False  # some body bytes were sent and let go: no replay
        self._plan: Plan | None = None
        self._route: Route | None = None
        self._hot: _Hot | None = None
        self._backend: Backend | None = None
        self._cluster: Cluster | None = None
        self._cpool: ClusterPool | H2ClusterPool | None = None
        self._cstats: ClusterStats | None = None
        self._hash: int | None = None
        self._set_cookie: bytes | None = None
        self._up_head = b""
        self._conn: UpstreamConnection | H2Stream | None = None
        self._waiter: Waiter | H2Waiter | None = None
        self._attempt_endpoint: EndpointState | None = None
        self._tried: set[tuple[str, int]] | None = None  # endpoints a retry avoids (with a retry policy)
        self._retries = 0
        self._retry: RetryPolicy | None = None  # the route's, once it forwards
        self._reused = False
        self._stale_retried = False
        self._up_paused = False
        self._down_paused = False
        self._request_id = b""
        self._answer_on_fail = errors.UPSTREAM_CONNECT_FAILURE
        self._timer: asyncio.TimerHandle | None = None  # fault delay or retry backoff
        self._timeout: asyncio.TimerHandle | None = None  # the route timeout
        self._try_timer: asyncio.TimerHandle | None = None
        self._mirrored = False

    # -- routing -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Route the request (with the listener's plan as it is now) and act on the route."""
        listener = self.listener
        plan = self._plan = listener.plan
        table = listener.route_table
        request = self.request
        head = request.head
        route = None
        if table is not None:
            vhost = table.lookup(head.authority)
            if vhost is not None:
                if request.raw is not None:
                    reads = _READS_HEADERS.get(id(vhost))
                    if reads is None or reads[0] is not vhost:
                        reads = _reads_headers(vhost)
                    if reads[1]:
                        self._head_fields()
                route = vhost.select(head)
        if route is None:
            listener.stats.no_route += 1
            self._answer(errors.NO_ROUTE)
            return
        self._route = route
        action = route.action
        if isinstance(action, Forward):
            if head.method == b"CONNECT" and not action.tunnel:
                self._answer(errors.CONNECT_NOT_ALLOWED)
                return
            fault = route.fault
            if fault is not None and fault.delay and self._chance(fault.delay_per_million):
                self._state = _WAITING
                self._timer = self.ctx.loop.call_later(
                    fault.delay, self._forward_delayed, route, action, plan
                )
                return
            self._forward(route, action, plan)
        elif isinstance(action, DirectResponse):
            self._local(action.status, self._route_response_headers([]), action.body)
        else:
            location = [(b"location", action.location(head))]
            self._local(action.status, self._route_response_headers(location), b"")

    def _head_fields(self) -> RequestHead:
        """The request head with its header list, parsed from the raw head the first time it is read
        (the HTTP/1.1 layer leaves it empty: most routes never look at it)."""
        request = self.request
        head = request.head
        if request.raw is not None and not head.headers:
            head.headers = wire.request_fields(request.raw)
        return head

    def _forward_delayed(self, route: Route, action: Forward, plan: Plan) -> None:
        self._timer = None
        self._forward(route, action, plan)

    def _forward(self, route: Route, action: Forward, plan: Plan) -> None:
        """Forward by ``route``: past a fault's abort, to a backend, with the head it gets."""
        fault = route.fault
        if fault is not None and fault.abort_per_million and self._chance(fault.abort_per_million):
            if fault.abort_http_status is not None:
                self._answer(errors.FAULT_ABORT.with_status(fault.abort_http_status))
                return
            if fault.abort_grpc_status is not None:
                # gRPC's "trailers-only" answer: HTTP 200 carrying the status in its headers.
                reason = (REASON_HEADER, errors.FAULT_ABORT.reason)
                headers = grpc.trailers_only(fault.abort_grpc_status, b"fault injected", [reason])
                self._local(200, headers, b"")
                return
        if action.retry is not None:
            self._retry = action.retry
        hot = _HOT.get(id(route))
        if hot is None or hot.route is not route:
            hot = _new_hot(route)
        backend = hot.backend or action.pick_backend(self.ctx.rng)
        cluster = plan.clusters.get(backend.cluster)
        if cluster is None:
            self._answer(errors.CLUSTER_NOT_FOUND.with_status(action.missing_cluster_status))
            return
        request = self.request
        cpool = _pool_for(self.ctx, backend.cluster, cluster, request)
        self._hot, self._backend, self._cluster, self._cpool = hot, backend, cluster, cpool
        cstats = self._cstats = cpool.stats
        cstats.rq_total += 1
        if action.hash_policies:
            head = self._head_fields()
            cookie = generated_cookie(action.hash_policies, head, self.ctx.rng)
            if cookie is not None:
                self._set_cookie, self._hash = cookie
            else:
                self._hash = hash_for(action.hash_policies, head)
        if action.tunnel and request.head.method == b"CONNECT":
            self._state = _WAITING
            self.ctx.pools.spawn(self._open_tunnel(cluster))
            return
        raw = request.raw
        if raw is not None and hot.in_place:
            edits = (
                hot.request_edits
                if hot.backend is not None
                else _edits(route.request_headers, backend.request_headers)
            )
            self._up_head = wire.edit_head(raw, edits, self._forwarding_lines())
        else:
            self._up_head = self._rebuilt_head(route, action, backend, mirror=False)
        if not self._body_done:
            if request.expect_continue:
                self.down.send_continue()
        elif action.timeout or action.mirrors or request.deadline is not None:
            self._arm_timeout()
            self._mirror()
        self._try()

    # -- tries -------------------------------------------------------------------------------------------

    def _try(self) -> None:
        """Pick an endpoint (avoiding those tried, with a retry policy) and get a connection to it."""
        self._timer = None
        cluster, cpool, cstats = self._cluster, self._cpool, self._cstats
        assert cluster is not None
        assert cpool is not None
        assert cstats is not None
        if cpool.active >= cluster.limits.max_requests:
            cstats.cx_overflow += 1
            self._answer(errors.UPSTREAM_OVERFLOW)
            return
        tried = self._tried
        if tried or self._hash is not None:
            endpoint = cluster.pick(PickContext(self._hash, frozenset(tried) if tried else frozenset()))
        else:
            endpoint = cluster.pick(_FIRST_TRY)
        if endpoint is None:
            if not tried:
                cstats.no_healthy_upstream += 1
                self._answer(errors.NO_HEALTHY_UPSTREAM)
            else:
                self._answer(self._answer_on_fail)
            return
        self._attempt_endpoint = endpoint
        endpoint.requests.value += 1  # (EndpointState.active, without the property)
        cpool.active += 1
        cstats.rq_active += 1
        self._state = _WAITING
        retry = self._retry
        if retry is not None and retry.per_try_timeout:
            self._try_timer = self.ctx.loop.call_later(retry.per_try_timeout, self._try_timed_out)
        got = cpool.acquire(endpoint, self)
        if got is None:
            self._end_try()
            self._answer(errors.UPSTREAM_OVERFLOW)
        elif isinstance(got, (UpstreamConnection, H2Stream)):
            self.connection_ready(got)
        else:
            self._waiter = got

    def connection_ready(self, conn: UpstreamConnection | H2Stream) -> None:
        if self._waiter is not None:
            self._waiter = None
        if self._state != _WAITING:  # gave up meanwhile (timeout, client gone)
            _give_back(conn)
            return
        self._conn = conn
        self._state = _SENT
        self._reused = conn.requests > 0
        self._up_paused = conn.write_paused
        if self._down_paused:
            conn.pause_reading()
        body = self._body
        up_head = self._up_head
        request = self.request
        conn.send_request(
            self,
            up_head,
            body,
            end=self._body_done,
            chunked=request.chunked,
            head_request=request.head.method == b"HEAD",
        )
        cstats = self._cstats
        assert cstats is not None
        if body:
            cstats.bytes_sent += len(up_head) + sum(map(len, body))
            if self._body_size > REPLAY_LIMIT:
                body.clear()
                self._dropped = True
        else:
            cstats.bytes_sent += len(up_head)
        if self.holding or self._up_paused:
            self._sync_hold()

    def connection_failed(self) -> None:
        self._waiter = None
        if self._state != _WAITING:
            return
        self._end_try()
        retry = self._retry
        if retry is not None and retry.on_connect_failure and self._can_retry():
            self._retry_later(errors.UPSTREAM_CONNECT_FAILURE)
        else:
            self._answer(errors.UPSTREAM_CONNECT_FAILURE)

    def _can_retry(self) -> bool:
        retry = self._retry
        return retry is not None and self._retries < retry.attempts and not self._dropped

    def _retry_later(self, answer: Answer) -> None:
        """Back off, then try again: Envoy's fully jittered exponential backoff (a random wait up to
        base * (2^n - 1) before retry n), capped at ``backoff_max`` (10x base by default)."""
        retry = self._retry
        assert retry is not None
        assert self._cstats is not None
        self._retries += 1
        self._cstats.rq_retry += 1
        self._answer_on_fail = answer
        self._state = _WAITING
        cap = retry.backoff_max if retry.backoff_max is not None else retry.backoff_base * 10
        ceiling = min(retry.backoff_base * ((1 << self._retries) - 1), cap)
        self._timer = self.ctx.loop.call_later(self.ctx.rng.random() * ceiling, self._try)

    def _end_try(self) -> None:
        """Account for the end of a try (its endpoint's and cluster's in-flight counts); with a retry
        policy, remember the endpoint so that a retry avoids it."""
        endpoint, self._attempt_endpoint = self._attempt_endpoint, None
        if endpoint is not None:
            endpoint.requests.value -= 1
            assert self._cpool is not None
            assert self._cstats is not None
            self._cpool.active -= 1
            self._cstats.rq_active -= 1
            if self._retry is not None:
                if self._tried is None:
                    self._tried = set()
                self._tried.add((endpoint.host, endpoint.port))
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None

    def _try_timed_out(self) -> None:
        self._try_timer = None
        assert self._cstats is not None
        self._cstats.rq_timeout += 1
        if self._state == _STREAMING:
            self._reset()
            return
        self._drop_upstream()
        self._end_try()
        retry = self._retry
        if retry is not None and (retry.on_reset or 504 in retry.on_status) and self._can_retry():
            self._retry_later(errors.UPSTREAM_TIMEOUT)
        else:
            self._answer(errors.UPSTREAM_TIMEOUT)

    def _arm_timeout(self) -> None:
        route = self._route
        if self._timeout is None and route is not None and isinstance(route.action, Forward):
            timeout = route.action.timeout or None
            deadline = self.request.deadline
            if deadline is not None:  # the client's own (grpc-timeout) caps the route's
                left = max(deadline - self.ctx.loop.time(), 0.0)
                timeout = left if timeout is None else min(timeout, left)
            if timeout is not None:
                self._timeout = self.ctx.loop.call_later(timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timeout = None
        if self._cstats is not None:
            self._cstats.rq_timeout += 1
        if self._state == _STREAMING:
            self._reset()
        elif self._state in (_WAITING, _SENT):
            self._answer(errors.UPSTREAM_TIMEOUT)

    # -- the request body (from the downstream) -----------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        self._body_size += len(data)
        conn = self._conn
        if conn is not None and self._state in (_SENT, _STREAMING):
            conn.send_body(data)
            assert self._cstats is not None
            self._cstats.bytes_sent += len(data)
            if self._body_size > REPLAY_LIMIT:
                if self._body:
                    self._body.clear()
                self._dropped = True
            else:
                self._body.append(data)
            return
        if self._state == _DONE:
            return
        self._body.append(data)
        self._sync_hold()

    def request_end(self) -> None:
        self._body_done = True
        conn = self._conn
        if conn is not None and self._state in (_SENT, _STREAMING):
            conn.end_request()
        # Once the request is forwarded (past a fault's delay and abort), the route timeout starts
        # with the end of the request, and the mirrors go out with the whole body.
        if self._cpool is not None and self._state in (_WAITING, _SENT, _STREAMING):
            self._arm_timeout()
            self._mirror()

    def upstream_write_paused(self) -> None:
        self._up_paused = True
        self._sync_hold()

    def upstream_write_resumed(self) -> None:
        self._up_paused = False
        self._sync_hold()

    def _sync_hold(self) -> None:
        """Stop reading the request body while the upstream cannot take it, or while there is no
        connection yet and more than ``REPLAY_LIMIT`` is held; read again when neither holds."""
        if self._state == _DONE:
            self.holding = False  # the downstream forgets an exchange's holds when it is done
            return
        hold = self._up_paused or (
            self._conn is None and not self._body_done and self._body_size > REPLAY_LIMIT
        )
        if hold != self.holding:
            self.holding = hold
            if hold:
                self.down.pause_request_body()
            else:
                self.down.resume_request_body()

    # -- the response (from the upstream connection) ------------------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        if self._state != _SENT:
            return
        retry = self._retry
        if retry is not None and head.status in retry.on_status and self._can_retry():
            self._drop_upstream()
            self._end_try()
            self._retry_later(errors.UPSTREAM_RESET)
            return
        self._respond(head)

    def response_whole(self, head: bytes, data: bytes) -> None:
        self._conn = None
        if self._state != _SENT:
            return
        status = int(head[9:12])
        retry = self._retry
        if retry is not None and status in retry.on_status and self._can_retry():
            self._end_try()
            self._retry_later(errors.UPSTREAM_RESET)
            return
        size = len(head)
        body = data[size:]
        whole, hot, cstats = self._whole, self._hot, self._cstats
        assert cstats is not None
        if whole is None or hot is None or hot.backend is None or self._set_cookie is not None:
            self._respond(ResponseHead(status, b"", [], head, len(body), False))
            if body and self._state == _STREAMING:
                self.response_body(body)
            self.response_end()
            return
        # The common response: straight to an HTTP/1.1 client, in one write.
        self._state = _STREAMING
        if hot.response_edits:
            head = wire.edit_head(head, hot.response_edits)
        self.status = status
        cstats.bytes_received += len(body)
        endpoint = self._attempt_endpoint
        if endpoint is not None and self._retry is None and self._try_timer is None:
            # The end of the try (as _end_try): nothing to remember for a retry, no timer.
            self._attempt_endpoint = None
            endpoint.requests.value -= 1
            cstats.rq_active -= 1
            cpool = self._cpool
            assert cpool is not None
            cpool.active -= 1
        else:
            self._end_try()
        whole.send_whole_response(status, head, body)
        self._finish()

    def _respond(self, head: ResponseHead) -> None:
        """Send the response head on, with the route's and backend's mutations (and a cookie)."""
        self._state = _STREAMING
        route, backend = self._route, self._backend
        assert route is not None
        assert backend is not None
        headers: Headers | None = None
        route_m, backend_m, cookie = route.response_headers, backend.response_headers, self._set_cookie
        if route_m is not None or backend_m is not None or cookie is not None:
            if head.raw is not None:
                extra = b"set-cookie: %s\r\n" % cookie if cookie is not None else b""
                head.raw = wire.edit_head(head.raw, _edits(route_m, backend_m), extra)
            else:
                if route_m is not None:
                    headers = route_m.apply(head.headers)
                if backend_m is not None:
                    headers = backend_m.apply(headers if headers is not None else head.headers)
                if cookie is not None:
                    headers = [*(headers if headers is not None else head.headers), (b"set-cookie", cookie)]
        if head.raw is not None and self._whole is None and not head.headers:
            head.headers = wire.header_fields(head.raw)
        self.status = status = head.status
        end = status < 200 or status == 204 or status == 304 or self.request.head.method == b"HEAD"
        self.down.send_response_head(head, headers, end)

    def response_body(self, data: bytes) -> None:
        if self._state == _STREAMING:
            assert self._cstats is not None
            self._cstats.bytes_received += len(data)
            self.down.send_response_body(data)

    def response_flush(self) -> None:
        if self._state == _STREAMING:
            self.down.flush_response()

    def response_end(self) -> None:
        self._conn = None
        if self._state != _STREAMING:
            return
        self._end_try()
        self.down.end_response()
        self._finish()

    def upstream_failed(self, reset: bool) -> None:
        self._conn = None
        if self._state not in (_SENT, _STREAMING):
            return
        self._end_try()
        if self._state == _STREAMING:
            self._reset()
            return
        if reset and self._reused and not self._stale_retried and not self._dropped:
            # A pooled connection the upstream had closed while idle (its FIN was in flight): the
            # request never reached the application, so it is sent again once, on a new connection.
            self._stale_retried = True
            self._tried = None
            self._try()
            return
        retry = self._retry
        answer = errors.UPSTREAM_RESET if reset else errors.UPSTREAM_PROTOCOL_ERROR
        if reset and retry is not None and retry.on_reset and self._can_retry():
            self._retry_later(answer)
        else:
            self._answer(answer)

    def upgraded(self, head: ResponseHead, leftover: bytes) -> None:
        conn, self._conn = self._conn, None
        assert isinstance(conn, UpstreamConnection)  # HTTP/2 streams never upgrade
        if self._state != _SENT or self.request.upgrade is None:
            conn.close(abort=True)
            self.upstream_failed(reset=False)
            return
        self._end_try()
        self._cancel_timers()
        self._state = _TUNNEL
        self.status = head.status
        route = self._route
        assert route is not None
        headers = route.response_headers.apply(head.headers) if route.response_headers else None
        assert conn.transport is not None
        tunnel = self.down.open_tunnel(conn.transport, head, headers)
        conn.join_tunnel(tunnel, leftover)
        self._count_status()

    def response_trailers(self, trailers: Headers) -> None:
        if self._state == _STREAMING:
            self.trailers = trailers

    def upstream_refused(self) -> None:
        """An HTTP/2 upstream refused the stream unprocessed: retried as the policy says
        (``on_refused_stream``), or like a stale pooled connection (once, at once), as nothing of it
        reached the application."""
        self._conn = None
        if self._state != _SENT:
            return
        self._end_try()
        retry = self._retry
        if retry is not None and retry.on_refused_stream and self._can_retry():
            self._retry_later(errors.UPSTREAM_RESET)
        elif not self._stale_retried and not self._dropped:
            self._stale_retried = True
            self._try()
        else:
            self._answer(errors.UPSTREAM_RESET)

    def downstream_paused(self) -> None:
        """The client's write buffer is full: stop reading the response."""
        self._down_paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def downstream_resumed(self) -> None:
        self._down_paused = False
        if self._conn is not None:
            self._conn.resume_reading()

    def downstream_lost(self) -> None:
        """The client went away: drop whatever is in flight."""
        if self._state in (_DONE, _TUNNEL):
            return
        self._state = _DONE
        self._cancel_timers()
        self._drop_upstream()
        self._end_try()

    # -- CONNECT ----------------------------------------------------------------------------------------

    async def _open_tunnel(self, cluster: Cluster) -> None:
        """CONNECT on a tunnel route: connect to an endpoint (three tries, as for TCP), answer 200 and
        splice; 503 when no endpoint can be reached."""
        assert self._cstats is not None
        tried: set[tuple[str, int]] = set()
        for _ in range(3):
            endpoint = cluster.pick(PickContext(self._hash, frozenset(tried)))
            if endpoint is None:
                if not tried:
                    self._cstats.no_healthy_upstream += 1
                    self._answer(errors.NO_HEALTHY_UPSTREAM)
                    return
                break
            tried.add((endpoint.host, endpoint.port))
            try:
                transport, end = await connect_endpoint(
                    self.ctx.loop, endpoint, cluster.limits.connect_timeout
                )
            except (OSError, TimeoutError):
                self._cstats.cx_connect_fail += 1
                continue
            if self._state != _WAITING:  # the client left meanwhile
                transport.close()
                return
            self._tunnel_to(transport, end, endpoint)
            return
        if self._state == _WAITING:
            self._answer(errors.UPSTREAM_CONNECT_FAILURE)

    def _tunnel_to(self, transport: asyncio.Transport, end: TunnelEnd, endpoint: EndpointState) -> None:
        self._state = _TUNNEL
        self.status = 200
        assert self._cstats is not None
        self._cstats.cx_total += 1
        head = ResponseHead(200, b"OK", [], None, None, False)
        end.attach(self.down.open_tunnel(transport, head, None))
        self._count_status()

    # -- answers -----------------------------------------------------------------------------------------

    def _answer(self, answer: Answer) -> None:
        self._local(answer.status, errors.answer_headers(answer), errors.answer_body(answer))

    def _local(self, status: int, headers: Headers, body: bytes) -> None:
        if self._state == _DONE:
            return
        self._cancel_timers()
        self._drop_upstream()
        self._end_try()
        self.status = status
        self.down.send_local(status, headers, body)
        self._finish()

    def _route_response_headers(self, headers: Headers) -> Headers:
        route = self._route
        if route is not None and route.response_headers is not None:
            return route.response_headers.apply(headers)
        return headers

    def _reset(self) -> None:
        self._cancel_timers()
        self._drop_upstream()
        self._end_try()
        self._state = _DONE
        self._count_status()
        self.down.reset()

    def _finish(self) -> None:
        if self._timer is not None or self._timeout is not None or self._try_timer is not None:
            self._cancel_timers()
        self._state = _DONE
        status = self.status
        lstats, cstats = self.listener.stats, self._cstats
        if 199 < status < 300:  # (the counting of count_status, inline for the common status)
            lstats.rq_total += 1
            lstats.rq_2xx += 1
            if cstats is not None:
                cstats.rq_2xx += 1
        else:
            lstats.count_status(status)
            if cstats is not None and status:
                cstats.count_status(status)
        self.down.exchange_done()

    def _count_status(self) -> None:
        status = self.status
        self.listener.stats.count_status(status)
        if self._cstats is not None and status:
            self._cstats.count_status(status)

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None

    def _drop_upstream(self) -> None:
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        self._up_paused = False
        self._sync_hold()

    # -- helpers -----------------------------------------------------------------------------------------

    def _chance(self, per_million: int) -> bool:
        return per_million >= _MILLION or (per_million > 0 and self.ctx.rng.randrange(_MILLION) < per_million)

    def _forwarding_lines(self) -> bytes:
        """The X-Forwarded-For (unless the client sent one, merged by the caller), X-Forwarded-Proto
        and X-Request-Id lines the upstream gets, as far as the client did not send them."""
        req = self.request
        head = req.head
        if (
            req.forwarded_for is None
            and not req.has_proto
            and not req.has_request_id
            and not self._request_id
        ):
            # The common request: one memoized prefix (X-Forwarded-For, X-Forwarded-Proto) and the id.
            rid = self._request_id = self.ctx.request_id()
            prefix = _FORWARDED.get((head.source_ip, head.scheme)) or _forwarded(head.source_ip, head.scheme)
            return prefix + rid + b"\r\n"
        lines = b""
        if req.forwarded_for is None:
            lines = _XFF_LINES.get(head.source_ip) or _xff_line(head.source_ip)
        if not req.has_proto:
            lines += _PROTO_LINES.get(head.scheme) or b"x-forwarded-proto: %s\r\n" % head.scheme
        if not req.has_request_id:
            if not self._request_id:
                self._request_id = self.ctx.request_id()  # one id for the request and its mirrors
            lines += b"x-request-id: %s\r\n" % self._request_id
        return lines

    def _rebuilt_head(self, route: Route, action: Forward, backend: Backend | None, *, mirror: bool) -> bytes:
        """The request head for the upstream, rebuilt from its parts: when the target, the host or
        the framing changes, or the client's head had to be parsed (see ``_Hot.in_place`` for
        when the client's bytes are edited instead)."""
        req = self.request
        lines = self._forwarding_lines()
        head = self._head_fields()
        headers = head.headers
        if req.forwarded_for is not None:
            headers = [(k, v) for k, v in headers if k != b"x-forwarded-for"]
            lines += b"x-forwarded-for: %s, %s\r\n" % (req.forwarded_for, head.source_ip.encode())
        if route.request_headers is not None:
            headers = route.request_headers.apply(headers)
        if backend is not None and backend.request_headers is not None:
            headers = backend.request_headers.apply(headers)
        host = action.host_rewrite or head.authority
        if mirror:
            host = wire.with_shadow_suffix(host)
        path = action.path_rewrite.apply(head.path) if action.path_rewrite is not None else head.path
        target = path + b"?" + head.query if head.query else path
        if head.method == b"OPTIONS" and head.path == b"*":
            target = b"*"
        keep = _UPGRADE_HEADERS if req.upgrade is not None and not mirror else frozenset()
        length, chunked = req.length, req.chunked
        if mirror and chunked:
            length, chunked = self._body_size, False  # the whole body is known by then
        return wire.request_head(
            head.method, target, host, headers, length=length, chunked=chunked, keep=keep, extra=lines
        )

    def _mirror(self) -> None:
        """Send a copy to each mirror cluster whose share this request falls in (once the body is
        complete; only when all of it is still held)."""
        route, plan = self._route, self._plan
        if self._mirrored or route is None or plan is None or not isinstance(route.action, Forward):
            return
        self._mirrored = True
        action = route.action
        if not action.mirrors or self._dropped or self.request.upgrade is not None:
            return
        for mirror in action.mirrors:
            if not self._chance(mirror.per_million):
                continue
            cluster = plan.clusters.get(mirror.cluster)
            if cluster is None:
                continue
            endpoint = cluster.pick(PickContext(self._hash))
            if endpoint is None:
                continue
            head = self._rebuilt_head(route, action, None, mirror=True)
            cpool = _pool_for(self.ctx, mirror.cluster, cluster, self.request)
            Shadow(
                self.ctx,
                cpool,
                endpoint,
                head,
                list(self._body),
                self.request.head.method == b"HEAD",
                action.timeout,
            ).start()


# --- what the hot path derives from the plan once ---------------------------------------------------------

# Derived values are memoized by the identity of the plan object they come from: plans are immutable, so
# a value never goes stale; each entry keeps its object alive, so an id is not reused while its entry
# exists. A new plan brings new objects; the memo is emptied when it outgrows its bound.
_MEMO_LIMIT = 4096
_HOT: dict[int, _Hot] = {}
_EDITS: dict[int, wire.HeadEdit] = {}
_READS_HEADERS: dict[int, tuple[VirtualHost, bool]] = {}
_XFF_LINES: dict[str, bytes] = {}
_FORWARDED: dict[tuple[str, bytes], bytes] = {}
_PROTO_LINES = {b"http": b"x-forwarded-proto: http\r\n", b"https": b"x-forwarded-proto: https\r\n"}

# Route matches that read the path (and method) only, unless their conditions name headers.
_PATH_MATCHES = (AnyPath, ConnectMatch, ExactPath, PrefixPath, RegexPath, SeparatedPrefixPath)


class _Hot:
    """What forwarding by one route needs from it on every request, derived once.

    ``backend`` is the route's only backend (None when it has several: each request picks one, and
    the edits are then looked up for it); ``request_edits`` and ``response_edits`` the route's and
    that backend's header mutations as head edits. ``in_place``: a request head that arrived as
    forwardable bytes is edited in place, as no rewrite changes its target or host.
    """

    __slots__ = ("backend", "in_place", "request_edits", "response_edits", "route")

    def __init__(self, route: Route) -> None:
        self.route = route
        action = route.action
        assert isinstance(action, Forward)
        self.backend = action.backends[0] if len(action.backends) == 1 else None
        backend_request = self.backend.request_headers if self.backend is not None else None
        backend_response = self.backend.response_headers if self.backend is not None else None
        self.request_edits = _edits(route.request_headers, backend_request)
        self.response_edits = _edits(route.response_headers, backend_response)
        self.in_place = action.host_rewrite is None and action.path_rewrite is None


def _new_hot(route: Route) -> _Hot:
    if len(_HOT) >= _MEMO_LIMIT:
        _HOT.clear()
    hot = _HOT[id(route)] = _Hot(route)
    return hot


def _edit(mutation: HeaderMutation) -> wire.HeadEdit:
    edit = _EDITS.get(id(mutation))
    if edit is None or edit.mutation is not mutation:
        if len(_EDITS) >= _MEMO_LIMIT:
            _EDITS.clear()
        edit = _EDITS[id(mutation)] = wire.HeadEdit(mutation)
    return edit


def _edits(first: HeaderMutation | None, second: HeaderMutation | None) -> tuple[wire.HeadEdit, ...]:
    """The head edits of a route's and a backend's mutation (either may be absent), in that order."""
    if first is None:
        return () if second is None else (_edit(second),)
    return (_edit(first),) if second is None else (_edit(first), _edit(second))


def _reads_headers(vhost: VirtualHost) -> tuple[VirtualHost, bool]:
    """Whether choosing a route of ``vhost`` may read request headers (a header or gRPC condition, or
    a match kind this module does not know), memoized."""
    reads = False
    for route in vhost.routes:
        match = route.match
        when = getattr(match, "when", None)
        if not isinstance(match, _PATH_MATCHES) or (when is not None and (when.headers or when.grpc)):
            reads = True
            break
    if len(_READS_HEADERS) >= _MEMO_LIMIT:
        _READS_HEADERS.clear()
    entry = _READS_HEADERS[id(vhost)] = (vhost, reads)
    return entry


def _forwarded(source_ip: str, scheme: bytes) -> bytes:
    """The forwarding lines of a request that carried none, up to its id."""
    if len(_FORWARDED) >= _MEMO_LIMIT:
        _FORWARDED.clear()
    prefix = b"%sx-forwarded-proto: %s\r\nx-request-id: " % (_xff_line(source_ip), scheme)
    _FORWARDED[(source_ip, scheme)] = prefix
    return prefix


def _xff_line(source_ip: str) -> bytes:
    line = _XFF_LINES.get(source_ip)
    if line is None:
        if len(_XFF_LINES) >= _MEMO_LIMIT:
            _XFF_LINES.clear()
        line = _XFF_LINES[source_ip] = b"x-forwarded-for: %s\r\n" % source_ip.encode()
    return line


_UPGRADE_HEADERS = frozenset({b"connection", b"upgrade"})


def _pool_for(ctx: Context, name: str, cluster: Cluster, request: Request) -> ClusterPool | H2ClusterPool:
    """The pool that speaks the cluster's protocol: HTTP/2 for ``http2`` clusters, and for
    ``downstream`` ones when the request came over HTTP/2; else HTTP/1.1."""
    protocol = cluster.protocol
    if protocol == "http2" or (protocol == "downstream" and request.http2):
        return ctx.pools.h2.cluster(name, cluster.limits)
    cpool = ctx.pools.by_name.get(name)
    if cpool is not None and cpool.limits is cluster.limits:
        return cpool  # (Pools.cluster, without the call: this runs for every request)
    return ctx.pools.cluster(name, cluster.limits)


def _give_back(conn: UpstreamConnection | H2Stream) -> None:
    """Return a connection (or stream) that arrived after its requester gave up."""
    if isinstance(conn, H2Stream):
        conn.release()
    else:
        conn.pool.cluster.release(conn)


class Shadow:
    """A mirrored request: sent with the whole body, its response read and dropped. It never
    delays or fails the request it copies; it gives up after the route's timeout (or
    ``SHADOW_TIMEOUT``)."""

    __slots__ = (
        "_body",
        "_conn",
        "_cpool",
        "_ctx",
        "_endpoint",
        "_head",
        "_head_request",
        "_live",
        "_timeout",
        "_timer",
        "_waiter",
    )

    def __init__(
        self,
        ctx: Context,
        cpool: ClusterPool | H2ClusterPool,
        endpoint: EndpointState,
        head: bytes,
        body: list[bytes],
        head_request: bool,
        timeout: float | None,
    ) -> None:
        self._ctx = ctx
        self._cpool = cpool
        self._endpoint = endpoint
        self._head = head
        self._body = body
        self._head_request = head_request
        self._timeout = timeout or SHADOW_TIMEOUT
        self._conn: UpstreamConnection | H2Stream | None = None
        self._waiter: Waiter | H2Waiter | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._live = False

    def start(self) -> None:
        self._cpool.stats.rq_total += 1
        self._endpoint.active += 1
        self._live = True
        self._timer = self._ctx.loop.call_later(self._timeout, self._give_up)
        got = self._cpool.acquire(self._endpoint, self)
        if got is None:
            self._done()
        elif isinstance(got, (UpstreamConnection, H2Stream)):
            self.connection_ready(got)
        else:
            self._waiter = got

    def connection_ready(self, conn: UpstreamConnection | H2Stream) -> None:
        self._waiter = None
        if not self._live:
            _give_back(conn)
            return
        self._conn = conn
        conn.send_request(
            self, self._head, self._body, end=True, chunked=False, head_request=self._head_request
        )

    def connection_failed(self) -> None:
        self._waiter = None
        self._done()

    def response_head(self, head: ResponseHead) -> None:
        self._cpool.stats.count_status(head.status)

    def response_whole(self, head: bytes, data: bytes) -> None:
        self._cpool.stats.count_status(int(head[9:12]))
        self.response_end()

    def response_body(self, data: bytes) -> None:
        pass  # a shadow's response is read only to keep its connection reusable

    def response_flush(self) -> None:
        pass

    def response_end(self) -> None:
        self._conn = None
        self._done()

    def upstream_failed(self, reset: bool) -> None:
        self._conn = None
        self._done()

    def upstream_write_paused(self) -> None:
        pass  # the whole body is already written; the transport buffers it

    def upstream_write_resumed(self) -> None:
        pass

    def upgraded(self, head: ResponseHead, leftover: bytes) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        self._done()

    def response_trailers(self, trailers: Headers) -> None:
        pass  # read and dropped, as the body

    def upstream_refused(self) -> None:
        self._conn = None
        self._done()

    def _give_up(self) -> None:
        self._timer = None
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
        self._done()

    def _done(self) -> None:
        if not self._live:
            return
        self._live = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._endpoint.active -= 1
