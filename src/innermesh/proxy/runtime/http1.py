"""The downstream HTTP/1.1 server protocol: one client connection, parsed with httptools (llhttp).

Each request head becomes a ``Request`` and an ``Exchange`` (forward.py), started once the bytes of
the current read are parsed (so a small request's body is already in hand when it is routed).
Requests are served one at a time, in order: a pipelined request is parsed and queued, and reading
stops until the one before it is answered.

Two paths read requests, with two llhttp parsers that each see whole messages:

- The simple path takes a request whose head arrives whole at the start of a read on an idle
  connection, whose head ``wire.simple_request`` accepts (HTTP/1.1, origin form, one Host, no
  hop-by-hop field but ``Connection: keep-alive``, no Transfer-Encoding, Expect or X-Forwarded-For)
  and whose body (by Content-Length) does not run into a next request in that read. Its parser has no
  callbacks: llhttp validates the bytes, the scan has found the few fields that matter, and the head
  goes upstream as the bytes received, with lines added (``Request.raw``).
- The general path takes everything else (pipelined requests, heads split over reads, chunked
  bodies, hop-by-hop fields, HTTP/1.0, absolute or authority targets): its parser calls back per
  field, and the head is rebuilt for the upstream.

What never reaches an upstream: llhttp rejects bad framing (both Content-Length and
Transfer-Encoding, duplicate or invalid Content-Length, bad chunk sizes), invalid header names and
values, obs-fold and bare LF; this module adds the rest of RFC 9112's rules: exactly one Host on
HTTP/1.1, only the ``chunked`` transfer coding, versions 1.0 and 1.1, and the size limits (a head
over ``MAX_HEAD_BYTES`` or with more than ``MAX_HEADERS`` fields gets 431). Each gets the proxy's
own answer and the connection is closed.

Keep-alive: the client's wish (HTTP/1.1 without ``Connection: close``; HTTP/1.0 connections are
closed after one response) and llhttp's verdict, read inside ``on_message_complete``. When the proxy
will close the connection after a response (the client asked, the proxy is draining, the request
body was not read to its end, a malformed request follows, an upgrade was refused) the response says
``connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from innermesh.proxy.plan import Headers, RequestHead
from innermesh.proxy.runtime import errors, wire
from innermesh.proxy.runtime.context import Context, ListenerHandle
from innermesh.proxy.runtime.errors import Answer
from innermesh.proxy.runtime.forward import Exchange
from innermesh.proxy.runtime.limits import HIGH_WATER, LOW_WATER, MAX_HEAD_BYTES, MAX_HEADERS
from innermesh.proxy.runtime.messages import Request, ResponseHead
from innermesh.proxy.runtime.tcp import Tunnel

log = logging.getLogger(__name__)

# Request headers the general path reads; the others are kept in the header list as they are.
_SPECIAL = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-request-id",
        b"connection",
        b"upgrade",
        b"expect",
    }
)
_TUNNEL_KEEP = frozenset({b"connection", b"upgrade"})


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing a request that must be refused."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class _NoEvents:
    """The simple path's parser protocol: llhttp validates and frames, nothing is called back."""


_NO_EVENTS = _NoEvents()


class _Incoming:
    """A request the connection has read the head of, until it is answered."""

    __slots__ = ("complete", "exchange", "http11", "keep_alive", "upgrade")

    def __init__(
        self, exchange: Exchange, http11: bool, keep_alive: bool, complete: bool, upgrade: bytes | None
    ) -> None:
        self.exchange = exchange
        self.http11 = http11
        self.keep_alive = keep_alive
        self.complete = complete  # the whole request (its body) has been read
        self.upgrade = upgrade


class _Parse:
    """The general path's state while one request's head and body are parsed."""

    __slots__ = (
        "authority",
        "expect",
        "fields",
        "forwarded_for",
        "has_proto",
        "has_request_id",
        "headers",
        "hosts",
        "incoming",
        "length",
        "size",
        "tokens",
        "transfer_encoding",
        "upgrade",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: Headers = []
        self.size = 0
        self.fields = 0
        self.hosts = 0
        self.authority = b""
        self.length: int | None = None
        self.transfer_encoding: bytes | None = None
        self.tokens: set[bytes] = set()
        self.expect = False
        self.upgrade: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.has_proto = False
        self.has_request_id = False
        self.incoming: _Incoming | None = None  # once the head is complete


class Http1Server(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (or 1.0), and the ``Downstream`` of its exchanges."""

    __slots__ = (
        "_active",
        "_active_in",
        "_between",
        "_body_left",
        "_checker",
        "_closing",
        "_ctx",
        "_early",
        "_error",
        "_head_pending",
        "_in_head",
        "_lost",
        "_out",
        "_parser",
        "_parsing",
        "_peer",
        "_queue",
        "_reading_paused",
        "_resp_chunked",
        "_response_started",
        "_simple_in",
        "_starting",
        "_tunnel",
        "_upgrading",
        "_write_blocked",
        "listener",
        "transport",
    )

    def __init__(self, ctx: Context, listener: ListenerHandle) -> None:
        self._ctx = ctx
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)  # the general path's
        self._checker = httptools.HttpRequestParser(_NO_EVENTS)  # the simple path's
        self._body_left = 0  # body bytes the simple path's request still has to receive
        self._peer = ""
        self._parsing: _Parse | None = None  # the request the general parser is in
        self._active_in: _Incoming | None = None  # the request being answered
        self._simple_in: _Incoming | None = None  # the simple path's (see _simple_request)
        self._active: Exchange | None = None
        self._queue: deque[_Incoming] = deque()  # parsed, waiting for their turn
        self._between = True  # the general parser is between requests
        self._in_head = False
        self._head_pending = 0
        self._out: list[bytes] = []
        self._response_started = False
        self._resp_chunked = False
        self._starting = False
        self._closing = False
        self._error: Answer | None = None
        self._upgrading = False
        self._early: list[bytes] = []
        self._tunnel: Tunnel | None = None
        self._reading_paused = False
        self._write_blocked = False
        self._lost = False

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.start_with(cast(asyncio.Transport, transport), b"")

    def start_with(self, transport: asyncio.Transport, early: bytes) -> None:
        """Serve ``transport`` (accepted here, or handed over by protocol detection with the bytes it
        had read)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self.listener.opened(self)
        if early:
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self._body_left:
            self._simple_body(data)
            return
        if self._tunnel is not None:
            self._tunnel.data(0, data)
            return
        if self._upgrading or self._error is not None:
            self._hold_early(data)
            return
        if self._between and self._active is None and not self._closing:
            end = data.find(b"\r\n\r\n") + 4
            size = len(data)
            if 4 < end <= MAX_HEAD_BYTES:
                request = wire.simple_request(data if end == size else data[:end], self._peer, MAX_HEADERS)
                if request is not None and size - end <= (request.length or 0):
                    self._simple_request(request, data, end, size)
                    return
        self._general(data)

    def eof_received(self) -> bool:
        if self._tunnel is not None:
            return self._tunnel.eof(0)
        # As Envoy does, an HTTP client's EOF ends the connection: closing is how clients give up on
        # a request (a timeout, a cancelled call), and its upstream work should stop with it.
        # connection_lost follows and drops the exchanges.
        return False

    def pause_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.paused(0)
            return
        self._write_blocked = True
        if self._active is not None:
            self._active.downstream_paused()

    def resume_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.resumed(0)
            return
        self._write_blocked = False
        if self._active is not None:
            self._active.downstream_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.listener.closed(self)
        if self._tunnel is not None:
            self._tunnel.lost(0)
            return
        parsing = self._parsing.incoming if self._parsing is not None else None
        for inc in (self._active_in, parsing, *self._queue):
            if inc is not None:
                inc.exchange.downstream_lost()
        self._queue.clear()
        self._active = self._active_in = self._parsing = None

    # -- draining (the listener is going away) -----------------------------------------------------------

    def drain(self) -> None:
        self._closing = True
        if self._active is None and self._parsing is None and not self._queue and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- the simple path ---------------------------------------------------------------------------------

    def _simple_request(self, request: Request, data: bytes, end: int, size: int) -> None:
        """Serve a request ``wire.simple_request`` read: ``data`` (``size`` bytes) holds its head
        (``end`` bytes) and nothing but (some of) its body after it."""
        try:
            self._checker.feed_data(data)
        except httptools.HttpParserError as e:
            self._malformed(errors.BAD_REQUEST, str(e))
            return
        exchange = self._active = Exchange(self._ctx, self, self.listener, request, whole=self)
        left = self._body_left = (request.length or 0) - (size - end)
        # The simple path's requests are never queued: one _Incoming per connection serves them all.
        inc = self._simple_in
        if inc is None:
            inc = self._simple_in = _Incoming(exchange, True, True, not left, None)
        else:
            inc.exchange = exchange
            inc.complete = not left
        self._active_in = inc
        self._response_started = False
        if size > end:
            exchange.request_body(data[end:])
            if not left:
                exchange.request_end()
        if self._write_blocked:
            exchange.downstream_paused()
        exchange.start()

    def _simple_body(self, data: bytes) -> None:
        """More of the body of the simple path's request (and perhaps the next request after it)."""
        left = self._body_left
        rest = b""
        if len(data) > left:
            data, rest = data[:left], data[left:]
        self._body_left = left - len(data)
        self._checker.feed_data(data)  # a body by Content-Length: llhttp only counts it
        inc = self._active_in
        if inc is not None and not inc.complete:
            inc.exchange.request_body(data)
            if not self._body_left:
                inc.complete = True
                inc.exchange.request_end()
        if rest:
            self.data_received(rest)

    # -- the general path --------------------------------------------------------------------------------

    def _general(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgrading = True
            self._hold_early(data[e.args[0] :])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._malformed(
                cause.answer if isinstance(cause, _Reject) else errors.BAD_REQUEST, str(cause or e)
            )
            return
        except httptools.HttpParserError as e:
            self._malformed(errors.BAD_REQUEST, str(e))
            return
        if self._in_head:
            self._head_pending += len(data)
            if self._head_pending > MAX_HEAD_BYTES:
                self._malformed(errors.HEADERS_TOO_LARGE, "request head too large")
                return
        if self._active is None:
            self._next()

    def on_message_begin(self) -> None:
        self._between = False
        self._in_head = True
        self._head_pending = 0
        self._parsing = _Parse()

    def on_url(self, url: bytes) -> None:
        p = self._parsing
        assert p is not None
        p.url += url
        p.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        p = self._parsing
        assert p is not None
        if not self._in_head:
            return  # a trailer field of a chunked body: not forwarded (see the package README)
        p.size += len(name) + len(value) + 4
        p.fields += 1
        if p.fields > MAX_HEADERS:
            raise _Reject(errors.HEADERS_TOO_LARGE)
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp drops the leading whitespace, not the trailing
        if name not in _SPECIAL:
            p.headers.append((name, value))
            return
        if name == b"host":
            p.hosts += 1
            p.authority = value.lower()
            return
        if name == b"content-length":
            p.length = int(value)
        elif name == b"transfer-encoding":
            p.transfer_encoding = value
        elif name == b"connection":
            p.tokens |= wire.connection_tokens(value)
        elif name == b"expect":
            if value.lower() == b"100-continue":
                p.expect = True
                return  # answered by the proxy (see Exchange._forward), never forwarded
        elif name == b"upgrade":
            p.upgrade = value
        elif name == b"x-forwarded-for":
            p.forwarded_for = value if p.forwarded_for is None else p.forwarded_for + b", " + value
        elif name == b"x-forwarded-proto":
            p.has_proto = True
        elif name == b"x-request-id":
            p.has_request_id = True
        p.headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parsing
        assert p is not None
        self._in_head = False
        self._head_pending = 0
        if p.size > MAX_HEAD_BYTES:
            raise _Reject(errors.HEADERS_TOO_LARGE)
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(errors.BAD_REQUEST)
        http11 = version == "1.1"
        if (http11 and p.hosts != 1) or p.hosts > 1:
            raise _Reject(errors.BAD_REQUEST)  # RFC 9112 section 3.2: exactly one Host
        chunked = False
        if p.transfer_encoding is not None:
            if p.transfer_encoding.strip().lower() != b"chunked":
                raise _Reject(errors.BAD_REQUEST)  # no transfer coding but chunked is implemented
            chunked = True
        method: bytes = parser.get_method()
        url = p.url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        elif method == b"CONNECT":
            path, query = b"", b""
            p.authority = url.lower()
        elif url == b"*" and method == b"OPTIONS":
            path, query = b"*", b""
        else:
            # Absolute form (RFC 9112 section 3.2.2): the target's authority replaces Host.
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(errors.BAD_REQUEST) from None
            if not parsed.host:
                raise _Reject(errors.BAD_REQUEST)
            p.authority = parsed.host.lower() + (b":%d" % parsed.port if parsed.port else b"")
            path, query = parsed.path or b"/", parsed.query or b""
        if b"#" in path:
            path = path.partition(b"#")[0]
        upgrade = p.upgrade
        if upgrade is not None and not parser.should_upgrade():
            upgrade = None  # an Upgrade header without "Connection: upgrade" asks for nothing
        head = RequestHead(method, path, query, p.authority, p.headers, b"http", self._peer)
        request = Request(
            head,
            None,
            p.length,
            chunked,
            p.forwarded_for,
            p.has_proto,
            p.has_request_id,
            upgrade,
            p.expect and http11,
        )
        exchange = Exchange(self._ctx, self, self.listener, request, whole=self)
        keep_alive = http11 and b"close" not in p.tokens
        inc = p.incoming = _Incoming(exchange, http11, keep_alive, False, upgrade)
        self._queue.append(inc)
        if len(self._queue) > 1 or self._active is not None:
            self._update_reading()  # pipelined: read no further until it is this one's turn

    def on_body(self, body: bytes) -> None:
        p = self._parsing
        if p is not None and p.incoming is not None:
            p.incoming.exchange.request_body(body)

    def on_message_complete(self) -> None:
        p = self._parsing
        assert p is not None
        self._parsing = None
        self._between = True
        inc = p.incoming
        if inc is not None:
            inc.keep_alive = inc.keep_alive and self._parser.should_keep_alive()
            inc.complete = True
            inc.exchange.request_end()

    # -- serving requests in order -----------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next parsed request, or close when nothing more will be served."""
        if self._starting:
            return  # an exchange answered while being started: the loop below carries on
        self._starting = True
        try:
            self._serve_queue()
        finally:
            self._starting = False

    def _serve_queue(self) -> None:
        while self._active is None and not self._lost:
            if not self._queue:
                if self._error is not None:
                    self._answer_error(self._error)  # after the requests before it, and closes
                elif self._closing:
                    if self._parsing is None and self.transport is not None:
                        self.transport.close()
                else:
                    self._update_reading()
                return
            inc = self._queue.popleft()
            exchange = inc.exchange
            self._active_in, self._active = inc, exchange
            self._response_started = False
            self._update_reading()
            if self._write_blocked:
                exchange.downstream_paused()
            exchange.start()

    def _update_reading(self) -> None:
        """Read unless a request waits for its turn or an exchange holds its request body."""
        if self.transport is None or self._lost or self._tunnel is not None:
            return
        active, parsing = self._active, self._parsing
        pause = (
            bool(self._queue and (active is not None or len(self._queue) > 1))
            or (active is not None and active.holding)
            or (parsing is not None and parsing.incoming is not None and parsing.incoming.exchange.holding)
            or (self._upgrading and sum(map(len, self._early)) > HIGH_WATER)
        )
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _will_close(self, inc: _Incoming) -> bool:
        """Whether the connection closes after the response to ``inc`` (its response says so)."""
        if (
            self._closing
            or not inc.keep_alive
            or not inc.complete
            or self._error is not None
            or inc.upgrade is not None
            or self._upgrading
        ):
            self._closing = True
        return self._closing

    # -- Downstream (called by the active exchange) ------------------------------------------------------

    def send_continue(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(wire.CONTINUE)

    def send_response_head(self, head: ResponseHead, headers: Headers | None, end: bool) -> None:
        inc = self._active_in
        assert inc is not None
        self._response_started = True
        close = self._will_close(inc)
        status = head.status
        bodyless = (
            status < 200 or status == 204 or status == 304 or inc.exchange.request.head.method == b"HEAD"
        )
        chunked = False
        raw = head.raw
        if raw is not None and headers is None and not close:
            data = raw
            chunked = head.chunked
        else:
            if headers is None:
                headers = head.headers if head.headers or raw is None else wire.header_fields(raw)
            length = head.length
            if not bodyless and length is None:
                if inc.http11:
                    chunked = True
                else:
                    close = self._closing = True  # HTTP/1.0 has no chunks: the close ends the body
            data = wire.response_head(
                head.status, head.reason, headers, length=length, chunked=chunked, close=close
            )
        self._resp_chunked = chunked and not bodyless
        self._out.append(data)
        if end:
            self.flush_response()

    def send_whole_response(self, status: int, head: bytes, body: bytes) -> None:
        inc = self._active_in
        assert inc is not None
        if self._will_close(inc):
            response = ResponseHead(status, b"", [], head, len(body), False)
            self.send_response_head(response, None, not body)
            if body:
                self.send_response_body(body)
                self.end_response()
            return
        self._response_started = True
        if self.transport is not None and not self._lost:
            if body:
                self.transport.writelines((head, body))
            else:
                self.transport.write(head)

    def send_response_body(self, data: bytes) -> None:
        if self._resp_chunked:
            self._out += wire.chunk(data)
        else:
            self._out.append(data)

    def flush_response(self) -> None:
        out = self._out
        if out and self.transport is not None and not self._lost:
            self.transport.writelines(out)
        out.clear()

    def end_response(self) -> None:
        if self._resp_chunked:
            self._out.append(wire.LAST_CHUNK)
        self.flush_response()

    def send_local(self, status: int, headers: Headers, body: bytes) -> None:
        inc = self._active_in
        assert inc is not None
        self._response_started = True
        close = self._will_close(inc)
        head_only = inc.exchange.request.head.method == b"HEAD"
        if self.transport is not None and not self._lost:
            self.transport.write(wire.whole_response(status, headers, body, close=close, head_only=head_only))

    def pause_request_body(self) -> None:
        self._update_reading()

    def resume_request_body(self) -> None:
        self._update_reading()

    def exchange_done(self) -> None:
        inc = self._active_in
        self._active = self._active_in = None
        if inc is not None and not inc.complete:
            # The answer came before the request body was read: nothing tells where the next
            # request would start, so the connection ends here.
            self._closing = True
            self._abort_parsing()
            return
        if self._queue or self._closing or self._error is not None or self._reading_paused:
            self._next()
        # else: a kept-alive connection waiting for its next request, reading as it was

    def reset(self) -> None:
        self._active = self._active_in = None
        if self.transport is not None:
            self.transport.abort()

    def open_tunnel(self, peer: asyncio.Transport, head: ResponseHead, headers: Headers | None) -> Tunnel:
        assert self.transport is not None
        if head.raw is not None and headers is None:
            data = head.raw
        else:
            if headers is None:
                headers = head.headers if head.headers or head.raw is None else wire.header_fields(head.raw)
            data = wire.response_head(
                head.status,
                head.reason,
                headers,
                length=None,
                chunked=False,
                close=False,
                keep=_TUNNEL_KEEP,
            )
        self.flush_response()
        self.transport.write(data)
        tunnel = self._tunnel = Tunnel(self.transport, peer)
        for chunk in self._early:
            tunnel.data(0, chunk)
        self._early.clear()
        self._active = self._active_in = None
        self._queue.clear()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        return tunnel

    # -- failures ----------------------------------------------------------------------------------------

    def _hold_early(self, data: bytes) -> None:
        """Bytes after an upgrade request (or a malformed one): kept for a tunnel, bounded."""
        if data and self._error is None:
            self._early.append(data)
        self._update_reading()

    def _malformed(self, answer: Answer, detail: str) -> None:
        """A request the proxy refuses: answered once the requests before it are, then close."""
        log.debug("malformed request from %s on %s: %s", self._peer, self.listener.name, detail)
        self.listener.stats.bad_request += 1
        self._error = answer
        p = self._parsing
        self._parsing = None
        inc = p.incoming if p is not None else None
        if inc is not None:
            # The error is in the body of a request already being forwarded: it cannot complete.
            exchange = inc.exchange
            if exchange is self._active and self._response_started:
                exchange.downstream_lost()
                self.reset()
                return
            if exchange is self._active:
                exchange.downstream_lost()
                self._active = self._active_in = None
            elif inc in self._queue:
                self._queue.remove(inc)
        if self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        if self._active is None:
            self._next()

    def _answer_error(self, answer: Answer) -> None:
        self._closing = True
        if self.transport is not None and not self._lost:
            self.transport.write(
                wire.whole_response(
                    answer.status, errors.answer_headers(answer), errors.answer_body(answer), close=True
                )
            )
            self.transport.close()

    def _abort_parsing(self) -> None:
        p, self._parsing = self._parsing, None
        if p is not None and p.incoming is not None:
            p.incoming.exchange.downstream_lost()
        if self.transport is not None:
            self.transport.close()
