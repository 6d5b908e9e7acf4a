"""An HTTP/2 echo backend for proxy tests: a real process speaking h2c (prior knowledge), for clusters
whose protocol is ``http2``; the HTTP/2 counterpart of ``echo_backend``.

Run it as ``python -m support.h2_echo --name N`` (the tests directory on the path); it prints
``READY <port>`` once it serves. Every request is answered with JSON naming the endpoint, the method,
path and query, the connection's number (equal numbers: one connection), the stream id, the headers
as received (pseudo-headers included, in order) and the body's length and sha256. The body is read
as it arrives and its window given back at once. Query parameters change the answer:

- ``delay=<ms>``: wait before answering;
- ``status=<code>``: answer with that status;
- ``size=<n>``: answer n bytes of ``x`` instead of JSON, sent as the client's windows allow;
- ``trailer=<name>:<value>`` (repeatable): end the response with these trailers;
- ``reset=before_headers``: reset the stream (INTERNAL_ERROR) instead of answering;
  ``reset=mid_body`` (with size): send half the body, then reset;
- ``refuse=1``: reset the stream with REFUSED_STREAM as soon as its headers arrive (not counted).

``GET /_count`` answers ``{"endpoint", "count", "connections", "max_open", "resets",
"last_authority"}``: requests answered, connections accepted, the most streams ever open at once on
one connection, streams the client reset, and the :authority of the last request counted.

Options: ``--max-streams N`` (SETTINGS_MAX_CONCURRENT_STREAMS, default 100); ``--goaway-after N``:
the Nth request on a connection gets a graceful GOAWAY naming it as the last stream (it and those
before it are answered; the client must take later requests elsewhere).

``H2Echo`` starts and stops one as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import parse_qs

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from support.child import start_child, stop_child

LOOPBACK = "127.0.0.1"


class _State:
    def __init__(self, name: str, max_streams: int, goaway_after: int) -> None:
        self.name = name
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.count = 0
        self.connections = 0
        self.max_open = 0
        self.resets = 0
        self.last_authority = ""


class _Stream:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.body_length = 0
        self.sha = hashlib.sha256()
        self.reset = False


class _Connection(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        state.connections += 1
        self.number = state.connections
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: state.max_streams}
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.requests = 0
        self.goaway_last: int | None = None  # streams above it are ignored (RFC 9113 section 6.8)
        self.window = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._request(event)
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body_length += len(event.data)
                    stream.sha.update(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                if event.stream_id in self.streams:
                    task = asyncio.get_running_loop().create_task(self._answer(event.stream_id))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            elif isinstance(event, StreamReset):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.reset = True
                    self.state.resets += 1
                self._wake()
            elif isinstance(event, WindowUpdated):
                self._wake()
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()

    def _wake(self) -> None:
        self.window.set()
        self.window = asyncio.Event()

    def _request(self, event: RequestReceived) -> None:
        headers = [(bytes(k), bytes(v)) for k, v in event.headers]
        path = dict(headers).get(b":path", b"/")
        if self.goaway_last is not None and event.stream_id > self.goaway_last:
            return
        if b"refuse=1" in path:
            self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.streams[event.stream_id] = _Stream(headers)
        self.state.max_open = max(self.state.max_open, len(self.streams))
        self.requests += 1
        if self.requests == self.state.goaway_after:
            # A graceful GOAWAY: h2 would close its state machine on sending one, which would stop
            # the streams it lets finish; its state is put back.
            machine_state = self.h2.state_machine.state
            self.goaway_last = event.stream_id
            self.h2.close_connection(last_stream_id=event.stream_id)
            self.h2.state_machine.state = machine_state

    async def _answer(self, sid: int) -> None:
        stream = self.streams[sid]
        fields = dict(stream.headers)
        path, _, query = fields.get(b":path", b"/").decode().partition("?")
        q = parse_qs(query)
        if path == "/_count":
            body = {
                "endpoint": self.state.name,
                "count": self.state.count,
                "connections": self.state.connections,
                "max_open": self.state.max_open,
                "resets": self.state.resets,
                "last_authority": self.state.last_authority,
            }
            await self._respond(sid, 200, json.dumps(body).encode(), [])
            return
        self.state.count += 1
        self.state.last_authority = fields.get(b":authority", b"").decode()
        if "delay" in q:
            await asyncio.sleep(int(q["delay"][0]) / 1000)
        if stream.reset:
            return
        reset = q.get("reset", [""])[0]
        if reset == "before_headers":
            self._reset(sid)
            return
        status = int(q.get("status", ["200"])[0])
        trailers = [tuple(t.encode().split(b":", 1)) for t in q.get("trailer", [])]
        if "size" in q:
            size = int(q["size"][0])
            self.h2.send_headers(sid, [(b":status", b"%d" % status), (b"content-length", b"%d" % size)])
            self.flush()
            limit = size // 2 if reset == "mid_body" else size
            await self._send(sid, b"x" * limit, end=False)
            if reset == "mid_body":
                self._reset(sid)
            else:
                await self._end(sid, cast(list[tuple[bytes, bytes]], trailers))
            return
        answer: dict[str, Any] = {
            "endpoint": self.state.name,
            "connection": self.number,
            "stream": sid,
            "method": fields.get(b":method", b"").decode(),
            "path": path,
            "query": query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in stream.headers],
            "body_length": stream.body_length,
            "body_sha256": stream.sha.hexdigest(),
        }
        await self._respond(
            sid, status, json.dumps(answer).encode(), cast(list[tuple[bytes, bytes]], trailers)
        )

    async def _respond(self, sid: int, status: int, body: bytes, trailers: list[tuple[bytes, bytes]]) -> None:
        head = [(b":status", b"%d" % status), (b"content-type", b"application/json")]
        self.h2.send_headers(sid, [*head, (b"content-length", b"%d" % len(body))])
        await self._send(sid, body, end=False)
        await self._end(sid, trailers)

    async def _send(self, sid: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while view:
            if sid not in self.streams:
                return  # reset by the client
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                await self.window.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.h2.send_data(sid, bytes(chunk), end_stream=end and not view)
            self.flush()
            await asyncio.sleep(0)

    async def _end(self, sid: int, trailers: list[tuple[bytes, bytes]]) -> None:
        if sid not in self.streams:
            return
        if trailers:
            self.h2.send_headers(sid, trailers, end_stream=True)
        else:
            self.h2.end_stream(sid)
        self.streams.pop(sid, None)
        self.flush()

    def _reset(self, sid: int) -> None:
        self.streams.pop(sid, None)
        with contextlib.suppress(ProtocolError):
            self.h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
        self.flush()


async def _serve(args: argparse.Namespace) -> None:
    state = _State(args.name, args.max_streams, args.goaway_after)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(state), LOOPBACK, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="h2_echo")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-streams", type=int, default=100)
    parser.add_argument("--goaway-after", type=int, default=0)
    asyncio.run(_serve(parser.parse_args(argv)))


class H2Echo:
    """One HTTP/2 echo backend process; a context manager that stops it whatever happens."""

    def __init__(self, name: str, *, max_streams: int = 100, goaway_after: int = 0) -> None:
        self.name = name
        self.args = ["--max-streams", str(max_streams), "--goaway-after", str(goaway_after)]
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> H2Echo:
        args = ["--name", self.name, *self.args]
        self.process, words = start_child("support.h2_echo", args, f"h2 echo {self.name}", timeout)
        self.port = int(words[0])
        return self

    def stop(self) -> None:
        stop_child(self.process)

    def stats(self) -> dict[str, Any]:
        """``/_count``'s answer, fetched over HTTP/2 with curl (a blocking call: use from a thread)."""
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", f"http://{LOOPBACK}:{self.port}/_count"],
            capture_output=True,
            check=True,
            timeout=10,
        ).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def __enter__(self) -> H2Echo:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def h2_echoes(*names: str, **kw: Any) -> Iterator[list[H2Echo]]:
    backends = [H2Echo(n, **kw) for n in names]
    try:
        for b in backends:
            b.start()
        yield backends
    finally:
        for b in backends:
            b.stop()


if __name__ == "__main__":
    main()
