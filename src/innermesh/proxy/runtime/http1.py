"""The downstream HTTP/1.1 server protocol: one client connection, parsed with httptools (llhttp).

Each request head becomes a ``Request`` and an ``Exchange`` (forward.py), started once the bytes of
the current read are parsed (so a small request's body is already in hand when it is routed).
Requests are served one at a time, in order: a pipelined request is parsed and queued, and reading
stops until the one before it is answered.

What never reaches an upstream: llhttp rejects bad framing (both Content-Length and
Transfer-Encoding, duplicate or invalid Content-Length, bad chunk sizes), invalid header names and
values, obs-fold and bare LF; this module adds the rest of RFC 9112's rules: exactly one Host on
HTTP/1.1, only the ``chunked`` transfer coding, versions 1.0 and 1.1, and the size limits (a head
over ``MAX_HEAD_BYTES`` or with more than ``MAX_HEADERS`` fields gets 431). Each gets the proxy's
own answer and the connection is closed.

The fast path forwards the head as the client sent it, with the proxy's lines appended (see
``Request.raw``): it is captured when the whole head arrived at the start of one read.

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

# Request headers that need more than being kept in the header list. Those mapped to True mean the
# head cannot be forwarded as received; "Connection: keep-alive" alone (which many clients send) is
# true of the upstream hop too, so only other Connection values do.
_SPECIAL = {
    b"host": False,
    b"content-length": False,
    b"transfer-encoding": False,
    b"x-forwarded-proto": False,
    b"x-request-id": False,
    b"connection": False,
    b"keep-alive": True,
    b"proxy-connection": True,
    b"te": True,
    b"trailer": True,
    b"upgrade": True,
    b"expect": True,
    b"x-forwarded-for": True,
}
_TUNNEL_KEEP = frozenset({b"connection", b"upgrade"})


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing a request that must be refused."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class _Incoming:
    """The per-request facts the connection needs besides the exchange."""

    __slots__ = (
        "authority",
        "chunked",
        "complete",
        "exchange",
        "expect",
        "fields",
        "forwarded_for",
        "has_proto",
        "has_request_id",
        "headers",
        "hosts",
        "http11",
        "keep_alive",
        "length",
        "rebuild",
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
        self.chunked = False
        self.tokens: set[bytes] = set()
        self.rebuild = False
        self.expect = False
        self.upgrade: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.has_proto = False
        self.has_request_id = False
        self.keep_alive = True
        self.http11 = True
        self.complete = False
        self.exchange: Exchange | None = None


class Http1Server(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (or 1.0), and the ``Downstream`` of its exchanges."""

    __slots__ = (
        "_active",
        "_active_in",
        "_between",
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
        "_raw",
        "_reading_paused",
        "_resp_chunked",
        "_response_started",
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
        self._parser = httptools.HttpRequestParser(self)
        self._peer = ""
        self._parsing: _Incoming | None = None  # the request being parsed
        self._active_in: _Incoming | None = None  # the request being answered
        self._active: Exchange | None = None
        self._queue: deque[_Incoming] = deque()  # parsed, waiting for their turn
        self._between = True  # no request is partly parsed
        self._in_head = False
        self._head_pending = 0
        self._raw: bytes | None = None
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
        if self._tunnel is not None:
            self._tunnel.data(0, data)
            return
        if self._upgrading or self._error is not None:
            self._hold_early(data)
            return
        if self._between:
            end = data.find(b"\r\n\r\n")
            self._raw = data[: end + 4] if end > 0 else None
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
        for inc in (self._active_in, self._parsing, *self._queue):
            if inc is not None and inc.exchange is not None:
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

    # -- httptools callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between = False
        self._in_head = True
        self._head_pending = 0
        self._parsing = _Incoming()

    def on_url(self, url: bytes) -> None:
        inc = self._parsing
        assert inc is not None
        inc.url += url
        inc.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        inc = self._parsing
        assert inc is not None
        if not self._in_head:
            return  # a trailer field of a chunked body: not forwarded (see the package README)
        inc.size += len(name) + len(value) + 4
        inc.fields += 1
        if inc.fields > MAX_HEADERS:
            raise _Reject(errors.HEADERS_TOO_LARGE)
        name = name.lower()
        special = _SPECIAL.get(name)
        if special is None:
            inc.headers.append((name, value))
            return
        if special:
            inc.rebuild = True
        if name == b"host":
            inc.hosts += 1
            inc.authority = value.lower()
            return
        if name == b"content-length":
            inc.length = int(value)
        elif name == b"transfer-encoding":
            inc.transfer_encoding = value
        elif name == b"connection":
            inc.tokens |= wire.connection_tokens(value)
            if value.lower() != b"keep-alive":
                inc.rebuild = True
        elif name == b"expect":
            if value.lower() == b"100-continue":
                inc.expect = True
                return  # answered by the proxy (see Exchange._forward), never forwarded
        elif name == b"upgrade":
            inc.upgrade = value
        elif name == b"x-forwarded-for":
            inc.forwarded_for = value if inc.forwarded_for is None else inc.forwarded_for + b", " + value
        elif name == b"x-forwarded-proto":
            inc.has_proto = True
        elif name == b"x-request-id":
            inc.has_request_id = True
        inc.headers.append((name, value))

    def on_headers_complete(self) -> None:
        inc = self._parsing
        assert inc is not None
        self._in_head = False
        self._head_pending = 0
        if inc.size > MAX_HEAD_BYTES:
            raise _Reject(errors.HEADERS_TOO_LARGE)
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(errors.BAD_REQUEST)
        http11 = inc.http11 = version == "1.1"
        if (http11 and inc.hosts != 1) or inc.hosts > 1:
            raise _Reject(errors.BAD_REQUEST)  # RFC 9112 section 3.2: exactly one Host
        if inc.transfer_encoding is not None:
            if inc.transfer_encoding.strip().lower() != b"chunked":
                raise _Reject(errors.BAD_REQUEST)  # no transfer coding but chunked is implemented
            inc.chunked = True
        method: bytes = parser.get_method()
        url = inc.url
        raw = self._raw
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        elif method == b"CONNECT":
            path, query = b"", b""
            inc.authority = url.lower()
        elif url == b"*" and method == b"OPTIONS":
            path, query, raw = b"*", b"", None
        else:
            # Absolute form (RFC 9112 section 3.2.2): the target's authority replaces Host.
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(errors.BAD_REQUEST) from None
            if not parsed.host:
                raise _Reject(errors.BAD_REQUEST)
            inc.authority = parsed.host.lower() + (b":%d" % parsed.port if parsed.port else b"")
            path, query, raw = parsed.path or b"/", parsed.query or b"", None
        if b"#" in path:
            path = path.partition(b"#")[0]
        inc.keep_alive = http11 and b"close" not in inc.tokens
        if inc.upgrade is not None and not parser.should_upgrade():
            inc.upgrade = None  # an Upgrade header without "Connection: upgrade" asks for nothing
        if raw is not None and (inc.rebuild or not http11 or not raw.startswith(method)):
            raw = None
        head = RequestHead(method, path, query, inc.authority, inc.headers, b"http", self._peer)
        request = Request(
            head,
            raw,
            inc.length,
            inc.chunked,
            inc.forwarded_for,
            inc.has_proto,
            inc.has_request_id,
            inc.upgrade,
            inc.expect and http11,
        )
        inc.exchange = Exchange(self._ctx, self, self.listener, request)
        self._queue.append(inc)
        if len(self._queue) > 1 or self._active is not None:
            self._update_reading()  # pipelined: read no further until it is this one's turn

    def on_body(self, body: bytes) -> None:
        inc = self._parsing
        if inc is not None and inc.exchange is not None:
            inc.exchange.request_body(body)

    def on_message_complete(self) -> None:
        inc = self._parsing
        assert inc is not None
        inc.keep_alive = inc.keep_alive and self._parser.should_keep_alive()
        inc.complete = True
        self._parsing = None
        self._between = True
        self._raw = None
        if inc.exchange is not None:
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
            assert exchange is not None
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
            or (parsing is not None and parsing.exchange is not None and parsing.exchange.holding)
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
        assert inc.exchange is not None
        self._response_started = True
        close = self._will_close(inc)
        status = head.status
        bodyless = (
            status < 200 or status == 204 or status == 304 or inc.exchange.request.head.method == b"HEAD"
        )
        chunked = False
        if head.raw is not None and headers is None and not close:
            data = head.raw
            chunked = head.chunked
        else:
            length = head.length
            if not bodyless and length is None:
                if inc.http11:
                    chunked = True
                else:
                    close = self._closing = True  # HTTP/1.0 has no chunks: the close ends the body
            data = wire.response_head(
                head.status,
                head.reason,
                headers if headers is not None else head.headers,
                length=length,
                chunked=chunked,
                close=close,
            )
        self._resp_chunked = chunked and not bodyless
        self._out.append(data)
        if end:
            self.flush_response()

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
        assert inc.exchange is not None
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
            data = wire.response_head(
                head.status,
                head.reason,
                headers if headers is not None else head.headers,
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
        inc = self._parsing
        self._parsing = None
        if inc is not None and inc.exchange is not None:
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
        inc, self._parsing = self._parsing, None
        if inc is not None and inc.exchange is not None:
            inc.exchange.downstream_lost()
        if self.transport is not None:
            self.transport.close()
