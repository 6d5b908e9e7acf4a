"""An echo backend for proxy tests: a real process that says who served a request and what it saw.

Run it as ``python -m support.echo_backend --name N --port P`` (the tests directory on the path;
port 0 picks a free one). When ready it prints one line, ``READY http=<port> tcp=<port or 0>``.

HTTP (aiohttp, so its HTTP is independent of the proxy's): every request is answered with JSON
naming the endpoint (``--name``), the method, path, query, HTTP version, the client port of the
connection it came on, the headers as received (in order, names lower-cased) and the body's length
and sha256 (the body itself too when it is at most
4 KiB), read as a stream, so chunked and very large bodies work. Query parameters change the answer:

- ``delay=<ms>``: wait before answering (a slow upstream);
- ``read_delay=<ms>``: wait before reading the request body (an upstream that reads slowly);
- ``status=<code>``: answer with that status;
- ``size=<n>``: answer with n bytes of ``x``, streamed in 256 KiB writes, instead of JSON;
- ``chunked=1`` (with size): stream without content-length;
- ``header=<name>:<value>`` (repeatable): add a response header;
- ``head_body_delay=<ms>`` (with size, on HEAD): misbehave: send the body after the head anyway,
  that long after it;
- ``reset=before_headers``: close the connection without answering;
  ``reset=mid_body``: send the head and half the body (content-length says all), then close.

``GET /_count`` answers ``{"endpoint": ..., "count": <requests served so far>}`` and ``GET /_last``
the JSON answer of the last request answered with JSON (what a mirror, whose answer nobody reads,
received); neither is counted. A request with ``Upgrade: websocket`` becomes a WebSocket that echoes every message back.

TCP (``--tcp-port``): an echo server; with ``--tcp-greeting`` it first sends ``hello from <name>\\n``
(a server-first protocol). When the client half-closes, it sends ``bye from <name>\\n`` and closes.

``EchoBackend`` starts and stops one as a subprocess for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import urllib.request
from typing import Any, cast

from aiohttp import WSMsgType, web

from support.child import start_child, stop_child

LOOPBACK = "127.0.0.1"
SMALL_BODY = 4096
STREAM_CHUNK = 256 * 1024


class _Echo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.last: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_count":
            return web.json_response({"endpoint": self.name, "count": self.count})
        if request.path == "/_last":
            return web.json_response(self.last)
        self.count += 1
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        q = request.query
        if "read_delay" in q:
            await asyncio.sleep(int(q["read_delay"]) / 1000)
        body_len, digest, small = await _read_body(request)
        if "delay" in q:
            await asyncio.sleep(int(q["delay"]) / 1000)
        reset = q.get("reset")
        if reset == "before_headers":
            _drop(request)
            return web.Response()
        status = int(q.get("status", "200"))
        extra = {}
        for item in q.getall("header", []):
            name, _, value = item.partition(":")
            extra[name] = value
        if "size" in q:
            return await self._stream(
                request, int(q["size"]), status, extra, chunked="chunked" in q, reset=reset
            )
        answer: dict[str, Any] = {
            "endpoint": self.name,
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "version": f"{request.version.major}.{request.version.minor}",
            "client_port": _client_port(request),
            "headers": [[k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_length": body_len,
            "body_sha256": digest,
        }
        if small is not None:
            answer["body"] = small.decode("latin-1")
        self.last = answer
        return web.json_response(answer, status=status, headers=extra)

    async def _stream(
        self,
        request: web.Request,
        size: int,
        status: int,
        extra: dict[str, str],
        *,
        chunked: bool,
        reset: str | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={**extra, "x-endpoint": self.name})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        if request.method == "HEAD":
            if "head_body_delay" in request.query:
                await asyncio.sleep(int(request.query["head_body_delay"]) / 1000)
                await response.write(b"x" * size)  # aiohttp sends it: the misbehaviour asked for
            await response.write_eof()
            return response
        block = b"x" * STREAM_CHUNK
        sent = 0
        limit = size // 2 if reset == "mid_body" else size
        while sent < limit:
            n = min(STREAM_CHUNK, limit - sent)
            await response.write(block if n == STREAM_CHUNK else block[:n])
            sent += n
        if reset == "mid_body":
            _drop(request)
            return response
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


async def _read_body(request: web.Request) -> tuple[int, str, bytes | None]:
    h = hashlib.sha256()
    n = 0
    head = bytearray()
    async for chunk in request.content.iter_chunked(STREAM_CHUNK):
        h.update(chunk)
        n += len(chunk)
        if len(head) <= SMALL_BODY:
            head += chunk[: SMALL_BODY + 1 - len(head)]
    return n, h.hexdigest(), bytes(head) if n <= SMALL_BODY else None


def _client_port(request: web.Request) -> int:
    """The port the request's connection came from: equal ports mean one reused connection."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return int(peer[1]) if peer else 0


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class _TcpEcho(asyncio.Protocol):
    def __init__(self, name: str, greeting: bool) -> None:
        self.name = name.encode()
        self.greeting = greeting
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        if self.greeting:
            self.transport.write(b"hello from " + self.name + b"\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write(b"bye from " + self.name + b"\n")
        self.transport.close()
        return True


async def _serve(args: argparse.Namespace) -> None:
    echo = _Echo(args.name)
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", echo.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    await site.start()
    http_port = runner.addresses[0][1]
    tcp_port = 0
    loop = asyncio.get_running_loop()
    tcp_server = None
    if args.tcp_port is not None:
        tcp_server = await loop.create_server(
            lambda: _TcpEcho(args.name, args.tcp_greeting), args.host, args.tcp_port
        )
        tcp_port = tcp_server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY http={http_port} tcp={tcp_port}", flush=True)
    await stop.wait()
    if tcp_server is not None:
        tcp_server.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="echo_backend")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tcp-port", type=int, default=None)
    parser.add_argument("--tcp-greeting", action="store_true")
    asyncio.run(_serve(parser.parse_args(argv)))


class EchoBackend:
    """One echo backend process. ``start`` waits for its READY line; ``stop`` ends it (SIGTERM, then
    SIGKILL); use it as a context manager so it is stopped whatever happens."""

    def __init__(self, name: str, *, tcp: bool = False, greeting: bool = False) -> None:
        self.name = name
        self.tcp = tcp
        self.greeting = greeting
        self.port = 0
        self.tcp_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> EchoBackend:
        args = ["--name", self.name, "--port", "0"]
        if self.tcp:
            args += ["--tcp-port", "0"]
        if self.greeting:
            args.append("--tcp-greeting")
        self.process, words = start_child("support.echo_backend", args, f"echo backend {self.name}", timeout)
        fields = dict(part.split("=") for part in words)
        self.port, self.tcp_port = int(fields["http"]), int(fields["tcp"])
        return self

    def stop(self) -> None:
        stop_child(self.process)

    def kill(self) -> None:
        """SIGKILL: the backend vanishes as a crashed process would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def count(self) -> int:
        """How many requests this backend has served (a blocking call: use from a thread in async
        tests, or ``asyncio.to_thread``)."""
        with urllib.request.urlopen(f"{self.url}/_count", timeout=5) as response:  # noqa: S310
            value: int = json.loads(response.read())["count"]
            return value

    def last(self) -> Any:
        """The JSON answer of the last request this backend answered with JSON (blocking)."""
        with urllib.request.urlopen(f"{self.url}/_last", timeout=5) as response:  # noqa: S310
            return json.loads(response.read())

    def __enter__(self) -> EchoBackend:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def echo_backends(*names: str, tcp: bool = False, greeting: bool = False) -> Any:
    """Several backends started together and stopped together."""
    backends = [EchoBackend(n, tcp=tcp, greeting=greeting) for n in names]
    try:
        for b in backends:
            b.start()
        yield backends
    finally:
        for b in backends:
            b.stop()


if __name__ == "__main__":
    main()
